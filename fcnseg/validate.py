"""Reading label and image files strictly, and finding the file behind a
pipeline failure (corrupt, truncated, mismatched) with check-labels' code."""

from __future__ import annotations

import os

import cv2
import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TAIL = 4096  # bytes searched for the end marker: writers may append a little after it


def integrity_error(data: np.ndarray, path: str) -> str | None:
    """Why the bytes of a PNG/JPEG file cannot be whole, or None.

    Some OpenCV builds return the decoded top of a truncated PNG as if it were
    the whole image, so the end marker is checked before decoding.
    """
    raw = data.tobytes() if data.size < 2 * _TAIL else data[:8].tobytes() + data[-_TAIL:].tobytes()
    lower = path.lower()
    if lower.endswith(".png") or raw.startswith(_PNG_SIGNATURE):
        if not raw.startswith(_PNG_SIGNATURE):
            return "not a PNG file (bad signature)"
        if b"IEND" not in raw[-_TAIL:]:
            return "PNG has no IEND chunk: truncated"
    elif lower.endswith((".jpg", ".jpeg")):
        if not raw.startswith(b"\xff\xd8"):
            return "not a JPEG file (bad signature)"
        if b"\xff\xd9" not in raw[-_TAIL:]:
            return "JPEG has no end-of-image marker: truncated"
    return None


def read_file(path: str) -> tuple[np.ndarray | None, str]:
    """Decode an image or label file keeping bit depth and channels (OpenCV: BGR order).

    Returns (array, "") or (None, why it cannot be read).
    """
    if not os.path.isfile(path):
        return None, "file does not exist"
    data = np.fromfile(path, np.uint8)
    if data.size == 0:
        return None, "empty file"
    why = integrity_error(data, path)
    if why:
        return None, why
    if path.lower().endswith(".gif"):  # OpenCV has no GIF reader; grey GIF masks (Carvana) are common
        return _read_gif(data)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        return None, "cannot be decoded (corrupt or not an image)"
    return array, ""


def _read_gif(data: np.ndarray) -> tuple[np.ndarray | None, str]:
    import tensorflow as tf

    try:
        rgb = tf.io.decode_image(data.tobytes(), channels=3, expand_animations=False).numpy()
    except Exception:  # noqa: BLE001 - any decoder error means the same thing here
        return None, "cannot be decoded (corrupt GIF)"
    return rgb[..., ::-1].copy(), ""  # BGR, like every other read_file result


def read_any(path: str) -> np.ndarray | None:
    """Decode an image file with OpenCV, keeping bit depth and channels; None if unreadable."""
    return read_file(path)[0]


def find_unreadable(source, splits=("train", "val")) -> str | None:
    """One line naming the first missing/corrupt file or size mismatch, else None."""
    from fcnseg.check_labels import PIPELINE_FAILURES, check_labels

    if getattr(source, "cached_samples", None) is None:
        return None
    for split in splits:
        report = check_labels(source, (split,), values=False, num_previews=0)
        first = next((p for p in report.problems if p.reason in PIPELINE_FAILURES), None)
        if first is not None:
            return f"{first.path}: {first.message}"
    return None
