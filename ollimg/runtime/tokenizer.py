"""Prompt -> token ids: the chat template from tokenizer_config.json rendered with jinja2 the way
transformers renders it, then the `tokenizers` library on tokenizer.json. Imports no torch or mlx.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np

from ollimg.errors import InvalidModel


def _raise(message: str):
    raise InvalidModel(f"chat template error: {message}")


class PromptTokenizer:
    def __init__(self, tokenizer_json: Path, tokenizer_config: dict, chat_template: str | None = None):
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
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
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
            x, indent=indent, ensure_ascii=ensure_ascii)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(template)
        self.special = {k: _token_text(tokenizer_config.get(k)) for k in ("bos_token", "eos_token", "pad_token",
                                                                          "unk_token")}
        pad = self.special["pad_token"]
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else None

    def render(self, prompt: str, enable_thinking: bool = True) -> str:
        return self.template.render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
            enable_thinking=enable_thinking, **self.special,
        )

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
