"""Lyft Perception Challenge (2018), or any CARLA semantic-segmentation camera output.

Expected tree (``--data-dir``)::

    Train/
      CameraRGB/   0.png  1.png ...     800x600 RGB frames
      CameraSeg/   0.png  1.png ...     RGB PNGs, the CARLA class id in the RED channel
    val/                                (optional: a split of your own, same layout)
      CameraRGB/ ...  CameraSeg/ ...

``Train/`` may also be spelt ``train/``. Without a ``val/`` folder a validation
split is drawn from ``Train/`` by ``val_fraction`` and the seed.

CARLA 0.8 ids: 0 none, 1 buildings, 2 fences, 3 other, 4 pedestrians, 5 poles,
6 road lines, 7 roads, 8 sidewalks, 9 vegetation, 10 vehicles, 11 walls,
12 traffic signs. The challenge scores road = ids 7 and 6, vehicles = id 10,
everything else background, and removes the ego car's own hood from the
vehicle class: here the id-10 region connected to the bottom edge of the frame
(in the challenge frames rows 498-599, full width from row 521) becomes void,
so neither loss nor metrics see it.

Options (``--source-option key=value``):
    classes        challenge (background / road / vehicles, default) or carla
                   (the 13 raw CARLA classes)
    hood           auto (void the id-10 region touching the bottom edge, default),
                   none, or the path of a mask file whose non-zero pixels are void
    val_fraction   share of Train/ held out when there is no val/ folder (default 0.2)
"""

from __future__ import annotations

import os

import numpy as np

from fcnseg.classes import ClassTable, table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, fraction_option, pair_by_stem, split_by_fraction

CARLA = ("none", "buildings", "fences", "other", "pedestrians", "poles", "road_lines", "roads", "sidewalks",
         "vegetation", "vehicles", "walls", "traffic_signs")
# The CityScapesPalette colours CARLA 0.8 draws these ids with.
CARLA_COLORS = ((0, 0, 0), (70, 70, 70), (190, 153, 153), (250, 170, 160), (220, 20, 60), (153, 153, 153),
                (157, 234, 50), (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156),
                (220, 220, 0))
VEHICLES = 10
# The hood is given an id no 8-bit file can hold, so the class table (and check-labels,
# which reads the same table) treats it as a void row of its own.
HOOD = 256
CHALLENGE_TRAIN_ID = {7: 1, 6: 1, VEHICLES: 2}  # everything else: background (0)
CHALLENGE_COLORS = ((0, 0, 0), (128, 64, 128), (0, 0, 142))

# The first row of each train id names the class: background (0), road (7), vehicles (10).
CHALLENGE_CLASSES = table(
    [("background", 0, 0, CHALLENGE_COLORS[0]), ("road", 7, 1, CHALLENGE_COLORS[1]),
     ("vehicles", VEHICLES, 2, CHALLENGE_COLORS[2])]
    + [(CARLA[i], i, CHALLENGE_TRAIN_ID.get(i, 0), CHALLENGE_COLORS[CHALLENGE_TRAIN_ID.get(i, 0)])
       for i in range(13) if i not in (0, 7, VEHICLES)]
    + [("hood", HOOD, 255, (255, 255, 255))], ignore_label=255)
CARLA_CLASSES = table([(name, i, i, CARLA_COLORS[i]) for i, name in enumerate(CARLA)]
                      + [("hood", HOOD, 255, (255, 255, 255))], ignore_label=255)
TABLES = {"challenge": CHALLENGE_CLASSES, "carla": CARLA_CLASSES}


class Lyft(FileSource):
    name = "lyft"
    classes = CHALLENGE_CLASSES
    default_image_size = (800, 608)  # 800x600 frames; 608 = 19 * 32 for FCN/LinkNet strides
    label_format = "index"
    splits = ("train", "val")

    def __init__(self, data_dir, image_size=None, seed: int = 0, classes: str = "challenge", hood: str = "auto",
                 val_fraction: float = 0.2, *, collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        if str(classes).lower() not in TABLES:
            raise FcnsegError(f"--source-option classes={classes}: the lyft source expects classes=challenge|carla")
        self.classes: ClassTable = TABLES[str(classes).lower()]
        self.hood = str(hood)
        self.hood_mask = None
        if self.hood not in ("auto", "none"):
            self.hood_mask = _read_hood_file(self.hood)
        self.val_fraction = fraction_option(self.name, "val_fraction", val_fraction)
        self._split: dict[str, list[Sample]] | None = None

    def _pairs(self, folder: str) -> list[Sample]:
        samples = pair_by_stem(os.path.join(folder, "CameraRGB"), os.path.join(folder, "CameraSeg"),
                               image_exts=(".png",), on_orphan=self.on_orphan)
        if not samples and self.orphans is None:
            raise FcnsegError(f"lyft: no CameraRGB/*.png frames in {folder}")
        return samples

    def samples(self, split: str) -> list[Sample]:
        if self._split is None:
            train = next((os.path.join(self.data_dir, d) for d in ("Train", "train")
                          if os.path.isdir(os.path.join(self.data_dir, d, "CameraRGB"))), None)
            if train is None:
                raise FcnsegError(f"lyft: expected folder {os.path.join(self.data_dir, 'Train', 'CameraRGB')} "
                                  "(Lyft challenge / CARLA layout) does not exist")
            val = os.path.join(self.data_dir, "val")
            if os.path.isdir(os.path.join(val, "CameraRGB")):
                self._split = {"train": self._pairs(train), "val": self._pairs(val)}
            else:
                self._split = split_by_fraction(self._pairs(train), self.val_fraction, self.seed)
        return self._split[split]

    def label_ids(self, label: np.ndarray, path: str) -> np.ndarray:
        """The ids check-labels checks, from the file as ``fcnseg.imageio`` reads it (BGR): the red
        channel, with the hood as ``HOOD`` (what the pipeline's decoder does, in numpy)."""
        ids = label[..., 2] if label.ndim == 3 else label  # a grey file of ids reads the same in TF
        return self._with_hood(ids.astype(np.int32))

    def _with_hood(self, ids: np.ndarray) -> np.ndarray:
        if self.hood_mask is not None:
            if self.hood_mask.shape != ids.shape:
                raise FcnsegError(f"--source-option hood={self.hood}: the mask is {self.hood_mask.shape[1]}x"
                                  f"{self.hood_mask.shape[0]} but the labels are {ids.shape[1]}x{ids.shape[0]}")
            return np.where(self.hood_mask, HOOD, ids).astype(np.int32)
        if self.hood == "auto":
            return np.where(bottom_component(ids == VEHICLES), HOOD, ids).astype(np.int32)
        return ids

    def label_decoder(self):
        import tensorflow as tf

        from fcnseg import data

        lut = tf.constant(data.strict_id_lut(self.classes))

        def decode(path):
            rgb = tf.io.decode_png(data.read_checked(path), channels=3)
            ids = tf.numpy_function(lambda red: self._with_hood(red.astype(np.int32)),
                                    [rgb[..., 0]], tf.int32, stateful=False)
            ids.set_shape([None, None])
            return data.lookup_ids(lut, ids, path)

        return decode


def bottom_component(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` 8-connected to its bottom row (the ego car's hood, for id 10)."""
    import cv2

    if not mask[-1].any():
        return np.zeros_like(mask, bool)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    touching = np.unique(labels[-1][mask[-1]])
    return np.isin(labels, touching[touching > 0])


def _read_hood_file(path: str) -> np.ndarray:
    from fcnseg import imageio

    mask = imageio.read(path)
    return (mask.max(axis=-1) if mask.ndim == 3 else mask) > 0


def make_source(data_dir, image_size=None, seed: int = 0, classes: str = "challenge", hood: str = "auto",
                val_fraction: float = 0.2, *, collect_orphans: bool = False) -> Lyft:
    """Build the Lyft / CARLA source (see the module docstring for the options)."""
    return Lyft(data_dir, image_size, seed, classes=classes, hood=hood, val_fraction=val_fraction,
                collect_orphans=collect_orphans)
