"""Synthetic road scenes: the embedded default source, no download needed.

Each scene is drawn procedurally from its own seed: a sky gradient, buildings
and trees on the horizon, grass, a road in perspective towards a random
vanishing point with dashed and solid lane marks, cars whose size follows the
perspective, sensor noise and, on some frames, a camera hood labelled void.
Colours, layout and lighting vary per scene, so a model must use shape and
context, not just colour; a constant prediction scores about 5% mIoU.

No folder tree: scenes are rendered on the fly, deterministically from
(seed, split, index), at any image size.

Options (``--source-option key=value``):
    train_size   scenes per training epoch (default 384)
    val_size     validation scenes (default 64)
    fresh        1 = new training scenes every epoch: each epoch's scenes are drawn
                 from (seed, the epoch's pipeline seed, index), so no epoch repeats
                 another's and a resumed epoch replays exactly its own scenes
"""

from __future__ import annotations

import cv2
import numpy as np

from fcnseg.classes import table
from fcnseg.errors import FcnsegError
from fcnseg.source import DataSource

# name, id, train id, colour (Cityscapes' colours for the same classes)
CLASSES = table(
    [
        ("sky", 0, 0, (70, 130, 180)),
        ("building", 1, 1, (70, 70, 70)),
        ("vegetation", 2, 2, (107, 142, 35)),
        ("road", 3, 3, (128, 64, 128)),
        ("lane_marking", 4, 4, (255, 255, 255)),
        ("car", 5, 5, (0, 0, 142)),
        ("void", 255, 255, (0, 0, 0)),
    ],
    ignore_label=255,
)
SKY, BUILDING, VEGETATION, ROAD, LANE, CAR = range(6)
VOID = CLASSES.ignore_label
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}


def render_scene(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: (uint8 RGB image (H, W, 3), uint8 train-id label (H, W))."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    lab = np.zeros((height, width), np.uint8)
    horizon = int(height * rng.uniform(0.35, 0.55))
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]

    top, bottom = rng.uniform(60, 140, 3), rng.uniform(150, 240, 3)
    img[:horizon] = (top + (bottom - top) * ys[:horizon] / max(ys[horizon], 1e-3))[:, :, ::-1] * [0.6, 0.8, 1.0]
    lab[:horizon] = SKY

    grass = rng.uniform([40, 80, 20], [110, 150, 70])
    img[horizon:] = grass
    lab[horizon:] = VEGETATION

    _draw_skyline(img, lab, rng, horizon)
    vx = int(width * rng.uniform(0.3, 0.7))
    _draw_road(img, lab, rng, horizon, vx)
    _draw_cars(img, lab, rng, horizon, vx)

    light = rng.uniform(0.7, 1.2)
    img = img * light + rng.normal(0, rng.uniform(3, 12), img.shape)
    if rng.random() < 0.3:  # camera hood: real datasets mark it void
        hood = int(height * rng.uniform(0.05, 0.12))
        img[height - hood :] = rng.uniform(10, 40)
        lab[height - hood :] = VOID
    return np.clip(img, 0, 255).astype(np.uint8), lab


def _draw_skyline(img, lab, rng, horizon):
    height, width = lab.shape
    x = int(rng.integers(-width // 10, width // 10))
    while x < width:
        w = int(width * rng.uniform(0.06, 0.2))
        if rng.random() < 0.6:
            h = int(horizon * rng.uniform(0.2, 0.9))
            color = rng.uniform(50, 200) * rng.uniform(0.8, 1.1, 3)
            cv2.rectangle(img, (x, horizon - h), (x + w, horizon + 2), color.tolist(), -1)
            cv2.rectangle(lab, (x, horizon - h), (x + w, horizon + 2), BUILDING, -1)
            for wy in range(horizon - h + 4, horizon - 4, max(6, h // 6)):  # windows
                for wx in range(x + 3, x + w - 4, max(6, w // 4)):
                    cv2.rectangle(img, (wx, wy), (wx + 2, wy + 2), (color * 0.5).tolist(), -1)
        else:
            r = int(width * rng.uniform(0.03, 0.09))
            cy = horizon - int(r * rng.uniform(0.5, 1.5))
            color = rng.uniform([20, 70, 10], [80, 140, 60])
            cv2.ellipse(img, (x + w // 2, cy), (r, int(r * 1.3)), 0, 0, 360, color.tolist(), -1)
            cv2.ellipse(lab, (x + w // 2, cy), (r, int(r * 1.3)), 0, 0, 360, VEGETATION, -1)
            trunk = [x + w // 2 - max(1, r // 6), cy, x + w // 2 + max(1, r // 6), horizon + 2]
            cv2.rectangle(img, tuple(trunk[:2]), tuple(trunk[2:]), (60, 45, 30), -1)
            cv2.rectangle(lab, tuple(trunk[:2]), tuple(trunk[2:]), VEGETATION, -1)
        x += w + int(width * rng.uniform(0.0, 0.08))


def _road_x(vx, x_bottom, horizon, height, y):
    t = (y - horizon) / max(height - horizon, 1)
    return vx + (x_bottom - vx) * t


def _draw_road(img, lab, rng, horizon, vx):
    height, width = lab.shape
    half = width * rng.uniform(0.35, 0.7)
    centre = width * rng.uniform(0.35, 0.65)
    left, right = centre - half, centre + half
    poly = np.array([[vx - 2, horizon], [vx + 2, horizon], [right, height], [left, height]], np.int32)
    gray = rng.uniform(70, 130)
    cv2.fillPoly(img, [poly], (gray * rng.uniform(0.95, 1.05, 3)).tolist())
    cv2.fillPoly(lab, [poly], ROAD)
    mark = rng.uniform(200, 250, 3).tolist()
    dash = rng.random() < 0.7
    for frac in (0.5,) + ((0.05, 0.95) if rng.random() < 0.7 else ()):
        xb = left + (right - left) * frac
        steps = 14
        for k in range(steps):
            if dash and frac == 0.5 and k % 2:
                continue
            y0 = horizon + (height - horizon) * (k / steps) ** 1.5
            y1 = horizon + (height - horizon) * ((k + 1) / steps) ** 1.5
            w0 = max(0.5, width * 0.012 * (y0 - horizon) / (height - horizon))
            w1 = max(0.5, width * 0.012 * (y1 - horizon) / (height - horizon))
            x0, x1 = _road_x(vx, xb, horizon, height, y0), _road_x(vx, xb, horizon, height, y1)
            quad = np.array([[x0 - w0, y0], [x0 + w0, y0], [x1 + w1, y1], [x1 - w1, y1]], np.int32)
            cv2.fillPoly(img, [quad], mark)
            cv2.fillPoly(lab, [quad], LANE)


def _draw_cars(img, lab, rng, horizon, vx):
    height, width = lab.shape
    for _ in range(int(rng.integers(0, 4))):
        y = horizon + (height - horizon) * rng.uniform(0.15, 0.85)
        scale = (y - horizon) / (height - horizon)
        cw, ch = width * 0.35 * scale + 3, height * 0.22 * scale + 2
        cx = _road_x(vx, width * rng.uniform(0.2, 0.8), horizon, height, y)
        x0, y0, x1, y1 = int(cx - cw / 2), int(y - ch), int(cx + cw / 2), int(y)
        color = rng.uniform(0, 255, 3).tolist()
        cv2.rectangle(img, (x0, y0 + int(ch * 0.35)), (x1, y1), color, -1)
        cv2.rectangle(img, (x0 + int(cw * 0.15), y0), (x1 - int(cw * 0.15), y0 + int(ch * 0.4)), color, -1)
        cv2.rectangle(img, (x0 + int(cw * 0.2), y0 + 2), (x1 - int(cw * 0.2), y0 + int(ch * 0.35)),
                      (40, 50, 60), -1)  # windscreen
        r = max(1, int(ch * 0.15))
        for wx in (x0 + r, x1 - r):
            cv2.circle(img, (wx, y1), r, (20, 20, 20), -1)
            cv2.circle(lab, (wx, y1), r, CAR, -1)
        cv2.rectangle(lab, (x0, y0 + int(ch * 0.35)), (x1, y1), CAR, -1)
        cv2.rectangle(lab, (x0 + int(cw * 0.15), y0), (x1 - int(cw * 0.15), y0 + int(ch * 0.4)), CAR, -1)


class SyntheticSource(DataSource):
    name = "synthetic"
    classes = CLASSES
    default_image_size = (160, 128)

    def __init__(self, image_size=None, seed: int = 0, train_size: int = 384, val_size: int = 64,
                 fresh: bool = False) -> None:
        super().__init__(image_size, seed)
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(val_size)}
        self.fresh = bool(int(fresh))

    def split_size(self, split: str) -> int:
        if split not in self.sizes:
            raise FcnsegError(f"--split {split}: the synthetic source has splits {', '.join(self.sizes)}")
        return self.sizes[split]

    def scene(self, split: str, index: int, epoch_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scene ``index`` of ``split``; ``epoch_seed`` picks another set of scenes (fresh training)."""
        w, h = self.image_size
        key = [self.seed, _SPLIT_STREAM[split], index] + ([] if epoch_seed is None else [epoch_seed])
        seed = np.random.SeedSequence(key).generate_state(1)[0]
        return render_scene(w, h, int(seed))

    def elements(self, split: str, shuffle: bool = False, seed: int = 0):
        import tensorflow as tf

        w, h = self.image_size
        n = self.split_size(split)
        fresh = self.fresh and split == "train"
        # Training passes each epoch its own ``seed`` (the run's seed + epoch): fresh scenes are
        # keyed by it, so every epoch draws new ones and --resume redraws the same. The stream is
        # endless so that more steps than train_size/batch still meet no repeats.
        indices = tf.data.Dataset.range(2**62 if fresh else n)
        if shuffle and not fresh:
            indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        epoch_seed = int(seed) if fresh else None

        def draw(i):
            image, label = tf.numpy_function(lambda k: self.scene(split, int(k), epoch_seed), [i],
                                             [tf.uint8, tf.uint8])
            image.set_shape([h, w, 3])
            label.set_shape([h, w])
            return image, tf.where(label == VOID, self.ignore_label, tf.cast(label, tf.int32))

        return indices.map(draw, num_parallel_calls=tf.data.AUTOTUNE)


def make_source(data_dir=None, image_size=None, seed: int = 0, train_size: int = 384, val_size: int = 64,
                fresh: bool = False) -> SyntheticSource:
    """Build the synthetic source (``data_dir`` is ignored: nothing to read)."""
    return SyntheticSource(image_size, seed, train_size=train_size, val_size=val_size, fresh=fresh)
