import pytest

from ollimg.errors import InvalidName
from ollimg.manifest import Name

R = "registry.ollimg.dev"


@pytest.mark.parametrize(
    "text, host, namespace, model, tag, display",
    [
        ("z-image", R, "library", "z-image", "latest", "z-image:latest"),
        ("z-image:fp8", R, "library", "z-image", "fp8", "z-image:fp8"),
        ("Z-Image:FP8", R, "library", "z-image", "FP8", "z-image:FP8"),
        ("mine/z", R, "mine", "z", "latest", "mine/z:latest"),
        ("localhost:5000/team/z-image:fp8", "localhost:5000", "team", "z-image", "fp8", "localhost:5000/team/z-image:fp8"),
        ("localhost:5000/z", "localhost:5000", "library", "z", "latest", "localhost:5000/library/z:latest"),
        ("localhost/z", "localhost", "library", "z", "latest", "localhost/library/z:latest"),
        ("ghcr.io/me/z:v1.0", "ghcr.io", "me", "z", "v1.0", "ghcr.io/me/z:v1.0"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a", "b", "latest", "127.0.0.1:5000/a/b:latest"),
        ("localhost:65535/a/b", "localhost:65535", "a", "b", "latest", "localhost:65535/a/b:latest"),
        ("[::1]:1/a/b", "[::1]:1", "a", "b", "latest", "[::1]:1/a/b:latest"),
        ("a.b_c-d", R, "library", "a.b_c-d", "latest", "a.b_c-d:latest"),
        ("x:_t.1-2", R, "library", "x", "_t.1-2", "x:_t.1-2"),
    ],
)
def test_parse(text, host, namespace, model, tag, display):
    name = Name.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == (host, namespace, model, tag)
    assert name.display() == display
    assert Name.parse(str(name)) == name
    assert Name.parse(name.display()) == name


def test_digest():
    d = "sha256:" + "a" * 64
    name = Name.parse(f"z@{d}")
    assert name.digest == d and name.reference == d


def test_registry_from_env(monkeypatch):
    monkeypatch.setenv("OLLIMG_REGISTRY", "example.com:8080")
    name = Name.parse("z")
    assert name.host == "example.com:8080" and name.display() == "z:latest"


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a//b", "empty part"),
        ("x:", "empty tag"),
        ("-x", "model '-x'"),
        ("x-", "model 'x-'"),
        ("a__b", "model"),
        ("a/b/c/d", "[host/]"),
        ("x:-t", "tag '-t'"),
        ("x:" + "t" * 129, "tag"),
        ("m" * 81, "longer than 80"),
        ("ns!/m", "namespace"),
        ("x@sha256:abc", "digest"),
        ("bad_host:99/a/b", "registry host"),
        ("x/../y", "namespace '..'"),
        ("a b", "model"),
        ("a:b:c", "tag"),
        ("127.0.0.1:99999/a/b", "registry port 99999 is out of range: use 1 to 65535"),
        ("localhost:65536/a/b", "registry port 65536"),
        ("localhost:0/a/b", "registry port 0"),
        ("[::1]:70000/a/b", "registry port 70000"),
    ],
)
def test_invalid(text, why):
    with pytest.raises(InvalidName) as err:
        Name.parse(text)
    assert why in str(err.value)
