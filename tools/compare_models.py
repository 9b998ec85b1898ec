"""Train each model the same way on CamVid and write the table that compares them.

    python tools/compare_models.py [--minutes-per-model 30 | --epochs N] [--models linknet/resnet18,...]
                                   [--image-size 320x240] [--batch-size 8] [--out runs/compare]

For each MODEL/ENCODER pair (default: every model the architectures issue names, on its default
encoder; a model that ``fcnseg.models.MODELS`` lacks is skipped with a message), in its own process
(so its peak memory is its own):

1. trains from scratch with one recipe for all: Adam, one-cycle to ``--lr``, cross-entropy weighted
   by the square roots of SegNet's median-frequency weights (``tools/camvid_recipe.py``), the default
   augmentation, batch ``--batch-size`` at ``--image-size``. With ``--minutes-per-model`` every model
   gets the same wall-clock budget, spent to its end: the epoch count is practically unbounded and
   train's ``max_minutes`` stops the run (the one-cycle schedule follows the clock), so a busy moment
   never shortens the run the way a timing pilot did. With ``--epochs`` every model gets that many
   epochs instead. Per-epoch validation counts inside the budget, alike for every model;
2. evaluates ``last.keras`` (not the val-selected best.keras) with ``fcnseg.evaluate`` (the model at
   the training size, probabilities resized back to the 480x360 labels) on
   (a) **held-out**: the frames of sequence ``--held-out`` (default 0001TP), which the run never trained
       on: training uses ``--source-option val_sequences=SEQ``. CamVid's standard val shares the 0016E5
       sequence with train, so this is the figure that measures generalisation to new streets;
   (b) **standard val** (``--held-out none``): trained on CamVid's train split, scored on its val.
   A held-out run trains on train+val minus the sequence, so it is not scored on the standard val
   (those frames are in its training set); each run reports the one figure that is honest for it.
   Where the camvid source has no ``val_sequences`` option, the runs train on the standard split
   and the held-out column reads n/a;
3. measures, on this machine: parameters, checkpoint MB (10^6 bytes of last.keras), GFLOPs per image
   at the training size (TensorFlow's profiler over the frozen inference graph at batch 1: a
   multiply-add counts 2, bias adds and the other ops TF has a FLOP count for are included), training
   images/s (from train's own per-epoch timings, the first epoch left out when there are more, since
   it includes tracing), inference ms/image (batch 1, training size, median of ``--timing-runs``
   calls after two warm-ups) and the peak resident memory of the process (training, evaluation
   and timing).

Writes ``OUT/comparison.md`` (a table per figure group, every mIoU labelled held-out or standard,
per-class IoU of both) and ``OUT/comparison.json`` (every number, the recipe, the CPU model name
from /proc/cpuinfo); each run's folder is ``OUT/MODEL-ENCODER``.

``--jobs N`` trains N models at once, each pinned to its own equal share of the CPUs (on a 2-core
machine, ``--jobs 2`` gives each model one core and halves the wall time; the speed columns are then
per share, and the table says so). ``--resume`` continues an interrupted or partial comparison in
the same OUT (``OUT/recipe.json`` must match the options): finished models keep their results, the
others train from scratch, so a comparison longer than one sitting can be run in parts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
# The models, each on the encoder the drivable-area study or the issue names for it.
DEFAULT_PAIRS = ("linknet/resnet18", "unet/resnet34", "fpn/resnet34", "pspnet/resnet50", "deeplabv3plus/resnet50",
                 "fcn/resnet50", "segformer/mit_b0", "fcn8s/vgg16")
HELD_OUT_OPTION = "val_sequences"
# SegNet (Badrinarayanan et al.) median-frequency weights for CamVid classes 0..10; the recipe uses
# their square roots, as tools/camvid_recipe.py does (its docstring says why).
SEGNET_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614)
CLASS_WEIGHTS = {"segnet": SEGNET_WEIGHTS, "sqrt": tuple(round(w ** 0.5, 4) for w in SEGNET_WEIGHTS), "none": None}
# "The clock ends the run": an epoch count no budget reaches.
UNBOUNDED_EPOCHS = 100_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="CamVid in the SegNet layout")
    parser.add_argument("--out", default="runs/compare", help="output folder (must not exist yet, unless --resume)")
    parser.add_argument("--models", default=",".join(DEFAULT_PAIRS),
                        help="comma-separated MODEL or MODEL/ENCODER (default encoder: the model's own)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes-per-model", type=float, default=None,
                        help="wall-clock training budget per model (default 30 when --epochs is not given)")
    budget.add_argument("--epochs", type=int, default=None, help="train every model this many epochs instead")
    parser.add_argument("--image-size", default="320x240", help="training size WxH")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="one-cycle peak learning rate (Adam)")
    parser.add_argument("--weights", default="sqrt", choices=sorted(CLASS_WEIGHTS),
                        help="cross-entropy class weights (SegNet's median-frequency weights, their roots, none)")
    parser.add_argument("--width", type=float, default=1.0, help="filter multiplier (1: the papers' models)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--encoder-weights", default=None,
                        help="as fcnseg train's (e.g. imagenet); default: every model from random weights")
    parser.add_argument("--held-out", default="0001TP",
                        help="CamVid sequence held out of training and validated on ('none': standard split only)")
    parser.add_argument("--timing-runs", type=int, default=10, help="timed inference calls per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1,
                        help="models trained at once, each pinned to its own equal share of the CPUs (the speed "
                             "columns are then per share, and the table says so)")
    parser.add_argument("--resume", action="store_true",
                        help="continue in an existing --out with the same recipe: models with a result keep it, "
                             "the others are trained from scratch")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one model's run, in its own process
    args = parser.parse_args(argv)
    try:
        args.image_size = tuple(int(v) for v in args.image_size.lower().split("x"))
        assert len(args.image_size) == 2 and min(args.image_size) >= 8
    except (ValueError, AssertionError):
        parser.error(f"--image-size {args.image_size}: expected WxH, e.g. 320x240")
    if args.epochs is None and args.minutes_per_model is None:
        args.minutes_per_model = 30.0
    if args.held_out.lower() == "none":
        args.held_out = None
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected at least 1")
    return args




# --- choosing the runs ----------------------------------------------------------------------------

def resolve_pairs(spec: str, log) -> list[tuple[str, str]]:
    """(model, encoder) pairs of ``--models``; models MODELS lacks and refused pairs are skipped, said."""
    from fcnseg.models import MODEL_ENCODERS, MODELS, encoder_refusal

    pairs = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        model, _, encoder = item.partition("/")
        if model not in MODELS:
            log(f"skipped {item}: fcnseg has no model {model!r} (models: {', '.join(MODELS)})")
            continue
        refusal = encoder_refusal(model, encoder or None)
        if refusal:
            log(f"skipped {item}: {refusal}")
            continue
        pairs.append((model, encoder or MODEL_ENCODERS[model][0]))
    return pairs


def held_out_support(data_dir: str, sequence: str | None, log) -> str | None:
    """``sequence`` when the camvid source takes ``val_sequences``, else None (said why)."""
    if sequence is None:
        return None
    from fcnseg import sources
    from fcnseg.errors import FcnsegError

    try:
        sources.load("camvid", data_dir, **{HELD_OUT_OPTION: sequence})
    except FcnsegError as e:
        if "no such option" in str(e) or "unexpected keyword" in str(e):
            log(f"held-out column n/a: this fcnseg's camvid source has no {HELD_OUT_OPTION} option ({e})")
            return None
        raise
    return sequence


# --- one model's run (in a worker process) --------------------------------------------------------

def train_config(spec: dict):
    from fcnseg.train import TrainConfig

    minutes = spec["minutes_per_model"]
    return TrainConfig(
        data_source="camvid", data_dir=spec["data_dir"], model=spec["model"], encoder=spec["encoder"],
        width=spec["width"], image_size=tuple(spec["image_size"]), batch_size=spec["batch_size"],
        epochs=UNBOUNDED_EPOCHS if minutes is not None else spec["epochs"], max_minutes=minutes,
        encoder_weights=spec["encoder_weights"], learning_rate=spec["lr"], optimizer="adam", schedule="onecycle",
        loss="ce",
        class_weights=CLASS_WEIGHTS[spec["weights"]], augment=True, image_every=0, seed=spec["seed"],
        run_dir=spec["run_dir"], save_every=10**9,
        mixed_precision=None if spec["precision"] == "float32" else spec["precision"],
        source_options={HELD_OUT_OPTION: spec["held_out"]} if spec["held_out"] else {})


def run_worker(spec: dict) -> dict:
    """Train, evaluate and measure one model; the row of the comparison."""
    from fcnseg.evaluate import EvaluateConfig, evaluate
    from fcnseg.train import train

    tag = f"[{spec['model']}/{spec['encoder']}]"
    log = lambda msg: print(time.strftime("%H:%M:%S"), tag, msg, flush=True)  # noqa: E731
    config = train_config(spec)
    start = time.time()
    train(config, log=log)
    train_minutes = (time.time() - start) / 60
    last = os.path.join(spec["run_dir"], "last.keras")
    # A held-out run trains on train+val minus the sequence, so CamVid's own val frames are in its
    # training set: scoring it there would measure memory. Each run gets the one honest figure.
    if spec["held_out"]:
        scores = {"held_out": evaluate(EvaluateConfig(last, "camvid", spec["data_dir"], split="val",
                                                      source_options={HELD_OUT_OPTION: spec["held_out"]}), log=log)}
    else:
        scores = {"standard": evaluate(EvaluateConfig(last, "camvid", spec["data_dir"], split="val"), log=log)}
    with open(os.path.join(spec["run_dir"], "history.json")) as f:
        history = json.load(f)
    row = {"model": spec["model"], "encoder": spec["encoder"], "train_minutes": round(train_minutes, 2),
           "epochs": len(history), "steps": history[-1]["step"] if history else 0,
           "train_images_per_s": train_rate(history, spec["batch_size"]),
           **measure(last, spec["image_size"], spec["timing_runs"])}
    for which, result in scores.items():
        row[which] = {"mean_iou": result["mean_iou"], "images": result["images"], "protocol": result["protocol"],
                      "iou": {name: c["iou"] for name, c in result["per_class"].items()}}
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def train_rate(history: list, batch_size: int) -> float | None:
    """Training images per second from train's per-epoch timings (the first epoch, which includes
    tracing the step, is left out when there are more)."""
    rows = [(r["step"] - (history[i - 1]["step"] if i else 0), r["train_seconds"]) for i, r in enumerate(history)]
    if len(rows) > 1:
        rows = rows[1:]
    steps, seconds = sum(s for s, _ in rows), sum(t for _, t in rows)
    return round(steps * batch_size / seconds, 2) if seconds > 0 else None


def measure(checkpoint_path: str, image_size, runs: int) -> dict:
    """Parameters, checkpoint MB, GFLOPs/image and inference ms/image of a checkpoint."""
    import numpy as np
    import tensorflow as tf

    import fcnseg

    model = fcnseg.load(checkpoint_path).model
    w, h = image_size
    infer = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32))
    for _ in range(2):
        infer(x).numpy()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        infer(x).numpy()
        times.append(time.perf_counter() - t0)
    return {"params": int(model.count_params()), "checkpoint_mb": round(os.path.getsize(checkpoint_path) / 1e6, 2),
            "gflops": round(gflops(model, h, w), 3), "inference_ms": round(1000 * statistics.median(times), 2)}


def gflops(model, height: int, width: int) -> float:
    """GFLOPs of one (1, height, width, 3) image: TF's profiler over the frozen inference graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, height, width, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(fn)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=options)
    return info.total_float_ops / 1e9


# --- the comparison: one worker per model, then the tables ----------------------------------------

def compare(args, log) -> dict | None:
    """Run every pair, write OUT/comparison.{json,md}; None when there is nothing to do."""
    from fcnseg.machine import cpu_name

    if not os.path.isdir(args.data_dir):
        log(f"skipped: no CamVid at {args.data_dir} (see ../shared/data/README.md)")
        return None
    pairs = resolve_pairs(args.models, log)
    if not pairs:
        log("skipped: none of --models is a model of this fcnseg")
        return None
    if os.path.exists(args.out) and not args.resume:
        raise SystemExit(f"--out {args.out} exists; choose a new folder, or --resume to continue it")
    groups = cpu_groups(args.jobs)
    held_out = held_out_support(args.data_dir, args.held_out, log)
    recipe = {key: getattr(args, key) for key in ("image_size", "batch_size", "minutes_per_model", "epochs", "lr",
                                                   "weights", "width", "precision", "seed", "timing_runs",
                                                   "encoder_weights")}
    recipe.update(data_dir=os.path.abspath(args.data_dir), held_out=held_out, optimizer="adam",
                  schedule="onecycle", loss="ce", augment=True, jobs=args.jobs, cores_per_model=len(groups[0]))
    take_out_dir(args.out, recipe)
    specs = [recipe | {"model": model, "encoder": encoder, "run_dir": os.path.join(args.out, f"{model}-{encoder}")}
             for model, encoder in pairs]
    rows = run_all(specs, groups, budget_words(args), log)
    report = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "recipe": recipe,
              "budget": budget_words(args), "models": rows}
    with open(os.path.join(args.out, "comparison.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(markdown(report) + "\n")
    return report


def cpu_groups(jobs: int) -> list[list[int]]:
    """``jobs`` equal, disjoint shares of the CPUs this process may use (one share: all of them)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if jobs > len(cpus):
        raise SystemExit(f"--jobs {jobs}: this process may use only {len(cpus)} CPUs")
    size = len(cpus) // jobs
    return [cpus[i * size:(i + 1) * size] for i in range(jobs)]


def take_out_dir(out: str, recipe: dict) -> None:
    """Make OUT with its recipe.json, or (``--resume``) check that an existing one holds the same recipe."""
    path = os.path.join(out, "recipe.json")
    if os.path.isdir(out):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            raise SystemExit(f"--resume: {path} is missing or unreadable; {out} is not a comparison to continue")
        changed = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != json.loads(json.dumps(recipe.get(k))))
        if changed:
            raise SystemExit(f"--resume: {out} was run with other settings ({', '.join(changed)}); use the same "
                             "options or a new --out")
        return
    os.makedirs(out)
    with open(path, "w") as f:
        json.dump(recipe, f, indent=1)


def run_all(specs: list[dict], groups: list[list[int]], budget: str, log) -> list[dict]:
    """Each spec's row, in order: a result a finished run left is kept; the others run in worker
    processes, at most one per CPU share at a time, each pinned to its share."""
    rows: dict[int, dict] = {}
    waiting = []
    for i, spec in enumerate(specs):
        result_path = os.path.join(spec["run_dir"], "result.json")
        if os.path.isfile(result_path):
            log(f"{spec['model']}/{spec['encoder']}: kept the finished run in {spec['run_dir']}")
            with open(result_path) as f:
                rows[i] = json.load(f)
            continue
        if os.path.exists(spec["run_dir"]):  # an interrupted run: it starts again, its budget whole
            shutil.rmtree(spec["run_dir"])
        waiting.append(i)
    free, running = list(groups), {}
    while waiting or running:
        while waiting and free:
            i, group = waiting.pop(0), free.pop(0)
            spec = specs[i]
            log(f"{spec['model']}/{spec['encoder']}: training ({budget}"
                + (f", CPUs {','.join(map(str, group))})" if len(groups) > 1 else ")"))
            pin = (lambda cpus=group: os.sched_setaffinity(0, cpus)) if len(groups) > 1 else None
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                    preexec_fn=pin)
            running[proc] = (i, group)
        proc = next((p for p in running if p.poll() is not None), None)
        if proc is None:
            time.sleep(0.5)
            continue
        i, group = running.pop(proc)
        free.append(group)
        rows[i] = worker_row(specs[i], proc.returncode, log)
    return [rows[i] for i in range(len(specs))]


def worker_row(spec: dict, returncode: int, log) -> dict:
    """The row a finished worker wrote, or a failed row."""
    result_path = os.path.join(spec["run_dir"], "result.json")
    if returncode != 0 or not os.path.isfile(result_path):
        log(f"{spec['model']}/{spec['encoder']}: failed (exit status {returncode}); left out of the table")
        return {"model": spec["model"], "encoder": spec["encoder"], "failed": f"exit status {returncode}"}
    with open(result_path) as f:
        return json.load(f)


def budget_words(args) -> str:
    if args.epochs is not None:
        return f"{args.epochs} epochs per model"
    return f"{args.minutes_per_model:g} minutes of training per model (ended by the clock)"


def shares_words(recipe: dict) -> str:
    """How many models ran at once, and on how many cores each (the speed columns depend on it)."""
    if recipe.get("jobs", 1) <= 1:
        return ""
    return (f"; {recipe['jobs']} models at a time, each pinned to {recipe['cores_per_model']} core(s) "
            "(speeds are per model's share)")


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def markdown(report: dict) -> str:
    """The comparison as Markdown: the main table, then per-class IoU (held-out, then standard val)."""
    recipe, rows = report["recipe"], [r for r in report["models"] if "failed" not in r]
    seq = recipe["held_out"]
    w, h = recipe["image_size"]
    held_label = f"mIoU held-out {seq}" if seq else "mIoU held-out (n/a)"
    start = f"from {recipe['encoder_weights']} encoder weights" if recipe.get("encoder_weights") else "from scratch"
    lines = [f"CamVid (SegNet 11 classes), trained {start} at {w}x{h}, batch {recipe['batch_size']}, Adam "
             f"one-cycle {recipe['lr']:g}, {recipe['loss']} ({recipe['weights']} class weights), "
             f"{recipe['precision']}; {report['budget']}{shares_words(recipe)}. Measured on {report['cpu']}, "
             f"{report['date']}.",
             "", f"| model | encoder | {held_label} | mIoU standard val | params (M) | checkpoint (MB) | "
                 "GFLOPs/image | train img/s | inference ms/image | peak RSS (MB) | epochs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['encoder']} | {_pct(r.get('held_out', {}).get('mean_iou'))} | "
                     f"{_pct(r.get('standard', {}).get('mean_iou'))} | {r['params'] / 1e6:.2f} | {r['checkpoint_mb']:.2f} | "
                     f"{r['gflops']:.3f} | {r['train_images_per_s'] or 'n/a'} | {r['inference_ms']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['epochs']} |")
    for r in report["models"]:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['encoder']} | failed ({r['failed']}) |")
    for which, title in (("held_out", f"held-out sequence {seq} (never trained on)"),
                         ("standard", "CamVid standard val (shares sequence 0016E5 with train)")):
        if not rows or which not in rows[0]:
            continue
        lines += ["", f"Per-class IoU, {title}:", "",
                  "| class | " + " | ".join(f"{r['model']}/{r['encoder']}" for r in rows) + " |",
                  "|---|" + "---:|" * len(rows)]
        for name in rows[0][which]["iou"]:
            lines.append(f"| {name} | " + " | ".join(_pct(r[which]["iou"][name]) for r in rows) + " |")
        lines.append("| **mIoU** | " + " | ".join(_pct(r[which]["mean_iou"]) for r in rows) + " |")
    lines += ["", "GFLOPs: TensorFlow profiler, frozen inference graph, batch 1 at the training size "
                  "(a multiply-add = 2). Train img/s: train's epoch timings without the first epoch. "
                  "Inference: batch 1, median. Peak RSS: the process that trained, evaluated and timed the model. "
                  "MB = 10^6 bytes."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    from fcnseg.errors import FcnsegError

    if args.worker:
        spec = json.loads(args.worker)
        try:
            row = run_worker(spec)
        except FcnsegError as e:
            raise SystemExit(f"Error: {e}") from None
        with open(os.path.join(spec["run_dir"], "result.json"), "w") as f:
            json.dump(nan_to_none(row), f, indent=1)
        return
    log = lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True)  # noqa: E731
    try:
        report = compare(args, log)
    except FcnsegError as e:
        raise SystemExit(f"Error: {e}") from None
    if report:
        print(markdown(report))
        log(f"wrote {os.path.join(args.out, 'comparison.md')} and comparison.json")
        if any("failed" in r for r in report["models"]):
            raise SystemExit(1)


def nan_to_none(value):
    """JSON has no NaN: a class with no pixels anywhere has IoU null."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


if __name__ == "__main__":
    main()
