"""Prompt -> token ids: the chat template from tokenizer_config.json rendered with jinja2 the way
transformers renders it, then the `tokenizers` library on tokenizer.json. Imports no torch or mlx.

A chat template comes with the model, so from whoever published it: it renders in jinja2's
immutable sandbox with limits (`_BoundedSandbox`). No value it builds may exceed MAX_VALUE
characters or items (checked before `*`, `**`, `%`, `+`, joins, replaces and every filter or
method call with a size argument, so a bomb like `"a" * 3000000000` fails before it allocates);
the output stops at MAX_VALUE characters; and rendering stops after RENDER_SECONDS (a line tracer
on the template's own frames, plus a check in every call, so even an empty nested loop ends).
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from ollimg.errors import InvalidModel

MAX_VALUE = 1_000_000  # characters of output, or characters / items of any value the template builds
RENDER_SECONDS = 2.0
_WIDTH = re.compile(r"(\d{7,})")  # a field width or precision of a million or more in a format string


def _raise(message: str):
    raise InvalidModel(f"chat template error: {message}")


def _too_big(what: str) -> InvalidModel:
    return InvalidModel(f"chat template error: {what} would exceed {MAX_VALUE} characters; the model's template "
                        "is broken or hostile")


def _size(value) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


def _check_args(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE:
            raise _too_big(f"an argument of {value}")


def _check_call(fn, args, kwargs) -> None:
    """Refuses, before it runs, a call whose result could be huge."""
    _check_args(args, kwargs)
    fn = getattr(fn, "__wrapped__", fn)  # the sandbox wraps str.format
    owner, name = getattr(fn, "__self__", None), getattr(fn, "__name__", "")
    if isinstance(owner, str):
        if name in ("format", "format_map") and _WIDTH.search(owner):
            raise _too_big("a format field")
        if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            if len(owner) + (owner.count(args[0]) * len(args[1])) > MAX_VALUE:
                raise _too_big("a replace")
        if name == "join" and args and isinstance(args[0], (list, tuple)):
            if sum(_size(x) for x in args[0]) + len(owner) * len(args[0]) > MAX_VALUE:
                raise _too_big("a join")


class _Deadline:
    """RENDER_SECONDS for one render: checked by every call and, through a line tracer on the
    template's own frames (code named <template>), on every template line, loops included."""

    def __init__(self):
        self.end = time.monotonic() + RENDER_SECONDS

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise InvalidModel(f"chat template error: rendering took longer than {RENDER_SECONDS:.0f} s; the model's "
                               "template is broken or hostile")

    def trace(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename == "<template>":
            return self._line
        return None

    def _line(self, frame, event, arg):
        self.check()
        return self._line


def _bounded_sandbox(**options):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})  # also keeps them out of compile-time folding
        deadline: _Deadline | None = None

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                count = right if _size(left) else left if _size(right) else 0
                if isinstance(count, int) and (_size(left) or _size(right)) * count > MAX_VALUE:
                    raise _too_big("a repetition")
            elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
                if abs(right) > 1000 or (isinstance(left, int) and abs(left).bit_length() * abs(right) > 100_000):
                    raise _too_big("a power")
            elif operator == "%" and isinstance(left, str):
                if _WIDTH.search(left):
                    raise _too_big("a format field")
                _check_args(right if isinstance(right, tuple) else (right,), {})  # `%*d` takes its width here
            elif operator == "+" and _size(left) + _size(right) > MAX_VALUE:
                raise _too_big("a concatenation")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            if __self.deadline is not None:
                __self.deadline.check()
            _check_call(__obj, args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    env = _BoundedSandbox(**options)
    for name, fn in list(env.filters.items()):
        env.filters[name] = _bounded_filter(fn, name)
    return env


def _bounded_filter(fn, name: str):
    def bounded(*all_args, **kwargs):
        args = all_args[1:] if getattr(fn, "jinja_pass_arg", None) else all_args  # jinja passes a context first
        _check_args(args, kwargs)
        if name == "format" and args and isinstance(args[0], str) and _WIDTH.search(args[0]):
            raise _too_big("a format field")
        if name == "replace" and len(args) >= 3 and all(isinstance(a, str) for a in args[:3]):
            _check_call(args[0].replace, args[1:3], {})
        if name == "join" and args and isinstance(args[0], (list, tuple)):
            if sum(_size(x) for x in args[0]) * 2 > MAX_VALUE:
                raise _too_big("a join")
        return fn(*all_args, **kwargs)

    for attr in ("jinja_pass_arg",):  # jinja's marker for filters that take the context/environment
        if hasattr(fn, attr):
            setattr(bounded, attr, getattr(fn, attr))
    return bounded


class PromptTokenizer:
    def __init__(self, tokenizer_json: Path, tokenizer_config: dict, chat_template: str | None = None):
        from jinja2.ext import loopcontrols
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise InvalidModel(f"{tokenizer_json}: not a valid tokenizer.json ({e})") from None
        template = chat_template or tokenizer_config.get("chat_template")
        if isinstance(template, list):  # the older list-of-named-templates form
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise InvalidModel("tokenizer has no chat template (tokenizer_config.json chat_template)")
        env = _bounded_sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _bounded_filter(lambda x, indent=None, ensure_ascii=False: json.dumps(
            x, indent=indent, ensure_ascii=ensure_ascii), "tojson")
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.env = env
        try:
            self.template = env.from_string(template)
        except InvalidModel:
            raise
        except Exception as e:  # jinja2's TemplateSyntaxError and whatever constant folding raised
            raise InvalidModel(f"chat template error: {type(e).__name__}: {e}") from None
        self.special = {k: _token_text(tokenizer_config.get(k)) for k in ("bos_token", "eos_token", "pad_token",
                                                                          "unk_token")}
        pad = self.special["pad_token"]
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else None

    def render(self, prompt: str, enable_thinking: bool = True) -> str:
        """The templated prompt, rendered within MAX_VALUE characters and RENDER_SECONDS."""
        deadline = self.env.deadline = _Deadline()
        tracing = sys.gettrace() is None  # a debugger or coverage tracer stays; the call checks still run
        if tracing:
            sys.settrace(deadline.trace)
        try:
            parts, total = [], 0
            for part in self.template.generate(
                messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
                enable_thinking=enable_thinking, **self.special,
            ):
                total += len(part)
                if total > MAX_VALUE:
                    raise _too_big("the rendered prompt")
                parts.append(part)
            return "".join(parts)
        except InvalidModel:
            raise
        except Exception as e:  # a template that fails at run time is the model's fault, not the request's
            raise InvalidModel(f"chat template error: {type(e).__name__}: {e}") from None
        finally:
            if tracing:
                sys.settrace(None)
            self.env.deadline = None

    def encode(self, prompts: list[str], max_length: int, enable_thinking: bool = True) -> list[np.ndarray]:
        """Token ids (int64) of each templated prompt, truncated to `max_length`, unpadded.
        `enable_thinking` is the chat template's option; the family picks it."""
        encodings = self.tokenizer.encode_batch([self.render(p, enable_thinking) for p in prompts],
                                                add_special_tokens=True)
        return [np.asarray(e.ids[:max_length], dtype=np.int64) for e in encodings]


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def load_tokenizer(source) -> PromptTokenizer:
    """The tokenizer of a ModelSource (tokenizer/tokenizer.json + tokenizer_config.json [+ chat_template.jinja])."""
    config = source.json("tokenizer/tokenizer_config.json")
    template = None
    if source.has("tokenizer/chat_template.jinja"):
        template = source.file("tokenizer/chat_template.jinja").read_text(encoding="utf-8")
    return PromptTokenizer(source.file("tokenizer/tokenizer.json"), config, template)
