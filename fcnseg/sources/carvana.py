"""Carvana Image Masking Challenge (Kaggle, 2017): binary car masks.

Expected tree (``--data-dir``)::

    train/         <id>_01.jpg ... <id>_16.jpg        1918x1280, 16 views of each car
    train_masks/   <id>_01_mask.gif ...               0/1 (or 0/255) masks as GIF
    test/          <id>_01.jpg ...                    (no masks: split "test", for predict)

Masks are GIFs, which TensorFlow (training) and ``fcnseg.imageio`` (check-labels,
evaluate) decode to their palette colours; a mask stored as 0/1 or as 0/255
reads as background / car either way.

The validation split is drawn by car id, not by image: all 16 views of a car
land in the same split, otherwise the model is scored on cars it has seen from
another angle and the score leaks.

Options (``--source-option key=value``):
    val_fraction   share of the cars held out for validation (default 0.2)
"""

from __future__ import annotations

import os
import re

import numpy as np

from fcnseg.classes import table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, fraction_option, pair_by_stem

# name, id in the mask, train id, colour; masks hold 0/1 or 0/255 (the first car row names the class)
CLASSES = table([("background", 0, 0, (0, 0, 0)), ("car", 255, 1, (255, 255, 255)),
                 ("car", 1, 1, (255, 255, 255))])
_VIEW = re.compile(r"^(.+)_(\d+)$")


def car_id(path: str) -> str:
    """``<id>`` of ``.../<id>_<NN>.jpg``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _VIEW.match(stem)
    return m.group(1) if m else stem


def split_by_car(samples: list[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Hold out whole cars: a seeded permutation of the sorted car ids, at least one car each side
    when there are two or more."""
    cars = sorted({car_id(s.image) for s in samples})
    n_val = min(max(round(len(cars) * val_fraction), 1 if val_fraction > 0 else 0), len(cars) - 1)
    held = {cars[i] for i in np.random.default_rng(seed).permutation(len(cars))[: max(n_val, 0)]}
    return {"train": [s for s in samples if car_id(s.image) not in held],
            "val": [s for s in samples if car_id(s.image) in held]}


class Carvana(FileSource):
    name = "carvana"
    classes = CLASSES
    default_image_size = (960, 640)  # half of 1918x1280, multiples of 32
    label_format = "index"

    def __init__(self, data_dir, image_size=None, seed: int = 0, val_fraction: float = 0.2, *,
                 collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        self.val_fraction = fraction_option(self.name, "val_fraction", val_fraction)
        self._split: dict[str, list[Sample]] | None = None

    def _folder(self, name: str) -> str:
        path = os.path.join(self.data_dir, name)
        if not os.path.isdir(path):
            raise FcnsegError(f"carvana: expected folder {path} (Carvana layout: train/, train_masks/) does not exist")
        return path

    def samples(self, split: str) -> list[Sample]:
        if split == "test":
            folder = self._folder("test")
            return [Sample(os.path.join(folder, f), None) for f in sorted(os.listdir(folder))
                    if f.lower().endswith(".jpg")]
        if self._split is None:
            pairs = pair_by_stem(self._folder("train"), self._folder("train_masks"), "_mask", (".jpg", ".gif"),
                                 on_orphan=self.on_orphan)
            if not pairs and self.orphans is None:
                raise FcnsegError(f"carvana: no <id>_<NN>.jpg images in {self._folder('train')}")
            self._split = split_by_car(pairs, self.val_fraction, self.seed)
        return self._split[split]

    def label_decoder(self):
        import tensorflow as tf

        from fcnseg import data

        lut = tf.constant(data.strict_id_lut(self.classes))

        def decode(path):
            # GIF: palette colours; a grey mask's red channel is its value (0/1 or 0/255).
            rgb = tf.io.decode_image(data.read_checked(path), channels=3, expand_animations=False)
            return data.lookup_ids(lut, tf.cast(rgb[..., 0], tf.int32), path)

        return decode


def make_source(data_dir, image_size=None, seed: int = 0, val_fraction: float = 0.2, *,
                collect_orphans: bool = False) -> Carvana:
    """Build the Carvana source (see the module docstring for the options)."""
    return Carvana(data_dir, image_size, seed, val_fraction=val_fraction, collect_orphans=collect_orphans)
