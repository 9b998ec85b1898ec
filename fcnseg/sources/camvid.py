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
    layout   auto (default: class_dict.csv or train_labels/ means colour),
             segnet or colour
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

    def __init__(self, data_dir, image_size=None, seed: int = 0, layout: str = "auto", *,
                 collect_orphans: bool = False) -> None:
        super().__init__(data_dir, image_size, seed, collect_orphans=collect_orphans)
        layout = option_value(self.name, "layout", layout, LAYOUTS)
        if layout == "auto":
            layout = self._detect()
        self.layout = "colour" if layout == "color" else layout
        if self.layout == "colour":
            from fcnseg.sources.folder import read_classes_csv

            self.classes, self.label_format = read_classes_csv(os.path.join(self.data_dir, "class_dict.csv"))
            if self.label_format != "color":
                raise FcnsegError(f"camvid: {self.data_dir}/class_dict.csv must have columns name,r,g,b")

    def _detect(self) -> str:
        has = lambda p: os.path.exists(os.path.join(self.data_dir, p))  # noqa: E731
        if has("class_dict.csv") or has("train_labels"):
            return "colour"
        if has("trainannot") or has("train.txt"):
            return "segnet"
        raise FcnsegError(f"camvid: {self.data_dir} has neither trainannot/ (SegNet 11-class layout) nor "
                          "train_labels/ + class_dict.csv (32-class colour layout)")

    def samples(self, split: str) -> list[Sample]:
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


def make_source(data_dir, image_size=None, seed: int = 0, layout: str = "auto", *,
                collect_orphans: bool = False) -> CamVid:
    """Build the CamVid source (see the module docstring for the options)."""
    return CamVid(data_dir, image_size, seed, layout=layout, collect_orphans=collect_orphans)
