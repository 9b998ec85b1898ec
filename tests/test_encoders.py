"""The encoder table (fcnseg.models.encoders): every encoder x LinkNet builds and keeps the input's
size; pretrained weights load from every route (keras.applications files and saved models, keras-hub
preset folders, the download path up to the network) and give the library model's own features."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from fcnseg.models import MODEL_ENCODERS, MODELS, encoder_refusal, linknet
from fcnseg.models.encoders import ENCODERS, STRIDES, build_encoder, encoder_layers, preprocessing
from fcnseg.models.layers import scaled
from fcnseg.models.weights import WeightsError

TINY = 1 / 16
# Full-width keras.applications graphs take seconds each to build: the big ones run with -m slow.
HEAVY = {"resnet101", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4"}
APPLICATIONS = [name for name, row in ENCODERS.items() if not row.scales_with_width]


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _images(h: int, w: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


def _one_line(exc_info, *needles: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --- the table ---------------------------------------------------------------------------------


def test_table_has_the_issue_encoders():
    assert {"vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2",
            *(f"efficientnet_b{i}" for i in range(5))} <= set(ENCODERS)
    assert MODEL_ENCODERS["linknet"][0] == "resnet18" and set(MODEL_ENCODERS["linknet"]) == set(ENCODERS)


@pytest.mark.parametrize("name", _params(ENCODERS))
def test_every_encoder_in_linknet_takes_any_size(name):
    """LinkNet on each encoder gives logits of the input's size; the encoder's taps sit at strides
    2..32 with the table's channel counts (scaled where the encoder takes the width)."""
    model = linknet(3, name, width=TINY)
    for h, w in ((33, 47), (64, 48)):
        y = np.asarray(model(_images(h, w)))
        assert y.shape == (1, h, w, 3) and np.isfinite(y).all()
    row = ENCODERS[name]
    feats = model.get_layer(name)(np.zeros((1, 64, 96, 3), "float32"))
    for stride, f, c in zip(STRIDES, feats, row.channels):
        want = scaled(c, TINY) if row.scales_with_width else c
        assert tuple(f.shape) == (1, 64 // stride, 96 // stride, want), (name, stride)
    assert encoder_layers(model) == [model.get_layer(name)]


def test_fcn_takes_only_vgg16_and_the_refusal_lists_the_valid_ones():
    assert encoder_refusal("fcn8s", "vgg16") is None and encoder_refusal("fcn8s", None) is None
    msg = encoder_refusal("fcn8s", "resnet50")
    assert "\n" not in msg and "--encoder resnet50" in msg and "vgg16" in msg
    assert encoder_refusal("linknet", "efficientnet_b3") is None
    with pytest.raises(ValueError, match="vgg16"):
        MODELS["fcn8s"](3, width=TINY, encoder="resnet18")
    with pytest.raises(ValueError, match="resnet18"):
        build_encoder("resnet9")


def test_fcn_encoder_layers_are_the_vgg16_convs():
    names = {layer.name for layer in encoder_layers(MODELS["fcn32s"](3, width=TINY))}
    assert names == {f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)}
