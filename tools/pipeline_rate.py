"""Images/s of the CamVid input pipeline: decode + augment at 480x360.

Runs ``camvid`` ``train_dataset(batch)`` (shuffle, parallel PNG decode,
random scale/crop/flip, photometric jitter) with nothing consuming it, so the
rate is what the pipeline alone can feed a training step. Prints it and
writes JSON for the benchmark that compares it with the model's step rate::

    python tools/pipeline_rate.py [--data-dir ../shared/data/camvid] [--out pipeline_rate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


def measure(data_dir: str, batch_size: int = 8, batches: int = 40, warmup: int = 5) -> dict:
    import tensorflow as tf

    from fcnseg import sources

    source = sources.load("camvid", data_dir, image_size=(480, 360))
    it = iter(source.train_dataset(batch_size, drop_remainder=True).repeat())
    for _ in range(warmup):  # thread pools, autotune and file cache settle
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
    images.numpy()
    seconds = time.perf_counter() - start
    return {"images_per_s": round(batches * batch_size / seconds, 1), "seconds": round(seconds, 2),
            "batch_size": batch_size, "batches": batches, "image_size": [480, 360],
            "cpu_count": os.cpu_count(), "tensorflow": tf.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", default="pipeline_rate.json")
    args = parser.parse_args()
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"no CamVid at {args.data_dir} (see ../shared/data/README.md)")
    result = measure(args.data_dir, args.batch_size, args.batches)
    print(f"CamVid 480x360 decode + augment: {result['images_per_s']} images/s "
          f"({result['batches']} batches of {result['batch_size']}, {result['cpu_count']} CPUs)")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
