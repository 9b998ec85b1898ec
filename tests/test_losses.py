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


@pytest.mark.parametrize("spec", ["ce", "dice", "fbeta", "focal", "tversky", "ce+0.5*dice"])
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


@pytest.mark.parametrize("spec", ["dice", "fbeta", "tversky"])
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
