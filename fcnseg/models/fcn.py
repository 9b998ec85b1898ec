"""FCN-32s/16s/8s on a VGG16 encoder.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015 (and the PAMI 2016 version). Layer names follow the
Caffe reference (``score_fr``, ``upscore2``, ``fuse_pool4``, ...).

Any input size works: the input is padded at the bottom/right to a multiple of
32, so every stride-s map is exactly ``padded / s`` and the 2x upsampled
coarser score map has the same shape as the finer one; the logits are cropped
back to the input size at the end. This replaces Caffe's pad-100/crop offsets.
"""

from __future__ import annotations

import keras

from fcnseg.models.encoders import preprocess_input
from fcnseg.models.layers import (
    CropToReference,
    PadToMultiple,
    PatchMatmulConv2D,
    PixelShuffleConv2DTranspose,
    bilinear_initializer,
    scaled,
)
from fcnseg.models.vgg import VGG16_SKIP_LAYERS, apply_vgg16
from fcnseg.models.weights import load_vgg16_weights


def _score(x, num_classes: int, name: str):
    # Zero init like the reference: at the start the skips add nothing and the
    # net behaves as its coarser parent.
    return keras.layers.Conv2D(
        num_classes, 1, kernel_initializer="zeros", bias_initializer="zeros", name=name
    )(x)


def _upsample(x, num_classes: int, factor: int, name: str):
    # Kernel 2f, stride f, no bias, bilinear init, trainable (as in the paper's
    # final models). "same" padding puts the output on the half-pixel grid.
    return PixelShuffleConv2DTranspose(
        num_classes,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=bilinear_initializer,
        name=name,
    )(x)


def _fcn(
    variant: str,
    num_classes: int,
    encoder_weights: str | None,
    width: float,
    dropout: float,
    encoder: str = "vgg16",
    input_norm: str = "encoder",
) -> keras.Model:
    if encoder != "vgg16":
        raise ValueError(f"{variant} is built on VGG16: --encoder must be vgg16, got {encoder!r}")
    if encoder_weights is not None and width != 1.0:
        raise ValueError(f"pretrained encoder weights need width=1.0, got width={width}")
    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(32, name="pad")(x)
    feats = apply_vgg16(x, width)

    # fc6/fc7 of VGG16 as convolutions ("convolutionalized" classifier). As
    # Conv2D, fc6 alone was a third of the training step; as one GEMM each it
    # runs near the machine's matmul peak (1.6x faster, README "Benchmarks").
    x = feats[VGG16_SKIP_LAYERS["pool5"]]
    x = PatchMatmulConv2D(scaled(4096, width), 7, padding="same", activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = PatchMatmulConv2D(scaled(4096, width), 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    x = _score(x, num_classes, "score_fr")

    if variant == "fcn32s":
        x = _upsample(x, num_classes, 32, "upscore32")
    else:
        x = _upsample(x, num_classes, 2, "upscore2")
        pool4 = _score(feats[VGG16_SKIP_LAYERS["pool4"]], num_classes, "score_pool4")
        x = keras.layers.Add(name="fuse_pool4")([x, pool4])
        if variant == "fcn16s":
            x = _upsample(x, num_classes, 16, "upscore16")
        else:
            x = _upsample(x, num_classes, 2, "upscore_pool4")
            pool3 = _score(feats[VGG16_SKIP_LAYERS["pool3"]], num_classes, "score_pool3")
            x = keras.layers.Add(name="fuse_pool3")([x, pool3])
            x = _upsample(x, num_classes, 8, "upscore8")

    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    model = keras.Model(inputs, outputs, name=variant)
    if encoder_weights is not None:
        load_vgg16_weights(model, encoder_weights)
    return model


def fcn32s(
    num_classes: int,
    encoder_weights: str | None = None,
    width: float = 1.0,
    dropout: float = 0.5,
    encoder: str = "vgg16",
    input_norm: str = "encoder",
) -> keras.Model:
    """FCN-32s: VGG16, fc6/fc7 as convs, score_fr upsampled 32x.

    Args:
        num_classes: number of output channels (logits).
        encoder_weights: ``None`` (random), ``"imagenet"`` (keras.applications
            VGG16, downloaded or from ``~/.keras/models/``) or a path to a
            local VGG16 Keras weights file with or without the top.
        width: multiplier on every conv's filter count (tiny test models).
        dropout: dropout rate after fc6 and fc7.
        encoder: ``"vgg16"``, the only one (fc6/fc7 are VGG16's classifier).
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before VGG16's Caffe preprocessing.

    Returns:
        ``keras.Model`` mapping float32 RGB 0..255 images (B, H, W, 3) to
        float32 logits (B, H, W, num_classes) for any H, W.

    Example:
        >>> model = fcn32s(21, width=1 / 16)
        >>> model(np.zeros((1, 33, 47, 3), "float32")).shape
        TensorShape([1, 33, 47, 21])
    """
    return _fcn("fcn32s", num_classes, encoder_weights, width, dropout, encoder, input_norm)


def fcn16s(
    num_classes: int,
    encoder_weights: str | None = None,
    width: float = 1.0,
    dropout: float = 0.5,
    encoder: str = "vgg16",
    input_norm: str = "encoder",
) -> keras.Model:
    """FCN-16s: FCN-32s plus the pool4 skip (2x up, fuse, 16x up).

    Args and returns as :func:`fcn32s`.

    Example:
        >>> model = fcn16s(21, width=1 / 16)
    """
    return _fcn("fcn16s", num_classes, encoder_weights, width, dropout, encoder, input_norm)


def fcn8s(
    num_classes: int,
    encoder_weights: str | None = None,
    width: float = 1.0,
    dropout: float = 0.5,
    encoder: str = "vgg16",
    input_norm: str = "encoder",
) -> keras.Model:
    """FCN-8s: staged fusion of score_fr, pool4 and pool3, then 8x up.

    upscore2(score_fr) + score_pool4 -> fuse_pool4 -> upscore_pool4,
    + score_pool3 -> fuse_pool3 -> upscore8. For 21 classes about 134.5M
    parameters, as the Caffe reference.

    Args and returns as :func:`fcn32s`.

    Example:
        >>> model = fcn8s(21, width=1 / 16)
        >>> model(np.zeros((1, 32, 32, 3), "float32")).shape
        TensorShape([1, 32, 32, 21])
    """
    return _fcn("fcn8s", num_classes, encoder_weights, width, dropout, encoder, input_norm)
