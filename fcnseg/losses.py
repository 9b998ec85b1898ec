"""Losses over logits (B, H, W, C) and integer labels (B, H, W), void ignored.

Keras has Dice, Tversky and focal losses, but none of them can leave void
pixels out (``ignore_class`` exists only for the cross-entropies, and it
averages over all pixels, void included): every loss here drops labels outside
0..C-1 before reducing. The region losses (Dice, F-beta, Tversky) are computed
over the whole batch per class, then averaged over classes present in the
batch's labels or predictions; Lovász-softmax likewise over the batch, averaged
over the classes present in the labels (the paper's "present" setting).

Each loss is a registered ``keras.losses.Loss`` written with ``keras.ops``, so
it goes to ``model.compile`` under any Keras backend and is saved with the
model. Each returns one scalar per batch: ``sample_weight`` has no per-pixel
meaning here (give void labels, or class weights, instead).

A loss spec is a weighted sum such as ``"ce"``, ``"ce+dice"`` or
``"ce+0.5*dice"``; :func:`make_loss` turns one into a loss.

A sigmoid head (``fcnseg.heads``: one logit, that of class 1 of a two-class
source) has its own two losses, on the sigmoid probability p: binary
cross-entropy (``bce``, also spelt ``ce``) and the soft Dice of class 1 (``dice``,
smp's binary ``DiceLoss``), e.g. ``"bce+dice"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np
from keras import ops

from fcnseg.errors import FcnsegError

LossFn = Callable[[Any, Any], Any]
EPS = 1e-6


@dataclass(frozen=True)
class LossOptions:
    class_weights: tuple[float, ...] | None = None  # cross-entropy / focal per-class weights
    fbeta: tuple[float, ...] | float = 1.0  # F-beta loss: one beta, or one per class (F2 for cars, F0.5 for road)
    focal_gamma: float = 2.0  # focal loss focusing parameter
    tversky_alpha: float = 0.3  # Tversky weight of false positives
    tversky_beta: float = 0.7  # Tversky weight of false negatives


def _valid(labels, num_classes: int):
    labels = ops.cast(labels, "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    return valid, ops.where(valid, labels, 0)


def _floats(values: Sequence[float] | float | None) -> list[float] | None:
    return None if values is None else [float(v) for v in np.ravel(values)]


class _SegmentationLoss(keras.losses.Loss):
    """A loss over logits and integer labels that knows its class count."""

    def __init__(self, num_classes: int, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="fcnseg")
class MaskedCrossEntropy(_SegmentationLoss):
    """Softmax cross-entropy averaged over non-void pixels.

    With class weights the loss is ``sum(w[y] * ce) / sum(w[y])`` (Caffe's and
    PyTorch's normalisation), so weights change the balance between classes,
    not the effective learning rate.

    Example:
        >>> model.compile("adam", loss=MaskedCrossEntropy(12, class_weights=[1.0] * 12))
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | None = None,
                 name: str = "masked_cross_entropy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.class_weights = _floats(class_weights)

    def call(self, y_true, y_pred):
        valid, safe = _valid(y_true, self.num_classes)
        ce = ops.sparse_categorical_crossentropy(safe, ops.cast(y_pred, "float32"), from_logits=True)
        w = ops.cast(valid, "float32")
        if self.class_weights is not None:
            w = w * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe)
        return ops.sum(ce * w) / ops.maximum(ops.sum(w), EPS)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="fcnseg")
class OhemCrossEntropy(_SegmentationLoss):
    """Cross-entropy over the hard pixels only (online hard example mining, as mmsegmentation's
    ``OHEMPixelSampler`` with its defaults): a pixel counts when its true class's probability is
    at most ``thresh``, and at least ``min_kept`` of the batch's non-void pixels (the hardest)
    always count. Easy road and sky pixels then stop dominating the average, which leaves the
    gradient to thin and rare classes; class weights apply as in :class:`MaskedCrossEntropy`.

    Args:
        thresh: probability of the true class at or below which a pixel is hard.
        min_kept: fraction of the non-void pixels that is kept at the least.
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | None = None, thresh: float = 0.7,
                 min_kept: float = 0.1, name: str = "ohem", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.class_weights = _floats(class_weights)
        self.thresh = float(thresh)
        self.min_kept = float(min_kept)

    def call(self, y_true, y_pred):
        valid, safe = _valid(y_true, self.num_classes)
        ce = ops.reshape(ops.sparse_categorical_crossentropy(safe, ops.cast(y_pred, "float32"), from_logits=True),
                         (-1,))
        valid = ops.reshape(valid, (-1,))
        p_true = ops.where(valid, ops.exp(-ops.stop_gradient(ce)), 2.0)  # void sorts after every real pixel
        count = ops.sum(ops.cast(valid, "int32"))
        k = ops.maximum(ops.cast(ops.cast(count, "float32") * self.min_kept, "int32"), 1)
        # When fewer than k pixels are below thresh, the k-th hardest pixel's probability is the
        # threshold; only then is the (costly) sort run.
        threshold = ops.cond(
            ops.sum(ops.cast(p_true <= self.thresh, "int32")) >= k,
            lambda: ops.convert_to_tensor(self.thresh, "float32"),
            lambda: ops.maximum(ops.take(ops.sort(p_true), ops.minimum(k, ops.shape(p_true)[0]) - 1), self.thresh))
        keep = ops.cast(ops.logical_and(valid, p_true <= threshold), "float32")
        if self.class_weights is not None:
            keep = keep * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), ops.reshape(safe, (-1,)))
        return ops.sum(ce * keep) / ops.maximum(ops.sum(keep), EPS)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights, "thresh": self.thresh,
                "min_kept": self.min_kept}


@keras.saving.register_keras_serializable(package="fcnseg")
class FocalLoss(_SegmentationLoss):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, void ignored."""

    def __init__(self, num_classes: int, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 name: str = "focal", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.gamma = float(gamma)
        self.class_weights = _floats(class_weights)

    def call(self, y_true, y_pred):
        valid, safe = _valid(y_true, self.num_classes)
        # log p of the true class, from the fused cross-entropy kernel (a gather
        # from log_softmax took twice as long under TensorFlow).
        logp_t = -ops.sparse_categorical_crossentropy(safe, ops.cast(y_pred, "float32"), from_logits=True)
        norm = ops.cast(valid, "float32")
        w = norm * ops.power(1.0 - ops.exp(logp_t), self.gamma)
        if self.class_weights is not None:
            cw = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe)
            w, norm = w * cw, norm * cw
        return -ops.sum(w * logp_t) / ops.maximum(ops.sum(norm), EPS)

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "class_weights": self.class_weights}


def _soft_counts(labels, logits, num_classes: int):
    """Per-class soft TP, predicted mass and true mass over non-void pixels."""
    valid, safe = _valid(labels, num_classes)
    mask = ops.expand_dims(ops.cast(valid, "float32"), -1)
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1) * mask
    onehot = ops.one_hot(safe, num_classes, dtype="float32") * mask
    axes = tuple(range(len(probs.shape) - 1))
    return ops.sum(probs * onehot, axis=axes), ops.sum(probs, axis=axes), ops.sum(onehot, axis=axes)


def _mean_over_present(score, pred_mass, true_mass):
    present = ops.cast((true_mass + pred_mass) > 0.5, "float32")
    return ops.sum(score * present) / ops.maximum(ops.sum(present), 1.0)


@keras.saving.register_keras_serializable(package="fcnseg")
class DiceLoss(_SegmentationLoss):
    """Soft Dice loss: 1 - mean_c 2|P∩Y| / (|P| + |Y|), void ignored."""

    def __init__(self, num_classes: int, name: str = "dice", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def call(self, y_true, y_pred):
        tp, p, y = _soft_counts(y_true, y_pred, self.num_classes)
        return 1.0 - _mean_over_present((2 * tp + EPS) / (p + y + EPS), p, y)


@keras.saving.register_keras_serializable(package="fcnseg")
class LovaszSoftmaxLoss(_SegmentationLoss):
    """Lovász-softmax (Berman et al., CVPR 2018): the convex extension of each class's Jaccard
    loss over the batch's pixels, averaged over the classes present in the labels, void ignored.

    It optimises IoU directly, so a thin class counts as much as road; it sorts every pixel's
    error once per class, which costs more than a region loss (``tools/benchmark.py`` or a
    training log shows how much on your machine).
    """

    def __init__(self, num_classes: int, name: str = "lovasz", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def call(self, y_true, y_pred):
        valid, safe = _valid(y_true, self.num_classes)
        mask = ops.reshape(ops.cast(valid, "float32"), (-1, 1))
        probs = ops.reshape(ops.softmax(ops.cast(y_pred, "float32"), axis=-1), (-1, self.num_classes))
        fg = ops.reshape(ops.one_hot(safe, self.num_classes, dtype="float32"), (-1, self.num_classes)) * mask
        # A void pixel gets error 0 and no foreground: it sorts last and adds nothing.
        errors = ops.transpose(ops.abs(fg - probs) * mask)  # (C, N)
        fg = ops.transpose(fg)
        order = ops.argsort(-errors, axis=-1)
        errors = ops.take_along_axis(errors, order, axis=-1)
        fg = ops.take_along_axis(fg, order, axis=-1)
        total = ops.sum(fg, axis=-1, keepdims=True)
        jaccard = 1.0 - (total - ops.cumsum(fg, axis=-1)) / ops.maximum(total + ops.cumsum(1.0 - fg, axis=-1), EPS)
        grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
        per_class = ops.sum(errors * ops.stop_gradient(grad), axis=-1)
        present = ops.cast(total[:, 0] > 0, "float32")
        return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


@keras.saving.register_keras_serializable(package="fcnseg")
class FBetaLoss(_SegmentationLoss):
    """Soft F-beta loss with one beta per class (beta > 1 favours recall), void ignored.

    F_c = (1 + b^2) TP / (b^2 |Y| + |P|); loss = 1 - mean_c F_c.
    """

    def __init__(self, num_classes: int, beta: Sequence[float] | float = 1.0, name: str = "fbeta", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.beta = [float(b) for b in np.broadcast_to(np.asarray(beta, np.float32), (self.num_classes,))]

    def call(self, y_true, y_pred):
        b2 = ops.square(ops.convert_to_tensor(self.beta, "float32"))
        tp, p, y = _soft_counts(y_true, y_pred, self.num_classes)
        return 1.0 - _mean_over_present(((1 + b2) * tp + EPS) / (b2 * y + p + EPS), p, y)

    def get_config(self) -> dict:
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="fcnseg")
class TverskyLoss(_SegmentationLoss):
    """Tversky loss (Salehi et al. 2017): 1 - TP / (TP + alpha FP + beta FN), void ignored."""

    def __init__(self, num_classes: int, alpha: float = 0.3, beta: float = 0.7, name: str = "tversky", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.alpha, self.beta = float(alpha), float(beta)

    def call(self, y_true, y_pred):
        tp, p, y = _soft_counts(y_true, y_pred, self.num_classes)
        fp, fn = p - tp, y - tp
        return 1.0 - _mean_over_present((tp + EPS) / (tp + self.alpha * fp + self.beta * fn + EPS), p, y)

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


def _binary_counts(labels, logits):
    """Float (is class 1, non-void) masks and the sigmoid probability of a one-logit head."""
    valid, safe = _valid(labels, 2)
    p = ops.sigmoid(ops.cast(logits, "float32")[..., 0])
    return ops.cast(safe, "float32"), ops.cast(valid, "float32"), p


@keras.saving.register_keras_serializable(package="fcnseg")
class BinaryCrossEntropy(_SegmentationLoss):
    """Binary cross-entropy of a sigmoid head's logit x of class 1, averaged over non-void pixels.

    Per pixel ``softplus(x) - y x`` (= -y log p - (1 - y) log(1 - p), p = sigmoid(x), stable
    for any x); class weights (one per class, background first) normalise as in
    :class:`MaskedCrossEntropy`.
    """

    def __init__(self, num_classes: int = 2, class_weights: Sequence[float] | None = None,
                 name: str = "binary_cross_entropy", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.class_weights = _floats(class_weights)

    def call(self, y_true, y_pred):
        y, w, _ = _binary_counts(y_true, y_pred)
        x = ops.cast(y_pred, "float32")[..., 0]
        if self.class_weights is not None:
            w = w * ops.where(y > 0.5, self.class_weights[1], self.class_weights[0])
        return ops.sum((ops.softplus(x) - y * x) * w) / ops.maximum(ops.sum(w), EPS)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="fcnseg")
class BinaryDiceLoss(_SegmentationLoss):
    """Soft Dice loss of class 1 for a sigmoid head: 1 - (2 sum p y + e) / (sum p + sum y + e) over
    the batch's non-void pixels (Carvana's metric, smp's binary DiceLoss)."""

    def __init__(self, num_classes: int = 2, name: str = "binary_dice", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def call(self, y_true, y_pred):
        y, w, p = _binary_counts(y_true, y_pred)
        p, y = p * w, y * w
        return 1.0 - (2 * ops.sum(p * y) + EPS) / (ops.sum(p) + ops.sum(y) + EPS)


@keras.saving.register_keras_serializable(package="fcnseg")
class WeightedSum(keras.losses.Loss):
    """``sum_i weights[i] * losses[i](y_true, y_pred)``; saved with its parts.

    Example:
        >>> loss = WeightedSum([MaskedCrossEntropy(12), DiceLoss(12)], [1.0, 0.5])
    """

    def __init__(self, losses: Sequence[keras.losses.Loss | dict], weights: Sequence[float] | None = None,
                 name: str = "weighted_sum", **kwargs):
        super().__init__(name=name, **kwargs)
        self.losses = [keras.saving.deserialize_keras_object(p) if isinstance(p, dict) else p for p in losses]
        self.weights = [1.0] * len(self.losses) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.losses):
            raise ValueError(f"{len(self.losses)} losses but {len(self.weights)} weights")

    def call(self, y_true, y_pred):
        total = 0.0
        for w, part in zip(self.weights, self.losses):
            total = total + w * part(y_true, y_pred)
        return total

    def get_config(self) -> dict:
        return {**super().get_config(), "weights": self.weights,
                "losses": [keras.saving.serialize_keras_object(p) for p in self.losses]}


def masked_cross_entropy(num_classes: int, class_weights: Sequence[float] | None = None) -> MaskedCrossEntropy:
    """:class:`MaskedCrossEntropy`, called as ``loss(labels, logits)``."""
    return MaskedCrossEntropy(num_classes, class_weights)


def focal(num_classes: int, gamma: float = 2.0, class_weights: Sequence[float] | None = None) -> FocalLoss:
    """:class:`FocalLoss`, called as ``loss(labels, logits)``."""
    return FocalLoss(num_classes, gamma, class_weights)


def dice(num_classes: int) -> DiceLoss:
    """:class:`DiceLoss`, called as ``loss(labels, logits)``."""
    return DiceLoss(num_classes)


def fbeta(num_classes: int, beta: Sequence[float] | float = 1.0) -> FBetaLoss:
    """:class:`FBetaLoss`, called as ``loss(labels, logits)``."""
    return FBetaLoss(num_classes, beta)


def tversky(num_classes: int, alpha: float = 0.3, beta: float = 0.7) -> TverskyLoss:
    """:class:`TverskyLoss`, called as ``loss(labels, logits)``."""
    return TverskyLoss(num_classes, alpha, beta)


def _builders(num_classes: int, opts: LossOptions) -> dict[str, Callable[[], keras.losses.Loss]]:
    return {
        "ce": lambda: masked_cross_entropy(num_classes, opts.class_weights),
        "dice": lambda: dice(num_classes),
        "fbeta": lambda: fbeta(num_classes, opts.fbeta),
        "focal": lambda: focal(num_classes, opts.focal_gamma, opts.class_weights),
        "lovasz": lambda: LovaszSoftmaxLoss(num_classes),
        "ohem": lambda: OhemCrossEntropy(num_classes, opts.class_weights),
        "tversky": lambda: tversky(num_classes, opts.tversky_alpha, opts.tversky_beta),
    }


def _sigmoid_builders(opts: LossOptions) -> dict[str, Callable[[], keras.losses.Loss]]:
    def bce() -> BinaryCrossEntropy:
        return BinaryCrossEntropy(2, opts.class_weights)

    return {"bce": bce, "ce": bce, "dice": lambda: BinaryDiceLoss(2)}


LOSS_NAMES = ("ce", "dice", "fbeta", "focal", "lovasz", "ohem", "tversky")
# The losses of each head (fcnseg.heads); "ce" of a sigmoid head is its binary cross-entropy.
HEAD_LOSS_NAMES = {"softmax": LOSS_NAMES, "sigmoid": ("bce", "ce", "dice")}


def parse_spec(spec: str, head: str = "softmax") -> list[tuple[float, str]]:
    """``"ce+0.5*dice"`` -> [(1.0, "ce"), (0.5, "dice")], or a one-line error."""
    names = HEAD_LOSS_NAMES[head]
    terms = []
    for term in spec.replace(" ", "").split("+"):
        weight, _, name = term.rpartition("*")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise FcnsegError(f"--loss {spec!r}: {weight!r} is not a number") from None
        if name not in names:
            raise FcnsegError(_unknown_loss(spec, name, head))
        terms.append((w, name))
    return terms


def _unknown_loss(spec: str, name: str, head: str) -> str:
    if head == "sigmoid" and name in LOSS_NAMES:
        return (f"--loss {spec!r}: {name} is not a loss of --head sigmoid; choose from bce (also spelt ce), dice "
                "(weighted sums like bce+dice)")
    if head == "softmax" and name in HEAD_LOSS_NAMES["sigmoid"]:
        return f"--loss {spec!r}: {name} is the loss of --head sigmoid; with --head softmax use ce"
    return (f"--loss {spec!r}: unknown loss {name!r}; choose from {', '.join(HEAD_LOSS_NAMES[head])} "
            "(weighted sums like ce+0.5*dice)")


def make_loss(spec: str, num_classes: int, opts: LossOptions = LossOptions(), head: str = "softmax") -> WeightedSum:
    """The weighted sum of losses that ``spec`` names, as one :class:`WeightedSum`.

    ``head`` is the model's (``fcnseg.heads``): a sigmoid head takes bce and dice over its one logit.

    Example:
        >>> model.compile("adam", loss=make_loss("ce+0.5*dice", 12))
    """
    if head == "sigmoid":
        terms = parse_spec(spec, head)
        builders = _sigmoid_builders(opts)
        return WeightedSum([builders[name]() for _, name in terms], [w for w, _ in terms], name="loss")
    if isinstance(opts.fbeta, tuple) and len(opts.fbeta) not in (1, num_classes):
        raise FcnsegError(f"--fbeta has {len(opts.fbeta)} values but there are {num_classes} classes")
    builders = _builders(num_classes, opts)
    terms = parse_spec(spec)
    return WeightedSum([builders[name]() for _, name in terms], [w for w, _ in terms], name="loss")
