"""DeepLabv3+: ASPP at output stride 16 and a light decoder on the stride-4 features.

Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611).
Atrous spatial pyramid pooling on the dilated encoder's last map (a 1x1 conv,
three 3x3 separable convs at rates 6, 12, 18, and image pooling), projected
to 256 channels; upsampled x4 and concatenated with the stride-4 features
reduced to 48 channels; a 3x3 separable conv, a 1x1 classifier, bilinear x4.

Structure and parameter count follow segmentation_models.pytorch 0.6.0's
``DeepLabV3Plus`` (separable ASPP, a separable 3x3 after the projection,
dropout 0.5, 1x1 head); its default rates are 12/24/36 (for output stride 8),
here the paper's 6/12/18 for output stride 16 (rates change no parameter).
Test (tests/test_dilated_models.py): with each side's encoder count
subtracted, ``deeplabv3plus(12, "resnet50")`` has exactly the trainable
parameters of ``smp.DeepLabV3Plus("resnet50", classes=12)`` (26,680,412 in
all; 3,172,380 without its encoder).
"""

from __future__ import annotations

import keras

from fcnseg.models.blocks import conv_bn_relu, upsample
from fcnseg.models.encoders import build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import CropToReference, PadToMultiple, ResizeToReference, scaled

OUTPUT_STRIDE = 16
ATROUS_RATES = (6, 12, 18)
DECODER_FILTERS = 256
LOW_LEVEL_FILTERS = 48


def apply_aspp(x, filters: int, name: str = "aspp"):
    """Atrous spatial pyramid pooling, projected to ``filters`` channels (dropout 0.5).

    Example:
        >>> y = apply_aspp(keras.Input((None, None, 2048)), 256)
    """
    branches = [conv_bn_relu(x, filters, 1, f"{name}_conv1x1")]
    for rate in ATROUS_RATES:
        branches.append(conv_bn_relu(x, filters, 3, f"{name}_rate{rate}", dilation_rate=rate, separable=True))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, f"{name}_pool_conv")
    branches.append(ResizeToReference(name=f"{name}_pool_up")([pooled, x]))
    x = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    x = conv_bn_relu(x, filters, 1, f"{name}_project")
    return keras.layers.Dropout(0.5, name=f"{name}_dropout")(x)


def deeplabv3plus(num_classes: int, encoder: str = "resnet50", encoder_weights: str | None = None,
                  width: float = 1.0, input_norm: str = "encoder") -> keras.Model:
    """DeepLabv3+ on an encoder of the table built at output stride 16.

    Args:
        num_classes: number of output channels (logits).
        encoder: an encoder with output stride 16 (resnet18/34/50/101).
        encoder_weights: ``None``, ``"imagenet"`` or a local path, as
            :func:`fcnseg.models.encoders.build_encoder` takes.
        width: multiplier on the decoder's filters (and fcnseg's own encoders').
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

    Returns:
        ``keras.Model`` named ``deeplabv3plus_<encoder>`` mapping float32 RGB
        0..255 images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W.

    Example:
        >>> model = deeplabv3plus(12, "resnet18", width=0.25)
    """
    backbone = build_encoder(encoder, width, encoder_weights, output_stride=OUTPUT_STRIDE)
    filters = scaled(DECODER_FILTERS, width)

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(OUTPUT_STRIDE, name="pad")(x)
    feats = encoder_features(backbone, x)
    x = apply_aspp(feats[32], filters)  # nominal key 32: stride 16 here
    x = conv_bn_relu(x, filters, 3, "aspp_sepconv", separable=True)
    low = conv_bn_relu(feats[4], scaled(LOW_LEVEL_FILTERS, width), 1, "low_level")
    x = ResizeToReference(name="aspp_upsample")([x, low])  # x4: the input is padded to a multiple of 16
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    x = conv_bn_relu(x, filters, 3, "decoder_sepconv", separable=True)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = upsample(x, 4, "upsample", dtype="float32")  # logits: float32 under mixed precision
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"deeplabv3plus_{encoder}")
