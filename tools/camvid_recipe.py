"""LinkNet-ResNet18 from scratch on CamVid (SegNet 11 classes) in a fixed wall-clock budget.

    python tools/camvid_recipe.py [--minutes 60] [--data-dir ../shared/data/camvid] [--out runs/camvid-recipe]

What it does, all inside the budget:

1. a timing pilot (2 short epochs of 8 steps, full validation) measures the
   seconds per training step and per validation pass on this machine now;
2. sizes the run from it (1.5x the epochs that fit in the rest of the budget)
   and trains with ``max_minutes`` = the rest of the budget; the one-cycle
   schedule's progress is the larger of steps done and wall-clock spent, so
   the learning rate reaches the end of its cycle when the budget does, however
   fast the shared machine happens to be;
3. trains, then evaluates ``last.keras`` (not the val-selected best.keras, so
   the figure is not tuned on val) on val at label resolution (480x360:
   the model runs at the training size and its probabilities are resized
   back) and writes ``OUT/val_table.md`` and ``OUT/val_scores.json``.

Choices (see README "CamVid from scratch" for the figures behind them;
weights, learning rate and augmentation were chosen on the LinkNet head that
was fixed in 0b7bf1c and not searched again since): 320x240 by default, which
on the fixed model reached 61.8 val mIoU in 30 minutes and 64.6 in 60
(a 14-epoch run at 240x180 reached 45.0; full resolution, 480x360, has 2.25x
the pixels of 320x240, so the budget buys fewer than half the epochs, and was
not tried); the default
augmentation (random scale 0.75-1.25, crop, flip, photometric jitter) because
val shares a sequence with train and only augmentation makes the figure mean
something for new streets; cross-entropy weighted by the square roots of the
SegNet authors' median-frequency weights, without the full weights' 53x
spread, which (on the broken head) made the model paint buildings and trees
as signs (``--weights segnet``);
Adam with a one-cycle schedule sized to the measured number of steps; batch
8 (BatchNorm statistics stay sane, and per-image cost is lower than at batch
4). Mixed bfloat16 where the CPU has AMX (``--precision auto``, the default):
with the fused batch norm it trains LinkNet about 2x faster than fp32 on the
idle Xeon, and the same 14 epochs reached the same val mIoU in both precisions
(README "CamVid from scratch"); elsewhere fp32, because on the AMD EPYC (AVX-512
BF16, no AMX) bfloat16 measured slower than fp32 before the fused batch norm
and has not been measured since. No XLA: ``--jit`` measured 1.27x faster on a
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


def recipe_config(args, run_dir: str, epochs: int, steps_per_epoch: int | None, max_minutes: float | None):
    from fcnseg.train import TrainConfig

    return TrainConfig(
        data_source="camvid", data_dir=args.data_dir, model="linknet", encoder="resnet18",
        image_size=(args.width, args.height), epochs=epochs, batch_size=args.batch_size,
        steps_per_epoch=steps_per_epoch, learning_rate=args.lr, schedule="onecycle",
        loss="ce", class_weights=CLASS_WEIGHTS[args.weights], augment=True, image_every=0, seed=args.seed,
        run_dir=run_dir, save_every=10**9, max_minutes=max_minutes,
        mixed_precision=None if args.precision == "float32" else args.precision,
    )


def cpu_has_amx() -> bool:
    """True where /proc/cpuinfo lists AMX bfloat16 tiles (Intel Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def resolve_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    import tensorflow as tf

    return "bfloat16" if cpu_has_amx() or tf.config.list_physical_devices("GPU") else "float32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget for pilot + training")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default="runs/camvid-recipe", help="output folder (must not exist yet)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="one-cycle peak learning rate (Adam)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="sqrt", choices=sorted(CLASS_WEIGHTS),
                        help="cross-entropy class weights: SegNet's median-frequency weights, their square roots, or none")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: mixed bfloat16 on a GPU or a CPU with AMX, else float32")
    args = parser.parse_args()
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"no CamVid at {args.data_dir} (see ../shared/data/README.md)")
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; choose a new --out")
    os.makedirs(args.out)
    log = lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True)  # noqa: E731
    args.precision = resolve_precision(args.precision)
    log(f"precision: {args.precision}")

    from fcnseg.train import train

    start = time.time()
    pilot_steps = 8
    pilot_dir = os.path.join(args.out, "pilot")
    train(recipe_config(args, pilot_dir, 2, pilot_steps, None), log=log)
    with open(os.path.join(pilot_dir, "history.json")) as f:
        second = json.load(f)[-1]  # epoch 2: compiled, so it shows steady-state cost
    step_s = second["train_seconds"] / pilot_steps
    val_s = second["seconds"] - second["train_seconds"]
    steps_per_epoch = train_steps_per_epoch(args.data_dir, args.batch_size)
    epoch_s = steps_per_epoch * step_s + val_s
    left_s = args.minutes * 60 - (time.time() - start)
    # 1.5x what the pilot predicts: the machine is shared, so the pilot's figure is noisy. The
    # one-cycle schedule follows wall-clock whenever that runs ahead of the steps, and
    # max_minutes stops the run, so over-planning costs nothing while under-planning would end
    # the cycle early and leave budget unused.
    epochs = max(1, math.ceil(1.5 * left_s / epoch_s))
    log(f"pilot: {step_s:.2f} s/step, {val_s:.1f} s validation+save, epoch ~{epoch_s:.0f} s; "
        f"{left_s / 60:.1f} min left -> {epochs} epochs")

    run_dir = os.path.join(args.out, "train")
    config = recipe_config(args, run_dir, epochs, None, left_s / 60)
    train(config, log=log)
    trained_min = (time.time() - start) / 60
    log(f"training done after {trained_min:.1f} min (budget {args.minutes:g})")

    result = evaluate_val(args, os.path.join(run_dir, "last.keras"), log)
    summary = {"budget_minutes": args.minutes, "wall_minutes_pilot_and_training": round(trained_min, 1),
               "epochs": epochs, "pilot_step_s": round(step_s, 3), "config": dataclasses.asdict(config),
               "val": result}
    with open(os.path.join(args.out, "val_scores.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = markdown_table(result)
    with open(os.path.join(args.out, "val_table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def train_steps_per_epoch(data_dir: str, batch_size: int) -> int:
    """Steps of one pass over CamVid's train split, as ``fcnseg train`` counts them."""
    from fcnseg import sources

    return max(1, math.ceil(sources.load("camvid", data_dir).split_size("train") / batch_size))


def evaluate_val(args, checkpoint: str, log) -> dict:
    """Val scores by ``fcnseg evaluate``'s protocol (the model at its training size, probabilities
    resized bilinearly to the labels' 480x360); also written to ``OUT/evaluate.json``."""
    from fcnseg.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(checkpoint, "camvid", args.data_dir, split="val",
                            output=os.path.join(args.out, "evaluate.json"))
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
