"""ollama's CLI habits in `ollimg` as a real process, without a server (store commands work locally)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.conftest import OLLIMG, cli_env


def ollimg(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OLLIMG, *args], env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def test_version_and_help_command():
    import ollimg as package

    for flag in ("--version", "-v"):
        r = ollimg(flag)
        assert r.returncode == 0 and r.stdout.strip() == f"ollimg version is {package.__version__}"
    r = ollimg("help", "run", COLUMNS="200")
    assert r.returncode == 0 and "ollimg run" in r.stdout and "--keepalive" in r.stdout and "--verbose" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["run"], "Error: Missing argument 'model'. (see: ollimg run --help)"),
    (["run", "shapes", "x", "--steps", "abc"], "Error: Invalid value for '--steps'"),
    (["lst"], "Error: No such command 'lst'. Did you mean 'list'"),
    (["list", "--frob"], "Error: No such option: --frob"),
])
def test_argument_errors_are_one_line_without_class_names(args, message):
    r = ollimg(*args)
    assert r.returncode == 2 and r.stderr.startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Exception" not in r.stderr and "MissingParameter" not in r.stderr and "UsageError" not in r.stderr


def test_pull_of_the_builtin_model_imports_it_and_rm_of_a_missing_one_says_so():
    pulled = ollimg("pull", "shapes")
    assert pulled.returncode == 0, pulled.stderr
    assert "shapes:latest is built in" in pulled.stderr and "does not resolve" not in pulled.stderr
    assert "shapes:latest" in ollimg("list").stdout
    missing = ollimg("rm", "nosuch")
    assert missing.returncode == 3 and missing.stderr.strip() == 'Error: model "nosuch:latest" not found'
    typo = ollimg("show", "shaeps")
    assert typo.returncode == 3 and 'did you mean "shapes:latest"?' in typo.stderr


def test_serve_on_a_busy_port_fails_before_saying_it_listens():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = ollimg("serve", timeout=60, OLLIMG_HOST=f"127.0.0.1:{port}")
    assert r.returncode == 1 and "listening" not in r.stderr
    assert r.stderr.strip() == (f"Error: cannot listen on 127.0.0.1:{port}: the port is in use (is another ollimg serve "
                                "running?); set OLLIMG_HOST to another address")
