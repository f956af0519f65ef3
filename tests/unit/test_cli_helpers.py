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
                         ("/frobnicate", "unknown command"), ("/set guidance -1", "0 or more")):
        with pytest.raises(InvalidInput, match=message):
            repl.command(bad)
    assert settings == Settings(768, 512, 4, None, 1.5, None, 2, "jpeg") and drawn == []  # bad lines changed nothing


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
