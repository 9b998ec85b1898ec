"""`fcnseg predict` and `fcnseg export`: outputs, post-processing, bad inputs, exported artefacts vs Keras."""

import json
import os
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fs_faults import remount_read_only, temp_leftovers, tmpfs, without_dac_override

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result):
    """The CLI's one error line (a progress bar may precede it on stderr)."""
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


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

    from fcnseg.inference import make_infer, sliding_window_probabilities, window_starts

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

    from fcnseg.inference import make_infer

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


def test_predict_replaces_symlinked_outputs_and_never_writes_outside(ckpt, tmp_path):
    write_rgb(tmp_path / "x.png", scene(48, 32, 5))
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"someone else's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_label.png").symlink_to(victim)
    (out / "x_color.png").symlink_to(tmp_path / "nowhere.png")  # dangling: must not create the target either
    result = run("predict", "--checkpoint", ckpt, tmp_path / "x.png", "-o", out)
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == b"someone else's file" and not (tmp_path / "nowhere.png").exists()
    for suffix in ("label", "color", "overlay"):
        path = out / f"x_{suffix}.png"
        assert not path.is_symlink() and cv2.imread(str(path)) is not None
    assert sorted(os.listdir(out)) == ["x_color.png", "x_label.png", "x_overlay.png"]


@pytest.mark.parametrize("what", ["empty folder", "glob", "folder of folders"])
def test_predict_with_no_input_files_fails_with_one_line(ckpt, tmp_path, what):
    inputs = tmp_path / "in"
    inputs.mkdir()
    if what == "folder of folders":
        (inputs / "sub").mkdir()
        write_rgb(inputs / "sub" / "a.png", scene(48, 32, 1))  # folders are not recursed
    arg = inputs / "*.png" if what == "glob" else inputs
    result = run("predict", "--checkpoint", ckpt, arg, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: no input files: {arg} matches nothing" if what == "glob"
        else f"Error: no input files: folder {inputs} holds no files"]


def test_predict_on_a_full_output_dir_is_one_line_and_leaves_no_temp_files(ckpt, tmp_path):
    for i in range(3):
        write_rgb(tmp_path / f"img{i}.png", scene(160, 128, i))
    with tmpfs(tmp_path / "disk", "64k") as disk:
        result = run("predict", "--checkpoint", ckpt, *(tmp_path / f"img{i}.png" for i in range(3)), "-o", disk)
        assert result.exit_code == 1
        assert "could not write: No space left on device" in error_line(result)
        assert f"--output-dir {disk}/img" in error_line(result)
        assert temp_leftovers(disk) == []
        for name in os.listdir(disk):  # whatever was written before the disk filled up is whole
            assert cv2.imread(str(disk / name), cv2.IMREAD_UNCHANGED) is not None, name


def test_predict_on_a_read_only_output_dir(ckpt, tmp_path):
    write_rgb(tmp_path / "a.png", scene(48, 32, 5))
    with tmpfs(tmp_path / "disk") as disk:
        remount_read_only(disk)
        result = run("predict", "--checkpoint", ckpt, tmp_path / "a.png", "-o", disk)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"Error: --output-dir {disk} is not writable: Read-only file system"]


def test_predict_into_a_folder_without_write_permission(ckpt, tmp_path):
    """Root ignores file modes, so the command runs without CAP_DAC_OVERRIDE."""
    write_rgb(tmp_path / "a.png", scene(48, 32, 5))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    command = [sys.executable, "-m", "fcnseg.cli", "predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png"),
               "-o", str(out)]
    done = subprocess.run(without_dac_override(command), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"Error: --output-dir {out} is not writable: Permission denied"
    assert "Traceback" not in done.stderr and os.listdir(out) == []


def test_predict_interrupted_mid_write_leaves_whole_files_and_no_temp_files(ckpt, tmp_path, monkeypatch):
    from fcnseg import files

    write_rgb(tmp_path / "a.png", scene(48, 32, 5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.png").write_bytes(b"old overlay")
    real_fsync = os.fsync

    def fsync(fd):  # Ctrl-C once the overlay's bytes are in its temporary file
        if ".a_overlay.png." in os.readlink(f"/proc/self/fd/{fd}"):
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    result = run("predict", "--checkpoint", ckpt, tmp_path / "a.png", "-o", out)
    assert result.exit_code == 130 and "interrupted" in result.output
    assert sorted(os.listdir(out)) == ["a_color.png", "a_label.png", "a_overlay.png"]
    assert (out / "a_overlay.png").read_bytes() == b"old overlay"


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


def probabilities_at_training_size(model, images):
    """What predict computes by default: the images at the checkpoint's 48x32, probabilities resized back."""
    from fcnseg.inference import Resolution, make_infer, run_at_resolution

    return run_at_resolution(make_infer(model, flip=False), images, Resolution(size=(48, 32)))


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
                      probabilities_at_training_size(loaded[0], images), 1e-3)
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out)
    assert result.exit_code == 1 and "already exists" in result.output
    (out / "variables" / "stale").write_text("from the old model")
    graph = (out / "saved_model.pb").read_bytes()
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out, "--image-size", "48x32",
                 "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "variables" / "stale").exists() and temp_leftovers(tmp_path) == []
    assert (out / "saved_model.pb").read_bytes() != graph and (out / "assets.extra" / "fcnseg.json").is_file()


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("float16", [False, True])
def test_export_tflite(ckpt, loaded, tmp_path, float16):
    import tensorflow as tf

    out = tmp_path / "model.tflite"
    extra = []
    if float16:  # --overwrite onto a link: the link is replaced, the file it points to is not touched
        (tmp_path / "elsewhere.tflite").write_bytes(b"old model")
        out.symlink_to(tmp_path / "elsewhere.tflite")
        extra = ["--float16", "--overwrite"]
    result = run("export", "--checkpoint", ckpt, "--format", "tflite", "--output", out, *extra)
    assert result.exit_code == 0, result.output
    assert not out.is_symlink() and temp_leftovers(tmp_path) == []
    if float16:
        assert (tmp_path / "elsewhere.tflite").read_bytes() == b"old model"
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
    if which == "fcn8s":
        out.write_bytes(b"old model")
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", out,
                 *(["--overwrite"] if which == "fcn8s" else []))
    assert result.exit_code == 0, result.output
    assert temp_leftovers(tmp_path) == []
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    names = [o.name for o in session.get_outputs()]
    # 48 and 72 are not multiples of the model's stride 32: the case tf2onnx gets wrong without our fix.
    for shape in ((1, 32, 48), (2, 40, 72)):
        images = np.stack([scene(shape[2], shape[1], i) for i in range(shape[0])])
        outputs = dict(zip(names, session.run(None, {"images": images})))
        assert_agrees(outputs["probabilities"], outputs["classes"], probabilities_at_training_size(loaded[0], images),
                      1e-3)


def test_export_bad_options(ckpt, tmp_path, monkeypatch):
    result = run("export", "--checkpoint", ckpt, "--format", "caffe", "--output", tmp_path / "m")
    assert result.exit_code == 2 and "caffe" in result.output
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--float16", "--output", tmp_path / "m")
    assert result.exit_code == 1 and "--float16 applies to --format tflite only" in result.output
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", tmp_path / "m.onnx")
    assert result.exit_code == 1 and 'pip install "fcnseg[export]"' in result.output


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_export_on_a_full_disk_keeps_the_old_model(ckpt, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason='ONNX export needs pip install "fcnseg[export]"')
    with tmpfs(tmp_path / "disk", "128k") as disk:  # the new model (~0.7 MB) cannot fit
        if fmt == "savedmodel":
            out = disk / "sm"
            out.mkdir()
            (out / "saved_model.pb").write_bytes(b"old model")
        else:
            out = disk / f"model.{fmt}"
            out.write_bytes(b"old model")
        old = out / "saved_model.pb" if fmt == "savedmodel" else out
        result = run("export", "--checkpoint", ckpt, "--format", fmt, "--output", out, "--overwrite")
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"Error: --output {out}: could not write: No space left on device"]
        assert old.read_bytes() == b"old model" and sorted(os.listdir(disk)) == [out.name]


def test_export_interrupted_keeps_the_old_model_and_no_temp_files(ckpt, tmp_path, monkeypatch):
    from fcnseg import files

    out = tmp_path / "sm"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"old model")
    real_fsync = os.fsync

    def fsync(fd):  # Ctrl-C once the new SavedModel is written, before it is swapped in
        if ".sm." in os.readlink(f"/proc/self/fd/{fd}"):
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", out, "--overwrite")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert os.listdir(out) == ["saved_model.pb"] and (out / "saved_model.pb").read_bytes() == b"old model"
    assert sorted(os.listdir(tmp_path)) == ["sm"]


def test_export_refuses_outputs_it_must_not_replace(ckpt, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"irreplaceable")
    (tmp_path / "m.tflite").write_bytes(b"a file")
    (tmp_path / "dangling.onnx").symlink_to(tmp_path / "nowhere")
    cases = [
        ("savedmodel", folder, f"--output {folder} is a folder that holds no SavedModel; "
                               "--overwrite only replaces a SavedModel"),
        ("tflite", folder, f"--output {folder} is a folder; --format tflite writes a file"),
        ("savedmodel", tmp_path / "m.tflite", f"--output {tmp_path / 'm.tflite'} is a file; "
                                              "--format savedmodel writes a folder"),
    ]
    for fmt, out, message in cases:
        result = run("export", "--checkpoint", ckpt, "--format", fmt, "--output", out, "--overwrite")
        assert result.exit_code == 1 and result.output.strip().splitlines() == [f"Error: {message}"]
    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", tmp_path / "dangling.onnx")
    assert result.exit_code == 1 and "already exists" in result.output
    assert (folder / "holiday.jpg").read_bytes() == b"irreplaceable"
    assert (tmp_path / "m.tflite").read_bytes() == b"a file" and (tmp_path / "dangling.onnx").is_symlink()


def test_predict_that_fails_to_start_leaves_no_output_dir(tmp_path, monkeypatch):
    """A missing checkpoint used to be rejected only after -o OUT/ (and its parents) had been made."""
    from fcnseg import checkpoint
    from fcnseg.errors import FcnsegError
    from fcnseg.predict import PredictConfig, predict

    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "new" / "out"
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "nope.keras"), "-o", str(out),
                                       str(image)])
    assert result.exit_code != 0 and "nope.keras" in result.output
    assert not (tmp_path / "new").exists()
    # A checkpoint whose metadata reads but whose model does not load: the folders made are removed again.
    monkeypatch.setattr(checkpoint, "read_meta", lambda path, what="--checkpoint": {"source": {"image_size": [8, 8]}})

    def broken(path, what="--checkpoint", compile=False):
        raise FcnsegError(f"{what} {path}: could not load the model")

    monkeypatch.setattr(checkpoint, "load", broken)
    with pytest.raises(FcnsegError, match="could not load"):
        predict(PredictConfig(str(tmp_path / "x.keras"), (str(image),), str(out)))
    assert not (tmp_path / "new").exists()
