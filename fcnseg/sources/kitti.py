"""KITTI Road (data_road): road or ego-lane segmentation, exactly as downloaded.

Expected tree (``--data-dir`` is the folder holding ``data_road``, or
``data_road`` itself)::

    data_road/
      training/
        image_2/      um_000000.png  umm_000000.png  uu_000000.png ...
        gt_image_2/   um_road_000000.png  umm_road_000000.png  uu_road_000000.png
                      um_lane_000000.png  (ego-lane masks exist for um only)
      testing/
        image_2/      um_000000.png ...  (no labels: split "test", for predict)

Ground truth is an RGB PNG: (255,0,255) road or lane, (255,0,0) background,
(0,0,0) outside the evaluation area (void). Decoded as the official devkit
does (evaluateRoad.py): a pixel is valid where red > 0 and road where blue > 0.

KITTI has no validation split; one is drawn from training, deterministically
from the seed.

Options (``--source-option key=value``):
    task           road (um/umm/uu road masks, default) or lane (um ego-lane)
    val_fraction   share of training images held out for validation (default 0.2)
"""

from __future__ import annotations

import dataclasses
import os
import re

from fcnseg.classes import table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, fraction_option, option_value, split_by_fraction

# name, id, train id, colour (the ground-truth colours themselves)
CLASSES = table(
    [
        ("background", 0, 0, (255, 0, 0)),
        ("road", 1, 1, (255, 0, 255)),
        ("void", 255, 255, (0, 0, 0)),
    ],
    ignore_label=255,
)
# The lane task is the same table with class 1 named for what it marks.
LANE_CLASSES = dataclasses.replace(
    CLASSES, rows=tuple(dataclasses.replace(r, name="lane") if r.name == "road" else r for r in CLASSES.rows)
)
TASK_CATEGORIES = {"road": ("um", "umm", "uu"), "lane": ("um",)}
_IMAGE_NAME = re.compile(r"^(um|umm|uu)_(\d+)\.png$")


class KittiRoad(FileSource):
    name = "kitti"
    classes = CLASSES
    default_image_size = (1248, 384)  # images are ~1242x375; both multiples of 32 for FCN/LinkNet
    label_format = "color"

    def __init__(self, data_dir, image_size=None, seed: int = 0, task: str = "road",
                 val_fraction: float = 0.2, *, collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        self.task = option_value(self.name, "task", task, tuple(TASK_CATEGORIES))
        self.val_fraction = fraction_option(self.name, "val_fraction", val_fraction)
        self.classes = LANE_CLASSES if self.task == "lane" else CLASSES
        nested = os.path.join(self.data_dir, "data_road")
        self.root = nested if os.path.isdir(nested) else self.data_dir
        self._split = None

    def _folder(self, *parts: str) -> str:
        path = os.path.join(self.root, *parts)
        if not os.path.isdir(path):
            raise FcnsegError(f"kitti: expected folder {path} (KITTI data_road layout) does not exist")
        return path

    def labelled(self) -> list[Sample]:
        """Every training image of the task's categories with its mask."""
        image_dir, gt_dir = self._folder("training", "image_2"), self._folder("training", "gt_image_2")
        cats = TASK_CATEGORIES[self.task]
        samples, expected = [], set()
        for f in sorted(os.listdir(image_dir)):
            m = _IMAGE_NAME.match(f)
            if not m or m.group(1) not in cats:
                continue
            gt_name = f"{m.group(1)}_{self.task}_{m.group(2)}.png"
            gt = os.path.join(gt_dir, gt_name)
            if not os.path.isfile(gt):
                self.report_orphan(os.path.join(image_dir, f),
                                   f"kitti: image {os.path.join(image_dir, f)} has no {self.task} label {gt}"
                                   + (" (this folder may hold lane masks only: try task=lane)"
                                      if self.task == "road" else ""))
                continue
            expected.add(gt_name)
            samples.append(Sample(os.path.join(image_dir, f), gt))
        pattern = re.compile(rf"^({'|'.join(cats)})_{self.task}_\d+\.png$")
        orphans = [f for f in sorted(os.listdir(gt_dir)) if pattern.match(f) and f not in expected]
        for orphan in orphans:
            self.report_orphan(os.path.join(gt_dir, orphan),
                               f"kitti: label {os.path.join(gt_dir, orphan)} has no image in {image_dir}")
        if not samples:
            raise FcnsegError(f"kitti: no {'/'.join(cats)}_*.png images in {image_dir}")
        return samples

    def samples(self, split: str) -> list[Sample]:
        if split == "test":
            image_dir = self._folder("testing", "image_2")
            return [Sample(os.path.join(image_dir, f), None) for f in sorted(os.listdir(image_dir))
                    if _IMAGE_NAME.match(f)]
        if self._split is None:
            self._split = split_by_fraction(self.labelled(), self.val_fraction, self.seed)
        return self._split[split]

    def label_decoder(self):
        import tensorflow as tf

        road, background, void = 1, 0, self.ignore_label

        def decode(path):
            rgb = tf.io.decode_png(tf.io.read_file(path), channels=3)
            # As the devkit: the evaluation area is red > 0, road is blue > 0 inside it.
            # Deciding per channel, not by exact colour, keeps any anti-aliased or
            # re-saved mask decodable the way the benchmark scores it.
            valid, is_road = rgb[..., 0] > 0, rgb[..., 2] > 0
            return tf.where(valid, tf.where(is_road, road, background), void)

        return decode


def make_source(data_dir, image_size=None, seed: int = 0, task: str = "road",
                val_fraction: float = 0.2, *, collect_orphans: bool = False) -> KittiRoad:
    """Build the KITTI Road source (see the module docstring for the options)."""
    return KittiRoad(data_dir, image_size, seed, task=task, val_fraction=val_fraction,
                     collect_orphans=collect_orphans)
