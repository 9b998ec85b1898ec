import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcnseg import losses
from fcnseg.errors import FcnsegError

C = 3


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, (2, 6, 5)).astype(np.int32)
    labels[0, :2] = 255  # void
    logits = rng.normal(size=(2, 6, 5, C)).astype(np.float32)
    return tf.constant(labels), tf.constant(logits)


@pytest.mark.parametrize("spec", ["ce", "dice", "fbeta", "focal", "lovasz", "ohem", "tversky", "ce+0.5*dice"])
def test_void_pixels_do_not_change_any_loss(spec):
    labels, logits = _batch()
    fn = losses.make_loss(spec, C)
    changed = logits.numpy().copy()
    changed[0, :2] = 50.0  # wild logits where the label is void
    assert float(fn(labels, logits)) == pytest.approx(float(fn(labels, tf.constant(changed))), rel=1e-6)


def test_cross_entropy_matches_numpy_with_weights():
    labels, logits = _batch(1)
    w = np.array([0.5, 2.0, 1.0], np.float32)
    got = float(losses.masked_cross_entropy(C, w)(labels, logits))
    y, z = labels.numpy().ravel(), logits.numpy().reshape(-1, C)
    keep = y < C
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y))[keep], y[keep]]
    assert got == pytest.approx((w[y[keep]] * ce).sum() / w[y[keep]].sum(), rel=1e-5)


@pytest.mark.parametrize("spec", ["dice", "fbeta", "lovasz", "tversky"])
def test_region_losses_are_zero_for_a_perfect_prediction(spec):
    labels, _ = _batch(2)
    perfect = tf.one_hot(tf.where(labels < C, labels, 0), C) * 40.0
    assert float(losses.make_loss(spec, C)(labels, perfect)) < 1e-3
    assert float(losses.make_loss(spec, C)(labels, -perfect)) > 0.5


def test_fbeta_per_class_beta_weights_recall():
    # class 1 is under-predicted (low recall); a large beta for it must cost more
    labels = tf.constant([[1, 1, 1, 0]])
    logits = tf.constant([[[0.0, 3.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0]]])
    recall_heavy = float(losses.fbeta(2, (1.0, 4.0))(labels, logits))
    precision_heavy = float(losses.fbeta(2, (1.0, 0.25))(labels, logits))
    assert recall_heavy > precision_heavy


def test_focal_with_gamma_zero_is_cross_entropy():
    labels, logits = _batch(3)
    assert float(losses.focal(C, 0.0)(labels, logits)) == pytest.approx(
        float(losses.masked_cross_entropy(C)(labels, logits)), rel=1e-5)


def test_weighted_sum_spec():
    labels, logits = _batch(4)
    total = float(losses.make_loss("2*ce+0.5*dice", C)(labels, logits))
    parts = 2 * float(losses.masked_cross_entropy(C)(labels, logits)) + 0.5 * float(losses.dice(C)(labels, logits))
    assert total == pytest.approx(parts, rel=1e-5)


@pytest.mark.parametrize("spec", ["cee", "ce+x*dice", "ce++dice"])
def test_bad_spec_is_one_line_error(spec):
    with pytest.raises(FcnsegError, match="--loss"):
        losses.make_loss(spec, C)


def test_all_void_batch_gives_zero_not_nan():
    labels = tf.fill((1, 4, 4), 255)
    logits = tf.zeros((1, 4, 4, C))
    for spec in losses.LOSS_NAMES:
        assert np.isfinite(float(losses.make_loss(spec, C)(labels, logits)))


# --- keras.losses.Loss classes ---------------------------------------------------


def _np_reference(spec, labels, logits, opts):
    """The losses' formulas in numpy, void dropped: the numbers every backend must give."""
    y, z = labels.numpy().ravel(), logits.numpy().reshape(-1, C).astype(np.float64)
    keep = (y >= 0) & (y < C)
    y, z = y[keep], z[keep]
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    logp_t = logp[np.arange(len(y)), y]
    w = np.ones(C) if opts.class_weights is None else np.asarray(opts.class_weights)
    if spec == "ce":
        return (w[y] * -logp_t).sum() / w[y].sum()
    if spec == "focal":
        return (w[y] * (1 - np.exp(logp_t)) ** opts.focal_gamma * -logp_t).sum() / w[y].sum()
    if spec == "ohem":
        return _np_ohem(logp_t, w[y])
    p, onehot = np.exp(logp), np.eye(C)[y]
    if spec == "lovasz":
        return _np_lovasz(p, onehot)
    tp, pm, ym = (p * onehot).sum(0), p.sum(0), onehot.sum(0)
    eps = losses.EPS
    if spec == "dice":
        score = (2 * tp + eps) / (pm + ym + eps)
    elif spec == "fbeta":
        b2 = np.broadcast_to(np.asarray(opts.fbeta, np.float64), (C,)) ** 2
        score = ((1 + b2) * tp + eps) / (b2 * ym + pm + eps)
    else:
        score = (tp + eps) / (tp + opts.tversky_alpha * (pm - tp) + opts.tversky_beta * (ym - tp) + eps)
    present = (ym + pm) > 0.5
    return 1 - score[present].mean()


def _np_ohem(logp_t, w, thresh=0.7, min_kept=0.1):
    """mmsegmentation's OHEM pixel sampler: the pixels whose true-class probability is at most
    thresh, or the min_kept hardest when fewer are, then weighted cross-entropy over them."""
    p_t = np.exp(logp_t)
    k = max(int(len(p_t) * min_kept), 1)
    hard = p_t <= max(np.sort(p_t)[k - 1], thresh)
    return (w * -logp_t)[hard].sum() / w[hard].sum()


def test_ohem_keeps_the_hardest_pixels_when_few_are_below_the_threshold():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, C, (2, 10, 10)).astype(np.int32)
    labels[1, :5] = 255  # 150 non-void pixels: at least 15 are kept
    logits = np.eye(C, dtype=np.float32)[labels % 255] * 6.0  # confident and right: p_true ~0.995
    hard = [(0, 0, 0), (0, 3, 4), (1, 9, 9)]
    for b, i, j in hard:  # three wrong pixels
        logits[b, i, j] = np.roll(logits[b, i, j], 1)
    logits[0, 5:, :] += rng.normal(0, 0.5, (5, 10, C)).astype(np.float32)  # 50 pixels a bit less sure
    loss = losses.make_loss("ohem", C)
    got = float(loss(tf.constant(labels), tf.constant(logits)))
    y, z = labels.ravel(), logits.reshape(-1, C).astype(np.float64)
    keep = y < C
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    logp_t = logp[np.arange(len(y)), np.where(keep, y, 0)][keep]
    assert got == pytest.approx(_np_ohem(logp_t, np.ones(keep.sum())), rel=1e-5)
    # exactly the 15 hardest count: the mean of their cross-entropies, far above the plain mean
    hardest = np.sort(-logp_t)[::-1][:15]
    assert got == pytest.approx(hardest.mean(), rel=1e-5)
    assert got > 5 * float(losses.make_loss("ce", C)(tf.constant(labels), tf.constant(logits)))
    # with every pixel hard it is plain cross-entropy
    flat = tf.zeros_like(tf.constant(logits))
    assert float(loss(tf.constant(labels), flat)) == pytest.approx(np.log(C), rel=1e-6)


def _np_lovasz(p, onehot):
    """Berman et al.'s Lovász-softmax as their reference code writes it, one class at a time,
    over the non-void pixels, averaged over the classes present in the labels."""
    per_class = []
    for c in range(C):
        fg = onehot[:, c]
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        fg_sorted = fg[order]
        gts = fg_sorted.sum()
        jaccard = 1.0 - (gts - np.cumsum(fg_sorted)) / (gts + np.cumsum(1 - fg_sorted))
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        per_class.append(errors[order] @ jaccard)
    return np.mean(per_class)


def test_lovasz_prefers_the_better_iou_and_its_gradient_reaches_every_class():
    labels = tf.constant([[0, 0, 0, 0, 0, 0, 1, 2]])  # class 1 and 2: one pixel each
    base = np.zeros((1, 8, C), np.float32)
    base[0, np.arange(8), labels.numpy()[0]] = 4.0
    thin_missed = base.copy()
    thin_missed[0, 6] = [4.0, 0.0, 0.0]  # the thin class's pixel called background
    loss = losses.make_loss("lovasz", C)
    assert float(loss(labels, base)) < float(loss(labels, thin_missed))
    logits = tf.Variable(thin_missed)
    with tf.GradientTape() as tape:
        value = loss(labels, logits)
    grad = tape.gradient(value, logits).numpy()
    assert grad[0, 6, 1] < 0 and grad[0, 6, 0] > 0  # push the missed pixel towards its class


OPTS = losses.LossOptions(class_weights=(0.5, 2.0, 1.0), fbeta=(1.0, 2.0, 0.5), focal_gamma=1.5,
                          tversky_alpha=0.4, tversky_beta=0.6)


@pytest.mark.parametrize("spec", losses.LOSS_NAMES)
def test_each_loss_matches_its_numpy_formula(spec):
    labels, logits = _batch(5)
    got = float(losses.make_loss(spec, C, OPTS)(labels, logits))
    assert got == pytest.approx(_np_reference(spec, labels, logits, OPTS), rel=1e-5)


def test_losses_are_serialisable_keras_losses():
    """make_loss gives a keras Loss whose config rebuilds the same loss, parts and options included."""
    labels, logits = _batch(6)
    loss = losses.make_loss("ce+0.5*dice+2*fbeta+focal+tversky", C, OPTS)
    assert isinstance(loss, keras.losses.Loss)
    assert [type(p).__name__ for p in loss.losses] == [
        "MaskedCrossEntropy", "DiceLoss", "FBetaLoss", "FocalLoss", "TverskyLoss"]
    rebuilt = keras.losses.deserialize(json.loads(json.dumps(keras.losses.serialize(loss))))
    assert type(rebuilt) is losses.WeightedSum and rebuilt.weights == [1.0, 0.5, 2.0, 1.0, 1.0]
    assert rebuilt.losses[0].class_weights == [0.5, 2.0, 1.0] and rebuilt.losses[2].beta == [1.0, 2.0, 0.5]
    assert float(rebuilt(labels, logits)) == pytest.approx(float(loss(labels, logits)), rel=1e-6)
    expected = sum(w * _np_reference(s, labels, logits, OPTS)
                   for w, s in ((1, "ce"), (0.5, "dice"), (2, "fbeta"), (1, "focal"), (1, "tversky")))
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_compile_fit_and_reload_with_loss_and_metric(tmp_path):
    """Plain model.compile / model.fit with fcnseg's loss and IoU metric; the compiled model reloads
    with both, registered under the fcnseg package."""
    from fcnseg.metrics import StreamingIoU

    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    y = rng.integers(0, C, (4, 8, 8)).astype("int32")
    y[:, 0] = 255
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(C, 3, padding="same")(inputs))
    model.compile(keras.optimizers.SGD(0.1), loss=losses.make_loss("ce+dice", C), metrics=[StreamingIoU(C)])
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and 0 < history["mean_iou"][-1] <= 1
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(reloaded.loss) is losses.WeightedSum
    evaluated = reloaded.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    logits = model.predict(x, verbose=0)
    assert evaluated["loss"] == pytest.approx(float(losses.make_loss("ce+dice", C)(y, logits)), rel=1e-4)


def test_train_help_names_every_loss():
    from click.testing import CliRunner

    from fcnseg.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    loss_help = text[text.index("Loss: "):text.index("Loss: ") + 200]
    assert all(name in loss_help for name in losses.LOSS_NAMES), loss_help
