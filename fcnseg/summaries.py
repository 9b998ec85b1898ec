"""TensorBoard logging: scalars by name, per-class IoU under class names."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf


class Writers:
    """Event-file writers for ``RUN_DIR/logs/train`` and ``RUN_DIR/logs/val``."""

    def __init__(self, run_dir: str) -> None:
        self.train = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "train"))
        self.val = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "val"))

    def scalars(self, which: str, step: int, values: dict[str, float]) -> None:
        writer = self.train if which == "train" else self.val
        with writer.as_default(step=step):
            for name, value in values.items():
                if value is not None:
                    tf.summary.scalar(name, value)

    def epoch(self, step: int, scores: dict, class_names, cm: np.ndarray) -> None:
        values = {"mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
                  "mean_accuracy": scores["mean_accuracy"]}
        for name in class_names:
            iou = scores["per_class"][name]["iou"]
            values[f"iou/{name}"] = iou
        self.scalars("val", step, values)
        self.val.flush()

    def close(self) -> None:
        self.train.close()
        self.val.close()
