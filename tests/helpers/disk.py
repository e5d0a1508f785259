"""A real full disk: a tiny tmpfs mounted over a folder for the length of a test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def full_disk(folder: Path, size_kb: int = 64) -> Iterator[Path]:
    """Mount a `size_kb` tmpfs at `folder` (which must be empty or absent); unmount after.

    Writes past the size fail with ENOSPC, exactly as on a full volume. Mounting needs root
    (CI and this machine have it); elsewhere the test is skipped, not faked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
