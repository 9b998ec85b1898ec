"""Reading image and label files: the one decode policy of every command.

check-labels, evaluate and predict read files here; the training pipeline
(``fcnseg.data``) decodes in TensorFlow but applies the same policy:

* A file that is missing, unreadable (permissions, a symlink loop), empty,
  corrupt or truncated is an error naming the file. A PNG or JPEG without its
  end marker counts as truncated: OpenCV would decode its top half and fill the
  rest with grey, where TensorFlow refuses it.
* EXIF orientation is ignored: pixels are used as stored. Datasets store labels
  in the camera's raw orientation, so an image turned by its EXIF tag would no
  longer line up with its label, and TensorFlow's decoders ignore the tag too.
* An image whose header declares more than ``max_pixels()`` pixels is refused
  before it is decoded (a 20000x20000 PNG of zeros is a few hundred kB on disk
  and over a gigabyte decoded). Set ``FCNSEG_MAX_PIXELS`` to change the limit.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from fcnseg.errors import FcnsegError

MAX_PIXELS_ENV = "FCNSEG_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TAIL = 4096  # bytes searched for the end marker: writers may append a little after it
_HEAD = 1 << 16  # bytes searched for a JPEG's frame header (EXIF thumbnails come first)


class ImageError(FcnsegError):
    """A file that cannot be used as an image: ``str()`` is ``"PATH: why"``."""

    def __init__(self, path: str, why: str, too_large: bool = False) -> None:
        super().__init__(f"{path}: {why}")
        self.path, self.why, self.too_large = path, why, too_large


def max_pixels() -> int:
    """The pixel limit: ``FCNSEG_MAX_PIXELS`` (a positive integer, e.g. 4e8) or 100 million."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise FcnsegError(f"{MAX_PIXELS_ENV}={text}: expected a positive number of pixels, e.g. 400000000")
    return value


def header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, BMP or GIF file; None if not found."""
    if head.startswith(PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(head)
    if head.startswith(b"BM") and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        # SOF0..SOF15 carry the size, except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def check_size(path: str, head: bytes) -> None:
    """Refuse a file whose header declares more than ``max_pixels()`` pixels."""
    size = header_size(head)
    if size is None:
        size = _pillow_size(path)
    limit = max_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise ImageError(path, f"{size[0]}x{size[1]} pixels is over the limit of {limit} pixels "
                               f"(set {MAX_PIXELS_ENV} to raise it)", too_large=True)


def _pillow_size(path: str) -> tuple[int, int] | None:
    """Other formats (TIFF, WebP...): Pillow reads only the header on open."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - not Pillow's format: the decoder says what is wrong
        return None


def read_bytes(path: str) -> bytes:
    """The whole file, or an ImageError saying why not (missing, permissions, symlink loop, empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not a file") from None
    except FileNotFoundError:
        raise ImageError(path, "file does not exist") from None
    except OSError as e:
        raise ImageError(path, f"cannot be read: {e.strerror or e}") from None
    if not data:
        raise ImageError(path, "empty file")
    return data


def integrity_error(data: bytes, path: str) -> str | None:
    """Why the bytes of a PNG/JPEG file cannot be whole, or None.

    Some OpenCV builds return the decoded top of a truncated PNG as if it were
    the whole image, so the end marker is checked before decoding.
    """
    raw = data if len(data) < 2 * _TAIL else data[:8] + data[-_TAIL:]
    lower = path.lower()
    if lower.endswith(".png") or raw.startswith(PNG_SIGNATURE):
        if not raw.startswith(PNG_SIGNATURE):
            return "not a PNG file (bad signature)"
        if b"IEND" not in raw[-_TAIL:]:
            return "PNG has no IEND chunk: truncated"
    elif lower.endswith((".jpg", ".jpeg")) or raw.startswith(b"\xff\xd8"):
        if not raw.startswith(b"\xff\xd8"):
            return "not a JPEG file (bad signature)"
        if b"\xff\xd9" not in raw[-_TAIL:]:
            return "JPEG has no end-of-image marker: truncated"
    return None


def read(path: str, color: bool = False) -> np.ndarray:
    """Decode a file by the policy above (OpenCV channel order: BGR).

    ``color=False`` keeps bit depth and channels (labels); ``color=True`` gives
    (H, W, 3) uint8. Raises ImageError naming the file.
    """
    import cv2

    data = read_bytes(path)
    why = integrity_error(data, path)
    if why:
        raise ImageError(path, why)
    check_size(path, data[:_HEAD])
    if path.lower().endswith(".gif") or data.startswith((b"GIF87a", b"GIF89a")):
        return _read_gif(data, path, color)  # one decoder for GIFs (OpenCV builds differ); Carvana masks are GIFs
    # IMREAD_UNCHANGED never applies EXIF orientation; IMREAD_COLOR does unless told not to.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION if color else cv2.IMREAD_UNCHANGED
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise ImageError(path, "cannot be decoded (corrupt or not an image)")
    return array


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, as the training pipeline decodes images."""
    import cv2

    return cv2.cvtColor(read(path, color=True), cv2.COLOR_BGR2RGB)


def _read_gif(data: bytes, path: str, color: bool = True) -> np.ndarray:
    """A GIF's first frame in palette colours, as TensorFlow decodes it for training (Pillow would
    give palette indices: 0/1 where the colours are 0/255). A grey GIF read as a label
    (``color=False``) is one channel, as a grey PNG is."""
    import tensorflow as tf

    try:
        rgb = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except Exception:  # noqa: BLE001 - any decoder error means the same thing here
        raise ImageError(path, "cannot be decoded (corrupt GIF)") from None
    if not color and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return rgb[..., 0].copy()
    return rgb[..., ::-1].copy()  # BGR, like every other result
