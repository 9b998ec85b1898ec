"""SegFormer: the MiT encoder and the all-MLP decoder, and a keras-hub SegFormer segmenter as a fcnseg model.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021 (arXiv:2105.15203), sec. 3.2: each of the
four MiT stages is projected to C channels by a linear layer, upsampled to
stride 4, concatenated, fused by a 1x1 conv (BN, ReLU) and classified by a
1x1 conv; the stride-4 logits are upsampled x4 (bilinear) to the image.
Layer for layer this is keras-hub's ``SegFormerBackbone`` +
``SegFormerImageSegmenter`` (deepest stage first in the concat, dropout 0.1
before the classifier, C = 256 for every variant as keras-hub's presets have
it; the paper uses 768 for B2-B5), so :func:`from_hub_segmenter` can copy a
keras-hub preset's weights in one to one.
"""

from __future__ import annotations

import keras

from fcnseg.models.blocks import BilinearUpsample, conv_bn_relu
from fcnseg.models.encoders import build_encoder, encoder_features, preprocessing
from fcnseg.models.layers import CropToReference, PadToMultiple, scaled
from fcnseg.models.mit import (MIT_CONFIG_KEYS, MIT_VARIANTS, encoder_from_config, keras_hub_module, load_hub_preset,
                               mit_config)

# keras-hub's projection_filters in every SegFormer preset (B0..B5).
DECODER_FILTERS = 256


def segformer(num_classes: int, encoder: str = "mit_b0", encoder_weights: str | None = None,
              width: float = 1.0) -> keras.Model:
    """SegFormer on MiT variant ``encoder``.

    Parameters equal keras-hub's ``SegFormerImageSegmenter`` on the same
    ``MiTBackbone`` with ``projection_filters=256`` (3,714,656 + the
    classifier for MiT-B0; ``tests/test_segformer.py`` builds both).

    Args:
        num_classes: number of output channels (logits).
        encoder: ``mit_b0`` .. ``mit_b5``.
        encoder_weights: ``None``, a keras-hub MiT preset name or a local
            preset directory (:func:`fcnseg.models.mit.mit_encoder`).
        width: multiplier on the MiT embedding dims and the decoder's C.

    Returns:
        ``keras.Model`` named ``segformer_<encoder>`` from float32 RGB 0..255
        (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W.

    Example:
        >>> model = segformer(12, "mit_b0", width=0.25)
        >>> model(np.zeros((1, 37, 53, 3), "float32")).shape
        TensorShape([1, 37, 53, 12])
    """
    if encoder not in MIT_VARIANTS:
        raise ValueError(f"--model segformer cannot take --encoder {encoder}; its encoders are: "
                         f"{', '.join(MIT_VARIANTS)}")
    backbone = build_encoder(encoder, width, encoder_weights)
    return assemble(backbone, num_classes, scaled(DECODER_FILTERS, width), preprocessing(encoder),
                    f"segformer_{encoder}")


def assemble(backbone: keras.Model, num_classes: int, filters: int, preprocess: keras.layers.Layer,
             name: str) -> keras.Model:
    """The SegFormer model around a MiT encoder model (strides 4..32) and a preprocessing layer."""
    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess(inputs)
    x = PadToMultiple(32, name="pad")(x)
    feats = encoder_features(backbone, x)
    # On a multiple of 32 every stage is exactly stride-s, so upsampling by s / 4 is keras-hub's
    # Resizing to the stride-4 map's size.
    levels = []
    for i, stride in enumerate((4, 8, 16, 32), 1):
        y = keras.layers.Dense(filters, name=f"linear_c{i}")(feats[stride])
        levels.append(BilinearUpsample(stride // 4, name=f"linear_c{i}_up")(y) if stride > 4 else y)
    x = keras.layers.Concatenate(name="concat")(levels[::-1])
    x = conv_bn_relu(x, filters, 1, "linear_fuse")
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = BilinearUpsample(4, name="upsample")(x)
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# --- keras-hub presets -> fcnseg checkpoints --------------------------------------------------------


def _variant(config: dict) -> str:
    """The MiT variant (at width 1 if one fits, else at some width) whose :func:`mit_config` is
    ``config``; "mit_custom" when none is."""
    mine = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in config.items() if k in MIT_CONFIG_KEYS}
    widths = [(name, config["hidden_dims"][-1] / dims[-1]) for name, (dims, _) in MIT_VARIANTS.items()]
    for name, width in sorted(widths, key=lambda nw: nw[1] != 1.0):
        if mit_config(name, width) == mine:
            return name
    return "mit_custom"


def _converter_layer(converter) -> keras.layers.Layer:
    """keras-hub's image converter's rescaling (x * scale + offset), from RGB 0..255, as a Keras layer."""
    scale = 1.0 if converter is None or converter.scale is None else converter.scale
    offset = 0.0 if converter is None or converter.offset is None else converter.offset
    return keras.layers.Rescaling(scale, offset, name="preprocess")


def from_hub_segmenter(segmenter) -> keras.Model:
    """fcnseg's SegFormer holding the weights of a keras-hub ``SegFormerImageSegmenter``.

    The image converter's rescaling moves into the model, so it takes RGB
    0..255 like every fcnseg model; its logits equal ``segmenter(converter(x))``
    on an image whose sides are multiples of 32.
    """
    hub_backbone = segmenter.backbone
    mit = hub_backbone.image_encoder
    config = mit.get_config()
    variant = _variant(config)
    encoder = encoder_from_config(variant, config, donor=mit)
    converter = getattr(segmenter.preprocessor, "image_converter", None)
    model = assemble(encoder, segmenter.num_classes, hub_backbone.projection_filters, _converter_layer(converter),
                     f"segformer_{variant}")
    for i, dense in enumerate(hub_backbone.mlp_blocks, 1):
        model.get_layer(f"linear_c{i}").set_weights(dense.get_weights())
    fuse_conv, fuse_bn = hub_backbone.linear_fuse.layers[:2]
    model.get_layer("linear_fuse_conv").set_weights(fuse_conv.get_weights())
    model.get_layer("linear_fuse_bn").set_weights(fuse_bn.get_weights())
    model.get_layer("classifier").set_weights(segmenter.output_segmentation_head.get_weights())
    return model
