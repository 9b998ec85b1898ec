"""Single-class sigmoid training (``--head sigmoid``): losses and metrics against numpy, and the
whole CLI path (train, evaluate, predict, export, --resume) on a Carvana-layout fixture."""

import json
import zipfile

import cv2
import keras
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fcnseg.errors import FcnsegError
from test_task_sources import write_carvana


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def between(values, q):
    """A cut halfway between two neighbouring distinct values near the q-quantile (no rounding ties)."""
    distinct = np.unique(values.astype(np.float64))
    i = min(int(q * len(distinct)), len(distinct) - 2)
    return float((distinct[i] + distinct[i + 1]) / 2)


@pytest.fixture
def batch():
    """(B, H, W) labels with void and (B, H, W, 1) logits."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (2, 5, 7)).astype(np.int32)
    labels[0, 0, :4] = 255  # void
    labels[1, 2, 3] = -1  # out of range counts as void too
    logits = rng.normal(0, 2, (2, 5, 7, 1)).astype(np.float32)
    return labels, logits


def test_binary_losses_match_numpy_and_ignore_void(batch):
    from fcnseg.losses import LossOptions, make_loss

    labels, logits = batch
    valid = (labels == 0) | (labels == 1)
    y, p = (labels[valid] == 1).astype(np.float64), sigmoid(logits[..., 0][valid].astype(np.float64))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    dice = 1 - 2 * (p * y).sum() / (p.sum() + y.sum())
    assert float(make_loss("bce", 2, head="sigmoid")(labels, logits)) == pytest.approx(bce.mean(), rel=1e-5)
    assert float(make_loss("ce", 2, head="sigmoid")(labels, logits)) == pytest.approx(bce.mean(), rel=1e-5)
    assert float(make_loss("dice", 2, head="sigmoid")(labels, logits)) == pytest.approx(dice, rel=1e-4)
    assert float(make_loss("bce+0.5*dice", 2, head="sigmoid")(labels, logits)) == pytest.approx(
        bce.mean() + 0.5 * dice, rel=1e-4)
    import keras

    saved = keras.saving.serialize_keras_object(make_loss("bce+0.5*dice", 2, head="sigmoid"))
    restored = keras.saving.deserialize_keras_object(saved)  # a checkpoint compiled with it reloads
    assert float(restored(labels, logits)) == pytest.approx(bce.mean() + 0.5 * dice, rel=1e-4)
    w = np.where(y > 0, 3.0, 0.5)
    weighted = make_loss("bce", 2, LossOptions(class_weights=(0.5, 3.0)), head="sigmoid")(labels, logits)
    assert float(weighted) == pytest.approx((w * bce).sum() / w.sum(), rel=1e-5)
    # a void pixel's logit changes nothing
    moved = logits.copy()
    moved[0, 0, :4] = 50.0
    moved[1, 2, 3] = -50.0
    for spec in ("bce", "dice"):
        loss = make_loss(spec, 2, head="sigmoid")
        assert float(loss(labels, moved)) == pytest.approx(float(loss(labels, logits)), rel=1e-6)


def test_loss_spec_names_the_head():
    from fcnseg.losses import make_loss

    with pytest.raises(FcnsegError, match="focal is not a loss of --head sigmoid; choose from bce"):
        make_loss("bce+focal", 2, head="sigmoid")
    with pytest.raises(FcnsegError, match="bce is the loss of --head sigmoid; with --head softmax use ce"):
        make_loss("bce", 2)


def test_sigmoid_confusion_matrix_thresholds_at_one_half(batch):
    from fcnseg.heads import hard_labels, probabilities
    from fcnseg.metrics import StreamingIoU, batch_confusion, scores

    labels, logits = batch
    valid = (labels == 0) | (labels == 1)
    pred = (sigmoid(logits[..., 0]) > 0.5).astype(np.int64)
    expected = np.zeros((2, 2), np.int64)
    np.add.at(expected, (labels[valid], pred[valid]), 1)
    np.testing.assert_array_equal(np.asarray(batch_confusion(labels, logits, 2)), expected)
    metric = StreamingIoU(2)
    metric.update_state(labels, logits)
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)
    s = scores(expected, ("background", "car"))
    tp = expected[1, 1]
    assert s["per_class"]["car"]["dice"] == pytest.approx(2 * tp / (expected[1].sum() + expected[:, 1].sum()))
    assert s["per_class"]["car"]["iou"] == pytest.approx(tp / (expected.sum() - expected[0, 0]))
    # the probabilities every consumer reads: [1 - p, p], their argmax the same labels
    probs = np.asarray(probabilities(logits))
    np.testing.assert_allclose(probs[..., 1], sigmoid(logits[..., 0]), rtol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(hard_labels(logits)), pred)
    np.testing.assert_array_equal(probs.argmax(-1), pred)


def test_sigmoid_export_serves_the_foreground_probability():
    from fcnseg.export import serving_function
    from fcnseg.models import linknet

    keras.utils.set_random_seed(0)
    model = linknet(1, width=0.125)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3)).astype(np.uint8)
    out = serving_function(model)(images)
    logits = np.asarray(model(images.astype(np.float32)))[..., 0]
    assert out["probabilities"].shape == (2, 32, 48, 2)
    np.testing.assert_allclose(out["probabilities"].numpy()[..., 1], sigmoid(logits), rtol=1e-4, atol=1e-6)
    classes = out["classes"].numpy()
    # classes is "probability above 0.5": an untrained model's logits sit near 0, where sigmoid
    # rounds to exactly 0.5 in float32 and a re-run's last bits differ, so only the clear pixels
    # are compared with the logits' sign.
    np.testing.assert_array_equal(classes, (out["probabilities"].numpy()[..., 1] > 0.5).astype(np.int32))
    clear = np.abs(logits) > 1e-5
    assert clear.sum() > 100 and (classes[clear] == 1).any() and (classes[clear] == 0).any()
    np.testing.assert_array_equal(classes[clear], (logits[clear] > 0).astype(np.int32))


def test_sigmoid_head_needs_a_two_class_source(tmp_path):
    result = run("train", "--head", "sigmoid", "--width", "0.125", "--image-size", "32x32", "--epochs", "1",
                 "--steps-per-epoch", "1", "--run-dir", tmp_path / "run")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--head sigmoid needs a source with exactly two classes" in errors[0], result.output
    assert not (tmp_path / "run").exists()
    result = run("train", "--head", "sigmoid", "--loss", "focal", "--run-dir", tmp_path / "run")
    assert result.exit_code == 1 and "focal is not a loss of --head sigmoid" in result.output
    assert run("train", "--head", "tanh").exit_code == 2


@pytest.mark.slow
def test_carvana_sigmoid_trains_evaluates_predicts_and_resumes(tmp_path):
    from fcnseg import checkpoint, sources

    data, run_dir = tmp_path / "carvana", tmp_path / "run"
    write_carvana(data, cars=2, views=3)
    common = ("--data-source", "carvana", "--data-dir", data, "--source-option", "val_fraction=0.5")
    result = run("train", *common, "--head", "sigmoid", "--loss", "bce+dice", "--width", "0.125",
                 "--image-size", "40x24", "--batch-size", "2", "--steps-per-epoch", "1", "--epochs", "1",
                 "--monitor", "dice(car)", "--no-augment", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["head"] == "sigmoid"
    model, meta, table = checkpoint.load(str(run_dir / "best.keras"))
    assert meta["head"] == "sigmoid" and model.output_shape[-1] == 1 and table.class_names == ("background", "car")

    # evaluate: the 2-class table, from logit > 0 on the native-size images
    source = sources.load("carvana", str(data), val_fraction="0.5")
    expected = np.zeros((2, 2), np.int64)
    images = []
    for image, label in source.evaluation_elements("val").as_numpy_iterator():
        pred = (np.asarray(model(image[None].astype(np.float32)))[0, ..., 0] > 0).astype(np.int64)
        np.add.at(expected, (label.astype(np.int64), pred), 1)
        images.append(image)
    result = run("evaluate", "--checkpoint", run_dir / "best.keras", *common, "--size", "native",
                 "--output", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    assert "dice" in result.output and "car" in result.output and "background" in result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    np.testing.assert_array_equal(report["confusion_matrix"], expected)
    tp = expected[1, 1]
    assert report["per_class"]["car"]["dice"] == pytest.approx(2 * tp / (expected[1].sum() + expected[:, 1].sum()))

    # predict: car where sigmoid(logit) > 0.5, exactly as Keras computes it
    cv2.imwrite(str(tmp_path / "view.png"), images[0][..., ::-1])
    result = run("predict", "--checkpoint", run_dir / "best.keras", tmp_path / "view.png", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    label = cv2.imread(str(tmp_path / "out" / "view_label.png"), cv2.IMREAD_UNCHANGED)
    logits = np.asarray(model(images[0][None].astype(np.float32)))[0, ..., 0]
    np.testing.assert_array_equal(label, (sigmoid(logits) > 0.5).astype(np.uint8))
    assert 0 < label.mean() < 1  # both classes occur: the comparison is not of two blank maps
    # another cut: --claim car=P lowers it (car wherever p >= P), --threshold car=P raises it
    for option, cut in (("--claim", between(sigmoid(logits), 0.3)), ("--threshold", between(sigmoid(logits), 0.8))):
        result = run("predict", "--checkpoint", run_dir / "best.keras", tmp_path / "view.png", "-o", tmp_path / "cut",
                     option, f"car={cut!r}")
        assert result.exit_code == 0, result.output
        label = cv2.imread(str(tmp_path / "cut" / "view_label.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(label, (sigmoid(logits) >= cut).astype(np.uint8))

    # --resume keeps the one-logit head; naming another head is refused
    result = run("train", "--resume", "--run-dir", run_dir, "--head", "softmax")
    assert result.exit_code == 1 and "--head softmax contradicts" in result.output
    result = run("train", "--resume", "--run-dir", run_dir, "--epochs", "2")
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(run_dir / "last.keras") as zf:
        assert json.loads(zf.read("fcnseg.json"))["epoch"] == 2
    model, meta, _ = checkpoint.load(str(run_dir / "last.keras"))
    assert model.output_shape[-1] == 1 and meta["config"]["head"] == "sigmoid"


def test_carvana_recipe_names_its_head_and_a_loss_of_that_head():
    from pathlib import Path

    from fcnseg.options import TrainConfig, read_config_file, validate

    recipe = read_config_file(str(Path(__file__).resolve().parents[1] / "recipes" / "carvana.json"))
    assert recipe["head"] == "sigmoid"
    validate(TrainConfig(**recipe))  # its loss is one the sigmoid head takes
