"""CUDA graphs for work the GPU finishes faster than the host can launch it.

A text encoder's layers over one prompt are about 500 small kernels: on the H200 the compiled
Qwen3 layers took 35 ms of launching for 8 ms of GPU work, and replayed as one graph, 8 ms, the
same bits (bench/stage_variants.py, bench/README.md 2026-12-03). A graph is captured per input
shape (a prompt's length), the last `limit` of them kept, all in one memory pool: a graph's
temporaries may share memory with another's output, so each call returns a copy of its output
before any other graph runs. Calls come from one thread, one at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch.utils._pytree import tree_map


class ShapeGraphs:
    """fn(*inputs) replayed from a CUDA graph captured for the inputs' shapes and dtypes (None
    inputs pass as None); returns a copy of fn's output (a tensor or a container of tensors)."""

    def __init__(self, fn: Callable, limit: int = 8):
        self.fn, self.limit = fn, limit
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (graph, static inputs, output)
        self.pool = None  # the first graph's memory pool, shared by the rest

    def __call__(self, *inputs: torch.Tensor | None):
        key = tuple(None if x is None else (tuple(x.shape), x.dtype, x.device) for x in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(inputs)
            while len(self.graphs) > self.limit:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        graph, static, output = entry
        for held, x in zip(static, inputs):
            if x is not None:
                held.copy_(x)
        graph.replay()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)

    def _capture(self, inputs) -> tuple:
        static = [None if x is None else x.clone() for x in inputs]  # outside the pool: never reused
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # outside the capture: lazy initialisations, cuBLAS's choices, a compile
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = self.fn(*static)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, static, output
