"""`ollimg serve` as a real process with real runtime processes, a tiny fixture model and real clients.

One server for the module (OLLIMG_MAX_QUEUE=1, so overflow is easy to reach); the tiny model from
fixtures/make_tiny_zimage.py imported with `ollimg create`. Driven by the official `openai`
client, the `ollimg` CLI and raw HTTP.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import OLLIMG, cli_env

import openai  # noqa: E402  (a test dependency: missing, the tests fail rather than skip)
from PIL import Image  # noqa: E402

MODEL = "tiny"
SMALL = {"width": 32, "height": 32, "steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = cli_env(
            OLLIMG_HOST=f"127.0.0.1:{self.port}", OLLIMG_MODELS=str(root / "models"),
            XDG_DATA_HOME=str(root / "data"), OLLIMG_BACKEND="torch", OLLIMG_DEVICE="cpu", **env,
        )
        self.env.pop("OLLIMG_API_KEY", None)
        self.log = root / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*OLLIMG, "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("ollimg serve did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*OLLIMG, *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def ps(self) -> list[dict]:
        return httpx.get(self.url + "/api/ps").json()["models"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_zimage_dir):
    root = tmp_path_factory.mktemp("serve")
    srv = Server(root, OLLIMG_MAX_QUEUE="1", OLLIMG_KEEP_ALIVE="5m", OLLIMG_MAX_STEPS="200")  # SLOW asks for 200
    created = srv.cli("create", MODEL, "-f", str(tiny_zimage_dir))
    assert created.returncode == 0, created.stderr
    srv.start()
    yield srv
    httpx.post(srv.url + "/api/generate", json={"model": MODEL}, timeout=120)  # at least one runtime to stop
    runtimes = [m["pid"] for m in srv.ps()]
    assert runtimes
    srv.stop()
    assert srv.proc.returncode is not None
    assert not [pid for pid in runtimes if pid_alive(pid)], "runtime processes outlived the server"


@pytest.fixture
def runtime():
    """Tests that generate need the real runtime process (ollimg/runtime/process.py)."""
    import ollimg.runtime.process  # noqa: F401  (a broken runtime fails these tests; it never skips them)


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def generate_lines(server: Server, body: dict, client: httpx.Client | None = None):
    """Streams /api/generate; yields parsed NDJSON lines."""
    with httpx.stream("POST", server.url + "/api/generate", json={"model": MODEL, **body}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.strip():
                yield json.loads(line)


# -- the official openai client ----------------------------------------------------------------


def test_openai_generate(oai, runtime):
    result = oai.images.generate(model=MODEL, prompt="a red circle", size="32x48", extra_body={"steps": 2, "seed": 11})
    assert len(result.data) == 1 and result.size == "32x48"
    image = decode(result.data[0].b64_json)
    assert image.size == (32, 48) and image.format == "PNG"


def test_openai_n2_each_its_own_seed(oai, runtime):
    result = oai.images.generate(model=MODEL, prompt="two squares", n=2, size="32x32", extra_body={"steps": 2, "seed": 5})
    seeds = [d.model_extra["seed"] for d in result.data]
    assert seeds == [5, 6]
    a, b = (decode(d.b64_json).tobytes() for d in result.data)
    assert a != b
    again = oai.images.generate(model=MODEL, prompt="two squares", size="32x32", extra_body={"steps": 2, "seed": 6})
    assert decode(again.data[0].b64_json).tobytes() == b  # image i used seed + i


def test_openai_stream(oai, runtime):
    events = list(oai.images.generate(
        model=MODEL, prompt="a star", size="32x32", stream=True, partial_images=2, output_format="jpeg", n=2,
        extra_body={"steps": 3, "progress": True},  # step events only when asked
    ))
    types = [e.type for e in events]
    assert types.count("progress") == 3
    assert types[-2:] == ["image_generation.completed"] * 2
    assert decode(events[-1].b64_json).format == "JPEG"
    partial = [e for e in events if e.type == "image_generation.partial_image"]  # 2 per image of the batch
    assert [(e.partial_image_index, e.model_extra["image_index"]) for e in partial] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert partial[0].b64_json != partial[1].b64_json  # each image's own preview
    assert [e.model_extra["image_index"] for e in events[-2:]] == [0, 1]


def test_native_stream_previews_every_image_of_a_batch(server, runtime):
    lines = list(generate_lines(server, {"prompt": "a star", "width": 32, "height": 32, "steps": 4, "n": 2,
                                         "seed": 3, "previews": 1}))
    previews = [ln for ln in lines if "preview" in ln]
    assert [(p["index"], p["image_index"], p["step"]) for p in previews] == [(0, 0, 2), (0, 1, 2)]
    assert previews[0]["preview"] != previews[1]["preview"]
    assert {decode(p["preview"]).size for p in previews} == {(32, 32)}
    assert lines[-1]["done"] and lines[-1]["seeds"] == [3, 4]


def test_openai_errors(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.images.generate(model="no-such-model", prompt="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        oai.images.generate(model=MODEL, prompt="x", size="1000 by 1000")  # other WxH sizes are rounded
    assert e.value.param == "size"


def test_v1_models(oai):
    assert MODEL + ":latest" in [m.id for m in oai.models.list()]


def test_a1111_txt2img(server, runtime):
    r = httpx.post(server.url + "/sdapi/v1/txt2img", json={
        "prompt": "a circle", "seed": 3, "steps": 2, "width": 30, "height": 40, "batch_size": 2, "cfg_scale": 0,
    }, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [decode(i).size for i in body["images"]] == [(32, 48), (32, 48)]
    assert json.loads(body["info"])["all_seeds"] == [3, 4]


# -- raw HTTP: bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/api/generate", {"model": MODEL, "prompt": "x", "width": 33, "height": 32}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "x", "width": 8192, "height": 32}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "x", "n": 0}, 400),
        ("/api/generate", {"model": "missing", "prompt": "x"}, 404),
        ("/api/generate", {"model": "Bad Name!", "prompt": "x"}, 400),
        ("/api/generate", {"model": MODEL, "prompt": "x" * 100_000}, 400),
        ("/v1/images/generations", {"model": MODEL, "prompt": "x", "size": "31x"}, 400),
        ("/v1/images/generations", {"model": MODEL, "prompt": "x", "n": 0}, 400),
        ("/v1/images/generations", {"model": MODEL, "prompt": "x", "n": 11}, 400),
        ("/v1/images/generations", {"model": "missing", "prompt": "x"}, 404),
        ("/v1/images/generations", {"model": MODEL, "prompt": "x" * 100_000}, 400),
    ],
)
def test_bad_input(server, path, body, status):
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_malformed_json(server):
    for path in ("/api/generate", "/v1/images/generations", "/api/show"):
        r = httpx.post(server.url + path, content=b'{"model": "tiny", ', headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text


def test_long_prompt_within_limit_works(server, runtime):
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "a cat " * 3000, "stream": False, **SMALL}, timeout=120)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (32, 32)


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_run_ps_stop(server, tmp_path, runtime):
    out = tmp_path / "cat.png"
    r = server.cli("run", MODEL, "a cat", "--size", "32x32", "--steps", "2", "--seed", "3", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{out}  seed 3"
    assert Image.open(out).size == (32, 32)

    r = server.cli("run", MODEL, "A Dog!", "--size", "16x32", "--steps", "1", "-n", "2", "--format", "webp", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    paths = [Path(i["path"]) for i in result["images"]]
    assert [p.name.startswith("a-dog-") and p.suffix == ".webp" for p in paths] == [True, True]
    assert all(p.parent == tmp_path and Image.open(p).size == (16, 32) for p in paths)

    ps = server.cli("ps")
    assert ps.returncode == 0 and "tiny:latest" in ps.stdout and "CPU" in ps.stdout, ps.stdout
    [running] = server.ps()
    pid = running["pid"]
    assert pid_alive(pid)

    stop = server.cli("stop", MODEL)
    assert stop.returncode == 0, stop.stderr
    assert server.ps() == []
    assert not pid_alive(pid)
    again = server.cli("stop", MODEL)
    assert again.returncode == 3 and "not loaded" in again.stderr


def test_cli_run_bad_input(server, tmp_path):
    r = server.cli("run", MODEL, "x", "--size", "30x30", cwd=tmp_path)
    assert r.returncode == 2 and "multiples of 16" in r.stderr
    r = server.cli("run", "missing", "x", cwd=tmp_path)
    assert r.returncode == 3 and "not found" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_run_starts_a_server(tmp_path, tiny_zimage_dir, runtime):
    """With nothing listening at a local OLLIMG_HOST, `run` starts `ollimg serve` in the background."""
    srv = Server(tmp_path)
    assert srv.cli("create", MODEL, "-f", str(tiny_zimage_dir)).returncode == 0
    r = None
    try:
        r = srv.cli("run", MODEL, "a cat", "--size", "16x16", "--steps", "1", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "started ollimg serve in the background" in r.stderr
        assert Path(r.stdout.split()[0]).is_file()
        assert (tmp_path / "data" / "ollimg" / "logs" / "server.log").is_file()
    finally:
        match = re.search(r"\(pid (\d+),", r.stderr if r else "")
        if match:  # stop the server `run` started, by its PID
            pid = int(match.group(1))
            os.kill(pid, signal.SIGINT)
            for _ in range(150):
                if not pid_alive(pid):
                    break
                time.sleep(0.1)


def _log_pids(log: Path, pattern: str, count: int, timeout: float = 60) -> list[int]:
    """The pids of the first `count` server log lines matching `pattern` (a regex with one `(\\d+)`)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(m) for m in re.findall(pattern, log.read_text())]
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def test_a_load_takes_the_spare_runtime_and_the_server_starts_the_next(tmp_path, tiny_zimage_dir, runtime):
    """The server keeps one runtime process started ahead (its imports done); a load takes it."""
    srv = Server(tmp_path)
    assert srv.cli("create", MODEL, "-f", str(tiny_zimage_dir)).returncode == 0
    srv.start()
    try:
        [spare] = _log_pids(srv.log, r"spare runtime started \(pid (\d+)\)", 1)
        assert pid_alive(spare)
        r = httpx.post(srv.url + "/api/generate", json={"model": MODEL, "prompt": "a cat", **SMALL, "stream": False},
                       timeout=120)
        assert r.status_code == 200 and r.json()["images"], r.text
        assert [m["pid"] for m in srv.ps()] == [spare]
        assert re.search(rf"loading .*{MODEL}.* in the spare runtime \(pid {spare}\)", srv.log.read_text())
        spares = _log_pids(srv.log, r"spare runtime started \(pid (\d+)\)", 2)
        assert len(spares) == 2 and spares[1] != spare and pid_alive(spares[1])
    finally:
        srv.stop()
    assert not [pid for pid in (spare, *spares) if pid_alive(pid)], "runtime processes outlived the server"


def test_without_a_spare_runtime_a_load_starts_its_own(tmp_path, tiny_zimage_dir, runtime):
    srv = Server(tmp_path, OLLIMG_SPARE_RUNTIME="off")
    assert srv.cli("create", MODEL, "-f", str(tiny_zimage_dir)).returncode == 0
    srv.start()
    try:
        r = httpx.post(srv.url + "/api/generate", json={"model": MODEL, "prompt": "a cat", **SMALL, "stream": False},
                       timeout=120)
        assert r.status_code == 200 and r.json()["images"], r.text
        assert "spare runtime" not in srv.log.read_text()
    finally:
        srv.stop()


# -- scheduling --------------------------------------------------------------------------------


def test_keep_alive_expiry(server, runtime):
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "x", "keep_alive": "1s", "stream": False, **SMALL}, timeout=120)
    assert r.status_code == 200
    [running] = server.ps()
    assert running["expires_at"] is not None
    pid = running["pid"]
    deadline = time.monotonic() + 15
    while server.ps() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.ps() == []
    assert not pid_alive(pid)


def test_serve_refuses_a_busy_port(server):
    r = subprocess.run([*OLLIMG, "serve"], env=server.env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "the port is in use" in r.stderr and "listening" not in r.stderr


def test_load_and_unload_with_empty_prompt(server, runtime):
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL}, timeout=120)
    assert r.json()["done_reason"] == "load"
    assert [m["name"] for m in server.ps()] == ["tiny:latest"]
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=120)
    assert r.json()["done_reason"] == "unload"
    assert server.ps() == []


SLOW = {"prompt": "slow", "width": 512, "height": 512, "steps": 200}


def _start_slow(server: Server):
    """Starts a long streamed generation; returns (client, response, first step line)."""
    client = httpx.Client(timeout=120)
    response = client.send(client.build_request("POST", server.url + "/api/generate", json={"model": MODEL, **SLOW}), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    first = json.loads(next(lines))
    return client, response, lines, first


def test_disconnect_cancels_work(server, runtime):
    client, response, lines, first = _start_slow(server)
    second = json.loads(next(lines))
    per_step = max(second["elapsed"] - first["elapsed"], 1e-3)
    response.close()
    client.close()
    started = time.monotonic()
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "next", "stream": False, **SMALL}, timeout=120)
    waited = time.monotonic() - started
    assert r.status_code == 200
    remaining = per_step * (SLOW["steps"] - 2)
    assert waited < remaining / 2, f"waited {waited:.1f} s; the cancelled generation had {remaining:.1f} s left"
    assert not server.ps()[0]["busy"]


def test_queue_overflow_is_503(server, runtime):
    client, response, lines, _ = _start_slow(server)
    queued_status = {}

    def queued():
        r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "q", "stream": False, **SMALL}, timeout=120)
        queued_status["status"] = r.status_code

    waiter = threading.Thread(target=queued)
    waiter.start()
    try:
        deadline = time.monotonic() + 30
        while server.ps()[0]["waiting"] < 1:  # then the queue (OLLIMG_MAX_QUEUE=1) is full
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.05)
        r = httpx.post(server.url + "/v1/images/generations", json={"model": MODEL, "prompt": "x", "size": "16x16"}, timeout=60)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "server_error"
    finally:
        response.close()
        client.close()
        waiter.join(120)
    assert queued_status["status"] == 200


def test_cli_ctrl_c_cancels_on_the_server(server, runtime, tmp_path):
    cmd = [*OLLIMG, "run", MODEL, "slow", "--size", "512x512", "--steps", "200"]
    proc = subprocess.Popen(  # SIGINT as on a terminal, even when the test runner was started with it ignored
        cmd, env=server.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not any(m["busy"] for m in server.ps()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    deadline = time.monotonic() + 20
    while any(m["busy"] for m in server.ps()):  # the server cancelled the generation
        assert time.monotonic() < deadline, "the generation kept running after Ctrl-C"
        time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []


def test_runtime_killed_mid_generation(server, runtime):
    client, response, lines, _ = _start_slow(server)
    [running] = server.ps()
    os.kill(running["pid"], signal.SIGKILL)
    rest = [json.loads(line) for line in lines if line.strip()]
    response.close()
    client.close()
    assert rest and rest[-1]["code"] == "runtime_failed", rest[-1:]
    assert rest[-1]["error"]
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "after", "stream": False, **SMALL}, timeout=120)
    assert r.status_code == 200, r.text
    [again] = server.ps()
    assert again["pid"] != running["pid"]


# -- store commands through the server ---------------------------------------------------------


def test_store_commands_go_through_the_server(server, tmp_path, tiny_zimage_dir):
    """list/show/cp/rm/create talk to the running server (its store), not to the CLI's own env."""
    elsewhere = dict(server.env, OLLIMG_MODELS=str(tmp_path / "other-store"))

    def cli(*args):
        return subprocess.run([*OLLIMG, *args], env=elsewhere, capture_output=True, text=True, timeout=120)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "tiny:latest" in [m["name"] for m in json.loads(listed.stdout)]
    shown = cli("show", MODEL, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "tiny:latest"
    assert cli("cp", MODEL, "tiny-copy").stdout.strip() == "copied 'tiny:latest' to 'tiny-copy:latest'"
    assert "tiny-copy:latest" in [m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]]
    removed = cli("rm", "tiny-copy")
    assert removed.returncode == 0 and "deleted 'tiny-copy:latest'" in removed.stdout
    created = cli("create", "tiny-two", "-f", str(tiny_zimage_dir), "--json")
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)
    assert result["name"] == "tiny-two:latest" and result["new_bytes"] == 0  # all blobs deduplicated
    assert cli("rm", "tiny-two").returncode == 0
    assert cli("rm", "nothing-here").returncode == 3
    assert not (tmp_path / "other-store").exists()


def test_cli_run_pulls_a_model_the_store_lacks(server, registry, tmp_path, runtime):
    """`run HOST/ns/model` on an empty store pulls it from its registry (shown on stderr), then generates."""
    name = f"{registry.host}/team/tiny-run:v1"
    assert server.cli("cp", MODEL, name).returncode == 0
    pushed = server.cli("push", name)
    assert pushed.returncode == 0, pushed.stderr
    assert server.cli("rm", name).returncode == 0

    (tmp_path / "fresh").mkdir()
    fresh = Server(tmp_path / "fresh").start()
    try:
        out = tmp_path / "pulled.png"
        r = fresh.cli("run", name, "a cat", "--size", "16x16", "--steps", "1", "--seed", "5", "-o", str(out))
        assert r.returncode == 0, r.stderr
        assert "pulling manifest" in r.stderr and "\nsuccess\n" in r.stderr
        assert r.stdout.strip() == f"{out}  seed 5" and Image.open(out).size == (16, 16)
        assert name.split("/", 1)[1] in fresh.cli("list").stdout

        missing = fresh.cli("run", f"{registry.host}/team/absent:v1", "x", cwd=tmp_path)
        assert missing.returncode == 3 and "not found in registry" in missing.stderr, missing.stderr
    finally:
        fresh.stop()


def test_cli_run_reads_a_piped_prompt(server, tmp_path, runtime):
    r = subprocess.run([*OLLIMG, "run", MODEL, "--size", "16x16", "--steps", "1", "--seed", "2"], env=server.env, cwd=tmp_path,
                       input="A Dog\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.split()[0])
    assert path.name.startswith("a-dog-") and path.parent == tmp_path and r.stdout.strip().endswith("seed 2")
    empty = subprocess.run([*OLLIMG, "run", MODEL], env=server.env, cwd=tmp_path, input="  \n", capture_output=True,
                           text=True, timeout=120)
    assert empty.returncode == 2 and "the prompt is empty" in empty.stderr


def test_cli_run_repl_at_a_terminal(server, tmp_path, runtime):
    """`run MODEL` with a terminal on stdin: prompts one per line, /set, /show, a bad line, /bye."""
    import pty
    import select

    main, child = pty.openpty()
    proc = subprocess.Popen([*OLLIMG, "run", MODEL], env=dict(server.env, TERM="dumb"), cwd=tmp_path,
                            stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    lines = ["/set size 16x16", "/set steps 1", "/set seed 9", "/set steps none", "/show", "a red cat", "/set n 2",
             "two dogs", "/bye"]
    output = b""

    def read(deadline: float) -> bytes:
        """What the terminal shows next; b"" once the deadline passes or the process closed it."""
        ready, _, _ = select.select([main], [], [], max(deadline - time.monotonic(), 0))
        try:
            return os.read(main, 65536) if ready else b""
        except OSError:  # EIO: the child side is closed
            return b""

    try:
        for i, line in enumerate(lines):  # one at a time, each after the prompt that asks for it
            deadline = time.monotonic() + 120
            while output.count(b">>> ") <= i and time.monotonic() < deadline:
                output += read(deadline)
            assert output.count(b">>> ") > i, output.decode(errors="replace")
            os.write(main, line.encode() + b"\r")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            output += read(deadline)
        while chunk := read(time.monotonic() + 0.5):  # what it wrote just before it exited
            output += chunk
        assert proc.wait(30) == 0, output.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = output.decode(errors="replace")
    assert "Set seed to 9." in text and "is not a number" in text
    assert "steps    1" in text and "seed     9" in text
    cats = sorted(tmp_path.glob("a-red-cat-*.png"))
    dogs = sorted(tmp_path.glob("two-dogs-*.png"))
    assert len(cats) == 1 and len(dogs) == 2, text
    assert Image.open(cats[0]).size == (16, 16)
    assert "seed 9" in text and "seed 10" in text  # the second image of n=2 gets seed + 1
