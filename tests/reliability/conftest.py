"""Fixtures for fault tests: a tiny tmpfs (a disk that fills) and a read-only mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root or CAP_SYS_ADMIN")


@pytest.fixture
def full_disk(tmp_path):
    """A factory: `full_disk(kib)` mounts a tmpfs of that size and returns its folder (unmounted after)."""
    mounted = []

    def make(kib: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        _mount_tmpfs(path, f"size={kib}k")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (root ignores permission bits, so a chmod would prove nothing)."""
    path = tmp_path / "ro"
    _mount_tmpfs(path, "ro,size=64k")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
