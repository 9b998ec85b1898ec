"""Losses over logits (B, H, W, C) and int labels (B, H, W) with void ignored."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def masked_cross_entropy(num_classes: int, class_weights: Sequence[float] | None = None):
    """Softmax cross-entropy averaged over non-void pixels.

    Any label outside 0..C-1 (the ignore label) contributes nothing. With class
    weights the loss is ``sum(w[y] * ce) / sum(w[y])`` (Caffe's and PyTorch's
    normalisation), so weights change the balance between classes, not the
    effective learning rate. Keras' SparseCategoricalCrossentropy(ignore_class)
    divides by all pixels instead, which would make the loss scale depend on how
    much of each batch is void.
    """
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        labels = tf.cast(labels, tf.int32)
        valid = (labels >= 0) & (labels < num_classes)
        safe = tf.where(valid, labels, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, tf.cast(logits, tf.float32))
        w = tf.cast(valid, tf.float32)
        if weights is not None:
            w = w * tf.gather(weights, safe)
        return tf.reduce_sum(ce * w) / tf.maximum(tf.reduce_sum(w), 1e-6)

    return loss
