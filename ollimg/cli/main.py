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


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show debug logs and full tracebacks."),
) -> None:
    global _debug
    _debug = debug or config.debug()
    logging.basicConfig(level=logging.DEBUG if _debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from ollimg.cli import calibrate, create, load, login, models, ps, pull, push, run, save, serve, stop

    for module in (create, models, pull, push, save, load, login, serve, run, ps, stop, calibrate):
        module.register(app)


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        code = app(args=argv, standalone_mode=False)
        # Outside standalone mode typer returns an exit code instead of raising: Ctrl-C gives 130
        # (typer turns KeyboardInterrupt into Exit(130)), `raise typer.Exit(n)` gives n.
        if code == 130:
            fail("interrupted", 130)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        fail("interrupted", 130)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
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


if __name__ == "__main__":
    main()
