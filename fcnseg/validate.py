"""Finding the file behind a pipeline failure (corrupt, truncated, mismatched)."""

from __future__ import annotations

import os

import cv2
import numpy as np


def read_any(path: str) -> np.ndarray | None:
    """Decode an image file with OpenCV, keeping bit depth and channels; None if unreadable."""
    data = np.fromfile(path, np.uint8) if os.path.isfile(path) else None
    if data is None or data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def find_unreadable(source, splits=("train", "val")) -> str | None:
    """One line naming the first missing/corrupt file or size mismatch, else None."""
    samples_of = getattr(source, "cached_samples", None)
    if samples_of is None:
        return None
    for split in splits:
        try:
            samples = samples_of(split)
        except Exception:
            continue
        for s in samples:
            image = read_any(s.image)
            if image is None:
                return f"{s.image}: missing, empty, corrupt or truncated image"
            if s.label is None:
                continue
            label = read_any(s.label)
            if label is None:
                return f"{s.label}: missing, empty, corrupt or truncated label"
            if image.shape[:2] != label.shape[:2] and not getattr(source, "labels_resized", False):
                return (f"{s.label}: label is {label.shape[1]}x{label.shape[0]} but its image {s.image} is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return None
