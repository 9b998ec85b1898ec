"""VGG16 encoder (Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015), convolutional part only.

Layer names match ``keras.applications.VGG16`` (``block1_conv1`` ...
``block5_pool``) so its ImageNet weights map over by name.
"""

from __future__ import annotations

import keras

from fcnseg.models.layers import ReshapeMaxPooling2D, scaled

# Filters of each conv per block; every block ends in a 2x2/2 max pool.
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)

# Encoder outputs FCN taps, finest first: stride 8, 16 and 32.
VGG16_SKIP_LAYERS: dict[str, str] = {
    "pool3": "block3_pool",
    "pool4": "block4_pool",
    "pool5": "block5_pool",
}


def apply_vgg_block(x, filters: tuple[int, ...], name: str, width: float = 1.0):
    """3x3 'same' conv + ReLU for each entry of ``filters``, then a 2x2/2 max pool.

    Args:
        x: input tensor (B, H, W, C).
        filters: filter count of each conv (before width scaling).
        name: block prefix, e.g. ``"block1"``; layers are ``block1_conv1``,
            ..., ``block1_pool``.
        width: multiplier on every filter count.

    Example:
        >>> y = apply_vgg_block(keras.Input((None, None, 3)), (64, 64), "block1")
    """
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(
            scaled(f, width), 3, padding="same", activation="relu", name=f"{name}_conv{i}"
        )(x)
    return ReshapeMaxPooling2D(2, strides=2, name=f"{name}_pool")(x)


def apply_vgg16(x, width: float = 1.0) -> dict:
    """Applies the five VGG16 blocks to ``x``.

    Returns:
        dict from pool layer name (``"block1_pool"`` ... ``"block5_pool"``) to
        its output; pick skips with ``VGG16_SKIP_LAYERS``.

    Example:
        >>> feats = apply_vgg16(keras.Input((None, None, 3)), width=1 / 16)
        >>> pool5 = feats[VGG16_SKIP_LAYERS["pool5"]]
    """
    feats = {}
    for b, filters in enumerate(VGG16_BLOCKS, start=1):
        x = apply_vgg_block(x, filters, f"block{b}", width)
        feats[f"block{b}_pool"] = x
    return feats
