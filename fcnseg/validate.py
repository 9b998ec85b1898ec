"""Finding the file behind a pipeline failure (corrupt, truncated, too large,
mismatched) with check-labels' code; files are read by ``fcnseg.imageio``."""

from __future__ import annotations

import numpy as np

from fcnseg import imageio


def read_file(path: str) -> tuple[np.ndarray | None, str]:
    """Decode an image or label file keeping bit depth and channels (OpenCV: BGR order),
    by ``fcnseg.imageio``'s policy. Returns (array, "") or (None, why it cannot be read)."""
    try:
        return imageio.read(path), ""
    except imageio.ImageError as e:
        return None, e.why


def read_any(path: str) -> np.ndarray | None:
    """Decode an image file with OpenCV, keeping bit depth and channels; None if unreadable."""
    return read_file(path)[0]


def find_unreadable(source, splits=("train", "val")) -> str | None:
    """One line naming the first missing/corrupt file or size mismatch, else None."""
    from fcnseg.check_labels import PIPELINE_FAILURES, check_labels
    from fcnseg.errors import FcnsegError

    if getattr(source, "cached_samples", None) is None:
        return None
    for split in splits:
        try:
            report = check_labels(source, (split,), values=False, num_previews=0)
        except FcnsegError:  # e.g. an empty split: not what broke the pipeline
            continue
        first = next((p for p in report.problems if p.reason in PIPELINE_FAILURES), None)
        if first is not None:
            return f"{first.path}: {first.message}" + (f" ({first.detail})" if first.detail else "")
    return None
