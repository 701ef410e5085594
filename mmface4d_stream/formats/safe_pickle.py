"""Read the dataset's pickles without running code from them.

A pickle names callables that `pickle.load` imports and calls: a crafted `<seq>_<cam>.pkl` or
`faces.pkl` would run its payload under `mmface4d info`, `run_offline.py` or `export`. The dataset's
pickles need only numpy's array reconstruction (landmark arrays, trimesh's `TrackedArray` subclass
in `bfm_faces.pkl`) and plain containers (`faces.pkl` is a list of index triples); the unpickler
here resolves exactly those names and refuses every other one.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mmface4d_stream.errors import InputError

# (module, name) -> object. numpy moved `core` to `_core` in 2.0; pickles name either.
_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # ndarray subclasses of other libraries become plain arrays (trimesh.caching.TrackedArray).
    ("trimesh.caching", "TrackedArray"): np.ndarray,
}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles call (`_codecs.encode`) to rebuild bytes; only latin-1 is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedPickle(f"it encodes bytes as {encoding!r}, not latin1")
    return text.encode("latin1")


_ALLOWED[("_codecs", "encode")] = _latin1_bytes
_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_multiarray = importlib.import_module(f"{_CORE}.multiarray")
_numeric = importlib.import_module(f"{_CORE}.numeric")
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer


_MARK = object()


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names a callable outside the allowed set."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction; builtin containers need no lookup."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"it names {module}.{name}, which a data file never needs") from None


def load_data_pickle(path: str | os.PathLike, what: str) -> object:
    """Unpickle `path` allowing only numpy arrays, numbers, strings and plain containers.

    `what` names the expected content for the error ("landmark pickle", "faces pickle"). A refused or
    damaged pickle raises `InputError` naming the file; nothing it names is imported or called.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", path) from None
    try:
        return _ArrayUnpickler(io.BytesIO(data)).load()
    except RefusedPickle as exc:
        raise InputError(f"refused to load as a {what}: {exc}", path) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, OverflowError) as exc:
        raise InputError(f"not a readable {what} ({type(exc).__name__}: {exc})", path) from None


class _Call(NamedTuple):
    function: tuple[str, str]
    args: object


def pickled_array_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The shape of the ndarray a pickle holds, read from its opcodes without unpickling anything.

    Follows only what numpy's own pickles do (`_reconstruct` called, then its state set by BUILD);
    for any other layout returns None (load it with `load_data_pickle` instead).
    """
    stack: list = []
    memo: dict[int, object] = {}
    shape = None
    try:
        with open(path, "rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                name = op.name
                if name in ("PROTO", "FRAME"):
                    continue
                if name == "STOP":
                    break
                if name == "MARK":
                    stack.append(_MARK)
                elif name in ("BININT", "BININT1", "BININT2", "LONG1", "SHORT_BINUNICODE", "BINUNICODE",
                              "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "SHORT_BINSTRING", "BINSTRING"):
                    stack.append(arg)
                elif name in ("NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE"):
                    stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}[name])
                elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                    n = int(name[-1])
                    items = tuple(stack[-n:])
                    del stack[-n:]
                    stack.append(items)
                elif name == "TUPLE":
                    at = len(stack) - 1 - stack[::-1].index(_MARK)
                    items = tuple(stack[at + 1:])
                    del stack[at:]
                    stack.append(items)
                elif name == "STACK_GLOBAL":
                    module, qualname = stack.pop(-2), stack.pop()
                    stack.append((module, qualname))
                elif name == "GLOBAL":
                    module, _, qualname = arg.partition(" ")
                    stack.append((module, qualname))
                elif name == "REDUCE":
                    args = stack.pop()
                    stack.append(_Call(stack.pop(), args))
                elif name == "BUILD":
                    state = stack.pop()
                    target = stack[-1]
                    if (isinstance(target, _Call) and target.function[1] == "_reconstruct"
                            and isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)):
                        shape = tuple(int(v) for v in state[1])
                elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo[arg])
                else:
                    return None  # something numpy's pickles do not do: no shortcut
    except (ValueError, IndexError, KeyError, TypeError, EOFError, OSError):
        return None
    if len(stack) != 1 or not isinstance(stack[0], _Call) or stack[0].function not in _ALLOWED:
        return None
    return shape
