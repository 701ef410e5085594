"""One implementation for numpy arrays and torch tensors: the few helpers the lens model and the
registration kernels share (torch is imported only when a tensor is passed in)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_torch", "where", "stack_last", "as_float", "cast_like"]


def is_torch(x: Any) -> bool:
    """Whether `x` is a torch tensor (without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch"


def where(cond, a, b):
    """`np.where` or `torch.where`, following the kind of `cond`."""
    if is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


def stack_last(parts, like):
    """Stack along a new last axis, numpy or torch following `like`."""
    if is_torch(like):
        import torch

        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def as_float(x, *, like=None, min_dtype=None):
    """A float array/tensor from `x` (numpy, torch or nested lists), keeping float32/float64.

    With `like`, a non-array `x` becomes the same kind as `like` (tensor on its device)."""
    if is_torch(x):
        import torch

        if not torch.is_floating_point(x):
            x = x.to(torch.float32)
        if min_dtype == "float64":
            x = x.to(torch.float64)
        return x
    if like is not None and is_torch(like):
        import torch

        dtype = torch.float64 if min_dtype == "float64" else (
            like.dtype if torch.is_floating_point(like) else torch.float32
        )
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=like.device)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64) or min_dtype == "float64":
        x = x.astype(np.float64)
    return x


def cast_like(x, like):
    """`x` converted to the float dtype of `like` (same kind)."""
    if is_torch(like):
        return x.to(like.dtype) if x.dtype != like.dtype else x
    return x.astype(like.dtype, copy=False)
