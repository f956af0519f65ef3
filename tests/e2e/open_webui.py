"""Open WebUI end to end against a fresh `ollimg serve` (not in CI: Open WebUI's install is ~3 GB).

    python tests/e2e/open_webui.py [--out DIR]

1. Installs Open WebUI 0.12.4 and Playwright in their own venv (OLLIMG_E2E_DIR, default
   ~/.cache/ollimg-e2e/open-webui; skipped when already there). Needs Debian's `chromium`
   (apt-get install -y chromium): Playwright drives it through executable_path.
2. Starts `ollimg serve` on a free port with an empty store, and Open WebUI configured as a user
   would: image generation on, its OpenAI engine pointed at ollimg's /v1, no model chosen.
3. Signs up the admin, generates through the OpenAI engine (it sends `dall-e-2` and 512x512),
   switches to the AUTOMATIC1111 engine (50 steps by default) and generates again, copies the
   model so the store has two, restarts ollimg and generates through the A1111 engine once more.
4. Generates from Open WebUI's images page (/playground/images) in headless Chromium and saves
   a screenshot (DIR/open-webui-images.png, default: the current directory).
Every image Open WebUI stored is fetched back from it and checked (a PNG of the shapes model's
128x128: the clients' stock settings gave way to the model's defaults). Exits non-zero with the
step that failed; prints one line per step.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("OLLIMG_E2E_DIR", Path.home() / ".cache" / "ollimg-e2e" / "open-webui"))
OPEN_WEBUI = "open-webui==0.12.4"
PLAYWRIGHT = "playwright==1.65.2"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "a large red circle at the top left on a blue background"
ADMIN = {"name": "admin", "email": "admin@example.com", "password": "correct-horse-battery"}


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install() -> Path:
    python = VENV / "bin" / "python"
    if (VENV / "bin" / "open-webui").exists():
        step(f"Open WebUI already installed in {VENV}")
        return python
    step(f"installing {OPEN_WEBUI} and {PLAYWRIGHT} into {VENV} (large: several minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # torch first, pinned to the CPU build pip finds locally, so open-webui does not pull a CUDA one
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", OPEN_WEBUI, PLAYWRIGHT], check=True)
    return python


def http(method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 600):
    """(status, parsed JSON or raw bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            raw, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype else raw


def wait_up(url: str, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"FAILED: {url} exited with {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise SystemExit(f"FAILED: {url} did not answer within {seconds:.0f} s; log {log}")


class Process:
    def __init__(self, args: list[str], env: dict, log: Path):
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen | None = None

    def start(self, url: str, seconds: float) -> "Process":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_up(url, self.proc, self.log, seconds)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def check_images(webui: str, token: str, files: list, what: str) -> None:
    from PIL import Image

    if not isinstance(files, list) or not files:
        raise SystemExit(f"FAILED: {what}: Open WebUI answered {files!r}")
    for f in files:
        status, data = http("GET", webui + f["url"], token=token)
        if status != 200:
            raise SystemExit(f"FAILED: {what}: {f['url']} answered {status}")
        image = Image.open(io.BytesIO(data))
        if (image.format, image.size) != ("PNG", (128, 128)):
            raise SystemExit(f"FAILED: {what}: got a {image.format} of {image.size}, expected a 128x128 PNG")
    step(f"ok: {what}: {len(files)} image(s), 128x128 PNG")


def generate(webui: str, token: str, what: str) -> None:
    started = time.monotonic()
    status, files = http("POST", webui + "/api/v1/images/generations", {"prompt": PROMPT}, token=token)
    if status != 200:
        raise SystemExit(f"FAILED: {what}: Open WebUI answered {status}: {files!r}")
    check_images(webui, token, files, f"{what} ({time.monotonic() - started:.1f} s)")


def use_engine(webui: str, token: str, engine: str, model: str) -> None:
    status, cfg = http("GET", webui + "/api/v1/images/config", token=token)
    assert status == 200, cfg
    cfg.update(IMAGE_GENERATION_ENGINE=engine, IMAGE_GENERATION_MODEL=model)
    status, body = http("POST", webui + "/api/v1/images/config/update", cfg, token=token)
    if status != 200:
        raise SystemExit(f"FAILED: switching Open WebUI to the {engine} engine: {status} {body!r}")
    step(f"Open WebUI now uses its {engine} engine (model {model or 'not set'}, steps {cfg.get('IMAGE_STEPS')}, "
         f"size {cfg.get('IMAGE_SIZE')})")


def screenshot(python: Path, webui: str, out: Path) -> None:
    """Generates from Open WebUI's images page in headless Chromium and saves a screenshot."""
    script = f"""
import re
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path={CHROMIUM!r}, args=["--no-sandbox"])
    page = browser.new_page(viewport={{"width": 1280, "height": 900}})
    try:
        page.goto({webui!r} + "/auth")  # sign in as a user does
        page.get_by_placeholder(re.compile("email", re.I)).fill({ADMIN["email"]!r})
        page.get_by_placeholder(re.compile("password", re.I)).fill({ADMIN["password"]!r})
        page.get_by_role("button", name=re.compile("sign in", re.I)).click()
        page.wait_for_url(lambda url: "/auth" not in url, timeout=60000)
        page.goto({webui!r} + "/playground/images")
        box = page.get_by_placeholder(re.compile("Describe the image", re.I))
        box.wait_for(timeout=60000)
        for _ in range(5):  # first-visit dialogs (what's new): dismiss them
            dialog = page.locator("div[role=dialog]")
            if not dialog.count() or not dialog.first.is_visible():
                break
            ok = dialog.first.get_by_role("button", name=re.compile("okay|let.s go|close|dismiss", re.I))
            ok.first.click() if ok.count() else page.keyboard.press("Escape")
            page.wait_for_timeout(500)
        box.click()
        box.fill({PROMPT!r})
        page.keyboard.press("Control+Enter")  # the page's own shortcut for its Generate button
        page.wait_for_selector("img[src*='/files/']", timeout=300000)
        page.wait_for_timeout(1000)
        page.screenshot(path={str(out)!r}, full_page=True)
    except Exception:
        page.screenshot(path={str(out.with_name("open-webui-failed.png"))!r}, full_page=True)
        raise
    finally:
        browser.close()
"""
    r = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"FAILED: the images page in Chromium:\n{r.stderr[-3000:]}")
    step(f"ok: Open WebUI's images page generated in headless Chromium; screenshot {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path.cwd(), help="where the screenshot goes")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit("FAILED: Debian's chromium is needed: apt-get install -y chromium")
    python = install()
    work = Path(tempfile.mkdtemp(prefix="ollimg-e2e-"))
    step(f"work dir {work}")
    ollimg_port, webui_port = free_port(), free_port()
    ollimg_url, webui = f"http://127.0.0.1:{ollimg_port}", f"http://127.0.0.1:{webui_port}"
    ollimg_env = dict(os.environ, OLLIMG_HOST=f"127.0.0.1:{ollimg_port}", OLLIMG_MODELS=str(work / "models"),
                      XDG_DATA_HOME=str(work / "ollimg-data"), PYTHONPATH=str(ROOT))
    ollimg_env.pop("OLLIMG_API_KEY", None)
    serve = Process([sys.executable, "-m", "ollimg", "serve"], ollimg_env, work / "ollimg.log")
    webui_env = dict(
        os.environ, DATA_DIR=str(work / "webui-data"), WEBUI_SECRET_KEY="e2e", OFFLINE_MODE="true",
        HF_HUB_OFFLINE="1", ENABLE_OLLAMA_API="false", ENABLE_OPENAI_API="false", ENABLE_IMAGE_GENERATION="true",
        IMAGE_GENERATION_ENGINE="openai", IMAGES_OPENAI_API_BASE_URL=ollimg_url + "/v1", IMAGES_OPENAI_API_KEY="",
        AUTOMATIC1111_BASE_URL=ollimg_url, RAG_EMBEDDING_MODEL_AUTO_UPDATE="false", ENABLE_VERSION_UPDATE_CHECK="false",
    )
    webui_proc = Process([str(VENV / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(webui_port)],
                         webui_env, work / "open-webui.log")
    try:
        serve.start(ollimg_url + "/", 60)
        step(f"ollimg serve up at {ollimg_url} (empty store)")
        webui_proc.start(webui + "/health", 600)
        step(f"Open WebUI up at {webui}")
        status, auth = http("POST", webui + "/api/v1/auths/signup", ADMIN)
        if status != 200:
            raise SystemExit(f"FAILED: signing up the admin: {status} {auth!r}")
        token = auth["token"]

        generate(webui, token, "OpenAI engine, no model set (Open WebUI sends dall-e-2, 512x512)")
        use_engine(webui, token, "automatic1111", "")
        generate(webui, token, "AUTOMATIC1111 engine (50 steps, 512x512 from Open WebUI)")
        use_engine(webui, token, "automatic1111", "shapes:latest")
        copied = subprocess.run([sys.executable, "-m", "ollimg", "cp", "shapes", "shapes-copy"], env=ollimg_env,
                                capture_output=True, text=True)
        assert copied.returncode == 0, copied.stderr
        serve.stop()
        serve.start(ollimg_url + "/", 60)
        step("ollimg serve restarted with two models in the store")
        generate(webui, token, "AUTOMATIC1111 engine after the ollimg restart")
        use_engine(webui, token, "openai", "shapes")
        generate(webui, token, "OpenAI engine with the model set to shapes")
        args.out.mkdir(parents=True, exist_ok=True)
        screenshot(python, webui, args.out / "open-webui-images.png")
        step("PASSED")
    finally:
        webui_proc.stop()
        serve.stop()


if __name__ == "__main__":
    main()
