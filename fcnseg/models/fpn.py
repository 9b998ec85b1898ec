"""FPN on any encoder of the table: the panoptic FPN semantic-segmentation head.

Kirillov, Girshick, He & Dollár, "Panoptic Feature Pyramid Networks", CVPR
2019 (arXiv:1901.02446), section 3: a feature pyramid (Lin et al. 2017) over
the encoder's strides 4..32, then per level conv3x3-GroupNorm-ReLU blocks,
each followed by x2 bilinear upsampling until the level reaches stride 4, the
levels summed, a 1x1 convolution to the classes and x4 bilinear upsampling to
the input. Built as segmentation_models.pytorch 0.6 builds it (``smp.FPN``,
``decoders/fpn/decoder.py``): lateral 1x1 convolutions (with bias) to 256
pyramid channels, nearest x2 top-down + add, 128 segmentation channels,
GroupNorm with 32 groups (PyTorch's epsilon 1e-5), merge by add, channel
dropout (``Dropout2d``) 0.2 before the 1x1 head. smp interpolates bilinearly
with ``align_corners=True``; Keras' bilinear ``UpSampling2D`` is
half-pixel, so the geometry differs by under a pixel at each step, the
parameters not at all.

``width`` narrows the pyramid and segmentation channels; GroupNorm keeps its
4 channels per group (32 groups of 128 at full width): ``groups`` is the
largest divisor of the channels that is at most ``min(32, channels // 4)``,
so a narrow model never normalises single channels (on the 1x1 stride-32 map
of a tiny image that would zero every feature).
"""

from __future__ import annotations

import keras

from fcnseg.models.blocks import upsample
from fcnseg.models.encoders import build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import CropToReference, PadToMultiple, scaled

PYRAMID_FILTERS = 256
SEGMENTATION_FILTERS = 128
GROUPS = 32
DROPOUT = 0.2
# PyTorch's GroupNorm epsilon (Keras defaults to 1e-3).
GN_EPSILON = 1e-5


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: 32 at 128 channels, 4 channels per group when narrower."""
    limit = max(1, min(GROUPS, channels // 4))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def conv_gn_relu(x, filters: int, name: str):
    """conv3x3 (no bias) -> GroupNorm -> ReLU (smp's ``Conv3x3GNReLU``)."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.GroupNormalization(group_count(filters), epsilon=GN_EPSILON, name=f"{name}_gn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def apply_segmentation_block(x, filters: int, upsamplings: int, name: str):
    """A pyramid level to stride 4: conv-GN-ReLU, then (x``upsamplings``) bilinear x2 after each.

    smp's ``SegmentationBlock``: a level at stride 4 gets one block and no
    upsampling, one at stride 32 three blocks each followed by x2.
    """
    x = conv_gn_relu(x, filters, f"{name}_block1")
    if upsamplings:
        x = upsample(x, 2, f"{name}_block1_up")
    for i in range(2, upsamplings + 1):
        x = conv_gn_relu(x, filters, f"{name}_block{i}")
        x = upsample(x, 2, f"{name}_block{i}_up")
    return x


def fpn(
    num_classes: int,
    encoder: str = "resnet34",
    encoder_weights: str | None = None,
    width: float = 1.0,
    input_norm: str = "encoder",
) -> keras.Model:
    """Panoptic FPN semantic head (as smp builds it) on an encoder of ``ENCODERS``.

    Reference: ``segmentation_models_pytorch.FPN("resnet34", encoder_weights=None,
    classes=1)`` (smp 0.6.0) has 23,155,393 parameters; this model with
    ``num_classes=1`` has exactly as many trainable weights (fcnseg's ResNet34
    is torchvision's; batch-norm moving statistics are buffers in PyTorch,
    non-trainable weights here). tests/test_unet_fpn.py checks this against
    smp when it is installed.

    Args:
        num_classes: number of output channels (logits).
        encoder: a key of the encoder table; default ``"resnet34"`` (smp's default).
        encoder_weights: ``None``, ``"imagenet"`` or a local path, as
            :func:`fcnseg.models.encoders.build_encoder` takes.
        width: multiplier on the pyramid and segmentation channels (and on
            fcnseg's own encoders); GroupNorm groups follow (module docstring).
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

    Returns:
        ``keras.Model`` named ``fpn_<encoder>`` mapping float32 RGB 0..255
        images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W
        (padded to a multiple of 32 inside, cropped back).

    Example:
        >>> model = fpn(12, "resnet18", width=0.25)
        >>> model(np.zeros((1, 37, 53, 3), "float32")).shape
        TensorShape([1, 37, 53, 12])
    """
    backbone = build_encoder(encoder, width, encoder_weights)
    pyramid, segmentation = scaled(PYRAMID_FILTERS, width), scaled(SEGMENTATION_FILTERS, width)

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(32, name="pad")(x)
    feats = encoder_features(backbone, x)

    # Top-down pathway: p5 from the stride-32 features, each finer level = nearest x2 + lateral 1x1.
    p = {32: keras.layers.Conv2D(pyramid, 1, name="p5_lateral")(feats[32])}
    for level, stride in ((4, 16), (3, 8), (2, 4)):
        up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"p{level}_up")(p[stride * 2])
        lateral = keras.layers.Conv2D(pyramid, 1, name=f"p{level}_lateral")(feats[stride])
        p[stride] = keras.layers.Add(name=f"p{level}")([up, lateral])

    levels = [apply_segmentation_block(p[stride], segmentation, upsamplings, f"seg{level}")
              for level, stride, upsamplings in ((5, 32, 3), (4, 16, 2), (3, 8, 1), (2, 4, 0))]
    x = keras.layers.Add(name="merge")(levels)
    x = keras.layers.SpatialDropout2D(DROPOUT, name="dropout")(x)

    x = keras.layers.Conv2D(num_classes, 1, name="head")(x)
    x = upsample(x, 4, "head_up")
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"fpn_{encoder}")
