"""Z-Image components on MLX, and the one place that puts checked weights into an MLX module.

Only this package (and the MLX backend) imports mlx. Weights arrive already renamed to the
module's parameter names and in MLX layout; `set_weights` refuses anything missing, unexpected
or of the wrong shape, so a broken model fails at load, never with a wrong image.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ollimg.errors import InvalidModel


def set_weights(module: nn.Module, weights: dict[str, mx.array], component: str, dtype: mx.Dtype) -> None:
    """Load `weights` into `module` cast to `dtype`; every parameter must be given exactly once."""
    expected = dict(tree_flatten(module.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise InvalidModel(f"{component}: missing weight {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
        raise InvalidModel(f"{component}: unexpected weight {unexpected[0]!r} ({len(unexpected)} in all)")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise InvalidModel(
                f"{component}: weight {name!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[name].shape)}"
            )
    module.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    mx.eval(module.parameters())
