"""Running a model on images: the traced softmax (with optional flip averaging), sliding
windows for images larger than the model should see at once, and the resizing to the
training size; shared by ``fcnseg predict`` and ``fcnseg evaluate``."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fcnseg.heads import probabilities

# float32 RGB images (B, H, W, 3) -> softmax probabilities (B, H, W, C), as a tensor.
Infer = Callable[[np.ndarray], Any]


def make_infer(model, flip: bool) -> Infer:
    """A traced function: float32 RGB images (B, H, W, 3) -> class probabilities (B, H, W, C)
    (softmax, or [1 - p, p] of a sigmoid head: fcnseg.heads)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def infer(images):
        if not flip:
            return probabilities(model(images, training=False))
        # One call on [images, flipped] instead of two: same work, half the dispatch.
        both = probabilities(model(tf.concat([images, images[:, :, ::-1]], 0), training=False))
        n = tf.shape(images)[0]
        return (both[:n] + both[n:, :, ::-1]) / 2.0

    return infer


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Offsets of tiles of ``window`` covering ``length``, overlapping by ``overlap``; the last ends flush."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def sliding_window_probabilities(infer: Infer, image: np.ndarray, window: tuple[int, int], overlap: float,
                                 batch_size: int) -> np.ndarray:
    """(H, W, C) probabilities of one image, averaged over overlapping (W, H) tiles."""
    h, w = image.shape[:2]
    win_w, win_h = min(window[0], w), min(window[1], h)
    tiles = [(y, x) for y in window_starts(h, win_h, overlap) for x in window_starts(w, win_w, overlap)]
    total = count = None
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i:i + batch_size]
        batch = np.stack([image[y:y + win_h, x:x + win_w] for y, x in chunk]).astype(np.float32)
        probs = infer(batch).numpy()
        if total is None:
            total = np.zeros((h, w, probs.shape[-1]), np.float32)
            count = np.zeros((h, w, 1), np.float32)
        for (y, x), p in zip(chunk, probs):
            total[y:y + win_h, x:x + win_w] += p
            count[y:y + win_h, x:x + win_w] += 1.0
    return total / count


def resized_probabilities(infer: Infer, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) probabilities of one (H, W, 3) image run at the (w, h) ``size`` it was trained at.

    The image is shrunk with antialiasing, as the training pipeline resizes its inputs.
    """
    import tensorflow as tf

    resized = tf.image.resize(image[None].astype(np.float32), (size[1], size[0]), antialias=True)
    return infer(resized)[0].numpy()


def probabilities_at(probs: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, C) probabilities resized to ``size_hw`` (a label's resolution).

    Probabilities, not class indices, are resized: bilinear on a label map would invent classes.
    """
    if probs.shape[:2] == tuple(size_hw):
        return probs
    import tensorflow as tf

    return tf.image.resize(probs[None], size_hw, method="bilinear")[0].numpy()
