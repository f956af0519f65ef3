"""`ollimg login HOST` and `ollimg logout HOST`: registry credentials, kept in a file only the user can read."""

from __future__ import annotations

import sys
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("login")
    def login_command(
        host: str = typer.Argument(..., help="Registry host, e.g. ghcr.io or localhost:5000"),
        user: Optional[str] = typer.Option(None, "--username", "-u", help="User name (asked if not given)."),
        password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password or token from stdin."),
        insecure: bool = typer.Option(False, "--insecure", help="Use plain HTTP (automatic for loopback hosts)."),
    ) -> None:
        """Check credentials with the registry and store them for pull and push."""
        from ollimg.registry import login

        if user is None:
            user = typer.prompt("Username", err=True)
        if password_stdin:
            password = sys.stdin.read().rstrip("\r\n")
        else:
            password = typer.prompt("Password", hide_input=True, err=True)
        host = login(host, user, password, insecure=insecure or None)
        sys.stderr.write(f"logged in to {host}\n")

    @app.command("logout")
    def logout_command(host: str = typer.Argument(..., help="Registry host")) -> None:
        """Forget the stored credentials of a registry."""
        from ollimg.registry import logout

        sys.stderr.write(f"logged out of {host}\n" if logout(host) else f"not logged in to {host}\n")
