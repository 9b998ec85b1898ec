"""Segmentation metrics from one confusion matrix accumulated over a whole split.

How each figure is computed (``cm[t, p]`` = pixels of true class t predicted
as p, summed over every non-void pixel of every image in the split, i.e. the
PASCAL VOC / Cityscapes protocol, never an average of per-image or per-batch
scores):

* IoU[c]            = cm[c,c] / (sum_p cm[c,p] + sum_t cm[t,c] - cm[c,c])
* mean IoU          = mean of IoU[c] over classes that occur in the ground
                      truth or the prediction (a class absent from both has
                      no defined IoU and is left out, as in the VOC devkit)
* accuracy[c]       = cm[c,c] / sum_p cm[c,p]          (recall of class c)
* mean accuracy     = mean of accuracy[c] over classes present in the ground truth
* pixel accuracy    = trace(cm) / sum(cm)
* F-beta[c]         = (1 + b^2) P R / (b^2 P + R), P = cm[c,c]/sum_t cm[t,c], R = accuracy[c]
* Dice[c]           = 2 cm[c,c] / (sum_p cm[c,p] + sum_t cm[t,c])   (F1; Carvana's metric)
* mean Dice         = mean of Dice[c] over classes in the ground truth or the prediction

Void pixels (the source's ignore label, or any value outside 0..C-1) never
enter the matrix.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

# The streaming matrix is kept as high * 2**30 + low in two int32 variables:
# int64 variables do not exist under JAX's default 32-bit mode, float32 counts
# stop being exact at 2**24 pixels (one CamVid split), and int32 overflows
# within a Cityscapes epoch.
_LOW_BITS = 30


def _argmax_last(logits: Any) -> Any:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # keras.ops.argmax makes two more passes over the logits (to order -0.0
        # below 0.0); evaluation's confusion matrix took 1.6x as long with it.
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    return ops.argmax(logits, axis=-1)


def batch_confusion(labels: Any, logits_or_pred: Any, num_classes: int) -> Any:
    """(C, C) int32 confusion matrix of one batch, void pixels dropped.

    ``logits_or_pred`` is either logits (one more axis than ``labels``; one
    channel is a sigmoid head's logit of class 1, counted at probability 0.5)
    or predicted class ids. Written with ``keras.ops``: runs under any backend,
    inside ``tf.function`` or ``jax.jit``.
    """
    if len(logits_or_pred.shape) == len(labels.shape) + 1:
        # One channel is a sigmoid head (fcnseg.heads): class 1 where the logit is positive.
        logits_or_pred = (ops.cast(logits_or_pred[..., 0] > 0, "int32") if logits_or_pred.shape[-1] == 1
                          else _argmax_last(logits_or_pred))
    pred = ops.reshape(ops.cast(logits_or_pred, "int32"), (-1,))
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    # Void pixels go to one extra bin, dropped at the end.
    cells = num_classes * num_classes
    idx = ops.where(valid, labels * num_classes + pred, cells)
    if keras.backend.backend() == "tensorflow":
        # TensorFlow's bincount is traceable and 2x faster than its segment sum on the CPU.
        counts = ops.bincount(idx, minlength=cells + 1)
    else:
        # JAX cannot trace a bincount (its length depends on the values); a
        # segment sum has a static length.
        counts = ops.segment_sum(ops.cast(valid, "int32"), idx, num_segments=cells + 1)
    return ops.reshape(counts[:cells], (num_classes, num_classes))


def _iou_from_counts(cm):
    tp = ops.diagonal(cm)
    union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
    return tp / ops.maximum(union, 1.0), ops.cast(union > 0, cm.dtype)


@keras.saving.register_keras_serializable(package="fcnseg")
class StreamingIoU(keras.metrics.Metric):
    """Mean IoU from one confusion matrix accumulated over every batch seen.

    ``update_state(labels, logits)`` takes integer labels (B, H, W) and logits
    (B, H, W, C), a sigmoid head's (B, H, W, 1) with C = 2, or predicted ids
    (B, H, W); labels outside 0..C-1 (void) are left out. ``result()`` is the
    mean IoU over classes present in the labels or the predictions, as
    :func:`scores` computes it; :meth:`scores` and :meth:`per_class_iou` give
    per-class results of the exact integer matrix.

    Example:
        >>> model.compile("adam", loss=MaskedCrossEntropy(12), metrics=[StreamingIoU(12)])
        >>> model.fit(...)
        >>> model.get_metrics_result()["mean_iou"]
    """

    def __init__(self, num_classes: int, name: str = "mean_iou", dtype: str | None = None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        shape = (self.num_classes, self.num_classes)
        self.counts_low = self.add_variable(shape, "zeros", dtype="int32", name="counts_low")
        self.counts_high = self.add_variable(shape, "zeros", dtype="int32", name="counts_high")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("StreamingIoU takes no sample_weight: give left-out pixels a void label")
        # A batch adds under 2**30 to a cell, so low + batch stays within int32.
        total = self.counts_low + batch_confusion(y_true, y_pred, self.num_classes)
        self.counts_high.assign(self.counts_high + ops.floor_divide(total, 2**_LOW_BITS))
        self.counts_low.assign(ops.mod(total, 2**_LOW_BITS))

    def result(self):
        cm = (ops.cast(self.counts_high, "float32") * float(2**_LOW_BITS)
              + ops.cast(self.counts_low, "float32"))
        iou, present = _iou_from_counts(cm)
        return ops.sum(iou * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        for v in (self.counts_low, self.counts_high):
            v.assign(ops.zeros(v.shape, "int32"))

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated (C, C) int64 matrix, ``cm[true, pred]``."""
        high = np.asarray(ops.convert_to_numpy(self.counts_high), np.int64)
        return (high << _LOW_BITS) + np.asarray(ops.convert_to_numpy(self.counts_low), np.int64)

    def scores(self, class_names: Sequence[str] | None = None) -> dict:
        """Every figure of :func:`scores` for the accumulated matrix (per class and averaged)."""
        return scores(self.confusion_matrix(), class_names)

    def per_class_iou(self) -> np.ndarray:
        """IoU of each class, NaN for a class absent from labels and predictions."""
        cm = self.confusion_matrix().astype(np.float64)
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


def scores(cm: np.ndarray, class_names: list[str] | tuple[str, ...] | None = None, beta: float = 1.0) -> dict:
    """Every figure above from a confusion matrix, per class and averaged."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
        prec = np.where(pred > 0, tp / pred, np.nan)
        b2 = beta * beta
        fb = np.where((gt > 0) | (pred > 0), (1 + b2) * tp / np.maximum(b2 * gt + pred, 1e-12), np.nan)
        dice = np.where((gt > 0) | (pred > 0), 2 * tp / np.maximum(gt + pred, 1e-12), np.nan)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    total = cm.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0,
        "per_class": {
            name: {"iou": _f(iou[i]), "accuracy": _f(acc[i]), "precision": _f(prec[i]), f"f{beta:g}": _f(fb[i]),
                   "dice": _f(dice[i]), "pixels": int(gt[i])}
            for i, name in enumerate(names)
        },
    }


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def kitti_scores(pos_hist: np.ndarray, neg_hist: np.ndarray) -> dict:
    """MaxF and average precision as the KITTI road devkit computes them.

    ``pos_hist[v]`` / ``neg_hist[v]`` count road / non-road pixels (void
    excluded) whose road probability, stored as a uint8 PNG value, is ``v``.
    The devkit sweeps thresholds t = 0/255 .. 255/255 and calls a pixel road
    when its probability >= t; MaxF is the best F1 over thresholds, AP the
    PASCAL VOC 11-point interpolated precision (max precision at recall >=
    0, 0.1, ..., 1), both over the accumulated counts of all images
    (perspective view).
    """
    pos_hist = np.asarray(pos_hist, np.float64)
    neg_hist = np.asarray(neg_hist, np.float64)
    positives = pos_hist.sum()
    if positives == 0:
        return {"max_f": None, "average_precision": None, "precision": None, "recall": None, "threshold": 0.0}
    fn = np.concatenate([[0.0], np.cumsum(pos_hist)[:-1]])  # road pixels below threshold v/255
    fp = np.cumsum(neg_hist[::-1])[::-1]  # non-road pixels at or above it
    tp = positives - fn
    recall = tp / positives
    precision = tp / (tp + fp + 1e-10)
    keep = ~((recall == 0) & (precision == 0))
    thresholds = np.arange(256)[keep] / 255.0
    recall, precision = recall[keep], precision[keep]
    f = 2 * precision * recall / (precision + recall + 1e-10)
    best = int(np.argmax(f))
    ap = np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0 for r in np.arange(0, 1.1, 0.1)])
    return {"max_f": float(f[best]), "average_precision": float(ap), "precision": float(precision[best]),
            "recall": float(recall[best]), "threshold": float(thresholds[best])}
