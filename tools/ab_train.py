"""Training-step time of two fcnseg checkouts, side by side: A, B, A, B, ...

A change that touches the training loop, the models, the losses or the
optimizers is measured like this before it lands, because a shared machine's
speed drifts by up to 1.8x within minutes and only runs interleaved in one
sitting can be compared. Each run is a real ``fcnseg train`` on the synthetic
source (so the whole loop is timed: pipeline, step, logging, state saves) in a
fresh process with the checkout first on ``PYTHONPATH``; the figure is the
second epoch's training seconds per step (the first epoch pays tracing).

    python tools/ab_train.py --a ../old-checkout --b . --model linknet --size 480x360 --batch 8
    python tools/ab_train.py --a ../old-checkout --b . --model fcn8s --size 480x360 --batch 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def seconds_per_step(checkout: str, args: argparse.Namespace, run_dir: str) -> float:
    """One ``fcnseg train`` run of ``checkout``; its second epoch's training seconds per step."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", "--model", args.model, "--image-size", args.size,
           "--batch-size", str(args.batch), "--steps-per-epoch", str(args.steps), "--epochs", "2",
           "--val-steps", "1", "--image-every", "0", "--save-every", "100000", "--run-dir", run_dir,
           "--source-option", f"train_size={args.batch * args.steps}", "--source-option", "val_size=2"]
    if args.extra:
        cmd += args.extra.split()
    done = subprocess.run(cmd, cwd=os.path.abspath(checkout), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{checkout}: fcnseg train failed: {tail}")
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    return history[-1]["train_seconds"] / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="checkout A (e.g. the commit before a change)")
    parser.add_argument("--b", required=True, help="checkout B (e.g. the change)")
    parser.add_argument("--model", default="linknet")
    parser.add_argument("--size", default="480x360", help="WxH")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="steps per epoch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--extra", default="", help="more `fcnseg train` options for both, e.g. '--width 0.5'")
    parser.add_argument("--json", default=None, help="write the samples here")
    args = parser.parse_args()

    samples: dict[str, list[float]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="fcnseg-ab-") as tmp:
        for r in range(args.rounds):
            for key in ("a", "b"):
                s = seconds_per_step(getattr(args, key), args, os.path.join(tmp, f"{key}{r}"))
                samples[key].append(s)
                print(f"round {r + 1} {key.upper()} {getattr(args, key)}: {s:.3f} s/step", flush=True)
    a, b = statistics.median(samples["a"]), statistics.median(samples["b"])
    report = {"cpu": cpu_name(), "settings": vars(args), "samples_s_per_step": samples,
              "median_a": a, "median_b": b, "b_speed_vs_a": a / b}
    print(f"{cpu_name()}: {args.model} {args.size} batch {args.batch}: A {a:.3f} s/step, B {b:.3f} s/step, "
          f"B is {a / b:.2f}x A's speed (medians of {args.rounds} interleaved rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
