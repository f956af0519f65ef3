"""The runtime's shape: families are plug-ins, the shared runtime knows none, and no import circles.

Import edges are read from the source (module-level and function-level imports alike, since a
lazy import is still a dependency), so a circle fails here whether or not it would fail at import.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Protocol

import ollimg
from ollimg.runtime import families

PACKAGE = Path(ollimg.__file__).parent
RUNTIME = PACKAGE / "runtime"
FAMILY_WORDS = re.compile(r"z[-_ ]?image|flux|klein", re.I)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The ollimg modules `path` imports (a `from package import name` of a submodule counts as that)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` depends on the submodule; `from module import name` on the module
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {m: {d for d in _imports(p, modules) if d != m} for m, p in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_the_runtime_and_store():
    graph = _graph()
    circles = [c for c in _cycles(graph) if any(m.startswith(("ollimg.runtime", "ollimg.create", "ollimg.quantize",
                                                              "ollimg.diffusers_dir", "ollimg.blobs",
                                                              "ollimg.manifest")) for m in c)]
    assert circles == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_shared_runtime_names_no_family():
    """Only the table (families.py) and the family packages under models/ name a family."""
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        rel = path.relative_to(RUNTIME)
        if rel.parts[0] == "models" or rel.as_posix() == "families.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FAMILY_WORDS.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []


def test_the_shared_runtime_imports_no_family_package():
    graph = _graph()
    for module, deps in graph.items():
        if module.startswith("ollimg.runtime") and not module.startswith("ollimg.runtime.models"):
            assert not [d for d in deps if d.startswith("ollimg.runtime.models")], module


def test_every_family_has_load_and_an_fp8_set():
    for class_name in families.FAMILIES:
        family = families.family(class_name, "test")
        assert callable(family.load)
        fp8 = families.weights(class_name, "test").FP8
        assert fp8 and all(isinstance(p, re.Pattern) for p in fp8.values())


def test_an_unknown_pipeline_is_refused_with_the_families_it_could_be():
    import pytest

    from ollimg.errors import InvalidModel

    with pytest.raises(InvalidModel, match="StableDiffusionPipeline.*not supported.*ZImagePipeline"):
        families.family("StableDiffusionPipeline", "model x")


def test_backends_satisfy_the_protocol():
    from ollimg.runtime.backend import Backend
    from ollimg.runtime.torch_backend import TorchBackend

    assert issubclass(Backend, Protocol)
    wanted = {n for n in dir(Backend) if not n.startswith("_")} | set(Backend.__annotations__)
    backends = [TorchBackend]
    try:
        backends.append(importlib.import_module("ollimg.runtime.mlx_backend").MlxBackend)
    except ImportError:  # mlx is a test dependency on Linux; without it only torch is checked
        pass
    for cls in backends:
        missing = [n for n in wanted if not hasattr(cls, n) and n not in getattr(cls, "__annotations__", {})
                   and n not in ("name", "processor", "dtype")]
        assert missing == [], (cls.__name__, missing)
        assert "build" not in vars(cls)
