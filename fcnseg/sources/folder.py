"""Your own data: a folder of images, a folder of masks and a small class CSV.

Expected tree (``--data-dir``)::

    classes.csv          name,id  or  name,r,g,b  (optional train_id column)
    images/  0001.jpg  0002.jpg ...        or  images/train/  images/val/  [images/test/]
    masks/   0001.png  0002_mask.png ...   or  masks/train/   masks/val/   [masks/test/]

Masks pair with images by file stem; a mask may add a suffix (``_mask``,
``_label``, ``_gt``, ``_L`` ... found automatically, or ``mask_suffix=``).
With ``name,id`` the masks are single-channel index PNGs (8 or 16 bit) or
grey GIFs holding the ids; with ``name,r,g,b`` they are RGB colour PNGs
matched colour for colour (an unknown colour is void). A row named ``void``
or ``ignore`` marks void; other rows get train ids 0..N-1 in file order
unless a ``train_id`` column says otherwise. Examples::

    name,id          (Carvana: 0/255 car masks)      name,r,g,b     (drivable area)
    background,0                                      background,0,0,0
    car,255                                           drivable,255,0,255
                                                      alternative,0,0,255

Without train/val subfolders a validation split is drawn deterministically
from the seed. Images of any size are resized to the training size (default
480x360; pass ``--image-size`` to keep your data's aspect ratio).

Options (``--source-option key=value``):
    classes        path of the class CSV (default: DATA/classes.csv)
    mask_suffix    suffix of mask stems, e.g. _mask (default: auto)
    val_fraction   held-out share when there are no train/val subfolders (default 0.2)
"""

from __future__ import annotations

import csv
import os

from fcnseg.classes import ClassTable, table
from fcnseg.errors import FcnsegError
from fcnseg.source import FileSource, Sample, fraction_option, pair_by_stem, split_by_fraction

CLASSES = None  # read from the data's classes.csv at run time
CLASSES_NOTE = "classes from a CSV in the data dir (name,id or name,r,g,b)"
VOID_NAMES = ("void", "ignore")
SUFFIXES = ("", "_mask", "_masks", "_label", "_labels", "_labelIds", "_gt", "_seg", "_L")
EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def read_classes_csv(path: str) -> tuple[ClassTable, str]:
    """Parse a class CSV into (table, label format "index" | "color")."""
    if not os.path.isfile(path):
        raise FcnsegError(f"class CSV {path} does not exist (expected a name,id or name,r,g,b table)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = [(n, row) for n, row in enumerate(csv.reader(f), 1) if row and not row[0].startswith("#")]
    if not lines:
        raise FcnsegError(f"{path}: empty class CSV (expected a header name,id or name,r,g,b)")
    header = [h.strip().lower() for h in lines[0][1]]
    fmt = "index" if "id" in header else "color" if {"r", "g", "b"} <= set(header) else None
    if "name" not in header or fmt is None or not set(header) <= {"name", "id", "r", "g", "b", "train_id"}:
        raise FcnsegError(f"{path}:{lines[0][0]}: header {','.join(header)} is not name,id or name,r,g,b"
                          " (optionally with train_id)")
    rows, next_train_id = [], 0
    for n, values in lines[1:]:
        if len(values) != len(header):
            raise FcnsegError(f"{path}:{n}: expected {len(header)} fields ({','.join(header)}), got {len(values)}")
        row = dict(zip(header, (v.strip() for v in values)))
        try:
            ints = {k: int(v) for k, v in row.items() if k != "name"}
        except ValueError:
            raise FcnsegError(f"{path}:{n}: {','.join(values)}: id, r, g, b and train_id must be integers") from None
        color = (ints["r"], ints["g"], ints["b"]) if fmt == "color" or "r" in ints else None
        if not row["name"] or (color and not all(0 <= c <= 255 for c in color)) or not 0 <= ints.get("id", 0) < 65536:
            raise FcnsegError(f"{path}:{n}: {','.join(values)}: expected a name, ids in 0..65535, colours in 0..255")
        void = row["name"].lower() in VOID_NAMES
        if "train_id" in ints:
            train_id = ints["train_id"]
        else:
            train_id = 255 if void else next_train_id
            next_train_id += not void
        rows.append([row["name"], ints.get("id", len(rows)), train_id, color, void])
    for key, what in ((0, "name"), (1, "id")):
        seen = [r[key] for r in rows]
        dup = next((v for v in seen if seen.count(v) > 1), None)
        if dup is not None:
            raise FcnsegError(f"{path}: {what} {dup} appears in more than one row")
    ignore = {r[2] for r in rows if r[4]}
    if len(ignore) > 1:
        raise FcnsegError(f"{path}: void rows have different train ids {sorted(ignore)}")
    for r in rows:  # index masks need no colours; give each class a distinct one to draw with
        r[3] = r[3] or ((224, 224, 192) if r[4] else _voc_color(r[2]))
    try:
        result = table([r[:4] for r in rows], ignore_label=ignore.pop() if ignore else 255)
        if fmt == "color":
            result.color_keys()  # two classes with one colour cannot be told apart
    except ValueError as e:
        raise FcnsegError(f"{path}: {e}") from None
    if result.num_classes == 0:
        raise FcnsegError(f"{path}: no non-void class rows")
    return result, fmt


def _voc_color(i: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map: distinct colours, 0 -> black."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((i >> 0) & 1) << shift
        g |= ((i >> 1) & 1) << shift
        b |= ((i >> 2) & 1) << shift
        i >>= 3
    return r, g, b


class FolderSource(FileSource):
    name = "folder"

    def __init__(self, data_dir, image_size=None, seed: int = 0, classes: str | None = None,
                 mask_suffix: str = "auto", val_fraction: float = 0.2, *, collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        self.classes, self.label_format = read_classes_csv(classes or os.path.join(self.data_dir, "classes.csv"))
        self.mask_suffix = mask_suffix
        self.val_fraction = fraction_option(self.name, "val_fraction", val_fraction)
        self._split = None

    def _pairs(self, image_dir: str, mask_dir: str) -> list[Sample]:
        for folder in (image_dir, mask_dir):
            if not os.path.isdir(folder):
                raise FcnsegError(f"folder: expected folder {folder} (images/ + masks/ layout) does not exist")
        suffix = self.mask_suffix if self.mask_suffix != "auto" else _guess_suffix(image_dir, mask_dir)
        samples = pair_by_stem(image_dir, mask_dir, suffix, EXTS, on_orphan=self.on_orphan)
        if not samples:
            raise FcnsegError(f"folder: no images in {image_dir}")
        lossy = next((s.label for s in samples if s.label.lower().endswith((".jpg", ".jpeg"))), None)
        if lossy:
            raise FcnsegError(f"folder: mask {lossy} is a JPEG; JPEG changes label values, save masks as PNG")
        if self.label_format == "index" and _is_palette_png(samples[0].label):
            raise FcnsegError(f"folder: mask {samples[0].label} is a palette PNG, whose pixels decode to colours;"
                              " give the CSV name,r,g,b columns (the palette colours) or save grey index masks")
        return samples

    def samples(self, split: str) -> list[Sample]:
        images, masks = os.path.join(self.data_dir, "images"), os.path.join(self.data_dir, "masks")
        if split == "test":
            image_dir, mask_dir = os.path.join(images, "test"), os.path.join(masks, "test")
            if not os.path.isdir(image_dir):
                raise FcnsegError(f"folder: expected folder {image_dir} for the test split does not exist")
            if os.path.isdir(mask_dir):
                return self._pairs(image_dir, mask_dir)
            return [Sample(os.path.join(image_dir, f), None) for f in sorted(os.listdir(image_dir))
                    if f.lower().endswith(EXTS)]
        if self._split is None:
            if os.path.isdir(os.path.join(images, "train")):
                train = self._pairs(os.path.join(images, "train"), os.path.join(masks, "train"))
                if os.path.isdir(os.path.join(images, "val")):
                    self._split = {"train": train, "val": self._pairs(os.path.join(images, "val"),
                                                                      os.path.join(masks, "val"))}
                else:
                    self._split = split_by_fraction(train, self.val_fraction, self.seed)
            else:
                self._split = split_by_fraction(self._pairs(images, masks), self.val_fraction, self.seed)
        return self._split[split]

    def label_decoder(self):
        import tensorflow as tf

        from fcnseg import data

        if self.label_format == "index":
            lut = tf.constant(data.strict_id_lut(self.classes))
        else:
            keys, train_ids = self.classes.color_keys()
            colors = data.color_lookup_table(keys, train_ids)

        def decode(path):
            raw = data.read_checked(path)
            is_png = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.png")
            if self.label_format == "index":
                # GIF/BMP masks (Carvana's are GIFs) are 8-bit grey, decoded as RGB.
                ids = tf.cond(is_png, lambda: data.decode_index_png(raw, path),
                              lambda: tf.cast(tf.io.decode_image(raw, 3, expand_animations=False)[..., 0], tf.int32))
                return data.lookup_ids(lut, ids, path)
            rgb = tf.cast(tf.io.decode_image(raw, 3, expand_animations=False), tf.int64)
            return data.lookup_colors(rgb, colors, path)

        return decode


def _guess_suffix(image_dir: str, mask_dir: str) -> str:
    """The mask-stem suffix that pairs the most masks with images."""
    images = {os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.lower().endswith(EXTS)}
    masks = [os.path.splitext(f)[0] for f in os.listdir(mask_dir) if f.lower().endswith(EXTS)]

    def matches(suffix: str) -> int:
        return sum(1 for m in masks if m.endswith(suffix) and m[: len(m) - len(suffix)] in images)

    return max(SUFFIXES, key=matches)  # ties keep the earlier (plainer) suffix


def _is_palette_png(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    # PNG signature, IHDR, then width, height, bit depth and colour type (3 = palette) at byte 25.
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[25] == 3


def make_source(data_dir, image_size=None, seed: int = 0, classes: str | None = None, mask_suffix: str = "auto",
                val_fraction: float = 0.2, *, collect_orphans: bool = False) -> FolderSource:
    """Build the folder source (see the module docstring for the options)."""
    return FolderSource(data_dir, image_size, seed, classes=classes, mask_suffix=mask_suffix,
                        val_fraction=val_fraction, collect_orphans=collect_orphans)
