"""U-Net and FPN: reference parameter counts, structure, any input size, mixed precision, save/reload,
the JAX backend and `fcnseg train` through the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import ops

from fcnseg.cli import main
from fcnseg.models import ENCODERS, MODEL_ENCODERS, MODELS, encoder_refusal, fpn, unet
from fcnseg.models.blocks import BilinearUpsample, upsample
from fcnseg.models.fpn import group_count
from fcnseg.models.encoders import encoder_strides

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 0.25  # not 0.125: batch-1 calls at that width crash TF 2.21's oneDNN kernels (README)
SIZES = ((37, 53), (64, 48))
# XLA's CPU optimisation passes cost most of the JAX side's time and buy nothing on tiny inputs.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _images(hw=(37, 53), batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, *hw, 3)).astype("float32")


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def smp_counts() -> dict:
    """smp.Unet/FPN('resnet34', classes=1) parameter counts, computed by smp itself.

    In a subprocess: importing torch after TensorFlow in one process segfaults here.
    """
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        pytest.skip("segmentation_models_pytorch is not installed (optional reference peer)")
    code = ("import json, segmentation_models_pytorch as smp\n"
            "print(json.dumps({name: sum(p.numel() for p in getattr(smp, cls)('resnet34', encoder_weights=None,"
            " classes=1).parameters()) for name, cls in (('unet', 'Unet'), ('fpn', 'FPN'))}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def full_models() -> dict:
    return {"unet": unet(1), "fpn": fpn(1)}


@pytest.mark.parametrize("name", ["unet", "fpn"])
def test_parameter_count_equals_segmentation_models_pytorch(smp_counts, full_models, name):
    """Trainable weights only: PyTorch keeps batch-norm running statistics as buffers, not parameters.
    fcnseg's ResNet34 is torchvision's (no conv biases), so the whole model matches, not just the decoder."""
    model = full_models[name]
    assert model.name == f"{name}_resnet34"
    assert _trainable(model) == smp_counts[name]


def test_unet_decoder_follows_smp(full_models):
    model = full_models["unet"]
    for i, filters in enumerate((256, 128, 64, 32, 16), start=1):
        assert model.get_layer(f"decoder{i}_up").interpolation == "nearest"
        for conv in ("conv1", "conv2"):
            layer = model.get_layer(f"decoder{i}_{conv}_conv")
            assert (layer.filters, layer.kernel_size, layer.use_bias) == (filters, (3, 3), False)
            model.get_layer(f"decoder{i}_{conv}_bn")
    # Block i concatenates the encoder's features of stride 32 / 2^i (ResNet34: 256, 128, 64, 64 channels);
    # the last block (back to stride 1) has no skip.
    in_channels = [model.get_layer(f"decoder{i}_conv1_conv").kernel.shape[2] for i in range(1, 6)]
    assert in_channels == [512 + 256, 256 + 128, 128 + 64, 64 + 64, 32]
    names = {layer.name for layer in model.layers}
    assert "decoder5_concat" not in names and "center_conv1_conv" not in names
    head = model.get_layer("head")
    assert (head.filters, head.kernel_size, head.use_bias) == (1, (3, 3), True)


def test_unet_vgg16_gets_smps_center_block():
    model = unet(3, "vgg16", width=WIDTH)
    channels = ENCODERS["vgg16"].channels[-1] * WIDTH
    for conv in ("center_conv1_conv", "center_conv2_conv"):
        assert model.get_layer(conv).filters == channels
    assert model.get_layer("decoder1_conv1_conv").kernel.shape[2] == channels + 512 * WIDTH


def test_fpn_head_follows_smp(full_models):
    model = full_models["fpn"]
    for level, in_channels in ((5, 512), (4, 256), (3, 128), (2, 64)):
        lateral = model.get_layer(f"p{level}_lateral")
        assert (lateral.filters, lateral.kernel_size, lateral.use_bias, lateral.kernel.shape[2]) == (
            256, (1, 1), True, in_channels)
    names = {layer.name for layer in model.layers}
    # Levels at strides 32/16/8/4 get 3/2/1/1 conv-GN-ReLU blocks, all but the stride-4 one upsampled x2 each.
    for level, blocks in ((5, 3), (4, 2), (3, 1), (2, 1)):
        for i in range(1, blocks + 1):
            conv = model.get_layer(f"seg{level}_block{i}_conv")
            assert (conv.filters, conv.use_bias) == (128, False)
            gn = model.get_layer(f"seg{level}_block{i}_gn")
            assert (gn.groups, gn.epsilon) == (32, 1e-5)
            assert (f"seg{level}_block{i}_up" in names) == (level != 2)
        assert f"seg{level}_block{blocks + 1}_conv" not in names
    dropout = model.get_layer("dropout")
    assert isinstance(dropout, keras.layers.SpatialDropout2D) and dropout.rate == 0.2
    head = model.get_layer("head")
    assert (head.filters, head.kernel_size, head.use_bias) == (1, (1, 1), True)
    assert model.get_layer("head_up").factor == 4


def test_group_norm_groups_at_narrow_widths():
    """32 groups of 4 at full width; narrower keeps 4 channels per group, and groups always divide."""
    assert [group_count(c) for c in (128, 64, 32, 16, 8, 4, 2, 1, 24, 20, 36)] == [32, 16, 8, 4, 2, 1, 1, 1, 6, 5, 9]
    assert all(c % group_count(c) == 0 and group_count(c) <= 32 for c in range(1, 513))
    model = fpn(3, "resnet18", width=WIDTH)
    assert model.get_layer("seg5_block1_gn").groups == 8  # 128 * 0.25 = 32 channels


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_upsample_is_half_pixel_bilinear(factor):
    x = np.random.default_rng(factor).normal(size=(2, 5, 7, 3)).astype("float32")
    want = ops.convert_to_numpy(ops.image.resize(x, (5 * factor, 7 * factor), interpolation="bilinear"))
    np.testing.assert_allclose(ops.convert_to_numpy(BilinearUpsample(factor)(x)), want, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_upsample_tensorflow_cpu_path_matches_the_keras_ops_one_with_cheap_gradients(factor, monkeypatch):
    """On a TF CPU the layer uses ResizeBilinear (its gradient kernel), not slices whose StridedSliceGrad
    took a third of SegFormer's step; both paths compute the same values and gradients."""
    import tensorflow as tf

    from fcnseg.models import blocks

    x = tf.constant(np.random.default_rng(factor).normal(size=(2, 5, 7, 3)).astype("float32"))
    layer = BilinearUpsample(factor)
    results, op_types = {}, {}
    for fast in (True, False):
        monkeypatch.setattr(blocks, "fast_cpu_kernels", lambda fast=fast: fast)

        @tf.function
        def value_and_grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                # Position-dependent weights, so every output pixel's gradient path is checked.
                loss = tf.reduce_sum(y * tf.cos(tf.cast(tf.reshape(tf.range(tf.size(y)), tf.shape(y)), y.dtype)))
            return y, tape.gradient(loss, x)

        results[fast] = [v.numpy() for v in value_and_grad(x)]
        graph = value_and_grad.get_concrete_function(tf.TensorSpec([None, None, None, 3])).graph
        op_types[fast] = {op.type for op in graph.get_operations()}
    for fast_value, plain_value in zip(results[True], results[False]):
        np.testing.assert_allclose(fast_value, plain_value, rtol=1e-5, atol=1e-5)
    assert "ResizeBilinearGrad" in op_types[True] and "StridedSliceGrad" not in op_types[True]
    assert "StridedSliceGrad" in op_types[False]


def test_bilinear_upsample_runs_on_a_second_image_size():
    """predict() retraces with unknown H/W on a second size, where Keras' bilinear UpSampling2D fails."""
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, upsample(inputs, 2, "up"))
    for h, w in SIZES:
        x = _images((h, w))
        out = model.predict(x, verbose=0)
        np.testing.assert_allclose(out, ops.convert_to_numpy(ops.image.resize(x, (2 * h, 2 * w))), atol=1e-3)


@pytest.mark.parametrize("name, encoder", [("unet", "resnet18"), ("unet", "vgg16"), ("fpn", "resnet18"),
                                           ("fpn", "mobilenet_v2")])
def test_logits_at_any_input_size(name, encoder):
    model = MODELS[name](5, encoder, width=WIDTH)
    assert model.name == f"{name}_{encoder}"
    for hw in SIZES:
        out = model.predict(_images(hw), verbose=0)
        assert out.shape == (2, *hw, 5) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["unet", "fpn"])
def test_every_encoder_is_accepted_with_smps_default_first(name):
    # U-Net's last skip is the stride-2 map: encoders without one (MiT) are refused in one line.
    usable = [e for e in ENCODERS if name == "fpn" or 2 in encoder_strides(e)]
    assert MODEL_ENCODERS[name][0] == "resnet34" and set(MODEL_ENCODERS[name]) == set(usable)
    assert all(encoder_refusal(name, e) is None for e in usable)
    for refused in set(ENCODERS) - set(usable):
        message = encoder_refusal(name, refused)
        assert message.startswith(f"--model {name} cannot take --encoder {refused};") and "\n" not in message
    assert name == "fpn" or set(ENCODERS) - set(usable)  # the table has MiT rows


@pytest.mark.parametrize("name", ["unet", "fpn"])
def test_mixed_bfloat16_builds_runs_and_gives_float32_logits(name):
    """Forward passes only (tracing a train step costs ~20 s here); the CLI test trains FPN in bfloat16."""
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # conftest restores float32
    model = MODELS[name](4, "resnet18", width=WIDTH)
    first = "decoder1_conv1_conv" if name == "unet" else "seg5_block1_gn"
    assert model.get_layer(first).compute_dtype == "bfloat16"
    train = ops.convert_to_numpy(model(_images(), training=True))
    out = model.predict(_images((64, 48)), verbose=0)
    assert train.dtype == out.dtype == np.float32 and out.shape == (2, 64, 48, 4)
    assert np.isfinite(train).all() and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["unet", "fpn"])
def test_keras_file_round_trip(tmp_path, name):
    model = MODELS[name](4, "resnet18", width=WIDTH)
    model(_images(), training=True)  # moving statistics away from 0/1, so they must round-trip too
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = _images((64, 48), seed=3)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


JAX_CHECK = """
import json, sys
sys.path.insert(0, {tests!r})
import backend_worker  # blocks every tensorflow import
import keras, numpy as np
from fcnseg.models import MODELS
x = np.random.default_rng(0).uniform(0, 255, (2, 37, 53, 3)).astype("float32")
report = {{"backend": keras.backend.backend(), "tensorflow": "tensorflow" in sys.modules}}
for name in ("unet", "fpn"):
    fresh = MODELS[name](4, "resnet18", width={width})
    loaded = keras.saving.load_model({out!r} + f"/{{name}}.keras")
    got = np.asarray(loaded(x, training=False))
    want = np.load({out!r} + f"/{{name}}.npy")
    report[name] = {{"fresh": list(fresh(x).shape), "diff": float(np.abs(got - want).max())}}
print(json.dumps(report))
"""


@pytest.mark.slow
def test_jax_backend_builds_runs_and_reproduces_tensorflow_logits(tmp_path):
    """TensorFlow saves both models; under JAX (TensorFlow blocked) they build fresh, load and give TF's logits.

    Slow: about 40 s on the shared 2-core machine (JAX compiles each op of the eager calls)."""
    pytest.importorskip("jax", reason="jax is not installed (pip install 'jax[cpu]', in the test extra)")
    x = np.random.default_rng(0).uniform(0, 255, (2, 37, 53, 3)).astype("float32")
    for name in ("unet", "fpn"):
        model = MODELS[name](4, "resnet18", width=WIDTH)
        model(_images(), training=True)
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", ops.convert_to_numpy(model(x, training=False)))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", FCNSEG_BLOCK_TENSORFLOW="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA}".strip())
    code = JAX_CHECK.format(tests=str(ROOT / "tests"), width=WIDTH, out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and not report["tensorflow"]
    for name in ("unet", "fpn"):
        assert report[name]["fresh"] == [2, 37, 53, 4]
        assert report[name]["diff"] < 1e-4


@pytest.mark.parametrize("name, precision",
                         [("unet", None), pytest.param("fpn", "bfloat16", marks=pytest.mark.slow)])
def test_train_through_the_cli_on_synthetic_scenes(tmp_path, name, precision):
    """FPN's run (in mixed bfloat16) takes 20-30 s on the shared 2-core machine, so it is a slow test."""
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--model", name, "--encoder", "resnet18", "--width", str(WIDTH), "--image-size", "64x48",
        "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1",
        "--source-option", "train_size=4", "--source-option", "val_size=2", "--run-dir", str(run_dir),
        *(["--mixed-precision", precision] if precision else [])])
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["model"], config["encoder"], config["mixed_precision"]) == (name, "resnet18", precision)
    assert keras.saving.load_model(run_dir / "last.keras", compile=False).name == f"{name}_resnet18"
