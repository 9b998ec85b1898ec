"""tools/benchmark.py's orchestration helpers (the measurements themselves are the tool's job)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("fcnseg_benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_wait_until_idle_waits_out_a_busy_worker(benchmark):
    """A process that keeps computing for a second after it was asked (as the pipeline worker's
    prefetch threads do) is waited for; an idle one is not."""
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\ntime.sleep(60)"])
    try:
        time.sleep(0.3)  # let it start spinning
        waited = benchmark.wait_until_idle(busy.pid)
        assert 0.8 <= waited < 10, waited
        assert benchmark.wait_until_idle(busy.pid) < 0.6  # now asleep
    finally:
        busy.kill()
        busy.wait()
    assert benchmark.wait_until_idle(busy.pid) < 0.1  # gone: nothing to wait for


def test_the_fp32_peak_is_the_best_estimator_and_says_which(benchmark):
    peaks = {"float32": [80e9, 83e9, 90e9], "bfloat16": [300e9], "numpy_sgemm": [95e9, 97e9],
             "fma_kernel": [110e9, 150e9, 120e9]}
    report = benchmark.peak_report(peaks, 4096, {"fma_method": "measured: ...", "blas": "openblas"})
    assert report["float32"] == 120e9 and report["float32_estimator"] == "fma_kernel"
    assert report["float32_candidates"] == {"tf_matmul": 83e9, "numpy_sgemm": 96e9, "fma_kernel": 120e9}
    assert report["bfloat16"] == 300e9 and report["fma_kernel_samples"] == [110e9, 150e9, 120e9]
    # a missing or failed estimator does not win; samples from a group's start on give its own peak
    assert benchmark.best_peak({"tf_matmul": 83e9, "numpy_sgemm": float("nan"), "fma_kernel": None}) == ("tf_matmul", 83e9)
    assert benchmark.best_peak({})[0] is None
    during = benchmark.peak_candidates(peaks, {"float32": 2, "numpy_sgemm": 0, "fma_kernel": 3})
    assert during == {"tf_matmul": 90e9, "numpy_sgemm": 96e9, "fma_kernel": None}


def _fig(kind: str, img_s: float) -> dict:
    return {"spec": {"kind": kind, "batch": 2, "size": [480, 360]}, "train_images_per_s": img_s,
            "train_s_per_step": 2 / img_s, "infer_ms_per_image": 500.0, "peak_rss_mib": 1024.0}


def test_figures_above_the_peak_are_flagged(benchmark):
    # 10 GFLOP forward: training 30 GFLOP/image; 3 img/s = 90 GFLOP/s against a peak of 83 or 100
    report = {"machine": {"cpu": "x", "cores": 2, "tensorflow": "2", "torch": None, "date": "d"},
              "peak_flops": benchmark.peak_report({"float32": [83e9], "bfloat16": [1e11]}, 4096, {}),
              "groups": {"fcn8s@480x360": {"fcnseg": _fig("tf", 3.0) | {"forward_flops": 10e9}, "torch": _fig("torch", 2.5)},
                         "linknet@480x360": {"fcnseg": _fig("tf", 2.5) | {"forward_flops": 10e9},
                                             "peak_fp32_during_group": 100e9}},
              "growth": {}}
    benchmark.derive(report)
    assert report["above_peak"] == ["fcn8s@480x360 fcnseg train 108%"]
    table = benchmark.render(report)
    assert "| 108%! |" in table and "| 90% |" in table and "| 75% |" in table
    assert "! above the measured peak: the estimator is low (fcn8s@480x360 fcnseg train 108%)" in table
    assert "won: TF matmul" in table
    assert benchmark.percent_of_peak(None) == "-" and benchmark.percent_of_peak(1.0) == "100%"


def test_the_fma_kernel_uses_the_widest_fma_the_cpu_and_onednn_cap_allow(benchmark):
    avx512 = {"avx", "avx2", "fma", "avx512f"}
    assert benchmark.fma_isa(avx512, None)[:2] == ("avx512", 16)
    assert benchmark.fma_isa(avx512, "AVX512_CORE_AMX")[:2] == ("avx512", 16)
    assert benchmark.fma_isa(avx512, "AVX2")[:2] == ("avx2+fma", 8)  # the AVX2 emulation gets the AVX2 peak
    assert benchmark.fma_isa({"avx", "avx2", "fma"}, None)[:2] == ("avx2+fma", 8)
    assert benchmark.fma_isa({"avx"}, None)[1] == 8 and benchmark.fma_isa(set(), None)[1] == 4
    # 2 cores x 2.6 GHz x 2 FMA units x 8 lanes x 2 FLOPs
    assert benchmark.theoretical_fma_peak(2, 2600.0, 8) == 2 * 2.6e9 * 2 * 8 * 2


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler to build the FMA kernel")
def test_the_fma_kernel_builds_and_runs_or_falls_back_to_the_formula(benchmark, monkeypatch):
    kernel = benchmark.FmaKernel()
    assert kernel.method.startswith("measured:"), kernel.method
    assert kernel.sample() > 0
    monkeypatch.setenv("CC", "/nonexistent/cc")
    fallback = benchmark.FmaKernel()
    assert fallback.method.startswith("theoretical (no C kernel:"), fallback.method
    assert fallback.sample() == benchmark.theoretical_fma_peak(*benchmark.cores_and_mhz(), fallback.lanes)


def test_lyft_fps_reports_frames_per_second_and_the_cpu(tmp_path):
    """--lyft-fps runs the Lyft setup (tiny here) through predict's post-processing and names the CPU."""
    import json
    import os

    out = subprocess.run([sys.executable, str(TOOL), "--lyft-fps", "--lyft-size", "64x48", "--lyft-frames", "2",
                          "--lyft-width", "0.125", "--json", str(tmp_path / "fps.json")],
                         capture_output=True, text=True, timeout=300,
                         env=os.environ | {"PYTHONPATH": str(TOOL.parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "fps.json").read_text())
    assert result["size"] == [64, 48] and result["frames"] == 2
    assert result["fps_with_postprocess"] > 0 and result["fps_model"] >= result["fps_with_postprocess"]
    assert "LinkNet-ResNet34 (width 0.125) at 64x48, batch 1" in out.stdout
    assert f"machine: {result['machine']['cpu']}," in out.stdout and result["machine"]["cpu"] != "unknown"


def test_models_resolve_to_model_encoder_pairs_and_bad_ones_are_one_line_errors(benchmark):
    assert benchmark.resolve_models(["unet", "fcn8s", "segformer-mit_b0", "pspnet"], None) == [
        "unet-resnet34", "fcn8s", "segformer-mit_b0", "pspnet-resnet50"]
    assert benchmark.resolve_models(["deeplabv3plus", "fpn-resnet18", "fcn8s"], "resnet101") == [
        "deeplabv3plus-resnet101", "fpn-resnet18", "fcn8s"]
    with pytest.raises(ValueError, match="--model segformer cannot take --encoder resnet50; its encoders are: mit_b0"):
        benchmark.resolve_models(["segformer"], "resnet50")
    with pytest.raises(ValueError, match="unknown model 'nosuchnet' in --models"):
        benchmark.resolve_models(["nosuchnet"], None)
    assert benchmark.default_batch("fcn16s", (480, 360)) == 4 and benchmark.default_batch("fcn-resnet50", (480, 360)) == 8


def test_depthwise_and_einsum_flops_are_counted(benchmark):
    """SegFormer's Mix-FFN and DeepLabv3+'s separable convs are depthwise convs; attention may be an einsum."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(inputs)
    model = keras.Model(inputs, x)
    assert benchmark.count_flops(model, 8, 6)["forward_flops"] == 2 * 8 * 6 * 3 * 3 * 3
    assert benchmark.einsum_flops("bij,bjk->bik", [[2, 3, 4], [2, 4, 5]]) == 2 * 2 * 3 * 4 * 5
    assert benchmark.einsum_flops("i,i,i->", [[2], [2], [2]]) == 0  # not counted rather than guessed


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                    reason="segmentation_models_pytorch is not installed (the optional U-Net peer)")
def test_a_new_model_runs_against_its_smp_peer(tmp_path):
    """U-Net (ResNet18) against smp.Unet, tiny: both contenders train and infer, the tool reports the
    side-by-side ratios and fractions of the peak, and the two parameter counts agree."""
    import json
    import os

    out = subprocess.run([sys.executable, str(TOOL), "--quick", "--models", "unet", "--encoder", "resnet18",
                          "--batch", "2", "--no-growth", "--no-pipeline", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=600,
                         env=os.environ | {"PYTHONPATH": str(TOOL.parents[1])})
    assert out.returncode == 0, out.stderr[-3000:]
    group = json.loads((tmp_path / "b.json").read_text())["groups"]["unet-resnet18@128x96"]
    tf_fig, torch_fig = group["fcnseg"], group["torch"]
    assert tf_fig["spec"]["batch"] == torch_fig["spec"]["batch"] == 2
    assert tf_fig["params"] == torch_fig["params"] > 1e6  # smp.Unet('resnet18') exactly
    assert group["ratio_train_fcnseg_over_torch"] == pytest.approx(
        tf_fig["train_images_per_s"] / torch_fig["train_images_per_s"])
    assert group["ratio_infer_fcnseg_over_torch"] == pytest.approx(
        torch_fig["infer_ms_per_image"] / tf_fig["infer_ms_per_image"])
    assert 0 < tf_fig["train_fraction_of_fp32_peak"] and 0 < torch_fig["train_fraction_of_fp32_peak"]
    assert tf_fig["forward_flops"] > 0
    row = next(line for line in out.stdout.splitlines() if line.startswith("| unet-resnet18@128x96 | 2 | fcnseg |"))
    assert f"| {group['ratio_train_fcnseg_over_torch']:.2f}x |" in row


def test_no_bf16_matmul_is_asked_of_onednn_under_an_isa_cap_without_one(benchmark, monkeypatch):
    # Under ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512/AMX machine TF still sends bf16 matmuls to oneDNN,
    # which aborted the whole benchmark ("could not create a primitive descriptor for the matmul").
    assert not benchmark.bf16_matmul_allowed("AVX2") and not benchmark.bf16_matmul_allowed("avx512_core")
    assert not benchmark.bf16_matmul_allowed("AVX2_VNNI") and not benchmark.bf16_matmul_allowed("AVX512_CORE_VNNI")
    assert benchmark.bf16_matmul_allowed(None) and benchmark.bf16_matmul_allowed("AVX512_CORE_AMX")
    assert benchmark.bf16_matmul_allowed("AVX512_CORE_BF16") and benchmark.bf16_matmul_allowed("all")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    peak = benchmark.PeakWorker({"n": 64})
    assert peak.train() > 0 and peak.infer() != peak.infer()  # fp32 measured, bf16 NaN
    report = benchmark.peak_report({"float32": [1e11], "bfloat16": [float("nan")], "numpy_sgemm": [9e10],
                                    "fma_kernel": [8e10]}, 64, {})
    assert report["bfloat16"] != report["bfloat16"]
    assert "bf16 peak not measured (ONEDNN_MAX_CPU_ISA" in benchmark.peak_lines(report)[1]
