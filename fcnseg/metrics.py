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

Void pixels (the source's ignore label, or any value outside 0..C-1) never
enter the matrix.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def batch_confusion(labels: tf.Tensor, logits_or_pred: tf.Tensor, num_classes: int) -> tf.Tensor:
    """(C, C) int64 confusion matrix of one batch, void pixels dropped."""
    if logits_or_pred.shape.rank == labels.shape.rank + 1:
        pred = tf.argmax(logits_or_pred, axis=-1, output_type=tf.int32)
    else:
        pred = tf.cast(logits_or_pred, tf.int32)
    labels = tf.cast(labels, tf.int32)
    valid = (labels >= 0) & (labels < num_classes)
    idx = tf.boolean_mask(labels, valid) * num_classes + tf.boolean_mask(pred, valid)
    counts = tf.math.bincount(idx, minlength=num_classes * num_classes, maxlength=num_classes * num_classes,
                              dtype=tf.int64)
    return tf.reshape(counts, (num_classes, num_classes))


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
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    total = cm.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class": {
            name: {"iou": _f(iou[i]), "accuracy": _f(acc[i]), "precision": _f(prec[i]), f"f{beta:g}": _f(fb[i]),
                   "pixels": int(gt[i])}
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
