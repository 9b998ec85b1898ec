"""TensorBoard logging for a run: scalars by name (per-class IoU under class
names, ``iou/road``), image overlays of fixed validation samples, the confusion
matrix as an image, and the run's hyperparameters for the HParams dashboard."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from fcnseg import overlay
from fcnseg.errors import FcnsegError


class Writers:
    """Event-file writers for ``RUN_DIR/logs/train`` and ``RUN_DIR/logs/val``.

    ``enabled=False`` (non-chief workers of a multi-worker run) writes nothing.
    """

    def __init__(self, run_dir: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.log_dir = os.path.join(run_dir, "logs")
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "train"))
            self.val = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "val"))

    def scalars(self, which: str, step: int, values: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        with (self.train if which == "train" else self.val).as_default(step=step):
            for name, value in values.items():
                if value is not None:
                    tf.summary.scalar(name, value)

    def epoch(self, step: int, scores: dict, class_names, val_loss: float | None = None) -> None:
        values = {"loss": val_loss, "mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
                  "mean_accuracy": scores["mean_accuracy"]}
        for name in class_names:
            values[f"iou/{name}"] = scores["per_class"][name]["iou"]
        self.scalars("val", step, values)

    def images(self, step: int, images: np.ndarray, truths: np.ndarray, preds: np.ndarray, classes,
               cm: np.ndarray) -> None:
        """Input | truth | prediction panels and the confusion matrix."""
        if not self.enabled:
            return
        palette = classes.palette()
        panels = np.stack([
            overlay.side_by_side(img, t, p, palette, classes.class_names, classes.label_colors,
                                 classes.ignore_label)
            for img, t, p in zip(images, truths, preds)
        ])
        with self.val.as_default(step=step):
            tf.summary.image("overlays/input_truth_prediction", panels, max_outputs=len(panels))
            tf.summary.image("confusion_matrix", overlay.confusion_image(cm, classes.class_names)[None])
        self.val.flush()

    def hparams(self, hparams: dict) -> None:
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import api as hp

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        with self.val.as_default():
            hp.hparams(clean)

    def close(self, quiet: bool = False) -> None:
        """Flush and close; ``quiet`` ignores a failure (used while another error propagates)."""
        if not self.enabled:
            return
        try:
            self.train.close()
            self.val.close()
        except (tf.errors.OpError, OSError) as e:
            if not quiet:
                reason = str(getattr(e, "strerror", None) or getattr(e, "message", e)).strip().splitlines()[0]
                raise FcnsegError(f"{self.log_dir}: could not write the TensorBoard events: {reason}") from None
