"""Evaluation: one confusion matrix streamed over a whole split.

``confusion_matrix`` is what training uses each epoch (on batches at the
training size). ``evaluate`` is the published protocol behind ``fcnseg
evaluate``: every image of the split is run through the model (at the
checkpoint's training size by default, or natively, at a scale, or in sliding
windows: ``fcnseg.inference.run_at_resolution``, which predict shares), the class
probabilities are resized bilinearly back to the label's own resolution, and
each non-void label pixel is counted once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from fcnseg import checkpoint, sources
from fcnseg.data import without_autotune_model
from fcnseg.errors import FcnsegError
from fcnseg.files import write_json
from fcnseg.inference import (Resolution, make_infer, resize_probabilities, resolution, run_at_resolution,
                              sliding_window_probabilities)
from fcnseg.metrics import batch_confusion, kitti_scores, scores
from fcnseg.monitor import resolve as resolve_monitor, value as monitor_value
from fcnseg.progress import open_bar
from fcnseg.validate import pipeline_error


def confusion_step(model, num_classes: int, loss_fn=None) -> Callable:
    """The traced validation step (images, labels) -> (confusion matrix, loss x pixels, pixels).

    Built once and reused, so training validates every epoch on one trace of the model instead of
    tracing it anew (and again for the split's smaller last batch).
    """

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits = model(images, training=False)
        valid = tf.reduce_sum(tf.cast((labels >= 0) & (labels < num_classes), tf.float32))
        loss = loss_fn(labels, logits) if loss_fn is not None else tf.constant(0.0)
        return batch_confusion(labels, logits, num_classes), loss * valid, valid

    return step


def confusion_matrix(model, dataset: tf.data.Dataset, num_classes: int, loss_fn=None,
                     step: Callable | None = None) -> tuple[np.ndarray, float | None]:
    """(summed confusion matrix over ``dataset`` with void ignored, mean loss).

    The loss is averaged over batches weighted by their non-void pixels, so it
    is the split's per-pixel mean for cross-entropy. ``step``: a :func:`confusion_step` of the
    same model, number of classes and loss, to reuse its trace.
    """
    step = step or confusion_step(model, num_classes, loss_fn)
    cm = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = pixels = 0.0
    for images, labels in dataset:
        batch_cm, weighted, valid = step(images, labels)
        cm += batch_cm.numpy()
        loss_sum += float(weighted)
        pixels += float(valid)
    return cm, (loss_sum / pixels if loss_fn is not None and pixels else None)


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str  # a .keras checkpoint written by fcnseg train
    data_source: str  # source name or .py path
    data_dir: str | None = None
    source_options: dict = field(default_factory=dict)
    split: str = "val"
    size: str = "train"  # "train": the checkpoint's training size; "native": as stored; or "WxH"
    scale: float | None = None  # instead of size: run each image scaled by this factor
    window: tuple[int, int] | None = None  # sliding-window inference with (W, H) tiles (native resolution)
    overlap: float = 1 / 3  # sliding-window overlap
    flip: bool = False  # average with the horizontally flipped prediction
    scales: tuple[float, ...] | None = None  # multi-scale TTA: multiples of the resolution, averaged
    beta: float = 1.0  # beta of the per-class F-beta figure
    monitor: str | None = None  # a --monitor expression to report too (fcnseg.monitor), e.g. "lyft"
    output: str | None = None  # JSON file for the results


def evaluate(config: EvaluateConfig, log: Callable[[str], None] = print, progress=None) -> dict:
    """Run the checkpoint over a split and return (and optionally write) every figure."""
    if config.output:
        _check_writable(config.output)
    # A bad --size/--scale is refused before the slow model load.
    res = resolution(checkpoint.read_meta(config.checkpoint), config.size, config.scale, config.window,
                     config.scales)
    model, _, table = checkpoint.load(config.checkpoint)
    source = sources.load(config.data_source, config.data_dir, None, 0, **config.source_options)
    if source.num_classes != table.num_classes or tuple(source.class_names) != tuple(table.class_names):
        raise FcnsegError(f"--checkpoint {config.checkpoint} predicts {table.num_classes} classes "
                          f"({', '.join(table.class_names[:4])}...) but --data-source {config.data_source} has "
                          f"{source.num_classes} ({', '.join(source.class_names[:4])}...)")
    if config.monitor is not None:
        resolve_monitor(config.monitor, table.class_names)  # before the slow part
    num_classes = table.num_classes
    infer = make_infer(model, config.flip)
    cm = np.zeros((num_classes, num_classes), np.int64)
    binary = num_classes == 2
    pos_hist = np.zeros(256, np.int64)  # positive-class probability, quantised like the KITTI devkit's PNGs
    neg_hist = np.zeros(256, np.int64)
    count, start = 0, time.perf_counter()
    total = source.split_size(config.split)
    try:
        with open_bar(progress, total) as bar:
            pairs = without_autotune_model(getattr(source, "evaluation_elements", source.elements)(config.split))
            for image, label in pairs.as_numpy_iterator():
                probs = _probabilities(infer, image, label.shape, config, res)
                pred = probs.argmax(-1)
                valid = (label >= 0) & (label < num_classes)
                cm += np.bincount(label[valid] * num_classes + pred[valid],
                                  minlength=num_classes * num_classes).reshape(num_classes, num_classes)
                if binary:
                    q = np.round(probs[..., 1] * 255).astype(np.int64)
                    pos_hist += np.bincount(q[valid & (label == 1)], minlength=256)
                    neg_hist += np.bincount(q[valid & (label == 0)], minlength=256)
                count += 1
                bar.update(1)
    except tf.errors.InvalidArgumentError as e:
        raise FcnsegError(pipeline_error(e, source)) from None
    if count == 0:
        raise FcnsegError(f"--split {config.split}: the {source.name} source has no labelled images there")
    result = scores(cm, table.class_names, beta=config.beta)
    if binary:
        result["kitti"] = kitti_scores(pos_hist, neg_hist)
    if config.monitor is not None:
        result["monitor"] = {"expression": config.monitor, "value": monitor_value(config.monitor, result)}
    result.update({
        "checkpoint": os.path.abspath(config.checkpoint), "data_source": source.name, "split": config.split,
        "images": count, "protocol": _protocol(config, res), "confusion_matrix": cm.tolist(),
        "seconds": round(time.perf_counter() - start, 2),
    })
    if config.output:
        write_json(config.output, result, "--output")  # a failure (a full disk) keeps the previous file
    return result


def _probabilities(infer, image: np.ndarray, label_hw, config: EvaluateConfig, res: Resolution) -> np.ndarray:
    """(H, W, C) class probabilities of one image at its label's resolution."""
    if not config.window:
        return run_at_resolution(infer, image[None], res, label_hw)[0]
    probs = sliding_window_probabilities(infer, image, config.window, config.overlap, 4)
    return probs if probs.shape[:2] == tuple(label_hw) else resize_probabilities(probs[None], label_hw)[0].numpy()


def _protocol(config: EvaluateConfig, res: Resolution) -> str:
    if config.window:
        how = f"sliding {config.window[0]}x{config.window[1]} windows, overlap {config.overlap:.2f}, native size"
    else:
        how = res.describe()
    return how + (", flip TTA" if config.flip else "") + "; metrics at label resolution, void ignored"


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise FcnsegError(f"--output {path}: folder {folder} does not exist or is not writable")


def format_table(result: dict) -> str:
    """The per-class table ``fcnseg evaluate`` prints."""
    beta_key = next(k for k in next(iter(result["per_class"].values())) if k.startswith("f") and k != "pixels")
    lines = [f"{'class':<16} {'IoU':>7} {'acc':>7} {'prec':>7} {beta_key.upper():>7} {'dice':>7} {'pixels':>12}"]
    for name, row in result["per_class"].items():
        cells = [row["iou"], row["accuracy"], row["precision"], row[beta_key], row.get("dice")]
        lines.append(f"{name:<16} " + " ".join(f"{_pct(v):>7}" for v in cells) + f" {row['pixels']:>12}")
    lines.append(f"{'mean':<16} {_pct(result['mean_iou']):>7} {_pct(result['mean_accuracy']):>7} {'':>7} {'':>7} "
                 f"{_pct(result.get('mean_dice')):>7}")
    lines.append(f"pixel accuracy {_pct(result['pixel_accuracy'])}  ({result['images']} images, {result['protocol']})")
    if "monitor" in result:
        lines.append(f"monitor {result['monitor']['expression']}: {result['monitor']['value']:.4f}")
    if "kitti" in result:
        k = result["kitti"]
        lines.append(f"KITTI (perspective): MaxF {_pct(k['max_f'])}  AP {_pct(k['average_precision'])}  "
                     f"precision {_pct(k['precision'])}  recall {_pct(k['recall'])} at threshold {k['threshold']:.3f}")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"
