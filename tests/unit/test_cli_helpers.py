"""Small pure helpers of the server CLI commands: file names, UNTIL column, sizes, formats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ollimg.api import parse_size
from ollimg.cli.connect import is_local
from ollimg.cli.ps import until
from ollimg.cli.run import _format, slug
from ollimg.errors import InvalidInput


@pytest.mark.parametrize(
    "prompt, expected",
    [("A cat, playing piano!", "a-cat-playing-piano"), ("   ", "image"), ("日本語", "image"),
     ("x" * 80, "x" * 50), ("a " * 40, ("a-" * 25).rstrip("-"))],
)
def test_slug(prompt, expected):
    assert slug(prompt) == expected


def test_until():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert until(None) == "Forever"
    assert until((now + timedelta(minutes=4, seconds=30)).isoformat(), now=now) == "4 minutes from now"
    assert until((now + timedelta(seconds=1)).isoformat(), now=now) == "1 second from now"
    assert until((now - timedelta(seconds=1)).isoformat(), now=now) == "Stopping..."
    assert until(now.isoformat(), busy=True, now=now) == "Generating"


@pytest.mark.parametrize("size, expected", [("auto", (None, None)), (None, (None, None)), ("512x768", (512, 768)), (" 16X32 ", (16, 32))])
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["1000x1000", "0x16", "16", "4112x16", "axb", "16x16x16"])
def test_parse_size_refuses(size):
    with pytest.raises(InvalidInput) as e:
        parse_size(size)
    assert e.value.param == "size"


def test_format_from_option_or_file():
    assert _format(None, None) == "png"
    assert _format(None, Path("a.JPG")) == "jpeg"
    assert _format("webp", Path("a.png")) == "webp"
    assert _format("jpg", None) == "jpeg"
    with pytest.raises(InvalidInput):
        _format("gif", None)


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("0.0.0.0", True), ("::1", True),
                                          ("192.168.1.2", False), ("example.com", False)])
def test_is_local(host, local):
    assert is_local(host) == local


def test_repl_set_and_errors(capsys):
    from rich.console import Console

    from ollimg.cli.repl import Repl, Settings
    from ollimg.cli.run import _format

    settings = Settings(None, None, None, None, None, None, 1, "png")
    drawn = []
    repl = Repl(settings, drawn.append, lambda v: _format(v, None), Console(stderr=True))
    for line in ("/set size 768x512", "/set steps 4", "/set seed 42", "/set negative blurry, dark", "/set n 2",
                 "/set format jpg", "/set guidance 1.5"):
        repl.command(line)
    assert settings == Settings(768, 512, 4, 42, 1.5, "blurry, dark", 2, "jpeg")
    repl.command("/set seed random")
    repl.command("/set negative")
    assert settings.seed is None and settings.negative is None
    for bad, message in (("/set width 100", "multiple of 16"), ("/set steps 0", "above 0"), ("/set steps x", "not a number"),
                         ("/set n 11", "at most 10"), ("/set format gif", "unknown --format"), ("/set color red", "unknown setting"),
                         ("/frobnicate", "unknown command"), ("/set guidance -1", "0 or more"),
                         ("/set seed 9007199254740977", "from 0 to 9007199254740976")):
        with pytest.raises(InvalidInput, match=message):
            repl.command(bad)
    assert settings == Settings(768, 512, 4, None, 1.5, None, 2, "jpeg") and drawn == []  # bad lines changed nothing


def test_repl_speaks_ollamas_commands():
    """`/set parameter seed 42`, `/set verbose` and `/clear` as in `ollama run`."""
    from rich.console import Console

    from ollimg.cli.repl import Repl, Settings
    from ollimg.cli.run import _format

    settings = Settings(None, None, 8, None, None, None, 1, "png")
    repl = Repl(settings, lambda line: None, lambda v: _format(v, None), Console(stderr=True))
    repl.command("/set parameter seed 42")
    repl.command("/set parameter steps 4")
    repl.command("/set verbose")
    assert (settings.seed, settings.steps, settings.verbose) == (42, 4, True)
    repl.command("/set quiet")
    assert settings.verbose is False
    with pytest.raises(InvalidInput, match="usage: /set parameter NAME VALUE"):
        repl.command("/set parameter")
    repl.command("/clear")
    assert settings == Settings(None, None, 8, None, None, None, 1, "png")


def test_verbose_timings_text():
    from ollimg import api
    from ollimg.cli.run import timings_text

    result = api.GenerateResponse(model="m", created_at="", width=128, height=96, steps=8, guidance=0.0,
                                  timings={"text_encode": 0.05, "denoise": 1.5, "total": 1.6},
                                  load_duration=2_000_000_000, total_duration=3_600_000_000)
    assert timings_text(result).splitlines() == [
        "total duration:     3.600s", "load duration:      2.000s", "text_encode duration:50.0ms",
        "denoise duration:   1.500s", "size:               128x96, 8 steps, guidance 0.0"]


def test_repl_set_teacache():
    from rich.console import Console

    from ollimg.cli.repl import Repl, Settings
    from ollimg.cli.run import _format

    settings = Settings(None, None, None, None, None, None, 1, "png")
    repl = Repl(settings, lambda line: None, lambda v: _format(v, None), Console(stderr=True))
    assert settings.teacache is None  # off unless asked for
    repl.command("/set teacache 0.3")
    assert settings.teacache == 0.3
    for bad, message in (("/set teacache -1", "0 to 100"), ("/set teacache lots", "not a number")):
        with pytest.raises(InvalidInput, match=message):
            repl.command(bad)
    assert settings.teacache == 0.3
    repl.command("/set teacache off")
    assert settings.teacache is None



@pytest.mark.parametrize("value, seconds", [("5m", 300.0), ("1h30m", 5400.0), (10, 10.0), ("-1", None), (-5, None), (0, 0.0)])
def test_durations(value, seconds):
    from ollimg.config import parse_duration

    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, False, float("nan"), float("inf"), float("-inf"), "nan", "inf", "9" * 400, "5 m"])
def test_what_is_no_duration(value):
    """keep_alive and OLLIMG_KEEP_ALIVE: booleans and numbers that are not finite are refused."""
    from ollimg.config import parse_duration

    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(value)


def test_each_command_is_registered_by_its_own_module():
    """`ollimg X` imports only X's module: the map names, for every command, the module that
    defines it (a command missing from the map would be imported with all the others)."""
    import importlib

    import typer

    from ollimg.cli import main

    every = typer.Typer()
    for name in main.MODULES:
        importlib.import_module(f"ollimg.cli.{name}").register(every)
    commands = {c.name for c in every.registered_commands}
    assert commands == set(main._MODULE_OF) - {"models"}
    for command in commands:
        alone = typer.Typer()
        importlib.import_module(f"ollimg.cli.{main._MODULE_OF[command]}").register(alone)
        assert command in {c.name for c in alone.registered_commands}


def test_no_local_server_is_known_without_the_http_client():
    """A refused local port means no server: the HTTP client (httpx, pydantic models) is not even
    imported, a quarter of a second of every command that works without a server."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys; from ollimg.cli.connect import running_client; "
            "print(running_client() is None, 'httpx' in sys.modules)")
    for host in (f"127.0.0.1:{port}", f"0.0.0.0:{port}", f"localhost:{port}"):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "OLLIMG_HOST": host})
        assert run.stdout.split() == ["True", "False"], (host, run.stderr[-1000:])
