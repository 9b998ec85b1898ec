"""SegFormer on MiT (fcnseg.models.segformer, fcnseg.models.mit): keras-hub's MiT layers on any input
size, the encoder table's MiT rows, parameter count and logits equal to keras-hub's own SegFormer,
keras-hub presets imported as fcnseg checkpoints, training through the CLI, save/reload, JAX."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg import checkpoint
from fcnseg.classes import table
from fcnseg.cli import main
from fcnseg.errors import FcnsegError
from fcnseg.models import MODEL_ENCODERS, MODELS, encoder_refusal, linknet
from fcnseg.models.encoders import ENCODERS, build_encoder, encoder_strides
from fcnseg.models.mit import MIT_VARIANTS, MiTFeatures, mit_config
from fcnseg.models.blocks import BilinearUpsample
from fcnseg.models.segformer import segformer
from fcnseg.presets import import_preset
from fcnseg.models.weights import WeightsError

keras_hub = pytest.importorskip("keras_hub")

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 0.25
# ImageNet mean/std as a keras-hub image converter writes it (scale and offset per channel).
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(h: int, w: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


def _hub_mit(width: float = WIDTH, size: int = 64):
    return keras_hub.models.MiTBackbone(**mit_config("mit_b0", width), image_shape=(size, size, 3))


def _hub_segmenter(num_classes: int, width: float = WIDTH, filters: int = 64, size: int = 64, seed: int = 0):
    """A keras-hub SegFormer with random weights, random batch-norm statistics (so a missed copy
    shows) and a converter that normalises with the ImageNet mean/std, as the presets' do."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=_hub_mit(width, size), projection_filters=filters)
    converter = keras_hub.layers.SegFormerImageConverter(
        image_size=(size, size), scale=[1 / (255 * s) for s in STD], offset=[-m / s for m, s in zip(MEAN, STD)])
    preprocessor = keras_hub.models.SegFormerImageSegmenterPreprocessor(image_converter=converter)
    segmenter = keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                         preprocessor=preprocessor)
    rng = np.random.default_rng(seed)
    for layer in segmenter._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.0, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    return segmenter


def _offline() -> bool:
    try:
        socket.getaddrinfo("api.kaggle.com", 443)
    except OSError:
        return True
    return False


# --- the table and the refusals ----------------------------------------------------------------------


def test_mit_rows_strides_and_refusals():
    """mit_b0..b5 are in the encoder table with no stride-2 features; segformer takes only them,
    mit_b0 first; any other encoder is one line listing them, from the builder and the CLI."""
    assert [n for n in ENCODERS if n.startswith("mit_")] == [f"mit_b{i}" for i in range(6)]
    assert ENCODERS["mit_b0"].channels == (0, 32, 64, 160, 256)
    assert ENCODERS["mit_b3"].channels == (0, 64, 128, 320, 512)
    assert encoder_strides("mit_b2") == (4, 8, 16, 32) and encoder_strides("resnet18") == (2, 4, 8, 16, 32)
    assert MODEL_ENCODERS["segformer"] == tuple(f"mit_b{i}" for i in range(6))
    assert MODELS["segformer"] is segformer
    assert encoder_refusal("segformer", "mit_b4") is None
    msg = encoder_refusal("segformer", "vgg16")
    assert "\n" not in msg and "--encoder vgg16" in msg and "mit_b0, mit_b1" in msg
    with pytest.raises(ValueError, match="mit_b0"):
        segformer(3, "resnet18")
    result = CliRunner().invoke(main, ["train", "--model", "segformer", "--encoder", "vgg16", "--run-dir", "unused"])
    assert result.exit_code != 0
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error:") and "mit_b0" in error and "vgg16" in error, result.output
    assert not os.path.exists("unused")


def test_width_scales_dims_to_multiples_of_the_heads():
    assert mit_config("mit_b0")["hidden_dims"] == [32, 64, 160, 256]
    assert mit_config("mit_b0", WIDTH)["hidden_dims"] == [8, 16, 40, 64]
    assert mit_config("mit_b5", 1 / 16)["hidden_dims"] == [4, 8, 20, 32]
    assert mit_config("mit_b3")["layerwise_depths"] == [3, 4, 18, 3]


# --- any size, keras-hub's features --------------------------------------------------------------------


def test_any_input_size_and_the_features_are_keras_hubs():
    """Logits at the input's size for odd sizes; the encoder's four maps sit at strides 4..32 and
    equal keras-hub's own MiTBackbone (same weights) on the square size keras-hub can take."""
    model = segformer(5, "mit_b0", width=WIDTH)
    assert model.name == "segformer_mit_b0"
    for h, w in ((37, 53), (64, 48)):
        y = np.asarray(model(_images(h, w)))
        assert y.shape == (1, h, w, 5) and y.dtype == np.float32 and np.isfinite(y).all()
    encoder = model.get_layer("mit_b0")
    feats = encoder(np.zeros((1, 64, 96, 3), "float32"))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 24, 8), (1, 8, 12, 16), (1, 4, 6, 40), (1, 2, 3, 64)]
    hub = _hub_mit()
    encoder.get_layer("mit").backbone.set_weights(hub.get_weights())
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
    want = keras.Model(hub.inputs, hub.pyramid_outputs)(x)
    for i, got in enumerate(encoder(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want[f"P{i + 1}"]), rtol=1e-5, atol=1e-5)


def test_bilinear_upsample_is_tf_resize_and_traces_with_unknown_size():
    """The head's upsampling equals half-pixel bilinear resizing (keras-hub's Resizing) and traces
    on maps of unknown size, where keras' UpSampling2D fails (fcnseg predict's tf.function)."""
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(3).normal(size=(2, 5, 7, 3)).astype("float32")
    for factor in (2, 4, 8):
        traced = tf.function(BilinearUpsample(factor).call, input_signature=[tf.TensorSpec((None, None, None, 3))])
        np.testing.assert_allclose(traced(x).numpy(), tf.image.resize(x, (5 * factor, 7 * factor)).numpy(),
                                   atol=1e-6)


def test_linknet_takes_mit_at_strides_4_to_32():
    """LinkNet reads strides 4..32 only, so it takes MiT (the four maps keyed by their real strides)."""
    y = np.asarray(linknet(3, "mit_b0", width=WIDTH)(_images(40, 56)))
    assert y.shape == (1, 40, 56, 3) and np.isfinite(y).all()


def test_parameter_count_equals_keras_hub_segformer_b0():
    """segformer(150, mit_b0) has exactly the parameters of keras-hub's SegFormerImageSegmenter on
    MiTBackbone B0 with projection_filters=256 (its presets' head), computed here from keras-hub."""
    hub = keras_hub.models.SegFormerImageSegmenter(
        backbone=keras_hub.models.SegFormerBackbone(
            image_encoder=keras_hub.models.MiTBackbone(**mit_config("mit_b0"), image_shape=(64, 64, 3)),
            projection_filters=256),
        num_classes=150)
    assert segformer(150, "mit_b0").count_params() == hub.count_params() == 3_753_206


# --- keras-hub presets -----------------------------------------------------------------------------------


def test_imported_preset_gives_keras_hubs_logits(tmp_path):
    """A keras-hub SegFormer saved as a local preset, imported through `fcnseg import-preset`: the
    checkpoint's logits on RGB 0..255 equal keras-hub's segmenter.predict on the same images (its
    converter normalises; fcnseg's model does the same inside), and the metadata is Cityscapes'."""
    segmenter = _hub_segmenter(19)
    preset = tmp_path / "segformer_b0_cityscapes_1024"
    segmenter.save_to_preset(str(preset))
    out = tmp_path / "city.keras"
    result = CliRunner().invoke(main, ["import-preset", str(preset), str(out)])
    assert result.exit_code == 0, result.output
    assert "segformer_mit_b0" in result.output and "cityscapes" in result.output
    loaded = checkpoint.open_checkpoint(str(out))
    x = _images(64, 64, batch=2)
    want = segmenter.predict(x, verbose=0)
    got = np.asarray(loaded.model(x))
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert loaded.meta["model"] == "segformer_mit_b0" and loaded.image_size == (64, 64)
    assert loaded.classes.num_classes == 19 and loaded.classes.class_names[:3] == ("road", "sidewalk", "building")
    again = CliRunner().invoke(main, ["import-preset", str(preset), str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output


@pytest.mark.slow  # ~35 s: a 150-class preset built, saved, imported and predicted
def test_ade20k_preset_gets_the_150_classes_and_predict_runs(tmp_path):
    """An ade20k preset gets ADE20K's class table; `fcnseg predict` takes the imported checkpoint."""
    from PIL import Image

    preset = tmp_path / "segformer_b0_ade20k_512"
    _hub_segmenter(150, filters=16).save_to_preset(str(preset))
    meta = import_preset(str(preset), str(tmp_path / "ade.keras"))
    classes = checkpoint.open_checkpoint(str(tmp_path / "ade.keras")).classes
    assert meta["source"]["name"] == "ade20k" and classes.num_classes == 150
    assert classes.class_names[0] == "wall" and classes.class_names[-1] == "flag"
    Image.fromarray(_images(40, 56)[0].astype("uint8")).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "ade.keras"),
                                       "--output-dir", str(tmp_path / "pred"), str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "pred").iterdir())
    with pytest.raises(FcnsegError, match="generic"):
        import_preset(str(preset), str(tmp_path / "x.keras"), dataset="cityscapes")


@pytest.mark.skipif(not _offline(), reason="needs a machine without internet (a preset name would download)")
def test_preset_name_offline_is_one_line_naming_the_local_directory(tmp_path):
    with pytest.raises(FcnsegError) as info:
        import_preset("segformer_b0_cityscapes_1024", str(tmp_path / "a.keras"))
    msg = str(info.value)
    assert "\n" not in msg and "save_to_preset(DIR)" in msg and "offline" in msg
    with pytest.raises(WeightsError) as info:
        build_encoder("mit_b0", weights="mit_b0_ade20k_512")
    assert "\n" not in str(info.value) and "MiTBackbone.from_preset('mit_b0_ade20k_512')" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_encoder_weights_from_a_local_mit_preset_and_imagenet_refused(tmp_path):
    """--encoder-weights DIR (a keras-hub MiT preset) gives keras-hub's features; imagenet is one
    line naming the alternatives; a preset of another size is refused in one line."""
    keras.utils.set_random_seed(5)
    hub = keras_hub.models.MiTBackbone(**mit_config("mit_b0"), image_shape=(64, 64, 3))
    hub.save_to_preset(str(tmp_path / "mit"))
    encoder = build_encoder("mit_b0", weights=str(tmp_path / "mit"))
    x = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype("float32")
    want = keras.Model(hub.inputs, hub.pyramid_outputs)(x)
    for i, got in enumerate(encoder(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want[f"P{i + 1}"]), rtol=1e-4, atol=1e-4)
    with pytest.raises(WeightsError) as info:
        build_encoder("mit_b0", weights="imagenet")
    assert "\n" not in str(info.value) and "mit_b0_ade20k_512" in str(info.value)
    _hub_mit().save_to_preset(str(tmp_path / "tiny"))
    with pytest.raises(WeightsError, match="not mit_b1"):
        build_encoder("mit_b1", weights=str(tmp_path / "tiny"))
    with pytest.raises(WeightsError, match="not a readable keras-hub MiT preset"):
        build_encoder("mit_b0", weights=str(tmp_path))


def test_mit_trains_without_keras_hubs_attention_dropouts_as_the_paper():
    """keras-hub's attention hard-codes Dropout(0.1) on the probabilities and the projection; the
    paper's MiT (NVlabs, mmseg, smp, HF: attn_drop_rate=drop_rate=0) has neither. Without drop-path
    and with layer norms only, a training-mode pass must then equal the inference one."""
    features = MiTFeatures(mit_config("mit_b0", 0.25) | {"max_drop_path_rate": 0.0})
    x = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype("float32")
    for train, infer in zip(features(x, training=True), features(x, training=False)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(train), keras.ops.convert_to_numpy(infer), atol=1e-6)
    with_drop_path = MiTFeatures(mit_config("mit_b0", 0.25))  # drop-path (0.1) still draws in training
    with_drop_path.set_weights(features.get_weights())
    outs = [keras.ops.convert_to_numpy(with_drop_path(x, training=True)[-1]) for _ in range(4)]
    assert any(not np.allclose(a, outs[0]) for a in outs[1:])


# --- save/reload, mixed precision, training, JAX ------------------------------------------------------


def test_save_reload_and_mixed_precision(tmp_path):
    model = segformer(4, "mit_b0", width=WIDTH)
    x = _images(37, 53, batch=2)
    model.save(tmp_path / "m.keras")
    import fcnseg.models  # noqa: F401  (registers fcnseg's layers)

    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    mixed = segformer(4, "mit_b0", width=WIDTH)
    y = mixed(x)
    assert y.dtype == "float32" and tuple(y.shape) == (2, 37, 53, 4) and np.isfinite(np.asarray(y)).all()


@pytest.mark.slow
def test_train_segformer_through_the_cli(tmp_path):
    result = CliRunner().invoke(main, [
        "train", "--model", "segformer", "--encoder", "mit_b0", "--width", str(WIDTH), "--image-size", "64x48",
        "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1", "--val-steps", "1",
        "--source-option", "val_size=2", "--source-option", "train_size=4", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    ck = checkpoint.open_checkpoint(str(tmp_path / "r" / "best.keras"))
    assert ck.model.name == "segformer_mit_b0"
    assert json.loads((tmp_path / "r" / "config.json").read_text())["encoder"] == "mit_b0"


@pytest.mark.slow
def test_onnx_export_agrees_with_keras(tmp_path):
    """The ONNX export of a SegFormer runs in onnxruntime and agrees with Keras at an odd size and
    batch 2 (tf2onnx once folded MiT's one-head reshape + transpose into a wrong-batch reshape)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import tensorflow as tf

    model = segformer(3, "mit_b0", width=WIDTH)
    classes = table([(c, i, i, (i, i, i)) for i, c in enumerate("abc")])
    source = {"name": "x", "image_size": [53, 37], "classes": classes.to_json()}
    checkpoint.save(model, str(tmp_path / "m.keras"), {"model": model.name, "source": source})
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "m.keras"), "--format", "onnx",
                                       "--output", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    x = _images(37, 53, batch=2).astype("uint8")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))["probabilities"]
    want = tf.nn.softmax(model(x.astype("float32")), axis=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


JAX_CHECK = """
import json, sys
import numpy as np
import keras
from fcnseg import checkpoint
model, _, _ = checkpoint.load(sys.argv[1])
x = np.load(sys.argv[2])
y = np.asarray(model(x))
from fcnseg.models import segformer
fresh = segformer(3, "mit_b0", width=0.25)
print(json.dumps({"backend": keras.backend.backend(), "diff": float(np.abs(y - np.load(sys.argv[3])).max()),
                  "fresh": list(np.asarray(fresh(x)).shape)}))
"""


@pytest.mark.slow  # ~45 s: a JAX subprocess builds and runs the model
def test_runs_under_jax_with_the_tensorflow_checkpoint(tmp_path):
    """A SegFormer saved under TensorFlow gives the same logits under KERAS_BACKEND=jax, and one
    built there takes an odd size."""
    pytest.importorskip("jax")
    model = segformer(3, "mit_b0", width=WIDTH)
    x = _images(37, 53, batch=2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(model(x)))
    classes = table([(c, i, i, (i, i, i)) for i, c in enumerate("abc")])
    source = {"name": "x", "image_size": [53, 37], "classes": classes.to_json()}
    checkpoint.save(model, str(tmp_path / "m.keras"), {"model": model.name, "source": source})
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", JAX_CHECK, str(tmp_path / "m.keras"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["diff"] < 1e-4 and report["fresh"] == [2, 37, 53, 3]
