"""`train.py --compile` trains the same model: compiled DiT blocks give the eager run's weights after
a few steps, up to float rounding (compiled kernels fuse and reorder float math). Tiny
configuration of the same architecture, on the CPU (inductor's C++ backend)."""

import pytest
import torch
from torch._dynamo.utils import counters

from tests.training.test_shapes_resume import TINY, full
from training.shapes import train

pytestmark = pytest.mark.slow  # compiling a block's forward and backward: about a minute on 2 cores


def test_compiled_blocks_train_the_eager_model(tmp_path, monkeypatch):
    for table, small in TINY:
        for key, value in small.items():
            monkeypatch.setitem(table, key, value)
    monkeypatch.setattr(train, "LATENT_STATS_IMAGES", (2, 4))
    monkeypatch.setattr(train, "check_vae", lambda vae, device: {"stubbed": True})
    params = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        counters.clear()
        train.main(["--out", str(tmp_path / name), "--vae-steps", "1", "--vae-batch", "2", "--batch", "2",
                    "--dit-steps", "2", "--dit-warmup", "1", "--lr", "1e-3", "--eval-steps", *extra])
        params[name] = full(tmp_path / name)["params"]
        assert (counters["stats"]["unique_graphs"] > 0) == (name == "compiled")
    for key, eager in params["eager"].items():
        torch.testing.assert_close(params["compiled"][key], eager, rtol=1e-4, atol=1e-5, msg=key)
