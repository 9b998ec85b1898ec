"""LinkNet on a ResNet18/34 encoder.

Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation", VCIP 2017 (arXiv:1707.03718). Each decoder
output is added to the encoder output of the same stride, so the decoder
recovers spatial detail with few parameters.
"""

from __future__ import annotations

import keras

from fcnseg.models.layers import (CropToReference, FusedBatchNormalization, ImageNetNormalize, PadToMultiple,
                                  TORCH_BN, scaled)
from fcnseg.models.resnet import resnet18, resnet34
from fcnseg.models.weights import load_encoder_weights

ENCODERS = {"resnet18": resnet18, "resnet34": resnet34}

# (in, out) channels of decoder4 .. decoder1, as in the paper's Table 1.
DECODER_FILTERS = ((512, 256), (256, 128), (128, 64), (64, 64))


def _bn_relu(x, name: str):
    x = FusedBatchNormalization(**TORCH_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def apply_decoder_block(x, in_filters: int, out_filters: int, name: str, width: float = 1.0, strides: int = 2):
    """LinkNet decoder block: 1x1 m->m/4, 3x3 full-conv (x``strides``) m/4->m/4, 1x1 m/4->n.

    Each conv is followed by BN and ReLU; convs have no bias (BN's beta is one).

    Args:
        x: input (B, H, W, m) with m = in_filters * width.
        in_filters: the paper's m.
        out_filters: the paper's n.
        name: prefix, e.g. ``"decoder4"``.
        width: multiplier on every filter count.
        strides: upsampling factor of the full-conv, 2 or (decoder1) 1.

    Returns:
        (B, sH, sW, n) tensor, s = ``strides``.

    Example:
        >>> y = apply_decoder_block(keras.Input((None, None, 512)), 512, 256, "decoder4")
    """
    mid = scaled(in_filters // 4, width)
    x = keras.layers.Conv2D(mid, 1, use_bias=False, name=f"{name}_conv1")(x)
    x = _bn_relu(x, f"{name}_conv1")
    if strides == 1:
        # A stride-1 full-conv is a plain convolution with a flipped kernel, so build the simpler
        # op; the name stays "_deconv" so every decoder block has the same layer names.
        x = keras.layers.Conv2D(mid, 3, padding="same", use_bias=False, name=f"{name}_deconv")(x)
    else:
        x = keras.layers.Conv2DTranspose(
            mid, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_deconv"
        )(x)
    x = _bn_relu(x, f"{name}_deconv")
    x = keras.layers.Conv2D(scaled(out_filters, width), 1, use_bias=False, name=f"{name}_conv2")(x)
    return _bn_relu(x, f"{name}_conv2")


def linknet(
    num_classes: int,
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    width: float = 1.0,
) -> keras.Model:
    """LinkNet with a ResNet18 or ResNet34 encoder.

    About 11.5M parameters with ResNet18, as in the paper.

    Args:
        num_classes: number of output channels (logits).
        encoder: ``"resnet18"`` or ``"resnet34"``.
        encoder_weights: ``None`` or a local encoder ``.weights.h5`` as written
            by ``resnet18().save_weights(path)``. ``"imagenet"`` raises
            ``WeightsError``: keras.applications has no ResNet18/34.
        width: multiplier on every conv's filter count (tiny test models).

    Returns:
        ``keras.Model`` named ``linknet_<encoder>`` mapping float32 RGB 0..255
        images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W.

    Example:
        >>> model = linknet(12, width=1 / 16)
        >>> model(np.zeros((1, 33, 47, 3), "float32")).shape
        TensorShape([1, 33, 47, 12])
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
    backbone = ENCODERS[encoder](width)
    if encoder_weights is not None:
        load_encoder_weights(backbone, encoder_weights)

    inputs = keras.Input((None, None, 3), name="image")
    x = ImageNetNormalize(name="preprocess")(inputs)
    x = PadToMultiple(32, name="pad")(x)
    skips = backbone(x)  # encoder1..encoder4, strides 4..32

    x = skips[3]
    for level, (m, n) in zip((4, 3, 2, 1), DECODER_FILTERS):
        # ResNet's first stage keeps the stem's stride 4 (the paper's encoder block 1 halves it
        # again), so decoder1 must not upsample: with it at stride 2 the head's two x2 steps
        # overshoot to twice the input size.
        x = apply_decoder_block(x, m, n, f"decoder{level}", width, strides=1 if level == 1 else 2)
        if level > 1:
            x = keras.layers.Add(name=f"skip{level - 1}")([x, skips[level - 2]])

    x = keras.layers.Conv2DTranspose(
        scaled(32, width), 3, strides=2, padding="same", use_bias=False, name="final_deconv1"
    )(x)
    x = _bn_relu(x, "final_deconv1")
    x = keras.layers.Conv2D(scaled(32, width), 3, padding="same", use_bias=False, name="final_conv")(x)
    x = _bn_relu(x, "final_conv")
    x = keras.layers.Conv2DTranspose(num_classes, 2, strides=2, name="final_deconv2")(x)
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"linknet_{encoder}")
