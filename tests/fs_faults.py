"""Helpers for file-system fault tests: a tiny tmpfs (full disk, read-only) and dropped capabilities.

Mounting needs root; a test using these skips itself with a message where the mount is refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a ``size`` tmpfs at ``path`` (created) for the block; skip the test where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs at {path} (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` until no byte is left (a file, so new empty files still fit)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def remount_read_only(path: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot remount {path} read-only: {done.stderr.strip()}")


def without_dac_override(command: list[str]) -> list[str]:
    """``command`` run so that file modes apply even to root (root otherwise ignores them)."""
    if os.geteuid() != 0:
        return command  # plain users are bound by modes already
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is missing: cannot drop root's permission override")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *command]


def temp_leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` (recursively) that look like fcnseg's temporary or set-aside files."""
    return [str(p) for p in folder.rglob("*") if ".fcnseg-" in p.name]
