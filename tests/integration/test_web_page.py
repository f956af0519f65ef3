"""The web page in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright's
Python package through its executable path) against a real `ollimg serve` with the built-in
`shapes` model and a real docker-registry. One browser and one server for the module.

With OLLIMG_WEB_SCREENSHOTS=DIR, the tests that take screenshots also write them there
(`OLLIMG_WEB_SCREENSHOTS=docs ./scripts/test tests/integration/test_web_page.py` makes the README's).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ollimg.manifest import Name, Store
from ollimg.registry import push
from tests.integration.test_server import Server
from tests.synthetic_model import pipeline_tensors, write_model

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402  (a test dependency: missing, these fail)

CHROMIUM = "/usr/bin/chromium"
PROMPT = "a large red circle at the top left on a blue background"
SHOWCASE = [  # the README's prompts, for a gallery worth a screenshot
    "a large white triangle at the bottom right on a green background",
    "a large orange diamond on the right on a white background",
    "three small white stars on a red background",
    "a large black circle at the bottom left on an orange background",
]
TIMEOUT = 120_000  # ms: the first generation imports and loads the model on a busy 2-core machine
expect.set_options(timeout=TIMEOUT)

# Records what the page shows while it works (a MutationObserver, so nothing brief is missed).
RECORD = """() => {
  window.seen = { status: [], previews: [], pull: [], bar: [] };
  const text = (id, list) => new MutationObserver(() => list.push(document.getElementById(id).textContent))
    .observe(document.getElementById(id), { childList: true, characterData: true, subtree: true });
  text("status", window.seen.status);
  text("pull-status", window.seen.pull);
  window.seen.slots = [];  // every preview shown, in either view: [view, image index, src]
  new MutationObserver((records) => {
    for (const r of records) {
      const img = r.type === "attributes" ? r.target : null;
      if (!img || !img.classList.contains("preview")) continue;
      const view = img.closest(".view").id;
      if (view === "view-create") window.seen.previews.push(img.src);
      window.seen.slots.push([view, Number(img.closest(".slot").dataset.image), img.src]);
    }
  }).observe(document.querySelector("main"), { attributes: true, attributeFilter: ["src"], subtree: true });
  new MutationObserver(() => window.seen.bar.push(document.getElementById("pull-bar").value))
    .observe(document.getElementById("pull-bar"), { attributes: true });
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is needed: apt-get install chromium (scripts/system-deps)")
    srv = Server(tmp_path_factory.mktemp("web"), OLLIMG_KEEP_ALIVE="10m", OLLIMG_MAX_STEPS="200").start()  # Stop asks for 200
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: r.url.startswith(server.url) or r.url.startswith(("data:", "blob:"))
          or errors.append(f"request outside the server: {r.url}"))
    pg.set_default_timeout(TIMEOUT)
    yield pg
    context.close()
    assert not errors, errors


def open_page(pg: Page, server: Server, view: str = "create") -> None:
    pg.goto(f"{server.url}/#{view}")
    pg.evaluate(RECORD)
    expect(pg.locator(f"#view-{view}")).to_be_visible()
    if view in ("create", "edit"):
        prefix = "edit-" if view == "edit" else ""
        expect(pg.locator(f"#{prefix}model option").first).to_have_attribute("value", re.compile(r"\S"))


def generate(pg: Page, prompt: str, **fields: str) -> None:
    pg.fill("#prompt", prompt)
    for field, value in fields.items():
        pg.fill(f"#{field}", value)
    pg.focus("#prompt")
    pg.keyboard.press("Control+Enter")
    expect(pg.locator("#results img.final").first).to_be_visible()


def screenshot(pg: Page, path: Path, full_page: bool = False) -> None:
    """A screenshot that shows something; also written to OLLIMG_WEB_SCREENSHOTS when set."""
    pg.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as img:
        assert len(img.getcolors(1 << 16) or range(1 << 16)) > 16  # drawn, not blank
        if docs := os.environ.get("OLLIMG_WEB_SCREENSHOTS"):  # small files for the repo: 256 colours suit a UI
            img.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(Path(docs) / path.name, optimize=True)


def strip(data_urls: list[str], path: Path) -> None:
    frames = [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB") for url in dict.fromkeys(data_urls)]
    out = Image.new("RGB", (len(frames) * 136 - 8, 128), "white")
    for i, frame in enumerate(frames):
        out.paste(frame.resize((128, 128)), (i * 136, 0))
    out.save(path, optimize=True)


def gallery(server: Server, **params) -> dict:
    return httpx.get(server.url + "/api/gallery", params=params).json()


# -- create ---------------------------------------------------------------------------------------


def test_generate_shows_progress_previews_and_the_image(page, server):
    open_page(page, server)
    generate(page, PROMPT)
    seen = page.evaluate("window.seen")
    steps = [s for s in seen["status"] if s.startswith("Step ")]
    assert any(re.match(r"Step [1-7]/8 · .* elapsed · about .* left", s) for s in steps), seen["status"]
    assert len(set(seen["previews"])) >= 3 and all(p.startswith("data:image/png;base64,") for p in seen["previews"])
    final = page.locator("#results img.final")
    assert final.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 128]
    expect(page.locator("#results img.preview")).to_have_count(0)  # the final image replaced the preview
    expect(page.locator("#status")).to_have_text(re.compile(r"Done in "))
    expect(page.locator("#timings")).to_contain_text("denoise")
    if docs := os.environ.get("OLLIMG_WEB_SCREENSHOTS"):  # the previews the page showed, then the image
        strip(seen["previews"] + [final.get_attribute("src")], Path(docs) / "web-previews.png")
    seed = re.search(r"seed (\d+)", page.inner_text("#results figcaption")).group(1)
    kept = gallery(server, q=PROMPT)["images"]
    assert str(kept[0]["seed"]) == seed and kept[0]["steps"] == 8


def test_a_batch_of_two_shows_a_preview_of_each_image(page, server):
    open_page(page, server)
    generate(page, "a small green square in the center on a white background", n="2", steps="3", seed="11")
    expect(page.locator("#results img.final")).to_have_count(2)
    previews = [(i, src) for view, i, src in page.evaluate("window.seen.slots") if view == "view-create"]
    first, second = ([src for i, src in previews if i == k] for k in (0, 1))
    assert first and second and set(first).isdisjoint(second), previews  # each image its own previews
    assert gallery(server, q="green square")["total"] == 2


def test_bad_size_shows_an_error_next_to_the_field(page, server):
    open_page(page, server)
    before = gallery(server)["total"]
    page.select_option("#size", "custom")
    page.fill("#width", "100")
    page.fill("#height", "128")
    page.fill("#prompt", "a small yellow star")
    page.click("#generate")
    expect(page.locator("#size-error")).to_contain_text("multiple of 16")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    assert page.locator("#form-error").inner_text() == ""
    assert gallery(server)["total"] == before


def test_stop_cancels_on_the_server(page, server):
    open_page(page, server)
    before = gallery(server)["total"]
    page.fill("#prompt", "two small yellow squares on a black background")
    page.fill("#steps", "200")
    page.click("#generate")
    expect(page.locator("#status")).to_have_text(re.compile(r"Step \d+/200"))  # running (fast machines skip early steps)
    expect(page.locator("#results img.preview")).to_be_visible()  # the first of 20 previews: step 10
    page.click("#stop")
    expect(page.locator("#status")).to_have_text(re.compile("Stopped"))
    expect(page.locator("#generate")).to_be_enabled()
    page.wait_for_function("""async (url) => {
      const ps = await fetch(url + "/api/ps").then((r) => r.json());
      return ps.models.length && ps.models.every((m) => !m.busy);
    }""", arg=server.url, timeout=30_000)
    log = server.log.read_text()
    assert "cancelling generation on shapes:latest" in log
    assert gallery(server)["total"] == before


# -- edit -----------------------------------------------------------------------------------------


def picture(path: Path) -> bytes:
    """A 128x128 picture like the built-in model's: a red circle on a blue background."""
    from PIL import ImageDraw

    image = Image.new("RGB", (128, 128), (40, 60, 200))
    ImageDraw.Draw(image).ellipse((20, 20, 76, 76), fill=(220, 30, 30))
    image.save(path)
    return path.read_bytes()


# Drops an image on the Edit view, or pastes one, as a browser does: a DataTransfer holding a File.
HAND_OVER = """([how, b64]) => {
  const data = new DataTransfer();
  data.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], "start.png", { type: "image/png" }));
  if (how === "drop") {
    document.getElementById("edit-drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
  } else {
    document.getElementById("edit-prompt").dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
  }
}"""


def test_edit_with_a_painted_mask_lands_in_the_gallery(page, server, tmp_path):
    prompt = "a large yellow triangle at the bottom right on a blue background"
    source = picture(tmp_path / "start.png")
    open_page(page, server, "edit")
    page.set_input_files("#edit-file", str(tmp_path / "start.png"))
    canvas = page.locator("#edit-canvas")
    expect(canvas).to_be_visible()
    expect(page.locator("#edit-size")).to_have_value("")  # the image's size: the model's, 128x128
    canvas.focus()  # from the keyboard: the brush starts in the middle; a dot above it
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Space")
    dot = page.evaluate("[Math.round(paint.cursor.x), Math.round(paint.cursor.y)]")  # canvas pixels: the image's here
    assert dot[0] == 64 and dot[1] < 60
    box = canvas.bounding_box()  # with the mouse: a stroke in the bottom right
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.9, steps=5)
    page.mouse.up()
    page.focus("#edit-strength")
    for _ in range(4):
        page.keyboard.press("ArrowRight")  # 0.6 -> 0.8
    expect(page.locator("#edit-strength-value")).to_have_text("0.80")
    page.fill("#edit-prompt", prompt)
    page.fill("#edit-seed", "77")
    with page.expect_request("**/api/generate") as sent:
        page.keyboard.press("Control+Enter")
    expect(page.locator("#edit-results img.final")).to_be_visible()
    body = sent.value.post_data_json
    assert body["images"][0].endswith(base64.b64encode(source).decode()) and body["strength"] == 0.8
    with Image.open(io.BytesIO(base64.b64decode(body["mask"].split(",", 1)[1]))) as mask:  # transparent = redrawn
        alpha = mask.getchannel("A")
        assert mask.size == (128, 128) and alpha.getpixel((110, 110)) == 0 and alpha.getpixel((5, 120)) == 255
        assert alpha.getpixel(tuple(dot)) == 0 and alpha.getpixel((5, 5)) == 255  # the keyboard's dot
    assert any(view == "view-edit" for view, _, _ in page.evaluate("window.seen.slots"))  # previews, as in Create
    expect(page.locator("#edit-timings")).to_contain_text("strength 0.8")
    page.evaluate("document.activeElement.blur()")
    screenshot(page, tmp_path / "web-edit.png", full_page=True)

    kept = gallery(server, q=prompt)["images"]
    assert len(kept) == 1 and (kept[0]["seed"], kept[0]["strength"], kept[0]["mask"]) == (77, 0.8, True)
    assert kept[0]["source_digest"] == "sha256:" + hashlib.sha256(source).hexdigest()
    page.goto(f"{server.url}/#gallery")
    page.fill("#gallery-q", prompt)
    expect(page.locator(".thumb")).to_have_count(1)
    expect(page.locator(".thumb .badge")).to_have_text("edit")
    page.locator(".thumb").first.click()
    expect(page.locator("#viewer-params")).to_contain_text("strength 0.8, inside a mask")
    page.click("#viewer-reuse")  # the image it started from, its mask and its settings, back in Edit
    expect(page.locator("#view-edit")).to_be_visible()
    expect(page.locator("#edit-image-info")).to_contain_text("128×128")
    assert page.input_value("#edit-prompt") == prompt and page.input_value("#edit-seed") == "77"
    expect(page.locator("#edit-strength-value")).to_have_text("0.80")
    page.wait_for_function("() => maskPainted()")


def test_a_phone_photo_is_edited_upright(page, server, tmp_path):
    """A JPEG stored turned a quarter left with EXIF Orientation 6 (as a phone held upright writes it):
    the page shows it upright (128x96, not 96x128), and the mask painted on it fits the image the
    server reads (also upright), so the edit is made at 128x96."""
    upright = Image.open(io.BytesIO(picture(tmp_path / "start.png"))).crop((0, 16, 128, 112))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    open_page(page, server, "edit")
    page.set_input_files("#edit-file", str(tmp_path / "phone.jpg"))
    expect(page.locator("#edit-image-info")).to_have_text("phone.jpg, 128×96 pixels.")
    page.locator("#edit-canvas").focus()
    page.keyboard.press("Space")  # a dot in the middle
    page.fill("#edit-prompt", "a yellow star")
    page.fill("#edit-steps", "2")
    with page.expect_request("**/api/generate") as sent:
        page.click("#edit-generate")
    expect(page.locator("#edit-results img.final")).to_be_visible()
    with Image.open(io.BytesIO(base64.b64decode(sent.value.post_data_json["mask"].split(",", 1)[1]))) as mask:
        assert mask.size == (128, 96) and mask.getchannel("A").getpixel((64, 48)) == 0
    made = page.evaluate("[...document.querySelectorAll('#edit-results img.final')].map((i) => [i.naturalWidth, i.naturalHeight])")
    assert made == [[128, 96]]


def test_bad_edits_show_errors_next_to_their_field(page, server, tmp_path, tiny_zimage_dir):
    before = gallery(server)["total"]
    open_page(page, server, "edit")
    page.fill("#edit-prompt", "a red circle")
    page.click("#edit-generate")
    expect(page.locator("#edit-image-error")).to_contain_text("Choose, drop or paste an image")
    (tmp_path / "notes.png").write_text("not a picture")
    page.set_input_files("#edit-file", str(tmp_path / "notes.png"))
    expect(page.locator("#edit-image-error")).to_contain_text("notes.png is not an image this browser can read")
    expect(page.locator("#edit-file")).to_have_attribute("aria-invalid", "true")
    picture(tmp_path / "start.png")
    for how, name in (("drop", "start.png"), ("paste", "the pasted image")):  # the other two ways in
        page.evaluate(HAND_OVER, [how, base64.b64encode((tmp_path / "start.png").read_bytes()).decode()])
        expect(page.locator("#edit-image-info")).to_have_text(f"{name}, 128×128 pixels.")
        expect(page.locator("#edit-image-error")).to_be_empty()
        expect(page.locator("#edit-file")).not_to_have_attribute("aria-invalid", "true")

    no_encoder = tmp_path / "no-encoder"  # a model whose VAE cannot encode: it cannot edit
    shutil.copytree(tiny_zimage_dir, no_encoder)
    from safetensors.numpy import load_file, save_file

    vae = next((no_encoder / "vae").glob("*.safetensors"))
    save_file({k: v for k, v in load_file(vae).items() if not k.startswith(("encoder.", "quant_conv."))}, vae)
    httpx.post(server.url + "/api/create", json={"model": "noenc", "from": str(no_encoder)}, timeout=120).raise_for_status()
    try:
        page.reload()
        page.set_input_files("#edit-file", str(tmp_path / "start.png"))
        page.select_option("#edit-model", "noenc:latest")
        page.fill("#edit-prompt", "a red circle")
        page.fill("#edit-steps", "2")
        page.click("#edit-generate")
        expect(page.locator("#edit-model-error")).to_contain_text("cannot edit images: it has no VAE encoder")
        expect(page.locator("#edit-model")).to_have_attribute("aria-invalid", "true")
        assert page.inner_text("#edit-form-error") == "" and page.inner_text("#edit-image-error") == ""
    finally:
        httpx.request("DELETE", server.url + "/api/delete", json={"model": "noenc"}, timeout=60)
    assert gallery(server)["total"] == before


# -- gallery --------------------------------------------------------------------------------------


def test_gallery_after_reload_and_restart(page, server):
    prompt = "a small yellow star in the center on a purple background"
    open_page(page, server)
    generate(page, prompt, seed="4242")

    page.reload()
    page.goto(f"{server.url}/#gallery")
    thumb = page.locator(".thumb", has=page.locator(f'img[alt="{prompt}"]')).first
    expect(thumb.locator("img")).to_have_attribute("src", re.compile("^blob:"))

    server.stop()
    server.start()
    page.reload()
    page.fill("#gallery-q", "yellow star purple")
    expect(page.locator(".thumb")).to_have_count(1)
    thumb = page.locator(".thumb").first
    expect(thumb.locator("img")).to_have_attribute("src", re.compile("^blob:"))

    thumb.focus()
    page.keyboard.press("Enter")  # keyboard: thumbnails are buttons
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-params")).to_contain_text("4242")
    expect(page.locator("#viewer-img")).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator("#viewer-download")).to_have_attribute("href", re.compile("^blob:"))
    with page.expect_download() as download:
        page.click("#viewer-download")
    data = Path(download.value.path()).read_bytes()
    assert data.startswith(b"\x89PNG") and download.value.suggested_filename == "ollimg-4242.png"

    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.click("#viewer-seed")
    expect(page.locator("#toast")).to_have_text("Copied 4242")
    assert page.evaluate("navigator.clipboard.readText()") == "4242"

    page.click("#viewer-reuse")
    expect(page.locator("#view-create")).to_be_visible()
    assert page.input_value("#prompt") == prompt and page.input_value("#seed") == "4242"
    assert not page.locator("#seed-random").is_checked()

    page.goto(f"{server.url}/#gallery")
    page.fill("#gallery-q", "yellow star purple")
    expect(page.locator(".thumb")).to_have_count(1)
    page.locator(".thumb").first.click()
    page.click("#viewer-delete")
    page.click("#confirm-ok")
    expect(page.locator(".thumb")).to_have_count(0)
    assert gallery(server, q="yellow star purple")["total"] == 0


# -- models ---------------------------------------------------------------------------------------


def test_pull_shows_progress_then_delete(page, server, registry, tmp_path):
    name = f"{registry.host}/web/synthetic:v1"
    src = Store(tmp_path / "src")
    write_model(src, name, pipeline_tensors(12, 24 << 20, seed=17), {"model_index.json": b'{"_class_name": "Synthetic"}'}, 17)
    push(src, Name.parse(name))
    display = Name.parse(name).display()

    open_page(page, server, "models")
    page.fill("#pull-name", "no such/name!")
    page.click("#pull")
    expect(page.locator("#pull-error")).not_to_be_empty()

    page.fill("#pull-name", name)
    page.keyboard.press("Enter")
    expect(page.locator("#pull-status")).to_have_text(f"Pulled {name}.")
    seen = page.evaluate("window.seen")
    midway = [m for m in (re.fullmatch(r"pulling [0-9a-f]{12} · ([\d.]+) MB of ([\d.]+) MB", s) for s in seen["pull"]) if m]
    assert any(0 < float(m.group(1)) < float(m.group(2)) for m in midway), seen["pull"]
    fractions = [float(v) for v in seen["bar"]]
    assert any(0 < v < 1 for v in fractions) and fractions[-1] == 1
    row = page.locator(f'#models-table tr[data-model="{display}"]')
    expect(row).to_be_visible()

    row.get_by_role("button", name=f"Show {display}").click()
    expect(page.locator("#model-details")).to_contain_text("sha256:")
    page.keyboard.press("Escape")

    row.get_by_role("button", name=f"Delete {display}").click()
    page.click("#confirm-cancel")
    expect(row).to_be_visible()  # cancelled: still there
    row.get_by_role("button", name=f"Delete {display}").click()
    page.click("#confirm-ok")
    expect(row).to_have_count(0)
    assert display not in [m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]]


def test_loaded_models_and_unload(page, server):
    httpx.post(server.url + "/api/generate", json={"model": "shapes", "prompt": ""}, timeout=120).raise_for_status()
    open_page(page, server, "models")
    row = page.locator('#ps-table tr[data-model="shapes:latest"]')
    expect(row).to_contain_text("CPU")
    row.get_by_role("button", name="Unload shapes:latest").click()
    expect(row).to_have_count(0)
    assert server.ps() == []


# -- the API key, phone and dark ------------------------------------------------------------------


def test_api_key_asked_once_and_kept(browser, tmp_path):
    srv = Server(tmp_path)
    srv.env["OLLIMG_API_KEY"] = "open-sesame"
    srv.start()
    try:
        context = browser.new_context()
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(srv.url + "/")
        dialog = pg.locator("#key-dialog")
        expect(dialog).to_be_visible()
        pg.fill("#key-input", "wrong")
        pg.keyboard.press("Enter")
        expect(pg.locator("#key-error")).to_contain_text("refused")
        pg.fill("#key-input", "open-sesame")
        pg.keyboard.press("Enter")
        expect(pg.locator("#model option").first).to_have_attribute("value", "shapes:latest")
        expect(dialog).to_be_hidden()
        pg.reload()  # kept in the browser: not asked again
        expect(pg.locator("#model option").first).to_have_attribute("value", "shapes:latest")
        expect(pg.locator("#forget-key")).to_be_visible()
        assert not dialog.is_visible()
        context.close()
    finally:
        srv.stop()


SLOW_REFUSALS = """() => {
  const fetch0 = window.fetch;
  window.fetch = async (path, init = {}) => {
    const auth = (init.headers || {}).Authorization || "";
    const response = await fetch0(path, init);
    const wait = String(path).startsWith("/api/version") && !auth ? 1500 : auth === "Bearer wrong" ? 3000 : 0;
    await new Promise((resolve) => setTimeout(resolve, wait));
    return response;
  };
}"""


def test_a_late_refusal_does_not_hide_why_the_key_is_asked_again(browser, tmp_path):
    """A slow server, made so by the page's own fetch: a request sent with no key is refused only after
    the wrong key was saved, and the retries with that key are refused later still. The late refusal
    must not ask again with no reason given (the key it lacked is there now): the page retries it, and
    the retries' refusal says the key was refused (a busy CI machine once did this by itself)."""
    srv = Server(tmp_path)
    srv.env["OLLIMG_API_KEY"] = "open-sesame"
    srv.start()
    try:
        context = browser.new_context()
        context.add_init_script(f"({SLOW_REFUSALS})()")
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(srv.url + "/")
        expect(pg.locator("#key-dialog")).to_be_visible()
        pg.fill("#key-input", "wrong")
        pg.keyboard.press("Enter")
        expect(pg.locator("#key-error")).to_contain_text("refused", timeout=15_000)
        pg.fill("#key-input", "open-sesame")
        pg.keyboard.press("Enter")
        expect(pg.locator("#version")).to_contain_text("ollimg")
        expect(pg.locator("#key-dialog")).to_be_hidden()
        context.close()
    finally:
        srv.stop()


@pytest.mark.timeout(600)  # five generations: on a busy 2-core machine each can take 20 s
def test_views_on_desktop_and_phone(browser, server, tmp_path):
    """Each view light and dark, desktop and phone: nothing wider than the screen; screenshots."""
    for prompt in SHOWCASE:
        httpx.post(server.url + "/api/generate", json={"model": "shapes", "prompt": prompt, "seed": 1, "stream": False,
                                                       "gallery": True}, timeout=120).raise_for_status()
    for label, viewport, scheme in (("", {"width": 1100, "height": 700}, "light"),
                                    ("-phone", {"width": 390, "height": 760}, "dark")):
        context = browser.new_context(viewport=viewport, color_scheme=scheme)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT)
        for view in ("create", "edit", "gallery", "models") if label else ("create", "gallery", "models"):
            pg.goto(f"{server.url}/#{view}")
            if view == "create":
                expect(pg.locator("#model option").first).to_have_attribute("value", re.compile(r"\S"))
                if not label:  # once is enough: the phone shows the form
                    generate(pg, PROMPT, seed="1")
            elif view == "edit":  # on the phone (the desktop's is the edit test's): an image and a stroke of mask
                picture(tmp_path / "start.png")
                pg.set_input_files("#edit-file", str(tmp_path / "start.png"))
                canvas = pg.locator("#edit-canvas")
                expect(canvas).to_be_visible()  # once the image is decoded: before, it has no box
                box = canvas.bounding_box()
                pg.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.8)
                pg.mouse.down()
                pg.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8, steps=4)
                pg.mouse.up()
                assert pg.evaluate("maskPainted()")
            elif view == "gallery":
                expect(pg.locator(".thumb img").first).to_have_attribute("src", re.compile("^blob:"))
            else:
                expect(pg.locator("#models-table tbody tr").first).to_contain_text("shapes:latest")
            assert pg.evaluate("document.scrollingElement.scrollWidth") <= viewport["width"]
            background = pg.evaluate("getComputedStyle(document.body).backgroundColor")
            assert (background == "rgb(17, 20, 24)") == (scheme == "dark"), background
            screenshot(pg, tmp_path / f"web-{view}{label}.png")
        context.close()
