"""Writing outputs safely: an unwritable place or a full disk is one line naming the path, not a crash.

Every writer in the project goes through these: `check_output_dir` before long work starts (a
read-only or missing location fails in milliseconds, not after minutes of decoding or calibration),
`output_error` to turn the operating system's "no space left", "read-only file system", "permission
denied" and "no such directory" into an `InputError`, and `reserve_npy` for memory-mapped arrays:
their blocks are allocated up front, because a write through a map onto a full disk is a SIGBUS
that kills the process without a message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmface4d_stream.errors import InputError

# Errors that mean "this place cannot take the output" rather than a bug.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                          errno.ENOTDIR, errno.EFBIG, errno.EISDIR, errno.EIO})


def is_write_error(exc: BaseException) -> bool:
    """True for an `OSError` (PyAV's included) caused by the output location, not by our code."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def output_error(exc: OSError, path: str | os.PathLike) -> InputError:
    """The one-line `InputError` for a failed write of `path` (the user's name, not a temporary one)."""
    reason = exc.strerror or os.strerror(exc.errno or 0) or str(exc)
    return InputError(f"cannot write ({reason})", path)


def check_output_dir(directory: str | os.PathLike, create: bool = False) -> Path:
    """Prove that files can be created in `directory` (or in it once created); returns it.

    An existing folder is probed with a hidden temporary file; a missing one is checked through its
    nearest existing ancestor (writable, not on a read-only file system) and not created here, so a
    run that fails later for another reason leaves no empty folder. Raises `InputError` naming the
    folder. Disk space is not reserved: writers still report a full disk themselves. With `create`
    a missing folder is created (for commands whose next step writes into it anyway).
    """
    directory = Path(directory) if str(directory) else Path(".")
    if directory.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".mmface4d-probe-"):
                pass
        except OSError as exc:
            raise InputError(f"cannot write here ({exc.strerror or exc})", directory) from None
        return directory
    ancestor = directory.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot create this folder: {ancestor} is a file", directory)
    if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
        raise InputError(f"cannot create this folder ({os.strerror(errno.EROFS)})", directory)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot create this folder ({os.strerror(errno.EACCES)} in {ancestor})", directory)
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create this folder ({exc.strerror or exc})", directory) from None
    return directory


def temporary_path(path: Path) -> Path:
    """Hidden sibling `.<name>.partial<suffix>` (the suffix kept so muxers can still guess formats)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Write a whole file atomically: yields a hidden temporary path beside `path` (same suffix),
    which replaces `path` when the block succeeds and is removed when it fails. A write error
    (full disk, ...) becomes an `InputError` naming `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        if is_write_error(exc):
            raise output_error(exc, path) from None
        raise
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(*paths: str | os.PathLike) -> None:
    """Delete leftovers of a failed write; a path already gone is fine."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # cleaning up must not hide the error that caused it


def reserve_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32,
                report_as: str | os.PathLike | None = None) -> np.memmap:
    """Create a `.npy` of `shape` and `dtype` with all its blocks allocated, memory-mapped for writing.

    Allocation goes through `posix_fallocate`, so a disk without room fails here with `InputError`
    (naming `report_as` or `path`, the file removed) instead of a SIGBUS on a later write through the
    map. File systems without fallocate fall back to writing zeros.
    """
    path = Path(path)
    report_as = path if report_as is None else report_as
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            offset = handle.tell()
            handle.flush()
            try:
                os.posix_fallocate(handle.fileno(), 0, offset + size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                _fill_zeros(handle, size)
        return np.lib.format.open_memmap(path, mode="r+")
    except OSError as exc:
        remove_quietly(path)
        if is_write_error(exc):
            raise output_error(exc, report_as) from None
        raise


def _fill_zeros(handle, size: int, block: int = 1 << 22) -> None:
    zeros = bytes(min(block, max(size, 1)))
    remaining = size
    while remaining > 0:
        n = min(remaining, len(zeros))
        handle.write(zeros[:n])
        remaining -= n
    handle.flush()
    os.fsync(handle.fileno())
