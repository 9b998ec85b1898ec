"""U-Net on any encoder of the table, with segmentation_models' decoder.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015 (arXiv:1505.04597): each decoder stage
upsamples x2, concatenates the encoder features of that stride and applies
two 3x3 convolutions. The decoder is the one segmentation_models.pytorch 0.6
builds (``smp.Unet``, ``decoders/unet/decoder.py``): nearest-neighbour x2,
concat skip, two conv3x3-BN-ReLU per block, 256/128/64/32/16 filters, the
stride-2 block's output upsampled once more without a skip (back to the input
grid), then a 3x3 convolution to the classes. With a VGG16 encoder smp adds a
"center" block (two conv3x3-BN-ReLU at the encoder's 512 channels) on the
stride-32 features, which are a bare max-pool there; so does this one.
"""

from __future__ import annotations

import keras

from fcnseg.models.blocks import conv_bn_relu
from fcnseg.models.encoders import build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import CropToReference, PadToMultiple, scaled

# smp.Unet's default decoder_channels: one block per stride 16, 8, 4, 2, 1.
DECODER_FILTERS = (256, 128, 64, 32, 16)
# Encoders whose stride-32 tap is a plain max-pool get smp's center block (smp: name starts "vgg").
CENTER_BLOCK_ENCODERS = ("vgg16",)


def apply_decoder_block(x, skip, filters: int, name: str):
    """One U-Net decoder block: nearest x2, concat ``skip`` (if any), two conv3x3-BN-ReLU.

    Args:
        x: (B, H, W, C) decoder features.
        skip: encoder features at (B, 2H, 2W, S), or None (smp's last block).
        filters: output channels of both convolutions.
        name: prefix, e.g. ``"decoder1"``.

    Returns:
        (B, 2H, 2W, filters) tensor.
    """
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up")(x)
    if skip is not None:
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = conv_bn_relu(x, filters, 3, f"{name}_conv1")
    return conv_bn_relu(x, filters, 3, f"{name}_conv2")


def unet(
    num_classes: int,
    encoder: str = "resnet34",
    encoder_weights: str | None = None,
    width: float = 1.0,
    input_norm: str = "encoder",
) -> keras.Model:
    """U-Net (segmentation_models' decoder) on an encoder of ``fcnseg.models.encoders.ENCODERS``.

    Reference: ``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None,
    classes=1)`` (smp 0.6.0) has 24,436,369 parameters; this model with
    ``num_classes=1`` has exactly as many trainable weights (fcnseg's ResNet34
    is torchvision's, without conv biases; batch-norm moving statistics are
    buffers in PyTorch, non-trainable weights here). tests/test_unet_fpn.py
    checks this against smp when it is installed.

    Args:
        num_classes: number of output channels (logits).
        encoder: a key of the encoder table; default ``"resnet34"`` (smp's default).
        encoder_weights: ``None``, ``"imagenet"`` or a local path, as
            :func:`fcnseg.models.encoders.build_encoder` takes.
        width: multiplier on the decoder's filters (and on fcnseg's own
            encoders); keras.applications encoders keep their full width.
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

    Returns:
        ``keras.Model`` named ``unet_<encoder>`` mapping float32 RGB 0..255
        images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W
        (padded to a multiple of 32 inside, cropped back).

    Example:
        >>> model = unet(12, "resnet18", width=0.25)
        >>> model(np.zeros((1, 37, 53, 3), "float32")).shape
        TensorShape([1, 37, 53, 12])
    """
    backbone = build_encoder(encoder, width, encoder_weights)

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(32, name="pad")(x)
    feats = encoder_features(backbone, x)

    x = feats[32]
    if encoder in CENTER_BLOCK_ENCODERS:
        x = conv_bn_relu(x, x.shape[-1], 3, "center_conv1")
        x = conv_bn_relu(x, x.shape[-1], 3, "center_conv2")
    skips = (feats[16], feats[8], feats[4], feats[2], None)
    for i, (skip, filters) in enumerate(zip(skips, DECODER_FILTERS), start=1):
        x = apply_decoder_block(x, skip, scaled(filters, width), f"decoder{i}")

    x = keras.layers.Conv2D(num_classes, 3, padding="same", name="head")(x)
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"unet_{encoder}")
