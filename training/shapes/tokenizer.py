"""The shapes model's tokenizer: a Qwen3-layout byte-level BPE (fixtures/qwen_tokenizer.py)
trained on the shapes captions."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from fixtures.qwen_tokenizer import build as _build
from fixtures.qwen_tokenizer import save as _save
from training.shapes.world import corpus

BPE_VOCAB = 400


def build() -> Tokenizer:
    return _build(corpus() * 4, BPE_VOCAB)


def save(tok: Tokenizer, out: Path) -> None:
    _save(tok, out, model_max_length=512)
