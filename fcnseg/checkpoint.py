"""Self-contained model checkpoints: a Keras ``.keras`` file that also carries
what prediction needs (class names, colours, ignore label, training size, model
name) as ``fcnseg.json`` inside the same zip, so ``fcnseg predict`` needs no
data source. Files are written to a temporary name and renamed into place, so
a crash mid-save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import zipfile

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


def read_meta(path: str) -> dict:
    """The fcnseg metadata of a checkpoint, or a one-line error naming the file."""
    if not os.path.isfile(path):
        raise FcnsegError(f"--checkpoint {path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(META_NAME))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError):
        raise FcnsegError(f"--checkpoint {path} is not an fcnseg checkpoint (expected a .keras file written by "
                          "fcnseg train, e.g. RUN_DIR/best.keras)") from None


def load(path: str):
    """(keras model, metadata dict, ClassTable) from a checkpoint file."""
    meta = read_meta(path)
    import keras

    import fcnseg.models  # noqa: F401  (registers the custom layers for deserialisation)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # corrupt weights inside a valid zip, version skew, ...
        raise FcnsegError(f"--checkpoint {path}: could not load the model: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return model, meta, ClassTable.from_json(meta["source"]["classes"])
