"""--input-norm per-image: each image's colour statistics are moved onto ImageNet's inside the model,
so a darker, flatter or tinted copy of an image gets the same logits; the layer travels with the
checkpoint into predict, evaluate and export."""

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fcnseg.models import MODELS
from fcnseg.models.encoders import INPUT_NORMS
from fcnseg.models.layers import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, PerImageStandardize


def images(seed=0, shape=(2, 37, 53, 3)):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def dusk(x):
    """A darker, lower-contrast, bluer copy: a different a * x + b per channel."""
    return x * np.array([0.35, 0.45, 0.5], "float32") + np.array([3.0, 8.0, 12.0], "float32")


def test_the_layer_moves_each_image_onto_imagenet_statistics():
    x = images()
    y = np.asarray(PerImageStandardize()(x))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), np.tile(255 * np.array(IMAGENET_RGB_MEAN), (2, 1)), rtol=1e-4)
    np.testing.assert_allclose(y.std(axis=(1, 2)), np.tile(255 * np.array(IMAGENET_RGB_STD), (2, 1)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(PerImageStandardize()(dusk(x))), y, atol=2e-3)
    # each image on its own: the second image's output does not depend on the first
    np.testing.assert_allclose(np.asarray(PerImageStandardize()(x[1:])), y[1:], atol=1e-4)


def test_a_flat_image_is_shifted_not_amplified():
    flat = np.full((1, 8, 8, 3), 40.0, "float32")
    flat[0, 0, 0] += 0.01  # noise far below min_std
    y = np.asarray(PerImageStandardize()(flat))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[0, 1:, 1:], np.broadcast_to(255 * np.array(IMAGENET_RGB_MEAN), (7, 7, 3)),
                               atol=0.1)


@pytest.mark.parametrize("name", ["linknet", "fcn8s", "segformer"])
def test_models_with_per_image_norm_ignore_lighting(name):
    keras.utils.set_random_seed(0)
    width = 0.25 if name == "segformer" else 1 / 16
    model = MODELS[name](3, width=width, input_norm="per-image")
    plain = MODELS[name](3, width=width)
    assert "input_norm" in [layer.name for layer in model.layers]
    assert "input_norm" not in [layer.name for layer in plain.layers]
    # same weights (the layer has none), so --init-from works between the two
    assert [w.shape for w in model.get_weights()] == [w.shape for w in plain.get_weights()]
    rng = np.random.default_rng(1)
    # non-zero weights everywhere: the zero-initialised layers would give constant logits
    model.set_weights([w if w.any() else rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    plain.set_weights(model.get_weights())
    x = images()
    reference = np.asarray(model(x))
    assert reference.std() > 1e-3
    np.testing.assert_allclose(np.asarray(model(dusk(x))), reference, atol=1e-3 * np.abs(reference).max())
    assert np.abs(np.asarray(plain(dusk(x))) - np.asarray(plain(x))).max() > 10 * 1e-3 * np.abs(reference).max()


def test_an_unknown_input_norm_is_refused_by_the_builder():
    with pytest.raises(ValueError, match="--input-norm must be one of encoder, per-image"):
        MODELS["linknet"](3, width=1 / 16, input_norm="dusk")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_predict_evaluate_export_carry_the_norm(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--source-option", "train_size=4", "--source-option", "val_size=2"]
    result = run("train", "--width", "0.125", "--image-size", "48x32", "--batch-size", "2", "--epochs", "1",
                 "--input-norm", "per-image", "--run-dir", run_dir, *common)
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["input_norm"] == "per-image"
    ckpt = run_dir / "last.keras"
    from fcnseg import load

    model = load(str(ckpt)).model
    assert isinstance(model.get_layer("input_norm"), PerImageStandardize)

    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2

    x = images(3, (1, 32, 48, 3))[0]
    cv2.imwrite(str(frames / "day.png"), x[..., ::-1].astype(np.uint8))
    cv2.imwrite(str(frames / "dusk.png"), np.clip(dusk(x), 0, 255)[..., ::-1].astype(np.uint8))
    out = tmp_path / "pred"
    result = run("predict", "--checkpoint", ckpt, "--output-dir", out, frames)
    assert result.exit_code == 0, result.output
    day = cv2.imread(str(out / "day_label.png"), cv2.IMREAD_UNCHANGED)
    night = cv2.imread(str(out / "dusk_label.png"), cv2.IMREAD_UNCHANGED)
    assert day is not None and night is not None and day.shape[:2] == (32, 48)
    assert (day == night).mean() > 0.95  # uint8 rounding of the dusk copy only
    stored = cv2.imread(str(frames / "day.png"))[..., ::-1].astype("float32")[None]
    np.testing.assert_array_equal(day, np.asarray(model(stored)).argmax(-1)[0])

    result = run("evaluate", "--checkpoint", ckpt, *common)
    assert result.exit_code == 0, result.output
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", tmp_path / "model.onnx")
    assert result.exit_code == 0, result.output
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    batch = np.stack([x, np.clip(dusk(x), 0, 255)]).astype(np.uint8)
    probabilities = session.run(["probabilities"], {"images": batch})[0]
    # the exported graph is the model with its norm: the Keras model's probabilities, dusk copy included
    expected = np.asarray(keras.ops.softmax(model(batch.astype("float32")), axis=-1))
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(probabilities[1], probabilities[0], atol=0.05)


def test_cli_refuses_an_unknown_input_norm_in_one_line(tmp_path):
    result = run("train", "--input-norm", "dusk", "--run-dir", tmp_path / "bad")
    assert result.exit_code != 0
    assert "--input-norm" in result.output and all(name in result.output for name in INPUT_NORMS)
    assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
