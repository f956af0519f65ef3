"""`ollimg calibrate MODEL [--prompts FILE] [--steps N]`: fit the model's TeaCache polynomial.

Calls `ollimg.calibrate.calibrate` (the model runs in a runtime process on this machine, as the
server would run it) and stores the fit with the model; step progress on stderr, the fit's error
and a table of thresholds against the expected fraction of skipped steps on stdout (or JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ollimg.calibrate import calibrate, read_prompts
from ollimg.cli.run import _StepBar
from ollimg.manifest import Name, Store


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)


def calibrate_command(
    model: str = typer.Argument(..., help="Model name, e.g. z-image."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompts, one per line (default: a built-in set of 8)."),
    steps: int = typer.Option(None, "--steps", min=3, max=1000, help="Steps per generation (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fit TeaCache's step-skipping rule to a model and store it with the model (for --teacache)."""
    name = Name.parse(model)
    chosen = read_prompts(prompts) if prompts is not None else None
    with _StepBar(Console(stderr=True)) as bar:
        done = calibrate(Store(), name, chosen, steps, on_step=bar)
    fit = done.calibration
    if as_json:
        typer.echo(json.dumps({"name": done.model.name.display(), "digest": done.model.digest, **fit}))
        return
    typer.echo(f"calibrated {done.model.name.display()} ({done.model.id}): {fit['prompts']} prompts x "
               f"{fit['steps']} steps, {fit['samples']} step pairs, fit error {fit['fit_error']:.4f} (RMS)")
    typer.echo("threshold  expected skipped steps")
    for threshold, skipped in fit["skipped"].items():
        typer.echo(f"{threshold:>9}  {skipped:6.1%}")
    typer.echo(f"use: ollimg run {done.model.name.display()} --teacache THRESHOLD")
