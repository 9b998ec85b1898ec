"""LinkNet-ResNet18 from scratch on CamVid (SegNet 11 classes) in a fixed wall-clock budget.

    python tools/camvid_recipe.py [--minutes 60] [--data-dir ../shared/data/camvid] [--out runs/camvid-recipe]
                                  [--val-sequences 0001TP]

What it does:

1. trains until the clock says stop: a practically endless epoch count with
   ``max_minutes`` = the budget (less the seconds spent starting up), so the
   run ends when the budget does, never early on an estimate; the one-cycle
   schedule's progress is the larger of steps done and wall-clock spent, so the
   learning rate reaches the end of its cycle when the budget does, however
   fast the shared machine happens to be;
2. validates during training, after every ``--passes-per-validation`` passes
   over the training frames (default 3: each validation costs about 7 s of a
   2-core budget), on the held-out sequences (``--val-sequences``,
   default 0001TP: the camvid source's ``val_sequences`` option; train is then
   every train+val frame of the other sequences, so 0016E5's val frames are
   trained on); ``--val-sequences ''`` trains on the standard train split;
3. evaluates ``last.keras`` (not the val-selected best.keras, so the figure is
   not tuned on val) at label resolution (480x360: the model runs at the
   training size and its probabilities are resized back) on two splits, each
   labelled: "held-out" (frames of the held-out sequences: streets training
   never saw) and "standard val" (all 0016E5, a street train also holds; with
   held-out sequences its frames were trained on, so it measures fit, not
   generalisation). Writes ``OUT/val_table.md`` (per-class IoU of both) and
   ``OUT/val_scores.json``, with the CPU model and the steps trained.

Choices (see README "CamVid from scratch" and docs/benchmarks.md for the
figures behind them; the square-root class weights were chosen on the LinkNet
head that was fixed in 0b7bf1c; on the held-out sequence at the 4e-3 peak they
scored 47.4 mIoU against 44.5 with none; the peak learning rate 4e-3 scored
47.4 against 46.1 at 2e-3 and 47.0 at 8e-3, 60 minutes on 2 cores each; batch
4 with 448x320 crops 44.6; no weight decay by default: ``--weight-decay 0.05``
scored 47.6 and 46.6 with two seeds): random 320x240 crops
of the 480x360 frames at their stored scale (``--native-crops``, the default),
which beat whole frames shrunk to 320x240 on the held-out dusk sequence, 29.6
against 27.3 mIoU, in a side-by-side 45-minute run on one core each (2-core
AMD EPYC, float32; the shrunk frames scored 69.4 against 66.9 on the standard
val, whose frames both trained on); the shrunk 320x240 frames had reached 61.8
standard-val mIoU in 30 minutes and 64.6 in 60 on the standard split; the
strong augmentation preset (``--augment-preset strong``: wider brightness,
contrast, saturation and gamma jitter), which took the held-out dusk sequence
from 25.6 to 33.1 mIoU (raw weights; 26.5 to 28.3 with ``--ema 0.995``) in a
side-by-side 60-minute run (one core each, same machine; standard val 69.5 ->
63.1: less fit to the daylight frames); no weight averaging by default
(``--ema 0.995`` moved the held-out figure +0.9 in one arm and -4.8 in the
other); cross-entropy plus soft Dice (``--loss ce+dice``), which took the held-out
dusk sequence from 33.1 (cross-entropy alone, the strong-jitter run above) to
35.4 mIoU in a 60-minute run on one core of the same machine (standard val
66.4; ``--loss ce+lovasz``, Lovász-softmax, reached 28.3: its per-class sort of
every pixel cost a third of the steps, 810 against 1183); per-image input
normalisation (``--input-norm per-image``: each image's per-channel mean and
std moved onto ImageNet's inside the model), which took the held-out dusk
sequence to 38.9 mIoU against 29.5 for the same settings without it in a
side-by-side 60-minute run (one core each; 35.4 in the earlier ce+dice run;
standard val 69.7 against 63.8); augmentation at all
(random scale 0.75-1.25, crop, flip, photometric jitter) because
val shares a sequence with train and only augmentation makes the figure mean
something for new streets; cross-entropy weighted by the square roots of the
SegNet authors' median-frequency weights, without the full weights' 53x
spread, which (on the broken head) made the model paint buildings and trees
as signs (``--weights segnet``);
Adam with a one-cycle schedule that follows the clock; batch
8 (BatchNorm statistics stay sane, and per-image cost is lower than at batch
4). Mixed bfloat16 where the CPU has bfloat16 units, AMX or AVX512_BF16
(``--precision auto``, the default): with the fused batch norm it trains
LinkNet about 2x faster than fp32 on the idle AMX Xeon, where the same 14
epochs reached the same val mIoU in both precisions, and 1.64x faster on the
2-core AMD EPYC (Zen 4, AVX512_BF16, no AMX), where 60 minutes bought 5356
and 5386 steps against fp32's 3463 and 51.3 and 49.6 held-out mIoU (seeds 0
and 1) against 47.4 (README "CamVid from scratch"); fp32 elsewhere (oneDNN has
no bfloat16 matmul on AVX2-only CPUs). No XLA: ``--jit`` measured 1.27x faster on a
busy machine but 0.63x on an idle one (README "Benchmarks"), and XLA cannot
compile the clock read that lets the one-cycle schedule follow wall-clock,
which a fixed-budget run relies on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"

# SegNet (Badrinarayanan et al.) median-frequency weights for classes 0..10 of this split.
SEGNET_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614)
# Their square roots: a 7x spread between sign and building instead of 53x. In an hour the full
# weights left the model painting buildings and trees as sign and pedestrian (README).
CLASS_WEIGHTS = {"segnet": SEGNET_WEIGHTS, "sqrt": tuple(round(w ** 0.5, 4) for w in SEGNET_WEIGHTS), "none": None}


NATIVE_SIZE = (480, 360)  # CamVid's stored frames
# Epochs enough never to end the run before the clock does (CamVid: 46 steps per epoch at batch 8).
ENDLESS_EPOCHS = 100_000


def recipe_config(args, run_dir: str, epochs: int, steps_per_epoch: int | None, max_minutes: float | None):
    from fcnseg.train import TrainConfig

    sequences = getattr(args, "val_sequences", "")
    options = {"val_sequences": sequences} if sequences else {}
    image_size = (args.width, args.height)
    if getattr(args, "native_crops", False):  # train on --width x --height windows of the stored images
        options["train_crop"] = f"{args.width}x{args.height}"
        image_size = NATIVE_SIZE
    return TrainConfig(
        data_source="camvid", data_dir=args.data_dir, model="linknet", encoder="resnet18",
        width=getattr(args, "model_width", 1.0), source_options=options, image_size=image_size, epochs=epochs, batch_size=args.batch_size,
        steps_per_epoch=steps_per_epoch, learning_rate=args.lr, schedule="onecycle",
        weight_decay=getattr(args, "weight_decay", 0.0),
        loss=getattr(args, "loss", "ce+dice"), class_weights=CLASS_WEIGHTS[args.weights], augment=True, image_every=0, seed=args.seed,
        augment_preset=getattr(args, "augment_preset", "strong"), input_norm=getattr(args, "input_norm", "per-image"),
        run_dir=run_dir, save_every=10**9, max_minutes=max_minutes,
        mixed_precision=None if args.precision == "float32" else args.precision, ema=getattr(args, "ema", 0.0),
    )


def cpu_model() -> str:
    """The CPU's model name, the cores this process may use and its bfloat16 units (every figure names them)."""
    from fcnseg.machine import cpu_bf16_units, cpu_name

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ", ".join((cpu_name(), f"{cores} cores") + cpu_bf16_units())


def resolve_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    import tensorflow as tf

    from fcnseg.machine import cpu_bf16_units

    return "bfloat16" if cpu_bf16_units() or tf.config.list_physical_devices("GPU") else "float32"


def input_norms() -> tuple:
    from fcnseg.models.encoders import INPUT_NORMS

    return tuple(INPUT_NORMS)


def augment_presets() -> tuple:
    from fcnseg.data import AUGMENTS

    return tuple(AUGMENTS)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget for training")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default="runs/camvid-recipe", help="output folder (must not exist yet)")
    parser.add_argument("--val-sequences", default="0001TP",
                        help="sequences held out for validation (comma list; '' = the standard train/val split)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-3,
                        help="one-cycle peak learning rate (Adam); 4e-3 scored above 2e-3 and 8e-3 held-out "
                             "(docs/benchmarks.md)")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="fcnseg train --weight-decay: decoupled weight decay (AdamW) on every weight; "
                             "0 = plain Adam (0.05 scored 47.6 and 46.6 held-out with two seeds against 47.4 "
                             "without: docs/benchmarks.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="sqrt", choices=sorted(CLASS_WEIGHTS),
                        help="cross-entropy class weights: SegNet's median-frequency weights, their square roots, or none")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: mixed bfloat16 on a GPU or a CPU with AMX or AVX512_BF16, else float32")
    parser.add_argument("--native-crops", action=argparse.BooleanOptionalAction, default=True,
                        help="train on random --width x --height crops of the 480x360 frames at their stored "
                             "scale (thin classes keep their pixels; validation and inference then run whole "
                             "480x360 frames), or with --no-native-crops on whole frames shrunk to that size")
    parser.add_argument("--augment-preset", default="strong", choices=sorted(augment_presets()),
                        help="fcnseg train --augment-preset: strong (the recipe's default) widens the "
                             "photometric jitter; default is fcnseg train's own; strong-wide adds a random scale "
                             "of 0.5-2.0 (measured below strong here: docs/benchmarks.md)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="fcnseg train --ema: evaluate a moving average of the weights (0 = off); the raw "
                             "weights of the same run are scored on the held-out split too, for comparison")
    parser.add_argument("--loss", default="ce+dice",
                        help="fcnseg train --loss (default ce+dice; the class weights apply to ce and focal)")
    parser.add_argument("--input-norm", default="per-image", choices=input_norms(),
                        help="fcnseg train --input-norm: per-image (the recipe's default) moves each image's "
                             "colour statistics onto ImageNet's inside the model; encoder leaves the image as is")
    parser.add_argument("--passes-per-validation", type=int, default=3, metavar="K",
                        help="training passes over the frames between two validations (an fcnseg epoch of K "
                             "passes); each validation of the held-out frames takes time from the budget")
    parser.add_argument("--model-width", type=float, default=1.0,
                        help="filter-count multiplier (1.0 = LinkNet-ResNet18; smaller for quick checks)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    start = time.time()
    args = parse_args(argv)
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"no CamVid at {args.data_dir} (see ../shared/data/README.md)")
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; choose a new --out")
    log = lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True)  # noqa: E731
    args.precision = resolve_precision(args.precision)
    cpu = cpu_model()
    log(f"precision: {args.precision}; CPU: {cpu}")

    from fcnseg.errors import FcnsegError
    from fcnseg.losses import parse_spec
    from fcnseg.options import validate
    from fcnseg.train import train

    if args.passes_per_validation < 1:
        raise SystemExit(f"Error: --passes-per-validation {args.passes_per_validation}: must be at least 1")
    run_dir = os.path.join(args.out, "train")
    try:  # an unknown --val-sequences or --loss, an --ema out of range: one line, before OUT is made
        parse_spec(args.loss)
        steps_per_pass = train_steps_per_epoch(args.data_dir, args.batch_size, args.val_sequences)
        left_min = args.minutes - (time.time() - start) / 60
        config = recipe_config(args, run_dir, ENDLESS_EPOCHS, steps_per_pass * args.passes_per_validation, left_min)
        validate(config)
    except FcnsegError as e:
        raise SystemExit(f"Error: {e}") from None
    os.makedirs(args.out)
    train(config, log=log)
    trained_min = (time.time() - start) / 60
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    log(f"training done after {trained_min:.2f} min (budget {args.minutes:g}): {history[-1]['step']} steps, "
        f"{len(history)} epoch(s)")

    last = os.path.join(run_dir, "last.keras")
    results = evaluate_splits(args, last, log)
    summary = {"budget_minutes": args.minutes, "wall_minutes_training": round(trained_min, 2),
               "steps": history[-1]["step"], "epochs": len(history), "steps_per_pass": steps_per_pass,
               "steps_per_epoch": config.steps_per_epoch,
               "cpu": cpu, "precision": args.precision,
               "config": dataclasses.asdict(config), **results}
    with open(os.path.join(args.out, "val_scores.json"), "w") as f:
        json.dump(summary, f, indent=1)
    report = "\n\n".join(f"**{label}** ({cpu}, {args.precision}, {args.minutes:g} min):\n\n{markdown_table(r)}"
                          for label, r in ((split_label(args, key), results[key]) for key in results))
    with open(os.path.join(args.out, "val_table.md"), "w") as f:
        f.write(report + "\n")
    print(report)


def split_label(args, key: str) -> str:
    """What each figure measures, written beside it."""
    if key == "held_out":
        return f"held-out sequences {args.val_sequences} (new streets)"
    if key == "held_out_flip":
        return f"held-out sequences {args.val_sequences}, same checkpoint with flip averaging (evaluate --flip)"
    if key == "held_out_raw":
        return f"held-out sequences {args.val_sequences}, the same run's raw weights (last_raw.keras, no --ema)"
    if args.val_sequences:
        return "standard val (0016E5; its frames were trained on with held-out sequences)"
    return "standard val (0016E5, a street train also holds)"


def train_steps_per_epoch(data_dir: str, batch_size: int, val_sequences: str = "") -> int:
    """Steps of one pass over the train split, as ``fcnseg train`` counts them."""
    from fcnseg import sources

    options = {"val_sequences": val_sequences} if val_sequences else {}
    return max(1, math.ceil(sources.load("camvid", data_dir, **options).split_size("train") / batch_size))


def evaluate_splits(args, checkpoint: str, log) -> dict:
    """{"held_out": ..., "standard_val": ...} (held_out only with --val-sequences), each by ``fcnseg
    evaluate``'s protocol (the model at its training size, probabilities resized bilinearly to the
    labels' 480x360); also written to ``OUT/evaluate_<split>.json``. On the held-out split, the
    same checkpoint with flip averaging ("held_out_flip") and, with --ema, the run's raw weights
    ("held_out_raw") too: each a before/after from one run."""
    results = {}
    if getattr(args, "val_sequences", ""):
        held_out = {"val_sequences": args.val_sequences}
        results["held_out"] = evaluate_val(args, checkpoint, log, held_out, "held_out")
        results["held_out_flip"] = evaluate_val(args, checkpoint, log, held_out, "held_out_flip", flip=True)
        raw = os.path.join(os.path.dirname(checkpoint), "last_raw.keras")
        if getattr(args, "ema", 0.0) and os.path.exists(raw):
            results["held_out_raw"] = evaluate_val(args, raw, log, held_out, "held_out_raw")
    results["standard_val"] = evaluate_val(args, checkpoint, log, {}, "standard_val")
    return results


def evaluate_val(args, checkpoint: str, log, source_options: dict | None = None, name: str = "",
                 flip: bool = False) -> dict:
    """Val scores by ``fcnseg evaluate``'s protocol; also written to ``OUT/evaluate[_name].json``."""
    from fcnseg.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(checkpoint, "camvid", args.data_dir, source_options=source_options or {}, split="val",
                            flip=flip, output=os.path.join(args.out, f"evaluate{'_' + name if name else ''}.json"))
    return evaluate(config, log=log)


def markdown_table(result: dict) -> str:
    rows = ["| class | IoU | accuracy |", "|---|---:|---:|"]
    for name, c in result["per_class"].items():
        iou, acc = c.get("iou"), c.get("accuracy")
        rows.append(f"| {name} | {'' if iou is None else f'{100 * iou:.1f}'} | "
                    f"{'' if acc is None else f'{100 * acc:.1f}'} |")
    rows.append(f"| **mean IoU** | **{100 * result['mean_iou']:.1f}** | |")
    if "pixel_accuracy" in result:
        rows.append(f"| pixel accuracy | | {100 * result['pixel_accuracy']:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
