"""The encoder table: every backbone a segmentation model can take.

One row per encoder (``ENCODERS``): how to build it, its feature taps at
strides 2, 4, 8, 16 and 32 (layer names) with their channel counts, the input
preprocessing its ImageNet weights were trained with (applied inside the
segmentation model, so models still take RGB 0..255), and where those weights
come from. This is segmentation_models' encoder table
(``"out_channels": [3, 64, 64, 128, 256, 512]``) with keras-hub's habit of
handing the features to the decoder as one dict keyed by level
(``pyramid_outputs``): :func:`encoder_features` returns ``{2: ..., 4: ...,
8: ..., 16: ..., 32: ...}``, so any decoder can take any encoder.

Built three ways:

- ``vgg16``, ``resnet18``, ``resnet34``: fcnseg's own graphs (``vgg.py``,
  ``resnet.py``), which take ``width`` for tiny test models, keep the fused
  batch-norm fast path and the layer names older checkpoints were saved with.
  ImageNet weights are copied in by layer name: VGG16's from
  ``keras.applications``, ResNet18/34's from keras-hub (``resnet_18_imagenet``;
  for ResNet34, keras-hub's loader of timm checkpoints reading torchvision's
  ``resnet34.tv_in1k``), whose ResNet has the same stem, basic blocks,
  projection shortcuts and batch-norm epsilon (1e-5), so the copy is exact.
- ``resnet50``, ``resnet101``, ``mobilenet_v2``, ``efficientnet_b0``..``b4``:
  ``keras.applications`` itself (``include_top=False``), tapped by layer
  name; ``width`` does not narrow these.

Output stride: ``build_encoder(..., output_stride=16 or 8)`` dilates the last
ResNet stages instead of striding them (torchvision's
``replace_stride_with_dilation``; rows list what they support in
``output_strides``). The feature dict keeps its nominal keys 2 .. 32 so a
decoder is written once: with output stride 8, ``features[16]`` and
``features[32]`` are both at stride 8 (:func:`feature_strides` gives the
actual stride of each key).

The encoder is one nested ``keras.Model`` named after the encoder, from the
preprocessed, padded image to its five taps; :func:`encoder_layers` finds it
in a built model (fine-tuning freezes it and scales its learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras

from fcnseg.models import weights as pretrained
from fcnseg.models.layers import CaffePreprocess, ImageNetNormalize, PerImageStandardize
from fcnseg.models.mit import MIT_VARIANTS, mit_encoder
from fcnseg.models.resnet import RESNET_DEPTHS, resnet_encoder, stage_dilations
from fcnseg.models.vgg import apply_vgg16

STRIDES = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Encoder:
    """One row of the encoder table.

    Attributes:
        build: ``(name, width, weights) -> keras.Model`` from the preprocessed
            image to the taps, in stride order.
        taps: layer names of the features at strides 2, 4, 8, 16 and 32.
        channels: their channel counts at width 1.
        preprocess: key of ``PREPROCESSING``: what the ImageNet weights expect.
        weights: where ``--encoder-weights imagenet`` comes from, in words.
        library: the keras.applications constructor or the keras-hub preset
            (or timm handle) the ImageNet weights are read from.
        scales_with_width: whether ``width`` narrows the encoder (fcnseg's own
            graphs) or only the decoder (keras.applications).
        output_strides: the output strides it can be built with, 32 first.
            Where there is more than 32, ``build`` also takes
            ``output_stride=`` as a keyword (rows with only 32 keep the
            three-argument ``build``).
    """

    build: Callable[[str, float, str | None], keras.Model]
    taps: tuple[str, str, str, str, str]
    channels: tuple[int, int, int, int, int]
    preprocess: str
    weights: str
    library: str
    scales_with_width: bool = False
    output_strides: tuple[int, ...] = (32,)


def _preprocess_caffe(name: str) -> keras.layers.Layer:
    return CaffePreprocess(name=name)


def _preprocess_torch(name: str) -> keras.layers.Layer:
    return ImageNetNormalize(name=name)


def _preprocess_tf(name: str) -> keras.layers.Layer:
    return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)


def _preprocess_none(name: str) -> keras.layers.Layer:
    return keras.layers.Identity(name=name)


# What the ImageNet weights expect, from RGB 0..255; the words go to the README.
PREPROCESSING: dict[str, tuple[Callable[[str], keras.layers.Layer], str]] = {
    "caffe": (_preprocess_caffe, "BGR minus the ImageNet mean (0..255)"),
    "torch": (_preprocess_torch, "RGB / 255, ImageNet mean/std"),
    "tf": (_preprocess_tf, "RGB / 127.5 - 1"),
    "none": (_preprocess_none, "inside the network (RGB / 255, ImageNet mean/std)"),
}


def _own_resnet(name: str, width: float, weights: str | None, output_stride: int = 32) -> keras.Model:
    encoder = resnet_encoder(name, width, ENCODERS[name].taps, output_stride)
    if weights is not None:
        pretrained.load_resnet_weights(encoder, weights, ENCODERS[name].library, RESNET_DEPTHS[name])
    return encoder


def _own_vgg16(name: str, width: float, weights: str | None) -> keras.Model:
    inputs = keras.Input((None, None, 3), name="image")
    feats = apply_vgg16(inputs, width)
    encoder = keras.Model(inputs, [feats[t] for t in ENCODERS[name].taps], name=name)
    if weights is not None:
        library = pretrained.read_application("VGG16", weights)
        pretrained.copy_by_name(library, encoder, pretrained.VGG16_CONV_LAYERS, weights)
    return encoder


def _application(name: str, width: float, weights: str | None, output_stride: int = 32) -> keras.Model:
    row = ENCODERS[name]
    library = pretrained.read_application(row.library, weights)
    if output_stride != 32:
        library = _dilate_application(library, output_stride)
    try:
        outputs = [library.get_layer(t).output for t in row.taps]
    except ValueError:
        raise pretrained.WeightsError(
            f"{weights} is not a keras.applications {row.library} (it lacks the layers "
            f"{', '.join(row.taps)})") from None
    return keras.Model(library.input, outputs, name=name)


def _dilate_application(library: keras.Model, output_stride: int) -> keras.Model:
    """keras.applications ResNet50/101 rebuilt with the last stages dilated, weights kept.

    Its bottleneck blocks stride in the 1x1 convs (``convN_block1_0_conv`` shortcut and
    ``_1_conv``) and dilate nothing; a dilated stage sets those strides to 1 and the 3x3
    ``_2_conv`` dilation to the :func:`fcnseg.models.resnet.stage_dilations` schedule. Shapes
    do not change, so every weight is copied across by layer name.
    """
    schedule = stage_dilations(output_stride)
    changes: dict[str, dict] = {}
    for stage, (stride, first_dilation, dilation) in enumerate(schedule, start=1):
        if stride == 2 or stage == 1:
            continue
        prefix = f"conv{stage + 1}_block"  # keras.applications' conv2..conv5 are stages 1..4
        for layer in library.layers:
            if layer.name.startswith(prefix):
                block = int(layer.name[len(prefix):].split("_")[0])
                if block == 1 and layer.name.endswith(("_0_conv", "_1_conv")):
                    changes[layer.name] = {"strides": (1, 1)}
                elif layer.name.endswith("_2_conv"):
                    rate = first_dilation if block == 1 else dilation
                    changes[layer.name] = {"dilation_rate": (rate, rate)}

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), **changes.get(layer.name, {})})

    dilated = keras.models.clone_model(library, clone_function=clone)
    for layer in library.layers:
        if layer.weights:
            dilated.get_layer(layer.name).set_weights(layer.get_weights())
    return dilated


def _efficientnet(variant: int, channels: tuple[int, int, int, int, int]) -> Encoder:
    # The first block of each next stage expands its input: its activation is the richest map at
    # that stride, and the names are the same in every variant (keras-cv/keras-hub tap these too).
    return Encoder(
        _application, ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                       "block6a_expand_activation", "top_activation"),
        channels, "none", f"keras.applications EfficientNetB{variant}", f"EfficientNetB{variant}")


_RESNET_APP_TAPS = ("conv1_relu", "conv2_block3_out", "conv3_block4_out")

ENCODERS: dict[str, Encoder] = {
    "vgg16": Encoder(_own_vgg16, ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"),
                     (64, 128, 256, 512, 512), "caffe", "keras.applications VGG16", "VGG16", True),
    "resnet18": Encoder(_own_resnet, ("conv1_relu", "stage1_block2_out", "stage2_block2_out", "stage3_block2_out",
                                      "stage4_block2_out"),
                        (64, 64, 128, 256, 512), "torch", "keras-hub preset resnet_18_imagenet",
                        "resnet_18_imagenet", True, output_strides=(32, 16, 8)),
    "resnet34": Encoder(_own_resnet, ("conv1_relu", "stage1_block3_out", "stage2_block4_out", "stage3_block6_out",
                                      "stage4_block3_out"),
                        (64, 64, 128, 256, 512), "torch", "keras-hub timm loader: torchvision resnet34.tv_in1k",
                        "hf://timm/resnet34.tv_in1k", True, output_strides=(32, 16, 8)),
    "resnet50": Encoder(_application, (*_RESNET_APP_TAPS, "conv4_block6_out", "conv5_block3_out"),
                        (64, 256, 512, 1024, 2048), "caffe", "keras.applications ResNet50", "ResNet50",
                        output_strides=(32, 16, 8)),
    "resnet101": Encoder(_application, (*_RESNET_APP_TAPS, "conv4_block23_out", "conv5_block3_out"),
                         (64, 256, 512, 1024, 2048), "caffe", "keras.applications ResNet101", "ResNet101",
                         output_strides=(32, 16, 8)),
    "mobilenet_v2": Encoder(_application, ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                                           "block_13_expand_relu", "out_relu"),
                            (96, 144, 192, 576, 1280), "tf", "keras.applications MobileNetV2", "MobileNetV2"),
    "efficientnet_b0": _efficientnet(0, (96, 144, 240, 672, 1280)),
    "efficientnet_b1": _efficientnet(1, (96, 144, 240, 672, 1280)),
    "efficientnet_b2": _efficientnet(2, (96, 144, 288, 720, 1408)),
    "efficientnet_b3": _efficientnet(3, (144, 192, 288, 816, 1536)),
    "efficientnet_b4": _efficientnet(4, (144, 192, 336, 960, 1792)),
    # MiT (SegFormer's Mix Transformer, keras-hub's layers): no stride-2 features (channels 0, tap ""),
    # so decoders that need stride 2 must leave it out (see encoder_strides); the other taps are the
    # four outputs of the encoder's one layer, "mit". ``width`` scales its embedding dims; SegFormer
    # normalises with the ImageNet mean/std (mmsegmentation's config).
    **{name: Encoder(mit_encoder, ("", "mit:0", "mit:1", "mit:2", "mit:3"),
                     (0, *MIT_VARIANTS[name][0]), "torch",
                     f"none in keras-hub (its MiT presets are SegFormer-trained: --encoder-weights {name}_ade20k_512)",
                     f"{name}_ade20k_512", True)
       for name in MIT_VARIANTS},
}


def encoder_strides(name: str) -> tuple[int, ...]:
    """The strides encoder ``name`` gives features at (MiT has none at 2)."""
    return tuple(s for s, c in zip(STRIDES, ENCODERS[name].channels) if c)


def build_encoder(name: str, width: float = 1.0, weights: str | None = None, output_stride: int = 32) -> keras.Model:
    """The encoder ``name`` of the table, with its weights.

    Args:
        name: a key of ``ENCODERS``.
        width: filter multiplier; narrows only encoders with ``scales_with_width``.
        weights: ``None`` (random), ``"imagenet"`` or a local path: a Keras
            weights file, a saved keras.applications model (``.keras``/``.h5``)
            or, for resnet18/34, a keras-hub preset directory.
        output_stride: 32, or 16 / 8 (dilated) where the row's
            ``output_strides`` allow it; the weights are the same.

    Returns:
        ``keras.Model`` named ``name`` from the preprocessed image (see
        :func:`preprocessing`) to the five taps, nominal stride 2 first (actual
        strides: :func:`feature_strides`).

    Raises:
        ValueError: unknown name, an output stride the encoder lacks, or
            ImageNet weights at a width other than 1.
        fcnseg.models.weights.WeightsError: weights that cannot be read or fetched (one line).

    Example:
        >>> encoder = build_encoder("resnet18", width=1 / 16)
        >>> feats = encoder_features(encoder, keras.Input((None, None, 3)))
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    row = ENCODERS[name]
    if output_stride not in row.output_strides:
        raise ValueError(f"encoder {name} supports output stride {', '.join(map(str, row.output_strides))}, "
                         f"not {output_stride}")
    if weights == "imagenet" and row.scales_with_width and width != 1.0:
        raise ValueError(f"ImageNet encoder weights need width=1.0, got width={width}")
    width = width if row.scales_with_width else 1.0
    if output_stride == 32:
        return row.build(name, width, weights)
    return row.build(name, width, weights, output_stride=output_stride)


def feature_strides(output_stride: int = 32) -> dict[int, int]:
    """The actual stride of each key of :func:`encoder_features` at ``output_stride``.

    Keys are the nominal levels 2 .. 32; a dilated encoder stops striding at its output stride.

    Example:
        >>> feature_strides(8)
        {2: 2, 4: 4, 8: 8, 16: 8, 32: 8}
    """
    return {level: min(level, output_stride) for level in STRIDES}


def preprocessing(name: str, layer_name: str = "preprocess") -> keras.layers.Layer:
    """The layer that turns RGB 0..255 into what encoder ``name``'s weights expect."""
    return PREPROCESSING[ENCODERS[name].preprocess][0](layer_name)


# --input-norm: what happens to the RGB 0..255 image before the encoder's own preprocessing; the
# words go to --help and the README.
INPUT_NORMS: dict[str, str] = {
    "encoder": "none: the encoder's fixed ImageNet preprocessing only",
    "per-image": "each image's per-channel mean and std moved onto ImageNet's first (removes overall "
                 "brightness, contrast and colour cast, e.g. dusk or overcast test images)",
}


def preprocess_input(x, encoder: str, input_norm: str = "encoder"):
    """``x`` (RGB 0..255) through ``input_norm`` (a key of ``INPUT_NORMS``) and the layer that
    turns it into what encoder ``encoder``'s weights expect."""
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"--input-norm must be one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")
    if input_norm == "per-image":
        x = PerImageStandardize(name="input_norm")(x)
    return preprocessing(encoder)(x)


def encoder_features(encoder: keras.Model, x) -> dict:
    """``encoder`` applied to ``x``, as ``{stride: features}`` for nominal strides 2 .. 32 (4 .. 32 for
    MiT; a dilated encoder's real strides: :func:`feature_strides`)."""
    outputs = encoder(x)
    return dict(zip(STRIDES[len(STRIDES) - len(outputs):], outputs))


def encoder_layers(model: keras.Model) -> list:
    """The layers of ``model`` that are its encoder: the nested encoder model, or (FCN) the VGG16 convs."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name in ENCODERS]
    if nested:
        return nested
    names = set(pretrained.VGG16_CONV_LAYERS)
    return [layer for layer in model.layers if layer.name in names]
