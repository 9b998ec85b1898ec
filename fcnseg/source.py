"""What a data source is, and the two base classes to build one from.

fcnseg's commands use a source only through the names of ``Source`` below (the
contract, checked by ``fcnseg.sources.load``). Do not write them all: subclass

* ``DataSource`` for generated data: set ``name``, ``classes`` (a
  ``fcnseg.classes.ClassTable``) and ``default_image_size``; write
  ``split_size(split)`` and ``elements(split, shuffle, seed)``;
* ``FileSource`` for image and label files on disk: set ``name``, ``classes``,
  ``label_format`` (and ``splits`` if not train/val/test); write
  ``samples(split)``. ``fcnseg check-labels`` checks such a source's files.

The methods to write are marked ``@abstractmethod``: a class that lacks one is
refused when loaded, naming it. Everything else (``image_size``, the class
table's ``num_classes``, ``class_names``, ``label_colors``, ``ignore_label``,
``num_training``, ``num_validation``, the tf.data ``dataset()`` with
``train_dataset``/``valid_dataset``, the numpy ``train_generator``/
``valid_generator``, ``describe()``) comes from the base class.

A source file (``fcnseg train --data-source my_source.py``, the same for
evaluate and check-labels) defines ``make_source(data_dir, image_size=None,
seed=0, **options)``; it receives ``--data-dir``, ``--image-size``, ``--seed``
and every ``--source-option KEY=VALUE`` (values are strings), plus
``collect_orphans=True`` from check-labels, and returns the source.

Example, files on disk (``images/NAME.png`` with ``labels/NAME.png``
single-channel masks of class ids; a quarter held out for validation)::

    import os

    from fcnseg.classes import table
    from fcnseg.source import FileSource, pair_by_stem, split_by_fraction


    class Puddles(FileSource):
        name = "puddles"
        # name, id in the mask files, train id, colour; a void row for unlabelled pixels
        classes = table([("ground", 0, 0, (128, 64, 128)), ("puddle", 1, 1, (0, 0, 255)),
                         ("void", 255, 255, (0, 0, 0))], ignore_label=255)
        default_image_size = (64, 48)  # (W, H) to train at unless --image-size says otherwise
        label_format = "index"  # masks hold ids; "color": RGB masks in the table's colours
        splits = ("train", "val")

        def samples(self, split):
            pairs = pair_by_stem(os.path.join(self.data_dir, "images"), os.path.join(self.data_dir, "labels"),
                                 on_orphan=self.on_orphan)
            return split_by_fraction(pairs, 0.25, self.seed)[split]


    def make_source(data_dir, image_size=None, seed=0, **options):
        return Puddles(data_dir, image_size, seed, **options)

Example, generated data (no ``--data-dir``)::

    import numpy as np
    import tensorflow as tf

    from fcnseg.classes import table
    from fcnseg.source import DataSource


    class Stripes(DataSource):
        name = "stripes"
        classes = table([("dark", 0, 0, (0, 0, 0)), ("light", 1, 1, (255, 255, 255))])
        default_image_size = (32, 32)

        def split_size(self, split):
            return {"train": 16, "val": 4}[split]

        def elements(self, split, shuffle=False, seed=0):
            def draw(i):  # the same index always draws the same pair
                rng = np.random.default_rng([self.seed, ("train", "val").index(split), i])
                label = np.zeros((32, 32), np.int32)
                label[:, rng.integers(4, 28):] = 1
                return (label[..., None] * 200 + 30).repeat(3, -1).astype(np.uint8), label

            pairs = [draw(i) for i in range(self.split_size(split))]
            ds = tf.data.Dataset.from_tensor_slices(tuple(np.stack(p) for p in zip(*pairs)))
            return ds.shuffle(len(pairs), seed=seed) if shuffle else ds


    def make_source(data_dir, image_size=None, seed=0, **options):
        return Stripes(image_size, seed)

Packages add sources under the ``fcnseg.sources`` entry-point group, pointing
at a module with such a ``make_source``.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence

import numpy as np

from fcnseg.classes import ClassTable
from fcnseg.errors import FcnsegError
from fcnseg.files import not_a_folder

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    image: str
    label: str | None  # None for unlabelled test images


class Source(Protocol):
    """Every name fcnseg's commands use on a source; ``DataSource`` provides all but the
    class attributes and its abstract methods."""

    name: str  # short name, e.g. "camvid"
    classes: ClassTable  # name, id, train id, colour per row; void rows marked by ignore_label
    image_size: tuple[int, int]  # (W, H) the model trains at
    num_classes: int
    class_names: tuple[str, ...]
    label_colors: tuple[tuple[int, int, int], ...]
    ignore_label: int
    num_training: int
    num_validation: int

    def split_size(self, split: str) -> int:
        """Pairs in ``split`` (training derives its steps per epoch from "train")."""

    def elements(self, split: str, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
        """Unbatched (uint8 image (H, W, 3), int32 train-id label (H, W)) pairs of ``split``."""

    def evaluation_elements(self, split: str) -> tf.data.Dataset:
        """The pairs ``fcnseg evaluate`` scores, labels at their own resolution."""

    def dataset(self, split: str, batch_size: int, *, training: bool = False, augment=None,
                seed: int | None = None, drop_remainder: bool = False) -> tf.data.Dataset:
        """Batches of (float32 images in 0..255, int32 labels): what training and validation read."""

    def train_dataset(self, batch_size: int, **kwargs) -> tf.data.Dataset: ...

    def valid_dataset(self, batch_size: int, **kwargs) -> tf.data.Dataset: ...

    def train_generator(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def valid_generator(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def describe(self) -> dict:
        """What a checkpoint keeps to predict without the data: name, image_size, class table."""


# The contract's names, in the order declared: what ``fcnseg.sources.load`` requires.
CONTRACT: tuple[str, ...] = tuple(Source.__annotations__) + tuple(
    n for n, v in vars(Source).items() if callable(v) and not n.startswith("_"))


class DataSource(ABC):
    """Everything a source shares; a subclass sets ``name``, ``classes`` and
    ``default_image_size`` and writes ``split_size`` and ``elements``."""

    name: str = "source"
    classes: ClassTable
    default_image_size: tuple[int, int] = (480, 360)

    def __init__(self, image_size: tuple[int, int] | None = None, seed: int = 0) -> None:
        self.image_size = tuple(image_size or self.default_image_size)
        self.seed = seed

    # Derived from the class table, never declared twice.
    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes.class_names

    @property
    def label_colors(self) -> tuple[tuple[int, int, int], ...]:
        return self.classes.label_colors

    @property
    def ignore_label(self) -> int:
        return self.classes.ignore_label

    @property
    def num_training(self) -> int:
        return self.split_size("train")

    @property
    def num_validation(self) -> int:
        return self.split_size("val")

    @abstractmethod
    def split_size(self, split: str) -> int:
        """Pairs in ``split``; an unknown split is a one-line FcnsegError."""

    @abstractmethod
    def elements(self, split: str, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
        """Unbatched (uint8 image (H, W, 3), int32 train-id label (H, W)) pairs of ``split``, any
        size (``dataset`` resizes them); ``shuffle`` with ``seed``: training's order, fixed by the
        seed (each epoch passes its own), which --resume relies on."""

    def evaluation_elements(self, split: str) -> tf.data.Dataset:
        """The pairs ``fcnseg evaluate`` scores; labels at their own resolution (here: as ``elements``)."""
        return self.elements(split)

    def dataset(self, split: str, batch_size: int, *, training: bool = False, augment=None,
                seed: int | None = None, drop_remainder: bool = False):
        """The tf.data pipeline training and evaluation use.

        ``training`` shuffles (pairs are shuffled together, before decoding, so
        an image can never meet another image's label) and applies ``augment``
        (default: ``data.Augment()``); otherwise images are resized to
        ``image_size``, labels nearest-neighbour.
        """
        from fcnseg import data

        seed = self.seed if seed is None else seed
        w, h = self.image_size
        if training and augment is None:
            augment = data.Augment()
        pairs = self.elements(split, shuffle=training, seed=seed)
        return data.finish(
            pairs,
            size_hw=(h, w),
            batch_size=batch_size,
            ignore_label=self.ignore_label,
            augment=augment if training else None,
            seed=seed,
            drop_remainder=drop_remainder,
        )

    def train_dataset(self, batch_size: int, **kwargs):
        return self.dataset("train", batch_size, training=True, **kwargs)

    def valid_dataset(self, batch_size: int, **kwargs):
        return self.dataset("val", batch_size, training=False, **kwargs)

    def train_generator(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images float32 (B,H,W,3) in 0..255, labels int32 (B,H,W)) once through train."""
        yield from self.train_dataset(batch_size).as_numpy_iterator()

    def valid_generator(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self.valid_dataset(batch_size).as_numpy_iterator()

    def describe(self) -> dict:
        """What a checkpoint must remember to predict without the data."""
        return {"name": self.name, "image_size": list(self.image_size), "classes": self.classes.to_json()}


class FileSource(DataSource):
    """A source backed by image and label files on disk.

    A subclass writes ``samples(split) -> list[Sample]`` and sets ``label_format``
    to "index" (single-channel PNG of ids) or "color" (RGB PNG of class colours).
    ``labels_resized`` says labels may be stored at another resolution than their
    image (resized nearest-neighbour on load). check-labels also asks
    ``label_table(path)``, ``color_labels(sample)``, ``color_labels_match``,
    ``label_ids(label, path)`` and ``class_share_problem(counts)``, whose defaults
    fit any source whose label files all hold ``classes``' ids or colours.

    ``collect_orphans``: an image without label (or label without image) is
    recorded, listed by ``orphans_of(split)``, instead of an error; check-labels
    builds its source so to report every unpaired file. ``samples`` passes
    ``on_orphan`` to ``pair_by_stem`` (or calls ``report_orphan``) for that.
    """

    label_format: str = "index"
    labels_resized: bool = False
    # A split whose decoded pixels fit in this many bytes is decoded once and
    # kept in memory, so later epochs skip PNG decoding (CamVid train: ~0.25 GB;
    # Cityscapes at full size is far over and keeps decoding per epoch).
    cache_bytes: int = 2 * 1024**3
    splits: tuple[str, ...] = SPLITS  # the split names samples() accepts

    def __init__(self, data_dir: str | os.PathLike, image_size: tuple[int, int] | None = None,
                 seed: int = 0, *, collect_orphans: bool = False) -> None:
        super().__init__(image_size, seed)
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        if self.data_dir is None:
            raise FcnsegError(f"--data-dir is required for the {self.name} source")
        if not os.path.isdir(self.data_dir):
            raise FcnsegError(f"data dir {self.data_dir} {not_a_folder(self.data_dir)}")
        # None: an unpaired file is an error. A list: every (path, message) found so far.
        self.orphans: list[tuple[str, str]] | None = [] if collect_orphans else None
        self._samples: dict[str, list[Sample]] = {}
        self._split_orphans: dict[str, list[tuple[str, str]]] = {}
        self._decoded: dict = {}  # split -> cached tf.data of decoded pairs, shared by every epoch

    @abstractmethod
    def samples(self, split: str) -> list[Sample]:
        """The split's (image, label) paths, sorted; ``label`` None for unlabelled test images.
        A missing folder or an empty split is a one-line FcnsegError naming the path."""

    def report_orphan(self, path: str, message: str) -> None:
        """An unpaired file: raise, unless the source collects orphans."""
        if self.orphans is None:
            raise FcnsegError(message)
        self.orphans.append((path, message))

    @property
    def on_orphan(self) -> Callable[[str, str], None] | None:
        """What ``pair_by_stem(on_orphan=...)`` takes: None keeps its one summary error."""
        return None if self.orphans is None else self.report_orphan

    def orphans_of(self, split: str) -> list[tuple[str, str]]:
        """(path, message) of each unpaired file found listing ``split`` (empty unless collecting)."""
        self.cached_samples(split)
        return list(self._split_orphans.get(split, ()))

    def label_table(self, path: str) -> ClassTable:
        """The table whose ids (or colours) the label file ``path`` holds."""
        return self.classes

    def color_labels(self, sample: Sample) -> list[str]:
        """Extra colour renderings of ``sample``'s label for check-labels to verify (none here)."""
        return []

    # check-labels: the colour labels render the index labels exactly, so it compares them pixel for pixel.
    color_labels_match: bool = False

    def label_ids(self, label, path: str):
        """The index array check-labels checks, from the label file as ``fcnseg.imageio`` reads it
        (here the file itself; Lyft/CARLA: the red channel, the ego hood given a void id)."""
        return label

    def class_share_problem(self, pixel_counts) -> str | None:
        """Why a split's per-class pixel counts cannot be this dataset's (check-labels reports it), or None."""
        return None

    def cached_samples(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise FcnsegError(f"{self.name}: unknown split {split!r} for {self.data_dir}; "
                              f"expected one of {', '.join(self.splits)}")
        if split not in self._samples:
            before = len(self.orphans) if self.orphans is not None else 0
            self._samples[split] = self.samples(split)
            self._split_orphans[split] = self.orphans[before:] if self.orphans is not None else []
        return self._samples[split]

    def split_size(self, split: str) -> int:
        return len(self.cached_samples(split))

    def label_decoder(self):
        """A function path -> int32 train-id label, built once per pipeline."""
        import tensorflow as tf

        from fcnseg import data

        if self.label_format == "index":
            lut = tf.constant(data.strict_id_lut(self.classes))
            return lambda path: data.read_index_label(path, lut)
        keys, train_ids = self.classes.color_keys()
        table = data.color_lookup_table(keys, train_ids)
        return lambda path: data.read_color_label(path, table)

    def elements(self, split: str, shuffle: bool = False, seed: int = 0):
        import tensorflow as tf

        from fcnseg import data

        # Once decoded into memory, the files are not needed (nor checked) again.
        samples = self.readable_samples(split, opened=split not in self._decoded)
        images = [s.image for s in samples]
        ds = tf.data.Dataset.from_tensor_slices((images, [s.label for s in samples]))
        load = self.loader(keep_label_size=False)

        def uncached():
            # Shuffle paths, not pixels: a buffer of decoded images would not fit either.
            paths = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True) if shuffle else ds
            return paths.map(load, num_parallel_calls=data.AUTOTUNE)

        if split not in self._decoded:
            small_ids = self.num_classes <= 255 and 0 <= self.ignore_label <= 255
            if not self._fits_in_memory(images[0], len(samples), 3 + (1 if small_ids else 4)):
                return uncached()
            decoded = ds.map(load, num_parallel_calls=data.AUTOTUNE)
            if small_ids:  # uint8 in memory, a quarter of int32
                decoded = decoded.map(lambda i, l: (i, tf.cast(l, tf.uint8)))
            decoded = decoded.cache()
            # Read it through once now: tf.data throws away a cache whose first pass stops
            # early (--steps-per-epoch, --val-steps, the TensorBoard samples), decodes again
            # next time and warns about it every epoch.
            try:
                decoded.reduce(np.int64(0), lambda n, _: n + 1)
            except tf.errors.OpError:  # a bad file: the uncached pipeline reports it, naming the file
                return uncached()
            self._decoded[split] = decoded
        ds = self._decoded[split]
        if shuffle:
            ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
        return ds.map(lambda i, l: (i, tf.cast(l, tf.int32)), num_parallel_calls=data.AUTOTUNE)

    def readable_samples(self, split: str, opened: bool = True) -> list[Sample]:
        """The split's labelled samples; with ``opened`` every file is proven openable now: a
        permission or a symlink loop would otherwise surface mid-epoch as a TensorFlow error."""
        samples = [s for s in self.cached_samples(split) if s.label is not None]
        if not samples:
            raise FcnsegError(f"{self.name}: no labelled {split} samples under {self.data_dir}")
        for path in (p for s in samples for p in (s.image, s.label) if opened):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise FcnsegError(f"{path}: cannot be read: {e.strerror or e}") from None
            try:
                # A folder opens fine here but fails in TensorFlow's ReadFile, mid-epoch, with a traceback.
                is_folder = stat.S_ISDIR(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
            if is_folder:
                raise FcnsegError(f"{path}: is a folder, not an image file")
        return samples

    def loader(self, keep_label_size: bool):
        """(image path, label path) -> (uint8 image, int32 train ids), every label value checked.
        The label gets its image's size (nearest neighbour) unless ``keep_label_size``."""
        from fcnseg import data

        decode_label = self.label_decoder()
        allow_resize = self.labels_resized
        num_classes, ignore = self.num_classes, self.ignore_label

        def load(image_path, label_path):
            image = data.read_image(image_path)
            label = data.check_train_ids(decode_label(label_path), label_path, num_classes, ignore)
            if keep_label_size and allow_resize:
                return image, label
            return image, data.match_label_size(image, label, label_path, allow_resize)

        return load

    def evaluation_elements(self, split: str):
        """(image, label) pairs with each label at its own resolution (which may exceed its
        image's), as ``fcnseg evaluate`` scores them; decoded afresh, not cached."""
        import tensorflow as tf

        from fcnseg import data

        samples = self.readable_samples(split)
        ds = tf.data.Dataset.from_tensor_slices(([s.image for s in samples], [s.label for s in samples]))
        return ds.map(self.loader(keep_label_size=True), num_parallel_calls=data.AUTOTUNE)

    def _fits_in_memory(self, first_image: str, count: int, bytes_per_pixel: int) -> bool:
        """Whether ``count`` images the size of ``first_image`` (decoded) fit in ``cache_bytes``."""
        import tensorflow as tf

        from fcnseg import data

        try:
            h, w = data.read_image(first_image).shape[:2]
        except (tf.errors.OpError, ValueError):  # unreadable: the pipeline reports it, naming the file
            return False
        return count * h * w * bytes_per_pixel <= self.cache_bytes


def split_by_fraction(samples: Sequence[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Deterministic train/val split of one list: the same files and seed give
    the same split on every machine (a seeded permutation of the sorted list).
    At least one validation sample whenever there are two or more samples."""
    samples = sorted(samples, key=lambda s: s.image)
    n_val = min(max(round(len(samples) * val_fraction), 1 if val_fraction > 0 else 0), len(samples) - 1)
    order = np.random.default_rng(seed).permutation(len(samples))
    val = set(order[: max(n_val, 0)].tolist())
    return {"train": [s for i, s in enumerate(samples) if i not in val],
            "val": [s for i, s in enumerate(samples) if i in val]}


def option_value(source: str, key: str, value, allowed: Sequence[str]) -> str:
    """An option that takes one of a few words, with a one-line error otherwise."""
    value = str(value).lower()
    if value not in allowed:
        raise FcnsegError(f"--source-option {key}={value}: the {source} source expects {key}="
                          + "|".join(allowed))
    return value


def fraction_option(source: str, key: str, value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = -1.0
    if not 0.0 <= f < 1.0:
        raise FcnsegError(f"--source-option {key}={value}: the {source} source expects a fraction in [0, 1)")
    return f


def pair_by_stem(image_dir: str, label_dir: str, label_suffix: str = "", image_exts: Sequence[str] = (
        ".png", ".jpg", ".jpeg", ".bmp"), on_orphan: Callable[[str, str], None] | None = None) -> list[Sample]:
    """Pair images with labels by file stem (``label = stem + label_suffix``).

    Raises one error naming the first image without a label or label without
    an image, so a dataset is never silently trained on a subset; with
    ``on_orphan(path, message)`` each unpaired file is passed there instead.
    """
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise FcnsegError(f"expected folder {folder} {not_a_folder(folder)}")
    images = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(image_dir)) if f.lower().endswith(tuple(image_exts))}
    labels = {}
    for f in sorted(os.listdir(label_dir)):
        stem, ext = os.path.splitext(f)
        if ext.lower() in image_exts and stem.endswith(label_suffix):
            labels[stem[: len(stem) - len(label_suffix)] if label_suffix else stem] = f
    missing = sorted(set(images) - set(labels))
    orphans = sorted(set(labels) - set(images))
    if on_orphan is not None:
        for k in missing:
            on_orphan(os.path.join(image_dir, images[k]), f"image has no label in {label_dir}")
        for k in orphans:
            on_orphan(os.path.join(label_dir, labels[k]), f"label has no image in {image_dir}")
        return [Sample(os.path.join(image_dir, images[k]), os.path.join(label_dir, labels[k]))
                for k in sorted(images) if k in labels]
    if missing:
        raise FcnsegError(f"image {os.path.join(image_dir, images[missing[0]])} has no label in {label_dir}"
                          f" ({len(missing)} images without labels)")
    if orphans:
        raise FcnsegError(f"label {os.path.join(label_dir, labels[orphans[0]])} has no image in {image_dir}"
                          f" ({len(orphans)} labels without images)")
    return [Sample(os.path.join(image_dir, images[k]), os.path.join(label_dir, labels[k])) for k in sorted(images)]
