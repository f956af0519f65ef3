"""Issue 13: a model's chat template (`{{ "a" * 3000000000 }}`) allocated until the OS stopped it.
Templates render in a sandbox with size and time limits; each hostile form fails fast, before it
allocates, and a real template still renders the same."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ollimg.errors import InvalidModel
from ollimg.runtime import tokenizer

SHAPES = Path(__file__).resolve().parents[2] / "ollimg" / "builtin" / "shapes" / "tokenizer"
CONFIG = json.loads((SHAPES / "tokenizer_config.json").read_text())


def render(template: str) -> str:
    return tokenizer.PromptTokenizer(SHAPES / "tokenizer.json", CONFIG, template).render("a red circle")


@pytest.mark.parametrize("template", [
    '{{ "a" * 3000000000 }}',
    '{{ ["a"] * 3000000000 }}',
    '{{ "a"|center(3000000000) }}',
    '{{ "x"|indent(3000000000) }}',
    '{{ ("a" * 100000).replace("", "b" * 100000) }}',
    '{{ ("a" * 100000)|replace("", "b" * 100000) }}',
    '{{ "%3000000000s" % "a" }}',
    '{{ "%*d" % (3000000000, 1) }}',
    '{{ "{:3000000000}".format(1) }}',
    '{{ "{0:{1}}".format(1, 3000000000) }}',
    '{{ 10 ** 100000000 }}',
    '{% set ns = namespace(s="ab") %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}',
    '{% for i in range(100000) %}{{ "x" * 1000 }}{% endfor %}',
    '{{ (["a" * 100000] * 100)|join("") }}',
    '{{ ("a" * 100000).join(["b" * 100000] * 100) }}',
])
def test_hostile_templates_fail_before_they_allocate(template):
    started = time.monotonic()
    with pytest.raises(InvalidModel, match="chat template error: .*exceed"):
        render(template)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("template", [
    '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}',
    '{% set ns = namespace(s="ab") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}',
])
def test_endless_templates_stop_at_the_time_limit(template, monkeypatch):
    monkeypatch.setattr(tokenizer, "RENDER_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(InvalidModel, match="chat template error"):
        render(template)
    assert time.monotonic() - started < 3.0


def test_a_failing_template_is_the_models_error():
    with pytest.raises(InvalidModel, match="chat template error: RecursionError"):
        render("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}")
    with pytest.raises(InvalidModel, match="chat template error: TemplateSyntaxError"):
        render("{% for %}")


def test_the_real_template_renders_as_before():
    assert render(CONFIG["chat_template"]) == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n"
    assert render('{{ "%5s|%s" % ("a", messages[0].content) }}') == "    a|a red circle"
