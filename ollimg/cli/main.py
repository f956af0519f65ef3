"""The `ollimg` command: builds the typer app and turns errors into one line and an exit code.

Exit codes: 1 error, 2 usage, 3 not found, 4 network or registry, 5 runtime, 130 interrupted.
Each command lives in its own module under ollimg/cli/ and registers itself with `register(app)`.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from ollimg import config
from ollimg.errors import OllimgError

app = typer.Typer(
    name="ollimg",
    help="Run text-to-image models locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = False


def _version(value: bool) -> None:
    if value:
        import ollimg

        typer.echo(f"ollimg version is {ollimg.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show debug logs and full tracebacks."),
    version: bool = typer.Option(False, "--version", "-v", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    global _debug
    _debug = debug or config.debug()
    logging.basicConfig(level=logging.DEBUG if _debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# The module of each command: `ollimg load ...` imports cli/load.py alone, since importing every
# command (torch-free, yet ~0.4 s) is part of each command's time. Any other first word (a usage
# error, `help`, `--help`) registers them all.
MODULES = ("create", "models", "pull", "push", "save", "load", "login", "serve", "run", "ps", "stop", "calibrate")
_MODULE_OF = {name: name for name in MODULES} | dict.fromkeys(
    ("list", "ls", "show", "rm", "cp", "prune", "verify"), "models") | {"logout": "login"}


def _register(argv: list[str]) -> None:
    import importlib

    command = next((arg for arg in argv if not arg.startswith("-")), None)
    names = [_MODULE_OF[command]] if command in _MODULE_OF and command != "models" else MODULES
    for name in names:
        importlib.import_module(f"ollimg.cli.{name}").register(app)

    @app.command("help")
    def help_command(command: list[str] = typer.Argument(None, help="The command to explain.")) -> None:
        """Help about any command (`ollimg help run`)."""
        main([*(command or []), "--help"])


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    _register(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, prog_name="ollimg", standalone_mode=False)
        # Outside standalone mode typer returns an exit code instead of raising: Ctrl-C gives 130
        # (typer turns KeyboardInterrupt into Exit(130)), `raise typer.Exit(n)` gives n.
        if code == 130:
            fail("interrupted", 130)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except _EXITS as e:
        raise SystemExit(e.exit_code) from None
    except _ABORTS:
        fail("interrupted", 130)
    except _USAGE_ERRORS as e:  # one line, without click's class names
        fail(e.format_message() + _help_hint(e), e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OllimgError as e:
        if _debug or config.debug():
            raise
        fail(e.message, e.exit_code)
    except Exception as e:  # the process edge: anything unexpected is still one line
        if _debug or config.debug():
            raise
        fail(f"{type(e).__name__}: {e} (run with --debug for the traceback)", 1)


def _help_hint(e: Exception) -> str:
    ctx = getattr(e, "ctx", None)
    return f" (see: {ctx.command_path} --help)" if ctx is not None and e.exit_code == 2 else ""


def _click_classes(name: str) -> tuple[type, ...]:
    """click's class and typer's vendored twin (typer >= 0.20 ships its own copy of click)."""
    classes = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored

        classes.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(classes)


_EXITS = _click_classes("Exit") + (typer.Exit,)
_ABORTS = _click_classes("Abort") + (typer.Abort,)
_USAGE_ERRORS = _click_classes("ClickException")


if __name__ == "__main__":
    main()
