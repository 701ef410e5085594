"""Capture a frame solve once as a CUDA graph per input shape, then replay it.

A steady-state frame is a fixed sequence of a few thousand small kernels; launching them one by
one from Python leaves the GPU idle. `torch.cuda.CUDAGraph` records them once (after warm-up runs
on a side stream, as PyTorch requires) and replays the whole frame with one launch. Inputs are
copied into the graph's static tensors before each replay; outputs are the graph's static tensors,
valid until the next replay of the same graph (the caller copies what it keeps).

The key of a graph is everything that shapes the work: the model, the batch size B, the number of
cameras C, the padded depth patch size and the `SolveSettings`. `GraphCache` keeps the most recently
used graphs (each holds its own memory pool).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Callable

import torch

from mmface4d_stream.fit.lm_solver import tensor_fields

log = logging.getLogger(__name__)

__all__ = ["CapturedSolve", "GraphCache"]


def _clone_like(obj):
    """A copy of a dataclass of tensors (nested dataclasses too) with fresh, equal tensors."""
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = value.clone()
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _clone_like(value)
    return dataclasses.replace(obj, **changes)


class CapturedSolve:
    """One captured solve: `run(inputs)` copies the inputs in, replays, returns the static outputs.

    Args:
        fn: the solve, inputs -> outputs (a dataclass of tensors); must not read the device.
        example: inputs with the shapes, dtypes and device of every later call.
        warmup: eager runs on a side stream before capture (kernels selected, workspaces allocated).
    """

    def __init__(self, fn: Callable, example, warmup: int = 2):
        self.inputs = _clone_like(example)
        self._static = tensor_fields(self.inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(int(warmup), 1)):
                fn(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(self.inputs)

    def run(self, inputs):
        for name, value in tensor_fields(inputs).items():
            self._static[name].copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """Captured solves by key, least recently used dropped beyond `max_graphs`."""

    def __init__(self, max_graphs: int = 32):
        self.max_graphs = int(max_graphs)
        self._graphs: OrderedDict[tuple, CapturedSolve] = OrderedDict()
        self.captures = 0
        self.failures: dict[tuple, str] = {}  # keys whose capture failed: run eagerly

    def run(self, key: tuple, fn: Callable, inputs):
        if key in self.failures:
            return fn(inputs)
        graph = self._graphs.get(key)
        if graph is None:
            log.debug("capturing a CUDA graph for %s", key)
            try:
                graph = CapturedSolve(fn, inputs)
            except RuntimeError as exc:
                # An op that cannot be captured on this torch/CUDA build: correct results eagerly.
                self.failures[key] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.warning("CUDA graph capture failed (%s); this shape runs eagerly", self.failures[key])
                torch.cuda.synchronize()
                return fn(inputs)
            self._graphs[key] = graph
            self.captures += 1
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return graph.run(inputs)

    def drop(self, predicate: Callable[[tuple], bool]) -> None:
        """Forget the graphs whose key satisfies `predicate` (their memory pools are released)."""
        for key in [k for k in self._graphs if predicate(k)]:
            del self._graphs[key]

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)
