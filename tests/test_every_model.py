"""Every model of ``fcnseg.models.MODELS``: a tiny checkpoint saved through the library, then
`fcnseg predict` and the SavedModel, TFLite and ONNX exports agree with Keras on one 64x48 image.

The list comes from the table, so a model registered later is tested with no edit here. Each runs
on its default encoder when --width narrows it, else on the smallest valid encoder that --width
narrows (resnet18 before resnet34), else on its default encoder as it is when the whole model is
small (under 5M parameters, e.g. a MiT-B0 SegFormer), else it is skipped with the reason. Width 0.25,
or 1/16 for a model still over 3M parameters at 0.25 (FCN).
"""

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fcnseg.models import MODEL_ENCODERS, MODELS

WIDTH = 0.25  # not 0.125: TF 2.21's oneDNN crashes on some of those shapes at batch 1 (README)
# FCN keeps 8.4M parameters at width 0.25 (fc6 is a 7x7 conv), which takes its exports ~45 s: a model
# over this many parameters is tested at NARROW_WIDTH (1/16, the width tests/test_predict_export.py
# gives FCN-8s), when its encoder narrows.
MAX_TINY_PARAMS, NARROW_WIDTH = 3_000_000, 1 / 16
IMAGE_W, IMAGE_H = 64, 48
MAX_UNSCALED_PARAMS = 5_000_000
# The export tests' tolerances (tests/test_predict_export.py): softmax within 1e-3, labels 99% equal.
PROB_ATOL, LABEL_AGREEMENT = 1e-3, 0.99


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def scales(encoder: str) -> bool:
    from fcnseg.models.encoders import ENCODERS

    return encoder in ENCODERS and ENCODERS[encoder].scales_with_width


def tiny_encoder(model: str) -> str:
    """The encoder the model is tested on (see the module docstring)."""
    from fcnseg.models.encoders import build_encoder

    encoders = MODEL_ENCODERS[model]
    scaling = [e for e in encoders if scales(e)]
    if encoders[0] in scaling:
        return encoders[0]
    if scaling:
        return min(scaling, key=lambda e: build_encoder(e, width=WIDTH).count_params())
    return encoders[0]


def randomised(model, seed: int):
    """``model`` with its zero-initialised kernels (FCN's score layers) drawn at random: a
    zero-initialised head predicts one class everywhere. Biases stay zero, so the class
    depends on the image, not on a random bias."""
    if not hasattr(model, "_zero_weights"):
        model._zero_weights = [w.ndim > 1 and not w.any() for w in model.get_weights()]
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(w.dtype) if zero else w
                       for w, zero in zip(model.get_weights(), model._zero_weights)])
    return model


def spread_classes(model, rgb, num_classes: int):
    """``model`` with its classifier re-centred and scaled so its classes split the image.

    An untrained PSPNet or SegFormer gives nearly the same logits at every pixel (batch norm's
    initial statistics, one dominant class), so every pixel gets one class. Batch-norm statistics
    are first taken from the image (training-mode calls), then the last conv to the classes gets
    bias and kernel so the logits become k (L - mean L): everything after it (bilinear upsampling,
    crop) is linear and keeps the shift and scale, and the labels now follow the image.
    """
    x = rgb[None].astype(np.float32)
    for _ in range(20):
        model(x, training=True)
    import keras

    heads = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D
             and layer.filters == num_classes and layer.use_bias]
    if not heads:
        return model
    logits = np.asarray(model(x, training=False)).reshape(-1, num_classes)
    centred = logits - logits.mean(0)
    k = 1.0 / max(float(centred.std()), 1e-6)
    kernel, bias = heads[-1].get_weights()
    heads[-1].set_weights([kernel * k, (bias - logits.mean(0)) * k])
    return model


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from fcnseg.sources.synthetic import render_scene

    rgb = render_scene(IMAGE_W, IMAGE_H, 3)[0]
    path = tmp_path_factory.mktemp("image") / "scene.png"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path, rgb


def keras_probabilities(model, rgb):
    import tensorflow as tf

    return tf.nn.softmax(model(rgb[None].astype(np.float32), training=False), axis=-1).numpy()


def assert_agrees(probs, classes, reference):
    assert probs.shape == reference.shape
    assert np.abs(probs - reference).max() <= PROB_ATOL
    assert (classes == reference.argmax(-1)).mean() >= LABEL_AGREEMENT


def assert_same_labels(labels, reference):
    """Equal to Keras's argmax wherever Keras's best two classes are not tied to within 1e-4."""
    top2 = np.sort(reference, -1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-4
    assert labels.shape == reference.shape[:-1]
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(labels[decided], reference.argmax(-1)[decided])


@pytest.mark.slow  # 20-50 s per model on the shared 2-core machine: three conversions each
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_predict_and_every_export_agree_with_keras(name, image, tmp_path):
    import keras
    import tensorflow as tf

    import fcnseg
    from fcnseg.sources.synthetic import make_source

    ort = pytest.importorskip("onnxruntime", reason='running ONNX needs pip install "fcnseg[export]"')
    pytest.importorskip("tf2onnx", reason='ONNX export needs pip install "fcnseg[export]"')
    keras.utils.set_random_seed(0)
    source = make_source(image_size=(IMAGE_W, IMAGE_H))
    encoder = tiny_encoder(name)
    width = WIDTH
    model = MODELS[name](source.num_classes, encoder=encoder, width=width)
    if not scales(encoder) and model.count_params() > MAX_UNSCALED_PARAMS:
        pytest.skip(f"{name}: none of its encoders ({', '.join(MODEL_ENCODERS[name])}) is narrowed by --width "
                    f"and on {encoder} it has {model.count_params():,} parameters: too big for a unit test")
    if scales(encoder) and model.count_params() > MAX_TINY_PARAMS:
        width = NARROW_WIDTH
        model = MODELS[name](source.num_classes, encoder=encoder, width=width)
    path, rgb = image
    # A head that predicts one class everywhere would make the label comparisons vacuous (FCN-32s's
    # 32x-upsampled 2x1 score map can): draw the zero-initialised weights again until it does not.
    for seed in range(5):
        reference = keras_probabilities(randomised(model, seed), rgb)
        if len(np.unique(reference.argmax(-1))) > 1:
            break
    if len(np.unique(reference.argmax(-1))) == 1:
        reference = keras_probabilities(spread_classes(model, rgb, source.num_classes), rgb)
    assert len(np.unique(reference.argmax(-1))) > 1, "a one-class prediction would prove nothing"
    ckpt = tmp_path / "best.keras"
    fcnseg.save(model, str(ckpt), source, {"encoder": encoder, "config": {"width": width}})
    loaded = fcnseg.load(str(ckpt)).model
    reference = keras_probabilities(loaded, rgb)
    assert reference.shape == (1, IMAGE_H, IMAGE_W, source.num_classes)

    result = run("predict", "--checkpoint", ckpt, path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    labels = cv2.imread(str(tmp_path / "out" / "scene_label.png"), cv2.IMREAD_UNCHANGED)
    assert_same_labels(labels[None], reference)

    result = run("export", "--checkpoint", ckpt, "--format", "savedmodel", "--output", tmp_path / "sm")
    assert result.exit_code == 0, result.output
    outputs = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](
        images=tf.constant(rgb[None], tf.uint8))
    assert_agrees(outputs["probabilities"].numpy(), outputs["classes"].numpy(), reference)

    result = run("export", "--checkpoint", ckpt, "--format", "tflite", "--output", tmp_path / "m.tflite")
    assert result.exit_code == 0, result.output
    runner = tf.lite.Interpreter(model_path=str(tmp_path / "m.tflite")).get_signature_runner("serving_default")
    outputs = runner(images=rgb[None])
    assert_agrees(outputs["probabilities"], outputs["classes"], reference)

    result = run("export", "--checkpoint", ckpt, "--format", "onnx", "--output", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": rgb[None]})))
    assert_agrees(outputs["probabilities"], outputs["classes"], reference)
