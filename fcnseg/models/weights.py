"""Pretrained-encoder loading for the fcnseg models.

VGG16 ImageNet weights come from ``keras.applications`` (Caffe-converted, hence
FCN's caffe preprocessing); the classifier's fc1/fc2 are "convolutionalized"
into fc6/fc7 as in Long et al., "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, sec. 3.1. Every failure is a one-line
``WeightsError`` that says which file is wrong or where to put one.
"""

from __future__ import annotations

import logging
import os
import warnings

import h5py
import keras
import numpy as np

from fcnseg.models.layers import IMAGENET_RGB_STD
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
            ``.weights.h5`` or a legacy ``.h5`` such as ``VGG16_WEIGHTS_FILE``;
            or a saved ``keras.applications.VGG16`` (``.keras`` or ``.h5``).

    Returns:
        The loaded model and whether it has the top (fc1/fc2).

    Example:
        >>> vgg, has_top = read_vgg16("vgg16.weights.h5")
    """
    if path.endswith(".keras") or (os.path.isfile(path) and _is_saved_model(path)):
        try:
            vgg = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise WeightsError(f"could not load the VGG16 model {path} ({_first_line(exc)})") from None
        return vgg, any(layer.name == "fc1" for layer in vgg.layers)
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
        encoder_weights: path to the weights file.

    Example:
        >>> resnet18().save_weights("resnet18.weights.h5")
        >>> load_encoder_weights(resnet18(), "resnet18.weights.h5")
    """
    path = os.fspath(encoder_weights)
    _check_h5(path)
    try:
        encoder.load_weights(path)
    except Exception as exc:
        raise WeightsError(
            f"could not load {encoder.name} weights from {path} ({_first_line(exc)})"
        ) from None


# --- keras-hub presets: ResNet18/34 ----------------------------------------------------------------

HUB_EXTRA = 'pip install "fcnseg[hub]"'
_HUB_LAYER_KINDS = {"proj": "0", "conv1": "1", "conv2": "2"}


def _keras_hub(what: str):
    try:
        import keras_hub
    except ImportError:
        raise WeightsError(f"{what} needs keras-hub, which is not installed: {HUB_EXTRA}") from None
    return keras_hub


def hub_layer_name(name: str) -> str:
    """keras-hub ``ResNetBackbone``'s name for fcnseg's ResNet layer ``name``.

    Example:
        >>> hub_layer_name("stage2_block1_proj_bn")
        'stack1_block0_0_bn'
    """
    if name in ("conv1", "conv1_bn"):
        return "conv1_conv" if name == "conv1" else name
    stage, block, kind, *bn = name.split("_")
    return (f"stack{int(stage[5:]) - 1}_block{int(block[5:]) - 1}_{_HUB_LAYER_KINDS[kind]}_"
            f"{'bn' if bn else 'conv'}")


def read_hub_resnet(source: str, depths: tuple[int, ...]) -> keras.Model:
    """keras-hub's ``ResNetBackbone`` from a preset name, a timm handle or a preset directory,
    checked to be the plain (torchvision-layout) ResNet with ``depths`` basic blocks per stage.

    Example:
        >>> backbone = read_hub_resnet("resnet_18_imagenet", (2, 2, 2, 2))
    """
    hub = _keras_hub(f"the keras-hub preset {source}")
    local = os.path.isdir(source)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # offline, each of its retries would print a warning first
    try:
        backbone = hub.models.ResNetBackbone.from_preset(source)
    except Exception as exc:
        if local:
            raise WeightsError(f"{source} is not a readable keras-hub ResNet preset directory "
                               f"({_first_line(exc)})") from None
        raise WeightsError(
            f"could not fetch the keras-hub preset {source} (offline?): where there is internet, save it with "
            f"keras_hub.models.ResNetBackbone.from_preset({source!r}).save_to_preset(DIR), then pass "
            f"--encoder-weights DIR ({_first_line(exc)})") from None
    finally:
        hub_log.setLevel(level)
    plain = (backbone.block_type == "basic_block" and not backbone.use_pre_activation
             and list(backbone.input_conv_filters) == [64] and list(backbone.input_conv_kernel_sizes) == [7]
             and list(backbone.stackwise_num_strides) == [1, 2, 2, 2]
             and tuple(backbone.stackwise_num_blocks) == tuple(depths))
    if not plain:
        # ResNet-vd (three-conv stem, average-pooled shortcuts) and ResNetV2 (pre-activation) are
        # other networks: their weights would not mean the same in fcnseg's ResNet.
        raise WeightsError(
            f"{source} holds a {backbone.block_type} ResNet with blocks {list(backbone.stackwise_num_blocks)}"
            f"{' (pre-activation)' if backbone.use_pre_activation else ''} and stem "
            f"{list(backbone.input_conv_kernel_sizes)}, not the plain ResNet with basic blocks {list(depths)}")
    return backbone


def load_resnet_weights(encoder: keras.Model, encoder_weights: str, imagenet_source: str,
                        depths: tuple[int, ...]) -> None:
    """Fills fcnseg's ResNet18/34 ``encoder`` from ``"imagenet"`` (keras-hub ``imagenet_source``),
    a keras-hub preset directory, or a Keras weights file of this encoder.

    Example:
        >>> load_resnet_weights(encoder, "imagenet", "resnet_18_imagenet", (2, 2, 2, 2))
    """
    path = imagenet_source if encoder_weights == "imagenet" else os.fspath(encoder_weights)
    if encoder_weights != "imagenet" and not os.path.isdir(path):
        load_encoder_weights(encoder, path)
        return
    backbone = read_hub_resnet(path, depths)
    names = [layer.name for layer in encoder.layers if layer.weights]
    try:
        for name in names:
            encoder.get_layer(name).set_weights(backbone.get_layer(hub_layer_name(name)).get_weights())
    except ValueError as exc:
        raise WeightsError(f"{path} does not fit {encoder.name} ({_first_line(exc)})") from None


# --- keras.applications: downloads, weights files and saved models ---------------------------------

def _is_saved_model(path: str) -> bool:
    if path.endswith(".keras"):
        return True
    if path.endswith(".weights.h5"):
        return False
    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except Exception:  # not HDF5 at all: the weights reader says so in its own words
        return False


def _any_input_size(model: keras.Model) -> keras.Model:
    """``model`` rebuilt to take images of any size (a saved model may have a fixed input)."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"]["batch_shape"]
            layer["config"]["batch_shape"] = [None, None, None, shape[-1]]
    flexible = model.__class__.from_config(config)
    flexible.set_weights(model.get_weights())
    return flexible


def _fix_std_as_variance(model: keras.Model) -> None:
    # keras.applications' EfficientNet ImageNet files hold the ImageNet std where the input
    # Normalization expects the variance; keras adds a rescaling layer when it loads them as
    # "imagenet". Loaded from a path, that layer is missing, so square the std here instead:
    # (x - mean) / sqrt(std^2) is what the weights were trained with.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "adapt_variance", None) is not None:
            variance = np.asarray(layer.adapt_variance).reshape(-1)
            if variance.shape == (3,) and np.allclose(variance, IMAGENET_RGB_STD, atol=1e-4):
                layer.adapt_variance.assign(np.square(variance).reshape(layer.adapt_variance.shape))
                layer.finalize_state()


def read_application(constructor: str, encoder_weights: str | None) -> keras.Model:
    """``keras.applications.<constructor>`` without the top, any input size, with its weights.

    Args:
        constructor: e.g. ``"ResNet50"``.
        encoder_weights: ``None``, ``"imagenet"`` (Keras downloads it once into
            ``$KERAS_HOME/models``, default ``~/.keras/models``, and checks its hash),
            a Keras weights file (``.weights.h5``, or the library's legacy ``_notop.h5``)
            or a saved model (``.keras`` or ``.h5``) of that network.

    Example:
        >>> resnet50 = read_application("ResNet50", "imagenet")
    """
    build = getattr(keras.applications, constructor)
    if encoder_weights == "imagenet":
        try:
            return build(weights="imagenet", include_top=False, input_shape=(None, None, 3))
        except Exception as exc:
            raise WeightsError(
                f"could not fetch the ImageNet weights of keras.applications.{constructor} (offline?): put the "
                "file into $KERAS_HOME/models (default ~/.keras/models) or pass --encoder-weights PATH "
                f"({_first_line(exc)})") from None
    model = build(weights=None, include_top=False, input_shape=(None, None, 3))
    if encoder_weights is None:
        return model
    path = os.fspath(encoder_weights)
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a folder: the {constructor} encoder takes a Keras weights file or a saved "
                           "keras.applications model (.keras/.h5); preset folders fit resnet18/resnet34")
    if not path.endswith(".keras"):
        _check_h5(path)
    elif not os.path.isfile(path):
        raise WeightsError(f"encoder weights file not found: {path}")
    try:
        if _is_saved_model(path):
            return _any_input_size(keras.saving.load_model(path, compile=False))
        model.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"could not load {constructor} weights from {path} ({_first_line(exc)})") from None
    _fix_std_as_variance(model)
    return model


def copy_by_name(donor: keras.Model, target: keras.Model, names, what: str) -> None:
    """Copies the weights of the layers ``names`` from ``donor`` into ``target``."""
    try:
        for name in names:
            target.get_layer(name).set_weights(donor.get_layer(name).get_weights())
    except ValueError as exc:
        raise WeightsError(f"{what} does not fit {target.name} ({_first_line(exc)})") from None
