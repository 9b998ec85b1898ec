"""fcnseg: semantic segmentation of road scenes with FCN-8s and LinkNet.

Importing the package is cheap: TensorFlow is imported only by the modules
that need it (models, data, training), never at ``import fcnseg``; ``load`` and
``save`` import what they need when called.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, compile: bool = False):
    """Load a checkpoint (``.keras`` written by ``fcnseg train`` or :func:`save`) with its class table.

    Returns an ``fcnseg.checkpoint.Checkpoint`` with ``.model`` (the Keras model: float32 RGB 0..255
    images to logits), ``.classes`` (a ``ClassTable``: names, colours, ignore label), ``.meta`` (what
    was saved beside it) and ``.image_size`` ((w, h) it was trained at). fcnseg's layers, losses and
    metrics are registered first, so ``compile=True`` restores a loss, metrics and optimizer given to
    ``model.compile``. A bad file raises ``fcnseg.errors.FcnsegError`` with one line naming it.
    """
    from fcnseg.checkpoint import open_checkpoint

    return open_checkpoint(path, compile)


def save(model, path: str, source, meta: dict | None = None) -> None:
    """Save ``model`` to ``path`` (``.keras``) with ``source``'s class table and image size, atomically."""
    from fcnseg.checkpoint import save_model

    save_model(model, path, source, meta)
