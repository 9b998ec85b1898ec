"""GPU training and inference speed of fcnseg's models under Keras' JAX backend, against PyTorch peers.

    python tools/gpu_bench.py [--models fcn8s,linknet-resnet18,...] [--sizes 480x360:8,1024x512:4]
                              [--rounds 5] [--time-budget 420] [--out gpu_bench.json] [--keras-layers] [--smoke]

Needs only keras, fcnseg, JAX and (for the peer) PyTorch: KERAS_BACKEND is set
to jax before keras is imported, and TensorFlow is never imported (the JSON
says so: "tensorflow_imported"). Made to finish inside an 8-minute slot on one
GPU, start-up included: --time-budget (seconds from start) stops adding rounds,
and skips whole groups, once the budget would be passed.

How it measures (one process, one accelerator):

* Groups: every architecture in fcnseg.models.MODELS (LinkNet once per
  encoder) at every WxH:batch size; LinkNet-ResNet18/34 and FCN-8s first.
  In a group, fcnseg's model and the same-architecture PyTorch peer
  (tools/torch_models.py) are built and warmed up (compiled), then asked in
  turn, fcnseg, torch, fcnseg, torch, ..., for a few training steps, then for
  a few batch-1 inferences; each round also takes one bf16 matmul sample per
  framework. Medians over the rounds are reported.
* fcnseg's training step: one jax.jit of model.stateless_call +
  jax.value_and_grad + Adam's stateless_apply (what model.fit runs under JAX,
  without its callback and metric bookkeeping), mixed_bfloat16 policy,
  fcnseg's masked cross-entropy over non-void pixels, state buffers donated.
* The peer: channels_last, bf16 autocast, fused Adam (on CUDA),
  CrossEntropyLoss(ignore_index=void), torch.compile(model) where it compiles
  (on the GPU; else eager, and the JSON's "note" says why).
* --keras-layers adds a third contender, "keras_layers": the same fcnseg model
  traced with Keras' own Conv2DTranspose and MaxPooling2D in place of the
  pixel-shuffle transposed convolution and reshape max pool fcnseg runs under
  JAX, so one run gives those layers' before/after side by side.
* Timing: training steps are queued back to back and the clock stops at
  jax.block_until_ready / torch.cuda.synchronize (img/s); each inference is
  synchronised on its own (ms/image, latency at batch 1).
* FLOPs per image: forward FLOPs counted from the conv_general_dilated and
  dot_general ops of the model's traced forward pass (2 per multiply-add;
  a transposed conv counted on its undilated input, as tools/benchmark.py
  does); PyTorch's FlopCounterMode count of the peer is printed beside it as a
  check. Training FLOPs = 3x forward. "% bf16 mm" is training FLOP/s over the
  best bf16 matmul rate measured in the run (jax or torch, NxN @ NxN).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

START = time.perf_counter()  # the budget counts from here: imports of jax, keras and torch are inside it
HERE = Path(__file__).resolve().parent
NUM_CLASSES = 11  # CamVid's classes; label 11 is void
FIRST = ("linknet-resnet18", "linknet-resnet34", "fcn8s")  # the targets run before the rest
SIZES = "480x360:8,1024x512:4"
SMOKE_SIZES = "64x48:2"


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """'480x360:8,1024x512:4' -> [(480, 360, 8), (1024, 512, 4)]."""
    sizes = []
    for item in filter(None, text.split(",")):
        try:
            wh, _, batch = item.partition(":")
            w, h = wh.lower().split("x")
            sizes.append((int(w), int(h), int(batch or 1)))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not WxH:BATCH (e.g. 480x360:8)")
    return sizes


def model_names() -> list[str]:
    """Every architecture fcnseg has, LinkNet once per encoder that has a PyTorch peer
    (tools/torch_models.py: ResNet18/34), the issue's targets first."""
    from fcnseg.models import MODELS

    # The keras.applications encoders have no peer to compare with, and each would add a JAX
    # compile that the 8-minute device slot cannot afford.
    peer_encoders = ("resnet18", "resnet34")
    names = [f"{k}-{e}" for k in MODELS for e in (peer_encoders if k == "linknet" else ())] or []
    names += [k for k in MODELS if k != "linknet"]
    return sorted(names, key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), names.index(n)))


def plan_groups(models: list[str], sizes: list[tuple[int, int, int]]) -> list[tuple[str, int, int, int]]:
    """(model, w, h, batch) in run order: the targets at every size, then the other models."""
    first = [m for m in models if m in FIRST]
    rest = [m for m in models if m not in FIRST]
    return [(m, *s) for part in (first, rest) for s in sizes for m in part]


# ------------------------------------------------------------------ FLOPs


def conv_flops(lhs: tuple, rhs: tuple, out: tuple, dims, lhs_dilation, groups: int = 1) -> int:
    """FLOPs of one conv_general_dilated (2 per multiply-add).

    ``dims`` is its ConvDimensionNumbers (lhs_spec, rhs_spec, out_spec). A transposed conv (lhs
    dilation > 1) is counted on the undilated input, each input pixel scattering a kernel-sized
    patch, so the zeros the dilation inserts are not counted as work.
    """
    rhs_spec = dims[1]
    kernel = 1
    for d in rhs_spec[2:]:
        kernel *= rhs[d]
    cout, cin_per_group = rhs[rhs_spec[0]], rhs[rhs_spec[1]]
    if any(d != 1 for d in (lhs_dilation or ())):
        return 2 * _prod(lhs) * kernel * cout // groups
    return 2 * _prod(out) * kernel * cin_per_group


def dot_flops(lhs: tuple, out: tuple, dims) -> int:
    """FLOPs of one dot_general: 2 x output elements x contracted size."""
    (lhs_contract, _), _ = dims
    return 2 * _prod(out) * _prod(lhs[d] for d in lhs_contract)


def _prod(values) -> int:
    total = 1
    for v in values:
        total *= int(v)
    return total


def jaxpr_flops(jaxpr) -> int:
    """Conv and matmul FLOPs of a jaxpr, nested jaxprs (jit, custom_jvp, remat) included."""
    total = 0
    for eqn in jaxpr.eqns:
        shapes = [v.aval.shape for v in eqn.invars]
        out = eqn.outvars[0].aval.shape
        if eqn.primitive.name == "conv_general_dilated":
            p = eqn.params
            total += conv_flops(shapes[0], shapes[1], out, p["dimension_numbers"], p["lhs_dilation"],
                                p["feature_group_count"])
        elif eqn.primitive.name == "dot_general":
            total += dot_flops(shapes[0], out, eqn.params["dimension_numbers"])
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    total += jaxpr_flops(inner)
    return total


# ------------------------------------------------------------------ contenders


def build_model(name: str, width: float = 1.0):
    from fcnseg.models import MODELS

    family, _, encoder = name.partition("-")
    if encoder:
        return MODELS[family](NUM_CLASSES, encoder, width=width)
    return MODELS[family](NUM_CLASSES, width=width)


def make_train_step(model, optimizer, loss_fn):
    """A pure (state, x, y) -> (loss, state) step; state = (trainable, non-trainable, optimizer) values."""
    import jax

    def loss_and_updates(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), non_trainable

    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

    def step(state, x, y):
        trainable, non_trainable, opt_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, (trainable, non_trainable, opt_vars)

    return step


@contextlib.contextmanager
def keras_own_layers():
    """Trace transposed convolutions and max pools as Keras' own layers do. For the FLOP count: the
    pixel-shuffle form that fcnseg runs under JAX zero-pads a 3x3 stride-2 kernel to 4x4, taps that
    do no useful work (and that PyTorch's FlopCounterMode, the check, does not count). For
    --keras-layers: the model as it ran before fcnseg's JAX layers, beside it in the same run."""
    from fcnseg.models import layers

    chosen = layers.pixel_shuffle_transposed_convs, layers.reshape_max_pools
    layers.pixel_shuffle_transposed_convs = layers.reshape_max_pools = lambda: False
    try:
        yield
    finally:
        layers.pixel_shuffle_transposed_convs, layers.reshape_max_pools = chosen


def traced_with_keras_layers(fn):
    """``fn`` whose trace (what jax.jit compiles) runs inside :func:`keras_own_layers`."""

    def traced(*args):
        with keras_own_layers():
            return fn(*args)

    return traced


class FcnsegJax:
    """fcnseg's model under Keras' JAX backend: a jitted stateless train step and a jitted forward."""

    def __init__(self, name: str, w: int, h: int, batch: int, precision: str, width: float = 1.0,
                 keras_layers: bool = False) -> None:
        import jax
        import keras
        import numpy as np

        from fcnseg.losses import masked_cross_entropy

        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
        self.jax, model = jax, build_model(name, width)
        optimizer = keras.optimizers.Adam(1e-4)
        optimizer.build(model.trainable_variables)
        rng = np.random.default_rng(0)
        self.x = jax.device_put(rng.uniform(0, 255, (batch, h, w, 3)).astype("float32"))
        self.y = jax.device_put(rng.integers(0, NUM_CLASSES + 1, (batch, h, w)).astype("int32"))
        self.x1 = self.x[:1]
        self.state = tuple([v.value for v in vs] for vs in (model.trainable_variables,
                                                             model.non_trainable_variables, optimizer.variables))
        step = make_train_step(model, optimizer, masked_cross_entropy(NUM_CLASSES))
        forward = lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0]  # noqa: E731
        chosen = traced_with_keras_layers if keras_layers else (lambda fn: fn)
        self.train_fn = jax.jit(chosen(step), donate_argnums=0)
        self.infer_fn = jax.jit(chosen(forward))
        spec = jax.ShapeDtypeStruct((1, h, w, 3), "float32")
        with keras_own_layers():
            flops = jaxpr_flops(jax.make_jaxpr(forward)(*self.state[:2], spec).jaxpr)
        self.facts = {"params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
                      "forward_flops": flops}

    def warm_up(self, steps: int) -> None:
        self.train(steps)
        self.infer()

    def train(self, steps: int) -> float:
        """Seconds per step over ``steps`` queued steps."""
        start = time.perf_counter()
        for _ in range(steps):
            loss, self.state = self.train_fn(self.state, self.x, self.y)
        self.jax.block_until_ready((loss, self.state))
        return (time.perf_counter() - start) / steps

    def infer(self) -> float:
        start = time.perf_counter()
        self.infer_fn(self.state[0], self.state[1], self.x1).block_until_ready()
        return time.perf_counter() - start

    def info(self) -> dict:
        return dict(self.facts)


class TorchPeer:
    """The same architecture in PyTorch: channels_last, bf16 autocast, torch.compile where it compiles."""

    def __init__(self, name: str, w: int, h: int, batch: int, precision: str, compile_: bool,
                 width: float = 1.0) -> None:
        import torch

        sys.path.insert(0, str(HERE))
        import torch_models

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        device = "cuda" if self.cuda else "cpu"
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = True
        self.model = torch_models.build(name, NUM_CLASSES, width).to(device, memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.model.parameters(), 1e-4, fused=self.cuda or None)
        self.loss = torch.nn.CrossEntropyLoss(ignore_index=NUM_CLASSES)
        self.x = (torch.rand(batch, 3, h, w, device=device) * 255).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, NUM_CLASSES + 1, (batch, h, w), device=device)
        self.x1 = self.x[:1].contiguous(memory_format=torch.channels_last)
        self.autocast = lambda: torch.autocast(device, torch.bfloat16, enabled=precision == "bfloat16")  # noqa: E731
        self.facts = {"params": sum(p.numel() for p in self.model.parameters()),
                      "forward_flops": self._count_flops(), "compiled": compile_}
        self.fn = torch.compile(self.model) if compile_ else self.model

    def _count_flops(self) -> int | None:
        try:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter, self.torch.no_grad():
                self.model.eval()(self.x1)
            return int(counter.get_total_flops())
        except Exception:  # a check only
            return None

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def warm_up(self, steps: int) -> None:
        """Compile (train and eval graphs); on any compile error fall back to eager and say why."""
        try:
            self.train(steps)
            self.infer()
        except Exception as e:
            if self.fn is self.model:
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            self.facts |= {"compiled": False, "note": f"torch.compile failed ({type(e).__name__}: {first}); eager"}
            self.torch._dynamo.reset()
            self.fn = self.model
            self.train(steps)
            self.infer()

    def train(self, steps: int) -> float:
        self.model.train()
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.loss(self.fn(self.x), self.y)
            loss.backward()
            self.opt.step()
        self._sync()
        return (time.perf_counter() - start) / steps

    def infer(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        with self.torch.inference_mode(), self.autocast():
            self.fn(self.x1)
        self._sync()
        return time.perf_counter() - start

    def info(self) -> dict:
        return dict(self.facts)


class MatmulRate:
    """bf16 NxN @ NxN FLOP/s in JAX and in PyTorch on the same accelerator."""

    def __init__(self, n: int, with_torch: bool) -> None:
        import jax
        import jax.numpy as jnp

        self.n, self.jax = n, jax
        a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.bfloat16)
        self.jax_args, self.jax_mm = (a, b), jax.jit(jnp.matmul)
        self.torch = None
        if with_torch:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.torch = torch
            self.torch_args = tuple(torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        self.samples: dict[str, list[float]] = {"jax": [], "torch": []}

    def sample(self, reps: int = 10) -> None:
        # One untimed product each first: release() clears JAX's compiled functions between groups,
        # and the recompile (tens of ms) would be counted as 10 products' time.
        self.jax_mm(*self.jax_args).block_until_ready()
        if self.torch is not None:
            self.torch.mm(*self.torch_args)
        start = time.perf_counter()
        for _ in range(reps):
            c = self.jax_mm(*self.jax_args)
        c.block_until_ready()
        self.samples["jax"].append(2 * self.n**3 * reps / (time.perf_counter() - start))
        if self.torch is None:
            return
        sync = self.torch.cuda.synchronize if self.torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            self.torch.mm(*self.torch_args)
        sync()
        self.samples["torch"].append(2 * self.n**3 * reps / (time.perf_counter() - start))

    def summary(self) -> dict:
        medians = {k: statistics.median(v) for k, v in self.samples.items() if v}
        return {"n": self.n, "samples": self.samples, "median": medians,
                "best": max(medians.values()) if medians else None}


# ------------------------------------------------------------------ orchestration


def steps_per_round(seconds_per_step: float, target: float) -> int:
    """Steps that make a round last about ``target`` seconds (1..50), so short steps are not all overhead."""
    if seconds_per_step <= 0:
        return 1
    return max(1, min(50, int(target / seconds_per_step)))


def more_rounds(done: int, wanted: int, round_s: float, now: float, deadline: float) -> bool:
    """Whether another round fits: at least one is always run, none that would pass ``deadline``."""
    return done < 1 or (done < wanted and now + round_s <= deadline)


def group_fits(costs: list[float], now: float, deadline: float) -> bool:
    """Whether another group may start: the first always does, later ones when the median cost of the
    groups so far (set-up plus one round) still ends before ``deadline``."""
    return not costs or now + statistics.median(costs) <= deadline


def make_contenders(model: str, w: int, h: int, batch: int, args, notes: list[str]) -> list:
    contenders = [("fcnseg", FcnsegJax(model, w, h, batch, args.precision, args.width))]
    if args.keras_layers:
        contenders.append(("keras_layers", FcnsegJax(model, w, h, batch, args.precision, args.width, True)))
    if args.with_torch:
        try:
            contenders.append(("torch", TorchPeer(model, w, h, batch, args.precision, args.torch_compile, args.width)))
        except ValueError as e:  # no peer for this architecture in tools/torch_models.py
            notes.append(f"{model}: no PyTorch peer ({e})")
    return contenders


def run_group(model: str, w: int, h: int, batch: int, args, matmul: MatmulRate, deadline: float,
              notes: list[str]) -> dict:
    """Build, warm up, then interleave training and inference rounds until ``args.rounds`` or ``deadline``."""
    started = time.perf_counter()
    contenders = make_contenders(model, w, h, batch, args, notes)
    compile_s = {}
    for label, c in contenders:  # the first calls compile; the timed second one sizes the rounds
        t0 = time.perf_counter()
        c.warm_up(1)
        compile_s[label] = round(time.perf_counter() - t0, 1)
    step_s = max(c.train(1) for _, c in contenders)
    steps = 1 if args.smoke else steps_per_round(step_s, args.round_seconds)
    setup_s = time.perf_counter() - started
    train = {label: [] for label, _ in contenders}
    infer = {label: [] for label, _ in contenders}
    rounds, round_s = 0, 0.0
    while more_rounds(rounds, args.rounds, round_s, time.perf_counter(), deadline):
        t0 = time.perf_counter()
        for label, c in contenders:
            train[label].append(c.train(steps))
        for label, c in contenders:
            infer[label].append(statistics.median(c.infer() for _ in range(args.infer_per_round)))
        matmul.sample()
        rounds, round_s = rounds + 1, time.perf_counter() - t0
    result = {"model": model, "size": [w, h], "batch": batch, "steps_per_round": steps, "rounds": rounds,
              "setup_s": round(setup_s, 1), "group_s": round(time.perf_counter() - started, 1)}
    for label, c in contenders:
        result[label] = c.info() | {"warm_up_s": compile_s[label],  # compiles: what limits groups per slot
                                    "train_s_per_step": statistics.median(train[label]),
                                    "train_samples": train[label],
                                    "train_images_per_s": batch / statistics.median(train[label]),
                                    "infer_ms_per_image": 1000 * statistics.median(infer[label]),
                                    "infer_samples_ms": [1000 * s for s in infer[label]]}
    return result


def release() -> None:
    """Drop the last group's models and compiled functions so the next one has the accelerator's memory."""
    import jax
    import keras

    keras.backend.clear_session()
    jax.clear_caches()
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def derive(report: dict) -> None:
    """Fill in training FLOP/s, the fraction of the best bf16 matmul rate and fcnseg/torch ratios."""
    best = (report.get("matmul_bf16") or {}).get("best")
    for group in report["groups"].values():
        ours, peer = group.get("fcnseg"), group.get("torch")
        if not ours:
            continue
        flops = ours.get("forward_flops")  # same architecture: fcnseg's count serves both
        for fig in (ours, peer, group.get("keras_layers")):
            if fig and flops:
                fig["train_flops_per_s"] = 3 * flops * fig["train_images_per_s"]
                if best:
                    fig["train_fraction_of_bf16_matmul"] = fig["train_flops_per_s"] / best
        if group.get("keras_layers"):
            before = group["keras_layers"]
            group["ratio_train_fcnseg_over_keras_layers"] = ours["train_images_per_s"] / before["train_images_per_s"]
            group["ratio_infer_fcnseg_over_keras_layers"] = before["infer_ms_per_image"] / ours["infer_ms_per_image"]
        if peer:
            group["ratio_train_fcnseg_over_torch"] = ours["train_images_per_s"] / peer["train_images_per_s"]
            group["ratio_infer_fcnseg_over_torch"] = peer["infer_ms_per_image"] / ours["infer_ms_per_image"]


def _row(key: str, g: dict, label: str, fig: dict) -> str:
    flops, frac = fig.get("forward_flops"), fig.get("train_fraction_of_bf16_matmul")
    who = label if label != "torch" or fig.get("compiled") else f"{label} (eager)"
    cells = [key, str(g["batch"]), who, f"{fig['train_images_per_s']:.1f}", f"{fig['infer_ms_per_image']:.2f}",
             f"{flops / 1e9:.1f}" if flops else "-", f"{100 * frac:.0f}%" if frac is not None else "-"]
    if label == "fcnseg" and "ratio_train_fcnseg_over_torch" in g:
        cells += [f"{g['ratio_train_fcnseg_over_torch']:.2f}x", f"{g['ratio_infer_fcnseg_over_torch']:.2f}x"]
    else:
        cells += ["", ""]
    return "| " + " | ".join(cells) + " |"


def render(report: dict) -> str:
    d, mm = report["device"], report.get("matmul_bf16") or {}
    med = mm.get("median", {})
    lines = [f"device: jax {d.get('jax_device')} (jax {d.get('jax')}), torch {d.get('torch_device', '-')} "
             f"(torch {d.get('torch', '-')}); keras {d.get('keras')}; {d.get('date')}",
             f"bf16 matmul {mm.get('n')}^3: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in med.items())
             + " (medians; '% bf16 mm' uses the best)", "",
             "| model @ size | batch | who | train img/s | infer ms/img | GFLOP/img (fwd) | train % bf16 mm "
             "| fcnseg/torch train | fcnseg/torch infer |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for key, g in report["groups"].items():
        for label in ("fcnseg", "keras_layers", "torch"):
            fig = g.get(label)
            if not fig:
                continue
            lines.append(_row(key, g, label, fig))
    for key, g in report["groups"].items():
        ours, peer = g.get("fcnseg", {}), g.get("torch", {})
        if ours and peer:
            lines.append(f"check {key}: params fcnseg {ours['params']:,} torch {peer['params']:,}; forward GFLOP "
                         f"fcnseg {ours['forward_flops'] / 1e9:.2f}, torch FlopCounterMode "
                         f"{(peer.get('forward_flops') or 0) / 1e9:.2f}; {g['rounds']} rounds x "
                         f"{g['steps_per_round']} steps; warm-up (compiles) fcnseg {ours.get('warm_up_s')} s, "
                         f"torch {peer.get('warm_up_s')} s")
        if "ratio_train_fcnseg_over_keras_layers" in g:
            lines.append(f"fcnseg's JAX layers {key}: training {g['ratio_train_fcnseg_over_keras_layers']:.2f}x, "
                         f"inference {g['ratio_infer_fcnseg_over_keras_layers']:.2f}x the same model with Keras' "
                         "own Conv2DTranspose and MaxPooling2D")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"skipped {k}: {why}" for k, why in report["skipped"].items()]
    return "\n".join(lines)




def device_info(with_torch: bool) -> dict:
    """What ran it: jax.devices()[0].device_kind, torch.cuda.get_device_name(), versions, date."""
    import jax
    import keras

    from fcnseg.machine import cpu_name

    dev = jax.devices()[0]
    info = {"jax_device": dev.device_kind if dev.platform != "cpu" else f"cpu ({cpu_name()})",
            "jax_platform": dev.platform, "jax": jax.__version__, "keras": keras.__version__,
            "keras_backend": keras.backend.backend(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if with_torch:
        import torch

        cuda = torch.cuda.is_available()
        info |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                 "torch_device": torch.cuda.get_device_name(0) if cuda else f"cpu ({cpu_name()})"}
    return info


def write_json(path: str | None, report: dict) -> None:
    """Written after every group (a killed run keeps what it measured), through a temporary name."""
    if not path:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma list (default: every architecture fcnseg has)")
    parser.add_argument("--sizes", default=None, help=f"WxH:BATCH list (default {SIZES})")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per group, at most")
    parser.add_argument("--round-seconds", type=float, default=0.5, help="training steps per round aim at this")
    parser.add_argument("--infer-per-round", type=int, default=10, help="batch-1 inferences per round (median)")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--width", type=float, default=None,
                        help="filter-count multiplier of both contenders (default 1; --smoke: 0.125)")
    parser.add_argument("--torch-compile", default="auto", choices=["auto", "on", "off"],
                        help="torch.compile the peer (auto: on a CUDA GPU only)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--keras-layers", action="store_true",
                        help="also time each model traced with Keras' own Conv2DTranspose and MaxPooling2D "
                        "(what fcnseg's JAX layers replace), interleaved with the others: a before/after in one run")
    parser.add_argument("--time-budget", type=float, default=420.0,
                        help="seconds from start: no round or group is begun that would pass it")
    parser.add_argument("--out", default="gpu_bench.json", help="JSON written here ('' for none)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny run that checks the script, not the speed: {SMOKE_SIZES}, width 0.125, 1 round, "
                        "256^3 matmul, XLA's quick compile, no torch.compile; CPU allowed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes = args.sizes or SMOKE_SIZES
        args.rounds, args.infer_per_round, args.matmul_n = 1, 1, 256
        args.width = args.width or 0.125
    args.width = args.width or 1.0
    args.sizes = parse_sizes(args.sizes or SIZES)
    return args


def setup_backends(args, notes: list[str]) -> None:
    """Keras on JAX, JAX's memory allocated on demand (PyTorch shares the GPU), torch if it is there."""
    os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported: never TensorFlow
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.smoke:  # XLA's CPU compile of a training step takes 2-3x longer at full optimisation
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    args.with_torch = not args.no_torch
    if args.with_torch:
        try:
            import torch
        except ImportError:
            args.with_torch = False
            notes.append("PyTorch is not installed: no peer figures (pip install torch)")
    cuda = args.with_torch and torch.cuda.is_available()
    args.torch_compile = args.torch_compile == "on" or (args.torch_compile == "auto" and cuda)
    if args.with_torch and not args.torch_compile:
        notes.append("the peer runs eager (torch.compile " + ("off)" if cuda or args.torch_compile else
                                                              "is only tried on a CUDA GPU; --torch-compile on)"))
    import jax

    if cuda and jax.devices()[0].platform == "cpu":
        notes.append("JAX runs on the CPU but torch on the GPU: install jax[cuda12]; ratios are not comparable")


def choose_models(text: str | None) -> list[str]:
    known = model_names()
    if not text:
        return known
    models = [m for m in text.split(",") if m]
    unknown = [m for m in models if m not in known]
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return models


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    notes: list[str] = []
    setup_backends(args, notes)
    models = choose_models(args.models)
    deadline = START + args.time_budget
    report = {"device": device_info(args.with_torch), "settings": {k: v for k, v in vars(args).items()},
              "matmul_bf16": None, "groups": {}, "skipped": {}, "notes": notes}
    matmul = MatmulRate(args.matmul_n, args.with_torch)
    matmul.sample(2)  # warm-up: compiles and wakes the clocks; not kept
    matmul.samples = {"jax": [], "torch": []}
    matmul.sample()
    plan = plan_groups(models, args.sizes)
    costs: list[float] = []  # seconds to set a group up and run one round
    for i, (model, w, h, batch) in enumerate(plan):
        key, now = f"{model}@{w}x{h}", time.perf_counter()
        if not group_fits(costs, now, deadline):
            report["skipped"][key] = f"time budget ({args.time_budget:.0f} s) would be passed"
            continue
        print(f"{key} batch {batch} ({now - START:.0f} s in)", file=sys.stderr, flush=True)
        try:
            group = run_group(model, w, h, batch, args, matmul, now + (deadline - now) / (len(plan) - i), notes)
            report["groups"][key] = group
            costs.append(group["setup_s"] + (group["group_s"] - group["setup_s"]) / group["rounds"])
            notes += [f"{key} torch: {group['torch']['note']}"] if "note" in group.get("torch", {}) else []
        except Exception as e:  # out of memory, a compile error: the other groups still run
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            report["skipped"][key] = f"failed: {type(e).__name__}: {first}"
            print(f"  {report['skipped'][key]}", file=sys.stderr, flush=True)
        finally:
            release()
        report["matmul_bf16"] = matmul.summary()
        derive(report)
        write_json(args.out, report)
    report["matmul_bf16"] = matmul.summary()
    report["seconds"] = round(time.perf_counter() - START, 1)
    report["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
    derive(report)
    write_json(args.out, report)
    print(render(report))
    return report


if __name__ == "__main__":
    main()
