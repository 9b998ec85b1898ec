"""Inference at the scale the model learned: predict, evaluate and export share
fcnseg.inference.run_at_resolution, by default at the checkpoint's training size."""

import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fs_faults import temp_leftovers

TRAIN_W, TRAIN_H = 32, 24  # the checkpoint's training size
IMG_W, IMG_H = 48, 36  # the images': 1.5x larger, as CamVid's 480x360 against a 320x240 model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result):
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """Three val frames in CamVid's layout, larger than the training size, with block labels."""
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        os.makedirs(root / split)
        os.makedirs(root / f"{split}annot")
        for i in range(3):
            stem = f"0016E5_{i:05d}"
            # smooth images, so that the model's output varies at the scale of the resize
            small = rng.integers(0, 255, (6, 8, 3), np.uint8)
            image = cv2.resize(small, (IMG_W, IMG_H), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(root / split / f"{stem}.png"), image)
            label = np.full((IMG_H, IMG_W), 3, np.uint8)
            label[10:30, 5 + i:25 + i], label[:3] = 8, 11
            cv2.imwrite(str(root / f"{split}annot" / f"{stem}.png"), label)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import keras

    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.camvid import CLASSES

    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("run") / "last.keras"
    checkpoint.save(linknet(CLASSES.num_classes, width=0.125), str(path),
                    {"model": "linknet", "source": {"name": "camvid", "image_size": [TRAIN_W, TRAIN_H],
                                                    "classes": CLASSES.to_json()}})
    return path


def confusion_of_predictions(out_dir, camvid):
    """The confusion matrix of predict's label PNGs against the val labels, as evaluate counts it."""
    cm = np.zeros((11, 11), np.int64)
    for name in sorted(os.listdir(camvid / "valannot")):
        gt = cv2.imread(str(camvid / "valannot" / name), cv2.IMREAD_UNCHANGED).astype(np.int64)
        pred = cv2.imread(str(out_dir / name.replace(".png", "_label.png")), cv2.IMREAD_UNCHANGED).astype(np.int64)
        assert pred.shape == gt.shape == (IMG_H, IMG_W)
        v = gt < 11
        cm += np.bincount(gt[v] * 11 + pred[v], minlength=121).reshape(11, 11)
    return cm


def labels_of(out_dir):
    return {f: cv2.imread(str(out_dir / f), cv2.IMREAD_UNCHANGED) for f in sorted(os.listdir(out_dir))
            if f.endswith("_label.png")}


def test_predict_and_evaluate_give_identical_labels_by_default(ckpt, camvid, tmp_path):
    out = tmp_path / "eval.json"
    result = run("evaluate", "--checkpoint", ckpt, "--data-source", "camvid", "--data-dir", camvid,
                 "--split", "val", "--output", out)
    assert result.exit_code == 0, result.output
    evaluated = json.loads(out.read_text())
    assert evaluated["protocol"].startswith(f"whole image resized to {TRAIN_W}x{TRAIN_H}")

    result = run("predict", "--checkpoint", ckpt, camvid / "val", "-o", tmp_path / "default")
    assert result.exit_code == 0, result.output
    assert confusion_of_predictions(tmp_path / "default", camvid).tolist() == evaluated["confusion_matrix"]

    # One image at a time in predict (batching may change float round-off, not the labels here).
    result = run("predict", "--checkpoint", ckpt, camvid / "val", "-o", tmp_path / "one", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    default, one = labels_of(tmp_path / "default"), labels_of(tmp_path / "one")
    assert all(np.array_equal(default[k], one[k]) for k in default)

    # native size is another prediction (so the check above could fail), and evaluate agrees on it too
    result = run("predict", "--checkpoint", ckpt, camvid / "val", "-o", tmp_path / "native", "--size", "native")
    assert result.exit_code == 0, result.output
    native = labels_of(tmp_path / "native")
    assert any(not np.array_equal(default[k], native[k]) for k in default)
    result = run("evaluate", "--checkpoint", ckpt, "--data-source", "camvid", "--data-dir", camvid,
                 "--split", "val", "--size", "native", "--output", out)
    assert result.exit_code == 0, result.output
    assert confusion_of_predictions(tmp_path / "native", camvid).tolist() == json.loads(out.read_text())[
        "confusion_matrix"]


def independent_labels(model, image, model_hw):
    """Resize in (antialiased bilinear), softmax, bilinear back to the image, argmax: written out plainly."""
    import tensorflow as tf

    small = tf.image.resize(image[None].astype(np.float32), model_hw, antialias=True)
    probs = tf.nn.softmax(model(small, training=False), axis=-1)
    return tf.image.resize(probs, image.shape[:2], method="bilinear")[0].numpy().argmax(-1)


@pytest.mark.parametrize("option", [("--scale", "0.5"), ("--size", "40x20")])
def test_predict_scale_and_size_options(ckpt, camvid, tmp_path, option):
    from fcnseg import checkpoint

    model = checkpoint.load(str(ckpt))[0]
    result = run("predict", "--checkpoint", ckpt, camvid / "val" / "0016E5_00001.png", "-o", tmp_path, *option)
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(camvid / "val" / "0016E5_00001.png"))[..., ::-1]
    model_hw = (18, 24) if option[0] == "--scale" else (20, 40)
    got = cv2.imread(str(tmp_path / "0016E5_00001_label.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == (IMG_H, IMG_W)
    np.testing.assert_array_equal(got, independent_labels(model, image, model_hw))


@pytest.mark.parametrize("args, message", [
    (["--size", "huge"], "--size huge: expected train, native or WIDTHxHEIGHT"),
    (["--size", "native", "--scale", "0.5"], "--scale 0.5 and --size native both set"),
    (["--window", "16x16", "--scale", "0.5"], "--window tiles the image at its native size"),
])
def test_bad_size_options_are_one_line_errors_before_any_output(ckpt, camvid, tmp_path, args, message):
    out = tmp_path / "out"
    result = run("predict", "--checkpoint", ckpt, camvid / "val", "-o", out, *args)
    assert message in error_line(result) and not out.exists()
    result = run("evaluate", "--checkpoint", ckpt, "--data-source", "camvid", "--data-dir", camvid, *args)
    assert message in error_line(result)
    if args[0] != "--window":  # export has no --window
        result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out, *args)
        assert message in error_line(result) and not out.exists()


@pytest.mark.parametrize("in_hw, out_hw", [((36, 48), (24, 32)), ((24, 32), (36, 48)), ((37, 50), (13, 41))])
def test_portable_resize_is_tensorflows_antialiased_bilinear(in_hw, out_hw):
    """ONNX and TFLite get the resize as two matrix products: the same filter as tf.image.resize's."""
    import tensorflow as tf

    from fcnseg.inference import resize_images

    images = np.random.default_rng(0).uniform(0, 255, (2, *in_hw, 3)).astype(np.float32)
    reference = tf.image.resize(images, out_hw, antialias=True).numpy()
    portable = resize_images(images, out_hw, portable=True).numpy()
    assert portable.shape == reference.shape
    np.testing.assert_allclose(portable, reference, atol=2e-3)


def predict_labels(ckpt, images, tmp_path, *options):
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), image[..., ::-1])
    out = tmp_path / "predicted"
    result = run("predict", "--checkpoint", ckpt, folder, "-o", out, *options)
    assert result.exit_code == 0, result.output
    return np.stack([cv2.imread(str(out / f"{i}_label.png"), cv2.IMREAD_UNCHANGED) for i in range(len(images))])


def frames(camvid):
    return np.stack([cv2.imread(str(camvid / "val" / f"0016E5_{i:05d}.png"))[..., ::-1] for i in range(2)])


@pytest.mark.slow
def test_exported_savedmodel_runs_at_the_training_size_like_predict(ckpt, camvid, tmp_path):
    import tensorflow as tf

    from fcnseg import checkpoint

    images = frames(camvid)
    expected = predict_labels(ckpt, images, tmp_path)
    out = tmp_path / "sm"
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "assets.extra" / "fcnseg.json").read_text())
    assert meta["export"]["inside_the_graph"].startswith(f"whole image resized to {TRAIN_W}x{TRAIN_H}")
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    outputs = serve(images=tf.constant(images, tf.uint8))
    assert outputs["probabilities"].shape == (2, IMG_H, IMG_W, 11)
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected)

    # --size native: the raw model, as before
    native = tmp_path / "native"
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", native, "--size", "native")
    assert result.exit_code == 0, result.output
    raw = tf.nn.softmax(checkpoint.load(str(ckpt))[0](images.astype(np.float32), training=False), -1).numpy()
    outputs = tf.saved_model.load(str(native)).signatures["serving_default"](images=tf.constant(images, tf.uint8))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), raw, atol=1e-4)
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("option", [(), ("--scale", "0.75")])
def test_exported_onnx_runs_at_the_training_scale_like_predict(ckpt, camvid, tmp_path, option):
    pytest.importorskip("tf2onnx", reason='ONNX export needs pip install "fcnseg[export]"')
    ort = pytest.importorskip("onnxruntime", reason='running ONNX needs pip install "fcnseg[export]"')
    images = frames(camvid)
    expected = predict_labels(ckpt, images, tmp_path, *option)
    out = tmp_path / "model.onnx"
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", out, *option)
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"images": images})))
    assert outputs["probabilities"].shape == (2, IMG_H, IMG_W, 11)
    # the matrix-product resize differs from TensorFlow's by float round-off only
    assert (outputs["classes"] == expected).mean() >= 0.99


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_exported_tflite_at_another_input_size_resizes_inside_like_predict(ckpt, camvid, tmp_path):
    import tensorflow as tf

    images = frames(camvid)[:1]
    expected = predict_labels(ckpt, images, tmp_path)
    out = tmp_path / "model.tflite"
    result = run("export", "--checkpoint", ckpt, "--format", "tflite", "--output", out,
                 "--image-size", f"{IMG_W}x{IMG_H}")
    assert result.exit_code == 0, result.output
    interpreter = tf.lite.Interpreter(model_path=str(out))
    outputs = interpreter.get_signature_runner("serving_default")(images=images)
    assert outputs["probabilities"].shape == (1, IMG_H, IMG_W, 11)
    assert (outputs["classes"] == expected).mean() >= 0.99


def test_multi_scale_averages_the_probabilities_at_each_scale(ckpt, camvid, tmp_path):
    """--scales 0.5,1: the mean of the probabilities at 0.5x and 1x the training size, each resized
    back; predict and evaluate agree on it, and it differs from either scale alone."""
    import tensorflow as tf

    from fcnseg import checkpoint

    model = checkpoint.load(str(ckpt))[0]
    name = "0016E5_00001.png"
    result = run("predict", "--checkpoint", ckpt, camvid / "val" / name, "-o", tmp_path / "ms", "--scales", "0.5,1")
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(camvid / "val" / name))[..., ::-1]

    def probs(model_hw):
        small = tf.image.resize(image[None].astype(np.float32), model_hw, antialias=True)
        p = tf.nn.softmax(model(small, training=False), axis=-1)
        return tf.image.resize(p, image.shape[:2], method="bilinear")[0].numpy()

    half, whole = probs((TRAIN_H // 2, TRAIN_W // 2)), probs((TRAIN_H, TRAIN_W))
    want = ((half + whole) / 2).argmax(-1)
    got = cv2.imread(str(tmp_path / "ms" / name.replace(".png", "_label.png")), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want, half.argmax(-1)) or not np.array_equal(want, whole.argmax(-1))

    result = run("predict", "--checkpoint", ckpt, camvid / "val", "-o", tmp_path / "all", "--scales", "0.5,1")
    assert result.exit_code == 0, result.output
    out = tmp_path / "eval.json"
    result = run("evaluate", "--checkpoint", ckpt, "--data-source", "camvid", "--data-dir", camvid,
                 "--scales", "0.5,1", "--output", out)
    assert result.exit_code == 0, result.output
    evaluated = json.loads(out.read_text())
    assert "averaged over scales 0.5/1 of that" in evaluated["protocol"]
    assert confusion_of_predictions(tmp_path / "all", camvid).tolist() == evaluated["confusion_matrix"]


@pytest.mark.parametrize("args, message", [
    (["--scales", "0.5,9"], "--scales 0.5,9: each must be above 0 and at most 4"),
    (["--scales", "0.5,x"], "'0.5,x' is not a list of numbers"),
    (["--scales", "1,1.5", "--window", "16x16"], "--scales and --window both choose"),
])
def test_bad_scales_are_one_line_errors_before_any_output(ckpt, camvid, tmp_path, args, message):
    out = tmp_path / "out"
    result = run("predict", "--checkpoint", ckpt, camvid / "val", "-o", out, *args)
    assert message in error_line(result) and "--scales" in error_line(result) and not out.exists()
    result = run("evaluate", "--checkpoint", ckpt, "--data-source", "camvid", "--data-dir", camvid, *args)
    assert message in error_line(result)
