"""BDD100K: drivable area (both released layouts) or semantic segmentation.

Expected tree (``--data-dir`` is the folder holding ``bdd100k/``, or ``bdd100k/`` itself)::

    bdd100k/
      images/100k/{train,val,test}/<name>.jpg       (drivable area)
      images/10k/{train,val,test}/<name>.jpg        (sem_seg)
      drivable_maps/                                2018 release
        labels/{train,val}/<name>_drivable_id.png        0 background, 1 direct, 2 alternative
        color_labels/{train,val}/<name>_drivable_color.png
      labels/drivable/                              later release
        masks/{train,val}/<name>.png                      0 direct, 1 alternative, 2 background
        colormaps/{train,val}/<name>.png
      labels/sem_seg/
        masks/{train,val}/<name>.png                      19 Cityscapes train ids, 255 void
        colormaps/{train,val}/<name>.png

The two drivable releases store the same classes under different ids; the
layout is told apart by its folders (``drivable_maps/`` or
``labels/drivable/``) and both are mapped to one class order: direct (0),
alternative (1), background (2), so a model trained on either scores on the
other. Colour maps, where present, are checked by ``fcnseg check-labels`` pixel
for pixel against the id masks beside them: masks of one release placed in the
other's folders hold valid ids but disagree with their colour maps (and give
background, 84% of BDD100K's pixels, a minority share, which check-labels also
reports).

Without a ``val`` folder a validation split is drawn from train by the seed.

Options (``--source-option key=value``):
    task           drivable (default) or sem_seg
    layout         auto (default), drivable_maps (2018) or masks (labels/drivable)
    val_fraction   share of train held out when there is no val folder (default 0.2)
"""

from __future__ import annotations

import os

import numpy as np

from fcnseg.classes import ClassTable, table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, fraction_option, option_value, pair_by_stem, split_by_fraction
from fcnseg.sources.cityscapes import TRAIN_ID_CLASSES

# name, id in the files, train id, colour (the release's own colour map)
DRIVABLE_MAPS = table([("direct", 1, 0, (255, 0, 0)), ("alternative", 2, 1, (0, 0, 255)),
                       ("background", 0, 2, (0, 0, 0))])
DRIVABLE_MASKS = table([("direct", 0, 0, (219, 94, 86)), ("alternative", 1, 1, (86, 211, 219)),
                        ("background", 2, 2, (0, 0, 0))])
BACKGROUND_SHARE = 0.5  # background is 83.6% of BDD100K's drivable-area pixels; under half betrays a swap


class _Layout:
    """Where one release keeps its labels: folder, file suffix, colour folder and suffix."""

    def __init__(self, labels: str, suffix: str, colors: str, color_suffix: str, images: str, table: ClassTable):
        self.labels, self.suffix, self.colors, self.color_suffix = labels, suffix, colors, color_suffix
        self.images, self.table = images, table


LAYOUTS = {
    "drivable_maps": _Layout("drivable_maps/labels", "_drivable_id", "drivable_maps/color_labels",
                             "_drivable_color", "images/100k", DRIVABLE_MAPS),
    "masks": _Layout("labels/drivable/masks", "", "labels/drivable/colormaps", "", "images/100k", DRIVABLE_MASKS),
    "sem_seg": _Layout("labels/sem_seg/masks", "", "labels/sem_seg/colormaps", "", "images/10k", TRAIN_ID_CLASSES),
}


class BDD100K(FileSource):
    name = "bdd100k"
    classes = DRIVABLE_MASKS
    default_image_size = (640, 352)  # half of 1280x720, rounded to a multiple of 32
    label_format = "index"
    # Colour maps render the id masks exactly: check-labels compares them pixel for pixel.
    color_labels_match = True

    def __init__(self, data_dir, image_size=None, seed: int = 0, task: str = "drivable", layout: str = "auto",
                 val_fraction: float = 0.2, *, collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        self.task = option_value(self.name, "task", task, ("drivable", "sem_seg"))
        layout = option_value(self.name, "layout", layout, ("auto", "drivable_maps", "masks"))
        self.val_fraction = fraction_option(self.name, "val_fraction", val_fraction)
        nested = os.path.join(self.data_dir, "bdd100k")
        self.root = nested if os.path.isdir(nested) else self.data_dir
        self.layout_name = "sem_seg" if self.task == "sem_seg" else self._find_layout(layout)
        self.layout = LAYOUTS[self.layout_name]
        self.classes = self.layout.table
        self._split: dict[str, list[Sample]] | None = None

    def _find_layout(self, layout: str) -> str:
        if layout != "auto":
            return layout
        found = [name for name in ("drivable_maps", "masks") if os.path.isdir(os.path.join(self.root, LAYOUTS[name].labels))]
        if len(found) == 2:
            raise FcnsegError(f"bdd100k: {self.root} holds both drivable_maps/labels (2018) and labels/drivable/masks;"
                              " choose one with --source-option layout=drivable_maps|masks")
        if not found:
            raise FcnsegError(f"bdd100k: expected folder {os.path.join(self.root, 'drivable_maps', 'labels')} (2018)"
                              f" or {os.path.join(self.root, 'labels', 'drivable', 'masks')} (BDD100K layout)"
                              " does not exist")
        return found[0]

    def _pairs(self, split: str) -> list[Sample]:
        image_dir = os.path.join(self.root, self.layout.images, split)
        samples = pair_by_stem(image_dir, os.path.join(self.root, self.layout.labels, split), self.layout.suffix,
                               image_exts=(".jpg", ".jpeg", ".png"), on_orphan=self.on_orphan)
        if not samples and self.orphans is None:
            raise FcnsegError(f"bdd100k: no labelled images in {image_dir}")
        return samples

    def samples(self, split: str) -> list[Sample]:
        if split == "test":
            image_dir = os.path.join(self.root, self.layout.images, "test")
            if not os.path.isdir(image_dir):
                raise FcnsegError(f"bdd100k: expected folder {image_dir} for the test split does not exist")
            return [Sample(os.path.join(image_dir, f), None) for f in sorted(os.listdir(image_dir))
                    if f.lower().endswith((".jpg", ".jpeg", ".png"))]
        if self._split is None:
            if os.path.isdir(os.path.join(self.root, self.layout.labels, "val")):
                self._split = {"train": self._pairs("train"), "val": self._pairs("val")}
            else:
                self._split = split_by_fraction(self._pairs("train"), self.val_fraction, self.seed)
        return self._split[split]

    def color_labels(self, sample: Sample) -> list[str]:
        """The release's colour map of ``sample``, where present."""
        split = os.path.basename(os.path.dirname(sample.label))
        stem = os.path.splitext(os.path.basename(sample.label))[0]
        stem = stem[: len(stem) - len(self.layout.suffix)] if self.layout.suffix else stem
        path = os.path.join(self.root, self.layout.colors, split, stem + self.layout.color_suffix + ".png")
        return [path] if os.path.isfile(path) else []

    def class_share_problem(self, pixel_counts: np.ndarray) -> str | None:
        """Why a split's class histogram cannot be BDD100K drivable area, or None."""
        if self.task != "drivable" or pixel_counts.sum() == 0:
            return None
        share = pixel_counts[2] / pixel_counts.sum()
        if share >= BACKGROUND_SHARE:
            return None
        return (f"background is {share:.1%} of the pixels (83.6% in BDD100K): are these masks of the other "
                f"release? this folder layout ({self.layout.labels}) reads ids as "
                + ", ".join(f"{r.id} {r.name}" for r in sorted(self.classes.rows, key=lambda r: r.id)))


def make_source(data_dir, image_size=None, seed: int = 0, task: str = "drivable", layout: str = "auto",
                val_fraction: float = 0.2, *, collect_orphans: bool = False) -> BDD100K:
    """Build the BDD100K source (see the module docstring for the options)."""
    return BDD100K(data_dir, image_size, seed, task=task, layout=layout, val_fraction=val_fraction,
                   collect_orphans=collect_orphans)
