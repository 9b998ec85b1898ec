"""Output heads: how many channels a model predicts and how its logits become probabilities.

* ``softmax`` (the default): one logit per class, probabilities by softmax.
* ``sigmoid``: for a source of exactly two classes (background + one, e.g. Carvana's
  car), one logit, that of class 1 (smp's ``classes=1``, Keras's ``Dense(1)`` with
  binary cross-entropy). P(class 1) = sigmoid(logit), P(class 0) = 1 - P(class 1);
  a pixel is class 1 where its logit is positive (P > 0.5).

Whatever the head, :func:`probabilities` returns one channel per class ([1 - p, p]
for the sigmoid head), so evaluation tables, predict's thresholds and the exported
``probabilities`` read alike for both. A model with one output channel is a sigmoid
head: that is how a checkpoint tells predict, evaluate and export which it has.
Keras is imported only when called: the options check reads :data:`HEADS` at start-up.
"""

from __future__ import annotations

from typing import Any

# head name -> output channels for a source of C classes
HEADS = {"softmax": lambda num_classes: num_classes, "sigmoid": lambda num_classes: 1}


def output_channels(head: str, num_classes: int) -> int:
    """Channels of the model's last layer for ``head`` over ``num_classes`` classes."""
    return HEADS[head](num_classes)


def head_refusal(head: str, class_names: tuple[str, ...] | list[str], source: str) -> str | None:
    """Why ``head`` cannot train on a source with these classes (one line), or None when it can."""
    if head != "sigmoid" or len(class_names) == 2:
        return None
    return (f"--head sigmoid needs a source with exactly two classes (background + one), but {source} has "
            f"{len(class_names)} ({', '.join(class_names[:4])}{', ...' if len(class_names) > 4 else ''}); "
            "use --head softmax")


def is_sigmoid(logits: Any) -> bool:
    """True for one-channel logits (a sigmoid head)."""
    return logits.shape[-1] == 1


def probabilities(logits: Any) -> Any:
    """(..., C) float32 class probabilities from (..., C) softmax or (..., 1) sigmoid logits."""
    from keras import ops

    logits = ops.cast(logits, "float32")
    if not is_sigmoid(logits):
        return ops.softmax(logits, axis=-1)
    p = ops.sigmoid(logits)
    return ops.concatenate([1.0 - p, p], axis=-1)


def hard_labels(logits: Any) -> Any:
    """(...) int32 predicted class ids: the argmax of softmax logits, or logit > 0 for a sigmoid head."""
    from keras import ops

    if is_sigmoid(logits):
        return ops.cast(logits[..., 0] > 0, "int32")
    return ops.cast(ops.argmax(logits, axis=-1), "int32")
