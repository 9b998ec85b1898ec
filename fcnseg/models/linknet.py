"""LinkNet on any encoder of the table (ResNet18/34 in the paper).

Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation", VCIP 2017 (arXiv:1707.03718). Each decoder
output is added to the encoder output of the same stride, so the decoder
recovers spatial detail with few parameters.
"""

from __future__ import annotations

import keras

from fcnseg.models.encoders import ENCODERS, build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import (CropToReference, FusedBatchNormalization, PadToMultiple, PixelShuffleConv2DTranspose,
                                   TORCH_BN, scaled)

# The paper's decoder1 output (its other in/out channels are the encoder's, Table 1).
DECODER1_FILTERS = 64


def _bn_relu(x, name: str):
    x = FusedBatchNormalization(**TORCH_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def apply_decoder_block(x, in_filters: int, out_filters: int, name: str, width: float = 1.0, strides: int = 2,
                        out_scaled: bool = False):
    """LinkNet decoder block: 1x1 m->m/4, 3x3 full-conv (x``strides``) m/4->m/4, 1x1 m/4->n.

    Each conv is followed by BN and ReLU; convs have no bias (BN's beta is one).

    Args:
        x: input (B, H, W, m) with m = in_filters * width.
        in_filters: the paper's m.
        out_filters: the paper's n.
        name: prefix, e.g. ``"decoder4"``.
        width: multiplier on every filter count.
        strides: upsampling factor of the full-conv, 2 or (decoder1) 1.
        out_scaled: ``out_filters`` is already the final count (not scaled by ``width``).

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
        x = PixelShuffleConv2DTranspose(
            mid, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_deconv"
        )(x)
    x = _bn_relu(x, f"{name}_deconv")
    out = out_filters if out_scaled else scaled(out_filters, width)
    x = keras.layers.Conv2D(out, 1, use_bias=False, name=f"{name}_conv2")(x)
    return _bn_relu(x, f"{name}_conv2")


def linknet(
    num_classes: int,
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    width: float = 1.0,
    input_norm: str = "encoder",
) -> keras.Model:
    """LinkNet on an encoder of ``fcnseg.models.encoders.ENCODERS``.

    About 11.5M parameters with ResNet18, as in the paper. Decoder block i
    maps the encoder's channels at stride 2^(i+2) (the paper's m) to those at
    stride 2^(i+1) (its n), so its output adds onto that skip; decoder1 maps
    to 64 as in the paper.

    Args:
        num_classes: number of output channels (logits).
        encoder: a key of the encoder table, e.g. ``"resnet18"``.
        encoder_weights: ``None``, ``"imagenet"`` or a local path, as
            :func:`fcnseg.models.encoders.build_encoder` takes.
        width: multiplier on every conv's filter count (tiny test models);
            keras.applications encoders keep their full width.
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

    Returns:
        ``keras.Model`` named ``linknet_<encoder>`` mapping float32 RGB 0..255
        images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W.

    Example:
        >>> model = linknet(12, width=1 / 16)
        >>> model(np.zeros((1, 33, 47, 3), "float32")).shape
        TensorShape([1, 33, 47, 12])
    """
    backbone = build_encoder(encoder, width, encoder_weights)
    channels = dict(zip((2, 4, 8, 16, 32), ENCODERS[encoder].channels))

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(32, name="pad")(x)
    feats = encoder_features(backbone, x)  # the paper's encoder1..encoder4 are strides 4..32

    x = feats[32]
    for level in (4, 3, 2, 1):
        stride = 2 ** (level + 1)
        # The output must add onto the skip, whose channels a full-width library encoder keeps.
        out = feats[stride // 2].shape[-1] if level > 1 else scaled(DECODER1_FILTERS, width)
        # ResNet's first stage keeps the stem's stride 4 (the paper's encoder block 1 halves it
        # again), so decoder1 must not upsample: with it at stride 2 the head's two x2 steps
        # overshoot to twice the input size.
        x = apply_decoder_block(x, channels[stride], out, f"decoder{level}", width,
                                strides=1 if level == 1 else 2, out_scaled=True)
        if level > 1:
            x = keras.layers.Add(name=f"skip{level - 1}")([x, feats[stride // 2]])

    x = PixelShuffleConv2DTranspose(
        scaled(32, width), 3, strides=2, padding="same", use_bias=False, name="final_deconv1"
    )(x)
    x = _bn_relu(x, "final_deconv1")
    x = keras.layers.Conv2D(scaled(32, width), 3, padding="same", use_bias=False, name="final_conv")(x)
    x = _bn_relu(x, "final_conv")
    x = PixelShuffleConv2DTranspose(num_classes, 2, strides=2, name="final_deconv2")(x)
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"linknet_{encoder}")
