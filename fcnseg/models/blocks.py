"""Building blocks the decoders share: conv-BN-ReLU and bilinear upsampling.

One definition, so UNet, FPN, PSPNet, DeepLabv3+ and the dilated FCN build
their convolutions the same way (no bias before batch norm, torchvision's
batch-norm epsilon and momentum, the fused batch-norm fast path) and their
layer names follow one pattern (``{name}_conv``, ``{name}_bn``,
``{name}_relu``).
"""

from __future__ import annotations

import keras

from fcnseg.models.layers import BilinearUpsample, FusedBatchNormalization, TORCH_BN


def conv_bn_relu(x, filters: int, kernel_size: int, name: str, *, strides: int = 1, dilation_rate: int = 1,
                 separable: bool = False, relu: bool = True):
    """Conv (no bias) -> batch norm -> ReLU, "same" padding.

    Args:
        x: input (B, H, W, C).
        filters: output channels.
        kernel_size: square kernel size.
        name: prefix of the three layer names.
        strides: conv stride.
        dilation_rate: atrous rate (ASPP, dilated encoders).
        separable: depthwise-separable conv as DeepLabv3+ uses it: depthwise
            conv, batch norm, then a pointwise conv (``{name}_pw``), as in
            segmentation_models.pytorch's ``SeparableConv2d``.
        relu: end with ReLU (False: conv and batch norm only).

    Returns:
        (B, H / strides, W / strides, filters) tensor.

    Example:
        >>> y = conv_bn_relu(keras.Input((None, None, 64)), 32, 3, "decoder1")
    """
    if separable:
        x = keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
                                         use_bias=False, name=f"{name}_dw")(x)
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
                                use_bias=False, name=f"{name}_conv")(x)
    x = FusedBatchNormalization(**TORCH_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def upsample(x, factor: int, name: str, dtype: str | None = None):
    """Bilinear x``factor`` upsampling (the decoders' "interpolate" step).

    :class:`fcnseg.models.layers.BilinearUpsample`, not Keras's ``UpSampling2D``: that one cannot
    be exported with H and W unknown (SavedModel, ONNX). ``dtype="float32"`` for logits under
    mixed precision.
    """
    return BilinearUpsample(factor, name=name, dtype=dtype)(x)
