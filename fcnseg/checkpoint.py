"""Self-contained model checkpoints: a Keras ``.keras`` file that also carries
what prediction needs (class names, colours, ignore label, training size, model
name) as ``fcnseg.json`` inside the same zip, so ``fcnseg predict`` needs no
data source. Files are written to a temporary name and renamed into place, so
a crash mid-save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any

from fcnseg.classes import ClassTable
from fcnseg.errors import FcnsegError

META_NAME = "fcnseg.json"


def save(model, path: str, meta: dict) -> None:
    """Write ``model`` and ``meta`` to ``path`` atomically.

    On any failure (a full disk, Ctrl-C) the temporary file is removed and
    ``path`` keeps its previous content; an OS error becomes one line naming ``path``.
    """
    from fcnseg.rundir import kill_point

    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.partial.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(META_NAME, json.dumps(meta, indent=1))
        kill_point("checkpoint_written")
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise FcnsegError(f"{path}: could not write the checkpoint: {e.strerror or e}; "
                              "the previous file is kept") from None
        raise


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: what ``fcnseg.load`` returns."""

    # The keras.Model: float32 RGB 0..255 images (B, H, W, 3) -> logits (B, H, W, C), C = 1 for a sigmoid head.
    model: Any
    classes: ClassTable  # class names, colours and ignore label of the data it was trained on
    meta: dict  # everything fcnseg saved beside it (fcnseg.json): source, model name, training config

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the images the model was trained on."""
        w, h = self.meta["source"]["image_size"]
        return int(w), int(h)


def open_checkpoint(path: str, compile: bool = False) -> Checkpoint:
    """``fcnseg.load``: a checkpoint as a :class:`Checkpoint`; errors name the file in one line."""
    model, meta, classes = load(path, "checkpoint", compile)
    return Checkpoint(model, classes, meta)


def save_model(model, path: str, source, meta: dict | None = None) -> None:
    """``fcnseg.save``: ``model`` with the class table and image size of ``source`` (a DataSource),
    so that ``fcnseg.load``, ``fcnseg predict``, ``evaluate`` and ``export`` take it."""
    save(model, path, {"model": model.name, "source": source.describe(), **(meta or {})})


def read_meta(path: str, what: str = "--checkpoint") -> dict:
    """The fcnseg metadata of a checkpoint, or a one-line error naming the file (after ``what``)."""
    if not os.path.isfile(path):
        raise FcnsegError(f"{what} {path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(META_NAME))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError):
        raise FcnsegError(f"{what} {path} is not an fcnseg checkpoint (expected a .keras file written by "
                          "fcnseg train or fcnseg.save, e.g. RUN_DIR/best.keras)") from None


def load(path: str, what: str = "--checkpoint", compile: bool = False):
    """(keras model, metadata dict, ClassTable) from a checkpoint file.

    ``compile`` restores the loss, metrics and optimizer a model was saved with
    (fcnseg's own are registered here); checkpoints of ``fcnseg train`` have none.
    """
    meta = read_meta(path, what)
    import keras

    # Importing them registers fcnseg's layers, losses and metrics for deserialisation.
    import fcnseg.losses  # noqa: F401
    import fcnseg.metrics  # noqa: F401
    import fcnseg.models  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=compile)
    except Exception as e:  # corrupt weights inside a valid zip, version skew, an unregistered class...
        raise FcnsegError(f"{what} {path}: could not load the model: {load_error(e)}") from e
    return model, meta, ClassTable.from_json(meta["source"]["classes"])


def load_error(error: Exception) -> str:
    """One line for a failed ``keras.saving.load_model``: Keras's own message for a class it
    cannot find is a page of config; this names the class and what to import."""
    text = str(error)
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if not missing:
        return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    name = missing.group(1)
    where = re.search(r"'module': '([^']+)', 'class_name': '" + re.escape(name) + "'", text)
    module = where.group(1) if where else None
    if module and module.split(".")[0] == "fcnseg":
        return (f"it needs {module}.{name}, which this fcnseg does not define (saved by another fcnseg version?); "
                "load fcnseg checkpoints with fcnseg.load(path), which registers fcnseg's classes")
    return (f"it needs {(module + '.') if module else ''}{name}, which is not registered: import the module that "
            "defines it (with @keras.saving.register_keras_serializable) before loading")
