"""``fcnseg check-labels``: prove a dataset's labels are valid before training on them.

Every label pixel of every sample is read with OpenCV/numpy in a thread pool
(cv2 and numpy release the GIL; TensorFlow would cost seconds per batch of
Cityscapes frames) and checked against the source's class table:

* the file pairs with its image, decodes whole (truncated PNGs included) and
  has its image's size, unless the source stores labels at another resolution;
* index labels hold only ids of the table, colour labels only its colours;
* unknown values lying along class borders, or label values that sit between
  their neighbours' values, betray a label resized with interpolation;
* the train ids the pipeline would feed the loss are one-hot-able: each
  non-void pixel is exactly one class.

The per-class pixel histogram of the checked labels gives SegNet's
median-frequency class weights, which ``fcnseg train --class-weights`` reads.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from fcnseg.classes import ClassTable, color_key, median_frequency_weights
from fcnseg.errors import FcnsegError
from fcnseg.files import ensure_writable_dir, write_json
from fcnseg.labelrules import looks_interpolated
from fcnseg.progress import open_bar
from fcnseg.source import Sample
from fcnseg import imageio

UNREADABLE = "unreadable"
TOO_LARGE = "too large"
MISSING_PAIR = "missing pair"
SIZE_MISMATCH = "size mismatch"
LISTING = "split cannot be listed"
PIPELINE = "pipeline decodes differently"
# Problems that make the tf.data pipeline itself fail (what find_unreadable looks for).
PIPELINE_FAILURES = (UNREADABLE, TOO_LARGE, SIZE_MISMATCH)


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str  # a short category, counted in the summary
    message: str  # what is wrong, for people
    detail: str = ""  # why, where known (e.g. which marker a truncated file lacks)

    def line(self) -> str:
        return f"{self.path}: {self.reason}: {self.message}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class SampleResult:
    split: str
    index: int
    sample: Sample
    paths: tuple[str, ...]
    problems: list[Problem]
    pixel_counts: np.ndarray | None = None  # (C,) train-id pixels, void excluded
    preview: np.ndarray | None = None  # RGB preview, only for the samples picked


@dataclass
class Report:
    splits: tuple[str, ...]
    class_names: tuple[str, ...]
    files: dict[str, int] = field(default_factory=dict)  # split -> files examined
    problems: list[Problem] = field(default_factory=list)
    problem_splits: list[str] = field(default_factory=list)  # the split of each problem
    pixel_counts: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (C,)
    image_counts: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (C,) pixels of images with c
    previews: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def weights_split(self) -> str:
        """The split the class weights come from: train when it was checked."""
        return "train" if "train" in self.pixel_counts else next(iter(self.pixel_counts), "")

    def class_weights(self) -> np.ndarray:
        split = self.weights_split
        if not split:
            return np.zeros(len(self.class_names))
        return median_frequency_weights(self.pixel_counts[split], self.image_counts[split])

    def weights_json(self) -> dict:
        """What ``fcnseg train --class-weights FILE`` reads."""
        counts = self.pixel_counts.get(self.weights_split, np.zeros(len(self.class_names)))
        return {"class_names": list(self.class_names),
                "class_weights": [round(float(w), 6) for w in self.class_weights()],
                "pixel_counts": [int(c) for c in counts]}

    def lines(self) -> list[str]:
        """The report for people: problems, per-split summary, histogram and weights."""
        out = [p.line() for p in self.problems]
        for split in self.splits:
            probs = [p for p, s in zip(self.problems, self.problem_splits) if s == split]
            bad = len({p.path for p in probs})
            by_reason: dict[str, set] = {}
            for p in probs:
                by_reason.setdefault(p.reason, set()).add(p.path)
            reasons = "; ".join(f"{r}: {len(v)}" for r, v in sorted(by_reason.items()))
            out.append(f"{split}: {self.files.get(split, 0)} files checked, {bad} bad" + (f" ({reasons})" if reasons else ""))
        split = self.weights_split
        if split:
            counts = self.pixel_counts[split]
            total = max(int(counts.sum()), 1)
            out.append(f"class pixels ({split}, void excluded) and median-frequency weights:")
            for name, n, w in zip(self.class_names, counts, self.class_weights()):
                out.append(f"  {name:20s} {int(n):12d} {100 * n / total:6.2f}%  weight {w:.4f}")
        n_files = sum(self.files.values())
        out.append(f"{'OK' if self.ok else 'FAILED'}: {n_files} files in {self.seconds:.1f} s "
                   f"({n_files / max(self.seconds, 1e-9):.1f} files/s)")
        return out


def check_labels(source, splits: Sequence[str] = ("train", "val"), *, values: bool = True,
                 previews_dir: str | None = None, num_previews: int = 8, workers: int | None = None,
                 progress: Callable[[int], object] | None = None) -> Report:
    """Check every sample of ``splits``; see the module docstring for what is checked.

    Args:
        source: a file-backed source (``cached_samples(split)``, ``classes``, ``label_format``).
        values: False checks only that files pair, decode and agree in size (fast path of
            ``validate.find_unreadable``).
        previews_dir: where to write ``num_previews`` blended previews (None: none).
        progress: ``n -> context manager with update(k)``, e.g. ``click.progressbar``.
    """
    if getattr(source, "cached_samples", None) is None:
        raise FcnsegError(f"check-labels reads label files; the {getattr(source, 'name', '?')} source has none")
    if previews_dir:  # before the slow part: a read-only folder fails now, in one line
        ensure_writable_dir(previews_dir, "--previews")
    start = time.perf_counter()
    report = Report(tuple(splits), tuple(source.class_names))
    jobs = _list_jobs(source, splits, report)
    picks = _preview_picks(len(jobs), num_previews if previews_dir else 0)
    rules = Rules.of(source)
    results: list[SampleResult] = []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(check_sample, rules, split, i, s, values, n in picks)
                   for n, (split, i, s) in enumerate(jobs)]
        with open_bar(progress if futures else None, len(futures)) as b:
            for future in as_completed(futures):
                results.append(future.result())
                b.update(1)
    results.sort(key=lambda r: (list(splits).index(r.split), r.index))
    for r in results:
        report.files[r.split] = report.files.get(r.split, 0) + len(r.paths)
        for p in r.problems:
            _add(report, r.split, p)
        if r.pixel_counts is not None:
            counts = report.pixel_counts.setdefault(r.split, np.zeros(source.num_classes, np.int64))
            images = report.image_counts.setdefault(r.split, np.zeros(source.num_classes, np.int64))
            counts += r.pixel_counts
            images += np.where(r.pixel_counts > 0, r.pixel_counts.sum(), 0)
    judge = getattr(source, "class_share_problem", None)  # e.g. BDD100K: background must dominate
    for split, counts in report.pixel_counts.items():
        why = judge(counts) if judge is not None else None
        if why:
            _add(report, split, Problem(str(getattr(source, "data_dir", source.name)), SHARES, why))
    previews = [r for r in results if r.preview is not None]
    if previews:
        for p in _pipeline_agreement(source, rules, [(r.split, r.sample) for r in previews]):
            _add(report, p[0], p[1])
        report.previews = _write_previews(previews_dir, previews)
    report.seconds = time.perf_counter() - start
    return report


def _list_jobs(source, splits: Sequence[str], report: Report) -> list[tuple[str, int, Sample]]:
    """(split, index, sample) of every labelled sample; listing problems and orphans go to ``report``.

    Unpaired files are reported when the source was built with ``collect_orphans=True``
    (``sources.load(..., collect_orphans=True)``); otherwise listing stops at the first.

    A split with nothing at all in it is an error: "0 files checked, OK" would pass an empty
    or misnamed folder as a valid dataset.
    """
    jobs: list[tuple[str, int, Sample]] = []
    for split in splits:
        listed = True
        try:
            samples = [s for s in source.cached_samples(split) if s.label is not None]
        except FcnsegError as e:
            samples, listed = [], False
            _add(report, split, Problem(str(getattr(source, "data_dir", source.name)), LISTING, str(e)))
        orphans = getattr(source, "orphans_of", lambda _: ())(split) if listed else ()
        if listed and not samples and not orphans:
            raise FcnsegError(f"the {split} split of the {source.name} source under "
                              f"{getattr(source, 'data_dir', None)} has no labelled images")
        for path, message in orphans:
            _add(report, split, Problem(path, MISSING_PAIR, message))
        report.files[split] = len(orphans)
        jobs += [(split, i, s) for i, s in enumerate(samples)]
    return jobs


def check_weights_out(path: str) -> None:
    """Prove ``--weights-out``'s folder exists and is writable before the slow check."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FcnsegError(f"--weights-out {path} is a folder; give a file name, e.g. {path}/class_weights.json")
    ensure_writable_dir(folder, "--weights-out")


def write_weights(report: Report, path: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise FcnsegError(f"--weights-out {path}: cannot create its folder: {e.strerror or e}") from None
    write_json(path, report.weights_json(), "--weights-out")  # a failure (a full disk) keeps the previous file


def _add(report: Report, split: str, problem: Problem) -> None:
    report.problems.append(problem)
    report.problem_splits.append(split)


def _preview_picks(n: int, k: int) -> set[int]:
    """k samples spread over the whole list (not just the first street of the first split)."""
    if k <= 0 or n == 0:
        return set()
    return set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist())


def check_sample(rules: Rules, split: str, index: int, sample: Sample, values: bool,
                 want_preview: bool) -> SampleResult:
    """Every check of one sample (``values``: also its label values), run in a worker thread."""
    problems: list[Problem] = []
    paths = [sample.image, sample.label]
    image = _read(sample.image, "image", problems)
    label = _read(sample.label, "label", problems)
    result = SampleResult(split, index, sample, (), problems)
    if label is not None and image is not None and not rules.resized and image.shape[:2] != label.shape[:2]:
        problems.append(Problem(sample.label, SIZE_MISMATCH,
                                f"label is {label.shape[1]}x{label.shape[0]} but its image {sample.image} is "
                                f"{image.shape[1]}x{image.shape[0]}"))
    if values and label is not None:
        found, train_ids = rules.check_label(label, sample.label)
        problems += [Problem(sample.label, reason, message) for reason, message in found]
        for extra in rules.color_labels(sample):
            paths.append(extra)
            colour = _read(extra, "label", problems)
            if colour is None:
                continue
            problems += [Problem(extra, reason, message) for reason, message in rules.check_colors(colour)]
            if rules.colors_match and train_ids is not None:
                problems += [Problem(extra, reason, message) for reason, message in rules.agreement(colour, train_ids)]
        if train_ids is not None:
            result.pixel_counts = np.bincount(train_ids.ravel(), minlength=rules.num_classes + 1)[: rules.num_classes]
            if want_preview and image is not None:
                result.preview = _preview(image, train_ids, rules)
    result.paths = tuple(paths)
    return result


def _read(path: str, what: str, problems: list[Problem]) -> np.ndarray | None:
    """The decoded file (``imageio``'s policy, as every command reads it), or None and a problem."""
    try:
        return imageio.read(path)
    except imageio.ImageError as e:
        problems.append(Problem(path, TOO_LARGE, e.why) if e.too_large else
                        Problem(path, UNREADABLE, f"missing, empty, corrupt or truncated {what}", e.why))
        return None


def _pipeline_agreement(source, rules: Rules, picked: list[tuple[str, Sample]]) -> list[tuple[str, Problem]]:
    """Decode the preview samples with the source's own tf.data decoder and compare: the
    numpy encoding above must be what training sees, or the checks prove nothing."""
    decoder = getattr(source, "label_decoder", None)
    if decoder is None:
        return []
    decode = decoder()
    problems = []
    for split, sample in picked:
        label = imageio.read(sample.label)
        found, ours = rules.check_label(label, sample.label)
        if found or ours is None:  # already reported; the pipeline maps bad values to void
            continue
        theirs = decode(sample.label).numpy()
        if theirs.shape != ours.shape or not np.array_equal(theirs, ours):
            differ = int(np.sum(theirs != ours)) if theirs.shape == ours.shape else ours.size
            problems.append((split, Problem(sample.label, PIPELINE,
                                            f"{differ} pixels get other train ids from the source's decoder")))
    return problems


def _write_previews(folder: str, previews: list[SampleResult]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    written = []
    for n, r in enumerate(previews):
        stem = os.path.splitext(os.path.basename(r.sample.image))[0]
        path = os.path.join(folder, f"{n:02d}_{r.split}_{stem}.png")
        try:
            ok = cv2.imwrite(path, cv2.cvtColor(r.preview, cv2.COLOR_RGB2BGR))
        except cv2.error:
            ok = False
        if not ok:  # a full disk or a folder made read-only meanwhile
            with contextlib.suppress(OSError):
                os.remove(path)  # a half-written preview
            raise FcnsegError(f"--previews: could not write {path}")
        written.append(path)
    return written


# ---------------------------------------------------------------- pixel checks

UNKNOWN_VALUES = "unknown values"
UNKNOWN_COLOURS = "unknown colours"
RGB_INDEX = "RGB mask given where an index mask was expected"
INTERPOLATED = "looks interpolated (resized bilinearly?)"
NOT_ONE_HOT = "not one-hot after encoding"
COLOUR_DISAGREES = "colour label disagrees with its index label"
SHARES = "implausible class shares"
MAX_LISTED = 5  # unknown values named per file, most frequent first


@dataclass(frozen=True)
class Rules:
    """What one source's label files may hold, shared read-only by the worker threads."""

    format: str  # "index" or "color", as the source's label_format
    table: ClassTable
    resized: bool  # labels may be stored at another resolution than their image
    table_for: Callable[[str], ClassTable]  # a file's table (Cityscapes: labelIds or labelTrainIds)
    color_labels: Callable[[Sample], list[str]]  # extra colour files to check (Cityscapes *_color.png)
    # The file as read -> the index array its table describes, where that is not the file itself
    # (Lyft/CARLA: ids in the red channel, the ego hood given a void id of its own).
    label_ids: Callable[[np.ndarray, str], np.ndarray] | None = None
    colors_match: bool = False  # colour labels render the index labels exactly (BDD100K colour maps)
    _luts: dict = field(default_factory=dict)

    @classmethod
    def of(cls, source) -> "Rules":
        return cls(getattr(source, "label_format", "index"), source.classes,
                   bool(getattr(source, "labels_resized", False)),
                   getattr(source, "label_table", None) or (lambda path: source.classes),
                   getattr(source, "color_labels", None) or (lambda sample: []),
                   getattr(source, "label_ids", None), bool(getattr(source, "color_labels_match", False)))

    @property
    def num_classes(self) -> int:
        return self.table.num_classes

    def _lut(self, table: ClassTable, kind: str):
        key = (id(table), kind)
        if key not in self._luts:  # a race only computes the same thing twice
            if kind == "ids":
                self._luts[key] = table.id_to_train_id(65536)
            elif kind == "colors":
                try:
                    self._luts[key] = table.color_keys()
                except ValueError as e:
                    raise FcnsegError(f"the class table cannot decode colour labels: {e}") from None
            else:
                self._luts[key] = (np.array(sorted(color_key(c) for c in table.valid_colors), np.int64), None)
        return self._luts[key]

    def check_label(self, label: np.ndarray, path: str) -> tuple[list[tuple[str, str]], np.ndarray | None]:
        """(problems as (reason, message), train ids the pipeline would see or None)."""
        table = self.table_for(path)
        if self.label_ids is not None:
            label = self.label_ids(label, path)
        if self.format == "color":
            found, train = _check_colors(label, self._lut(table, "colors"), self.table.ignore_label)
        else:
            found, train = _check_index(label, table, self._lut(table, "ids"))
        if train is not None:
            # The one-hot row of a pixel is eye(C)[train_id]: exactly one 1 iff 0 <= id < C,
            # all zeros (ignored by the loss) iff void. Asserting the range is that check
            # without building an (H, W, C) array per file.
            bad = ~(((train >= 0) & (train < self.num_classes)) | (train == self.table.ignore_label))
            if bad.any():
                values = np.unique(train[bad])[:MAX_LISTED].tolist()
                found.append((NOT_ONE_HOT, f"{int(bad.sum())} pixels have train ids {values}, neither a class "
                                           f"(0..{self.num_classes - 1}) nor void ({self.table.ignore_label})"))
        return found, train

    def agreement(self, colour: np.ndarray, train: np.ndarray) -> list[tuple[str, str]]:
        """A colour label (BGR, as read) that should render ``train``: the pixels it draws otherwise.
        Catches index masks whose ids mean something else than the table says (a swapped layout)."""
        if colour.ndim != 3 or colour.shape[:2] != train.shape:
            return []  # a size or channel problem is reported by the other checks
        void = next((r.color for r in self.table.rows if r.train_id == self.table.ignore_label), (0, 0, 0))
        drawn = color_key(colour[..., 2::-1].astype(np.int32))
        wrong = drawn != color_key(self.table.palette(void).astype(np.int32))[train]
        if not wrong.any():
            return []
        ys, xs = np.nonzero(wrong)
        names = self.table.class_names
        return [(COLOUR_DISAGREES, f"{int(wrong.sum())} pixels ({wrong.mean():.1%}) are not drawn in the colour of "
                 f"their index label's class, e.g. at x {xs[0]} y {ys[0]}: index label "
                 f"{names[train[ys[0], xs[0]]] if train[ys[0], xs[0]] < len(names) else 'void'}, colour "
                 f"({','.join(str(int(c)) for c in colour[ys[0], xs[0], 2::-1])})")]

    def check_colors(self, label: np.ndarray) -> list[tuple[str, str]]:
        """Colour files beside index labels: only the table's colours (no encoding)."""
        return _check_colors(label, self._lut(self.table, "valid"), self.table.ignore_label)[0]


def _check_index(label: np.ndarray, table: ClassTable, lut: np.ndarray):
    found = []
    if label.ndim == 3:
        grey = label.shape[2] >= 3 and all(np.array_equal(label[..., 0], label[..., c]) for c in (1, 2))
        found.append((RGB_INDEX, f"{label.shape[2]} channels, " + (
            "all equal (a grey mask saved as RGB): save it single-channel" if grey else
            "and the pipeline would read their luminance as class ids")))
        if not grey:
            return found, None
        label = label[..., 0]
    counts = np.bincount(label.ravel())
    valid = np.zeros(len(counts), bool)
    valid[[i for i in table.valid_ids if 0 <= i < len(counts)]] = True
    bad_values = np.flatnonzero((counts > 0) & ~valid)
    bad = None
    if bad_values.size:
        bad = ~valid[label]
        found.append((UNKNOWN_VALUES, _describe(label, bad_values, counts[bad_values], str, "values")
                      + f"; the table has ids {_ranges(sorted(table.valid_ids))}"))
    why = _interpolation(label, bad, bad_values.size)
    if why:
        found.append((INTERPOLATED, why))
    return found, lut[label]  # uint8/uint16: always within the 65536-entry lookup


def _check_colors(label: np.ndarray, lut: tuple[np.ndarray, np.ndarray | None], ignore: int):
    found = []
    # A grey file reads as (v, v, v), as tf.io.decode_png(channels=3) would read it.
    rgb = np.repeat(label[..., None], 3, -1) if label.ndim == 2 else label[..., 2::-1] if label.shape[2] >= 3 \
        else np.repeat(label[..., :1], 3, -1)
    rgb = rgb.astype(np.int32)
    keys = color_key(rgb)
    table_keys, train_ids = lut
    idx = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    known = table_keys[idx] == keys
    if not known.all():
        bad_keys, counts = np.unique(keys[~known], return_counts=True)
        fmt = lambda k: f"({k >> 16},{(k >> 8) & 255},{k & 255})"  # noqa: E731
        found.append((UNKNOWN_COLOURS, _describe(keys, bad_keys, counts, fmt, "colours")
                      + f"; the table has {len(table_keys)} colours"))
        why = _interpolation(rgb, ~known, len(bad_keys))
        if why:
            found.append((INTERPOLATED, why))
    train = None if train_ids is None else np.where(known, train_ids[idx], ignore)
    return found, train


def _describe(values: np.ndarray, bad: np.ndarray, counts: np.ndarray, fmt, what: str) -> str:
    """The most frequent unknown values with pixel counts and bounding boxes."""
    parts = []
    for j in np.argsort(-counts, kind="stable")[:MAX_LISTED]:
        ys, xs = np.nonzero(values == bad[j])
        parts.append(f"{fmt(int(bad[j]))} x {int(counts[j])} px at x {xs.min()}..{xs.max()} y {ys.min()}..{ys.max()}")
    more = f", and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return f"{len(bad)} unknown {what} in {int(counts.sum())} pixels: " + ", ".join(parts) + more


def _ranges(ids: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(ids):
        start = v if start is None else start
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            out.append(str(v) if start == v else f"{start}..{v}")
            start = None
    return ",".join(out)


def _interpolation(values: np.ndarray, bad: np.ndarray | None, n_bad_values: int) -> str | None:
    """Why the label looks resized with interpolation, or None.

    Interpolation invents values only where classes meet: unknown values sit
    on class borders, and known ones appear between two neighbours whose values
    they lie between (a ramp 0, 4, 8 across a road/car edge). A clean label has
    almost neither; a class missing from the table fills whole regions instead.
    """
    between, border = _between(values)
    if bad is not None and bad.any():
        n_bad = int(bad.sum())
        on_border = float((bad & border).sum()) / n_bad
        if (n_bad_values >= 2 and on_border >= 0.8) or (n_bad_values >= 8 and on_border >= 0.5):
            return (f"{n_bad_values} distinct unknown values, {on_border:.0%} of their {n_bad} pixels "
                    "on class borders")
    n_between, n_border = int(between.sum()), int(border.sum())
    if looks_interpolated(n_between, n_border):
        return (f"{n_between} pixels ({n_between / n_border:.0%} of class-border pixels) hold a value "
                "between their two neighbours' values")
    return None


def _between(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels whose value lies strictly between their left/right or up/down neighbours',
    pixels with a 4-neighbour of another value); colours compare channel by channel."""
    colour = values.ndim == 3
    v = values.astype(np.int16 if values.dtype == np.uint8 else np.int32)  # int16: half the memory traffic
    some = (lambda x: x.any(-1)) if colour else (lambda x: x)  # noqa: E731
    every = (lambda x: x.all(-1)) if colour else (lambda x: x)  # noqa: E731
    h, w = v.shape[:2]
    between, border = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for axis in (0, 1):
        def part(a, b, x=v, axis=axis):
            return x[a:b] if axis == 0 else x[:, a:b]
        step = some(np.diff(v, axis=axis) != 0)
        part(1, None, border)[...] |= step
        part(0, -1, border)[...] |= step
        prev, mid, nxt = part(0, -2), part(1, -1), part(2, None)
        if colour:
            inside = every((np.minimum(prev, nxt) <= mid) & (mid <= np.maximum(prev, nxt)))
            part(1, -1, between)[...] |= inside & some(mid != prev) & some(mid != nxt)
        else:  # strictly between, i.e. a step of a monotonic ramp
            part(1, -1, between)[...] |= ((prev < mid) & (mid < nxt)) | ((prev > mid) & (mid > nxt))
    return between, border


def _preview(image: np.ndarray, train: np.ndarray, rules: Rules) -> np.ndarray:
    """Image | train ids blended at 50%, with a legend of class names below."""
    from fcnseg import overlay

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    code = cv2.COLOR_GRAY2RGB if image.ndim == 2 else {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[image.shape[2]]
    rgb = cv2.cvtColor(image, code)
    h, w = rgb.shape[:2]
    if train.shape != (h, w):  # labels stored at another resolution: nearest neighbour, like the pipeline
        train = train[(np.arange(h) * train.shape[0] // h)][:, (np.arange(w) * train.shape[1] // w)]
    table = rules.table
    blended = overlay.blend(rgb, train, table.palette(), 0.5, table.ignore_label)
    return np.concatenate([blended, overlay.legend(table.class_names, table.label_colors, w)], axis=0)
