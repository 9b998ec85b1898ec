"""Pretrained-encoder loading for the fcnseg models.

VGG16 ImageNet weights come from ``keras.applications`` (Caffe-converted, hence
FCN's caffe preprocessing); the classifier's fc1/fc2 are "convolutionalized"
into fc6/fc7 as in Long et al., "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, sec. 3.1. Every failure is a one-line
``WeightsError`` that says which file is wrong or where to put one.
"""

from __future__ import annotations

import os
import warnings

import h5py
import keras

from fcnseg.models.vgg import VGG16_BLOCKS

VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
VGG16_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + VGG16_WEIGHTS_FILE
)
VGG16_WEIGHTS_HASH = "64373286793e3c8b2b4e3219cbf3544b"

# keras.applications VGG16 conv layer names, derived from the block table.
VGG16_CONV_LAYERS = tuple(
    f"block{b}_conv{i}"
    for b, filters in enumerate(VGG16_BLOCKS, start=1)
    for i in range(1, len(filters) + 1)
)


class WeightsError(ValueError):
    """Pretrained weights are missing, unreadable or do not fit the model."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _check_h5(path: str) -> set[str]:
    """Names of all groups/datasets in the HDF5 file at ``path``."""
    if not os.path.isfile(path):
        raise WeightsError(f"encoder weights file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            names: set[str] = set()
            f.visit(names.add)
    except Exception as exc:  # h5py raises OSError/KeyError on garbage
        raise WeightsError(f"not a readable Keras HDF5 weights file: {path} ({_first_line(exc)})") from None
    return names


def _imagenet_vgg16_path() -> str:
    try:
        return keras.utils.get_file(
            VGG16_WEIGHTS_FILE, VGG16_WEIGHTS_URL, cache_subdir="models", file_hash=VGG16_WEIGHTS_HASH
        )
    except Exception as exc:
        raise WeightsError(
            f"could not download VGG16 ImageNet weights (offline?): put {VGG16_WEIGHTS_FILE} "
            f"into ~/.keras/models/ or pass --encoder-weights PATH ({_first_line(exc)})"
        ) from None


def read_vgg16(path: str) -> tuple[keras.Model, bool]:
    """Builds ``keras.applications.VGG16`` and loads a local weights file.

    Args:
        path: Keras weights file of VGG16 with or without the top: a Keras 3
            ``.weights.h5`` or a legacy ``.h5`` such as ``VGG16_WEIGHTS_FILE``.

    Returns:
        The loaded model and whether it has the top (fc1/fc2).

    Example:
        >>> vgg, has_top = read_vgg16("vgg16.weights.h5")
    """
    names = _check_h5(path)
    # Keras 3 files name layers by class ("layers/dense"), legacy ones by name.
    has_top = any("fc1" in n or n.startswith("layers/dense") for n in names)
    try:
        vgg = keras.applications.VGG16(
            weights=None, include_top=has_top, input_shape=None if has_top else (None, None, 3)
        )
        vgg.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"could not load VGG16 weights from {path} ({_first_line(exc)})") from None
    return vgg, has_top


def load_vgg16_weights(model: keras.Model, encoder_weights: str) -> None:
    """Copies VGG16 weights into an FCN ``model`` by layer name.

    Convolutions map one to one; fc1 (25088 x 4096, flattened from a row-major
    (7, 7, 512) map) becomes fc6 (7, 7, 512, 4096), fc2 becomes fc7
    (1, 1, 4096, 4096). Without the top, fc6/fc7 keep their random init.

    Args:
        model: an FCN built with ``width=1.0``.
        encoder_weights: ``"imagenet"`` or a path as accepted by :func:`read_vgg16`.

    Example:
        >>> load_vgg16_weights(fcn8s(21), "vgg16.weights.h5")
    """
    path = _imagenet_vgg16_path() if encoder_weights == "imagenet" else os.fspath(encoder_weights)
    vgg, has_top = read_vgg16(path)
    try:
        for name in VGG16_CONV_LAYERS:
            model.get_layer(name).set_weights(vgg.get_layer(name).get_weights())
        if has_top:
            for src, dst in (("fc1", "fc6"), ("fc2", "fc7")):
                kernel, bias = vgg.get_layer(src).get_weights()
                target = model.get_layer(dst)
                target.set_weights([kernel.reshape(target.kernel.shape), bias])
    except ValueError as exc:
        raise WeightsError(f"VGG16 weights in {path} do not fit {model.name} ({_first_line(exc)})") from None
    if not has_top:
        warnings.warn(
            f"{path} has no fc1/fc2: fc6/fc7 of {model.name} stay randomly initialised", stacklevel=3
        )


def load_encoder_weights(encoder: keras.Model, encoder_weights: str) -> None:
    """Loads a local ``.weights.h5`` into a ResNet encoder (as ``save_weights`` wrote it).

    Args:
        encoder: the model returned by ``resnet18``/``resnet34``.
        encoder_weights: path to the weights file. ``"imagenet"`` is an error:
            keras.applications has no ResNet18/34.

    Example:
        >>> resnet18().save_weights("resnet18.weights.h5")
        >>> load_encoder_weights(resnet18(), "resnet18.weights.h5")
    """
    if encoder_weights == "imagenet":
        raise WeightsError(
            f"no ImageNet {encoder.name} in keras.applications: pass a local encoder weights "
            f"file (as {encoder.name}().save_weights('{encoder.name}.weights.h5') writes) "
            "as --encoder-weights PATH"
        )
    path = os.fspath(encoder_weights)
    _check_h5(path)
    try:
        encoder.load_weights(path)
    except Exception as exc:
        raise WeightsError(
            f"could not load {encoder.name} weights from {path} ({_first_line(exc)})"
        ) from None
