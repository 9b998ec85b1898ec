"""One model's short training curve under Keras' TensorFlow and JAX backends, side by side.

Each backend trains in its own process (Keras fixes the backend per process)
with plain ``model.compile`` / ``model.fit``: the same initial weights (built
once, by the first backend, and saved as a ``.weights.h5`` the others load),
the same batches, Keras' Adam, fcnseg's ``MaskedCrossEntropy`` (void left out)
and ``StreamingIoU``. The batches come from the source's own tf.data pipeline
(augmentation included, seed + epoch per epoch, as ``fcnseg train`` does) and
are materialised per epoch as numpy arrays, so that every backend is fed the
very same bytes in the same order; their digests are compared, not assumed.
Per epoch: training loss, validation loss and validation mIoU; before
training, the logits and validation loss of the shared initial weights.

    python tools/backend_curve.py --model linknet --encoder resnet18 --width 0.5 \\
        --image-size 240x180 --epochs 5 --steps-per-epoch 40 --out curve.json
    python tools/backend_curve.py --model fcn8s --width 0.25 --dropout 0 --out fcn.json
    python tools/backend_curve.py --model deeplabv3plus --encoder resnet50 --width 0.25 --dropout 0

Exact equality is not expected: XLA (JAX) and TensorFlow's kernels sum in
other orders, so float32 results differ in the last bits and the difference
grows as training amplifies it; the initial losses should agree to about
1e-5 and the curves stay within run-to-run noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's fcnseg, as the worker processes get it

from fcnseg.errors import FcnsegError  # noqa: E402
from fcnseg.machine import cpu_name  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")


class ToolError(Exception):
    """A bad option or a failed backend run: printed as one line."""




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="tensorflow,jax", help="comma-separated Keras backends, one process each")
    p.add_argument("--model", default="linknet", help="a key of fcnseg.models.MODELS")
    p.add_argument("--encoder", default=None, help="the model's encoder (default: the model's own)")
    p.add_argument("--width", type=float, default=0.5, help="channel width multiplier")
    p.add_argument("--dropout", type=float, default=None,
                   help="the rate of every dropout and drop-path layer (default: the model's); 0 turns them "
                        "off, whose masks each backend draws from its own generator")
    p.add_argument("--image-size", default="240x180", help="WxH")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--val-steps", type=int, default=0, help="validation batches per epoch (0: the whole split)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-source", default="camvid", help="an fcnseg source name (synthetic: no data needed)")
    p.add_argument("--data-dir", default="../shared/data/camvid")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one backend, report here
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    from fcnseg.models import MODELS, encoder_refusal

    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        raise ToolError(f"--backends {','.join(unknown) or '(none)'}: choose from {', '.join(BACKENDS)}")
    if args.model not in MODELS:
        raise ToolError(f"--model {args.model}: choose one of {', '.join(sorted(MODELS))}")
    refusal = encoder_refusal(args.model, args.encoder)
    if refusal:
        raise ToolError(refusal)
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise ToolError(f"--dropout {args.dropout}: expected a rate in [0, 1)")
    try:
        w, h = (int(v) for v in args.image_size.lower().split("x"))
        assert w > 0 and h > 0
    except (ValueError, AssertionError):
        raise ToolError(f"--image-size {args.image_size}: expected WxH, e.g. 240x180") from None
    args.size = (w, h)
    for name in ("epochs", "steps_per_epoch", "batch_size"):
        if getattr(args, name) < 1:
            raise ToolError(f"--{name.replace('_', '-')} must be at least 1")
    if args.val_steps < 0 or args.lr <= 0 or args.width <= 0:
        raise ToolError("--val-steps must be >= 0, --lr and --width > 0")


# ------------------------------------------------------------ one backend (a worker process)


def build_model(args: argparse.Namespace, num_classes: int):
    from fcnseg.models import MODELS

    kwargs = {"width": args.width}
    if args.encoder is not None:  # otherwise the model's own default encoder
        kwargs["encoder"] = args.encoder
    model = MODELS[args.model](num_classes, **kwargs)
    if args.dropout is not None:
        set_dropout(model, args.dropout)
    return model


def set_dropout(model, rate: float) -> None:
    """Set the rate of every dropout and drop-path layer in ``model``, nested ones too.

    Both read their rate when called, so this reaches the traced step. keras-hub's MiT blocks keep
    their ``DropPath`` as an attribute, not as a layer of a functional graph, hence Keras' own walk.
    """
    import keras

    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.Dropout) or type(layer).__name__ == "DropPath":
            layer.rate = rate


def materialise(ds, steps: int, what: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``steps`` batches of ``ds`` (all when 0) as arrays, with a digest of their bytes."""
    xs, ys = [], []
    for x, y in (ds.take(steps) if steps else ds).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if steps and len(xs) < steps:
        raise ToolError(f"{what}: the split gives {len(xs)} batches, fewer than the {steps} asked for")
    x, y = np.concatenate(xs), np.concatenate(ys)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    return x, y, digest[:16]


def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("keras", "tensorflow", "jax", "jaxlib", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def train_one_backend(args: argparse.Namespace, init_weights: str) -> dict:
    """Train under this process's backend; the per-epoch curve and what it saw."""
    import keras

    from fcnseg import metrics, sources
    from fcnseg.losses import MaskedCrossEntropy

    keras.utils.set_random_seed(args.seed)
    source = sources.load(args.data_source, args.data_dir, args.size, args.seed)
    n = source.num_classes
    # MaskedCrossEntropy and StreamingIoU leave out every label outside 0..C-1.
    if 0 <= source.ignore_label < n:
        raise ToolError(f"{source.name}: void label {source.ignore_label} is a class id; the loss could not skip it")
    xv, yv, val_digest = materialise(source.dataset("val", args.batch_size), args.val_steps, "val")
    model = build_model(args, n)
    if os.path.exists(init_weights):
        model.load_weights(init_weights)
        built_here = False
    else:
        model.save_weights(init_weights)
        built_here = True
    model.compile(keras.optimizers.Adam(args.lr), loss=MaskedCrossEntropy(n), metrics=[metrics.StreamingIoU(n)])
    initial_logits = np.asarray(keras.ops.convert_to_numpy(model(xv[: args.batch_size], training=False)))
    initial = model.evaluate(xv, yv, batch_size=args.batch_size, verbose=0, return_dict=True)
    step_losses: list[float] = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: step_losses.append(float(logs["loss"])))
    epochs = []
    for epoch in range(args.epochs):
        ds = source.dataset("train", args.batch_size, training=True, seed=args.seed + epoch, drop_remainder=True)
        x, y, digest = materialise(ds, args.steps_per_epoch, "train")
        start = time.perf_counter()
        hist = model.fit(x, y, batch_size=args.batch_size, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                         validation_data=(xv, yv), verbose=0, callbacks=[record]).history
        seconds = time.perf_counter() - start
        epochs.append({"epoch": epoch + 1, "train_loss": hist["loss"][-1], "train_miou": hist["mean_iou"][-1],
                       "val_loss": hist["val_loss"][-1], "val_miou": hist["val_mean_iou"][-1],
                       "seconds": round(seconds, 2), "data_digest": digest})
        print(f"[{keras.backend.backend()}] epoch {epoch + 1}: loss {epochs[-1]['train_loss']:.4f}, val loss "
              f"{epochs[-1]['val_loss']:.4f}, val mIoU {epochs[-1]['val_miou']:.4f} ({seconds:.0f} s)",
              file=sys.stderr, flush=True)
    # The running mean Keras reports after step k, turned back into each step's own loss.
    per_step = [(k + 1) * m - k * step_losses[i - 1] if k else m
                for i, m in enumerate(step_losses) for k in [i % args.steps_per_epoch]]
    return {"backend": keras.backend.backend(), "initial_weights_built_here": built_here,
            "jit_compile": bool(model.jit_compile), "initial_val_loss": initial["loss"],
            "initial_val_miou": initial["mean_iou"], "initial_logits_std": float(initial_logits.std()),
            "val_digest": val_digest, "step_losses": per_step, "epochs": epochs,
            "tensorflow_imported": "tensorflow" in sys.modules, "versions": versions(),
            "_initial_logits": initial_logits}


def worker(args: argparse.Namespace) -> None:
    report = train_one_backend(args, os.path.join(args.worker, "init.weights.h5"))
    backend = report["backend"]
    np.save(os.path.join(args.worker, f"{backend}.logits.npy"), report.pop("_initial_logits"))
    with open(os.path.join(args.worker, f"{backend}.json"), "w") as f:
        json.dump(report, f)


# ------------------------------------------------------------ the comparison (the parent process)


def run_backend(backend: str, argv: list[str], tmp: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", tmp]
    print(f"training under {backend} ...", file=sys.stderr, flush=True)
    last = "(no output)"
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:  # the epochs as they end; the libraries' log noise is dropped
            if line.startswith(f"[{backend}] epoch"):
                print(line, end="", file=sys.stderr, flush=True)
            last = line.strip() or last
    if proc.returncode < 0:
        raise ToolError(f"the {backend} run was killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        raise ToolError(f"the {backend} run failed: {last.removeprefix('Error: ')}")
    with open(os.path.join(tmp, f"{backend}.json")) as f:
        report = json.load(f)
    if report["backend"] != backend:
        raise ToolError(f"asked for KERAS_BACKEND={backend}, the worker ran {report['backend']}")
    return report


def compare(runs: dict[str, dict], tmp: str) -> dict:
    """How far each backend's figures lie from the first one's."""
    names = list(runs)
    ref = runs[names[0]]
    ref_logits = np.load(os.path.join(tmp, f"{names[0]}.logits.npy"))
    out = {}
    for name in names[1:]:
        run = runs[name]
        logits = np.load(os.path.join(tmp, f"{name}.logits.npy"))
        same_data = (run["val_digest"] == ref["val_digest"]
                     and [e["data_digest"] for e in run["epochs"]] == [e["data_digest"] for e in ref["epochs"]])
        out[f"{name}_vs_{names[0]}"] = {
            "same_batches": same_data,
            "initial_logits_max_abs_diff": float(np.abs(logits - ref_logits).max()),
            "initial_val_loss_diff": abs(run["initial_val_loss"] - ref["initial_val_loss"]),
            "first_step_loss_diff": abs(run["step_losses"][0] - ref["step_losses"][0]),
            "max_train_loss_diff": max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(run["epochs"], ref["epochs"])),
            "max_val_loss_diff": max(abs(a["val_loss"] - b["val_loss"]) for a, b in zip(run["epochs"], ref["epochs"])),
            "max_val_miou_diff": max(abs(a["val_miou"] - b["val_miou"]) for a, b in zip(run["epochs"], ref["epochs"])),
        }
    return out


def table(runs: dict[str, dict]) -> str:
    names = list(runs)
    short = {"tensorflow": "TF", "jax": "JAX", "torch": "Torch"}
    cols = ([f"{short[n]} loss" for n in names] + [f"{short[n]} val loss" for n in names]
            + [f"{short[n]} val mIoU" for n in names])
    lines = ["| epoch | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    first = runs[names[0]]
    init = (["-"] * len(names) + [f"{runs[n]['initial_val_loss']:.5f}" for n in names]
            + [f"{runs[n]['initial_val_miou']:.4f}" for n in names])
    lines.append("| 0 (initial) | " + " | ".join(init) + " |")
    for i in range(len(first["epochs"])):
        row = ([f"{runs[n]['epochs'][i]['train_loss']:.4f}" for n in names]
               + [f"{runs[n]['epochs'][i]['val_loss']:.4f}" for n in names]
               + [f"{runs[n]['epochs'][i]['val_miou']:.4f}" for n in names])
        lines.append(f"| {i + 1} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def parent_only_removed(argv: list[str]) -> list[str]:
    """``argv`` without --backends and --out (and their values): the workers' options."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--backends", "--out"):
            skip = True
        elif not a.startswith(("--backends=", "--out=")):
            kept.append(a)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        if args.worker:
            worker(args)
            return 0
        if args.data_source != "synthetic" and not os.path.isdir(args.data_dir):
            raise ToolError(f"--data-dir {args.data_dir}: no such folder")
        # The worker gets the same options; --backends and --out are the parent's.
        passed = parent_only_removed(argv)
        with tempfile.TemporaryDirectory(prefix="fcnseg-curve-") as tmp:
            runs = {b: run_backend(b, passed, tmp) for b in args.backends}
            comparison = compare(runs, tmp)
        report = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "command": " ".join(["python",
                  "tools/backend_curve.py", *argv]), "settings": {k: v for k, v in vars(args).items()
                  if k not in ("worker", "size")}, "runs": runs, "comparison": comparison}
    except (ToolError, FcnsegError) as e:  # fcnseg's own one-line errors too (a bad data dir, ...)
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"{report['cpu']}; {report['command']}")
    print(table(runs))
    for pair, c in comparison.items():
        print(f"{pair}: same batches {c['same_batches']}; initial logits differ by at most "
              f"{c['initial_logits_max_abs_diff']:.2e}, initial val loss by {c['initial_val_loss_diff']:.2e}, "
              f"first step's loss by {c['first_step_loss_diff']:.2e}; over the epochs train loss by at most "
              f"{c['max_train_loss_diff']:.4f}, val loss {c['max_val_loss_diff']:.4f}, "
              f"val mIoU {c['max_val_miou_diff']:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
