"""The Mix Transformer (MiT-B0..B5) encoder: keras-hub's ``MiTBackbone``, run on any H x W.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation
with Transformers", NeurIPS 2021 (arXiv:2105.15203), Table 6 / sec. 3.1.
The layers and their weights are keras-hub's (``keras_hub.models.MiTBackbone``,
the class its ``mit_*`` and ``segformer_*`` presets load into); only the
forward pass is fcnseg's. keras-hub's own call cannot take fcnseg's inputs: it
reshapes the token sequences back to images with ``H = W = sqrt(N)`` and with
static shapes, so a keras-hub MiT runs only on the square ``image_shape`` it
was built for. :class:`MiTFeatures` calls the same sub-layers in the same order
(overlapping patch embedding, efficient self-attention with sequence reduction,
Mix-FFN with its 3x3 depthwise conv, drop-path, the per-stage layer norm) but
carries each stage's real (h, w), so any padded H x W works. The Mix-FFN GELU
is keras-hub's (``keras.ops.nn.gelu``'s tanh approximation), so imported presets
give keras-hub's numbers. Training differs from keras-hub's own call in one way,
towards the paper: keras-hub's attention layer hard-codes two ``Dropout(0.1)``
(on the attention probabilities and after the output projection), which the
SegFormer configurations do not have (NVlabs' and mmsegmentation's MiT use
``drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1``, as do
segmentation_models.pytorch's and Hugging Face's), so they are skipped; drop-path
(0.1) and the head's dropout stay. Inference is unaffected.

MiT gives features at strides 4, 8, 16 and 32; it has none at stride 2.
"""

from __future__ import annotations

import os

import keras
from keras import ops

# keras-hub's MiT variants (the configs behind its mit_b*/segformer_b* presets): per-stage
# embedding dims and transformer depths; heads, sequence-reduction ratios, patch sizes and
# strides are the same in every variant.
MIT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
MIT_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)
MIT_PATCH_SIZES = (7, 3, 3, 3)
MIT_STRIDES = (4, 2, 2, 2)
MIT_DROP_PATH = 0.1
# The size the keras-hub backbone's (unused) static graph is built at: each stage's sequence
# reduction must see at least one pixel and its 1-pixel last stage fails to build.
_BUILD_SHAPE = (64, 64, 3)


def mit_config(name: str, width: float = 1.0) -> dict:
    """keras-hub ``MiTBackbone`` arguments of variant ``name`` at ``width``.

    ``width`` scales each stage's embedding dim, rounded to a multiple of its
    head count (attention splits the dim among the heads); depths, heads and
    everything else stay the variant's. ``width=1`` is the variant itself.

    Example:
        >>> mit_config("mit_b0", 0.25)["hidden_dims"]
        [8, 16, 40, 64]
    """
    dims, depths = MIT_VARIANTS[name]
    dims = [h * max(1, round(d * width / h)) for d, h in zip(dims, MIT_HEADS)]
    return {"layerwise_depths": list(depths), "num_layers": 4, "layerwise_num_heads": list(MIT_HEADS),
            "layerwise_sr_ratios": list(MIT_SR_RATIOS), "max_drop_path_rate": MIT_DROP_PATH,
            "layerwise_patch_sizes": list(MIT_PATCH_SIZES), "layerwise_strides": list(MIT_STRIDES),
            "hidden_dims": dims}


def keras_hub_module(what: str):
    """keras_hub, or a one-line error saying ``what`` needs it."""
    from fcnseg.models.weights import HUB_EXTRA, WeightsError

    try:
        import keras_hub
    except ImportError:
        raise WeightsError(f"{what} needs keras-hub, which is not installed: {HUB_EXTRA}") from None
    return keras_hub


MIT_CONFIG_KEYS = ("layerwise_depths", "num_layers", "layerwise_num_heads", "layerwise_sr_ratios",
                "max_drop_path_rate", "layerwise_patch_sizes", "layerwise_strides", "hidden_dims")


@keras.saving.register_keras_serializable(package="fcnseg")
class MiTFeatures(keras.layers.Layer):
    """keras-hub's ``MiTBackbone`` layers applied to any (B, H, W, 3) with H, W multiples of 32.

    Args:
        config: ``MiTBackbone`` arguments (:func:`mit_config`, or a preset's).

    Returns (when called): the four stage outputs, strides 4, 8, 16 and 32.
    """

    def __init__(self, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.config = {k: config[k] for k in MIT_CONFIG_KEYS}
        hub = keras_hub_module("the MiT encoder")
        self.backbone = hub.models.MiTBackbone(**self.config, image_shape=_BUILD_SHAPE, dtype=self.dtype_policy,
                                               name="mit_backbone")

    def _stages(self) -> list:
        """(patch embedding, transformer blocks, stage norm) per stage, found in the backbone
        (not kept as attributes, so each weight is tracked once, under the backbone)."""
        layers = {layer.name: layer for layer in self.backbone.layers}
        depths = self.config["layerwise_depths"]
        # The stage norms have no names of their own: they are the top-level layer norms, in order.
        norms = [layer for layer in self.backbone.layers if isinstance(layer, keras.layers.LayerNormalization)]
        return [(layers[f"patch_and_embed_{i}"], [layers[f"hierarchical_encoder_{i}_{k}"] for k in range(depths[i])],
                 norms[i]) for i in range(4)]
    def build(self, input_shape):
        pass  # every weight lives in the keras-hub backbone, built on construction

    def call(self, x, training=None):
        outputs = []
        for embed, blocks, norm in self._stages():
            x = embed.proj(embed.padding(x))
            shape = ops.shape(x)
            batch, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
            x = embed.norm(ops.reshape(x, (batch, h * w, c)))
            for block in blocks:
                y = _attention(block.attn, block.norm1(x), h, w)
                x = x + block.drop_path(y, training=training)
                y = _mix_ffn(block.mlp, block.norm2(x), h, w)
                x = x + block.drop_path(y, training=training)
            x = ops.reshape(norm(x), (batch, h, w, c))
            outputs.append(x)
        return outputs

    def compute_output_shape(self, input_shape):
        def down(d, s):
            return None if d is None else d // s

        return [(input_shape[0], down(input_shape[1], s), down(input_shape[2], s), c)
                for s, c in zip((4, 8, 16, 32), self.config["hidden_dims"])]

    def get_config(self):
        return {**super().get_config(), "config": self.config}


def _attention(attn, x, h, w):
    """keras-hub's ``SegFormerMultiheadAttention`` with the sequence reduction on an h x w map."""
    shape = ops.shape(x)
    batch, n, c = shape[0], shape[1], x.shape[-1]
    heads = attn.num_heads

    def split(t):
        # One head needs no split: tf2onnx folds that reshape + transpose into a reshape that
        # copies the wrong batch dimension (onnxruntime then fails), so it is left out.
        if heads == 1:
            return ops.expand_dims(t, 1)
        return ops.transpose(ops.reshape(t, (batch, -1, heads, c // heads)), (0, 2, 1, 3))

    q = split(attn.q(x))
    if attn.sr_ratio > 1:
        x = attn.sr(ops.reshape(x, (batch, h, w, c)))
        x = attn.norm(ops.reshape(x, (batch, -1, c)))
    k, v = split(attn.k(x)), split(attn.v(x))
    scores = ops.nn.softmax(ops.matmul(q, ops.swapaxes(k, 2, 3)) * attn.scale, axis=-1)
    # No attn.dropout / attn.proj_drop: the paper's MiT has neither (module docstring).
    y = ops.matmul(scores, v)
    y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (batch, n, c))
    return attn.proj(y)


def _mix_ffn(mlp, x, h, w):
    """keras-hub's ``MixFFN``: dense, 3x3 depthwise conv on the h x w map, GELU, dense."""
    x = mlp.fc1(x)
    batch, c = ops.shape(x)[0], x.shape[-1]
    x = ops.reshape(mlp.dwconv(ops.reshape(x, (batch, h, w, c))), (batch, -1, c))
    return mlp.fc2(ops.nn.gelu(x))


def mit_encoder(name: str, width: float, weights: str | None) -> keras.Model:
    """MiT variant ``name`` as an fcnseg encoder: a ``keras.Model`` named ``name`` from the
    preprocessed image to its four features (strides 4, 8, 16, 32).

    Args:
        name: ``mit_b0`` .. ``mit_b5``.
        width: embedding-dim multiplier (:func:`mit_config`).
        weights: ``None``; a keras-hub MiT preset name (``mit_b0_ade20k_512`` ...) or a local
            preset directory (e.g. one written by ``MiTBackbone.save_to_preset``).
    """
    config = mit_config(name, width)
    donor = None
    if weights is not None:
        donor = read_hub_mit(weights)
        config = {k: donor.get_config()[k] for k in MIT_CONFIG_KEYS}
        if width != 1.0 or config != mit_config(name):
            from fcnseg.models.weights import WeightsError

            raise WeightsError(f"--encoder-weights {weights} holds a MiT with dims {config['hidden_dims']} and "
                               f"depths {config['layerwise_depths']}, not {name} at width 1 "
                               f"({mit_config(name)['hidden_dims']}, {mit_config(name)['layerwise_depths']})")
    return encoder_from_config(name, config, donor)


def encoder_from_config(name: str, config: dict, donor=None) -> keras.Model:
    """The encoder model for a ``MiTBackbone`` config, with ``donor``'s weights (a keras-hub MiT) if given."""
    inputs = keras.Input((None, None, 3), name="image")
    features = MiTFeatures(config, name="mit")
    model = keras.Model(inputs, features(inputs), name=name)
    if donor is not None:
        features.backbone.set_weights(donor.get_weights())
    return model


def read_hub_mit(source: str):
    """keras-hub's ``MiTBackbone`` from a preset name or a local preset directory (one-line errors).

    ``imagenet`` is refused: keras-hub publishes MiT only as the encoders of its SegFormer presets.
    """
    from fcnseg.models.weights import WeightsError

    if source == "imagenet":
        raise WeightsError("keras-hub has no ImageNet MiT weights: pass --encoder-weights mit_b0_ade20k_512 (its MiT "
                           "from SegFormer on ADE20K; any keras-hub mit_* preset) or a local keras-hub preset "
                           "directory, or start from a whole SegFormer with fcnseg import-preset")
    hub = keras_hub_module(f"the keras-hub preset {source}")
    return load_hub_preset(hub.models.MiTBackbone, source, "MiT")


def load_hub_preset(cls, source: str, what: str):
    """``cls.from_preset(source)``; a failure is one line (offline: how to use a local directory)."""
    import logging

    from fcnseg.models.weights import WeightsError

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # offline, each of its retries would print a warning first
    try:
        return cls.from_preset(source)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        if os.path.isdir(source):
            raise WeightsError(f"{source} is not a readable keras-hub {what} preset directory ({first})") from None
        raise WeightsError(
            f"could not fetch the keras-hub preset {source} (offline?): where there is internet, save it with "
            f"keras_hub.models.{cls.__name__}.from_preset({source!r}).save_to_preset(DIR), then pass DIR "
            f"({first})") from None
    finally:
        hub_log.setLevel(level)
