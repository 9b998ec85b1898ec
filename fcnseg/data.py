"""The input pipeline: small pure tf.data functions (decode, augment, batch).

Images leave the pipeline as float32 RGB in 0..255 (each model normalises its
own input), labels as int32 train ids where the source's ignore label marks
void pixels. Labels are only ever resized nearest-neighbour, so no value that
is not in the label file can appear.

Every random choice is drawn from a stateless op seeded per element, so a run
with the same seed sees the same crops, flips and colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from fcnseg.classes import color_key
from fcnseg.labelrules import looks_interpolated

AUTOTUNE = tf.data.AUTOTUNE


def without_autotune_model(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` without tf.data's autotuning model thread.

    Deleting an iterator waits for that thread's current sleep (up to a minute) to end:
    measured 15-42 s at some epoch ends of a busy 2-core CPU, a sixth of a 60-minute
    CamVid run. Without it, AUTOTUNE maps run on every core and prefetch buffers still
    grow on demand; on this data the pipeline is as fast either way (51 batches in 2.5 s).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; geometry applies to image and label together,
    photometric jitter to the image only."""

    scale: tuple[float, float] = (0.75, 1.25)  # random zoom range before cropping to the training size
    flip: bool = True  # horizontal flip with probability 0.5 (road scenes are left/right symmetric)
    brightness: float = 0.15  # max additive change, as a fraction of 255
    contrast: float = 0.2  # contrast factor drawn from [1 - c, 1 + c]
    saturation: float = 0.2  # saturation factor drawn from [1 - s, 1 + s]
    gamma: float = 0.2  # gamma drawn from [1 - g, 1 + g]


NO_AUGMENT = Augment(scale=(1.0, 1.0), flip=False, brightness=0.0, contrast=0.0, saturation=0.0, gamma=0.0)
# --augment-preset: "strong" widens the photometric jitter (about torchvision's ColorJitter(0.4, 0.4, 0.4)
# plus gamma 0.5-1.5) for data whose test images may be lit otherwise than training's, e.g. CamVid's dusk
# sequence 0001TP (mean grey 59) against the daylight ones (100-139); the geometry stays the default's.
# "strong-wide" adds mmsegmentation's usual random scale range for road scenes (ratio_range 0.5-2.0): objects
# at half to twice their stored size, void padding where the zoomed-out image is smaller than the crop.
_STRONG_JITTER = dict(brightness=0.25, contrast=0.4, saturation=0.4, gamma=0.5)
AUGMENTS = {"default": Augment(), "strong": Augment(**_STRONG_JITTER),
            "strong-wide": Augment(scale=(0.5, 2.0), **_STRONG_JITTER)}


# ---------------------------------------------------------------- decoding
#
# The decode policy is ``fcnseg.imageio``'s (what check-labels, evaluate and
# predict use): truncated files fail (TensorFlow's decoders refuse them), EXIF
# orientation is ignored (TensorFlow never applies it), and a header declaring
# more than ``imageio.max_pixels()`` pixels is refused before decoding. Every
# check is a tf.debugging.Assert whose message names the file, so the training
# loop can report it in one line.


def _fail_unless(ok: tf.Tensor, value: tf.Tensor, *message) -> tf.Tensor:
    """``value`` once ``ok`` holds; otherwise an InvalidArgumentError whose message
    is the strings of ``message`` joined (tensors such as the path included)."""
    text = tf.strings.join([tf.strings.as_string(m) if isinstance(m, tf.Tensor) and m.dtype != tf.string else m
                            for m in message])
    with tf.control_dependencies([tf.debugging.Assert(ok, [text])]):
        return tf.identity(value)


def _big_endian(contents: tf.Tensor, offset: int, size: int) -> tf.Tensor:
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, offset, size), tf.uint8), tf.int64)
    return tf.reduce_sum(raw * tf.constant([256 ** (size - 1 - i) for i in range(size)], tf.int64))


def header_pixels(contents: tf.Tensor) -> tf.Tensor:
    """Pixels a PNG or JPEG header declares (int64), -1 for other formats, without decoding."""
    magic = tf.strings.substr(contents, 0, 2)
    long_enough = tf.strings.length(contents) >= 24
    is_png = tf.logical_and(long_enough, tf.equal(tf.strings.substr(contents, 0, 8), b"\x89PNG\r\n\x1a\n"))
    is_jpeg = tf.equal(magic, b"\xff\xd8")
    return tf.case([
        (is_png, lambda: _big_endian(contents, 16, 4) * _big_endian(contents, 20, 4)),
        (is_jpeg, lambda: tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64))),
    ], default=lambda: tf.constant(-1, tf.int64))


def read_checked(path: tf.Tensor) -> tf.Tensor:
    """The file's bytes, once its header is within the pixel limit."""
    from fcnseg import imageio

    contents = tf.io.read_file(path)
    limit = imageio.max_pixels()
    return _fail_unless(header_pixels(contents) <= limit, contents, path, f": over the limit of {limit} pixels "
                        f"(set {imageio.MAX_PIXELS_ENV} to raise it)")


def read_image(path: tf.Tensor) -> tf.Tensor:
    """Decode a PNG/JPEG/BMP file into a (H, W, 3) uint8 tensor."""
    contents = read_checked(path)
    # The accurate integer DCT decodes JPEGs to exactly OpenCV's pixels (what predict
    # reads); TensorFlow's default fast DCT differs by up to a few levels.
    image = tf.cond(tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8"),
                    lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def strict_id_lut(table, size: int = 65536) -> np.ndarray:
    """``lut[id] = train id`` for the table's ids, -1 for every other value (which
    ``lookup_ids`` refuses: an id missing from the table is a broken label, not void)."""
    return table.id_to_train_id(size, missing=-1)


def lookup_ids(lut: tf.Tensor, ids: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """Train ids of (H, W) int32 ``ids``; an id the table lacks, or a label that looks
    resized with interpolation, stops the pipeline with the file's name."""
    ids = tf.minimum(ids, tf.shape(lut)[0] - 1)
    train = tf.gather(lut, ids)
    unknown = train < 0
    worst = tf.reduce_max(tf.where(unknown, ids, -1))
    train = _fail_unless(tf.logical_not(tf.reduce_any(unknown)), train, "label ", path, ": holds value ", worst,
                         ", which is not an id of the class table (run fcnseg check-labels for every problem)")
    between, border = interpolation_counts(ids)
    return _fail_unless(tf.logical_not(looks_interpolated(between, border)), train, "label ", path, ": ",
                        tf.cast(between, tf.int32), " pixels hold a value between their neighbours' values: "
                        "resized with interpolation? (run fcnseg check-labels for details)")


def interpolation_counts(ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels strictly between their left/right or up/down neighbours, pixels with a
    4-neighbour of another value): check-labels' interpolation evidence, vectorised."""
    between = tf.zeros(tf.shape(ids), tf.bool)
    border = tf.zeros(tf.shape(ids), tf.bool)
    for axis in (0, 1):
        def part(a, b, axis=axis):
            return ids[a:b] if axis == 0 else ids[:, a:b]

        def pad(x, before, after, axis=axis):
            return tf.pad(x, [[before, after], [0, 0]] if axis == 0 else [[0, 0], [before, after]])

        step = tf.not_equal(part(1, None), part(0, -1))
        border = border | pad(step, 1, 0) | pad(step, 0, 1)
        prev, mid, nxt = part(0, -2), part(1, -1), part(2, None)
        ramp = ((prev < mid) & (mid < nxt)) | ((prev > mid) & (mid > nxt))
        between = between | pad(ramp, 1, 1)
    count = lambda m: tf.reduce_sum(tf.cast(m, tf.float32))  # noqa: E731 - float: compared with a share
    return count(between), count(border)


def check_train_ids(label: tf.Tensor, path: tf.Tensor, num_classes: int, ignore_label: int) -> tf.Tensor:
    """``label`` once every value is a class (0..C-1) or void: what the loss can one-hot."""
    ok = ((label >= 0) & (label < num_classes)) | tf.equal(label, ignore_label)
    return _fail_unless(tf.reduce_all(ok), label, "label ", path, f": decodes to values that are neither a "
                        f"class (0..{num_classes - 1}) nor void ({ignore_label}), e.g. ",
                        tf.reduce_max(tf.where(ok, -(2 ** 31), label)))


def read_index_label(path: tf.Tensor, id_to_train_id: tf.Tensor) -> tf.Tensor:
    """Decode a single-channel index PNG (8 or 16 bit) and map ids to train ids
    (``id_to_train_id`` from ``strict_id_lut``)."""
    return lookup_ids(id_to_train_id, decode_index_png(read_checked(path), path), path)


PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def decode_index_png(contents: tf.Tensor, path: tf.Tensor | None = None) -> tf.Tensor:
    """(H, W) int32 ids of an 8- or 16-bit single-channel PNG, values unscaled.

    With ``path``, any other PNG (an RGB colour mask where an index mask belongs,
    a palette PNG) is an error naming the file: decode_png(channels=1) would
    silently turn colours into grey levels and train on those.
    """
    # decode_png(dtype=uint16) rescales 8-bit files by 257 (id 1 would read as
    # 257), so the dtype follows the bit depth in the PNG header (byte 24).
    depth = tf.io.decode_raw(tf.strings.substr(contents, 24, 1), tf.uint8)[0]
    if path is not None:
        kind = tf.io.decode_raw(tf.strings.substr(contents, 25, 1), tf.uint8)[0]
        names = tf.constant([PNG_COLOUR_TYPES.get(i, f"type {i}") for i in range(256)])
        contents = _fail_unless(tf.equal(kind, 0), contents, "label ", path, ": is a ",
                                tf.gather(names, tf.cast(kind, tf.int32)), " PNG where a single-channel "
                                "index label belongs (save the class ids as a grey PNG)")
    return tf.cond(
        depth == 16,
        lambda: tf.cast(tf.io.decode_png(contents, channels=1, dtype=tf.uint16)[..., 0], tf.int32),
        lambda: tf.cast(tf.io.decode_png(contents, channels=1)[..., 0], tf.int32),
    )


def read_color_label(path: tf.Tensor, color_lookup: tf.lookup.StaticHashTable) -> tf.Tensor:
    """Decode an RGB colour label; exact colour match, a colour the table lacks is an
    error naming the file (``color_lookup`` maps unknown colours to -1)."""
    rgb = tf.cast(tf.io.decode_png(read_checked(path), channels=3), tf.int64)
    return lookup_colors(rgb, color_lookup, path)


def lookup_colors(rgb: tf.Tensor, color_lookup: tf.lookup.StaticHashTable, path: tf.Tensor) -> tf.Tensor:
    keys = color_key(rgb)
    train = tf.cast(color_lookup.lookup(keys), tf.int32)
    unknown = train < 0
    worst = tf.reduce_max(tf.where(unknown, keys, -1))
    return _fail_unless(tf.logical_not(tf.reduce_any(unknown)), train, "label ", path, ": holds colour (",
                        worst // 65536, ",", worst // 256 % 256, ",", worst % 256, "), which is not a colour "
                        "of the class table (run fcnseg check-labels for every problem)")


def color_lookup_table(keys: np.ndarray, train_ids: np.ndarray, default: int = -1) -> tf.lookup.StaticHashTable:
    init = tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys, tf.int64), tf.constant(train_ids.astype(np.int64), tf.int64)
    )
    return tf.lookup.StaticHashTable(init, default_value=default)


def match_label_size(image: tf.Tensor, label: tf.Tensor, path: tf.Tensor, allow_resize: bool) -> tf.Tensor:
    """Give the label the image's size: nearest-neighbour when the source
    stores labels at another resolution, otherwise a size mismatch is an error."""
    if allow_resize:
        return resize_label(label, tf.shape(image)[:2])
    # tf.debugging.Assert (not assert_equal, which takes no data) so the error names the file.
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)[:2]))
    with tf.control_dependencies([tf.debugging.Assert(same, ["label size differs from image size:", path])]):
        return tf.identity(label)


# ---------------------------------------------------------------- geometry


def resize_image(image: tf.Tensor, size_hw: tf.Tensor) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    # Antialiasing matters only when shrinking, and costs 4x plain bilinear
    # when enlarging (tools/benchmark.py's pipeline rate), so only shrinking pays it.
    shrink = tf.reduce_any(tf.convert_to_tensor(size_hw) < tf.shape(image)[:2])
    return tf.cond(shrink,
                   lambda: tf.image.resize(image, size_hw, method="bilinear", antialias=True),
                   lambda: tf.image.resize(image, size_hw, method="bilinear"))


def resize_label(label: tf.Tensor, size_hw: tf.Tensor) -> tf.Tensor:
    # Nearest neighbour only: any interpolation would invent label values
    # (e.g. the average of road=0 and car=13 is some unrelated class). Two
    # gathers pick the same pixels as tf.image.resize(method="nearest")
    # (half-pixel centres) at about 60% of its cost.
    shape = tf.shape(label)
    size_hw = tf.convert_to_tensor(size_hw)

    def source_index(n_in, n_out):
        scale = tf.cast(n_in, tf.float32) / tf.cast(n_out, tf.float32)
        index = tf.cast(tf.floor((tf.cast(tf.range(n_out), tf.float32) + 0.5) * scale), tf.int32)
        return tf.minimum(index, n_in - 1)

    rows = tf.gather(label, source_index(shape[0], size_hw[0]))
    return tf.cast(tf.gather(rows, source_index(shape[1], size_hw[1]), axis=1), tf.int32)


def resize_pair(image: tf.Tensor, label: tf.Tensor, size_hw: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    return resize_image(image, size_hw), resize_label(label, size_hw)


def random_scale(image, label, seed, size_hw, scale_range):
    """Resize so that the pair covers the training size times a random zoom."""
    h, w = size_hw
    s = tf.random.stateless_uniform([], seed, scale_range[0], scale_range[1])
    new_hw = tf.cast(tf.round(tf.constant([h, w], tf.float32) * s), tf.int32)
    return resize_image(image, new_hw), resize_label(label, new_hw)


def random_crop_or_pad(image, label, seed, size_hw, ignore_label):
    """Crop (or pad with void) to exactly ``size_hw`` at a random offset."""
    h, w = size_hw
    shape = tf.shape(label)
    pad_h, pad_w = tf.maximum(h - shape[0], 0), tf.maximum(w - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    # Padding is void so the loss does not learn that borders are some class.
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=ignore_label)
    shape = tf.shape(label)
    max_off = tf.stack([shape[0] - h + 1, shape[1] - w + 1])
    off = tf.random.stateless_uniform([2], seed, 0, 2**31 - 1, dtype=tf.int32) % max_off
    image = image[off[0] : off[0] + h, off[1] : off[1] + w]
    label = label[off[0] : off[0] + h, off[1] : off[1] + w]
    image.set_shape([h, w, 3])
    label.set_shape([h, w])
    return image, label


def random_flip(image, label, seed):
    flip = tf.random.stateless_uniform([], seed) < 0.5
    # tf.cond, not tf.where: where would reverse both tensors every time.
    return tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])), lambda: (image, label))


def photometric(image, seed, aug: Augment):
    """Brightness, contrast, saturation and gamma jitter on a 0..255 image.

    In order: x + b, contrast c about the image mean, saturation s about each
    pixel's grey, clip, gamma. The first three are affine, so they are folded
    into one multiply-add per value: s*c*x + (1-s)*c*grey + (1-c)*mean + b.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    b = 255.0 * tf.random.stateless_uniform([], seeds[0], -aug.brightness, aug.brightness) if aug.brightness else 0.0
    c = tf.random.stateless_uniform([], seeds[1], 1 - aug.contrast, 1 + aug.contrast) if aug.contrast else 1.0
    s = tf.random.stateless_uniform([], seeds[2], 1 - aug.saturation, 1 + aug.saturation) if aug.saturation else 1.0
    grey = tf.reduce_mean(image, axis=-1, keepdims=True)
    offset = grey * ((1.0 - s) * c) + ((1.0 - c) * tf.reduce_mean(grey) + b)
    x = tf.clip_by_value(image * (s * c) + offset, 0.0, 255.0)
    if aug.gamma:
        g = tf.random.stateless_uniform([], seeds[3], 1 - aug.gamma, 1 + aug.gamma)
        # exp(g log x) vectorises; tf.pow is 4-5x slower here. log(0) = -inf gives 0, as 0**g.
        x = 255.0 * tf.exp(g * tf.math.log(x * (1.0 / 255.0)))
    return x


def augment_pair(image, label, seed, size_hw, ignore_label, aug: Augment):
    """One training sample's augmentation, fully determined by ``seed``."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image, label = random_scale(image, label, seeds[0], size_hw, aug.scale)
    image, label = random_crop_or_pad(image, label, seeds[1], size_hw, ignore_label)
    if aug.flip:
        image, label = random_flip(image, label, seeds[2])
    image = photometric(image, seeds[3], aug)
    return image, label


# ---------------------------------------------------------------- assembly


def finish(
    pairs: tf.data.Dataset,
    *,
    size_hw: tuple[int, int],
    batch_size: int,
    ignore_label: int,
    augment: Augment | None,
    seed: int,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Turn decoded (uint8 image, int32 label) pairs into training batches.

    With ``augment`` each element gets its own seed from one seeded stream,
    so results depend only on ``seed`` and the element order.
    """
    if augment is None:
        ds = pairs.map(lambda i, l: resize_pair(i, l, size_hw), num_parallel_calls=AUTOTUNE)
    else:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((pairs, seeds)).map(
            lambda pair, s: augment_pair(
                tf.cast(pair[0], tf.float32), pair[1], s, size_hw, ignore_label, augment
            ),
            num_parallel_calls=AUTOTUNE,
        )
    return without_autotune_model(ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE))
