"""tools/gpu_bench.py: its pure helpers, and a --smoke run under JAX on a machine without TensorFlow.

The smoke run checks that the script works end to end (every architecture, the PyTorch peer, the
JSON), not its speed: the figures of one CPU round are noise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_bench.py"

# Run in the subprocess before the tool: Python's path finder no longer sees TensorFlow, so an
# import fails and importlib.util.find_spec answers None, as where TensorFlow is not installed.
HIDE_TENSORFLOW = """
import importlib.machinery, importlib.util, runpy, sys

class _NoTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [_NoTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
assert importlib.util.find_spec("tensorflow") is None, "the blocker does not hide TensorFlow"
sys.argv = sys.argv[1:]  # python -c CODE TOOL ARGS...: the tool sees TOOL ARGS...
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("fcnseg_gpu_bench_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conv_flops_count_multiply_adds_and_transposed_convs_on_their_input(gpu_bench):
    nhwc = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs, rhs (HWIO), out specs as jax gives them
    # 3x3 conv, 8 -> 16 channels, 10x12 output: 2 * 10*12*16 outputs * 3*3*8 multiply-adds each
    assert gpu_bench.conv_flops((1, 10, 12, 8), (3, 3, 8, 16), (1, 10, 12, 16), nhwc, (1, 1)) == 2 * 10 * 12 * 16 * 72
    # stride-2 transposed 3x3, 4 -> 6 channels, 5x7 input: each input pixel x channel scatters 3*3*6
    assert gpu_bench.conv_flops((2, 5, 7, 4), (3, 3, 4, 6), (2, 10, 14, 6), nhwc, (2, 2)) == 2 * 2 * 5 * 7 * 4 * 54
    # dot_general (B, K) x (K, N): 2 * B*N * K
    assert gpu_bench.dot_flops((3, 5), (3, 7), (((1,), (0,)), ((), ()))) == 2 * 3 * 7 * 5


def test_targets_run_first_at_every_size_then_the_other_models(gpu_bench):
    plan = gpu_bench.plan_groups(["fcn32s", "fcn8s", "linknet-resnet18"], gpu_bench.parse_sizes("480x360:8,1024x512:4"))
    assert plan == [("fcn8s", 480, 360, 8), ("linknet-resnet18", 480, 360, 8), ("fcn8s", 1024, 512, 4),
                    ("linknet-resnet18", 1024, 512, 4), ("fcn32s", 480, 360, 8), ("fcn32s", 1024, 512, 4)]
    with pytest.raises(SystemExit, match="480by360"):
        gpu_bench.parse_sizes("480by360")


def test_every_architecture_is_benchmarked(gpu_bench):
    from fcnseg.models import MODELS

    names = gpu_bench.model_names()
    assert names[:3] == ["linknet-resnet18", "linknet-resnet34", "fcn8s"]
    assert {n.split("-")[0] for n in names} == set(MODELS)
    with pytest.raises(SystemExit, match="unknown fcn64s"):
        gpu_bench.choose_models("fcn8s,fcn64s")


def test_the_time_budget_stops_rounds_and_groups_but_always_runs_one(gpu_bench):
    assert gpu_bench.more_rounds(0, 5, 100.0, now=10.0, deadline=11.0)  # the first round always runs
    assert gpu_bench.more_rounds(2, 5, 1.0, now=10.0, deadline=11.0)
    assert not gpu_bench.more_rounds(2, 5, 1.5, now=10.0, deadline=11.0)  # would pass the deadline
    assert not gpu_bench.more_rounds(5, 5, 0.1, now=10.0, deadline=11.0)  # enough rounds
    assert gpu_bench.group_fits([], now=500.0, deadline=420.0)
    assert gpu_bench.group_fits([30.0, 50.0, 40.0], now=370.0, deadline=420.0)
    assert not gpu_bench.group_fits([30.0, 60.0, 70.0], now=370.0, deadline=420.0)
    assert gpu_bench.steps_per_round(0.01, 0.5) == 50 and gpu_bench.steps_per_round(2.0, 0.5) == 1


def test_ratios_and_fraction_of_the_matmul_rate(gpu_bench):
    report = {"matmul_bf16": {"best": 600e12}, "groups": {"m@8x8": {
        "batch": 8, "rounds": 1, "steps_per_round": 1,
        "fcnseg": {"train_images_per_s": 100.0, "infer_ms_per_image": 2.0, "forward_flops": 1e12, "params": 3},
        "torch": {"train_images_per_s": 80.0, "infer_ms_per_image": 3.0, "forward_flops": 1e12, "params": 3,
                  "compiled": False}}}, "notes": [], "skipped": {"x@1x1": "time budget"},
        "device": {}}
    gpu_bench.derive(report)
    group = report["groups"]["m@8x8"]
    assert group["ratio_train_fcnseg_over_torch"] == pytest.approx(1.25)
    assert group["ratio_infer_fcnseg_over_torch"] == pytest.approx(1.5)
    assert group["fcnseg"]["train_fraction_of_bf16_matmul"] == pytest.approx(3 * 1e12 * 100 / 600e12)
    table = gpu_bench.render(report)
    assert "| m@8x8 | 8 | fcnseg | 100.0 | 2.00 | 1000.0 | 50% | 1.25x | 1.50x |" in table
    assert "torch (eager)" in table and "skipped x@1x1: time budget" in table


def test_keras_layers_contender_gets_its_own_row_and_ratio(gpu_bench):
    fig = {"infer_ms_per_image": 2.0, "forward_flops": 1e12, "params": 3}
    report = {"matmul_bf16": {"best": 600e12}, "notes": [], "skipped": {}, "device": {}, "groups": {"m@8x8": {
        "batch": 8, "rounds": 1, "steps_per_round": 1, "fcnseg": fig | {"train_images_per_s": 100.0},
        "keras_layers": fig | {"train_images_per_s": 40.0, "infer_ms_per_image": 2.5}}}}
    gpu_bench.derive(report)
    group = report["groups"]["m@8x8"]
    assert group["ratio_train_fcnseg_over_keras_layers"] == pytest.approx(2.5)
    assert group["ratio_infer_fcnseg_over_keras_layers"] == pytest.approx(1.25)
    assert group["keras_layers"]["train_fraction_of_bf16_matmul"] == pytest.approx(3 * 1e12 * 40 / 600e12)
    table = gpu_bench.render(report)
    assert "| m@8x8 | 8 | keras_layers | 40.0 | 2.50 |" in table
    assert "m@8x8: training 2.50x, inference 1.25x" in table


def test_keras_own_layers_switches_both_jax_layers_off_and_back(gpu_bench):
    from fcnseg.models import layers

    before = layers.pixel_shuffle_transposed_convs, layers.reshape_max_pools
    seen = gpu_bench.traced_with_keras_layers(lambda: (layers.pixel_shuffle_transposed_convs(),
                                                       layers.reshape_max_pools()))()
    assert seen == (False, False)
    assert (layers.pixel_shuffle_transposed_convs, layers.reshape_max_pools) == before


def test_a_failing_torch_compile_falls_back_to_eager_with_a_note(gpu_bench):
    peer = SimpleNamespace(model=object(), fn="compiled", facts={"compiled": True}, ran=[],
                           torch=SimpleNamespace(_dynamo=SimpleNamespace(reset=lambda: None)))

    def train(steps):
        if peer.fn is not peer.model:
            raise RuntimeError("InductorError: no working C++ compiler\nlong trace")
        peer.ran.append("train")

    peer.train, peer.infer = train, lambda: peer.ran.append("infer")
    gpu_bench.TorchPeer.warm_up(peer, 1)
    assert peer.fn is peer.model and peer.ran == ["train", "infer"]
    assert peer.facts["compiled"] is False
    assert "torch.compile failed (RuntimeError: InductorError: no working C++ compiler); eager" == peer.facts["note"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install 'jax[cpu]'): gpu_bench runs fcnseg under Keras' JAX backend")
    out = tmp_path_factory.mktemp("gpu_bench") / "smoke.json"
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW, str(TOOL), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


@pytest.mark.slow
def test_smoke_runs_every_model_under_jax_without_tensorflow(gpu_bench, smoke):
    report, proc = smoke
    assert report["tensorflow_imported"] is False
    assert report["device"]["keras_backend"] == "jax" and report["device"]["jax_device"]
    assert report["skipped"] == {}, report["skipped"]
    assert report["matmul_bf16"]["median"]["jax"] > 0
    for model in gpu_bench.model_names():
        fig = report["groups"][f"{model}@64x48"]["fcnseg"]
        assert fig["train_images_per_s"] > 0 and fig["infer_ms_per_image"] > 0, model
        assert fig["forward_flops"] > 0 and fig["train_fraction_of_bf16_matmul"] > 0, model
        # The warm-up holds the compiles, so it outlasts a timed step (what sizes a GPU slot's plan).
        assert fig["warm_up_s"] >= fig["train_s_per_step"], model
    assert "| fcn8s@64x48 | 2 | fcnseg |" in proc.stdout


@pytest.mark.slow
def test_smoke_measures_the_same_architecture_in_pytorch(gpu_bench, smoke):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: the peer part of gpu_bench is not checked")
    report, _ = smoke
    assert report["matmul_bf16"]["median"]["torch"] > 0
    for model in gpu_bench.model_names():
        group = report["groups"][f"{model}@64x48"]
        ours, peer = group["fcnseg"], group["torch"]
        assert peer["train_images_per_s"] > 0 and peer["infer_ms_per_image"] > 0, model
        assert peer["params"] == ours["params"], model  # same layers and filter counts
        assert peer["forward_flops"] == ours["forward_flops"], model  # FlopCounterMode agrees with the jaxpr count
        assert group["ratio_train_fcnseg_over_torch"] > 0
