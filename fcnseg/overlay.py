"""Pictures for people: colour-coded masks blended over images, legends and the
confusion matrix, as uint8 RGB numpy arrays (shared by TensorBoard, predict
and check-labels previews)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) colours: one gather, void gets palette[void]."""
    return palette[np.clip(mask, 0, len(palette) - 1)]


def blend(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
          ignore_label: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """Image with the colour-coded mask on top at ``alpha``; void pixels (the
    ignore label, or any value >= ``num_classes``) keep the image's own colour."""
    image = np.asarray(image, np.float32)
    out = np.rint(image * (1 - alpha) + colorize(mask, palette).astype(np.float32) * alpha)
    void = mask >= (num_classes if num_classes is not None else len(palette))
    if ignore_label is not None:
        void |= mask == ignore_label
    out[void] = image[void]
    return np.clip(out, 0, 255).astype(np.uint8)


def legend(class_names: Sequence[str], colors: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """A strip of colour swatches with class names, ``width`` pixels wide."""
    cell_w = 150
    per_row = max(1, width // cell_w)
    rows = (len(class_names) + per_row - 1) // per_row
    strip = np.full((rows * 20 + 4, width, 3), 255, np.uint8)
    for i, (name, color) in enumerate(zip(class_names, colors)):
        x, y = (i % per_row) * cell_w + 4, (i // per_row) * 20 + 4
        cv2.rectangle(strip, (x, y), (x + 14, y + 14), tuple(int(c) for c in color), -1)
        cv2.rectangle(strip, (x, y), (x + 14, y + 14), (0, 0, 0), 1)
        cv2.putText(strip, name[:18], (x + 18, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def side_by_side(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette: np.ndarray,
                 class_names: Sequence[str], colors, ignore_label: int, alpha: float = 0.5) -> np.ndarray:
    """Input | ground-truth overlay | prediction overlay, with a legend below."""
    image = np.clip(image, 0, 255).astype(np.uint8)
    panel = np.concatenate([image, blend(image, truth, palette, alpha, ignore_label),
                            blend(image, pred, palette, alpha, ignore_label)], axis=1)
    return np.concatenate([panel, legend(class_names, colors, panel.shape[1])], axis=0)


def confusion_image(cm: np.ndarray, class_names: Sequence[str], cell: int = 28) -> np.ndarray:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) as a heat map."""
    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    margin = 110
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    heat = cv2.resize(heat, (n * cell, n * cell), interpolation=cv2.INTER_NEAREST)
    canvas = np.full((n * cell + margin, n * cell + margin, 3), 255, np.uint8)
    canvas[margin:, margin:] = heat
    for i, name in enumerate(class_names):
        cv2.putText(canvas, name[:14], (2, margin + i * cell + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(n):
            value = f"{norm[i, j] * 100:.0f}"
            color = (0, 0, 0) if norm[i, j] > 0.6 else (255, 255, 255)
            cv2.putText(canvas, value, (margin + j * cell + 3, margin + i * cell + cell // 2 + 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.3, color, 1, cv2.LINE_AA)
    names = np.full((margin, n * cell, 3), 255, np.uint8)
    rotated = np.ascontiguousarray(np.rot90(names))  # write column names vertically
    for j, name in enumerate(class_names):
        cv2.putText(rotated, name[:14], (2, (n - 1 - j) * cell + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)
    canvas[:margin, margin:] = np.rot90(rotated, -1)
    return canvas
