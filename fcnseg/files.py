"""Writing files safely: prove a folder is writable before the slow work, and
replace files atomically so an interrupted run never leaves half a file."""

from __future__ import annotations

import json
import os

from fcnseg.errors import FcnsegError


def ensure_writable_dir(path: str, option: str) -> None:
    """Create ``path`` if needed and prove we can write there, or a one-line error naming ``option``."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".fcnseg-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise FcnsegError(f"{option} {path} is not writable: {e.strerror or e}") from None


def write_json(path: str, data) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
