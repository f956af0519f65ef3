"""The shapes tokenizer is rebuilt byte for byte by the training code (fixtures/qwen_tokenizer.py)."""

from pathlib import Path

import pytest

from ollimg.builtin import builtin_models
from training.shapes import tokenizer

FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


@pytest.mark.parametrize("name", FILES)
def test_training_rebuilds_the_shipped_tokenizer(tmp_path: Path, name: str):
    tokenizer.save(tokenizer.build(), tmp_path)
    assert (tmp_path / name).read_bytes() == (builtin_models()["shapes"] / "tokenizer" / name).read_bytes()
