"""PSPNet: pyramid pooling on a dilated ResNet (output stride 8).

Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017
(arXiv:1612.01105). The last encoder map is average-pooled into 1x1, 2x2, 3x3
and 6x6 cells; each pooled map is reduced by a 1x1 conv to 1/4 of the
encoder's channels (the paper's 1/N for N = 4 levels), upsampled back and
concatenated with the map, so every pixel sees scene-level context.

Structure follows the paper as mmsegmentation's ``PSPHead`` builds it (not
segmentation_models.pytorch's PSPNet, which taps the encoder at depth 3 and
uses a 1x1 bottleneck and a 3x3 classifier): pyramid branches 1x1 conv-BN-ReLU
(512 channels on ResNet50/101), bottleneck 3x3 conv-BN-ReLU to the same
channels, dropout 0.1, 1x1 classifier, bilinear x8. The auxiliary loss head
on stage 3 is not built (the paper's training aid, not part of the network).

Parameter count (tests/test_dilated_models.py): with the encoder's own
count subtracted, ``pspnet(12, "resnet50")`` has exactly the trainable
parameters of mmsegmentation's ``PSPHead(in_channels=2048, channels=512,
pool_scales=(1, 2, 3, 6), num_classes=12)`` written out module for module in
PyTorch in the test (mmsegmentation itself is not installed): 23,079,948.
"""

from __future__ import annotations

import keras

from fcnseg.models.blocks import conv_bn_relu, upsample
from fcnseg.models.encoders import ENCODERS, build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import AdaptiveAveragePooling2D, CropToReference, PadToMultiple, ResizeToReference, scaled

OUTPUT_STRIDE = 8
PYRAMID_BINS = (1, 2, 3, 6)


def apply_pyramid_pooling(x, channels: int, name: str = "ppm"):
    """Pyramid pooling module: ``x`` concatenated with its pooled, reduced, upsampled copies.

    Args:
        x: encoder map (B, H, W, C), any H and W.
        channels: output channels of each branch's 1x1 conv.
        name: layer name prefix.

    Returns:
        (B, H, W, C + 4 * channels) tensor.

    Example:
        >>> y = apply_pyramid_pooling(keras.Input((None, None, 2048)), 512)
    """
    branches = [x]
    for bins in PYRAMID_BINS:
        y = AdaptiveAveragePooling2D(bins, name=f"{name}_pool{bins}")(x)
        y = conv_bn_relu(y, channels, 1, f"{name}_branch{bins}")
        branches.append(ResizeToReference(name=f"{name}_up{bins}")([y, x]))
    return keras.layers.Concatenate(name=f"{name}_concat")(branches)


def pspnet(num_classes: int, encoder: str = "resnet50", encoder_weights: str | None = None,
           width: float = 1.0, input_norm: str = "encoder") -> keras.Model:
    """PSPNet on a dilated (output stride 8) encoder of the table.

    Args:
        num_classes: number of output channels (logits).
        encoder: an encoder with output stride 8 (resnet18/34/50/101).
        encoder_weights: ``None``, ``"imagenet"`` or a local path, as
            :func:`fcnseg.models.encoders.build_encoder` takes.
        width: multiplier on the head's filters (and fcnseg's own encoders').
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

    Returns:
        ``keras.Model`` named ``pspnet_<encoder>`` mapping float32 RGB 0..255
        images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W.

    Example:
        >>> model = pspnet(12, "resnet18", width=0.25)
    """
    backbone = build_encoder(encoder, width, encoder_weights, output_stride=OUTPUT_STRIDE)
    # The paper's 1/N of the encoder's channels (2048 -> 512; mmsegmentation's ResNet18 config: 512 -> 128).
    channels = scaled(ENCODERS[encoder].channels[-1] // len(PYRAMID_BINS), width)

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(OUTPUT_STRIDE, name="pad")(x)
    x = encoder_features(backbone, x)[32]  # nominal key 32: stride 8 here
    x = apply_pyramid_pooling(x, channels)
    x = conv_bn_relu(x, channels, 3, "bottleneck")
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = upsample(x, OUTPUT_STRIDE, "upsample", dtype="float32")  # logits: float32 under mixed precision
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"pspnet_{encoder}")
