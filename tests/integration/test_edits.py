"""Edits through a real `ollimg serve` (real runtime processes, the tiny fixture model): the
official `openai` client's `images.edit` (multipart, one and several images, mask, streamed and
not), native `/api/generate` with images, and every bad input answered with a 4xx before any work.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.integration.test_server import Server, decode

MODEL = "tiny"
LIMIT = 3 * 1024 * 1024  # OLLIMG_MAX_UPLOAD of this server
BODY_LIMIT = 1_000_000  # its OLLIMG_MAX_BODY (1MB): smaller, and not for the multipart upload


def png(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, save.pop("format", "PNG"), **save)
    return out.getvalue()


def photo(w: int = 70, h: int = 53) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 3 % 256, y * 4 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def alpha_mask(w: int = 70, h: int = 53) -> Image.Image:
    """OpenAI's mask: transparent (alpha 0) where the image is edited."""
    rgba = np.full((h, w, 4), 255, np.uint8)
    rgba[10:40, 20:60, 3] = 0
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_zimage_dir, tiny_klein_dir):
    root = tmp_path_factory.mktemp("serve-edits")
    srv = Server(root, OLLIMG_KEEP_ALIVE="5m", OLLIMG_MAX_UPLOAD="3MiB", OLLIMG_MAX_BODY="1MB")
    assert srv.cli("create", MODEL, "-f", str(tiny_zimage_dir)).returncode == 0
    no_encoder = root / "no-encoder"
    shutil.copytree(tiny_zimage_dir, no_encoder)
    from safetensors.numpy import load_file, save_file

    vae = next((no_encoder / "vae").glob("*.safetensors"))
    save_file({k: v for k, v in load_file(vae).items() if not k.startswith(("encoder.", "quant_conv."))}, vae)
    created = srv.cli("create", "noenc", "-f", str(no_encoder))
    assert created.returncode == 0, created.stderr
    created = srv.cli("create", "klein", "-f", str(tiny_klein_dir))
    assert created.returncode == 0, created.stderr
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="anything", max_retries=0)


def test_openai_edit_one_image(oai):
    result = oai.images.edit(model=MODEL, image=("in.png", png(photo())), prompt="a red barn", n=2,
                             extra_body={"steps": 3, "seed": 9, "strength": 0.5})
    assert result.size == "64x48" and len(result.data) == 2
    images = [decode(d.b64_json) for d in result.data]
    assert {im.size for im in images} == {(64, 48)}
    assert [d.model_extra["seed"] for d in result.data] == [9, 10]
    assert images[0].tobytes() != images[1].tobytes()


def test_openai_edit_with_mask_keeps_the_rest(oai):
    kwargs = dict(model=MODEL, image=("in.png", png(photo())), mask=("mask.png", png(alpha_mask())), size="64x48",
                  output_format="png")
    a = oai.images.edit(prompt="a cat", extra_body={"steps": 3, "seed": 1, "strength": 1.0}, **kwargs)
    b = oai.images.edit(prompt="a completely different prompt", extra_body={"steps": 3, "seed": 1, "strength": 1.0},
                        **kwargs)
    pa, pb = (np.asarray(decode(r.data[0].b64_json)).astype(int) for r in (a, b))
    # Kept: the top rows (outside the edited rectangle) hold the same latents, so they decode nearly alike
    # (the tiny VAE's mid-block attention lets every pixel see the edit a little); edited: they differ.
    kept, edited = np.abs(pa[:4] - pb[:4]).mean(), np.abs(pa[16:32, 32:48] - pb[16:32, 32:48]).mean()
    assert kept < 1.5 and edited > 4 * kept, (kept, edited)


def test_openai_edit_streamed(oai):
    events = list(oai.images.edit(model=MODEL, image=("in.png", png(photo())), prompt="a star", stream=True,
                                  partial_images=1, output_format="jpeg",
                                  extra_body={"steps": 4, "strength": 0.75, "progress": True}))
    types = [e.type for e in events]
    assert types.count("progress") == 3  # 0.75 of 4 steps
    assert "image_edit.partial_image" in types and types[-1] == "image_edit.completed"
    assert decode(events[-1].b64_json).format == "JPEG"


def test_openai_edit_several_images_reach_the_server(oai):
    """The SDK sends a list as image[] parts; Z-Image edits one, and the server says so before loading."""
    with pytest.raises(openai.BadRequestError, match="takes at most 1 input image, got 2"):
        oai.images.edit(model=MODEL, image=[("a.png", png(photo())), ("b.png", png(photo(32, 32)))], prompt="x",
                        extra_body={"steps": 2})


def test_native_generate_with_images_and_metadata(server):
    source = png(photo())
    mask = Image.new("L", (70, 53), 0)
    mask.paste(255, (20, 10, 60, 40))
    r = httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "a boat", "stream": False, "steps": 3, "seed": 4, "strength": 0.6,
        "images": [base64.b64encode(source).decode()], "mask": base64.b64encode(png(mask)).decode()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (64, 48)
    image = decode(body["images"][0])
    import hashlib

    text = image.info["parameters"]
    assert "Denoising strength: 0.6" in text
    assert f"Source image hash: {hashlib.sha256(source).hexdigest()}" in text


def test_native_edit_kept_in_the_gallery_with_its_parameters(server):
    """What the web page's Edit view does: stream with previews, keep in the gallery, read it back."""
    source = png(photo())
    mask = Image.new("L", (70, 53), 0)
    mask.paste(255, (20, 10, 60, 40))
    body = {"model": MODEL, "prompt": "a boat", "steps": 4, "seed": 4, "strength": 0.5, "n": 2, "previews": 1,
            "gallery": True, "images": ["data:image/png;base64," + base64.b64encode(source).decode()],
            "mask": base64.b64encode(png(mask)).decode()}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as r:
        lines = [json.loads(text) for text in r.iter_lines() if text.strip()]
    previews, done = [ln for ln in lines if "preview" in ln], lines[-1]
    assert [p["image_index"] for p in previews] == [0, 1] and done["strength"] == 0.5
    for image_id, seed in zip(done["gallery_ids"], (4, 5), strict=True):
        kept = httpx.get(f"{server.url}/api/gallery/{image_id}").json()
        assert (kept["seed"], kept["strength"], kept["mask"]) == (seed, 0.5, True)
        assert kept["source_digest"] == "sha256:" + hashlib.sha256(source).hexdigest()
        served = httpx.get(f"{server.url}/api/gallery/{image_id}/source")
        assert served.status_code == 200 and Image.open(io.BytesIO(served.content)).size == (70, 53)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(served.content))), np.asarray(photo()))
        served = httpx.get(f"{server.url}/api/gallery/{image_id}/mask")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(served.content))), np.asarray(mask))
    plain = httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "x", "steps": 1, "width": 32, "height": 32, "stream": False, "gallery": True}).json()
    kept = httpx.get(f"{server.url}/api/gallery/{plain['gallery_ids'][0]}").json()
    assert kept["strength"] is None and kept["mask"] is False and plain.get("strength") is None
    assert httpx.get(f"{server.url}/api/gallery/{kept['id']}/source").status_code == 404


def test_native_edit_errors_name_their_field(server):
    """A bad image (param images), a mask of another size (param mask), a model that cannot edit (param
    model): all before the stream starts (the last refused before the model loads)."""
    r = httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "x", "images": [base64.b64encode(b"not an image").decode()]})
    assert r.status_code == 400 and r.json()["param"] == "images" and "is not an image" in r.json()["error"]
    r = httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": MODEL, "prompt": "x", "images": [base64.b64encode(png(photo())).decode()],
        "mask": base64.b64encode(png(alpha_mask(64, 48))).decode()})
    assert r.status_code == 400 and r.json()["param"] == "mask"
    with httpx.stream("POST", server.url + "/api/generate", timeout=120, json={
            "model": "noenc", "prompt": "x", "steps": 2, "images": [base64.b64encode(png(photo())).decode()]}) as r:
        status, last = r.status_code, [json.loads(text) for text in r.iter_lines() if text.strip()][-1]
    assert status == 400 and last["param"] == "model" and "cannot edit images: it has no VAE encoder" in last["error"]


def edit_status(server, files, data=None) -> httpx.Response:
    return httpx.post(server.url + "/v1/images/edits", files=files, data={"model": MODEL, "prompt": "x", **(data or {})},
                      timeout=60)


def bomb() -> bytes:
    """A valid PNG header claiming 100000x100000 pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


@pytest.mark.parametrize("files, data, status, message", [
    ({"image": ("a.txt", b"hello, not an image")}, {}, 400, "image is not an image"),
    ({"image": ("a.png", png(photo(300, 200))[:-300])}, {}, 400, "truncated or corrupt"),
    ({"image": ("bomb.png", bomb())}, {}, 400, "image is too large"),
    ({"image": ("a.gif", animated())}, {}, 400, "animated (2 frames)"),
    ({"image": ("a.png", png(photo())), "mask": ("m.png", png(alpha_mask(64, 48)))}, {}, 400,
     "the mask is 64x48 but the image is 70x53"),
    ({"image": ("a.png", png(photo()))}, {"strength": "0"}, 400, "strength"),
    ({"image": ("a.png", png(photo()))}, {"strength": "1.5"}, 400, "strength"),
    ({"mask": ("m.png", png(alpha_mask()))}, {}, 400, "image is required"),
])
def test_bad_uploads(server, files, data, status, message):
    r = edit_status(server, files, data)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_converted_images_are_accepted(server):
    """CMYK JPEG and 16-bit greyscale PNG are converted to 8-bit RGB (documented), not refused."""
    cmyk = png(photo().convert("CMYK"), format="JPEG")
    grey16 = png(Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)))
    for data in (cmyk, grey16):
        r = edit_status(server, {"image": ("in", data)}, {"steps": "2", "strength": "0.5"})
        assert r.status_code == 200, r.text
        assert decode(r.json()["data"][0]["b64_json"]).size == (64, 48)


def test_upload_limit_before_the_body_is_read(server):
    big = b"\0" * (LIMIT + 1)
    r = edit_status(server, {"image": ("big.png", big)})
    assert r.status_code == 413 and "OLLIMG_MAX_UPLOAD" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while read
        for _ in range(LIMIT // 65536 + 2):
            yield b"\0" * 65536

    r = httpx.post(server.url + "/v1/images/edits", content=chunks(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def padded_png(image: Image.Image, pad: int) -> bytes:
    """`image` as a PNG made `pad` bytes longer by a private ancillary chunk that readers skip."""
    import struct
    import zlib

    data = png(image)
    chunk = struct.pack(">I", pad - 12) + b"prVt" + b"\0" * (pad - 12)
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]))
    return data[:33] + chunk + data[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def upload_of(server, size: int) -> httpx.Request:
    """A multipart edit request (one image, steps 2) of exactly `size` bytes."""
    def request(pad: int) -> httpx.Request:
        image = padded_png(photo(32, 32), pad) if pad else png(photo(32, 32))
        r = httpx.Request("POST", server.url + "/v1/images/edits", files={"image": ("in.png", image)},
                          data={"model": MODEL, "prompt": "x", "steps": "2", "strength": "0.5"})
        r.read()
        return r

    r = request(size - len(request(0).content))
    assert len(r.content) == size and r.headers["content-length"] == str(size)
    return r


def test_an_upload_up_to_max_upload_is_taken_though_max_body_is_smaller(server):
    """OLLIMG_MAX_UPLOAD (3MiB here) governs the multipart edit upload; OLLIMG_MAX_BODY (1MB) does not:
    exactly the upload limit is accepted, one byte more is a 413 naming OLLIMG_MAX_UPLOAD."""
    with httpx.Client(timeout=120) as client:
        r = client.send(upload_of(server, LIMIT))
        assert r.status_code == 200, r.text
        assert decode(r.json()["data"][0]["b64_json"]).size == (32, 32)
        r = client.send(upload_of(server, LIMIT + 1))
        assert r.status_code == 413 and "OLLIMG_MAX_UPLOAD" in r.json()["error"]["message"], r.text


def test_max_body_holds_for_json_images(server):
    """Base64 images in JSON (/api/generate, /sdapi) count against OLLIMG_MAX_BODY: a body of exactly
    the limit is taken (JSON whitespace pads it), one byte more is a 413 naming OLLIMG_MAX_BODY."""
    body = json.dumps({"model": MODEL, "prompt": "x", "stream": False, "steps": 2, "strength": 0.5,
                       "images": [base64.b64encode(png(photo(32, 32))).decode()]})
    for size, status in ((BODY_LIMIT, 200), (BODY_LIMIT + 1, 413)):
        padded = body[:-1] + " " * (size - len(body)) + "}"
        r = httpx.post(server.url + "/api/generate", content=padded.encode(), timeout=120,
                       headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
    assert "OLLIMG_MAX_BODY" in r.json()["error"]


def test_a_bad_upload_limit_stops_serve_at_start(tmp_path):
    srv = Server(tmp_path, OLLIMG_MAX_UPLOAD="lots")
    r = srv.cli("serve", timeout=60)
    assert r.returncode == 2 and "OLLIMG_MAX_UPLOAD='LOTS': use a size like 32MB or 1048576" in r.stderr, r.stderr


def test_a_model_that_cannot_edit_is_refused_before_it_loads(server):
    """On every interface: a 400 naming the reason, and the model never loaded."""
    message = "model noenc:latest cannot edit images: it has no VAE encoder"
    image = base64.b64encode(png(photo())).decode()
    r = httpx.post(server.url + "/v1/images/edits", files={"image": ("a.png", png(photo()))},
                   data={"model": "noenc", "prompt": "x"}, timeout=120)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    r = httpx.post(server.url + "/api/generate", json={"model": "noenc", "prompt": "x", "images": [image]}, timeout=120)
    assert r.status_code == 400 and message in r.json()["error"]
    r = httpx.post(server.url + "/sdapi/v1/img2img", timeout=120, json={
        "prompt": "x", "init_images": [image], "override_settings": {"sd_model_checkpoint": "noenc"}})
    assert r.status_code == 400 and message in r.text
    assert "noenc" not in {m["name"].split(":")[0] for m in server.ps()}


def test_cli_run_with_image_and_mask(server, tmp_path):
    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    source.write_bytes(png(photo()))
    m = Image.new("L", (70, 53), 0)
    m.paste(255, (20, 10, 60, 40))
    m.save(mask)
    out = tmp_path / "out.png"
    r = server.cli("run", MODEL, "a boat", "--image", str(source), "--mask", str(mask), "--strength", "0.8",
                   "--steps", "3", "--seed", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    image = Image.open(out)
    assert image.size == (64, 48) and "Denoising strength: 0.8" in image.info["parameters"]


@pytest.mark.parametrize("args, message", [
    (["--strength", "1.5"], "strength 1.5: use a number above 0 and at most 1"),
    (["--mask", "m.png"], "--mask and --strength need --image"),
    (["--image", "missing.png"], "cannot read missing.png"),
])
def test_cli_bad_edit_arguments(server, tmp_path, args, message):
    source = tmp_path / "in.png"
    source.write_bytes(png(photo()))
    first = ["--image", str(source)] if args[0] == "--strength" else []
    r = server.cli("run", MODEL, "x", *first, *args, "--steps", "2", cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_cli_not_an_image(server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    r = server.cli("run", MODEL, "x", "--image", str(bad), "--steps", "2", cwd=tmp_path)
    assert r.returncode == 2 and "image is not an image" in r.stderr, r.stderr


def test_a1111_img2img_and_inpaint(server):
    source = base64.b64encode(png(photo())).decode()
    m = Image.new("L", (70, 53), 0)
    m.paste(255, (20, 10, 60, 40))
    body = {"prompt": "a boat", "init_images": ["data:image/png;base64," + source], "denoising_strength": 0.5,
            "steps": 4, "seed": 3, "override_settings": {"sd_model_checkpoint": MODEL}}
    r = httpx.post(server.url + "/sdapi/v1/img2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    import json

    info = json.loads(r.json()["info"])
    assert (info["width"], info["height"]) == (64, 48)
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    inpaint = {**body, "mask": base64.b64encode(png(m)).decode(), "mask_blur": 4, "inpainting_fill": 1,
               "inpainting_mask_invert": 1}
    r = httpx.post(server.url + "/sdapi/v1/img2img", json=inpaint, timeout=120)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (64, 48)


@pytest.mark.parametrize("extra, message", [
    ({"inpainting_fill": 0}, "inpainting_fill 0 is not supported"),
    ({"inpaint_full_res": True}, "inpaint_full_res (only masked) is not supported"),
    ({"resize_mode": 2}, "resize_mode 2 is not supported"),
    ({"init_images": ["!!not base64!!"]}, "init_images must be base64-encoded images"),
    ({"denoising_strength": 0}, "denoising_strength"),
])
def test_a1111_img2img_refuses(server, extra, message):
    body = {"prompt": "x", "init_images": [base64.b64encode(png(photo())).decode()], "steps": 2,
            "override_settings": {"sd_model_checkpoint": MODEL}, **extra}
    r = httpx.post(server.url + "/sdapi/v1/img2img", json=body, timeout=60)
    assert r.status_code in (400, 422) and message in r.text, r.text


def test_cfg_knobs_on_every_interface(server, oai, tmp_path):
    """cfg_truncation 0.4 keeps CFG for the first step only; each interface passes it through (same image),
    and it changes the image; cfg_normalization 0.01 does too."""
    common = {"steps": 3, "seed": 8}
    guided = oai.images.generate(model=MODEL, prompt="a kite", size="32x32", extra_body={
        **common, "guidance_scale": 4, "negative_prompt": "blurry"})
    truncated = oai.images.generate(model=MODEL, prompt="a kite", size="32x32", extra_body={
        **common, "guidance_scale": 4, "negative_prompt": "blurry", "cfg_truncation": 0.4})
    reference = decode(truncated.data[0].b64_json).tobytes()
    assert reference != decode(guided.data[0].b64_json).tobytes()
    body = {"model": MODEL, "prompt": "a kite", "stream": False, "width": 32, "height": 32, "guidance": 4,
            "negative_prompt": "blurry", **common}
    native = httpx.post(server.url + "/api/generate", timeout=120, json={**body, "cfg_truncation": 0.4}).json()
    assert decode(native["images"][0]).tobytes() == reference
    normalized = httpx.post(server.url + "/api/generate", timeout=120, json={**body, "cfg_normalization": 0.01}).json()
    assert decode(normalized["images"][0]).tobytes() != decode(guided.data[0].b64_json).tobytes()
    a1111 = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a kite", "width": 32, "height": 32, "cfg_scale": 4, "negative_prompt": "blurry",
        "cfg_truncation": 0.4, "override_settings": {"sd_model_checkpoint": MODEL}, **common}).json()
    assert decode(a1111["images"][0]).tobytes() == reference
    out = tmp_path / "k.png"
    r = server.cli("run", MODEL, "a kite", "--size", "32x32", "--guidance", "4", "--negative", "blurry",
                   "--cfg-truncation", "0.4", "--steps", "3", "--seed", "8", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).convert("RGB").tobytes() == reference


def test_openai_edit_several_reference_images_with_klein(oai):
    """FLUX.2 klein takes several images as references (image[] parts); with a mask or a strength it
    inpaints the first (Flux2KleinInpaintPipeline), the others staying references."""
    result = oai.images.edit(model="klein", image=[("a.png", png(photo(80, 64))), ("b.png", png(photo(64, 64)))],
                             prompt="the two together", extra_body={"steps": 2, "seed": 1})
    assert decode(result.data[0].b64_json).size == (80, 64)
    inpainted = oai.images.edit(model="klein", image=[("a.png", png(photo())), ("b.png", png(photo(64, 64)))],
                                mask=("m.png", png(alpha_mask())), prompt="x", extra_body={"steps": 2, "seed": 1})
    assert decode(inpainted.data[0].b64_json).size == (64, 48)
    redrawn = oai.images.edit(model="klein", image=("a.png", png(photo(64, 64))), prompt="x",
                              extra_body={"steps": 2, "strength": 0.5})
    assert decode(redrawn.data[0].b64_json).size == (64, 64)
    with pytest.raises(openai.BadRequestError, match="takes at most 8 input images, got 9"):
        oai.images.edit(model="klein", image=[("a.png", png(photo(64, 64)))] * 9, prompt="x", extra_body={"steps": 2})


def phone_photo(image: Image.Image) -> bytes:
    """A JPEG as a phone held upright stores `image`: turned a quarter left (`image` is 64x48, the
    file 48x64) with EXIF Orientation 6, which every browser reads as "turn it right to show it"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return png(image.transpose(Image.Transpose.ROTATE_90), format="JPEG", quality=95, exif=exif.tobytes())


def right_half_mask() -> Image.Image:
    """White (redrawn) on the right half of a 64x48 image."""
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (32, 0, 64, 48))
    return mask


def test_exif_orientation_is_applied_on_every_interface(server, oai, tmp_path):
    """An image and a mask stored turned with EXIF Orientation 6 are used upright: a 64x48 image (not
    48x64) on every interface, and the mask's right half is what is redrawn (two prompts differ there)."""
    assert Image.open(io.BytesIO(phone_photo(photo(64, 48)))).size == (48, 64)
    image, mask = phone_photo(photo(64, 48)), phone_photo(right_half_mask().convert("RGB"))
    made = [np.asarray(decode(oai.images.edit(
        model=MODEL, image=("in.jpg", image), mask=("mask.jpg", mask), prompt=prompt, output_format="png",
        extra_body={"steps": 3, "seed": 1, "strength": 1.0}).data[0].b64_json)).astype(int)
        for prompt in ("a cat", "a completely different prompt")]
    assert made[0].shape == (48, 64, 3)
    kept, edited = np.abs(made[0][:, :12] - made[1][:, :12]).mean(), np.abs(made[0][:, 48:] - made[1][:, 48:]).mean()
    assert edited > 4 * kept, (kept, edited)
    b64 = base64.b64encode(image).decode()
    r = httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "x", "stream": False, "steps": 2, "strength": 0.5, "images": [b64],
        "mask": base64.b64encode(mask).decode()})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (64, 48), r.text
    r = httpx.post(server.url + "/sdapi/v1/img2img", timeout=120, json={
        "prompt": "x", "init_images": [b64], "steps": 2, "denoising_strength": 0.5,
        "override_settings": {"sd_model_checkpoint": MODEL}})
    assert r.status_code == 200 and decode(r.json()["images"][0]).size == (64, 48), r.text
    (tmp_path / "in.jpg").write_bytes(image)
    out = tmp_path / "out.png"
    r = server.cli("run", MODEL, "x", "--image", str(tmp_path / "in.jpg"), "--steps", "2", "-o", str(out))
    assert r.returncode == 0 and Image.open(out).size == (64, 48), r.stderr


def test_klein_inpaint_previews_have_the_size_of_the_image_it_makes(server):
    """klein shrinks an image over 1024x1024 pixels of area (as diffusers does): a 1280x960 inpaint
    makes a 1168x880 image (1182x886 rounded down to multiples of 16), and its previews have that size
    (they had the request's 1280x960). A reference edit sizes its output the same way, through the
    same code."""
    mask = Image.new("L", (1280, 960), 0)
    mask.paste(255, (200, 100, 900, 700))
    body = {"model": "klein", "prompt": "x", "steps": 2, "strength": 1.0, "seed": 1, "previews": 1,
            "images": [base64.b64encode(png(photo(1280, 960))).decode()], "mask": base64.b64encode(png(mask)).decode()}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=300) as r:
        lines = [json.loads(text) for text in r.iter_lines() if text.strip()]
    assert "error" not in lines[-1], lines[-1]
    final = decode(lines[-1]["images"][0])
    previews = [decode(ln["preview"]) for ln in lines if "preview" in ln]
    assert final.size == (1168, 880) and (lines[-1]["width"], lines[-1]["height"]) == (1168, 880)
    assert [p.size for p in previews] == [(1168, 880)]
