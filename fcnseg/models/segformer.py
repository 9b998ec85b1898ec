"""SegFormer: the MiT encoder and the all-MLP decoder, and a keras-hub SegFormer segmenter as a fcnseg model.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021 (arXiv:2105.15203), sec. 3.2: each of the
four MiT stages is projected to C channels by a linear layer, upsampled to
stride 4, concatenated, fused by a 1x1 conv (BN, ReLU) and classified by a
1x1 conv; the stride-4 logits are upsampled x4 (bilinear) to the image.
Parameter for parameter this is keras-hub's ``SegFormerBackbone`` +
``SegFormerImageSegmenter`` (deepest stage first in the concat, dropout 0.1
before the classifier, C = 256 for every variant as keras-hub's presets have
it; the paper uses 768 for B2-B5), so :func:`from_hub_segmenter` can copy a
keras-hub preset's weights in one to one. The decoder computes the same
function in a cheaper order (:class:`AllMLPFuse`: the fuse conv folded into
each stage's linear layer before upsampling).
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import ops

from fcnseg.models.blocks import BilinearUpsample
from fcnseg.models.encoders import build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import TORCH_BN, CropToReference, FusedBatchNormalization, PadToMultiple, scaled
from fcnseg.models.mit import (MIT_CONFIG_KEYS, MIT_VARIANTS, encoder_from_config, keras_hub_module, load_hub_preset,
                               mit_config)

# keras-hub's projection_filters in every SegFormer preset (B0..B5).
DECODER_FILTERS = 256


def segformer(num_classes: int, encoder: str = "mit_b0", encoder_weights: str | None = None,
              width: float = 1.0, input_norm: str = "encoder") -> keras.Model:
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
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

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
    return assemble(backbone, num_classes, scaled(DECODER_FILTERS, width),
                    lambda x: preprocess_input(x, encoder, input_norm), f"segformer_{encoder}")


def assemble(backbone: keras.Model, num_classes: int, filters: int, preprocess: Callable,
             name: str) -> keras.Model:
    """The SegFormer model around a MiT encoder model (strides 4..32) and ``preprocess`` (a layer,
    or a function of the input tensor that applies layers)."""
    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess(inputs)
    x = PadToMultiple(32, name="pad")(x)
    feats = encoder_features(backbone, x)
    x = AllMLPFuse(filters, name="all_mlp")([feats[s] for s in (4, 8, 16, 32)])
    x = FusedBatchNormalization(**TORCH_BN, name="linear_fuse_bn")(x)
    x = keras.layers.ReLU(name="linear_fuse_relu")(x)
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = BilinearUpsample(4, name="upsample")(x)
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="fcnseg")
class AllMLPFuse(keras.layers.Layer):
    """The all-MLP decoder up to its batch norm: per stage a linear layer to ``filters`` channels,
    upsampled to stride 4, concatenated deepest first, then the 1x1 fuse conv (no bias).

    The same parameters as the paper's (and keras-hub's) layers, and the same function, computed
    in another order: linear layers, bilinear upsampling (whose weights sum to 1) and the fuse
    conv are all linear, so ``fuse(concat(up(x_i W_i + b_i)))`` equals
    ``sum_i up(x_i (W_i F_i) + b_i F_i)`` with ``F_i`` the fuse kernel's rows for stage i. That
    skips the 4C -> C convolution at stride 4, more than half the MiT-B0 model's arithmetic, and
    the concatenated stride-4 map. Gradients reach ``W_i``, ``b_i`` and ``F`` through the products.

    Weights, in order: ``kernel_1, bias_1, .. kernel_4, bias_4`` (stage i: (C_i, filters), the
    strides-4..32 features) and ``fuse_kernel`` (1, 1, 4 * filters, filters), rows deepest stage
    first, as keras-hub's ``linear_fuse`` conv holds them.
    """

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.upsample = [BilinearUpsample(f, name=f"up{f}") for f in (2, 4, 8)]

    def build(self, input_shape):
        self.kernels, self.biases = [], []
        for i, shape in enumerate(input_shape, 1):
            self.kernels.append(self.add_weight(name=f"kernel_{i}", shape=(shape[-1], self.filters)))
            self.biases.append(self.add_weight(name=f"bias_{i}", shape=(self.filters,), initializer="zeros"))
        self.fuse_kernel = self.add_weight(name="fuse_kernel", shape=(1, 1, 4 * self.filters, self.filters))

    def call(self, feats):
        fuse = ops.reshape(self.fuse_kernel, (4, self.filters, self.filters))
        total = None
        for i, x in enumerate(feats):
            rows = fuse[3 - i]  # the concat is deepest stage first
            y = ops.matmul(x, ops.matmul(self.kernels[i], rows)) + ops.matmul(self.biases[i][None], rows)[0]
            y = self.upsample[i - 1](y) if i else y
            total = y if total is None else total + y
        return total

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:3], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters}


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
    fuse_conv, fuse_bn = hub_backbone.linear_fuse.layers[:2]
    model.get_layer("all_mlp").set_weights([w for dense in hub_backbone.mlp_blocks for w in dense.get_weights()]
                                           + fuse_conv.get_weights())
    model.get_layer("linear_fuse_bn").set_weights(fuse_bn.get_weights())
    model.get_layer("classifier").set_weights(segmenter.output_segmentation_head.get_weights())
    return model
