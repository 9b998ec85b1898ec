"""PSPNet, DeepLabv3+ and FCN-ResNet (``fcn``) on dilated encoders: any input size, refused
encoders, parameter counts against the reference implementations, save/reload, the train CLI
and the JAX backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.models import MODEL_ENCODERS, MODELS, encoder_refusal
from fcnseg.models.blocks import BilinearUpsample
from fcnseg.models.layers import AdaptiveAveragePooling2D, ResizeToReference

ROOT = Path(__file__).resolve().parents[1]
DILATED = ("pspnet", "deeplabv3plus", "fcn")
WIDTH = 0.25  # not 0.125 at batch 1: TF 2.21's oneDNN crash (README)


def _images(h: int, w: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _torch_trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- the layers the pooling branches need --------------------------------------------------------


def _adaptive_pool_reference(x: np.ndarray, bins: int) -> np.ndarray:
    """PyTorch's AdaptiveAvgPool2d by its definition: cell i spans [floor(i H / n), ceil((i + 1) H / n))."""
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], bins, bins, x.shape[3]), x.dtype)
    for i in range(bins):
        for j in range(bins):
            rows = slice(i * h // bins, -(-(i + 1) * h // bins))
            cols = slice(j * w // bins, -(-(j + 1) * w // bins))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def _bilinear_reference(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """interpolate(mode="bilinear", align_corners=False): half-pixel centres, edges clamped."""
    def taps(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    r0, r1, fr = taps(x.shape[1], h)
    c0, c1, fc = taps(x.shape[2], w)
    rows = x[:, r0] * (1 - fr)[None, :, None, None] + x[:, r1] * fr[None, :, None, None]
    return rows[:, :, c0] * (1 - fc)[None, None, :, None] + rows[:, :, c1] * fc[None, None, :, None]


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_pooling_and_resize_match_pytorch_definitions_at_odd_sizes(bins):
    """Cells overlap where bins does not divide H or W (7, 11); the resize back is PyTorch's
    bilinear interpolate with align_corners=False."""
    x = np.random.default_rng(bins).normal(size=(2, 7, 11, 3)).astype("float32")
    inp = keras.Input((None, None, 3))
    pooled = np.asarray(keras.Model(inp, AdaptiveAveragePooling2D(bins)(inp))(x))
    np.testing.assert_allclose(pooled, _adaptive_pool_reference(x, bins), atol=1e-5)
    ref = keras.Input((None, None, 3))
    up = keras.Model([inp, ref], ResizeToReference()([inp, ref]))([pooled, x])
    np.testing.assert_allclose(np.asarray(up), _bilinear_reference(pooled, 7, 11), atol=1e-5)
    # The fixed-factor upsampling the decoders end with: the same sampling as UpSampling2D's bilinear.
    twice = keras.Model(inp, BilinearUpsample(4)(inp))(x)
    np.testing.assert_allclose(np.asarray(twice), _bilinear_reference(x, 28, 44), atol=1e-5)
    np.testing.assert_allclose(np.asarray(twice), np.asarray(keras.layers.UpSampling2D(4, interpolation="bilinear")(x)),
                               atol=1e-5)


# --- any size, the encoders each takes -----------------------------------------------------------


@pytest.mark.parametrize("name", DILATED)
def test_logits_at_the_input_size_for_odd_sizes(name):
    model = MODELS[name](5, "resnet18", width=WIDTH)
    assert model.name == f"{name}_resnet18"
    for h, w in ((37, 53), (64, 48)):
        y = np.asarray(model(_images(h, w)))
        assert y.shape == (1, h, w, 5) and y.dtype == np.float32 and np.isfinite(y).all()
        assert y.std() > 0


@pytest.mark.parametrize("name", DILATED)
def test_traces_with_unknown_height_and_width(name):
    """SavedModel and ONNX export trace the model with H and W unknown: every resize must read its size
    at run time (Keras's bilinear UpSampling2D and ops.image.resize failed here)."""
    import tensorflow as tf

    model = MODELS[name](3, "resnet18", width=WIDTH)
    serve = tf.function(lambda images: model(images, training=False),
                        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    concrete = serve.get_concrete_function()
    x = _images(37, 53)
    np.testing.assert_allclose(concrete(tf.constant(x)).numpy(), np.asarray(model(x)), atol=1e-4)


@pytest.mark.parametrize("name", DILATED)
def test_only_encoders_with_the_output_stride_and_resnet50_by_default(name):
    assert MODEL_ENCODERS[name] == ("resnet50", "resnet18", "resnet34", "resnet101")
    msg = encoder_refusal(name, "mobilenet_v2")
    assert "\n" not in msg and f"--model {name}" in msg and "resnet50, resnet18, resnet34, resnet101" in msg
    assert encoder_refusal(name, "resnet34") is None
    with pytest.raises(ValueError, match="encoder vgg16 supports output stride 32, not"):
        MODELS[name](3, "vgg16", width=WIDTH)


def test_cli_refuses_a_pair_that_makes_no_sense(tmp_path):
    from fcnseg.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "deeplabv3plus", "--encoder", "efficientnet_b0",
                                       "--run-dir", str(tmp_path / "r")])
    assert result.exit_code != 0
    line = [s for s in result.output.splitlines() if s.startswith("Error:")]
    assert line and "efficientnet_b0" in line[0] and "resnet50, resnet18, resnet34, resnet101" in line[0]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


# --- parameter counts against the reference implementations -------------------------------------

# PyTorch imported into a process where TensorFlow has run segfaults (torch._dynamo), so the reference
# counts come from a PyTorch-only subprocess; each reference is skipped where its library is absent.
_REFERENCE_COUNTS = """
import json, importlib.util
import torch
from torch import nn
def count(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)
out = {}
if importlib.util.find_spec("torchvision"):
    from torchvision.models.segmentation import fcn_resnet50
    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    out["fcn"] = [count(ref), count(ref.backbone)]
if importlib.util.find_spec("segmentation_models_pytorch"):
    import segmentation_models_pytorch as smp
    ref = smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=12)
    out["deeplabv3plus"] = [count(ref), count(ref.encoder)]
# mmsegmentation's PSPHead(in_channels=2048, channels=512, pool_scales=(1, 2, 3, 6), num_classes=12),
# module for module (mmsegmentation is not installed): PPM ConvModule 1x1 + BN + ReLU per scale,
# bottleneck ConvModule 3x3 on the concatenation, Dropout2d(0.1), conv_seg 1x1 with bias.
def conv_module(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
head = nn.ModuleDict({
    "psp_modules": nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_module(2048, 512, 1))
                                  for s in (1, 2, 3, 6)]),
    "bottleneck": conv_module(2048 + 4 * 512, 512, 3),
    "conv_seg": nn.Conv2d(512, 12, 1),
})
out["pspnet"] = [count(head), 0]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference_counts() -> dict:
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", _REFERENCE_COUNTS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reference(counts: dict, name: str) -> tuple[int, int]:
    if name not in counts:
        pytest.skip(f"the reference library for {name} is not installed")
    return tuple(counts[name])


def _head(model, encoder: str = "resnet50") -> int:
    return _trainable(model) - _trainable(model.get_layer(encoder))


def test_fcn_resnet50_counts_match_torchvision(reference_counts):
    """torchvision fcn_resnet50(num_classes=21, aux_loss=False): 32,957,013 parameters. Its head equals
    ours; the encoders differ only by keras.applications' conv biases (one per output channel)."""
    total, ref_encoder = _reference(reference_counts, "fcn")
    assert total == 32_957_013
    model = MODELS["fcn"](21)
    assert _head(model) == total - ref_encoder == 9_448_981
    encoder = model.get_layer("resnet50")
    biases = sum(int(layer.bias.shape[0]) for layer in encoder.layers
                 if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    assert _trainable(encoder) - biases == ref_encoder


def test_deeplabv3plus_resnet50_head_matches_smp(reference_counts):
    """smp.DeepLabV3Plus("resnet50", classes=12): 26,680,412 parameters; without each side's encoder
    the decoder and head match exactly (smp's default rates 12/24/36 vs our 6/12/18 add none)."""
    total, ref_encoder = _reference(reference_counts, "deeplabv3plus")
    assert total == 26_680_412
    assert _head(MODELS["deeplabv3plus"](12)) == total - ref_encoder == 3_172_380


def test_pspnet_resnet50_head_matches_mmsegmentation_psphead(reference_counts):
    """The paper's PSPNet as mmsegmentation's PSPHead builds it, written out in PyTorch in
    _REFERENCE_COUNTS (smp's PSPNet is a different design: encoder depth 3, 1x1 bottleneck, 3x3
    classifier; it is not the reference)."""
    head, _ = _reference(reference_counts, "pspnet")
    model = MODELS["pspnet"](12)
    assert _head(model) == head == 23_079_948
    # The pyramid sits on the 2048-channel stage-4 map.
    assert model.get_layer("ppm_concat").output.shape[-1] == 2048 + 4 * 512


# --- save / reload, train CLI, JAX ---------------------------------------------------------------


@pytest.mark.parametrize("name", DILATED)
def test_keras_save_and_reload_give_the_same_logits(name, tmp_path):
    model = MODELS[name](4, "resnet18", width=WIDTH)
    x = _images(37, 53, batch=2)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))


MIXED_JIT = ["--mixed-precision", "float16", "--jit"]


# About 12 s each on two cores: one runs by default, the others with -m slow. float16 with --jit once
# failed in XLA ("Seen floating point types of different precisions") on the float16 bilinear resizes.
@pytest.mark.parametrize("name, extra", [
    ("pspnet", MIXED_JIT),
    pytest.param("deeplabv3plus", MIXED_JIT, marks=pytest.mark.slow),
    pytest.param("fcn", [], marks=pytest.mark.slow),
])
def test_train_cli_runs_each_model_on_the_synthetic_source(name, extra, tmp_path):
    from fcnseg.cli import main

    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--model", name, "--encoder", "resnet18", "--width", str(WIDTH), "--image-size", "48x32",
        "--batch-size", "2", "--steps-per-epoch", "2", "--val-steps", "1", "--epochs", "1",
        "--source-option", "val_size=2", "--source-option", "train_size=4", "--run-dir", str(run_dir), *extra])
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == name and config["encoder"] == "resnet18"
    history = json.loads((run_dir / "history.json").read_text())
    assert history[-1]["step"] == 2 and np.isfinite(history[-1]["train_loss"])
    from fcnseg import checkpoint

    reloaded, _, _ = checkpoint.load(str(run_dir / "last.keras"))
    assert reloaded.name == f"{name}_resnet18"
    assert reloaded(np.zeros((1, 32, 48, 3), np.float32)).shape == (1, 32, 48, 6)


_JAX_WORKER = """
import json, sys
import keras, numpy as np
from fcnseg.models import MODELS
out = {}
for name in sys.argv[2].split(","):
    model = MODELS[name](4, "resnet18", width=%r)
    model.load_weights(f"{sys.argv[1]}/{name}.weights.h5")
    x = np.load(f"{sys.argv[1]}/x.npy")
    diff = float(np.abs(np.asarray(model(x)) - np.load(f"{sys.argv[1]}/{name}.npy")).max())
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.fit(x, np.zeros(x.shape[:3], "int32"), epochs=1, verbose=0).history["loss"][-1]
    out[name] = {"diff": diff, "loss": float(loss)}
print(json.dumps({"backend": keras.backend.backend(), "models": out}))
""" % WIDTH


@pytest.mark.slow
def test_models_run_under_jax_with_the_tensorflow_weights(tmp_path):
    """Each model built under JAX with the weights TensorFlow saved gives TensorFlow's logits at an odd
    size (the pooling layers read the runtime shape), and a jitted fit step runs."""
    pytest.importorskip("jax", reason="jax is not installed (pip install 'jax[cpu]', in the test extra)")
    x = _images(37, 53, batch=2)
    np.save(tmp_path / "x.npy", x)
    for name in DILATED:
        model = MODELS[name](4, "resnet18", width=WIDTH)
        rng = np.random.default_rng(1)
        # BN statistics away from 0/1 so a wrong moving-statistics load would show.
        for var in model.non_trainable_weights:
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
        model.save_weights(tmp_path / f"{name}.weights.h5")
        np.save(tmp_path / f"{name}.npy", np.asarray(model(x)))
    # XLA's expensive CPU passes cost most of the JAX side's time and buy nothing at this size.
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {fast}".strip())
    proc = subprocess.run([sys.executable, "-c", _JAX_WORKER, str(tmp_path), ",".join(DILATED)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "jax"
    for name in DILATED:
        assert got["models"][name]["diff"] < 1e-3, (name, got)
        assert np.isfinite(got["models"][name]["loss"]), (name, got)


def test_resnet_fcn_is_not_mistaken_for_the_vgg16_fcns():
    """Options written for fcn8s/16s/32s (an old run's encoder, the bfloat16 refusal) leave ``fcn`` alone."""
    from fcnseg.options import TrainConfig, fcn_bfloat16_refusal

    assert TrainConfig.from_json({"model": "fcn", "encoder": "resnet18"}).encoder == "resnet18"
    assert TrainConfig.from_json({"model": "fcn8s", "encoder": "resnet18"}).encoder is None
    assert fcn_bfloat16_refusal("fcn", "bfloat16") is None
