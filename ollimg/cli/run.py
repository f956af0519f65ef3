"""`ollimg run MODEL [PROMPT]`: generate images through the server and write them to files.

Without PROMPT: at a terminal, a REPL takes one prompt per line with ollama's `/set` commands
(repl.py); otherwise all of stdin is the prompt (`echo "a cat" | ollimg run z-image`).

Progress on stderr (a spinner while the model loads, then a step bar), results on stdout (the
path and seed of each image, or JSON with --json). Starts a local server when none runs, and
pulls a model the store lacks from its registry first.
Ctrl-C closes the connection, which cancels the generation on the server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

from ollimg import api
from ollimg.cli.connect import ensure_server
from ollimg.cli.repl import Repl, Settings, check_strength
from ollimg.cli.transfer import TransferDisplay
from ollimg.errors import Cancelled, InvalidInput, ModelNotFound, OllimgError
from ollimg.progress import Step

EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)


def run_command(
    model: str = typer.Argument(..., help="Model name, e.g. z-image."),
    prompt: str = typer.Argument(None, help="What to draw. Without it: one prompt per line at a terminal "
                                            "(/? lists the commands), or all of a piped stdin as one prompt."),
    size: str = typer.Option(None, "--size", help="WxH, multiples of 16 (default: the model's)."),
    steps: int = typer.Option(None, "--steps", min=1, help="Denoising steps (default: the model's)."),
    seed: int = typer.Option(None, "--seed", min=0, max=api.MAX_SEED,
                             help=f"Seed (default: random), 0 to {api.MAX_SEED}; image i uses seed + i."),
    guidance: float = typer.Option(None, "--guidance", min=0, help="Guidance scale (default: the model's)."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt."),
    n: int = typer.Option(1, "-n", min=1, max=10, help="Number of images."),
    output: Path = typer.Option(None, "-o", "--output", help="Output file (default: <prompt>-<time>.<ext> here)."),
    fmt: str = typer.Option(None, "--format", help="png, jpeg or webp (default: from -o, else png); json as in "
                                                   "ollama: the same as --json."),
    keep_alive: str = typer.Option(None, "--keep-alive", "--keepalive", help="How long the model stays loaded, e.g. 10m."),
    teacache: float = typer.Option(None, "--teacache", min=0, max=100,
                                   help="TeaCache threshold: reuse the transformer's work on steps that change "
                                        "little (default: off; run ollimg calibrate MODEL first)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: bool = typer.Option(False, "--verbose", help="Show timings after each generation (on stderr)."),
    image: list[Path] = typer.Option(None, "--image", help="Edit this image (repeat for reference images); the "
                                                          "output takes its size unless --size says otherwise."),
    mask: Path = typer.Option(None, "--mask", help="Redraw only where this mask is white (inpainting)."),
    strength: float = typer.Option(None, "--strength", help="How much of the image is redrawn, above 0 to 1 "
                                                            "(default: the model's)."),
    cfg_truncation: float = typer.Option(None, "--cfg-truncation", min=0,
                                         help="CFG stops above this normalised time (default: the model's)."),
    cfg_normalization: float = typer.Option(None, "--cfg-normalization", min=0,
                                            help="Cap on the guided prediction's norm, 0 off (default: the model's)."),
) -> None:
    """Generate images from a prompt, or from prompts typed one per line."""
    if fmt is not None and fmt.lower() == "json":  # ollama's --format json asks for JSON output
        fmt, as_json = None, True
    interactive = prompt is None and sys.stdin.isatty()
    if prompt is None and not interactive:
        prompt = sys.stdin.read()
    if not interactive and not prompt.strip():
        raise InvalidInput("the prompt is empty")
    if interactive and output is not None:
        raise InvalidInput("-o needs a prompt; typed prompts are saved as <prompt>-<time>.<ext> here")
    width, height = api.parse_size(size)
    settings = Settings(width, height, steps, seed, guidance, negative, n, _format(fmt, output), teacache=teacache,
                        verbose=verbose, images=list(image or []), mask=mask,
                        strength=None if strength is None else check_strength(strength),
                        cfg_truncation=cfg_truncation, cfg_normalization=cfg_normalization)
    if (mask is not None or strength is not None) and not settings.images:
        raise InvalidInput("--mask and --strength need --image")
    console = Console(stderr=True)
    client = ensure_server(lambda text: console.print(text, style="dim", highlight=False, soft_wrap=True))
    with client:
        _load(client, model, keep_alive, console)
        if interactive:
            Repl(settings, lambda line: _generate(client, model, line, settings, keep_alive, console),
                 lambda value: _format(value, None), console).loop()
        else:
            _generate(client, model, prompt.strip(), settings, keep_alive, console, output, as_json)


def _generate(client, model: str, prompt: str, settings: Settings, keep_alive: str | None, console: Console,
              output: Path | None = None, as_json: bool = False) -> None:
    with _StepBar(console) as bar:
        result = client.generate(
            model, prompt, on_step=bar, width=settings.width, height=settings.height, steps=settings.steps,
            seed=settings.seed, guidance=settings.guidance, negative_prompt=settings.negative, n=settings.n,
            format=settings.format, keep_alive=keep_alive, teacache=settings.teacache,
            images=[_read(p) for p in settings.images] or None,
            mask=_read(settings.mask) if settings.mask else None, strength=settings.strength,
            cfg_truncation=settings.cfg_truncation, cfg_normalization=settings.cfg_normalization,
        )
    paths = _write(result, prompt, output, settings.format)
    if settings.verbose:
        console.print(timings_text(result), highlight=False)
    if as_json:
        typer.echo(json.dumps({
            "model": result.model, "images": [{"path": str(p), "seed": s} for p, s in zip(paths, result.seeds)],
            "width": result.width, "height": result.height, "steps": result.steps, "guidance": result.guidance,
            "format": settings.format, "timings": result.timings,
        }))
        return
    for path, image_seed, data in zip(paths, result.seeds, result.images):
        if sys.stdout.isatty():
            _show_inline(base64.b64decode(data), settings.format)
        typer.echo(f"{path}  seed {image_seed}")


def timings_text(result: api.GenerateResponse) -> str:
    """What --verbose prints, as ollama's: durations first, then each stage the runtime timed."""
    rows = [("total duration", result.total_duration / 1e9), ("load duration", result.load_duration / 1e9)]
    rows += [(f"{stage} duration", seconds) for stage, seconds in result.timings.items() if stage != "total"]
    rows.append(("size", f"{result.width}x{result.height}, {result.steps} steps, guidance {result.guidance}"))
    return "\n".join(f"{name + ':':<20}{_seconds(value) if isinstance(value, float) else value}" for name, value in rows)


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.3f}s"


def _read(path: Path) -> str:
    """A file's bytes as base64 (the server checks that it is an image)."""
    try:
        return base64.b64encode(path.expanduser().read_bytes()).decode("ascii")
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from None


def _load(client, model: str, keep_alive: str | None, console: Console) -> None:
    """Loads the model; one the store lacks is pulled from its registry first, as `ollama run` does."""
    try:
        with _spinner(console, f"loading {model}"):
            client.load(model, keep_alive=keep_alive)
        return
    except ModelNotFound as e:
        missing = e
    try:
        with TransferDisplay("pulling") as display:
            client.pull(model, on_progress=display)
    except (ModelNotFound, Cancelled):
        raise
    except OllimgError as e:
        if "did you mean" in missing.message:  # a typo of a stored name: say that, not the pull's failure
            raise missing from None
        raise ModelNotFound(f'model "{model}" not found in the store, and pulling it failed: {e}') from None
    with _spinner(console, f"loading {model}"):
        client.load(model, keep_alive=keep_alive)


def _format(fmt: str | None, output: Path | None) -> str:
    if fmt is not None:
        fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
        if fmt not in EXTENSIONS:
            raise InvalidInput(f"unknown --format {fmt!r}: use png, jpeg or webp")
        return fmt
    if output is not None and output.suffix.lower() in FORMATS:
        return FORMATS[output.suffix.lower()]
    return "png"


def slug(prompt: str, limit: int = 50) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return text[:limit].rstrip("-") or "image"


def _write(result: api.GenerateResponse, prompt: str, output: Path | None, fmt: str) -> list[Path]:
    images = [base64.b64decode(b) for b in result.images]
    if output is not None:
        paths = [output] if len(images) == 1 else [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(len(images))]
    else:
        stem = f"{slug(prompt)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        stems = [stem] if len(images) == 1 else [f"{stem}-{i + 1}" for i in range(len(images))]
        paths = [_free_path(Path.cwd() / f"{s}{EXTENSIONS[fmt]}") for s in stems]
    for path, data in zip(paths, images):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return paths


def _free_path(path: Path) -> Path:
    k = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


class _spinner:
    """A spinner on a terminal's stderr; one plain line elsewhere."""

    def __init__(self, console: Console, text: str):
        self.console, self.text, self.status = console, text, None

    def __enter__(self):
        if self.console.is_terminal:
            self.status = self.console.status(self.text)
            self.status.__enter__()
        else:
            self.console.print(self.text, highlight=False)
        return self

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)


class _StepBar:
    """`Generating ▕████    ▏ 4/9 0:00:03` on a terminal's stderr; `step 4/9 (3.1 s)` lines elsewhere."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Bar(TextColumn("Generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=console, transient=True) if console.is_terminal else None
        self.task = None
        self.printed = 0.0

    def __enter__(self) -> "_StepBar":
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("generate", total=None)
        return self

    def __call__(self, step: Step) -> None:
        if step.status:  # before the first step: long one-off work, said once
            self.console.print(step.status, highlight=False)
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step.step, total=step.total)
        elif step.step in (1, step.total) or time.monotonic() - self.printed >= 1.0:
            self.printed = time.monotonic()
            self.console.print(f"step {step.step}/{step.total} ({step.elapsed:.1f} s)", highlight=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _show_inline(data: bytes, fmt: str) -> None:
    """Draws the image in kitty/Ghostty (kitty graphics, PNG only) or iTerm2/WezTerm (OSC 1337)."""
    term, program = os.environ.get("TERM", ""), os.environ.get("TERM_PROGRAM", "")
    b64 = base64.b64encode(data).decode()
    out = sys.stdout
    if (term == "xterm-kitty" or os.environ.get("KITTY_WINDOW_ID") or program == "ghostty") and fmt == "png":
        chunks = [b64[i:i + 4096] for i in range(0, len(b64), 4096)]
        for i, chunk in enumerate(chunks):
            control = "a=T,f=100," if i == 0 else ""
            out.write(f"\033_G{control}m={1 if i < len(chunks) - 1 else 0};{chunk}\033\\")
        out.write("\n")
    elif program in ("iTerm.app", "WezTerm") or os.environ.get("LC_TERMINAL") == "iTerm2":
        out.write(f"\033]1337;File=inline=1;size={len(data)};preserveAspectRatio=1:{b64}\a\n")
    out.flush()
