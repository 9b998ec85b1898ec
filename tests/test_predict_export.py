"""`fcnseg predict` and `fcnseg export`: outputs, post-processing, bad inputs, exported artefacts vs Keras."""

import json
import os
import sys
import zipfile

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def scene(width, height, seed):
    from fcnseg.sources.synthetic import render_scene

    return render_scene(width, height, seed)[0]


def write_rgb(path, rgb):
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def read_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image[..., ::-1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny LinkNet checkpoint with the metadata fcnseg train writes (training it would cost ~45 s)."""
    import keras

    from fcnseg import checkpoint
    from fcnseg.models import linknet
    from fcnseg.sources.synthetic import make_source

    keras.utils.set_random_seed(0)
    source = make_source(image_size=(48, 32))
    path = tmp_path_factory.mktemp("run") / "best.keras"
    meta = {"model": "linknet", "encoder": "resnet18", "source": source.describe(), "config": {"width": 0.125}}
    checkpoint.save(linknet(source.num_classes, width=0.125), str(path), meta)
    return path


@pytest.fixture(scope="module")
def fcn_ckpt(tmp_path_factory):
    """A tiny FCN-8s checkpoint whose zero-initialised score layers are randomised (else it predicts one class)."""
    import keras

    from fcnseg import checkpoint
    from fcnseg.models import fcn8s
    from fcnseg.sources.synthetic import make_source

    source = make_source(image_size=(48, 32))
    model = fcn8s(source.num_classes, width=1 / 16)
    rng = np.random.default_rng(0)
    model.set_weights([w if w.any() else rng.normal(0, 0.1, w.shape).astype("float32") for w in model.get_weights()])
    path = tmp_path_factory.mktemp("fcn") / "best.keras"
    checkpoint.save(model, str(path), {"model": "fcn8s", "source": source.describe(), "config": {"width": 1 / 16}})
    return path


@pytest.fixture(scope="module")
def loaded(ckpt):
    from fcnseg import checkpoint

    return checkpoint.load(str(ckpt))


# ---------------------------------------------------------------- predict


def test_predict_writes_label_color_overlay_for_images_and_video_frames(ckpt, loaded, tmp_path):
    _, _, table = loaded
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_rgb(inputs / "a.png", scene(48, 32, 1))
    write_rgb(inputs / "b.jpg", scene(56, 40, 2))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 24))
    for i in range(3):
        writer.write(np.ascontiguousarray(scene(40, 24, 10 + i)[..., ::-1]))
    writer.release()
    out = tmp_path / "out"
    result = run("predict", "--checkpoint", ckpt, inputs, video, "--output-dir", out, "--alpha", "0.6")
    assert result.exit_code == 0, result.output
    assert "ms per image" in result.output
    palette = table.palette()
    expected = {"a": (32, 48), "b": (40, 56)} | {f"clip_{i:06d}": (24, 40) for i in range(3)}
    assert sorted(os.listdir(out)) == sorted(f"{n}_{s}.png" for n in expected for s in ("label", "color", "overlay"))
    for name, shape in expected.items():
        label = cv2.imread(str(out / f"{name}_label.png"), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and label.shape == shape
        assert set(np.unique(label)) <= set(range(table.num_classes)) | {table.ignore_label}
        np.testing.assert_array_equal(read_rgb(out / f"{name}_color.png"), palette[label])
        overlay = read_rgb(out / f"{name}_overlay.png")
        assert overlay.shape == shape + (3,)
    assert np.abs(read_rgb(out / "a_overlay.png").astype(int) - read_rgb(inputs / "a.png")).mean() > 1


def test_sliding_window_matches_whole_image(loaded):
    import keras

    from fcnseg.predict import make_infer, sliding_window_probabilities, window_starts

    assert window_starts(96, 48, 0.5) == [0, 24, 48] and window_starts(100, 48, 0.5) == [0, 24, 48, 52]
    assert window_starts(30, 48, 0.5) == [0]
    image = scene(96, 64, 7)
    # A model that sees only 3x3 neighbourhoods: tiles must then reproduce the whole image except
    # at tile borders, so any stitching error (offsets, averaging, the last flush tile) shows up.
    keras.utils.set_random_seed(1)
    local = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Rescaling(1 / 64),
                              keras.layers.Conv2D(6, 3, padding="same")])
    for model, min_agreement in ((local, 0.95), (loaded[0], 0.4)):
        infer = make_infer(model, flip=False)
        whole = infer(image[None].astype(np.float32)).numpy()[0]
        tiled = sliding_window_probabilities(infer, image, (48, 32), 0.5, batch_size=4)
        assert tiled.shape == whole.shape == (64, 96, 6)
        np.testing.assert_allclose(tiled.sum(-1), 1.0, atol=1e-4)
        assert (tiled.argmax(-1) == whole.argmax(-1)).mean() >= min_agreement


def test_flip_tta_averages_with_the_mirrored_prediction(loaded):
    import tensorflow as tf

    from fcnseg.predict import make_infer

    model = loaded[0]
    images = np.stack([scene(48, 32, 8), scene(48, 32, 9)]).astype(np.float32)
    plain = tf.nn.softmax(model(images, training=False), -1).numpy()
    mirrored = tf.nn.softmax(model(images[:, :, ::-1], training=False), -1).numpy()[:, :, ::-1]
    np.testing.assert_allclose(make_infer(model, flip=True)(images).numpy(), (plain + mirrored) / 2, atol=1e-5)


def test_predict_window_flip_and_postprocessing_options(ckpt, tmp_path):
    write_rgb(tmp_path / "big.png", scene(96, 64, 3))
    hood = np.zeros((64, 96), np.uint8)
    hood[-10:] = 255
    cv2.imwrite(str(tmp_path / "hood.png"), hood)
    out = tmp_path / "out"
    result = run("predict", "--checkpoint", ckpt, tmp_path / "big.png", "-o", out, "--window", "48x32",
                 "--overlap", "0.25", "--flip", "--threshold", "road=0.2", "--morphology", "car=open:3",
                 "--morphology", "3=close:3", "--static-mask", tmp_path / "hood.png", "--static-mask-class", "void")
    assert result.exit_code == 0, result.output
    label = cv2.imread(str(out / "big_label.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (64, 96) and (label[-10:] == 255).all()

    cv2.imwrite(str(tmp_path / "small_hood.png"), hood[:32])
    result = run("predict", "--checkpoint", ckpt, tmp_path / "big.png", "-o", out,
                 "--static-mask", tmp_path / "small_hood.png")
    assert result.exit_code == 1
    assert "small_hood.png is 96x32 but big is 96x64" in result.output
    result = run("predict", "--checkpoint", ckpt, tmp_path / "big.png", "-o", out, "--threshold", "tree=0.5")
    assert result.exit_code == 1 and "--threshold 'tree': no such class" in result.output


def probs_map(h=9, w=9, c=3, base=0):
    """Class ``base`` wins everywhere at 0.6; the rest share 0.4, class 1 second best."""
    p = np.zeros((1, h, w, c), np.float32)
    p[..., base] = 0.6
    p[..., (base + 1) % c] = 0.3
    p[..., (base + 2) % c] = 0.1
    return p


def test_thresholds_remove_a_class_and_void_pixels_no_class_passes():
    from fcnseg.predict import PostProcess, postprocess

    p = probs_map()
    assert (postprocess(p, PostProcess(), 255).numpy() == 0).all()
    labels = postprocess(p, PostProcess(thresholds=(1.0, 0.0, 0.0)), 255).numpy()
    assert (labels == 1).all()  # class 0 cannot win; the next best does
    labels = postprocess(p, PostProcess(thresholds=(1.0, 0.5, 0.5)), 255).numpy()
    assert (labels == 255).all()


def test_morphology_erodes_dilates_and_opens_per_class():
    from fcnseg.predict import PostProcess, postprocess

    p = probs_map()
    p[0, 4, 4] = [0.1, 0.2, 0.7]  # a one-pixel speck of class 2
    assert postprocess(p, PostProcess(), 255).numpy()[0, 4, 4] == 2
    dilated = postprocess(p, PostProcess(morphology=((2, "dilate", 3),)), 255).numpy()[0]
    assert (dilated[3:6, 3:6] == 2).all() and (dilated == 2).sum() == 9
    for op in ("erode", "open"):
        labels = postprocess(p, PostProcess(morphology=((2, op, 3),)), 255).numpy()[0]
        assert labels[4, 4] == 1  # the speck falls back to its second-best class
        assert (labels[np.arange(9) != 4] == 0).all()
    p[0, 2:7, 2:7] = [0.1, 0.2, 0.7]  # a 5x5 square survives opening, loses its rim to erosion
    opened = postprocess(p, PostProcess(morphology=((2, "open", 3),)), 255).numpy()[0]
    assert (opened == 2).sum() == 25
    eroded = postprocess(p, PostProcess(morphology=((2, "erode", 3),)), 255).numpy()[0]
    assert (eroded == 2).sum() == 9


def test_static_mask_forces_class_or_void():
    from fcnseg.predict import PostProcess, postprocess

    mask = np.zeros((9, 9), bool)
    mask[7:] = True
    for label in (2, 255):
        out = postprocess(probs_map(), PostProcess(static_mask=mask, static_label=label), 255).numpy()[0]
        assert (out[7:] == label).all() and (out[:7] == 0).all()


def test_folder_with_a_non_image_still_writes_the_others_and_fails(ckpt, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_rgb(inputs / "good.png", scene(48, 32, 4))
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = run("predict", "--checkpoint", ckpt, inputs, tmp_path / "missing.png", "-o", out)
    assert result.exit_code == 1
    assert "notes.txt" in result.output and "missing.png" in result.output
    assert (out / "good_label.png").is_file() and (out / "good_overlay.png").is_file()


def test_unwritable_output_dir(ckpt, tmp_path):
    write_rgb(tmp_path / "a.png", scene(48, 32, 5))
    (tmp_path / "file").write_text("")
    result = run("predict", "--checkpoint", ckpt, tmp_path / "a.png", "-o", tmp_path / "file" / "out")
    assert result.exit_code == 1
    assert "--output-dir" in result.output and "file/out is not writable" in result.output


@pytest.mark.parametrize("kind", ["text", "zip", "keras"])
def test_not_an_fcnseg_checkpoint(kind, tmp_path):
    path = tmp_path / "model.keras"
    if kind == "text":
        path.write_text("hello")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", "{}")
    else:
        import keras

        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    write_rgb(tmp_path / "a.png", scene(48, 32, 6))
    for args in (["predict", tmp_path / "a.png", "-o", tmp_path / "out"],
                 ["export", "--format", "savedmodel", "--output", tmp_path / "sm"]):
        result = run(args[0], "--checkpoint", path, *args[1:])
        assert result.exit_code == 1
        assert "model.keras is not an fcnseg checkpoint" in result.output
        assert len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- export


def keras_probabilities(model, images):
    import tensorflow as tf

    return tf.nn.softmax(model(images.astype(np.float32), training=False), axis=-1).numpy()


def assert_agrees(probs, classes, reference, atol):
    assert probs.shape == reference.shape
    assert np.abs(probs - reference).max() <= atol
    assert (classes == reference.argmax(-1)).mean() >= 0.99


def test_export_savedmodel_any_size(ckpt, loaded, tmp_path):
    import tensorflow as tf

    out = tmp_path / "fcnseg" / "1"
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "assets.extra" / "fcnseg.json").read_text())["source"]["classes"]
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    for shape in ((1, 32, 48), (2, 40, 72)):
        images = np.stack([scene(shape[2], shape[1], i) for i in range(shape[0])])
        outputs = serve(images=tf.constant(images, tf.uint8))
        assert outputs["classes"].dtype == tf.int32
        assert_agrees(outputs["probabilities"].numpy(), outputs["classes"].numpy(),
                      keras_probabilities(loaded[0], images), 1e-3)
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out)
    assert result.exit_code == 1 and "already exists" in result.output


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("float16", [False, True])
def test_export_tflite(ckpt, loaded, tmp_path, float16):
    import tensorflow as tf

    out = tmp_path / "model.tflite"
    result = run("export", "--checkpoint", ckpt, "--format", "tflite", "--output", out,
                 *(["--float16"] if float16 else []))
    assert result.exit_code == 0, result.output
    interpreter = tf.lite.Interpreter(model_path=str(out))
    runner = interpreter.get_signature_runner("serving_default")
    assert tuple(interpreter.get_input_details()[0]["shape"]) == (1, 32, 48, 3)  # the training size
    images = scene(48, 32, 9)[None]
    outputs = runner(images=images)
    assert_agrees(outputs["probabilities"], outputs["classes"], keras_probabilities(loaded[0], images),
                  2e-2 if float16 else 1e-3)


@pytest.mark.parametrize("which", ["linknet", "fcn8s"])
def test_export_onnx(which, request, tmp_path):
    """LinkNet, and FCN-8s (whose fc6 is slices + one matmul), agree with Keras at sizes of any stride."""
    pytest.importorskip("tf2onnx", reason='ONNX export needs pip install "fcnseg[export]"')
    ort = pytest.importorskip("onnxruntime", reason='running ONNX needs pip install "fcnseg[export]"')
    from fcnseg import checkpoint

    ckpt = request.getfixturevalue("ckpt" if which == "linknet" else "fcn_ckpt")
    loaded = checkpoint.load(str(ckpt))
    out = tmp_path / "model.onnx"
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", out)
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    names = [o.name for o in session.get_outputs()]
    # 48 and 72 are not multiples of the model's stride 32: the case tf2onnx gets wrong without our fix.
    for shape in ((1, 32, 48), (2, 40, 72)):
        images = np.stack([scene(shape[2], shape[1], i) for i in range(shape[0])])
        outputs = dict(zip(names, session.run(None, {"images": images})))
        assert_agrees(outputs["probabilities"], outputs["classes"], keras_probabilities(loaded[0], images), 1e-3)


def test_export_bad_options(ckpt, tmp_path, monkeypatch):
    result = run("export", "--checkpoint", ckpt, "--format", "caffe", "--output", tmp_path / "m")
    assert result.exit_code == 2 and "caffe" in result.output
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--float16", "--output", tmp_path / "m")
    assert result.exit_code == 1 and "--float16 applies to --format tflite only" in result.output
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", tmp_path / "m.onnx")
    assert result.exit_code == 1 and 'pip install "fcnseg[export]"' in result.output
