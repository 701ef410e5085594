"""Counting what a piece of torch code reads back to the host, and how many aten ops it runs.

On a GPU every read of a tensor's value by Python (`.item()`, `bool(t)`, `.cpu()`, ...) waits for
all queued work: a frame with hundreds of them leaves the card idle. `HostReadCounter` counts them
(by method name) while active; `AtenOpCounter` counts the aten operators dispatched (each is at
least one kernel launch on a GPU, or one dispatch on the CPU).

    with HostReadCounter() as reads:
        fitter.process(obs)
    reads.total, reads.counts   # e.g. 3, {"numpy": 2, "cpu": 1}
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadCounter", "AtenOpCounter", "HOST_READ_METHODS"]

# Tensor methods that hand a value to Python or copy a tensor to host memory.
HOST_READ_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
_METHODS = {getattr(torch.Tensor, name): name for name in HOST_READ_METHODS}


def _to_host(args, kwargs) -> bool:
    """A `Tensor.to(...)` call whose target device is the CPU (from another device)."""
    tensor = args[0] if args else None
    if not isinstance(tensor, torch.Tensor) or tensor.device.type == "cpu":
        return False
    target = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            target = a
    return target is not None and torch.device(target).type == "cpu"


class HostReadCounter(TorchFunctionMode):
    """Count tensor → host reads (see HOST_READ_METHODS; plus `.to("cpu")` from a device) while active.

    Attributes: counts (Counter by method name), total.
    """

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _METHODS.get(func)
        if name is not None:
            self.counts[name] += 1
        elif func is torch.Tensor.to and _to_host(args, kwargs):
            self.counts["to(cpu)"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class AtenOpCounter(TorchDispatchMode):
    """Count aten operators dispatched while active (total, and by name in `counts`)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
