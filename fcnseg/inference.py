"""Running a model on images: the traced softmax (with optional flip averaging), sliding
windows for images larger than the model should see at once, and the resolution the model
runs at (by default the checkpoint's training size: images resized in, probabilities resized
back to each image's own size); shared by ``fcnseg predict``, ``evaluate`` and ``export``."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Resolution:
    """Where the model sees an image: resized to ``size`` (W, H), scaled by ``scale``, or as stored
    (neither). A model trained on 320x240 frames of 480x360 images has learned objects at 2/3 of
    their stored size; run at 480x360 they look 1.5x larger than anything it saw."""

    size: tuple[int, int] | None = None
    scale: float | None = None
    # Multi-scale test-time augmentation: multiples of that resolution whose probabilities are averaged.
    scales: tuple[float, ...] = (1.0,)

    @property
    def native(self) -> bool:
        return self.size is None and self.scale is None

    def target_hw(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the model runs at for an image of ``height`` x ``width``."""
        if self.size is not None:
            return self.size[1], self.size[0]
        if self.scale is not None:  # round() is half-to-even, as tf.round in the exported graph
            return max(1, round(height * self.scale)), max(1, round(width * self.scale))
        return height, width

    def scaled_hw(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of each run of an image of ``height`` x ``width``: ``target_hw`` times each of ``scales``."""
        h, w = self.target_hw(height, width)
        return [(max(1, round(h * s)), max(1, round(w * s))) for s in self.scales]

    def describe(self) -> str:
        if self.size is not None:
            how = f"whole image resized to {self.size[0]}x{self.size[1]}, probabilities resized back"
        elif self.scale is not None:
            how = f"whole image scaled by {self.scale:g}, probabilities resized back"
        else:
            how = "whole image at native size"
        if self.scales != (1.0,):
            how += f", averaged over scales {'/'.join(f'{s:g}' for s in self.scales)} of that"
        return how


def resolution(meta: dict, size: str | None = "train", scale: float | None = None,
               window: tuple[int, int] | None = None, scales: tuple[float, ...] | None = None) -> Resolution:
    """The resolution ``--size`` (train | native | WxH) and ``--scale S`` ask for; by default the
    checkpoint's training size (``meta["source"]["image_size"]``). ``--window`` tiles at native size.
    ``--scales`` averages the runs at these multiples of that resolution."""
    import dataclasses

    base = _base_resolution(meta, size, scale, window)
    if scales is None or tuple(scales) == (1.0,):
        return base
    from fcnseg.errors import FcnsegError

    if window is not None:
        raise FcnsegError("--scales and --window both choose how the model sees the image; give one")
    if not scales or not all(0.0 < s <= 4.0 for s in scales):
        raise FcnsegError(f"--scales {','.join(f'{s:g}' for s in scales)}: each must be above 0 and at most 4")
    return dataclasses.replace(base, scales=tuple(float(s) for s in scales))


def _base_resolution(meta: dict, size: str | None, scale: float | None,
                     window: tuple[int, int] | None) -> Resolution:
    from fcnseg.errors import FcnsegError

    explicit_size = size not in (None, "train")
    if scale is not None and explicit_size:
        raise FcnsegError(f"--scale {scale:g} and --size {size} both set the model's input size; give one")
    if scale is not None and not (0.0 < scale <= 16.0):
        raise FcnsegError(f"--scale {scale:g}: must be above 0 and at most 16")
    if window is not None:
        if scale is not None or (explicit_size and size != "native"):
            raise FcnsegError("--window tiles the image at its native size; drop --scale / --size")
        return Resolution()
    if scale is not None:
        return Resolution(scale=float(scale))
    if size == "native":
        return Resolution()
    if explicit_size:
        return Resolution(size=parse_size(size))
    trained = meta.get("source", {}).get("image_size")
    if not trained:
        raise FcnsegError("the checkpoint records no training size; pass --size native, --size WxH or --scale")
    return Resolution(size=(int(trained[0]), int(trained[1])))


def parse_size(value: str) -> tuple[int, int]:
    """``WxH`` -> (W, H), or a one-line error naming --size."""
    from fcnseg.errors import FcnsegError

    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        w = h = 0
    if w < 8 or h < 8:
        raise FcnsegError(f"--size {value}: expected train, native or WIDTHxHEIGHT (each at least 8), e.g. 320x240")
    return w, h


def resize_images(images, size_hw, portable: bool = False):
    """float32 (B, H, W, 3) images -> (B, h, w, 3), bilinear with antialiasing as training shrinks them.

    ``portable``: the same filter as two matrix products, for graphs converted to ONNX or TFLite,
    which have no op for TensorFlow's antialiased resize.
    """
    import tensorflow as tf

    if not portable:
        return tf.image.resize(images, size_hw, method="bilinear", antialias=True)
    shape = tf.shape(images)
    rows = _triangle_weights(shape[1], size_hw[0])
    cols = _triangle_weights(shape[2], size_hw[1])
    return tf.einsum("jw,biwc->bijc", cols, tf.einsum("ih,bhwc->biwc", rows, images))


def _triangle_weights(n_in, n_out):
    """(n_out, n_in) weights of antialiased bilinear resampling (tf.image.resize's triangle kernel
    widened by the shrink factor, half-pixel centres, each row normalised to sum 1)."""
    import tensorflow as tf

    n_in_f, n_out_f = tf.cast(n_in, tf.float32), tf.cast(n_out, tf.float32)
    inv = n_in_f / n_out_f
    width = tf.maximum(inv, 1.0)
    centre = (tf.range(n_out_f) + 0.5) * inv
    distance = (tf.range(n_in_f)[None, :] + 0.5 - centre[:, None]) / width
    weights = tf.maximum(0.0, 1.0 - tf.abs(distance))
    return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def resize_probabilities(probs, size_hw):
    """Probabilities, not class indices, are resized (bilinear): interpolating a label map would invent classes."""
    import tensorflow as tf

    return tf.image.resize(probs, size_hw, method="bilinear")


def run_at_resolution(infer: Infer, images: np.ndarray, res: Resolution,
                      out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(B, h, w, C) probabilities of same-size (B, H, W, 3) images run at ``res``, resized to
    ``out_hw`` (default: the images' own (H, W)). The one path predict and evaluate share."""
    h, w = images.shape[1:3]
    out_hw = tuple(out_hw or (h, w))
    total = None
    for model_hw in res.scaled_hw(h, w):
        batch = images.astype(np.float32)
        if model_hw != (h, w):
            batch = resize_images(batch, model_hw)
        probs = infer(batch)
        if tuple(probs.shape[1:3]) != out_hw:
            probs = resize_probabilities(probs, out_hw)
        total = np.asarray(probs) if total is None else total + np.asarray(probs)
    return total / len(res.scales) if len(res.scales) > 1 else total


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
