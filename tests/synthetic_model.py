"""Synthetic models written straight into a store (tensor blobs, file layers, config, manifest).

For the registry tests and bench, which need models of chosen sizes, not real weights. Seeded:
the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import random

from ollimg.blobs import tensor_blob_header
from ollimg.manifest import Descriptor, Manifest, Model, Name, Store
from ollimg.manifest.manifest import CONFIG_TYPE, file_layer, tensor_layer

PIECE = 8 << 20


def write_model(store: Store, name: str, tensors: dict[str, tuple[str, tuple[int, ...]]], files: dict[str, bytes],
                seed: int = 0) -> Model:
    """Random tensor data for `tensors` ({title: (dtype, shape)}), `files` as file layers."""
    rng = random.Random(seed)
    layers, table = [], {}
    with store.lock():
        for title, (dtype, shape) in tensors.items():
            header = tensor_blob_header(dtype, shape)
            nbytes = _nbytes(dtype, shape)
            with store.blobs.writer() as writer:
                writer.write(header)
                for start in range(0, nbytes, PIECE):
                    writer.write(rng.randbytes(min(PIECE, nbytes - start)))
                digest = writer.commit()
            layers.append(tensor_layer(title, digest, len(header) + nbytes, dtype, shape))
            table[title] = {"dtype": dtype, "shape": list(shape), "digest": digest}
        for title, data in files.items():
            layers.append(file_layer(title, store.blobs.put_bytes(data), len(data)))
        config = json.dumps({"format": 1, "pipeline": "Synthetic", "seed": seed, "tensors": table}).encode()
        config_desc = Descriptor(mediaType=CONFIG_TYPE, digest=store.blobs.put_bytes(config), size=len(config))
        raw = Manifest(config=config_desc, layers=layers).dump()
        return store.put_manifest(Name.parse(name), raw)


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    from ollimg.blobs import DTYPE_SIZES

    n = DTYPE_SIZES[dtype]
    for d in shape:
        n *= d
    return n


def pipeline_tensors(count: int, total_bytes: int, seed: int = 0) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`count` BF16 tensors shaped like a diffusion pipeline's: ~60 % small (norms, biases of
    1-16 KiB), the rest square-ish weights sharing what is left of `total_bytes`."""
    rng = random.Random(seed)
    small = int(count * 0.6)
    tensors = {}
    used = 0
    for i in range(small):
        n = rng.choice([512, 1024, 2048, 3840, 4096, 8192])
        tensors[f"transformer/layers.{i // 4}.norm{i % 4}.weight"] = ("BF16", (n,))
        used += 2 * n
    big = count - small
    each = max((total_bytes - used) // big, 2)
    for i in range(big):
        # widths vary +-50 % around the mean, like attention vs. MLP weights
        elements = int(each / 2 * rng.uniform(0.5, 1.5))
        cols = 1024
        tensors[f"transformer/layers.{i // 4}.proj{i % 4}.weight"] = ("BF16", (max(elements // cols, 1), cols))
    return tensors
