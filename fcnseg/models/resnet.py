"""ResNet18/34 encoders (basic blocks) for LinkNet.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
Stride-2 convs pad explicitly by k // 2 on both sides (not Keras "same", which
pads only bottom/right for even inputs) so the sampling grid matches
torchvision's ResNet and converted torchvision weights line up.
"""

from __future__ import annotations

import keras

from fcnseg.models.layers import TORCH_BN, FusedBatchNormalization, scaled

# Basic blocks per stage; stage filters are 64, 128, 256, 512.
RESNET_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
RESNET_FILTERS = (64, 128, 256, 512)

# Encoder outputs, stride 4, 8, 16, 32: LinkNet's encoder1..encoder4. The first
# three are its skip connections, the last feeds decoder4.
RESNET_STAGE_OUTPUTS: dict[str, tuple[str, str, str, str]] = {
    "resnet18": ("stage1_block2_out", "stage2_block2_out", "stage3_block2_out", "stage4_block2_out"),
    "resnet34": ("stage1_block3_out", "stage2_block4_out", "stage3_block6_out", "stage4_block3_out"),
}


def conv_bn(x, filters: int, kernel_size: int, strides: int, name: str, relu: bool = True, dilation_rate: int = 1):
    """Conv (no bias) + BatchNorm (+ ReLU); torchvision-style padding.

    ``dilation_rate`` > 1 (only with stride 1) pads "same", i.e. ``rate * (k // 2)``
    on each side, as torchvision's dilated convs do.

    Layers: ``{name}`` (conv), ``{name}_bn``, ``{name}_relu`` and, for strided
    convs, ``{name}_pad``.

    Example:
        >>> y = conv_bn(keras.Input((None, None, 3)), 64, 7, 2, "conv1")
    """
    if strides > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate, use_bias=False,
        name=name)(x)
    x = FusedBatchNormalization(**TORCH_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def apply_basic_block(x, filters: int, strides: int, name: str, dilation_rate: int = 1):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 projection shortcut.

    Args:
        x: input (B, H, W, C).
        filters: output channels (already width-scaled).
        strides: 2 for the first block of stages 2-4, else 1.
        name: prefix, e.g. ``"stage2_block1"``; output layer ``{name}_out``.
        dilation_rate: atrous rate of both 3x3 convs (dilated stages).

    Example:
        >>> y = apply_basic_block(keras.Input((None, None, 64)), 128, 2, "stage2_block1")
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, strides, f"{name}_proj", relu=False)
    x = conv_bn(x, filters, 3, strides, f"{name}_conv1", dilation_rate=dilation_rate)
    x = conv_bn(x, filters, 3, 1, f"{name}_conv2", relu=False, dilation_rate=dilation_rate)
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def stage_dilations(output_stride: int) -> tuple[tuple[int, int, int], ...]:
    """``(stride, first block's dilation, other blocks' dilation)`` of ResNet stages 1..4.

    torchvision's ``replace_stride_with_dilation``: a dilated stage keeps stride 1 and
    multiplies the running dilation by the stride it dropped; its first block still uses
    the previous dilation. Output stride 32: no dilation; 16: stage 4 at 2; 8: stage 3 at 2
    and stage 4 at 2 (first block) then 4 (Chen et al.'s and Zhao et al.'s "dilated ResNet").

    Raises:
        ValueError: ``output_stride`` not 8, 16 or 32.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"ResNet output stride must be 8, 16 or 32, got {output_stride}")
    stages, dilation, stride_so_far = [(1, 1, 1)], 1, 4
    for _ in range(3):
        if stride_so_far * 2 <= output_stride:
            stages.append((2, dilation, dilation))
            stride_so_far *= 2
        else:
            stages.append((1, dilation, dilation * 2))
            dilation *= 2
    return tuple(stages)


def resnet_encoder(name: str, width: float, taps, output_stride: int = 32) -> keras.Model:
    """ResNet18/34 ``name`` (a key of ``RESNET_DEPTHS``) returning the outputs of the layers ``taps``.

    The layers (and so the weights) are the same whatever ``taps`` and ``output_stride``
    are: a weights file of :func:`resnet18` loads into ``resnet_encoder("resnet18", 1.0,
    ("conv1_relu", ...))``. ``output_stride`` 16 or 8 dilates the last stages instead of
    striding them (:func:`stage_dilations`).

    Example:
        >>> encoder = resnet_encoder("resnet18", 1 / 16, ("conv1_relu", "stage4_block2_out"))
    """
    inputs = keras.Input((None, None, 3), name="image")
    x = conv_bn(inputs, scaled(64, width), 7, 2, "conv1")
    feats = {"conv1_relu": x}
    # Zero padding is -inf padding here: inputs are post-ReLU, so >= 0.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    schedule = stage_dilations(output_stride)
    for s, (blocks, filters) in enumerate(zip(RESNET_DEPTHS[name], RESNET_FILTERS), start=1):
        stage_stride, first_dilation, dilation = schedule[s - 1]
        for b in range(1, blocks + 1):
            x = apply_basic_block(x, scaled(filters, width), stage_stride if b == 1 else 1, f"stage{s}_block{b}",
                                  first_dilation if b == 1 else dilation)
            feats[f"stage{s}_block{b}_out"] = x
    return keras.Model(inputs, [feats[n] for n in taps], name=name)


def resnet18(width: float = 1.0) -> keras.Model:
    """ResNet18 encoder without the classifier.

    Args:
        width: multiplier on every conv's filter count.

    Returns:
        ``keras.Model`` from a normalised image (B, H, W, 3) to the four stage
        outputs (strides 4, 8, 16, 32; 64, 128, 256, 512 channels at width 1).

    Example:
        >>> e1, e2, e3, e4 = resnet18(width=1 / 16)(np.zeros((1, 64, 64, 3), "float32"))
    """
    return resnet_encoder("resnet18", width, RESNET_STAGE_OUTPUTS["resnet18"])


def resnet34(width: float = 1.0) -> keras.Model:
    """ResNet34 encoder without the classifier; see :func:`resnet18`.

    Example:
        >>> encoder = resnet34(width=1 / 16)
    """
    return resnet_encoder("resnet34", width, RESNET_STAGE_OUTPUTS["resnet34"])
