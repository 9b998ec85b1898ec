"""Streaming evaluation: one confusion matrix over a whole split."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fcnseg.metrics import batch_confusion


def confusion_matrix(model, dataset: tf.data.Dataset, num_classes: int, loss_fn=None) -> tuple[np.ndarray, float | None]:
    """(summed confusion matrix over ``dataset`` with void ignored, mean loss).

    The loss is averaged over batches weighted by their non-void pixels, so it
    is the split's per-pixel mean for cross-entropy.
    """

    @tf.function
    def step(images, labels):
        logits = model(images, training=False)
        valid = tf.reduce_sum(tf.cast((labels >= 0) & (labels < num_classes), tf.float32))
        loss = loss_fn(labels, logits) if loss_fn is not None else tf.constant(0.0)
        return batch_confusion(labels, logits, num_classes), loss * valid, valid

    cm = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = pixels = 0.0
    for images, labels in dataset:
        batch_cm, weighted, valid = step(images, labels)
        cm += batch_cm.numpy()
        loss_sum += float(weighted)
        pixels += float(valid)
    return cm, (loss_sum / pixels if loss_fn is not None and pixels else None)
