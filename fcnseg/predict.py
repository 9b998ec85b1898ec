"""Inference from a checkpoint: images, folders, globs and videos to label, colour and overlay PNGs.

For every input frame ``NAME`` three PNGs are written to the output folder::

    NAME_label.png     uint8 train ids (the checkpoint's ignore label for void)
    NAME_color.png     the label coloured with the checkpoint's palette
    NAME_overlay.png   the colours blended into the image (void pixels untouched)

``NAME`` is the input's file stem (``-2``, ``-3``... appended when two inputs
share one); video frames are ``<video-stem>_<frame:06d>``.
Inputs are read lazily, one frame at a time, and written as soon as their batch
is done, so memory does not grow with the number of inputs.

The model runs at the checkpoint's training size by default (each image
resized in, its probabilities resized back to the image's size: the path
``fcnseg evaluate`` takes, ``fcnseg.inference.run_at_resolution``); ``size``
"native" or ``scale`` override it, ``window`` tiles at native size.

Post-processing runs as TensorFlow ops on the probability map (so the same code
runs wherever the model runs), in this order: per-class thresholds, claims,
morphology, static mask.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator

import numpy as np

from fcnseg import imageio, overlay as overlay_lib
from fcnseg.classes import ClassTable
from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_write, ensure_writable_dir, is_symlink_loop, remove_empty_folders
from fcnseg.inference import make_infer, resolution, run_at_resolution, sliding_window_probabilities
from fcnseg.progress import open_bar

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
MORPHOLOGY_OPS = ("erode", "dilate", "open", "close")


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: str  # .keras file written by fcnseg train
    inputs: tuple[str, ...]  # image files, folders (not recursed), globs, video files
    output_dir: str
    batch_size: int = 4  # images (or sliding-window tiles) per model call
    window: tuple[int, int] | None = None  # (W, H): larger images are predicted in overlapping tiles
    size: str = "train"  # "train": the checkpoint's training size; "native": as stored; or "WxH"
    scale: float | None = None  # instead of size: run each image scaled by this factor
    overlap: float = 0.5  # fraction of the window shared by neighbouring tiles
    flip: bool = False  # average with the prediction on the horizontally flipped image
    scales: tuple[float, ...] | None = None  # multi-scale TTA: multiples of the resolution, averaged
    alpha: float = 0.5  # weight of the class colour in the overlay
    thresholds: tuple[tuple[str, float], ...] = ()  # (class, min probability) pairs
    morphology: tuple[tuple[str, str, int], ...] = ()  # (class, erode|dilate|open|close, kernel size)
    static_mask: str | None = None  # PNG; its non-zero pixels are forced to static_class
    static_class: str = "void"  # class name, train id, or "void"
    claims: tuple[tuple[str, float], ...] = ()  # (class, probability at which it takes the pixel) pairs


@dataclass(frozen=True)
class PostProcess:
    """Post-processing resolved against a class table (train ids, arrays)."""

    thresholds: tuple[float, ...] | None = None  # one per train id
    morphology: tuple[tuple[int, str, int], ...] = ()  # (train id, op, kernel size), applied in order
    static_mask: np.ndarray | None = field(default=None, compare=False)  # (H, W) bool
    static_label: int = 255
    claims: tuple[tuple[int, float], ...] = ()  # (train id, probability), applied in order


@dataclass
class PredictResult:
    written: int = 0  # frames whose three PNGs were written
    failed: list[str] = field(default_factory=list)  # inputs that could not be read
    model_seconds: float = 0.0  # inference + post-processing
    total_seconds: float = 0.0  # end to end, reading and writing included


def resolve_class(value: str, table: ClassTable, option: str) -> int:
    """Train id of a class given by name (case-insensitive), by train id, or ``void``."""
    text = str(value).strip()
    if text.lower() == "void":
        return table.ignore_label
    names = [n.lower() for n in table.class_names]
    if text.lower() in names:
        return names.index(text.lower())
    if text.isdigit() and int(text) < table.num_classes:
        return int(text)
    raise FcnsegError(f"{option} {value!r}: no such class; the checkpoint's classes are "
                      f"{', '.join(table.class_names)} (or their train ids 0..{table.num_classes - 1}, or void)")


def build_postprocess(config: PredictConfig, table: ClassTable) -> PostProcess:
    """Resolve class names and read the static mask; one-line errors name the option."""
    thresholds = None
    if config.thresholds:
        values = [0.0] * table.num_classes
        for name, value in config.thresholds:
            if not 0.0 <= value <= 1.0:
                raise FcnsegError(f"--threshold {name}={value}: a probability threshold must be in 0..1")
            values[resolve_class(name, table, "--threshold")] = float(value)
        thresholds = tuple(values)
    morphology = []
    for name, op, size in config.morphology:
        if op not in MORPHOLOGY_OPS:
            raise FcnsegError(f"--morphology {name}={op}:{size}: the operation must be one of "
                              f"{', '.join(MORPHOLOGY_OPS)}")
        if size < 1:
            raise FcnsegError(f"--morphology {name}={op}:{size}: the kernel size must be at least 1")
        morphology.append((resolve_class(name, table, "--morphology"), op, int(size)))
    mask = read_static_mask(config.static_mask) if config.static_mask else None
    label = resolve_class(config.static_class, table, "--static-mask-class")
    return PostProcess(thresholds, tuple(morphology), mask, label, claims=resolve_claims(config.claims, table))


def resolve_claims(claims: tuple[tuple[str, float], ...], table: ClassTable) -> tuple[tuple[int, float], ...]:
    """--claim pairs as (train id, probability); a probability outside 0..1 is a one-line error."""
    resolved = []
    for name, value in claims:
        if not 0.0 <= value <= 1.0:
            raise FcnsegError(f"--claim {name}={value}: a probability must be in 0..1")
        resolved.append((resolve_class(name, table, "--claim"), float(value)))
    return tuple(resolved)


def apply_claims(labels, probs, claims: tuple[tuple[int, float], ...]):
    """Each claimed class takes every pixel where its probability reaches its value, whichever
    class had more (the Lyft write-up's low car threshold); a later claim wins an overlap."""
    import tensorflow as tf

    for k, value in claims:
        labels = tf.where(probs[..., k] >= value, k, labels)
    return labels


def read_static_mask(path: str) -> np.ndarray:
    """(H, W) bool: True where any channel of the PNG is non-zero."""
    import cv2

    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED) if os.path.isfile(path) else None
    if mask is None:
        raise FcnsegError(f"--static-mask {path}: no such file or not an image")
    return mask.any(axis=-1) if mask.ndim == 3 else mask > 0


def postprocess(probs, pp: PostProcess, ignore_label: int):
    """(B, H, W, C) probabilities -> (B, H, W) int32 labels, as TensorFlow ops.

    * thresholds: a class whose probability is below its threshold cannot win;
      a pixel where every class is below its threshold becomes void.
    * claims (:func:`apply_claims`): a claimed class takes every pixel where its
      probability reaches the claim's value, even where another class has more.
    * morphology on class k: the binary mask of k is eroded/dilated/opened/closed
      with a square kernel. Pixels it gains become k; pixels it loses fall back to
      the best other class that passes its threshold (void if none).
    * static mask: its pixels become ``pp.static_label`` (a class or void).
    """
    import tensorflow as tf

    probs = tf.convert_to_tensor(probs, tf.float32)
    # -1 marks "cannot win"; probabilities are >= 0, so argmax never picks it while another class qualifies.
    scores = probs if pp.thresholds is None else tf.where(probs >= tf.constant(pp.thresholds, tf.float32), probs, -1.0)
    labels = apply_claims(_argmax_or_void(scores, ignore_label), probs, pp.claims)
    num_classes = probs.shape[-1]
    for k, op, size in pp.morphology:
        old = labels == k
        new = _morphology(old, op, size)
        without_k = scores * (1.0 - tf.one_hot(k, num_classes)) - tf.one_hot(k, num_classes)
        fallback = _argmax_or_void(without_k, ignore_label)
        labels = tf.where(new, k, tf.where(old, fallback, labels))
    if pp.static_mask is not None:
        mask = tf.constant(pp.static_mask, tf.bool)[None]
        labels = tf.where(mask, pp.static_label, labels)
    return labels


def _argmax_or_void(scores, ignore_label: int):
    import tensorflow as tf

    best = tf.argmax(scores, axis=-1, output_type=tf.int32)
    return tf.where(tf.reduce_max(scores, axis=-1) < 0.0, ignore_label, best)


def _morphology(mask, op: str, size: int):
    """Binary erosion/dilation with a size x size square as max-pooling.

    Pooling with SAME padding ignores outside pixels, so the image border never
    erodes a class (it is not a boundary between classes).
    """
    import tensorflow as tf

    def dilate(m):
        return tf.nn.max_pool2d(m, size, 1, "SAME")

    def erode(m):
        return 1.0 - tf.nn.max_pool2d(1.0 - m, size, 1, "SAME")

    m = tf.cast(mask, tf.float32)[..., None]
    steps = {"erode": (erode,), "dilate": (dilate,), "open": (erode, dilate), "close": (dilate, erode)}[op]
    for step in steps:
        m = step(m)
    return m[..., 0] > 0.5


def expand_inputs(inputs: tuple[str, ...] | list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(files, [(input, error)]): folders give their non-hidden files (sorted, not recursed), globs their matches."""
    files, errors = [], []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if not f.startswith(".") and os.path.isfile(os.path.join(item, f)))
        elif os.path.isfile(item):
            files.append(item)
        elif glob.has_magic(item) and glob.glob(item):
            files += sorted(f for f in glob.glob(item) if os.path.isfile(f))
        else:
            why = "is a symlink loop" if is_symlink_loop(item) else "no such file, folder or glob match"
            errors.append((item, f"{item}: {why}"))
    return files, errors


def _describe_empty(item: str) -> str:
    if os.path.isdir(item):
        return f"folder {item} holds no files"
    if is_symlink_loop(item):
        return f"{item}: is a symlink loop"
    return f"{item} matches nothing" if glob.has_magic(item) else f"{item}: no such file or folder"


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTS


def count_frames(files: list[str]) -> int:
    """Frames the inputs will give (for the progress bar); videos by their header's frame count."""
    import cv2

    total = 0
    for path in files:
        if is_video(path):
            cap = cv2.VideoCapture(path)
            total += max(1, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))) if cap.isOpened() else 1
            cap.release()
        else:
            total += 1
    return total


def iter_frames(files: list[str]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """Yield (name, RGB uint8 frame, None) or (path, None, error message), one frame at a time.

    Images are read by ``fcnseg.imageio``'s policy, as training reads them.
    """
    import cv2

    used: set[str] = set()
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        # Two inputs with the same stem (a/x.png, b/x.png) must not overwrite each other's outputs.
        n, base = 1, stem
        while stem in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem)
        if is_video(path):
            cap = cv2.VideoCapture(path)
            ok, frame = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                cap.release()
                yield path, None, f"{path}: not a video OpenCV can read"
                continue
            index = 0
            while ok:
                yield f"{stem}_{index:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), None
                ok, frame = cap.read()
                index += 1
            cap.release()
            continue
        try:  # the decode policy of every command: truncated => error, EXIF ignored, pixel limit
            image = imageio.read_rgb(path)
        except imageio.ImageError as e:
            yield path, None, str(e)
        else:
            yield stem, image, None


def check_output_dir(path: str) -> list[str]:
    """Create the folder and prove it is writable before any work is done; returns the folders made."""
    return ensure_writable_dir(path, "--output-dir")


def write_outputs(output_dir: str, name: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                  alpha: float, num_classes: int) -> None:
    """Write NAME_label.png, NAME_color.png and NAME_overlay.png, each atomically.

    Each PNG goes to a temporary file in ``output_dir`` renamed onto its name, so a
    crash leaves no half PNG, and a symlink named like an output is replaced rather
    than followed: nothing outside ``output_dir`` is ever written.
    """
    import cv2

    labels = np.clip(labels, 0, 255).astype(np.uint8)
    color = overlay_lib.colorize(labels, palette)
    overlay = overlay_lib.blend(image, labels, palette, alpha, num_classes=num_classes)
    for suffix, array in (("label", labels), ("color", color[..., ::-1]), ("overlay", overlay[..., ::-1])):
        path = os.path.join(output_dir, f"{name}_{suffix}.png")
        ok, png = cv2.imencode(".png", np.ascontiguousarray(array))
        if not ok:
            raise FcnsegError(f"--output-dir: could not encode {path}")
        with atomic_write(path, "wb", "--output-dir") as f:
            f.write(png.tobytes())


def check_static_mask(mask: np.ndarray | None, path: str | None, name: str, image: np.ndarray) -> None:
    """Refuse a --static-mask whose size is not ``image``'s, naming both."""
    h, w = image.shape[:2]
    if mask is not None and mask.shape != (h, w):
        mh, mw = mask.shape
        raise FcnsegError(f"--static-mask {path} is {mw}x{mh} but {name} is {w}x{h}")


def predict(config: PredictConfig, log: Callable[[str], None] = print,
            progress: Callable[[int], ContextManager] | None = None) -> PredictResult:
    """Run the checkpoint on every input and write its PNGs; bad inputs are logged and listed, not fatal.

    ``progress(total_frames)`` returns a context manager whose value has ``update(n)``,
    e.g. ``lambda n: click.progressbar(length=n)``; it starts once the model is loaded.

    Example:
        >>> result = predict(PredictConfig("runs/r/best.keras", ("photos/",), "out"))
        >>> result.failed
        []
    """
    from fcnseg import checkpoint

    if not 0.0 <= config.alpha <= 1.0:
        raise FcnsegError(f"--alpha {config.alpha}: must be in 0..1")
    if not 0.0 <= config.overlap < 1.0:
        raise FcnsegError(f"--overlap {config.overlap}: must be in 0..1 (1 excluded)")
    files, errors = expand_inputs(config.inputs)
    if not files:  # nothing to do is a mistake (an empty folder, a glob typo), not a success
        raise FcnsegError(f"no input files: {'; '.join(_describe_empty(item) for item in config.inputs)}")
    # A missing or foreign checkpoint, or a bad --size/--scale: refused before any folder is made.
    res = resolution(checkpoint.read_meta(config.checkpoint), config.size, config.scale, config.window,
                     config.scales)
    created = check_output_dir(config.output_dir)  # before the slow model load
    try:
        model, _, table = checkpoint.load(config.checkpoint)
    except BaseException:
        remove_empty_folders(created)  # a failed start leaves no empty --output-dir behind
        raise
    pp = build_postprocess(config, table)
    import tensorflow as tf

    infer = make_infer(model, config.flip)
    post = tf.function(lambda p: postprocess(p, pp, table.ignore_label),
                       input_signature=[tf.TensorSpec([None, None, None, table.num_classes], tf.float32)])
    palette = table.palette()
    result = PredictResult()
    start = time.perf_counter()

    def tiled(shape: tuple[int, ...]) -> bool:
        return bool(config.window) and (shape[1] > config.window[0] or shape[0] > config.window[1])

    def run(batch: list[tuple[str, np.ndarray]]) -> None:
        check_static_mask(pp.static_mask, config.static_mask, *batch[0])
        t = time.perf_counter()
        if tiled(batch[0][1].shape[:2]):
            probs = np.stack([sliding_window_probabilities(infer, img, config.window, config.overlap,
                                                           config.batch_size) for _, img in batch])
        else:
            probs = run_at_resolution(infer, np.stack([img for _, img in batch]), res)
        labels = post(probs).numpy()
        result.model_seconds += time.perf_counter() - t
        for (name, image), lab in zip(batch, labels):
            write_outputs(config.output_dir, name, image, lab, palette, config.alpha, table.num_classes)
            result.written += 1
        bar.update(len(batch))

    for item, message in errors:
        log(f"warning: {message}")
        result.failed.append(item)
    batch: list[tuple[str, np.ndarray]] = []
    with open_bar(progress, count_frames(files)) as bar:
        for name, frame, error in iter_frames(files):
            if error:
                log(f"warning: {error}")
                result.failed.append(name)
                bar.update(1)
                continue
            # Only same-size frames share a batch; tiled images go one at a time (their tiles are the batch).
            if batch and (frame.shape != batch[0][1].shape or len(batch) >= config.batch_size
                          or tiled(frame.shape)):
                run(batch)
                batch = []
            batch.append((name, frame))
        if batch:
            run(batch)
    result.total_seconds = time.perf_counter() - start
    return result
