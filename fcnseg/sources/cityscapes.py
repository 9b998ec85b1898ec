"""Cityscapes: 19 training classes from the official label table.

Expected tree (``--data-dir`` holds leftImg8bit and gtFine and/or gtCoarse)::

    leftImg8bit/
      train/CITY/CITY_000000_000019_leftImg8bit.png
      val/CITY/...   test/CITY/...   train_extra/CITY/...   (train_extra: coarse only)
    gtFine/
      train/CITY/CITY_000000_000019_gtFine_labelIds.png
                 CITY_000000_000019_gtFine_labelTrainIds.png   (optional, from
                                                    cityscapesscripts' createTrainIdLabelImgs)
      val/CITY/...
    gtCoarse/
      train/CITY/..._gtCoarse_labelIds.png   train_extra/...   val/...

labelIds are mapped to train ids with the table below (cityscapesscripts'
labels.py, every row); ids without a train id are void (255). The test split
lists images only (its public labels are placeholders). Labels may be stored
at another resolution than their image: they are resized nearest-neighbour.

Options (``--source-option key=value``):
    annotations   fine (gtFine, default) or coarse (gtCoarse)
    train_ids     auto (use *_labelTrainIds.png where present, default), yes
                  (require them) or no (always map labelIds)
    train_extra   1 = the train split also takes leftImg8bit/train_extra
                  (coarse annotations only)
"""

from __future__ import annotations

import os

import numpy as np

from fcnseg.classes import ClassTable, table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, option_value

# cityscapesscripts/helpers/labels.py, every row:
# name, id, trainId, category, colour
LABELS = (
    ("unlabeled", 0, 255, "void", (0, 0, 0)),
    ("ego vehicle", 1, 255, "void", (0, 0, 0)),
    ("rectification border", 2, 255, "void", (0, 0, 0)),
    ("out of roi", 3, 255, "void", (0, 0, 0)),
    ("static", 4, 255, "void", (0, 0, 0)),
    ("dynamic", 5, 255, "void", (111, 74, 0)),
    ("ground", 6, 255, "void", (81, 0, 81)),
    ("road", 7, 0, "flat", (128, 64, 128)),
    ("sidewalk", 8, 1, "flat", (244, 35, 232)),
    ("parking", 9, 255, "flat", (250, 170, 160)),
    ("rail track", 10, 255, "flat", (230, 150, 140)),
    ("building", 11, 2, "construction", (70, 70, 70)),
    ("wall", 12, 3, "construction", (102, 102, 156)),
    ("fence", 13, 4, "construction", (190, 153, 153)),
    ("guard rail", 14, 255, "construction", (180, 165, 180)),
    ("bridge", 15, 255, "construction", (150, 100, 100)),
    ("tunnel", 16, 255, "construction", (150, 120, 90)),
    ("pole", 17, 5, "object", (153, 153, 153)),
    ("polegroup", 18, 255, "object", (153, 153, 153)),
    ("traffic light", 19, 6, "object", (250, 170, 30)),
    ("traffic sign", 20, 7, "object", (220, 220, 0)),
    ("vegetation", 21, 8, "nature", (107, 142, 35)),
    ("terrain", 22, 9, "nature", (152, 251, 152)),
    ("sky", 23, 10, "sky", (70, 130, 180)),
    ("person", 24, 11, "human", (220, 20, 60)),
    ("rider", 25, 12, "human", (255, 0, 0)),
    ("car", 26, 13, "vehicle", (0, 0, 142)),
    ("truck", 27, 14, "vehicle", (0, 0, 70)),
    ("bus", 28, 15, "vehicle", (0, 60, 100)),
    ("caravan", 29, 255, "vehicle", (0, 0, 90)),
    ("trailer", 30, 255, "vehicle", (0, 0, 110)),
    ("train", 31, 16, "vehicle", (0, 80, 100)),
    ("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    ("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    # Official trainId -1: never stored in labelIds images (id -1) and ignored
    # in evaluation, so it is void here like every other unused row.
    ("license plate", -1, 255, "vehicle", (0, 0, 142)),
)
CLASSES = table([(name, i, t, color) for name, i, t, _, color in LABELS], ignore_label=255)
CATEGORY = {name: category for name, _, _, category, _ in LABELS}
# What *_labelTrainIds.png files hold: train ids, everything else 255.
TRAIN_ID_CLASSES = table([(r.name, r.train_id, r.train_id, r.color) for r in CLASSES.classes]
                         + [("void", 255, 255, (0, 0, 0))], ignore_label=255)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_GT_FOLDER = {"fine": "gtFine", "coarse": "gtCoarse"}


class Cityscapes(FileSource):
    name = "cityscapes"
    classes = CLASSES
    default_image_size = (1024, 512)  # half resolution, the usual training size
    labels_resized = True  # e.g. labels kept at 2048x1024 beside downscaled images
    splits = ("train", "val", "test", "train_extra")

    def __init__(self, data_dir, image_size=None, seed: int = 0, annotations: str = "fine",
                 train_ids: str = "auto", train_extra: str | int = 0, *, collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        self.annotations = option_value(self.name, "annotations", annotations, tuple(_GT_FOLDER))
        self.train_ids = option_value(self.name, "train_ids", train_ids, ("auto", "yes", "no"))
        self.train_extra = option_value(self.name, "train_extra", train_extra, ("0", "1")) == "1"
        if self.train_extra and self.annotations != "coarse":
            raise FcnsegError("--source-option train_extra=1: train_extra has coarse labels only; "
                              "add annotations=coarse")

    def samples(self, split: str) -> list[Sample]:
        if split == "train_extra" and self.annotations != "coarse":
            raise FcnsegError(f"cityscapes: split train_extra under {self.data_dir} needs annotations=coarse")
        if split == "train" and self.train_extra:
            return self._split_samples("train") + self._split_samples("train_extra")
        return self._split_samples(split)

    def _split_samples(self, split: str) -> list[Sample]:
        image_root = os.path.join(self.data_dir, "leftImg8bit", split)
        if not os.path.isdir(image_root):
            raise FcnsegError(f"cityscapes: expected folder {image_root} (Cityscapes leftImg8bit layout)"
                              " does not exist")
        images = _walk(image_root, _IMAGE_SUFFIX)
        if not images:
            raise FcnsegError(f"cityscapes: no CITY/*{_IMAGE_SUFFIX} images in {image_root}")
        if split == "test":
            return [Sample(path, None) for path in images.values()]

        gt = _GT_FOLDER[self.annotations]
        label_root = os.path.join(self.data_dir, gt, split)
        if not os.path.isdir(label_root):
            raise FcnsegError(f"cityscapes: expected folder {label_root} ({gt} labels for {image_root})")
        label_ids = _walk(label_root, f"_{gt}_labelIds.png")
        train_ids = _walk(label_root, f"_{gt}_labelTrainIds.png") if self.train_ids != "no" else {}
        samples = []
        for key, image in images.items():
            label = train_ids.get(key) or label_ids.get(key)
            wanted = "labelTrainIds" if self.train_ids == "yes" else "labelIds"
            if label is None or (self.train_ids == "yes" and key not in train_ids):
                city, stem = key
                self.report_orphan(image, f"cityscapes: image {image} has no label "
                                          f"{os.path.join(label_root, city, f'{stem}_{gt}_{wanted}.png')}")
                continue
            samples.append(Sample(image, label))
        for orphan in sorted((set(label_ids) | set(train_ids)) - set(images)):
            label = label_ids.get(orphan) or train_ids[orphan]
            self.report_orphan(label, f"cityscapes: label {label} has no image in {image_root}")
        return samples

    def label_table(self, path: str) -> ClassTable:
        """The values a label file holds: labelTrainIds files store train ids (void 255)."""
        return TRAIN_ID_CLASSES if path.endswith("_labelTrainIds.png") else self.classes

    def color_labels(self, sample: Sample) -> list[str]:
        """The ``*_gtFine_color.png`` / ``*_gtCoarse_color.png`` files of a sample, where present
        (not used for training, but a wrong one betrays a broken export)."""
        city = os.path.basename(os.path.dirname(sample.image))
        split = os.path.basename(os.path.dirname(os.path.dirname(sample.image)))
        stem = os.path.basename(sample.image)[: -len(_IMAGE_SUFFIX)]
        found = [os.path.join(self.data_dir, gt, split, city, f"{stem}_{gt}_color.png") for gt in _GT_FOLDER.values()]
        return [p for p in found if os.path.isfile(p)]

    def label_decoder(self):
        import tensorflow as tf

        from fcnseg import data

        # Row 0 maps labelIds, row 1 labelTrainIds (0..18, 255 void); the file name says which a
        # label is. Any other value is -1, which the pipeline refuses naming the file.
        luts = tf.constant(np.stack([data.strict_id_lut(self.classes), data.strict_id_lut(TRAIN_ID_CLASSES)]))

        def decode(path):
            ids = data.decode_index_png(data.read_checked(path), path)
            row = tf.cast(tf.strings.regex_full_match(path, r".*_labelTrainIds\.png"), tf.int32)
            return data.lookup_ids(luts[row], ids, path)
        return decode


def _walk(root: str, suffix: str) -> dict[tuple[str, str], str]:
    """{(city, frame stem): path} for every CITY/<stem><suffix> under root."""
    found = {}
    for city in sorted(os.listdir(root)):
        folder = os.path.join(root, city)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            if f.endswith(suffix):
                found[(city, f[: -len(suffix)])] = os.path.join(folder, f)
    return found


def make_source(data_dir, image_size=None, seed: int = 0, annotations: str = "fine", train_ids: str = "auto",
                train_extra: str | int = 0, *, collect_orphans: bool = False) -> Cityscapes:
    """Build the Cityscapes source (see the module docstring for the options)."""
    return Cityscapes(data_dir, image_size, seed, annotations=annotations, train_ids=train_ids,
                      train_extra=train_extra, collect_orphans=collect_orphans)
