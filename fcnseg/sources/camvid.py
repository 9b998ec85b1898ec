"""CamVid: the SegNet 11-class layout or the original 32-class colour layout.

SegNet layout (11 classes, void = 11; the tutorial's CamVid folder)::

    train/       0001TP_006690.png ...   RGB, 480x360
    trainannot/  0001TP_006690.png ...   single-channel index PNGs, 0..11
    val/  valannot/  test/  testannot/
    train.txt  val.txt  test.txt         optional: "train/X.png trainannot/X.png" per
                                         line; absolute paths such as
                                         /SegNet/CamVid/train/X.png are resolved
                                         against the data dir

32-class colour layout (e.g. the Kaggle CamVid download)::

    class_dict.csv                       name,r,g,b per class; "Void" is void
    train/  0001TP_006690.png ...        train_labels/  0001TP_006690_L.png ...
    val/    val_labels/    test/    test_labels/

Options (``--source-option key=value``):
    layout         auto (default: class_dict.csv or train_labels/ means colour),
                   segnet or colour
    val_sequences  a comma list of sequences, e.g. 0001TP or 0001TP,0006R0, to
                   hold out: val is then every train or val frame of those
                   sequences and train every frame of the others (the folders
                   stay as above; only the split between them changes). A
                   sequence is the file name's prefix before the first '_'
                   (0001TP, 0006R0, 0016E5, Seq05VD). The standard val is all
                   0016E5, a street train also holds, so it measures memory of
                   a street; a held-out sequence measures new streets.
    train_crop     WxH, e.g. 320x240: training batches are random WxH crops of
                   each augmented image at the training size (--image-size;
                   give the native 480x360 for native-scale crops, so thin
                   classes keep their pixels); validation and inference run
                   whole images at the training size.
"""

from __future__ import annotations

import os

from fcnseg.classes import table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, option_value, pair_by_stem

# name, id, train id, colour: the SegNet tutorial's class order.
CLASSES = table(
    [
        ("Sky", 0, 0, (128, 128, 128)),
        ("Building", 1, 1, (128, 0, 0)),
        ("Column_Pole", 2, 2, (192, 192, 128)),
        ("Road", 3, 3, (128, 64, 128)),
        ("Sidewalk", 4, 4, (0, 0, 192)),
        ("Tree", 5, 5, (128, 128, 0)),
        ("SignSymbol", 6, 6, (192, 128, 128)),
        ("Fence", 7, 7, (64, 64, 128)),
        ("Car", 8, 8, (64, 0, 128)),
        ("Pedestrian", 9, 9, (64, 64, 0)),
        ("Bicyclist", 10, 10, (0, 128, 192)),
        ("Void", 11, 11, (0, 0, 0)),
    ],
    # SegNet stores void as 11, one past the last class; keeping it (rather
    # than remapping to 255) leaves the published label files usable as-is.
    ignore_label=11,
)
LAYOUTS = ("auto", "segnet", "colour", "color")


class CamVid(FileSource):
    name = "camvid"
    classes = CLASSES
    default_image_size = (480, 360)

    def __init__(self, data_dir, image_size=None, seed: int = 0, layout: str = "auto",
                 val_sequences: str | None = None, train_crop: str | None = None, *,
                 collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        self.train_crop = parse_crop(train_crop, self.image_size)
        self.val_sequences = parse_sequences(val_sequences)
        self._pool: list[Sample] | None = None
        layout = option_value(self.name, "layout", layout, LAYOUTS)
        if layout == "auto":
            layout = self._detect()
        self.layout = "colour" if layout == "color" else layout
        if self.layout == "colour":
            from fcnseg.sources.folder import read_classes_csv

            self.classes, self.label_format = read_classes_csv(os.path.join(self.data_dir, "class_dict.csv"))
            if self.label_format != "color":
                raise FcnsegError(f"camvid: {self.data_dir}/class_dict.csv must have columns name,r,g,b")
        if self.val_sequences:
            self._check_sequences()

    def _detect(self) -> str:
        has = lambda p: os.path.exists(os.path.join(self.data_dir, p))  # noqa: E731
        if has("class_dict.csv") or has("train_labels"):
            return "colour"
        if has("trainannot") or has("train.txt"):
            return "segnet"
        raise FcnsegError(f"camvid: {self.data_dir} has neither trainannot/ (SegNet 11-class layout) nor "
                          "train_labels/ + class_dict.csv (32-class colour layout)")

    def samples(self, split: str) -> list[Sample]:
        if self.val_sequences and split in ("train", "val"):
            return self._held_out(split)
        return self._folder_samples(split)

    def dataset(self, split: str, batch_size: int, *, training: bool = False, augment=None,
                seed: int | None = None, drop_remainder: bool = False):
        """The common pipeline; with ``train_crop``, training batches are per-image random crops of it."""
        ds = super().dataset(split, batch_size, training=training, augment=augment, seed=seed,
                             drop_remainder=drop_remainder)
        if not training or self.train_crop is None:
            return ds
        import tensorflow as tf

        w, h = self.train_crop
        base = self.seed if seed is None else seed

        def crop(index, pair):
            image, label = pair
            # one stateless draw per image, from (seed, position): --resume's exact replay holds
            key = tf.stack([tf.cast(base, tf.int64), index])
            offset = tf.random.stateless_uniform([2], key, 0, 2**31 - 1, dtype=tf.int64)
            y = tf.cast(offset[0] % (tf.shape(label, out_type=tf.int64)[0] - h + 1), tf.int32)
            x = tf.cast(offset[1] % (tf.shape(label, out_type=tf.int64)[1] - w + 1), tf.int32)
            return (tf.ensure_shape(image[y:y + h, x:x + w], [h, w, 3]),
                    tf.ensure_shape(label[y:y + h, x:x + w], [h, w]))

        return ds.unbatch().enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE).batch(
            batch_size, drop_remainder=drop_remainder)

    def describe(self) -> dict:
        described = super().describe()
        if self.train_crop is not None:  # inference runs whole images at image_size, not at the crop size
            described["train_crop"] = list(self.train_crop)
        return described

    def _check_sequences(self) -> None:
        """Refuse a sequence train/ and val/ lack now, in one line, not once per split later."""
        present = sorted({sequence_of(f) for split in ("train", "val") if os.path.isdir(self._dir(split))
                          for f in os.listdir(self._dir(split)) if f.lower().endswith((".png", ".jpg"))})
        by_lower = {p.lower(): p for p in present}
        option = f"--source-option val_sequences={','.join(self.val_sequences)}"
        unknown = [v for v in self.val_sequences if v.lower() not in by_lower]
        if unknown:
            raise FcnsegError(f"{option}: camvid at {self.data_dir} has no sequence {', '.join(unknown)}; "
                              f"its train+val sequences are {', '.join(present) or 'none'}")
        self.val_sequences = tuple(dict.fromkeys(by_lower[v.lower()] for v in self.val_sequences))
        if set(self.val_sequences) == set(present):
            raise FcnsegError(f"{option} holds out every sequence of {self.data_dir} ({', '.join(present)}), "
                              "leaving nothing to train on")

    def _dir(self, split: str) -> str:
        return os.path.join(self.data_dir, split)

    def _held_out(self, split: str) -> list[Sample]:
        """train or val regrouped by sequence: val = the frames of ``val_sequences``, train = the rest."""
        if self._pool is None:  # read once: both splits come from the same train+val frames
            self._pool = sorted(self._folder_samples("train") + self._folder_samples("val"),
                                key=lambda s: os.path.basename(s.image))
        held = set(self.val_sequences)
        return [s for s in self._pool if (sequence_of(s.image) in held) == (split == "val")]

    def _folder_samples(self, split: str) -> list[Sample]:
        image_dir = os.path.join(self.data_dir, split)
        if self.layout == "colour":
            return pair_by_stem(image_dir, os.path.join(self.data_dir, f"{split}_labels"), "_L",
                                on_orphan=self.on_orphan)
        listing = os.path.join(self.data_dir, f"{split}.txt")
        if os.path.isfile(listing):
            return self._read_list(listing)
        label_dir = os.path.join(self.data_dir, f"{split}annot")
        if split == "test" and os.path.isdir(image_dir) and not os.path.isdir(label_dir):
            return [Sample(os.path.join(image_dir, f), None) for f in sorted(os.listdir(image_dir))
                    if f.lower().endswith(".png")]
        return pair_by_stem(image_dir, label_dir, on_orphan=self.on_orphan)

    def _read_list(self, listing: str) -> list[Sample]:
        samples = []
        with open(listing, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise FcnsegError(f"{listing}:{n}: expected 'IMAGE LABEL' paths, got {line.strip()!r}")
                try:
                    samples.append(Sample(*(self._resolve(p, listing, n) for p in parts)))
                except FcnsegError as e:
                    self.report_orphan(f"{listing}:{n}", str(e))
        if not samples:
            raise FcnsegError(f"{listing}: the split list is empty")
        return samples

    def _resolve(self, path: str, listing: str, line: int) -> str:
        """The list's path under the data dir: lists written on the SegNet
        authors' machine say /SegNet/CamVid/train/X.png, so the longest tail of
        the path that exists under the data dir wins."""
        parts = path.replace("\\", "/").strip("/").split("/")
        for i in range(len(parts)):
            candidate = os.path.join(self.data_dir, *parts[i:])
            if os.path.isfile(candidate):
                return candidate
        expected = os.path.join(self.data_dir, *parts[-2:])
        raise FcnsegError(f"{listing}:{line}: {path} not found (expected {expected})")


def sequence_of(path: str) -> str:
    """CamVid's sequence of a frame: its file name's prefix before the first '_' (0001TP_006690.png -> 0001TP)."""
    return os.path.basename(path).split("_", 1)[0]


def parse_sequences(value: str | None) -> tuple[str, ...]:
    """``0001TP,0006R0`` -> ("0001TP", "0006R0"); None or blank -> () (the standard split)."""
    if value is None:
        return ()
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


def parse_crop(value: str | None, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """``train_crop=WxH`` -> (W, H), at most the training size; None or blank -> None."""
    if value is None or not str(value).strip():
        return None
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        w = h = 0
    if not (8 <= w <= image_size[0] and 8 <= h <= image_size[1]):
        raise FcnsegError(f"--source-option train_crop={value}: the camvid source expects WxH, at least 8x8 and "
                          f"at most the training size {image_size[0]}x{image_size[1]}")
    return w, h


def make_source(data_dir, image_size=None, seed: int = 0, layout: str = "auto", val_sequences: str | None = None,
                train_crop: str | None = None, *, collect_orphans: bool = False) -> CamVid:
    """Build the CamVid source (see the module docstring for the options)."""
    return CamVid(data_dir, image_size, seed, layout=layout, val_sequences=val_sequences, train_crop=train_crop,
                  collect_orphans=collect_orphans)
