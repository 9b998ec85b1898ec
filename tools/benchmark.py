"""Speed, memory and FLOP efficiency of fcnseg's models, against the machine's peak and a PyTorch peer.

    python tools/benchmark.py [--models fcn8s,linknet-resnet18,linknet-resnet34]
                              [--sizes 480x360,1248x384,1024x512] [--json out.json] [--quick]
    python tools/benchmark.py --models unet,fpn,deeplabv3plus,fcn,pspnet,segformer-mit_b0 \
                              --encoder resnet50 --sizes 480x360
    python tools/benchmark.py --lyft-fps [--lyft-size 800x600] [--lyft-frames 30]

How it measures (the machine may be shared, so every figure that is compared
with another is measured side by side, interleaved, in one run):

* Models: any of fcnseg.models.MODELS, as ``MODEL`` or ``MODEL-ENCODER``
  (``unet-resnet34``); ``--encoder`` picks the encoder of those given without
  one (default: the model's own default encoder).
* Each (model, size) group runs in fresh worker subprocesses, one per
  contender (torch and TensorFlow never share a process: importing torch after
  TensorFlow segfaults here): fcnseg (TensorFlow), the PyTorch peer
  (tools/torch_models.py: same layers and parameter count for FCN/LinkNet,
  the reference implementation from segmentation_models_pytorch or
  torchvision for the newer models, skipped with a message when that library
  is absent), and for LinkNet-ResNet18 at 480x360 the
  real CamVid input pipeline. The orchestrator asks them in turn (A, B, C, A,
  B, C, ...) for a few training steps, then for a few inferences, and reports
  medians. A worker's peak resident memory (VmHWM) is read after its training
  rounds, so it is the training peak of that config alone.
* Training step: forward, cross-entropy over non-void pixels, backward, Adam
  update, on random images and labels held in memory (the pipeline is timed
  separately). Inference: batch 1, ms per image.
* FLOPs per image are counted from the forward graph (a concrete function at
  the group's size, batch 1): every Conv2D, DepthwiseConv2dNative,
  Conv2DBackpropInput (transposed conv), MatMul/BatchMatMul and two-operand
  Einsum op, 2 FLOPs per multiply-add, from the ops' static shapes.
  Element-wise ops (BN, ReLU, adds) are not counted. TF's own profiler
  (tf.compat.v1.profiler float_operation) is printed beside it as a check.
  Training FLOPs = 3x forward (backward = input grads + weight grads).
* Peak: the best of several estimators, each sampled once per round
  throughout the run by its own worker, on all cores: a 4096^3 fp32 matmul in
  TF, the same matmul through numpy's BLAS sgemm, and an FMA micro-kernel (a
  C loop of independent vector FMAs, compiled here for the widest FMA the CPU
  has, capped by ONEDNN_MAX_CPU_ISA; without a C compiler, cores x clock x 2
  FMA units x lanes from /proc/cpuinfo). Each estimator's median is its
  figure, the highest wins (all of them read low, never high); the report
  names the winner and every candidate. A model figure above 100% of it is
  marked "!": the estimators fell short there. bf16: the TF matmul.
* Cost growth: LinkNet-ResNet18 at 0.5x, 1x, 2x the pixels of 480x360,
  interleaved, as seconds per megapixel.
* ``--lyft-fps`` (alone, in this process): the Lyft challenge's figure, frames
  per second of LinkNet-ResNet34 over background / road / vehicles at 800x600,
  batch 1, as ``fcnseg predict`` runs it: softmax, then the write-up's
  post-processing (road threshold 0.7, vehicles claimed at 0.3, vehicles
  dilated 3x3, hood void). Median over the frames after a warm-up; frame
  reading and PNG writing are not included (the challenge fed frames from
  memory). The CPU and the load average are printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[0].parent / "shared" / "data" / "camvid"
NUM_CLASSES = 11  # CamVid SegNet classes; label 11 is void
MODELS = ("fcn8s", "linknet-resnet18", "linknet-resnet34")
SIZES = ("480x360", "1248x384", "1024x512")
GROWTH_SIZES = ("336x256", "480x360", "672x512")  # 0.50x, 1x, 1.99x the pixels of 480x360


VGG_FCNS = ("fcn8s", "fcn16s", "fcn32s")


def split_name(name: str) -> tuple[str, str | None]:
    """``"unet-resnet34"`` -> ``("unet", "resnet34")``; ``"fcn8s"`` -> ``("fcn8s", None)``."""
    model, _, encoder = name.partition("-")
    return model, encoder or None


def resolve_models(names: list[str], encoder: str | None) -> list[str]:
    """Each name as ``MODEL-ENCODER`` (the VGG16 FCNs stay bare): its own encoder, else ``encoder``,
    else the model's default. Raises ValueError (one line) for an unknown model or a pair that
    fcnseg train would refuse."""
    from fcnseg.models import MODEL_ENCODERS, MODELS, encoder_refusal

    out = []
    for name in names:
        model, own = split_name(name)
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r} in --models; models: {', '.join(MODELS)}")
        chosen = own or (encoder if encoder and model not in VGG_FCNS else MODEL_ENCODERS[model][0])
        refusal = encoder_refusal(model, chosen)
        if refusal:
            raise ValueError(refusal)
        out.append(model if model in VGG_FCNS else f"{model}-{chosen}")
    return out


def default_batch(model: str, size: tuple[int, int]) -> int:
    """4 for the VGG16 FCNs / 8 for the others at 480x360, the same pixels per batch
    (rounded down) at the larger sizes so memory stays within a 24 GiB machine."""
    base = 4 if model in VGG_FCNS else 8
    return max(1, min(base, int(base * 480 * 360 / (size[0] * size[1]))))


# ------------------------------------------------------------------ workers


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TFWorker:
    def __init__(self, spec: dict) -> None:
        import keras
        import tensorflow as tf

        from fcnseg.losses import masked_cross_entropy
        from fcnseg.models import MODELS
        from fcnseg.optimizers import FusedAdam

        if spec.get("precision") == "bfloat16":
            keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        if spec.get("inter_op"):
            tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op"])
        name, (w, h), b = spec["model"], spec["size"], spec["batch"]
        self.spec, self.tf = spec, tf
        model_name, encoder = split_name(name)
        self.model = MODELS[model_name](NUM_CLASSES, **({"encoder": encoder} if encoder else {}))
        self.opt = FusedAdam(1e-4)  # what fcnseg train --optimizer adam uses
        loss_fn = masked_cross_entropy(NUM_CLASSES)
        gen = tf.random.Generator.from_seed(0)
        self.x = gen.uniform((b, h, w, 3), 0, 255)
        self.y = gen.uniform((b, h, w), 0, NUM_CLASSES + 1, tf.int32)
        self.x1 = self.x[:1]
        model, opt = self.model, self.opt

        @tf.function(jit_compile=spec.get("jit") or None)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function(jit_compile=spec.get("jit") or None)
        def infer(x):
            return model(x, training=False)

        self.train_step, self.infer_fn = train_step, infer

    def train(self) -> float:
        start = time.perf_counter()
        self.train_step(self.x, self.y).numpy()
        return time.perf_counter() - start

    def infer(self) -> float:
        start = time.perf_counter()
        self.infer_fn(self.x1).numpy()
        return time.perf_counter() - start

    def info(self) -> dict:
        import numpy as np

        w, h = self.spec["size"]
        # Trainable only, as torch's parameters(): BN's moving statistics are buffers there.
        params = sum(int(np.prod(v.shape)) for v in self.model.trainable_weights)
        return {"params": params} | count_flops(self.model, h, w)


def count_flops(model, h: int, w: int) -> dict:
    """Forward FLOPs of one (h, w) image from the graph's conv/matmul ops (2 per multiply-add)."""
    import numpy as np
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, h, w, 3], tf.float32)).graph
    total, first_conv = 0, None
    for op in graph.get_operations():
        if op.type == "Conv2D":
            out = op.outputs[0].shape.as_list()
            kh, kw, cin, _ = op.inputs[1].shape.as_list()
            flops = 2 * int(np.prod(out)) * kh * kw * cin
            if first_conv is None:
                first_conv = {"op": op.name, "output": out, "kernel": op.inputs[1].shape.as_list(), "flops": flops}
        elif op.type == "DepthwiseConv2dNative":  # one kh*kw filter per output channel
            kh, kw = op.inputs[1].shape.as_list()[:2]
            flops = 2 * int(np.prod(op.outputs[0].shape.as_list())) * kh * kw
        elif op.type == "Einsum":
            flops = einsum_flops(op.get_attr("equation").decode(), [t.shape.as_list() for t in op.inputs])
        elif op.type == "Conv2DBackpropInput":  # transposed conv: every input pixel scatters a kh*kw*cout patch
            grad_in = op.inputs[2].shape.as_list()
            kh, kw, cout, _ = op.inputs[1].shape.as_list()
            flops = 2 * int(np.prod(grad_in)) * kh * kw * cout
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a, b = op.inputs[0].shape.as_list(), op.inputs[1].shape.as_list()
            flops = 2 * int(np.prod(a)) * b[-1]
        else:
            continue
        total += flops
    try:
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        profiler = int(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)
    except Exception:  # the profiler is a check only
        profiler = None
    return {"forward_flops": total, "profiler_flops": profiler, "first_conv": first_conv}


def einsum_flops(equation: str, shapes: list[list[int]]) -> int:
    """2 x the product of every index's size for a two-operand einsum (each multiply-add once);
    0 for other arities, ellipses or unknown sizes (not counted rather than guessed)."""
    inputs = equation.split("->")[0].split(",")
    if len(inputs) != 2 or "." in equation or len(shapes) != 2:
        return 0
    sizes: dict[str, int] = {}
    for letters, shape in zip(inputs, shapes):
        if len(letters) != len(shape) or any(d is None for d in shape):
            return 0
        sizes.update(zip(letters, shape))
    total = 2
    for d in sizes.values():
        total *= d
    return total


class TorchWorker:
    def __init__(self, spec: dict) -> None:
        import torch

        sys.path.insert(0, str(HERE))
        import torch_models

        torch.set_num_threads(spec.get("threads", 2))
        torch.manual_seed(0)
        (w, h), b = spec["size"], spec["batch"]
        self.torch = torch
        self.model = torch_models.build(spec["model"], NUM_CLASSES)
        self.opt = torch.optim.Adam(self.model.parameters(), 1e-4)
        self.loss = torch.nn.CrossEntropyLoss(ignore_index=NUM_CLASSES)
        self.x = torch.rand(b, 3, h, w) * 255
        self.y = torch.randint(0, NUM_CLASSES + 1, (b, h, w))
        self.x1 = self.x[:1]

    def train(self) -> float:
        start = time.perf_counter()
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        loss.item()
        return time.perf_counter() - start

    def infer(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        with self.torch.inference_mode():
            self.model(self.x1).sum().item()
        return time.perf_counter() - start

    def info(self) -> dict:
        return {"params": sum(p.numel() for p in self.model.parameters()), "torch": self.torch.__version__}


class PipelineWorker:
    """Pulls batches from the real CamVid training pipeline (decode + augment), nothing consuming."""

    def __init__(self, spec: dict) -> None:
        from fcnseg import sources

        w, h = spec["size"]
        source = sources.load("camvid", spec["data_dir"], image_size=(w, h))
        self.batch = spec["batch"]
        self.it = iter(source.train_dataset(self.batch, drop_remainder=True).repeat())

    def train(self, drain: int = 30, timed: int = 10) -> float:
        """Seconds per batch. While other workers run, this one's prefetch buffers fill up; batches
        served from them would overstate the rate, so ``drain`` batches are pulled untimed first."""
        for _ in range(drain):
            next(self.it)
        start = time.perf_counter()
        for _ in range(timed):
            images, _ = next(self.it)
        images.numpy()
        return (time.perf_counter() - start) / timed

    def infer(self) -> float:
        return float("nan")

    def info(self) -> dict:
        return {}


class PeakWorker:
    """The machine's attainable fp32 FLOP/s by several estimators, on all cores: a large matmul in TF
    (fp32 and bf16), the same matmul through numpy's BLAS sgemm, and an FMA micro-kernel."""

    def __init__(self, spec: dict) -> None:
        import numpy as np
        import tensorflow as tf

        n = spec.get("n", 4096)
        self.n, self.tf, self.np = n, tf, np
        gen = tf.random.Generator.from_seed(0)
        a32, b32 = gen.normal((n, n)), gen.normal((n, n))
        self.pairs = {"float32": (a32, b32)}
        if bf16_matmul_allowed(os.environ.get("ONEDNN_MAX_CPU_ISA")):
            self.pairs["bfloat16"] = (tf.cast(a32, tf.bfloat16), tf.cast(b32, tf.bfloat16))
        self.mm = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
        self.np_pair = (a32.numpy(), b32.numpy())
        self.fma = FmaKernel()

    def sample(self, dtype: str) -> float:
        a, b = self.pairs[dtype]
        start = time.perf_counter()
        self.mm(a, b).numpy()
        return 2 * self.n**3 / (time.perf_counter() - start)

    def sample_numpy(self) -> float:
        start = time.perf_counter()
        self.np.matmul(*self.np_pair)
        return 2 * self.n**3 / (time.perf_counter() - start)

    def train(self) -> float:  # one fp32 and one bf16 sample per round
        return self.sample("float32")

    def infer(self) -> float:  # NaN: bf16 not measured under this ISA cap
        return self.sample("bfloat16") if "bfloat16" in self.pairs else float("nan")

    def estimators(self) -> dict[str, float]:
        """One sample of each fp32 estimator besides the TF matmul."""
        return {"numpy_sgemm": self.sample_numpy(), "fma_kernel": self.fma.sample()}

    def info(self) -> dict:
        return {"fma_method": self.fma.method, "blas": numpy_blas()}


def numpy_blas() -> str:
    """The BLAS numpy's matmul calls (e.g. 'scipy-openblas 0.3.31'), or '?'."""
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no mode="dicts"
        return "?"


FMA_SOURCE = r"""
#include <omp.h>
typedef float vf __attribute__((vector_size(LANES * 4)));
#define ACC 12  /* independent chains: more than FMA latency x FMA ports on current x86 cores */
double fma_loop(long iters) {
    double total = 0.0;
    #pragma omp parallel reduction(+:total)
    {
        vf acc[ACC], m, c;
        for (int l = 0; l < LANES; l++) { m[l] = 0.9999999f; c[l] = 1e-7f; }
        for (int k = 0; k < ACC; k++) for (int l = 0; l < LANES; l++) acc[k][l] = (float)(k + l);
        for (long i = 0; i < iters; i++) {
            #pragma GCC unroll 12
            for (int k = 0; k < ACC; k++) acc[k] = acc[k] * m + c;
        }
        for (int k = 0; k < ACC; k++) for (int l = 0; l < LANES; l++) total += acc[k][l];
    }
    return total;
}
int fma_threads(void) { return omp_get_max_threads(); }
"""
FMA_CHAINS = 12


def fma_isa(flags: set[str], onednn_cap: str | None) -> tuple[str, int, list[str]]:
    """(name, fp32 lanes, compiler flags) of the widest FMA the CPU has, capped as oneDNN is by
    ONEDNN_MAX_CPU_ISA (so an AVX2 emulation on an AVX-512 machine gets the AVX2 peak)."""
    cap = (onednn_cap or "ALL").upper()
    allow_512 = cap in ("ALL", "DEFAULT") or cap.startswith(("AVX512", "AVX10"))
    allow_avx2 = allow_512 or cap.startswith("AVX2")
    if "avx512f" in flags and allow_512:
        return "avx512", 16, ["-mavx512f", "-mfma"]
    if {"avx2", "fma"} <= flags and allow_avx2:
        return "avx2+fma", 8, ["-mavx2", "-mfma"]
    if "avx" in flags and cap != "SSE41":
        return "avx (mul+add)", 8, ["-mavx"]
    return "sse (mul+add)", 4, ["-msse2"]


# oneDNN ISAs with a bf16 matmul; under a lower ONEDNN_MAX_CPU_ISA cap (the AVX2 emulation on an
# AVX-512 or AMX machine) TF still routes bf16 matmuls to oneDNN, which aborts the process.
BF16_ISAS = ("ALL", "DEFAULT", "AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
             "AVX10_1_512")


def bf16_matmul_allowed(onednn_cap: str | None) -> bool:
    """Whether oneDNN may run a bf16 matmul under this ONEDNN_MAX_CPU_ISA cap."""
    return (onednn_cap or "ALL").upper().startswith(BF16_ISAS)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def theoretical_fma_peak(cores: int, mhz: float, lanes: int, fma_units: int = 2) -> float:
    """cores x clock x FMA units x lanes x 2 FLOPs: an assumption (2 FMA units, the clock cpuinfo
    shows), used only where no C compiler can build the measured kernel."""
    return cores * mhz * 1e6 * fma_units * lanes * 2


class FmaKernel:
    """FLOP/s of a tight loop of independent vector FMAs on every core (OpenMP), built with the C
    compiler at hand for the CPU's widest FMA; without a compiler, the cpuinfo formula above."""

    def __init__(self) -> None:
        self.isa, self.lanes, cflags = fma_isa(cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA"))
        try:
            self.lib, self.threads = self._build(cflags), 0
            self.threads = self.lib.fma_threads()
            self.iters = self._calibrate()
            self.method = (f"measured: {FMA_CHAINS} chains of {self.isa} FMAs x {self.lanes} fp32 lanes, "
                           f"{self.threads} OpenMP threads")
        except (OSError, subprocess.SubprocessError) as e:
            self.lib, self.theory = None, theoretical_fma_peak(*cores_and_mhz(), self.lanes)
            self.method = (f"theoretical (no C kernel: {str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                           f"cores x MHz x 2 FMA units x {self.lanes} lanes x 2")

    def _build(self, cflags: list[str]):
        import ctypes

        # Idle OpenMP threads sleep at once instead of spinning into the next contender's timing;
        # read by libgomp when it loads with the kernel below.
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")

        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise OSError("no C compiler (cc, gcc)")
        tmp = tempfile.mkdtemp(prefix="fcnseg-fma-")
        try:
            src, lib = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma.so")
            with open(src, "w") as f:
                f.write(FMA_SOURCE)
            subprocess.run([cc, "-O3", "-fopenmp", "-shared", "-fPIC", f"-DLANES={self.lanes}", *cflags, src,
                            "-o", lib], check=True, capture_output=True, timeout=60)
            loaded = ctypes.CDLL(lib)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the loaded library stays mapped
        loaded.fma_loop.restype, loaded.fma_loop.argtypes = ctypes.c_double, [ctypes.c_long]
        return loaded

    def _calibrate(self, seconds: float = 0.2) -> int:
        iters = 100_000
        while True:
            start = time.perf_counter()
            self.lib.fma_loop(iters)
            took = time.perf_counter() - start
            if took > seconds / 4 or iters > 10**10:
                return max(1, int(iters * seconds / took))
            iters *= 4

    def sample(self) -> float:
        if self.lib is None:
            return self.theory
        start = time.perf_counter()
        self.lib.fma_loop(self.iters)
        return self.threads * self.iters * FMA_CHAINS * self.lanes * 2 / (time.perf_counter() - start)


def cores_and_mhz() -> tuple[int, float]:
    """Physical cores (distinct physical id / core id pairs) and the clock /proc/cpuinfo shows."""
    cores, mhz = set(), []
    try:
        with open("/proc/cpuinfo") as f:
            block = {}
            for line in list(f) + [""]:
                key, _, value = line.partition(":")
                if key.strip():
                    block[key.strip()] = value.strip()
                    continue
                if "cpu MHz" in block:
                    cores.add((block.get("physical id"), block.get("core id", len(cores))))
                    mhz.append(float(block["cpu MHz"]))
                block = {}
    except OSError:
        pass
    return (len(cores) or os.cpu_count() or 1), (max(mhz) if mhz else 2000.0)


# fp32 peak estimators, by the name the report gives them, and the key of their samples
FP32_ESTIMATORS = {"tf_matmul": "float32", "numpy_sgemm": "numpy_sgemm", "fma_kernel": "fma_kernel"}


def best_peak(candidates: dict[str, float | None]) -> tuple[str | None, float]:
    """The estimator with the highest figure (every estimator reads low, never high, so the best is
    the closest to the machine's true peak) and its figure; NaN and missing figures are ignored."""
    valid = {k: v for k, v in candidates.items() if v is not None and v == v and v > 0}
    if not valid:
        return None, float("nan")
    name = max(valid, key=valid.get)
    return name, valid[name]


def peak_candidates(peaks: dict[str, list[float]], starts: dict[str, int] | None = None) -> dict[str, float | None]:
    """Median of each fp32 estimator's samples (those from ``starts`` on, when given)."""
    out = {}
    for name, key in FP32_ESTIMATORS.items():
        samples = peaks.get(key, [])[(starts or {}).get(key, 0):]
        out[name] = statistics.median(samples) if samples else None
    return out


WORKERS = {"tf": TFWorker, "torch": TorchWorker, "pipeline": PipelineWorker, "peak": PeakWorker}


def worker_main(spec_json: str) -> None:
    """Serve commands from the orchestrator on stdin, one JSON answer per line on stdout."""
    spec = json.loads(spec_json)
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    try:
        worker = WORKERS[spec["kind"]](spec)
        answer = {"ok": True}
    except Exception as e:  # reported, not raised: the orchestrator skips this contender
        worker, answer = None, {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    print(json.dumps(answer), file=out, flush=True)
    if worker is None:
        return
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "train":
            result = [worker.train() for _ in range(int(arg))]
        elif cmd == "infer":
            result = [worker.infer() for _ in range(int(arg))]
        elif cmd == "mem":
            result = peak_rss_mib()
        elif cmd == "info":
            result = worker.info()
        elif cmd == "estimators":
            result = worker.estimators()
        else:
            break
        print(json.dumps(result), file=out, flush=True)


class WorkerDied(RuntimeError):
    pass


def wait_until_idle(pid: int, busy: float = 0.05, poll: float = 0.2, timeout: float = 30.0) -> float:
    """Block until process ``pid`` uses under ``busy`` of a core over ``poll`` seconds; return the wait.

    A worker keeps computing after it answers: the pipeline worker's tf.data threads refill their
    prefetch buffers. Timing the next contender or the peak sample meanwhile would charge them for it
    (the LinkNet group's peak samples read 200-250 GFLOP/s against 350-380 elsewhere in a run).
    """
    def cpu_seconds() -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # no /proc (not Linux) or the process is gone: nothing to wait for
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    start = time.perf_counter()
    before = cpu_seconds()
    while before is not None and time.perf_counter() - start < timeout:
        time.sleep(poll)
        after = cpu_seconds()
        if after is None or after - before < busy * poll:
            break
        before = after
    return time.perf_counter() - start


class Worker:
    """The orchestrator's handle on one worker subprocess."""

    def __init__(self, spec: dict, label: str, log_dir: str | None = None) -> None:
        self.label, self.spec = label, spec
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        self.stderr = tempfile.NamedTemporaryFile("w+", prefix="fcnseg-bench-", suffix=".log", dir=log_dir,
                                                  delete=log_dir is None)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        try:
            hello = self._read()
        except WorkerDied as e:
            hello = {"ok": False, "error": str(e)}
        self.ok, self.error = hello.get("ok", False), hello.get("error")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerDied(f"{self.label} worker exited with status {self.proc.wait()}: {self._last_error()}")
        return json.loads(line)

    def _last_error(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        lines = [l.strip() for l in self.stderr.read().splitlines() if l.strip()]
        return lines[-1] if lines else "no message (killed for memory?)"

    def ask(self, cmd: str):
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerDied(f"{self.label} worker exited with status {self.proc.wait()}: {self._last_error()}")
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()


# ------------------------------------------------------------------ orchestration


def interleave(workers: list[Worker], cmd: str, rounds: int, per_round: int, peak: Worker | None,
               peaks: dict) -> dict[str, list[float]]:
    """A, B, C, A, B, C, ...: ``rounds`` times ``per_round`` calls each; returns every sample per worker."""
    samples: dict[str, list[float]] = {w.label: [] for w in workers}
    for _ in range(rounds):
        for w in workers:
            samples[w.label] += w.ask(f"{cmd} {per_round}")
            wait_until_idle(w.proc.pid)
        if peak is not None:
            peaks["float32"] += peak.ask("train 1")
            peaks["bfloat16"] += peak.ask("infer 1")
            for key, value in peak.ask("estimators").items():
                peaks.setdefault(key, []).append(value)
            wait_until_idle(peak.proc.pid)  # BLAS and OpenMP threads spin a while after their work
    return samples


def run_group(name: str, contenders: list[tuple[str, dict]], args, peak: Worker | None, peaks: dict, log) -> dict:
    """Start every contender, warm up, interleave training then inference, then read memory and FLOPs."""
    workers = []
    for label, spec in contenders:
        w = Worker(spec, label, args.log_dir)
        if w.ok:
            workers.append(w)
        else:
            log(f"  {label}: skipped ({w.error})")
    result: dict = {}
    starts = {key: len(peaks.get(key, [])) for key in FP32_ESTIMATORS.values()}
    try:
        _measure_group(workers, result, args, peak, peaks)
    except WorkerDied as e:  # the others' figures so far are kept; a dead contender's are not comparable
        log(f"  {e}; group {name} incomplete")
        result["error"] = str(e)
    finally:
        for w in workers:
            w.close()
    for r in result.values():
        if isinstance(r, dict) and "train_s_per_step" in r:
            r["train_images_per_s"] = r["spec"]["batch"] / r["train_s_per_step"]
    winner, during = best_peak(peak_candidates(peaks, starts))
    if winner:  # the peak while this group ran: load on a shared machine drifts
        result["peak_fp32_during_group"], result["peak_fp32_estimator_during_group"] = during, winner
    return result


def _measure_group(workers, result, args, peak, peaks) -> None:
    """Warm up, interleave training rounds, read memory, interleave inference rounds, read FLOPs."""
    for w in workers:  # warm-up: graph tracing, oneDNN primitive caches, thread pools, file cache
        w.ask(f"train {args.warmup}")
    train = interleave(workers, "train", args.rounds, args.steps, peak, peaks)
    for w in workers:
        result[w.label] = {"spec": w.spec, "train_s_per_step": statistics.median(train[w.label]),
                           "train_samples": train[w.label], "peak_rss_mib": round(w.ask("mem"), 1)}
    infer_workers = [w for w in workers if w.spec["kind"] in ("tf", "torch")]
    for w in infer_workers:
        w.ask(f"infer {args.warmup}")
    infer = interleave(infer_workers, "infer", args.rounds, args.steps, peak, peaks)
    for w in infer_workers:
        result[w.label]["infer_ms_per_image"] = 1000 * statistics.median(infer[w.label])
        result[w.label] |= w.ask("info")


# ------------------------------------------------------------------ Lyft frames per second

LYFT_CLASSES = ("background", "road", "vehicles")  # fcnseg's lyft source, challenge classes


def lyft_postprocess(size: tuple[int, int]):
    """The write-up's post-processing as fcnseg predict's PostProcess: road needs 0.7, vehicles take a
    pixel at 0.3 and are dilated 3x3, and the hood (the bottom sixth of the frame here) is void."""
    import numpy as np

    from fcnseg.predict import PostProcess

    w, h = size
    hood = np.zeros((h, w), bool)
    hood[h - h // 6:] = True
    return PostProcess(thresholds=(0.0, 0.7, 0.0), morphology=((2, "dilate", 3),), static_mask=hood,
                       static_label=255, claims=((2, 0.3),))


def lyft_fps(size: tuple[int, int] = (800, 600), frames: int = 30, width: float = 1.0, warmup: int = 2) -> dict:
    """Frames per second of LinkNet-ResNet34 at ``size``, batch 1: the model alone and with predict's
    post-processing, each the median over ``frames`` frames after ``warmup``."""
    import numpy as np
    import tensorflow as tf

    from fcnseg.inference import make_infer
    from fcnseg.models import linknet
    from fcnseg.predict import postprocess

    w, h = size
    model = linknet(len(LYFT_CLASSES), "resnet34", width=width)
    infer = make_infer(model, flip=False)
    pp = lyft_postprocess(size)
    post = tf.function(lambda p: postprocess(p, pp, 255),
                       input_signature=[tf.TensorSpec([None, None, None, len(LYFT_CLASSES)], tf.float32)])
    rng = np.random.default_rng(0)
    model_s, total_s = [], []
    for i in range(warmup + frames):
        frame = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8).astype(np.float32)
        start = time.perf_counter()
        probs = infer(frame)
        probs.numpy()
        middle = time.perf_counter()
        labels = post(probs).numpy()
        end = time.perf_counter()
        if i >= warmup:
            model_s.append(middle - start)
            total_s.append(end - start)
    assert labels.shape == (1, h, w)
    return {"model": "linknet-resnet34", "width": width, "size": [w, h], "batch": 1, "frames": frames,
            "fps_model": 1 / statistics.median(model_s), "fps_with_postprocess": 1 / statistics.median(total_s),
            "machine": machine()}


def render_lyft_fps(result: dict) -> str:
    m, (w, h) = result["machine"], result["size"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_end"])
    width = "" if result["width"] == 1.0 else f" (width {result['width']:g})"
    return (f"Lyft FPS: LinkNet-ResNet34{width} at {w}x{h}, batch 1, median of {result['frames']} frames: "
            f"{result['fps_model']:.2f} frames/s model (softmax), {result['fps_with_postprocess']:.2f} frames/s "
            f"with predict's post-processing (challenge target 10)\n"
            f"machine: {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, load average {load}; {m['date']}")


def report_lyft_fps(args: argparse.Namespace) -> None:
    result = lyft_fps(parse_size(args.lyft_size), args.lyft_frames, args.lyft_width)
    print(render_lyft_fps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="MODEL or MODEL-ENCODER list, any of fcnseg.models.MODELS")
    parser.add_argument("--encoder", default=None,
                        help="encoder of the models given without one (default: each model's own default)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="WxH list")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: per model and size)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    parser.add_argument("--steps", type=int, default=1, help="training steps (or inferences) per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jit", action="store_true", help="XLA-compile fcnseg's steps")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                        help="fcnseg's dtype policy (bfloat16 = mixed_bfloat16)")
    parser.add_argument("--variants", default="",
                        help="extra fcnseg contenders, e.g. 'jit,bf16,jit+bf16,inter1' (inter1: 1 inter-op thread)")
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--peer-sizes", default=None, help="sizes with a peer (default: all)")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--no-growth", action="store_true")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--log-dir", default=None, help="keep each worker's stderr here")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, one round")
    parser.add_argument("--lyft-fps", action="store_true",
                        help="only report the Lyft setup's inference frames/s (LinkNet-ResNet34, batch 1)")
    parser.add_argument("--lyft-size", default="800x600", help="--lyft-fps frame size, WxH")
    parser.add_argument("--lyft-frames", type=int, default=30, help="--lyft-fps frames timed")
    parser.add_argument("--lyft-width", type=float, default=1.0, help="--lyft-fps filter multiplier (tests)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.lyft_fps:
        return report_lyft_fps(args)
    if args.quick:
        args.sizes, args.rounds, args.warmup = "128x96", 2, 1
        args.models = args.models if args.models != ",".join(MODELS) else "fcn8s,linknet-resnet18"
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    try:
        models = resolve_models([m for m in args.models.split(",") if m], args.encoder)
    except ValueError as e:
        parser.error(str(e))
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    peer_sizes = sizes if args.peer_sizes is None else [parse_size(s) for s in args.peer_sizes.split(",") if s]
    try:
        import torch  # noqa: F401

        have_torch = not args.no_peer
        sys.path.insert(0, str(HERE))
        import torch_models  # torch is already in: torch before TensorFlow is the order that works
    except ImportError:
        have_torch = False
        log("PyTorch is not installed: the peer columns are skipped (pip install torch to get them)")
    pipeline_size = (480, 360) if not args.quick else sizes[0]
    have_data = os.path.isdir(args.data_dir) and not args.no_pipeline
    if not have_data and not args.no_pipeline:
        log(f"no CamVid at {args.data_dir}: the input-pipeline rate is skipped")

    peak = Worker({"kind": "peak", "n": 1024 if args.quick else 4096}, "peak")
    peak.ask("train 2")  # warm-up
    peaks: dict[str, list[float]] = {"float32": [], "bfloat16": [], "numpy_sgemm": [], "fma_kernel": []}
    variants = [v for v in args.variants.split(",") if v]
    from fcnseg.train import fcn_bfloat16_refusal
    groups = {}
    started = time.time()
    report = {"machine": {}, "peak_flops": {}, "settings": vars(args), "groups": groups, "growth": {}}
    for size in sizes:  # size-major: the 480x360 figures (the targets) come first
        for model in models:
            batch = args.batch or default_batch(model, size)
            base = {"model": model, "size": list(size), "batch": batch}
            refusal = fcn_bfloat16_refusal(split_name(model)[0], args.precision)
            if refusal:  # fcnseg train refuses it too; the worker would die mid-run
                log(f"{model} skipped: {refusal}")
                continue
            contenders = [("fcnseg", base | {"kind": "tf", "jit": args.jit, "precision": args.precision})]
            for v in variants:
                refusal = fcn_bfloat16_refusal(split_name(model)[0], "bfloat16" if "bf16" in v else None)
                if refusal:  # fcnseg train refuses it too; the worker would die mid-run
                    log(f"{model}: fcnseg[{v}] skipped: {refusal}")
                    continue
                contenders.append((f"fcnseg[{v}]", base | {"kind": "tf", "jit": "jit" in v,
                                                          "precision": "bfloat16" if "bf16" in v else "float32",
                                                          "inter_op": 1 if "inter1" in v else None}))
            missing = torch_models.peer_missing(model) if have_torch and size in peer_sizes else None
            if missing:
                log(f"{model}: the PyTorch peer is skipped ({missing})")
            elif have_torch and size in peer_sizes:
                contenders.append(("torch", base | {"kind": "torch"}))
            if have_data and model == "linknet-resnet18" and size == pipeline_size:
                contenders.append(("pipeline", {"kind": "pipeline", "size": list(size), "batch": batch,
                                                "data_dir": args.data_dir}))
            key = f"{model}@{size[0]}x{size[1]}"
            log(f"{key} batch {batch}: {', '.join(c for c, _ in contenders)}")
            groups[key] = run_group(key, contenders, args, peak, peaks, log)
            if args.json:  # partial results survive an interrupted run
                with open(args.json, "w") as f:
                    json.dump(report | {"peak_flops": dict(peaks)}, f, indent=1)
    growth = {}
    if not args.no_growth:
        growth_sizes = [parse_size(s) for s in GROWTH_SIZES] if not args.quick else [(96, 64), (128, 96), (192, 128)]
        contenders = [(f"{w}x{h}", {"kind": "tf", "model": "linknet-resnet18", "size": [w, h], "batch": 4,
                                    "jit": args.jit, "precision": args.precision}) for w, h in growth_sizes]
        log(f"cost growth, linknet-resnet18 batch 4: {', '.join(c for c, _ in contenders)}")
        growth = run_group("growth", contenders, args, peak, peaks, log)
    peak_info = peak.ask("info")
    peak.close()

    report = {"machine": machine(), "peak_flops": peak_report(peaks, 1024 if args.quick else 4096, peak_info),
              "settings": vars(args) | {"seconds": round(time.time() - started)},
              "groups": groups, "growth": growth}
    derive(report)
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")


def peak_report(peaks: dict[str, list[float]], matmul_n: int, info: dict) -> dict:
    """The run's fp32 peak: the best of the estimators' medians, which one won, and every candidate."""
    candidates = peak_candidates(peaks)
    winner, best = best_peak(candidates)
    bf16 = [v for v in peaks.get("bfloat16", []) if v == v]
    return {"float32": best, "float32_estimator": winner, "float32_candidates": candidates,
            "bfloat16": statistics.median(bf16) if bf16 else float("nan"), "matmul_n": matmul_n,
            "fma_method": info.get("fma_method"), "blas": info.get("blas"),
            **{f"{key}_samples": peaks.get(key, []) for key in ("float32", "bfloat16", "numpy_sgemm", "fma_kernel")}}


def flag_above_peak(report: dict) -> list[str]:
    """Every figure above 100% of its fp32 peak: the peak estimators read low there, not the model high."""
    flagged = []
    sections = [(key, group) for key, group in report["groups"].items()] + [("growth", report["growth"])]
    for key, group in sections:
        for label, fig in group.items():
            for what in ("train", "infer"):
                if isinstance(fig, dict) and fig.get(f"{what}_fraction_of_fp32_peak", 0) > 1:
                    flagged.append(f"{key} {label} {what} {100 * fig[f'{what}_fraction_of_fp32_peak']:.0f}%")
    return flagged


def percent_of_peak(fraction: float | None) -> str:
    """'84%', '105%!' above the peak, '-' when unknown."""
    if fraction is None:
        return "-"
    return f"{100 * fraction:.0f}%" + ("!" if fraction > 1 else "")


def derive(report: dict) -> None:
    """Fill in FLOP/s, fractions of peak and ratios from the raw figures."""
    run_peak = report["peak_flops"]["float32"]
    for key, group in report["groups"].items():
        peak = group.get("peak_fp32_during_group", run_peak)
        tf_fig = group.get("fcnseg", {})
        if "infer_ms_per_image" not in tf_fig:
            continue
        flops = tf_fig.get("forward_flops")
        for label, fig in group.items():
            if isinstance(fig, dict) and fig["spec"]["kind"] in ("tf", "torch") and flops and "infer_ms_per_image" in fig:
                fig["train_flops_per_s"] = 3 * flops * fig["train_images_per_s"]
                fig["train_fraction_of_fp32_peak"] = fig["train_flops_per_s"] / peak
                fig["infer_flops_per_s"] = flops / (fig["infer_ms_per_image"] / 1000)
                fig["infer_fraction_of_fp32_peak"] = fig["infer_flops_per_s"] / peak
        if "infer_ms_per_image" in group.get("torch", {}):
            group["ratio_train_fcnseg_over_torch"] = tf_fig["train_images_per_s"] / group["torch"]["train_images_per_s"]
            group["ratio_infer_fcnseg_over_torch"] = group["torch"]["infer_ms_per_image"] / tf_fig["infer_ms_per_image"]
        if "pipeline" in group:
            group["ratio_pipeline_over_training"] = (group["pipeline"]["train_images_per_s"]
                                                     / tf_fig["train_images_per_s"])
    peak = report["growth"].get("peak_fp32_during_group", run_peak)
    for label, fig in report["growth"].items():
        if not isinstance(fig, dict) or "infer_ms_per_image" not in fig:
            continue
        w, h = fig["spec"]["size"]
        fig["train_s_per_megapixel"] = fig["train_s_per_step"] / (fig["spec"]["batch"] * w * h / 1e6)
        fig["infer_ms_per_megapixel"] = fig["infer_ms_per_image"] / (w * h / 1e6)
        if fig.get("forward_flops"):
            fig["forward_flops_per_pixel"] = fig["forward_flops"] / (w * h)
            fig["train_fraction_of_fp32_peak"] = 3 * fig["forward_flops"] * fig["train_images_per_s"] / peak
    report["above_peak"] = flag_above_peak(report)


def peak_lines(p: dict) -> list[str]:
    """Which fp32 estimator won, with every candidate; the bf16 matmul."""
    n = p.get("matmul_n", 4096)
    names = {"tf_matmul": f"TF {n}^3 matmul", "numpy_sgemm": f"numpy sgemm {n}^3 ({p.get('blas') or '?'})",
             "fma_kernel": f"FMA micro-kernel ({p.get('fma_method') or '?'})"}
    candidates = p.get("float32_candidates") or {"tf_matmul": p["float32"]}
    listed = "; ".join(f"{names.get(k, k)} {v / 1e9:.0f}" for k, v in candidates.items() if v)
    short = {"tf_matmul": "TF matmul", "numpy_sgemm": "numpy sgemm", "fma_kernel": "FMA micro-kernel"}
    return [f"fp32 peak {p['float32'] / 1e9:.0f} GFLOP/s, the best of (GFLOP/s, all cores): {listed}; "
            f"won: {short.get(p.get('float32_estimator'), p.get('float32_estimator'))}",
            (f"bf16 peak ({n}^3 TF matmul) {p['bfloat16'] / 1e9:.0f} GFLOP/s" if p["bfloat16"] == p["bfloat16"] else
             "bf16 peak not measured (ONEDNN_MAX_CPU_ISA leaves oneDNN no bf16 matmul)")
            + ". Medians over the run; '% fp32 peak' "
            "uses the best of the estimators' medians over the samples taken while that group ran"]


def render(report: dict) -> str:
    lines = [f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, TF {report['machine']['tensorflow']}"
             f", torch {report['machine'].get('torch') or '-'}; {report['machine']['date']}",
             *peak_lines(report["peak_flops"]), "",
             "| model @ size | batch | who | train img/s | infer ms/img | peak RSS GiB | GFLOP/img (fwd) "
             "| train % fp32 peak | fcnseg/torch train | fcnseg/torch infer |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, group in report["groups"].items():
        for label, fig in group.items():
            if not isinstance(fig, dict) or "spec" not in fig:
                continue
            spec = fig["spec"]
            flops = group.get("fcnseg", {}).get("forward_flops")
            cells = [key, str(spec["batch"]), label, f"{fig['train_images_per_s']:.2f}",
                     f"{fig['infer_ms_per_image']:.0f}" if "infer_ms_per_image" in fig else "-",
                     f"{fig['peak_rss_mib'] / 1024:.2f}" if spec["kind"] != "pipeline" else "-",
                     f"{flops / 1e9:.1f}" if flops and spec["kind"] != "pipeline" else "-",
                     percent_of_peak(fig.get("train_fraction_of_fp32_peak"))]
            if label == "fcnseg" and "ratio_train_fcnseg_over_torch" in group:
                cells += [f"{group['ratio_train_fcnseg_over_torch']:.2f}x",
                          f"{group['ratio_infer_fcnseg_over_torch']:.2f}x"]
            else:
                cells += ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
        if "ratio_pipeline_over_training" in group:
            lines.append(f"| {key} | | pipeline / fcnseg training | "
                         f"**{group['ratio_pipeline_over_training']:.1f}x** | | | | | | |")
    for key, group in report["groups"].items():
        for label in ("fcnseg", "torch"):
            fig = group.get(label)
            if fig and "params" in fig:
                lines.append(f"params {key} {label}: {fig['params']:,}")
        fc = group.get("fcnseg", {}).get("first_conv")
        if fc:
            _, ho, wo, co = fc["output"]
            kh, kw, ci, _ = fc["kernel"]
            lines.append(f"flops check {key}: first conv {fc['op']} 2*{ho}*{wo}*{kh}*{kw}*{ci}*{co} = "
                         f"{2 * ho * wo * kh * kw * ci * co / 1e6:.1f} MFLOP (graph count {fc['flops'] / 1e6:.1f});"
                         f" whole forward {group['fcnseg']['forward_flops'] / 1e9:.2f} GFLOP, TF profiler "
                         f"{(group['fcnseg']['profiler_flops'] or 0) / 1e9:.2f} GFLOP (incl. element-wise)")
    if report["growth"]:
        lines += ["", "cost growth, linknet-resnet18, batch 4:", "",
                  "| size | pixels vs 480x360 | train s/Mpx | infer ms/Mpx | fwd FLOP/px | train % fp32 peak |",
                  "|---|---:|---:|---:|---:|---:|"]
        for label, fig in report["growth"].items():
            if not isinstance(fig, dict) or "train_s_per_megapixel" not in fig:
                continue
            w, h = fig["spec"]["size"]
            lines.append(f"| {label} | {w * h / (480 * 360):.2f} | {fig['train_s_per_megapixel']:.2f} | "
                         f"{fig['infer_ms_per_megapixel']:.0f} | {fig.get('forward_flops_per_pixel', 0) / 1e3:.1f}k | "
                         f"{percent_of_peak(fig.get('train_fraction_of_fp32_peak'))} |")
    if report.get("above_peak"):
        lines += ["", f"! above the measured peak: the estimator is low ({'; '.join(report['above_peak'])})"]
    return "\n".join(lines)


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "tensorflow": tf.__version__, "torch": torch_version,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_at_end": os.getloadavg()}


if __name__ == "__main__":
    main()
