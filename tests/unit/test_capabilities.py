"""The server's capability check (ollimg/server/capabilities.py) on real store models (the tiny
fixtures, created into a temporary store): what the families' table says, decided before any load.
The end-to-end refusal through every interface is in tests/integration/test_edits.py."""

from __future__ import annotations

import pytest

from ollimg.create import create
from ollimg.errors import InvalidInput
from ollimg.manifest import Store
from ollimg.runtime import families
from ollimg.runtime.request import GenerateRequest
from ollimg.server import capabilities

IMAGE = "iVBORw0KGgo="  # never decoded: the check reads only the store


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_zimage_dir, tiny_klein_dir):
    store = Store(tmp_path_factory.mktemp("store"))
    return create(store, "tiny", tiny_zimage_dir), create(store, "klein", tiny_klein_dir)


def request(images: int = 1, **kw) -> GenerateRequest:
    return GenerateRequest(prompt="x", images=[IMAGE] * images, **kw)


def test_every_family_has_capabilities():
    assert set(families.CAPABILITIES) == set(families.FAMILIES)


def test_what_each_family_takes(models):
    zimage, klein = models
    assert capabilities.architecture(zimage) == "ZImagePipeline"
    capabilities.check(zimage, request(mask=IMAGE, strength=0.5))
    capabilities.check(zimage, request(0))
    capabilities.check(klein, request(8, mask=IMAGE, strength=0.5))
    with pytest.raises(InvalidInput, match="model tiny:latest takes at most 1 input image, got 2"):
        capabilities.check(zimage, request(2))
    with pytest.raises(InvalidInput, match="model klein:latest takes at most 8 input images, got 9"):
        capabilities.check(klein, request(9))


def test_a_family_that_cannot_inpaint_or_edit(models, monkeypatch):
    zimage, _ = models
    table = dict(families.CAPABILITIES)
    monkeypatch.setattr(capabilities, "CAPABILITIES", table)
    table["ZImagePipeline"] = families.Capabilities(images=1, mask=False, strength=False)
    with pytest.raises(InvalidInput, match="model tiny:latest cannot inpaint: ZImagePipeline models take no mask"):
        capabilities.check(zimage, request(mask=IMAGE))
    with pytest.raises(InvalidInput, match="cannot redraw an image by a strength"):
        capabilities.check(zimage, request(strength=0.3))
    table["ZImagePipeline"] = families.Capabilities(images=0, mask=False, strength=False)
    with pytest.raises(InvalidInput, match="model tiny:latest cannot edit images: ZImagePipeline models take no input"):
        capabilities.check(zimage, request())
    capabilities.check(zimage, request(0))  # text to image is always fine


def test_a_model_without_encoder(models, monkeypatch):
    zimage, _ = models
    table = dict(families.CAPABILITIES)
    monkeypatch.setattr(capabilities, "CAPABILITIES", table)
    table["ZImagePipeline"] = families.Capabilities(images=1, mask=True, strength=True, encoder="vae/no.such.weight")
    with pytest.raises(InvalidInput, match="model tiny:latest cannot edit images: it has no VAE encoder"):
        capabilities.check(zimage, request())
