"""The Python API: README's "Python API" example runs as written; fcnseg.load / fcnseg.save."""

import re
from pathlib import Path

import numpy as np
import pytest

import fcnseg
from fcnseg.errors import FcnsegError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one python example"
    return blocks[0]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """Executes the README block; then the checkpoint it saved serves fcnseg evaluate as one from train."""
    from fcnseg.evaluate import EvaluateConfig, evaluate

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md (Python API)", "exec"), scope)
    loaded, source = scope["loaded"], scope["source"]
    assert loaded.classes == source.classes and loaded.image_size == (64, 48)
    assert scope["labels"].shape == (4, 48, 64)
    # The reloaded model predicts exactly what the trained one does.
    np.testing.assert_allclose(loaded.model.predict(scope["images"], verbose=0),
                               scope["model"].predict(scope["images"], verbose=0), atol=1e-5)
    result = evaluate(EvaluateConfig("tiny.keras", "synthetic", source_options={"train_size": 8, "val_size": 4}),
                      log=lambda _: None)
    assert result["images"] == 4 and "whole image resized to 64x48" in result["protocol"]


def tiny_model(extra_layer=None):
    import keras

    from fcnseg.models.layers import ImageNetNormalize

    inputs = keras.Input((None, None, 3))
    x = ImageNetNormalize()(inputs)
    if extra_layer is not None:
        x = extra_layer(x)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1)(x), name="tiny")


def synthetic():
    from fcnseg import sources

    return sources.load("synthetic", image_size=(32, 24))


def test_load_restores_compiled_loss_and_metric(tmp_path):
    import keras

    from fcnseg.losses import MaskedCrossEntropy
    from fcnseg.metrics import StreamingIoU

    model = tiny_model()
    model.compile(keras.optimizers.Adam(), loss=MaskedCrossEntropy(4), metrics=[StreamingIoU(4)])
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    labels = np.random.default_rng(1).integers(0, 5, (2, 8, 8))  # 4 = void
    expected = model.evaluate(images, labels, return_dict=True, verbose=0)
    fcnseg.save(model, str(tmp_path / "m.keras"), synthetic(), meta={"note": "x"})
    loaded = fcnseg.load(str(tmp_path / "m.keras"), compile=True)
    assert isinstance(loaded.model.loss, MaskedCrossEntropy) and loaded.meta["note"] == "x"
    assert loaded.meta["model"] == "tiny" and loaded.classes.num_classes == synthetic().num_classes
    got = loaded.model.evaluate(images, labels, return_dict=True, verbose=0)
    assert got == pytest.approx(expected, rel=1e-6)


def test_load_names_a_class_keras_cannot_find(tmp_path, monkeypatch):
    """One line naming the class and what to do, not Keras's page of model config."""
    import keras

    @keras.saving.register_keras_serializable(package="apitest")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    path = str(tmp_path / "custom.keras")
    fcnseg.save(tiny_model(Doubler()), path, synthetic())
    registry = keras.saving.get_custom_objects()
    monkeypatch.delitem(registry, "apitest>Doubler")
    with pytest.raises(FcnsegError) as caught:
        fcnseg.load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path}: could not load the model")
    assert f"needs {__name__}.Doubler, which is not registered: import the module" in message

    # An fcnseg class this fcnseg lacks (a checkpoint of another version): say so.
    monkeypatch.setitem(registry, "apitest>Doubler", Doubler)
    monkeypatch.delitem(registry, "fcnseg>ImageNetNormalize")
    with pytest.raises(FcnsegError) as caught:
        fcnseg.load(path)
    message = str(caught.value)
    assert "\n" not in message and "fcnseg.models.layers.ImageNetNormalize" in message
    assert "this fcnseg does not define" in message


def test_load_refuses_a_plain_keras_file(tmp_path):
    path = str(tmp_path / "plain.keras")
    tiny_model().save(path)
    with pytest.raises(FcnsegError, match=r"^checkpoint .*plain.keras is not an fcnseg checkpoint .*fcnseg.save"):
        fcnseg.load(path)
    with pytest.raises(FcnsegError, match=r"^checkpoint .*nothing.keras: no such file$"):
        fcnseg.load(str(tmp_path / "nothing.keras"))


def test_import_fcnseg_stays_cheap():
    import subprocess
    import sys

    code = "import sys, fcnseg; fcnseg.load; print(sorted(m for m in ('keras', 'tensorflow', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
