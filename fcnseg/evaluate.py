"""Streaming evaluation: one confusion matrix over a whole split."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fcnseg.metrics import batch_confusion


def confusion_matrix(model, dataset: tf.data.Dataset, num_classes: int) -> np.ndarray:
    """Sum of per-batch confusion matrices over ``dataset`` (void ignored)."""

    @tf.function
    def step(images, labels):
        return batch_confusion(labels, model(images, training=False), num_classes)

    cm = np.zeros((num_classes, num_classes), np.int64)
    for images, labels in dataset:
        cm += step(images, labels).numpy()
    return cm
