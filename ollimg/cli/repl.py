"""The prompt loop of `ollimg run MODEL` at a terminal, as in ollama: one prompt per line, `/set`
to change what the next generations ask for, `/show`, `/?`, `/bye` or Ctrl-D. Errors a line
caused are printed and the loop goes on; a lost server ends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from ollimg import api
from ollimg.errors import InvalidInput, ModelNotFound, OllimgError, ServerUnreachable


@dataclass
class Settings:
    """What each generation of a `run` asks for; the REPL's /set changes it."""

    width: int | None
    height: int | None
    steps: int | None
    seed: int | None
    guidance: float | None
    negative: str | None
    n: int
    format: str
    teacache: float | None = None
    verbose: bool = False
    images: list[Path] = field(default_factory=list)  # images to edit (--image, /image)
    mask: Path | None = None  # white is redrawn (--mask, /mask)
    strength: float | None = None  # how much of the image is redrawn (--strength, /set strength)
    cfg_truncation: float | None = None  # --cfg-truncation, /set cfg_truncation
    cfg_normalization: float | None = None  # --cfg-normalization, /set cfg_normalization


REPL_HELP = """Type a prompt to draw it. Commands:
  /set size WxH | width N | height N | steps N | seed N | seed random
  /set guidance X | negative TEXT | negative (clears it) | n N | format png|jpeg|webp
  /set parameter NAME VALUE   the same, in ollama's form (/set parameter seed 42)
  /set verbose | quiet        show timings after each image, or not
  /set strength X  how much of the image is redrawn, above 0 to 1
  /set cfg_truncation X | cfg_normalization X   (empty: the model's)
  /image PATH  edit this image (again: one more image); /image alone: back to text to image
  /mask PATH   redraw only where the mask is white; /mask alone clears it
  /set teacache X | teacache off   step caching (the model must be calibrated: ollimg calibrate)
  /show        the settings in use
  /clear       back to the settings `run` started with
  /bye         exit (or Ctrl-D); Ctrl-C stops a generation"""


class Repl:
    """One prompt per line; `/set` changes the settings `generate` uses; `parse_format` checks /set format."""

    def __init__(self, settings: Settings, generate: Callable[[str], None], parse_format: Callable[[str], str],
                 console: Console):
        self.settings, self.generate, self.parse_format, self.console = settings, generate, parse_format, console
        self.initial = replace(settings)

    def loop(self) -> None:
        try:
            import readline  # noqa: F401  (line editing and history for input(), where available)
        except ImportError:
            pass
        self.console.print("Type a prompt, /? for help, /bye to exit.", style="dim", highlight=False)
        while True:
            try:
                line = input(">>> ").strip()
            except EOFError:
                typer.echo()
                return
            except KeyboardInterrupt:
                typer.echo("\nUse Ctrl + d or /bye to exit.")
                continue
            if not line:
                continue
            if line in ("/bye", "/exit"):
                return
            try:
                if line.startswith("/"):
                    self.command(line)
                else:
                    self.generate(line)
            except KeyboardInterrupt:
                self.console.print("stopped", highlight=False)
            except (ServerUnreachable, ModelNotFound):
                raise  # nothing the next line could do better
            except OllimgError as e:  # bad input, a crashed runtime, a full queue: say it, go on
                self.console.print(f"Error: {e}", highlight=False)

    def command(self, line: str) -> None:
        words = line.split(maxsplit=2)
        if words[0] in ("/?", "/help"):
            typer.echo(REPL_HELP)
        elif words[0] == "/show":
            shown = {**vars(self.settings), "seed": "random" if self.settings.seed is None else self.settings.seed}
            typer.echo("\n".join(f"  {k:<9}{'(model default)' if v is None else v}" for k, v in shown.items()))
        elif words[0] == "/clear":
            for key, value in vars(self.initial).items():
                setattr(self.settings, key, value)
            typer.echo("Cleared: the settings are back to the start.")
        elif words[0] == "/set" and len(words) >= 2 and words[1].lower() in ("verbose", "quiet") and len(words) == 2:
            self.settings.verbose = words[1].lower() == "verbose"
            typer.echo(f"Set '{words[1].lower()}' mode.")
        elif words[0] == "/set" and len(words) >= 2 and words[1].lower() == "parameter":
            name, _, value = (words[2] if len(words) > 2 else "").partition(" ")
            if not name:
                raise InvalidInput("usage: /set parameter NAME VALUE (such as /set parameter seed 42)")
            self.set(name.lower(), value.strip())
        elif words[0] in ("/image", "/mask"):
            path = Path(line.split(maxsplit=1)[1].strip()).expanduser() if len(words) > 1 else None
            if path is not None and not path.is_file():
                raise InvalidInput(f"no such file: {path}")
            if words[0] == "/mask":
                self.settings.mask = path
            elif path is None:
                self.settings.images, self.settings.mask = [], None
            else:
                self.settings.images.append(path)
            typer.echo(f"{words[0][1:].capitalize()}: {path or 'none'}.")
        elif words[0] == "/set" and len(words) >= 2:
            self.set(words[1].lower(), words[2].strip() if len(words) > 2 else "")
        else:
            raise InvalidInput(f"unknown command {line!r}; /? lists the commands")

    def set(self, key: str, value: str) -> None:
        s = self.settings
        try:
            if key == "size":
                s.width, s.height = api.parse_size(value)
            elif key in ("width", "height"):
                number = int(value)
                if number <= 0 or number % 16:
                    raise InvalidInput(f"{key} {value}: use a positive multiple of 16")
                setattr(s, key, number)
            elif key == "steps":
                s.steps = _positive(value, key)
            elif key == "seed":
                seed = None if value.lower() in ("random", "") else _positive(value, key, allow_zero=True)
                if seed is not None and seed > api.MAX_SEED:
                    raise InvalidInput(f"seed {value}: use a whole number from 0 to {api.MAX_SEED}")
                s.seed = seed
            elif key == "guidance":
                if float(value) < 0:
                    raise InvalidInput("guidance must be 0 or more")
                s.guidance = float(value)
            elif key == "negative":
                s.negative = value or None
            elif key == "n":
                if _positive(value, key) > 10:
                    raise InvalidInput("n is at most 10")
                s.n = _positive(value, key)
            elif key == "format":
                s.format = self.parse_format(value)
            elif key == "strength":
                s.strength = None if not value else check_strength(float(value))
            elif key in ("cfg_truncation", "cfg_normalization"):
                if value and float(value) < 0:
                    raise InvalidInput(f"{key} must be 0 or more")
                setattr(s, key, float(value) if value else None)
            elif key == "teacache":
                threshold = None if value.lower() in ("off", "") else float(value)
                if threshold is not None and not 0 <= threshold <= 100:  # checked first: a bad line changes nothing
                    raise InvalidInput("teacache is a threshold from 0 to 100, or off")
                s.teacache = threshold
            else:
                raise InvalidInput(f"unknown setting {key!r}; /? lists them")
        except ValueError:
            raise InvalidInput(f"{key} {value!r} is not a number") from None
        typer.echo(f"Set {key} to {value or 'default'}.")


def _positive(value: str, key: str, allow_zero: bool = False) -> int:
    number = int(value)
    if number < 0 or (number == 0 and not allow_zero):
        raise InvalidInput(f"{key} {value}: use a whole number {'0 or more' if allow_zero else 'above 0'}")
    return number


def check_strength(value: float) -> float:
    if not 0 < value <= 1:
        raise InvalidInput(f"strength {value}: use a number above 0 and at most 1")
    return value
