"""Losses over logits (B, H, W, C) and integer labels (B, H, W), void ignored.

Keras has Dice, Tversky and focal losses, but none of them can leave void
pixels out (``ignore_class`` exists only for the cross-entropies, and it
averages over all pixels, void included): every loss here drops labels outside
0..C-1 before reducing. The region losses (Dice, F-beta, Tversky) are computed
over the whole batch per class, then averaged over classes present in the
batch's labels or predictions.

A loss spec is a weighted sum such as ``"ce"``, ``"ce+dice"`` or
``"ce+0.5*fbeta"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import tensorflow as tf

from fcnseg.errors import FcnsegError

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
EPS = 1e-6


@dataclass(frozen=True)
class LossOptions:
    class_weights: tuple[float, ...] | None = None  # cross-entropy / focal per-class weights
    fbeta: tuple[float, ...] | float = 1.0  # F-beta loss: one beta, or one per class (F2 for cars, F0.5 for road)
    focal_gamma: float = 2.0  # focal loss focusing parameter
    tversky_alpha: float = 0.3  # Tversky weight of false positives
    tversky_beta: float = 0.7  # Tversky weight of false negatives


def _valid(labels: tf.Tensor, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    labels = tf.cast(labels, tf.int32)
    valid = (labels >= 0) & (labels < num_classes)
    return valid, tf.where(valid, labels, 0)


def masked_cross_entropy(num_classes: int, class_weights: Sequence[float] | None = None) -> LossFn:
    """Softmax cross-entropy averaged over non-void pixels.

    With class weights the loss is ``sum(w[y] * ce) / sum(w[y])`` (Caffe's and
    PyTorch's normalisation), so weights change the balance between classes,
    not the effective learning rate.
    """
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        valid, safe = _valid(labels, num_classes)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, tf.cast(logits, tf.float32))
        w = tf.cast(valid, tf.float32)
        if weights is not None:
            w = w * tf.gather(weights, safe)
        return tf.reduce_sum(ce * w) / tf.maximum(tf.reduce_sum(w), EPS)

    return loss


def focal(num_classes: int, gamma: float = 2.0, class_weights: Sequence[float] | None = None) -> LossFn:
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma."""
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def loss(labels, logits):
        valid, safe = _valid(labels, num_classes)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        logp_t = tf.gather(logp, safe, batch_dims=safe.shape.rank)
        w = tf.cast(valid, tf.float32) * (1 - tf.exp(logp_t)) ** gamma
        norm = tf.cast(valid, tf.float32)
        if weights is not None:
            w, norm = w * tf.gather(weights, safe), norm * tf.gather(weights, safe)
        return -tf.reduce_sum(w * logp_t) / tf.maximum(tf.reduce_sum(norm), EPS)

    return loss


def _soft_counts(labels, logits, num_classes):
    """Per-class soft TP, predicted mass and true mass over non-void pixels."""
    valid, safe = _valid(labels, num_classes)
    mask = tf.cast(valid, tf.float32)[..., None]
    probs = tf.nn.softmax(tf.cast(logits, tf.float32)) * mask
    onehot = tf.one_hot(safe, num_classes) * mask
    axes = tf.range(tf.rank(probs) - 1)
    tp = tf.reduce_sum(probs * onehot, axes)
    return tp, tf.reduce_sum(probs, axes), tf.reduce_sum(onehot, axes)


def _mean_over_present(score, pred_mass, true_mass):
    present = tf.cast((true_mass + pred_mass) > 0.5, tf.float32)
    return tf.reduce_sum(score * present) / tf.maximum(tf.reduce_sum(present), 1.0)


def dice(num_classes: int) -> LossFn:
    """Soft Dice loss: 1 - mean_c 2|P∩Y| / (|P| + |Y|)."""

    def loss(labels, logits):
        tp, p, y = _soft_counts(labels, logits, num_classes)
        return 1.0 - _mean_over_present((2 * tp + EPS) / (p + y + EPS), p, y)

    return loss


def fbeta(num_classes: int, beta: Sequence[float] | float = 1.0) -> LossFn:
    """Soft F-beta loss with one beta per class (beta > 1 favours recall).

    F_c = (1 + b^2) TP / (b^2 |Y| + |P|); loss = 1 - mean_c F_c.
    """
    betas = tf.broadcast_to(tf.constant(beta, tf.float32), [num_classes])
    b2 = betas * betas

    def loss(labels, logits):
        tp, p, y = _soft_counts(labels, logits, num_classes)
        return 1.0 - _mean_over_present(((1 + b2) * tp + EPS) / (b2 * y + p + EPS), p, y)

    return loss


def tversky(num_classes: int, alpha: float = 0.3, beta: float = 0.7) -> LossFn:
    """Tversky loss (Salehi et al. 2017): TP / (TP + alpha FP + beta FN)."""

    def loss(labels, logits):
        tp, p, y = _soft_counts(labels, logits, num_classes)
        fp, fn = p - tp, y - tp
        return 1.0 - _mean_over_present((tp + EPS) / (tp + alpha * fp + beta * fn + EPS), p, y)

    return loss


def _builders(num_classes: int, opts: LossOptions) -> dict[str, Callable[[], LossFn]]:
    return {
        "ce": lambda: masked_cross_entropy(num_classes, opts.class_weights),
        "dice": lambda: dice(num_classes),
        "fbeta": lambda: fbeta(num_classes, opts.fbeta),
        "focal": lambda: focal(num_classes, opts.focal_gamma, opts.class_weights),
        "tversky": lambda: tversky(num_classes, opts.tversky_alpha, opts.tversky_beta),
    }


LOSS_NAMES = ("ce", "dice", "fbeta", "focal", "tversky")


def parse_spec(spec: str) -> list[tuple[float, str]]:
    """``"ce+0.5*dice"`` -> [(1.0, "ce"), (0.5, "dice")], or a one-line error."""
    terms = []
    for term in spec.replace(" ", "").split("+"):
        weight, _, name = term.rpartition("*")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise FcnsegError(f"--loss {spec!r}: {weight!r} is not a number") from None
        if name not in LOSS_NAMES:
            raise FcnsegError(f"--loss {spec!r}: unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)} "
                              "(weighted sums like ce+0.5*dice)")
        terms.append((w, name))
    return terms


def make_loss(spec: str, num_classes: int, opts: LossOptions = LossOptions()) -> LossFn:
    """The weighted sum of losses that ``spec`` names."""
    if isinstance(opts.fbeta, tuple) and len(opts.fbeta) not in (1, num_classes):
        raise FcnsegError(f"--fbeta has {len(opts.fbeta)} values but there are {num_classes} classes")
    builders = _builders(num_classes, opts)
    parts = [(w, builders[name]()) for w, name in parse_spec(spec)]

    def loss(labels, logits):
        return tf.add_n([w * fn(labels, logits) for w, fn in parts])

    return loss
