"""Class tables: the single declaration from which a source's labels derive.

Every source declares its classes once, as rows of (name, id, train id,
colour), the way the Cityscapes devkit does. Everything else (class names,
the palette, the id -> train-id lookup, the colour -> train-id lookup) is
derived here, so the names and the colours can never drift apart.

* ``id`` is the value stored in the dataset's index label files.
* ``train_id`` is what the model predicts (0 .. num_classes - 1), or the
  table's ``ignore_label`` for void rows (ignored by loss and metrics).
* ``color`` is the RGB colour of the class in colour label files and in the
  overlays fcnseg draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassRow:
    name: str
    id: int
    train_id: int
    color: RGB


@dataclass(frozen=True)
class ClassTable:
    """An ordered table of classes and the label values derived from it.

    Args:
        rows: every label value the dataset uses, void rows included. Several
            ids may share a train id (e.g. Cityscapes' many void ids).
        ignore_label: the train id of void pixels. Values equal to it (and any
            value >= num_classes) are ignored by losses and metrics.

    Example:
        >>> table = ClassTable((ClassRow("road", 1, 0, (128, 64, 128)),
        ...                     ClassRow("void", 0, 255, (0, 0, 0))), 255)
        >>> table.class_names, table.num_classes
        (('road',), 1)
    """

    rows: tuple[ClassRow, ...]
    ignore_label: int = 255

    def __post_init__(self) -> None:
        train_ids = sorted({r.train_id for r in self.rows if r.train_id != self.ignore_label})
        if train_ids != list(range(len(train_ids))):
            raise ValueError(f"train ids must be 0..N-1 without gaps, got {train_ids}")
        if 0 <= self.ignore_label < len(train_ids):
            raise ValueError(f"ignore label {self.ignore_label} collides with a class train id")

    @property
    def classes(self) -> tuple[ClassRow, ...]:
        """One row per trained class, in train-id order (the first row wins)."""
        first: dict[int, ClassRow] = {}
        for row in self.rows:
            if row.train_id != self.ignore_label:
                first.setdefault(row.train_id, row)
        return tuple(first[i] for i in sorted(first))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.classes)

    @property
    def label_colors(self) -> tuple[RGB, ...]:
        """RGB colour per train id (index = class)."""
        return tuple(r.color for r in self.classes)

    def palette(self, void_color: RGB = (0, 0, 0)) -> np.ndarray:
        """(256, 3) uint8 palette: ``palette[train_id_mask]`` colours a mask."""
        pal = np.zeros((256, 3), np.uint8)
        pal[:] = void_color
        pal[: self.num_classes] = np.array(self.label_colors, np.uint8).reshape(-1, 3)
        return pal

    def id_to_train_id(self, size: int = 256, missing: int | None = None) -> np.ndarray:
        """Lookup array ``lut[id] = train_id``; ids not in the table map to ``missing`` (default: void)."""
        lut = np.full(size, self.ignore_label if missing is None else missing, np.int32)
        for row in self.rows:
            if 0 <= row.id < size:
                lut[row.id] = row.train_id
        return lut

    def color_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, train_ids): ``key = r * 65536 + g * 256 + b`` for each colour row.

        When two rows share a colour (Cityscapes' void rows are all black) the
        first row wins; such rows must agree on their train id.
        """
        seen: dict[int, int] = {}
        for row in self.rows:
            key = color_key(row.color)
            if key in seen and seen[key] != row.train_id:
                raise ValueError(f"colour {row.color} maps to two train ids")
            seen.setdefault(key, row.train_id)
        keys = np.array(sorted(seen), np.int64)
        return keys, np.array([seen[int(k)] for k in keys], np.int32)

    @property
    def valid_ids(self) -> frozenset[int]:
        return frozenset(r.id for r in self.rows)

    @property
    def valid_colors(self) -> frozenset[RGB]:
        return frozenset(tuple(r.color) for r in self.rows)

    def to_json(self) -> dict:
        return {
            "ignore_label": self.ignore_label,
            "rows": [[r.name, r.id, r.train_id, list(r.color)] for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict) -> "ClassTable":
        rows = tuple(ClassRow(n, int(i), int(t), tuple(int(c) for c in col)) for n, i, t, col in data["rows"])
        return cls(rows, int(data["ignore_label"]))


def table(rows: Iterable[Sequence], ignore_label: int = 255) -> ClassTable:
    """Build a ClassTable from plain ``(name, id, train_id, (r, g, b))`` tuples."""
    return ClassTable(tuple(ClassRow(n, int(i), int(t), tuple(c)) for n, i, t, c in rows), ignore_label)


def color_key(rgb):
    """The integer ``r * 65536 + g * 256 + b`` of one (r, g, b) colour, or of every pixel of an
    integer (..., 3) numpy array or tensor (int32 or wider), by which colour labels are looked up."""
    if isinstance(rgb, (tuple, list)):
        r, g, b = (int(c) for c in rgb)
        return r * 65536 + g * 256 + b
    return rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]


def median_frequency_weights(pixel_counts: np.ndarray, image_counts: np.ndarray | None = None) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015, as used by SegNet).

    ``freq[c] = pixels of class c / total pixels of the images where c appears``
    and ``weight[c] = median(freq) / freq[c]``. Classes that never appear get
    weight 0 (they cannot be learned and must not blow up the loss).

    Args:
        pixel_counts: (C,) pixels of each class over the split, void excluded.
        image_counts: (C,) total pixels (void excluded) of the images in which
            each class appears. When None, the plain class frequency over all
            pixels is used instead.
    """
    pixel_counts = np.asarray(pixel_counts, np.float64)
    denom = pixel_counts.sum() if image_counts is None else np.asarray(image_counts, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        freq = np.where(denom > 0, pixel_counts / np.maximum(denom, 1), 0.0)
    present = freq > 0
    if not present.any():
        return np.zeros_like(freq)
    med = np.median(freq[present])
    return np.where(present, med / np.where(present, freq, 1.0), 0.0)
