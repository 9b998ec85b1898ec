"""tools/backend_curve.py: the same training run under Keras' TensorFlow and JAX backends.

A tiny run (synthetic scenes, width 0.125, 32x32, one epoch of two steps):
both backends train from the same initial weights on the same batches, and
their first steps' losses agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg.models import MODELS as MODEL_NAMES

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "backend_curve.py"
# XLA's CPU optimisation passes cost most of the JAX side's time and buy nothing on 32x32 inputs.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip())
    return subprocess.run([sys.executable, str(TOOL), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_tensorflow_and_jax_curves_start_from_the_same_loss(tmp_path):
    pytest.importorskip("jax", reason="jax is not installed (pip install 'jax[cpu]', in the test extra)")
    out = tmp_path / "curve.json"
    # Batch 4, not 2: with two 32x32 images the encoder's last maps are 1x1, so batch norm
    # normalises two values per channel and any rounding difference is amplified ~100x.
    proc = _run(["--backends", "tensorflow,jax", "--data-source", "synthetic", "--model", "linknet",
                 "--width", "0.125", "--image-size", "32x32", "--epochs", "1", "--steps-per-epoch", "2",
                 "--val-steps", "1", "--batch-size", "4", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert list(runs) == ["tensorflow", "jax"]
    assert runs["tensorflow"]["initial_weights_built_here"] and not runs["jax"]["initial_weights_built_here"]
    for backend, run in runs.items():
        assert run["backend"] == backend
        assert len(run["epochs"]) == 1 and len(run["step_losses"]) == 2, run
        epoch = run["epochs"][0]
        assert all(0 < epoch[k] < 10 for k in ("train_loss", "val_loss")), epoch
        assert 0 <= epoch["val_miou"] <= 1
    tf_run, jax_run = runs["tensorflow"], runs["jax"]
    # Same batches, fed in the same order (digests of the bytes each process trained on).
    assert jax_run["val_digest"] == tf_run["val_digest"]
    assert jax_run["epochs"][0]["data_digest"] == tf_run["epochs"][0]["data_digest"]
    # Random initial weights (a zero score layer would make any two models agree).
    assert tf_run["initial_logits_std"] > 1e-3
    assert jax_run["step_losses"][0] == pytest.approx(tf_run["step_losses"][0], abs=1e-4)
    assert jax_run["initial_val_loss"] == pytest.approx(tf_run["initial_val_loss"], abs=1e-4)
    comparison = report["comparison"]["jax_vs_tensorflow"]
    assert comparison["same_batches"] and comparison["initial_logits_max_abs_diff"] < 1e-4
    # The printed table: the initial row and one per epoch, both backends' columns.
    assert "| epoch | TF loss | JAX loss | TF val loss | JAX val loss | TF val mIoU | JAX val mIoU |" in proc.stdout
    assert "| 1 | " in proc.stdout and report["cpu"] in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--backends", "tensorflow,mxnet"], "--backends mxnet: choose from tensorflow, jax, torch"),
    (["--model", "nosuchnet"], "--model nosuchnet: choose one of " + ", ".join(sorted(MODEL_NAMES))),
    (["--model", "fcn8s", "--encoder", "resnet18"], "--model fcn8s cannot take --encoder resnet18; its encoders are: vgg16"),
    (["--model", "linknet", "--dropout", "1"], "--dropout 1.0: expected a rate in [0, 1)"),
    (["--image-size", "240"], "--image-size 240: expected WxH, e.g. 240x180"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--data-dir", str(ROOT / "no-such-camvid")], f"--data-dir {ROOT / 'no-such-camvid'}: no such folder"),
])
def test_bad_options_are_one_line_errors(args, message, capsys):
    spec = importlib.util.spec_from_file_location("backend_curve", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err == f"Error: {message}\n" and captured.out == ""


def test_a_failed_backend_run_is_a_one_line_error():
    """The worker's own error comes back through the parent as one line naming the backend."""
    proc = _run(["--backends", "tensorflow", "--data-source", "synthetic", "--width", "0.125", "--image-size",
                 "32x32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--val-steps", "1000"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: the tensorflow run failed: val: the split gives 32 batches, fewer than the 1000 asked for")
    assert "Traceback" not in proc.stderr


def test_dropout_option_reaches_every_dropout_and_drop_path_layer():
    """--dropout 0 must switch off the head's dropout and the MiT blocks' drop-path alike: each
    backend draws its own masks, which would part the curves by noise the comparison is not about."""
    spec = importlib.util.spec_from_file_location("backend_curve", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tiny = ["--model", "segformer", "--width", "0.25", "--data-source", "synthetic"]
    model = tool.build_model(tool.parse_args([*tiny, "--dropout", "0"]), num_classes=5)
    layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
              if hasattr(layer, "rate") and type(layer).__name__ in ("Dropout", "DropPath")]
    assert {type(layer).__name__ for layer in layers} == {"Dropout", "DropPath"}
    assert all(layer.rate == 0 for layer in layers)
    default = tool.build_model(tool.parse_args(tiny), num_classes=5)
    drop_paths = [layer for layer in default._flatten_layers(recursive=True) if type(layer).__name__ == "DropPath"]
    assert max(layer.rate for layer in drop_paths) > 0
