"""The models, losses and IoU metric on Keras' JAX backend, with TensorFlow not importable there.

The backend is fixed per process, so each half runs in a subprocess
(tests/backend_worker.py): TensorFlow saves a model, JAX (with every
``tensorflow*`` import blocked) loads it, checks the logits, trains a few
``model.fit`` steps with fcnseg's losses and metric and saves it again, and
TensorFlow (on its fused CPU kernels) loads that and must give JAX's logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="jax is not installed (pip install 'jax[cpu]', in the test extra)")

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("backend_worker.py")
TOLERANCE = 1e-4
# XLA's CPU optimisation passes cost most of the JAX side's time (each weight
# initializer and the train step compile) and buy nothing on 64x64 inputs.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _env(backend: str, block_tensorflow: bool = False) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip())
    env.pop("FCNSEG_BLOCK_TENSORFLOW", None)
    if block_tensorflow:
        env["FCNSEG_BLOCK_TENSORFLOW"] = "1"
    return env


def _run(args: list[str], backend: str, block_tensorflow: bool = False, timeout: int = 600) -> dict:
    proc = subprocess.run([sys.executable, *args], env=_env(backend, block_tensorflow), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    return report


def _stage(stage: str, out: Path, names: list[str], backend: str, block_tensorflow: bool = False) -> dict:
    return _run([str(WORKER), stage, str(out), ",".join(names)], backend, block_tensorflow)


def test_models_losses_and_metric_import_and_run_without_tensorflow():
    """Blocked, ``import tensorflow`` really fails, and fcnseg.models/losses/metrics still import and compute
    the values TensorFlow computes."""
    code = f"""
import json, sys
sys.path.insert(0, {str(WORKER.parent)!r})
import backend_worker  # installs the blocker
try:
    import tensorflow
    blocked = False
except ImportError:
    blocked = True
import numpy as np
from fcnseg import losses, metrics, models
from fcnseg.models import layers
rng = np.random.default_rng(0)
y = rng.integers(0, 4, (2, 6, 5)); y[0, :2] = 255
z = rng.normal(size=(2, 6, 5, 3)).astype("float32")
opts = losses.LossOptions(class_weights=(0.5, 2.0, 1.0), fbeta=(1.0, 2.0, 0.5))
values = {{s: float(losses.make_loss(s, 3, opts)(y, z)) for s in ("ce", "dice", "fbeta", "focal", "lovasz", "ohem", "tversky")}}
iou = metrics.StreamingIoU(3)
iou.update_state(y, z)
print(json.dumps({{"blocked": blocked, "tf": "tensorflow" in sys.modules, "fast": layers.fast_cpu_kernels(),
                  "losses": values, "iou": float(iou.result()), "models": sorted(models.MODELS)}}))
"""
    env = _env("jax", block_tensorflow=True)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["blocked"] and not got["tf"] and not got["fast"]

    # The same numbers from this (TensorFlow) process.
    from fcnseg import losses, metrics
    from fcnseg.models import MODELS

    assert got["models"] == sorted(MODELS)

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (2, 6, 5))
    y[0, :2] = 255
    z = rng.normal(size=(2, 6, 5, 3)).astype("float32")
    opts = losses.LossOptions(class_weights=(0.5, 2.0, 1.0), fbeta=(1.0, 2.0, 0.5))
    for spec, value in got["losses"].items():
        assert value == pytest.approx(float(losses.make_loss(spec, 3, opts)(y, z)), rel=1e-5), spec
    assert got["iou"] == pytest.approx(metrics.scores(metrics.batch_confusion(y, z, 3).numpy())["mean_iou"],
                                       rel=1e-6)


def _jax_json(code: str) -> dict:
    """Runs ``code`` under JAX with TensorFlow blocked; the JSON its last line prints."""
    proc = subprocess.run([sys.executable, "-c", code], env=_env("jax", block_tensorflow=True), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_patch_matmul_conv_is_one_matrix_product_under_jax_on_a_cpu():
    """Under JAX on a CPU, FCN's fc6 layer lowers to a matrix product, not XLA's convolution (which ran it
    150x slower), and computes Conv2D's values."""
    code = f"""
import json, sys
sys.path.insert(0, {str(WORKER.parent)!r})
import backend_worker  # installs the blocker
import jax, keras, numpy as np
from fcnseg.models import layers
x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype("float32")
patch, conv = layers.PatchMatmulConv2D(16, 7, padding="same"), keras.layers.Conv2D(16, 7, padding="same")
patch.build(x.shape); conv.build(x.shape)
conv.set_weights(patch.get_weights())
hlo = jax.jit(lambda v: patch(v)).lower(x).as_text()
diff = float(np.abs(np.asarray(patch(x)) - np.asarray(conv(x))).max())
print(json.dumps({{"on": layers.patch_matmul_convolutions(), "convolution": "convolution" in hlo,
                  "dot": "dot_general" in hlo, "diff": diff}}))
"""
    got = _jax_json(code)
    assert got["on"] and got["dot"] and not got["convolution"], got
    assert got["diff"] < 1e-4, got


def test_pixel_shuffle_transposed_conv_is_keras_transposed_conv_without_lhs_dilation_under_jax():
    """Under JAX, LinkNet's and FCN's transposed convolutions run as a stride-1 convolution and a
    depth-to-space (no lhs-dilated convolution, whose kernel gradient XLA computes slowly), with
    the values and both gradients of Keras' Conv2DTranspose for every kernel/stride/padding the
    models use and a few they do not."""
    code = f"""
import json, re, sys
sys.path.insert(0, {str(WORKER.parent)!r})
import backend_worker  # installs the blocker
import jax, jax.numpy as jnp, keras, numpy as np
from fcnseg.models import layers
rng = np.random.default_rng(0)

def dilations(layer, x):
    loss = lambda k, v: jnp.sum(layer.stateless_call([k] + [w.value for w in layer.weights[1:]], [], v)[0] ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(layer.kernel.value, x).as_text()
    return sorted({{int(d) for d in re.findall(r"lhs_dilate = \\[(\\d+)", hlo)}}), loss

out = {{"on": layers.pixel_shuffle_transposed_convs(), "cases": {{}}}}
for k, s, padding, bias, h, w in [(3, 2, "same", False, 5, 7), (2, 2, "valid", True, 5, 6), (4, 2, "same", False, 7, 5),
                                  (16, 8, "same", False, 3, 4), (3, 2, "valid", True, 4, 5), (5, 3, "same", True, 4, 4)]:
    x = rng.normal(size=(2, h, w, 3)).astype("float32")
    ours = layers.PixelShuffleConv2DTranspose(4, k, strides=s, padding=padding, use_bias=bias)
    ref = keras.layers.Conv2DTranspose(4, k, strides=s, padding=padding, use_bias=bias)
    ours.build(x.shape); ref.build(x.shape)
    ref.set_weights([rng.normal(size=v.shape).astype("float32") for v in ref.weights])
    ours.set_weights(ref.get_weights())
    (ours_dil, ours_loss), (ref_dil, ref_loss) = dilations(ours, x), dilations(ref, x)
    a, b = np.asarray(ours(x)), np.asarray(ref(x))
    ga = jax.grad(ours_loss, argnums=(0, 1))(ours.kernel.value, x)
    gb = jax.grad(ref_loss, argnums=(0, 1))(ref.kernel.value, x)
    rel = lambda p, q: float(np.abs(np.asarray(p) - np.asarray(q)).max() / np.abs(np.asarray(q)).max())
    out["cases"][f"k{{k}}s{{s}}{{padding}}"] = {{"shape": [list(a.shape), list(b.shape)], "value": rel(a, b),
        "kernel_grad": rel(ga[0], gb[0]), "input_grad": rel(ga[1], gb[1]), "ours": ours_dil, "keras": ref_dil}}
print(json.dumps(out))
"""
    got = _jax_json(code)
    assert got["on"], got
    for case, r in got["cases"].items():
        assert r["shape"][0] == r["shape"][1], (case, r)
        assert max(r["value"], r["kernel_grad"], r["input_grad"]) < 1e-5, (case, r)
        assert r["ours"] == [1] and max(r["keras"]) > 1, (case, r)  # Keras' own layer does dilate


def test_reshape_max_pool_is_keras_max_pool_without_select_and_scatter_under_jax():
    """Under JAX, VGG's 2x2/2 max pools run as a reshape and a max (their gradient is no
    select-and-scatter, which XLA computes slowly), with the values and input gradient of Keras'
    MaxPooling2D for even and odd sizes, both paddings and a non-square window; an overlapping
    window goes through Keras' own layer."""
    code = f"""
import json, sys
sys.path.insert(0, {str(WORKER.parent)!r})
import backend_worker  # installs the blocker
import jax, jax.numpy as jnp, keras, numpy as np
from fcnseg.models import layers
rng = np.random.default_rng(0)
out = {{"on": layers.reshape_max_pools(), "cases": {{}}}}
for pool, stride, padding, h, w in [(2, 2, "valid", 6, 8), (2, 2, "valid", 7, 5), (2, 2, "same", 7, 5),
                                    ((3, 2), (3, 2), "same", 8, 7), ((3, 2), (3, 2), "valid", 8, 7), (3, 2, "same", 7, 6)]:
    x = rng.normal(size=(2, h, w, 3)).astype("float32")
    ours = layers.ReshapeMaxPooling2D(pool, strides=stride, padding=padding)
    ref = keras.layers.MaxPooling2D(pool, strides=stride, padding=padding)
    cot = rng.normal(size=ref.compute_output_shape(x.shape)).astype("float32")
    grad = lambda layer: jax.grad(lambda v: jnp.sum(layer(v) * cot))
    hlo = lambda layer: jax.jit(grad(layer)).lower(x).as_text()
    a, b = np.asarray(ours(x)), np.asarray(ref(x))
    out["cases"][f"{{pool}}/{{stride}}{{padding}}{{h}}x{{w}}"] = {{
        "shape": [list(a.shape), list(b.shape)], "value": float(np.abs(a - b).max()),
        "grad": float(np.abs(np.asarray(grad(ours)(x)) - np.asarray(grad(ref)(x))).max()),
        "ours": "select_and_scatter" in hlo(ours), "keras": "select_and_scatter" in hlo(ref)}}
print(json.dumps(out))
"""
    got = _jax_json(code)
    assert got["on"], got
    for case, r in got["cases"].items():
        assert r["shape"][0] == r["shape"][1], (case, r)
        assert r["value"] == 0 and r["grad"] < 1e-6, (case, r)
        assert r["keras"], (case, r)  # Keras' own layer does scatter
        assert r["ours"] == case.startswith("3/2"), (case, r)  # only the overlapping window falls back


def _round_trip(tmp_path: Path, names: list[str]) -> None:
    saved = _stage("save", tmp_path, names, "tensorflow")["result"]
    fitted = _stage("fit", tmp_path, names, "jax", block_tensorflow=True)
    assert not fitted["tensorflow_imported"]
    checked = _stage("check", tmp_path, names, "tensorflow")["result"]
    for name in names:
        assert saved[name] > 1e-3, f"{name}: constant logits would match anything"
        run = fitted["result"][name]
        # The TensorFlow checkpoint (fused layer classes) and its weights give JAX the same logits.
        assert run["loaded_diff"] < TOLERANCE, (name, run)
        # fit trained (finite loss, weights moved), predict and the metric ran.
        assert np.isfinite(run["loss"]) and run["weights_moved"] > 0 and 0 <= run["iou"] <= 1, (name, run)
        assert run["predict_shape"] == [2, 64, 64, 4]
        # The JAX-trained checkpoint gives TensorFlow the same logits.
        assert checked[name] < TOLERANCE, (name, checked[name])


def test_tensorflow_and_jax_agree_linknet_resnet18(tmp_path):
    _round_trip(tmp_path, ["linknet-resnet18"])


@pytest.mark.slow
def test_tensorflow_and_jax_agree_every_other_model(tmp_path):
    _round_trip(tmp_path, ["fcn8s", "fcn16s", "fcn32s", "linknet-resnet34", "linknet-per-image"])
