"""One backend's half of the cross-backend tests in test_backends.py.

Run as ``python tests/backend_worker.py STAGE DIR MODEL[,MODEL...]`` with
KERAS_BACKEND set (models are keys of ``BUILDS``); the
backend is fixed per process, so each stage is its own process and the stages
exchange weights, checkpoints and logits through files in DIR. With
``FCNSEG_BLOCK_TENSORFLOW=1`` every ``tensorflow*`` import fails, as on a
machine where TensorFlow is not installed.

Stages:
  save  build each model, give it random non-zero weights, write
        NAME.weights.h5, NAME.keras and its logits on fixed images.
  fit   load both files into fresh models (same logits?), train a few
        ``model.fit`` steps with fcnseg's losses and IoU metric, predict, and
        write the trained model as NAME.fit.keras with its logits.
  check load the NAME.fit.keras files and compare with the logits beside them.
Each stage prints one JSON line: the largest logit difference per model and
what it saw.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys

if os.environ.get("FCNSEG_BLOCK_TENSORFLOW") == "1":

    class _NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0].startswith("tensorflow"):
                raise ImportError(f"No module named {name!r} (blocked: TensorFlow is not installed here)")
            return None

    sys.meta_path.insert(0, _NoTensorFlow())

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fcnseg import losses, metrics  # noqa: E402
from fcnseg.models import MODELS  # noqa: E402

NUM_CLASSES = 4
WIDTH = 0.125
BUILDS = {
    "fcn8s": lambda: MODELS["fcn8s"](NUM_CLASSES, width=WIDTH),
    "fcn16s": lambda: MODELS["fcn16s"](NUM_CLASSES, width=WIDTH),
    "fcn32s": lambda: MODELS["fcn32s"](NUM_CLASSES, width=WIDTH),
    "linknet-resnet18": lambda: MODELS["linknet"](NUM_CLASSES, "resnet18", width=WIDTH),
    "linknet-resnet34": lambda: MODELS["linknet"](NUM_CLASSES, "resnet34", width=WIDTH),
    "linknet-per-image": lambda: MODELS["linknet"](NUM_CLASSES, "resnet18", width=WIDTH, input_norm="per-image"),
}


def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")


def labels() -> np.ndarray:
    y = np.random.default_rng(1).integers(0, NUM_CLASSES, (4, 64, 64)).astype("int32")
    y[:, :8] = 255  # void rows
    return y


def logits(model: keras.Model) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(images(), training=False)))


def randomise(model: keras.Model) -> None:
    """Non-zero weights everywhere: the zero-initialised score layers would make any two models agree."""
    rng = np.random.default_rng(2)
    model.set_weights([w if w.any() else rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])
    # Moving statistics away from 0/1, so inference-mode batch norm is exercised too.
    model(images(), training=True)


def stage_save(out: str, names: list[str]) -> dict:
    report = {}
    for name in names:
        build = BUILDS[name]
        model = build()
        randomise(model)
        model.save_weights(os.path.join(out, f"{name}.weights.h5"))
        model.save(os.path.join(out, f"{name}.keras"))
        np.save(os.path.join(out, f"{name}.npy"), logits(model))
        report[name] = float(np.std(logits(model)))
    return report


def stage_fit(out: str, names: list[str]) -> dict:
    report = {}
    for name in names:
        build = BUILDS[name]
        expected = np.load(os.path.join(out, f"{name}.npy"))
        model = build()
        model.load_weights(os.path.join(out, f"{name}.weights.h5"))
        loaded = keras.saving.load_model(os.path.join(out, f"{name}.keras"))
        diff = max(float(np.abs(logits(model) - expected).max()), float(np.abs(logits(loaded) - expected).max()))
        before = [w.copy() for w in model.get_weights()]
        model.compile(keras.optimizers.SGD(0.01), loss=losses.make_loss("ce+0.5*dice", NUM_CLASSES),
                      metrics=[metrics.StreamingIoU(NUM_CLASSES)])
        x = np.concatenate([images(), images()[::-1]])
        history = model.fit(x, labels(), batch_size=2, epochs=1, verbose=0)
        moved = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        predicted = model.predict(images(), verbose=0)
        model.save(os.path.join(out, f"{name}.fit.keras"))
        np.save(os.path.join(out, f"{name}.fit.npy"), logits(model))
        report[name] = {"loaded_diff": diff, "loss": history.history["loss"][-1],
                        "iou": history.history["mean_iou"][-1], "weights_moved": moved,
                        "predict_shape": list(predicted.shape)}
    return report


def stage_check(out: str, names: list[str]) -> dict:
    report = {}
    for name in names:
        model = keras.saving.load_model(os.path.join(out, f"{name}.fit.keras"))
        report[name] = float(np.abs(logits(model) - np.load(os.path.join(out, f"{name}.fit.npy"))).max())
    return report


if __name__ == "__main__":
    stage, out, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    result = {"save": stage_save, "fit": stage_fit, "check": stage_check}[stage](out, names)
    print(json.dumps({"backend": keras.backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules,
                      "result": result}))
