"""The gallery: its store (ollimg/gallery.py) on tmp_path, and its routes plus what the web page
needs from /api/generate, through the app with the fake runtime."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from ollimg.errors import ImageNotFound
from ollimg.gallery import Entry, Gallery
from tests.unit.asgi import call


def png(color: str = "red", size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


def entry(prompt: str = "a red circle", model: str = "shapes:latest", seed: int = 1) -> Entry:
    return Entry(id="", created_at="", model=model, prompt=prompt, negative_prompt=None, width=64, height=64,
                 steps=8, guidance=0.0, seed=seed, format="png")


def test_add_list_get_delete(tmp_path):
    g = Gallery(tmp_path / "g", max_bytes=10**9)
    first = g.add(png("red"), entry("a red circle", seed=1))
    second = g.add(png("blue"), entry("a blue square", model="other:latest", seed=2))
    images, total = g.list()
    assert [e.id for e in images] == [second.id, first.id] and total == 2  # newest first
    assert g.get(first.id).seed == 1 and g.image_path(first).read_bytes() == png("red")
    with Image.open(g.thumb_path(first)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 256
    assert g.models() == ["other:latest", "shapes:latest"]
    assert [e.seed for e in g.list(model="other:latest")[0]] == [2]
    assert [e.seed for e in g.list(text="RED circle")[0]] == [1]
    assert g.list(text="red square")[1] == 0  # every word must be in the prompt
    assert [e.seed for e in g.list(before=second.id)[0]] == [1]  # the next page
    g.delete(first.id)
    assert [e.id for e in g.list()[0]] == [second.id]
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(
        [f"{second.id}.png", f"{second.id}.thumb.jpg", f"{second.id}.json"])
    with pytest.raises(ImageNotFound):
        g.get(first.id)


def test_an_edit_keeps_its_source_and_mask(tmp_path):
    g = Gallery(tmp_path / "g", max_bytes=10**9)
    made = entry("a boat")
    made.strength, made.source_digest = 0.6, "sha256:" + "ab" * 32
    mask = Image.new("L", (64, 64), 0)
    out = io.BytesIO()
    mask.save(out, "PNG")
    kept = g.add(png("red"), made, png("blue"), out.getvalue())
    again = Gallery(tmp_path / "g", max_bytes=10**9).get(kept.id)  # read back from its JSON
    assert (again.strength, again.source_digest, again.mask) == (0.6, made.source_digest, True)
    assert g.source_path(again).read_bytes() == png("blue") and g.mask_path(again).read_bytes() == out.getvalue()
    assert again.bytes == sum(p.stat().st_size for p in (tmp_path / "g").iterdir() if not p.name.endswith(".json"))
    plain = g.add(png("green"), entry())
    with pytest.raises(ImageNotFound, match="no source image"):
        g.source_path(plain)
    with pytest.raises(ImageNotFound, match="no mask"):
        g.mask_path(plain)
    g.delete(kept.id)
    assert not list((tmp_path / "g").glob(f"{kept.id}*"))


def test_history_survives_a_new_gallery_and_leftovers_go(tmp_path):
    root = tmp_path / "g"
    kept = Gallery(root, max_bytes=10**9).add(png(), entry(seed=7))
    (root / "20260101-000000-000000-abcdef.png").write_bytes(png())  # its JSON never landed
    (root / ".tmp-123456").write_bytes(b"half")
    (root / "20260101-000000-000001-abcdef.json").write_text("{not json")
    again = Gallery(root, max_bytes=10**9)
    assert [(e.id, e.seed) for e in again.list()[0]] == [(kept.id, 7)]
    assert sorted(p.name for p in root.iterdir()) == sorted([f"{kept.id}.png", f"{kept.id}.thumb.jpg", f"{kept.id}.json"])


def test_cap_removes_the_oldest_first(tmp_path):
    colors = ["red", "green", "blue", "white"]
    measure = Gallery(tmp_path / "measure", max_bytes=10**9)
    sizes = [measure.add(png(c, 128), entry(seed=i)).bytes for i, c in enumerate(colors)]
    g = Gallery(tmp_path / "g", max_bytes=sizes[2] + sizes[3])  # room for the newest two
    ids = [g.add(png(c, 128), entry(seed=i)).id for i, c in enumerate(colors)]
    assert [e.id for e in g.list()[0]] == [ids[3], ids[2]] and g.total_bytes() == sizes[2] + sizes[3]
    assert not list((tmp_path / "g").glob(f"{ids[0]}*")) and not list((tmp_path / "g").glob(f"{ids[1]}*"))
    smaller = Gallery(tmp_path / "g", max_bytes=sizes[3])  # a lowered cap applies when the gallery opens
    assert [e.id for e in smaller.list()[0]] == [ids[3]]
    assert len(list((tmp_path / "g").iterdir())) == 3


def test_cap_zero_keeps_nothing(tmp_path):
    g = Gallery(tmp_path / "g", max_bytes=0)
    assert g.add(png(), entry()) is None
    assert g.list() == ([], 0) and not (tmp_path / "g").exists()


@pytest.mark.parametrize("bad", ["../etc/passwd", "x", "20260101-000000-000000-abcdef/../../y", ""])
def test_bad_ids_are_not_found(tmp_path, bad):
    g = Gallery(tmp_path / "g", max_bytes=10**9)
    with pytest.raises(ImageNotFound):
        g.get(bad)
    with pytest.raises(ImageNotFound):
        g.delete(bad)


# -- routes --------------------------------------------------------------------------------------


def _kept(gallery: Gallery) -> list[str]:
    return [gallery.add(png(c), entry(f"shape number {i}", seed=i)).id for i, c in enumerate(["red", "green", "blue"])]


def test_gallery_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLIMG_GALLERY", str(tmp_path / "gallery"))
    ids = _kept(Gallery(tmp_path / "gallery", max_bytes=10**9))  # the server's gallery reads the dir on first use

    async def fn(c, _):
        listing = (await c.get("/api/gallery", params={"limit": 2})).json()
        page2 = (await c.get("/api/gallery", params={"limit": 2, "before": listing["images"][-1]["id"]})).json()
        found = (await c.get("/api/gallery", params={"q": "number 1"})).json()
        one = await c.get(f"/api/gallery/{ids[0]}")
        image = await c.get(f"/api/gallery/{ids[0]}/image")
        thumb = await c.get(f"/api/gallery/{ids[0]}/thumbnail")
        deleted = await c.delete(f"/api/gallery/{ids[0]}")
        gone = await c.get(f"/api/gallery/{ids[0]}/image")
        traversal = await c.get("/api/gallery/..%2F..%2Fetc%2Fpasswd/image")
        bad_limit = await c.get("/api/gallery", params={"limit": 0})
        return listing, page2, found, one, image, thumb, deleted, gone, traversal, bad_limit

    listing, page2, found, one, image, thumb, deleted, gone, traversal, bad_limit = call(tmp_path, fn)
    assert [i["id"] for i in listing["images"]] == ids[:0:-1] and listing["total"] == 3
    assert listing["models"] == ["shapes:latest"] and listing["max_bytes"] == 2 * 10**9 and listing["bytes"] > 0
    assert [i["id"] for i in page2["images"]] == [ids[0]]
    assert [i["seed"] for i in found["images"]] == [1]
    assert one.json()["prompt"] == "shape number 0"
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content == png("red")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert deleted.status_code == 200 and deleted.json()["id"] == ids[0]
    assert gone.status_code == 404 and gone.json()["code"] == "image_not_found"
    assert traversal.status_code == 404
    assert bad_limit.status_code == 400 and bad_limit.json()["param"] == "query.limit"


def test_generate_keeps_nothing_it_cannot_read_and_says_so(tmp_path):
    """The fake runtime's images are not real images: they are returned, but not kept (ids missing)."""

    async def fn(c, _):
        r = await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "gallery": True, "stream": False, "n": 2})
        return r.json(), (await c.get("/api/gallery")).json()

    done, listing = call(tmp_path, fn)
    assert len(done["images"]) == 2 and done["gallery_ids"] == [] and listing["total"] == 0


def test_generate_streams_previews_on_request(tmp_path):
    async def fn(c, _):
        lines = []
        async with c.stream("POST", "/api/generate", json={"model": "tiny", "prompt": "x", "steps": 4, "previews": 1,
                                                           "n": 2}) as r:
            async for text in r.aiter_lines():
                if text.strip():
                    lines.append(json.loads(text))
        plain = (await c.post("/api/generate", json={"model": "tiny", "prompt": "x", "steps": 4})).text
        return lines, plain

    lines, plain = call(tmp_path, fn)
    kinds = ["preview" if "preview" in obj else "step" if "step" in obj else "done" for obj in lines]
    assert kinds == ["step", "step", "preview", "preview", "step", "step", "done"]
    assert [(p["index"], p["image_index"], p["step"]) for p in lines[2:4]] == [(0, 0, 2), (0, 1, 2)]
    assert lines[2]["done"] is False and lines[2]["preview"] != lines[3]["preview"]
    assert '"preview"' not in plain  # none unless asked


def test_native_errors_name_the_field(tmp_path):
    async def fn(c, _):
        return [await c.post("/api/generate", json=body) for body in (
            {"model": "tiny", "prompt": "x", "width": 100, "height": 128},
            {"model": "tiny", "prompt": "x", "previews": 51},
            {"model": "nope", "prompt": "x"},
        )]

    size, previews, missing = call(tmp_path, fn)
    assert size.status_code == 400 and size.json()["param"] == "width" and "multiple of 16" in size.json()["error"]
    assert previews.status_code == 400 and previews.json()["param"] == "previews"
    assert missing.status_code == 404 and "param" not in missing.json()  # only when a field is at fault


def test_builtin_models(tmp_path):
    async def fn(c, _):
        return (await c.get("/api/builtin")).json()

    body = call(tmp_path, fn)
    assert [(m["name"], m["stored"]) for m in body["models"]] == [("shapes:latest", False)]
    assert "shapes" in body["models"][0]["description"]


def test_page_and_assets(tmp_path):
    async def fn(c, _):
        return (await c.get("/", headers={"Accept": "text/html,application/xhtml+xml"}), await c.get("/"),
                await c.get("/web/app.js"), await c.get("/web/style.css"), await c.get("/web/nope.js"))

    page, text, js, css, missing = call(tmp_path, fn)
    assert page.headers["content-type"].startswith("text/html") and "<title>ollimg</title>" in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert text.text == "ollimg is running"  # what scripts and ollama-style probes read
    assert js.headers["content-type"].startswith("text/javascript") and "/api/generate" in js.text
    assert css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404


def test_api_key_covers_the_gallery_not_the_page(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLIMG_API_KEY", "sesame")

    async def fn(c, _):
        return (await c.get("/api/gallery"), await c.get("/api/gallery", headers={"Authorization": "Bearer sesame"}),
                await c.get("/", headers={"Accept": "text/html"}), await c.get("/web/app.js"))

    without, with_key, page, js = call(tmp_path, fn)
    assert without.status_code == 401 and with_key.status_code == 200
    assert page.status_code == 200 and js.status_code == 200


def test_the_page_uses_only_documented_api_paths(tmp_path):
    """Requirement: the page talks to the server only through the documented API (/openapi.json)."""
    from ollimg.server.routes.web import WEB

    async def fn(c, _):
        return (await c.get("/openapi.json")).json()["paths"]

    documented = [re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path) + "$") for path in call(tmp_path, fn)]
    used = {re.sub(r"\$\{[^}]+\}", "x", m) for m in re.findall(r"[\"`](/api/[^\"`?]*)", (WEB / "app.js").read_text())}
    assert {"/api/generate", "/api/gallery/x/image", "/api/pull", "/api/builtin"} <= used
    assert [path for path in used if not any(d.match(path) for d in documented)] == []
