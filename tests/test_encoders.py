"""The encoder table (fcnseg.models.encoders): every encoder x LinkNet builds and keeps the input's
size; pretrained weights load from every route (keras.applications files and saved models, keras-hub
preset folders, the download path up to the network) and give the library model's own features."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from fcnseg.models import MODEL_ENCODERS, MODELS, encoder_refusal, linknet
from fcnseg.models.encoders import ENCODERS, STRIDES, build_encoder, encoder_layers, encoder_strides, preprocessing
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
    # An encoder without stride-2 features (MiT) has channel count 0 there and returns the others.
    for stride, f, c in zip(encoder_strides(name), feats, [c for c in row.channels if c]):
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


# --- pretrained weights: every library's way of saving, loaded through --encoder-weights PATH ---------


def _randomise_batch_norm(model: keras.Model, seed: int = 0) -> None:
    """Random BN statistics and affine terms (kernels are random already), so a missed copy shows."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.0, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def _assert_same_features(encoder: keras.Model, reference: keras.Model, x: np.ndarray) -> None:
    got, want = encoder(x), reference(x)
    assert len(got) == len(want) == 5
    for stride, g, w in zip(STRIDES, got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, stride
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max())),
                                   err_msg=f"stride {stride}")


def _library_model(name: str, input_shape=(None, None, 3)) -> keras.Model:
    constructor = getattr(keras.applications, ENCODERS[name].library)
    model = constructor(weights=None, include_top=False, input_shape=input_shape)
    _randomise_batch_norm(model)
    return model


def _taps(model: keras.Model, name: str) -> keras.Model:
    return keras.Model(model.input, [model.get_layer(t).output for t in ENCODERS[name].taps])


@pytest.mark.parametrize("name", _params(["vgg16", *APPLICATIONS]))
def test_keras_applications_weights_file_and_saved_model_give_the_library_features(name, tmp_path):
    """A keras.applications model with random weights, saved as a weights file and as a .keras model:
    fcnseg's encoder loaded from either gives the library model's own features."""
    keras.utils.set_random_seed(3)
    library = _library_model(name)
    library.save_weights(tmp_path / "enc.weights.h5")
    library.save(tmp_path / "enc.keras")
    x = np.asarray(preprocessing(name)(_images(64, 96)))
    reference = _taps(library, name)
    for path in ("enc.weights.h5", "enc.keras"):
        _assert_same_features(build_encoder(name, weights=str(tmp_path / path)), reference, x)


def test_saved_model_of_fixed_size_and_legacy_h5_take_any_size(tmp_path):
    """A keras.applications model saved at 224x224 (.keras and the legacy .h5) still gives an encoder
    for any input size, with the same features as the library model on that size."""
    keras.utils.set_random_seed(4)
    fixed = _library_model("mobilenet_v2", (224, 224, 3))
    fixed.save(tmp_path / "m.keras")
    fixed.save(tmp_path / "m.h5")
    flexible = _library_model("mobilenet_v2")
    flexible.set_weights(fixed.get_weights())
    x = np.asarray(preprocessing("mobilenet_v2")(_images(64, 96)))
    for path in ("m.keras", "m.h5"):
        _assert_same_features(build_encoder("mobilenet_v2", weights=str(tmp_path / path)),
                              _taps(flexible, "mobilenet_v2"), x)


def _hub_resnet(name: str, **overrides):
    keras_hub = pytest.importorskip("keras_hub")
    depths = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[name]
    config = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
                  stackwise_num_blocks=depths, stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block")
    backbone = keras_hub.models.ResNetBackbone(**(config | overrides))
    _randomise_batch_norm(backbone)
    return backbone


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_keras_hub_preset_folder_gives_the_hub_backbone_features(name, tmp_path):
    """keras-hub's ResNetBackbone with random weights, saved with save_to_preset: fcnseg's own ResNet
    loaded from the folder gives the backbone's features (stem and P2..P5)."""
    keras.utils.set_random_seed(5)
    backbone = _hub_resnet(name)
    backbone.save_to_preset(str(tmp_path / "preset"))
    pyramid = backbone.pyramid_outputs
    reference = keras.Model(backbone.input, [backbone.get_layer("conv1_relu").output,
                                             *(pyramid[f"P{i}"] for i in (2, 3, 4, 5))])
    x = np.asarray(preprocessing(name)(_images(64, 96)))
    encoder = build_encoder(name, weights=str(tmp_path / "preset"))
    _assert_same_features(encoder, reference, x)
    assert any("FusedBatchNormalization" == type(layer).__name__ for layer in encoder.layers)


def test_keras_hub_resnet_vd_preset_is_refused_in_one_line(tmp_path):
    backbone = _hub_resnet("resnet34", input_conv_filters=[32, 32, 64], input_conv_kernel_sizes=[3, 3, 3],
                           block_type="basic_block_vd")
    backbone.save_to_preset(str(tmp_path / "vd"))
    with pytest.raises(WeightsError) as info:
        build_encoder("resnet34", weights=str(tmp_path / "vd"))
    _one_line(info, str(tmp_path / "vd"), "basic_block_vd", "not the plain ResNet")


def test_preset_folder_for_a_keras_applications_encoder_is_refused(tmp_path):
    with pytest.raises(WeightsError) as info:
        build_encoder("mobilenet_v2", weights=str(tmp_path))
    _one_line(info, str(tmp_path), "resnet18/resnet34")


# --- the download path, up to the network call ----------------------------------------------------


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """Keras' cache in a tmp folder (as KERAS_HOME would put it), and no network: a download fails."""
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    def offline(url, *args, **kwargs):
        raise OSError(f"network unreachable (simulated) fetching {url}")

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras_home"))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    return tmp_path / "keras_home"


def test_imagenet_offline_names_the_file_and_the_path_route(keras_home):
    with pytest.raises(WeightsError) as info:
        build_encoder("mobilenet_v2", weights="imagenet")
    _one_line(info, "keras.applications.MobileNetV2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
              "$KERAS_HOME/models", "--encoder-weights PATH")


def test_imagenet_from_a_filled_keras_cache_needs_no_network(keras_home, monkeypatch, tmp_path):
    """The official file in the cache is used without a download; the same file passed as PATH gives
    the same encoder (EfficientNet's files hold the std where the variance belongs: both routes fix it)."""
    import h5py
    import keras.src.utils.file_utils as file_utils
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(6)
    library = _library_model("efficientnet_b0")
    norm = next(layer for layer in library.layers if isinstance(layer, keras.layers.Normalization))
    norm.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]), np.array(0)])
    (keras_home / "models").mkdir(parents=True)
    cached = keras_home / "models" / "efficientnetb0_notop.h5"
    with h5py.File(cached, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, library)
    # Our stand-in file cannot have the real file's hash; everything else is Keras' own path.
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)
    x = _images(64, 96)
    from_cache = build_encoder("efficientnet_b0", weights="imagenet")
    _assert_same_features(build_encoder("efficientnet_b0", weights=str(cached)), from_cache, x)
    # and that is not what the file's numbers give read naively (the fix matters)
    assert not np.allclose(np.asarray(_taps(library, "efficientnet_b0")(x)[0]), np.asarray(from_cache(x)[0]))


def test_keras_hub_imagenet_offline_names_the_preset_and_the_folder_route(monkeypatch):
    pytest.importorskip("keras_hub")
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError(f"network unreachable (simulated) fetching {handle}")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    with pytest.raises(WeightsError) as info:
        build_encoder("resnet18", weights="imagenet")
    _one_line(info, "resnet_18_imagenet", "save_to_preset(DIR)", "--encoder-weights DIR")


def test_keras_hub_missing_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)
    for weights in ("imagenet", str(tmp_path)):
        with pytest.raises(WeightsError) as info:
            build_encoder("resnet34", weights=weights)
        _one_line(info, 'pip install "fcnseg[hub]"')


# --- the command line: the issue's done-when -----------------------------------------------------


def _fcnseg(*args, tmp_path):
    import subprocess
    import sys

    # HF_HUB_OFFLINE: fail at once instead of after huggingface-hub's retries (same error path).
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


TINY_TRAIN = ["--image-size", "64x48", "--batch-size", "1", "--steps-per-epoch", "1", "--val-steps", "1",
              "--epochs", "1", "--image-every", "0", "--source-option", "val_size=1", "--source-option", "train_size=2"]


def test_cli_imagenet_offline_is_one_line(tmp_path):
    pytest.importorskip("keras_hub")
    proc = _fcnseg("train", "--model", "linknet", "--encoder", "resnet34", "--encoder-weights", "imagenet",
                   *TINY_TRAIN, "--run-dir", str(tmp_path / "run"), tmp_path=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "hf://timm/resnet34.tv_in1k" in errors[0] and "--encoder-weights DIR" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_trains_from_a_preset_folder(tmp_path):
    keras.utils.set_random_seed(7)
    _hub_resnet("resnet34").save_to_preset(str(tmp_path / "preset"))
    proc = _fcnseg("train", "--model", "linknet", "--encoder", "resnet34", "--encoder-weights",
                   str(tmp_path / "preset"), *TINY_TRAIN, "--run-dir", str(tmp_path / "run"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "best.keras").is_file()


def test_cli_refuses_an_encoder_the_model_cannot_take(tmp_path):
    from click.testing import CliRunner

    from fcnseg.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "fcn8s", "--encoder", "resnet50",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "cannot take --encoder resnet50; its encoders are: vgg16" in result.output
    assert not (tmp_path / "run").exists()


# --- fine-tuning: --freeze-encoder-epochs and --encoder-lr-mult -----------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_encoder_lr_mult_scales_only_the_named_variables_updates(optimizer):
    from fcnseg.optimizers import make_optimizer, scale_learning_rate
    from fcnseg.train import TrainConfig

    start = np.array([1.0, -2.0, 3.0], "float32")
    enc, dec = keras.Variable(start, name="enc"), keras.Variable(start, name="dec")
    opt = make_optimizer(TrainConfig(optimizer=optimizer, learning_rate=0.01, momentum=0.0), 10)
    opt.build([enc, dec])
    scale_learning_rate(opt, [enc], 0.25)
    grad = np.array([0.5, 1.0, -3.0], "float32")
    for _ in range(3):
        opt.apply_gradients([(grad, enc), (grad, dec)])
    moved_enc, moved_dec = np.asarray(enc) - start, np.asarray(dec) - start
    assert np.abs(moved_dec).min() > 1e-4
    np.testing.assert_allclose(moved_enc, 0.25 * moved_dec, rtol=1e-4)


def _encoder_weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for layer in encoder_layers(model) for w in layer.weights]


def _initial_model(config):
    from fcnseg.sources.synthetic import CLASSES
    from fcnseg.train import build_model

    num_classes = CLASSES.num_classes
    keras.utils.set_random_seed(config.seed)  # as fcnseg.train builds it
    return build_model(config, num_classes)


FINETUNE = dict(model="linknet", width=0.125, image_size=(48, 32), batch_size=2, steps_per_epoch=2, val_steps=1,
                source_options={"train_size": 4, "val_size": 2}, num_images=0, save_every=1)


@pytest.mark.slow  # two short training runs
def test_frozen_encoder_and_its_batch_norm_statistics_stay_then_train(tmp_path):
    from fcnseg import checkpoint
    from fcnseg.train import TrainConfig, train

    config = TrainConfig(**FINETUNE, epochs=1, freeze_encoder_epochs=1, run_dir=str(tmp_path / "run"))
    train(config, log=lambda s: None)
    initial = _initial_model(config)
    after_frozen, _, _ = checkpoint.load(str(tmp_path / "run" / "last.keras"))
    for got, want in zip(_encoder_weights(after_frozen), _encoder_weights(initial)):
        np.testing.assert_array_equal(got, want)  # kernels, gamma/beta and the moving statistics
    decoder = after_frozen.get_layer("decoder4_conv1").get_weights()[0]
    assert not np.allclose(decoder, initial.get_layer("decoder4_conv1").get_weights()[0])

    train(config, resume=True, resume_epochs=2, log=lambda s: None)
    unfrozen, _, _ = checkpoint.load(str(tmp_path / "run" / "last.keras"))
    moved = [not np.allclose(a, b) for a, b in zip(_encoder_weights(unfrozen), _encoder_weights(after_frozen))]
    assert all(moved), "every encoder weight, moving statistics included, trains once unfrozen"


@pytest.mark.slow  # two short training runs
def test_encoder_lr_mult_zero_keeps_the_encoder_in_training(tmp_path):
    from fcnseg import checkpoint
    from fcnseg.train import TrainConfig, train

    config = TrainConfig(**FINETUNE, epochs=1, encoder_lr_mult=0.0, run_dir=str(tmp_path / "run"))
    train(config, log=lambda s: None)
    initial = _initial_model(config)
    trained, _, _ = checkpoint.load(str(tmp_path / "run" / "last.keras"))
    (enc_now,), (enc_then,) = encoder_layers(trained), encoder_layers(initial)
    for got, want in zip(enc_now.trainable_weights, enc_then.trainable_weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # its batch norm still runs in training mode (only the update is scaled), and the decoder trains
    assert not np.allclose(np.asarray(enc_now.get_layer("conv1_bn").moving_mean),
                           np.asarray(enc_then.get_layer("conv1_bn").moving_mean))
    assert not np.allclose(trained.get_layer("final_conv").get_weights()[0],
                           initial.get_layer("final_conv").get_weights()[0])


# --- output stride (dilated ResNets) -----------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_encoder_features_sit_at_feature_strides(name, output_stride):
    """Keys stay the nominal levels 2..32; the maps are input / feature_strides(os)[key] in size, with
    the same channels (and the same weights: dilation changes no shape) as at output stride 32."""
    from fcnseg.models.encoders import feature_strides

    assert feature_strides(output_stride) == {2: 2, 4: 4, 8: 8, 16: min(16, output_stride), 32: output_stride}
    encoder = build_encoder(name, TINY, output_stride=output_stride)
    plain = build_encoder(name, TINY)
    h, w = 64, 48
    x = _images(h, w)
    for (level, stride), f, g in zip(feature_strides(output_stride).items(), encoder(x), plain(x)):
        assert tuple(f.shape) == (1, h // stride, w // stride, g.shape[-1]), (name, level)
    assert [v.shape for v in encoder.weights] == [v.shape for v in plain.weights]


def test_dilation_schedule_is_torchvisions_replace_stride_with_dilation():
    """Per block of the last two stages, (stride, dilation of the 3x3 conv) as torchvision's
    resnet50(replace_stride_with_dilation=...) builds them, at output strides 16 and 8."""
    from fcnseg.models.resnet import stage_dilations

    assert stage_dilations(32) == ((1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1))
    # torchvision's _make_layer: a dilated stage drops its stride; its first block keeps the previous
    # dilation, the others use previous * 2 (resnet50 at OS 8: layer3 1,2,2..; layer4 2,4,4).
    assert stage_dilations(16) == ((1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2))
    assert stage_dilations(8) == ((1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4))
    encoder = build_encoder("resnet50", output_stride=8)
    got = {(stage, block): (encoder.get_layer(f"conv{stage}_block{block}_1_conv").strides[0],
                            encoder.get_layer(f"conv{stage}_block{block}_2_conv").dilation_rate[0])
           for stage, blocks in ((4, 6), (5, 3)) for block in range(1, blocks + 1)}
    assert got == {(4, 1): (1, 1), **{(4, b): (1, 2) for b in range(2, 7)},
                   (5, 1): (1, 2), (5, 2): (1, 4), (5, 3): (1, 4)}
    small = build_encoder("resnet18", TINY, output_stride=8)
    assert small.get_layer("stage3_block1_conv1").dilation_rate == (1, 1)
    assert small.get_layer("stage3_block2_conv2").dilation_rate == (2, 2)
    assert small.get_layer("stage4_block1_conv1").dilation_rate == (2, 2)
    assert small.get_layer("stage4_block2_conv1").dilation_rate == (4, 4)
    assert small.get_layer("stage4_block1_proj").strides == (1, 1)


def test_dilated_keras_application_keeps_the_weights_it_was_given(tmp_path):
    """The dilated ResNet50 is a clone of keras.applications' with every weight copied: a weights
    file loads into it and gives the same tensors as into the library model."""
    library = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for var in library.weights[:6] + library.weights[-6:]:
        var.assign(rng.normal(size=var.shape).astype("float32"))
    path = tmp_path / "resnet50.weights.h5"
    library.save_weights(path)
    encoder = build_encoder("resnet50", weights=str(path), output_stride=16)
    by_name = {layer.name: layer for layer in encoder.layers}
    for layer in (layer for layer in library.layers if layer.weights):
        for a, b in zip(layer.weights, by_name[layer.name].weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["vgg16", "mobilenet_v2", "efficientnet_b0"])
def test_other_encoders_refuse_an_output_stride_in_one_line(name):
    with pytest.raises(ValueError) as exc:
        build_encoder(name, TINY, output_stride=16)
    assert _one_line(exc, f"encoder {name}", "supports output stride 32", "not 16")
    with pytest.raises(ValueError) as exc:
        build_encoder("resnet18", TINY, output_stride=4)
    assert _one_line(exc, "encoder resnet18", "32, 16, 8", "not 4")
