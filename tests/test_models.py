"""Tests for fcnseg.models: shapes, fusion graph, init, parameter counts, weights."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcnseg.models import MODELS, fcn8s, fcn16s, fcn32s, linknet
from fcnseg.models.layers import (
    CropToReference,
    FusedBatchNormalization,
    PadToMultiple,
    PatchMatmulConv2D,
    bilinear_initializer,
    bilinear_kernel,
)
from fcnseg.models.resnet import resnet18
from fcnseg.models.weights import VGG16_CONV_LAYERS, VGG16_WEIGHTS_FILE, WeightsError

TINY = 1 / 16
SIZES = [(32, 32), (33, 47), (17, 23), (75, 124)]


def _tiny(name: str, num_classes: int = 5) -> keras.Model:
    return MODELS[name](num_classes, width=TINY)


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, keras.Model]:
    return {name: _tiny(name) for name in MODELS}


def _images(h: int, w: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


def _inbound(model: keras.Model, name: str) -> list[str]:
    """Names of the layers whose outputs feed layer ``name``."""
    node = model.get_layer(name)._inbound_nodes[0]
    return [t._keras_history.operation.name for t in node.input_tensors]


def _consumers(model: keras.Model, name: str) -> list[str]:
    return [l.name for l in model.layers if l._inbound_nodes and name in _inbound(model, l.name)]


# --- layers -------------------------------------------------------------------


def test_bilinear_kernel_values():
    k = bilinear_kernel(4, 2)
    expected = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(k[:, :, 0, 0], expected)
    np.testing.assert_allclose(k[:, :, 1, 1], expected)
    assert not k[:, :, 0, 1].any() and not k[:, :, 1, 0].any()


@pytest.mark.parametrize("factor", [2, 8])
def test_bilinear_transposed_conv_matches_resize(factor):
    x = _images(12, 10, batch=1) / 255.0
    up = keras.layers.Conv2DTranspose(
        3, 2 * factor, strides=factor, padding="same", use_bias=False, kernel_initializer=bilinear_initializer
    )
    y = np.asarray(up(x))
    ref = tf.image.resize(x, (12 * factor, 10 * factor), method="bilinear").numpy()
    assert y.shape == ref.shape
    m = factor  # the border rows see zero padding instead of edge clamping
    np.testing.assert_allclose(y[:, m:-m, m:-m], ref[:, m:-m, m:-m], atol=1e-4)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_pad_to_multiple(mode):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, PadToMultiple(32, mode=mode)(inputs))
    x = _images(17, 40, batch=1)
    y = np.asarray(model(x))
    assert y.shape == (1, 32, 64, 3)
    np.testing.assert_array_equal(y[:, :17, :40], x)


# --- fused batch norm ------------------------------------------------------------


def _bn_pair(**kwargs):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same non-trivial weights."""
    rng = np.random.default_rng(0)
    layers = [keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)]
    weights = [rng.uniform(0.5, 2.0, 5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2.0, 5)]
    for layer in layers:
        layer.build((None, 4, 6, 5))
        layer.set_weights([w.astype("float32") for w in weights])  # gamma, beta, moving mean, moving var
    return layers


def test_fused_batch_norm_matches_keras_in_training():
    """Output, input and weight gradients, and the moving statistics after a step all match Keras' layer."""
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (3, 4, 6, 5)), tf.float32)
    upstream = tf.constant(np.random.default_rng(2).normal(size=(3, 4, 6, 5)), tf.float32)
    results = []
    for layer in _bn_pair(epsilon=1e-5, momentum=0.9):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(np.asarray(fused_value), np.asarray(keras_value), rtol=1e-4, atol=1e-4)
    # The moving statistics moved (a step that left them alone would also "match").
    assert not np.allclose(np.asarray(results[1][-1]), _bn_pair()[1].get_weights()[3])


def test_fused_batch_norm_matches_keras_in_inference_and_frozen():
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 6, 5)), tf.float32)
    keras_bn, fused_bn = _bn_pair(epsilon=1e-3)
    np.testing.assert_allclose(fused_bn(x, training=False), keras_bn(x, training=False), rtol=1e-5, atol=1e-5)
    keras_bn.trainable = fused_bn.trainable = False  # a frozen layer uses its moving statistics even in training
    np.testing.assert_allclose(fused_bn(x, training=True), keras_bn(x, training=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_bn.moving_mean, keras_bn.moving_mean)


def test_fused_batch_norm_keeps_bfloat16_maps():
    """Under mixed bfloat16 the map stays bfloat16 and matches Keras' layer to bfloat16 precision."""
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras_bn, fused_bn = _bn_pair()
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 4, 6, 5)), tf.bfloat16)
    y = fused_bn(x, training=True)
    assert y.dtype == tf.bfloat16 and fused_bn.moving_mean.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(keras_bn(x, training=True), tf.float32), atol=0.05)


def test_fused_batch_norm_falls_back_for_other_layouts():
    """Rank 2 and channels-first inputs have no fused path here; Keras' own layer handles them."""
    for shape, axis in (((4, 5), -1), ((2, 5, 3, 3), 1)):
        layer, reference = FusedBatchNormalization(axis=axis), keras.layers.BatchNormalization(axis=axis)
        x = np.random.default_rng(5).normal(size=shape).astype("float32")
        np.testing.assert_allclose(layer(x, training=True), reference(x, training=True), rtol=1e-5, atol=1e-5)


def test_linknet_saved_with_keras_batch_norm_loads_into_the_fused_model(tmp_path, monkeypatch):
    """A LinkNet saved before the fused layer (Keras' own BatchNormalization) reloads, and its weights
    give the fused model the same predictions."""
    import importlib

    linknet_module, resnet_module = (importlib.import_module(f"fcnseg.models.{m}") for m in ("linknet", "resnet"))
    with monkeypatch.context() as patch:
        patch.setattr(resnet_module, "FusedBatchNormalization", keras.layers.BatchNormalization)
        patch.setattr(linknet_module, "FusedBatchNormalization", keras.layers.BatchNormalization)
        old = linknet(4, "resnet18", width=0.125)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in old._flatten_layers())
    x = _images(64, 48)
    old(x, training=True)  # move the moving statistics away from their initial values
    old.save(tmp_path / "old.keras")
    reloaded = keras.saving.load_model(tmp_path / "old.keras", compile=False)
    new = linknet(4, "resnet18", width=0.125)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in new._flatten_layers())
    new.set_weights(reloaded.get_weights())
    np.testing.assert_allclose(new(x, training=False), old(x, training=False), rtol=1e-4, atol=1e-4)


# --- convolution as one matrix product ----------------------------------------


def _graph_ops(layer, x) -> set[str]:
    return {op.type for op in tf.function(layer).get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize("kernel, padding", [(7, "same"), (4, "same"), ((2, 5), "same"), (3, "valid")])
def test_patch_matmul_conv_matches_conv2d(kernel, padding):
    """Output and input/kernel/bias gradients equal Conv2D's (even kernels: SAME's extra row and column
    of padding goes bottom/right, as in TensorFlow), and no convolution op runs."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 5, 9, 3)), tf.float32)
    conv = keras.layers.Conv2D(4, kernel, padding=padding, activation="relu")
    patch = PatchMatmulConv2D(4, kernel, padding=padding, activation="relu")
    results = []
    for layer in (conv, patch):
        layer.build(x.shape)
        if layer is patch:
            patch.set_weights(conv.get_weights())
        else:
            conv.bias.assign(rng.normal(size=4))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            upstream = tf.constant(np.random.default_rng(1).normal(size=y.shape), tf.float32)
            loss = tf.reduce_sum(y * upstream)
        results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    assert float(tf.reduce_max(results[0][0])) > 0  # relu left something to compare
    for conv_value, patch_value in zip(*results):
        np.testing.assert_allclose(np.asarray(patch_value), np.asarray(conv_value), rtol=1e-5, atol=1e-5)
    ops_run = _graph_ops(patch, tf.TensorSpec((None, None, None, 3), tf.float32))
    assert "MatMul" in ops_run and not any(op.startswith("Conv") for op in ops_run)


def test_patch_matmul_conv_falls_back_for_strides_and_keeps_bfloat16():
    x = tf.constant(np.random.default_rng(2).normal(size=(1, 8, 8, 3)), tf.float32)
    conv, strided = keras.layers.Conv2D(2, 3, strides=2), PatchMatmulConv2D(2, 3, strides=2)
    conv.build(x.shape)
    strided.build(x.shape)
    strided.set_weights(conv.get_weights())
    np.testing.assert_allclose(strided(x), conv(x), rtol=1e-5, atol=1e-5)
    assert "Conv2D" in _graph_ops(strided, tf.TensorSpec((1, 8, 8, 3), tf.float32))
    bf16 = PatchMatmulConv2D(2, 3, padding="same", dtype="mixed_bfloat16")
    y = bf16(x)
    assert y.dtype == tf.bfloat16 and bf16.kernel.dtype == "float32" and y.shape == (1, 8, 8, 2)


def test_tensorflow_kernels_only_on_the_cpu(monkeypatch):
    """On this CPU the fused batch norm and the matrix-product conv run; where TensorFlow sees a GPU the
    same layer classes run Keras' own ops (cuDNN's batch norm and convolution), with the same results."""
    from fcnseg.models import layers as layers_module

    x = tf.constant(np.random.default_rng(6).normal(size=(2, 4, 6, 5)), tf.float32)
    keras_bn, fused_bn = _bn_pair()
    conv, patch = keras.layers.Conv2D(3, 3, padding="same"), PatchMatmulConv2D(3, 3, padding="same")
    conv.build(x.shape)
    patch.build(x.shape)
    patch.set_weights(conv.get_weights())
    spec = tf.TensorSpec((None, 4, 6, 5), tf.float32)

    def bn_ops():
        return {op.type for op in tf.function(lambda t: fused_bn(t, training=True)).get_concrete_function(spec)
                .graph.get_operations()}

    assert keras.backend.backend() == "tensorflow" and layers_module.fast_cpu_kernels()
    assert "FusedBatchNormV3" in bn_ops() and "Conv2D" not in _graph_ops(patch, spec)
    monkeypatch.setattr(layers_module, "_tensorflow_sees_gpu", lambda: True)
    assert not layers_module.fast_cpu_kernels()
    assert not any(op.startswith("FusedBatchNorm") for op in bn_ops()) and "Conv2D" in _graph_ops(patch, spec)
    np.testing.assert_allclose(fused_bn(x, training=False), keras_bn(x, training=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(patch(x), conv(x), rtol=1e-5, atol=1e-5)


def test_fcn_saved_with_conv2d_fc6_loads_into_the_matmul_fc6(tmp_path, monkeypatch):
    """fc6 keeps Conv2D's kernel layout: an FCN saved before PatchMatmulConv2D reloads, and its weights
    give the new model the same logits."""
    import importlib

    fcn_module = importlib.import_module("fcnseg.models.fcn")
    with monkeypatch.context() as patch:
        patch.setattr(fcn_module, "PatchMatmulConv2D", keras.layers.Conv2D)
        old = fcn8s(4, width=TINY)
    # The zero-initialised score layers and biases would make any two models agree: randomise them.
    rng = np.random.default_rng(3)
    old.set_weights([w if w.any() else rng.normal(0, 0.1, w.shape).astype("float32") for w in old.get_weights()])
    old.save(tmp_path / "old.keras")
    reloaded = keras.saving.load_model(tmp_path / "old.keras", compile=False)
    assert type(reloaded.get_layer("fc6")) is keras.layers.Conv2D
    new = fcn8s(4, width=TINY)
    assert isinstance(new.get_layer("fc6"), PatchMatmulConv2D)
    new.set_weights(reloaded.get_weights())
    x = _images(70, 45)
    logits = old(x, training=False)
    assert float(tf.math.reduce_std(logits)) > 0
    np.testing.assert_allclose(new(x, training=False), logits, rtol=1e-4, atol=1e-4)
    new.save(tmp_path / "new.keras")
    assert isinstance(keras.saving.load_model(tmp_path / "new.keras", compile=False).get_layer("fc6"),
                      PatchMatmulConv2D)



def test_linknet_output_pixels_see_their_own_input_pixels():
    """LinkNet's head ends at exactly the (padded) input size, and an output pixel's input gradient is
    centred on that pixel: a head that overshot to twice the size and was cropped back would predict
    pixel (y, x) from the image around (y/2, x/2)."""
    keras.utils.set_random_seed(1)  # some random tiny models have all-dead ReLUs behind a corner patch
    model = linknet(3, "resnet18", width=0.125)
    head = keras.Model(model.input, model.get_layer("final_deconv2").output)
    assert head(_images(64, 96, batch=1)).shape == (1, 64, 96, 3)
    # 128 px: the receptive field covers the whole image and pulls the centroid towards the image
    # centre, by 3-9 px over eight seeds; the old head would put (112, 112)'s centroid near (56, 56).
    x = tf.constant(_images(128, 128, batch=1))

    # In a tf.function: eager backprop through this tiny model aborted in oneDNN's
    # Conv2DBackpropFilter (heap corruption, TF 2.21), with or without the fused batch norm.
    @tf.function
    def input_gradient(x, y0, x0):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(model(x, training=False)[:, y0 - 2:y0 + 2, x0 - 2:x0 + 2, :])
        return tape.gradient(total, x)

    for y0, x0 in ((16, 16), (112, 112), (16, 112)):
        weight = np.abs(input_gradient(x, y0, x0).numpy()[0]).sum(-1)
        assert weight.sum() > 0
        rows, cols = np.indices(weight.shape)
        centre = ((rows * weight).sum() / weight.sum(), (cols * weight).sum() / weight.sum())
        assert abs(centre[0] - y0) < 14 and abs(centre[1] - x0) < 14, (y0, x0, centre)


# --- shapes -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", SIZES)
def test_output_shape_any_size(tiny_models, name, size):
    y = np.asarray(tiny_models[name](_images(*size)))
    assert y.shape == (2, *size, 5)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()


def test_model_names():
    assert {n: _tiny(n).name for n in MODELS} == {
        "fcn8s": "fcn8s", "fcn16s": "fcn16s", "fcn32s": "fcn32s", "linknet": "linknet_resnet18",
        "unet": "unet_resnet34", "fpn": "fpn_resnet34",
        "pspnet": "pspnet_resnet50", "deeplabv3plus": "deeplabv3plus_resnet50", "fcn": "fcn_resnet50",
        "segformer": "segformer_mit_b0",
    }
    assert linknet(3, encoder="resnet34", width=TINY).name == "linknet_resnet34"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_logits_under_mixed_precision(name):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = _tiny(name)
        last_conv = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Conv2D))
        assert last_conv.compute_dtype == "bfloat16"
        y = model(_images(33, 47, batch=1))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert y.dtype == "float32" and tuple(y.shape) == (1, 33, 47, 5)
    assert np.isfinite(np.asarray(y)).all()


# --- architecture ----------------------------------------------------------------


def test_parameter_counts():
    # Caffe voc-fcn8s: 134,270,278 incl. deconvolutions; ours 134,489,759.
    assert abs(fcn8s(21).count_params() - 134.3e6) / 134.3e6 < 0.01
    # The paper's 11.5M (Torch7 getParameters) counts conv weights and BN
    # gamma/beta but not BN running statistics: compare trainable weights.
    # num_classes changes it by 129 per class (<0.03%); 12 = CamVid's 11 + void.
    model = linknet(12)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert abs(trainable - 11.5e6) / 11.5e6 < 0.01
    # torchvision resnet18 without fc, plus Keras' BN running statistics.
    assert model.get_layer("resnet18").count_params() == 11_176_512 + 2 * 4800


def test_fcn8s_staged_fusion(tiny_models):
    m = tiny_models["fcn8s"]
    assert sorted(_inbound(m, "fuse_pool4")) == ["score_pool4", "upscore2"]
    assert _inbound(m, "upscore2") == ["score_fr"]
    assert _inbound(m, "upscore_pool4") == ["fuse_pool4"]
    assert sorted(_inbound(m, "fuse_pool3")) == ["score_pool3", "upscore_pool4"]
    assert _inbound(m, "upscore8") == ["fuse_pool3"]
    assert _inbound(m, "score_pool4") == ["block4_pool"]
    assert _inbound(m, "score_pool3") == ["block3_pool"]
    # No parallel path: each score map feeds exactly one fusion.
    assert _consumers(m, "score_pool4") == ["fuse_pool4"]
    assert _consumers(m, "score_pool3") == ["fuse_pool3"]
    assert _consumers(m, "score_fr") == ["upscore2"]


def test_fcn16s_and_fcn32s_graph(tiny_models):
    m16, m32 = tiny_models["fcn16s"], tiny_models["fcn32s"]
    assert sorted(_inbound(m16, "fuse_pool4")) == ["score_pool4", "upscore2"]
    assert _inbound(m16, "upscore16") == ["fuse_pool4"]
    assert _inbound(m32, "upscore32") == ["score_fr"]
    assert "score_pool3" not in [l.name for l in m16.layers]
    assert "score_pool4" not in [l.name for l in m32.layers]


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn32s"])
def test_fcn_deconvs_bilinear_and_trainable(tiny_models, name):
    m = tiny_models[name]
    deconvs = [l for l in m.layers if isinstance(l, keras.layers.Conv2DTranspose)]
    assert len(deconvs) == {"fcn8s": 3, "fcn16s": 2, "fcn32s": 1}[name]
    for layer in deconvs:
        assert layer.trainable and layer.bias is None
        assert any(w is layer.kernel for w in m.trainable_weights)
        k = layer.kernel.shape[0]
        assert k == 2 * layer.strides[0]
        np.testing.assert_array_equal(np.asarray(layer.kernel), bilinear_kernel(k, 5))
    for score in ("score_fr", "score_pool4", "score_pool3"):
        if score in [l.name for l in m.layers]:
            assert not np.asarray(m.get_layer(score).kernel).any()


def test_linknet_structure(tiny_models):
    m = tiny_models["linknet"]
    for level in (3, 2, 1):
        assert sorted(_inbound(m, f"skip{level}")) == sorted([f"decoder{level + 1}_conv2_relu", "resnet18"])
    deconvs = [l for l in m.layers if isinstance(l, keras.layers.Conv2DTranspose)]
    # decoder4..2 and the head's two upsample; decoder1 stays at stride 4 (ResNet's first stage).
    assert sorted(l.name for l in deconvs) == ["decoder2_deconv", "decoder3_deconv", "decoder4_deconv",
                                                "final_deconv1", "final_deconv2"]
    assert all(l.trainable for l in deconvs)


# --- saving -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcn8s", "linknet"])
def test_keras_save_reload(tiny_models, tmp_path, name):
    model = tiny_models[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = _images(33, 47, batch=1)
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(model(x)), atol=1e-5)


# --- pretrained weights -------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_files(tmp_path_factory):
    """A full-size VGG16 with top and one without, written as Keras weights files."""
    keras.utils.set_random_seed(1)
    d = tmp_path_factory.mktemp("vgg")
    top = keras.applications.VGG16(weights=None, include_top=True)
    top.save_weights(d / "top.weights.h5")
    notop = keras.applications.VGG16(weights=None, include_top=False)
    for name in VGG16_CONV_LAYERS:
        notop.get_layer(name).set_weights(top.get_layer(name).get_weights())
    notop.save_weights(d / "notop.weights.h5")
    weights = {l.name: l.get_weights() for l in top.layers if l.get_weights()}
    return {
        "top": str(d / "top.weights.h5"),
        "notop": str(d / "notop.weights.h5"),
        "weights": weights,
        "dir": d,
    }


def _check_convs(model, weights):
    for name in VGG16_CONV_LAYERS:
        for got, want in zip(model.get_layer(name).get_weights(), weights[name]):
            np.testing.assert_array_equal(got, want)


def test_load_vgg16_with_top(vgg16_files):
    model = fcn8s(21, encoder_weights=vgg16_files["top"])
    w = vgg16_files["weights"]
    _check_convs(model, w)
    fc6_kernel, fc6_bias = model.get_layer("fc6").get_weights()
    np.testing.assert_array_equal(fc6_kernel, w["fc1"][0].reshape(7, 7, 512, 4096))
    np.testing.assert_array_equal(fc6_bias, w["fc1"][1])
    np.testing.assert_array_equal(model.get_layer("fc7").get_weights()[0][0, 0], w["fc2"][0])
    # Convolutionalisation is right only if Keras' Flatten order matches the reshape.
    pool5 = np.random.default_rng(0).standard_normal((1, 7, 7, 512)).astype("float32")
    dense = pool5.reshape(1, -1) @ w["fc1"][0] + w["fc1"][1]
    conv = keras.ops.conv(pool5, fc6_kernel, padding="valid") + fc6_bias
    np.testing.assert_allclose(np.asarray(conv).reshape(1, -1), dense, rtol=1e-4, atol=1e-3)


def test_load_vgg16_notop_warns(vgg16_files):
    with pytest.warns(UserWarning, match="fc6/fc7"):
        model = fcn32s(21, encoder_weights=vgg16_files["notop"])
    _check_convs(model, vgg16_files["weights"])
    fc1_kernel = vgg16_files["weights"]["fc1"][0].reshape(7, 7, 512, 4096)
    assert not np.array_equal(model.get_layer("fc6").get_weights()[0], fc1_kernel)


def test_load_vgg16_legacy_h5(vgg16_files):
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    import h5py

    path = vgg16_files["dir"] / VGG16_WEIGHTS_FILE
    src = keras.applications.VGG16(weights=None, include_top=False)
    src.load_weights(vgg16_files["notop"])
    with h5py.File(path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fcn16s(21, encoder_weights=str(path))
    _check_convs(model, vgg16_files["weights"])


def _assert_one_line_error(match: str, build, *args, **kwargs):
    with pytest.raises(WeightsError) as info:
        build(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    assert info.value.__cause__ is None  # no raw h5py/OSError traceback chained
    return msg


def test_missing_and_garbled_files(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    _assert_one_line_error(missing, fcn8s, 3, encoder_weights=missing)
    garbled = tmp_path / "garbled.weights.h5"
    garbled.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_one_line_error(str(garbled), fcn8s, 3, encoder_weights=str(garbled))
    _assert_one_line_error(str(garbled), linknet, 3, encoder_weights=str(garbled), width=TINY)


def test_imagenet_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no internet")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    msg = _assert_one_line_error(VGG16_WEIGHTS_FILE, fcn8s, 3, encoder_weights="imagenet")
    assert "~/.keras/models" in msg and "--encoder-weights" in msg


def test_pretrained_needs_full_width():
    with pytest.raises(ValueError, match="width"):
        fcn8s(3, encoder_weights="imagenet", width=0.5)


def test_linknet_imagenet_needs_full_width():
    with pytest.raises(ValueError, match="width"):
        linknet(3, encoder_weights="imagenet", width=TINY)


def test_linknet_encoder_weights_round_trip(tmp_path):
    encoder = resnet18(width=TINY)
    path = str(tmp_path / "resnet18.weights.h5")
    encoder.save_weights(path)
    model = linknet(3, encoder_weights=path, width=TINY)
    got = model.get_layer("resnet18").get_weights()
    want = encoder.get_weights()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_crop_to_reference_crops_top_left_with_a_pad_for_gradient():
    """The crop back to the input's size is differentiated as a Pad, not TF's slow StridedSliceGrad
    (0.12 s of a 480x360 batch-8 training step on the full-size logits)."""
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 10, 3)).astype("float32"))
    crop = CropToReference()

    @tf.function
    def value_and_grad(x, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = crop([x, reference])
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    y, grad = value_and_grad(x, tf.zeros((2, 5, 7, 1)))
    np.testing.assert_array_equal(y.numpy(), x.numpy()[:, :5, :7])
    want = np.zeros(x.shape, "float32")
    want[:, :5, :7] = 2 * x.numpy()[:, :5, :7]
    np.testing.assert_allclose(grad.numpy(), want)
    graph = value_and_grad.get_concrete_function(tf.TensorSpec([None] * 4), tf.TensorSpec([None] * 4)).graph
    assert "StridedSliceGrad" not in {op.type for op in graph.get_operations()}
