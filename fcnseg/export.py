"""Export a checkpoint for deployment: TF SavedModel, TFLite or ONNX.

Every artefact has the same interface, so clients need no fcnseg code:

* input ``images``: uint8 RGB (B, H, W, 3), 0..255 (the model normalises inside);
* output ``classes``: int32 (B, H, W) train ids (argmax);
* output ``probabilities``: float32 (B, H, W, C) softmax; for a checkpoint trained with
  ``--head sigmoid`` (C = 2) channel 1 is the sigmoid probability of the foreground
  class and channel 0 is 1 minus it, and ``classes`` is 1 where that is above 0.5.

SavedModel and ONNX take any batch size and image size unless ``image_size``
fixes H and W. TFLite has a fixed (1, H, W, 3) input, by default the
checkpoint's training size: the converter resolves the model's pad-to-32 and
crop for one shape, and mobile runtimes want static shapes anyway.

The model runs inside the artefact as ``fcnseg predict`` runs it: by default
each image is resized to the checkpoint's training size in the graph, and the
probabilities are resized back (bilinear) to the image's own size, so a client
gets ``predict``'s labels for an image of any size. ``size="native"`` exports
the raw model (outputs at the input's size, computed there); ``scale`` scales
each input by a factor instead. ONNX and TFLite have no op for TensorFlow's
antialiased resize, so theirs is the same filter written as two matrix products.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

from fcnseg import heads
from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_dir, atomic_write, write_error
from fcnseg.inference import Resolution, resize_images, resize_probabilities, resolution

FORMATS = ("savedmodel", "tflite", "onnx")
INSTALL_HINT = 'pip install "fcnseg[export]"'


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str  # .keras file written by fcnseg train
    format: str  # savedmodel | tflite | onnx
    output: str  # folder (savedmodel) or file (.tflite, .onnx)
    image_size: tuple[int, int] | None = None  # (W, H) to fix; TFLite defaults to the training size
    float16: bool = False  # TFLite only: float16 weights (half the size, float32 inputs/outputs)
    opset: int = 17  # ONNX opset
    size: str = "train"  # where the model runs inside the graph: "train" (its training size), "native", "WxH"
    scale: float | None = None  # instead of size: scale each input by this factor
    overwrite: bool = False  # replace an existing --output


def serving_function(model):
    """uint8 images -> {"classes", "probabilities"}: the one interface every format exports."""
    import tensorflow as tf

    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        probabilities = heads.probabilities(logits)  # a sigmoid head's [1 - p, p]
        return {"classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32), "probabilities": probabilities}

    return serve


def scaled_serving_function(model, res: Resolution, portable: bool):
    """``serving_function`` run at ``res``: images resized in, probabilities resized back to their size
    (as ``fcnseg.inference.run_at_resolution``); ``portable`` for ONNX and TFLite graphs."""
    serve = serving_function(model)
    if res.native:
        return serve
    import tensorflow as tf

    def scaled(images):
        hw = tf.shape(images)[1:3]
        if res.size is not None:
            model_hw = (res.size[1], res.size[0])
            if tuple(images.shape[1:3]) == model_hw:  # a fixed input at that size (TFLite's default)
                return serve(images)
        else:  # float64 and half-to-even rounding: the sizes Python's round() gives in predict
            model_hw = tf.cast(tf.maximum(tf.round(tf.cast(hw, tf.float64) * res.scale), 1.0), tf.int32)
        small = resize_images(tf.cast(images, tf.float32), model_hw, portable)
        probabilities = resize_probabilities(serve(small)["probabilities"], hw)
        return {"classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32), "probabilities": probabilities}

    return scaled


def input_spec(batch: int | None, image_size: tuple[int, int] | None):
    import tensorflow as tf

    h, w = (None, None) if image_size is None else (image_size[1], image_size[0])
    return tf.TensorSpec([batch, h, w, 3], tf.uint8, name="images")


def export(config: ExportConfig, log: Callable[[str], None] = print) -> str:
    """Write the artefact to ``config.output`` and return its path.

    Example:
        >>> export(ExportConfig("runs/r/best.keras", "savedmodel", "models/fcnseg/1"))
        'models/fcnseg/1'
    """
    from fcnseg import checkpoint

    if config.format not in FORMATS:
        raise FcnsegError(f"--format {config.format!r} is unknown; choose one of {', '.join(FORMATS)}")
    if config.float16 and config.format != "tflite":
        raise FcnsegError("--float16 applies to --format tflite only")
    if config.format == "onnx":
        _require_tf2onnx()  # fail before the slow model load
    _check_output(config.output, config.overwrite, config.format)
    res = resolution(checkpoint.read_meta(config.checkpoint), config.size, config.scale)
    model, meta, _ = checkpoint.load(config.checkpoint)
    meta = {**meta, "export": {"inside_the_graph": res.describe()}}
    import tensorflow as tf

    try:
        if config.format == "savedmodel":
            # Written beside --output and swapped in, so a failure keeps the old model whole.
            with atomic_dir(config.output, "--output") as tmp:
                _write_savedmodel(scaled_serving_function(model, res, False), tmp, input_spec(None, config.image_size),
                                  model)
                os.makedirs(os.path.join(tmp, "assets.extra"))
                with open(os.path.join(tmp, "assets.extra", "fcnseg.json"), "w") as f:
                    json.dump(meta, f, indent=1)  # class names and colours for clients; TF Serving ignores it
        else:
            if config.format == "tflite":
                size = config.image_size or tuple(meta["source"]["image_size"])
                data = _tflite_bytes(scaled_serving_function(model, res, True), model, input_spec(1, size),
                                        config.float16)
            else:
                data = _onnx_bytes(scaled_serving_function(model, res, True), input_spec(None, config.image_size),
                                   config.opset, meta)
            with atomic_write(config.output, "wb", "--output") as f:
                f.write(data)
    except tf.errors.OpError as e:  # TensorFlow's own file writes (SavedModel) fail with these, not OSError
        raise write_error(config.output, e, "--output") from None
    log(f"wrote {config.format} model to {config.output}")
    return config.output


def _check_output(path: str, overwrite: bool, fmt: str) -> None:
    """Refuse, before the slow model load, an --output that must not or cannot be replaced."""
    if os.path.lexists(path) and not overwrite:
        raise FcnsegError(f"--output {path} already exists; choose another path or pass --overwrite")
    if os.path.lexists(path):
        if fmt != "savedmodel" and os.path.isdir(path):
            raise FcnsegError(f"--output {path} is a folder; --format {fmt} writes a file")
        if fmt == "savedmodel" and not os.path.isdir(path):
            raise FcnsegError(f"--output {path} is a file; --format savedmodel writes a folder")
        # --overwrite replaces a whole folder: never one that is not a model (a typo like --output .).
        if fmt == "savedmodel" and os.listdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise FcnsegError(f"--output {path} is a folder that holds no SavedModel; --overwrite only "
                              "replaces a SavedModel")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise FcnsegError(f"--output {path}: cannot create {parent}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise FcnsegError(f"--output {path}: folder {parent} is not writable")


def _write_savedmodel(serve, path: str, spec, model) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[spec])
    archive.write_out(path, verbose=False)


def _tflite_bytes(serve, model, spec, float16: bool) -> bytes:
    import tensorflow as tf

    # Converting from a SavedModel keeps the signature's input/output names (images, classes, probabilities).
    with tempfile.TemporaryDirectory() as tmp:
        _write_savedmodel(serve, os.path.join(tmp, "sm"), spec, model)
        converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "sm"))
        if float16:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def _require_tf2onnx():
    try:
        import onnx  # noqa: F401
        import tf2onnx
    except ImportError:
        raise FcnsegError(f"--format onnx needs the tf2onnx and onnx packages: {INSTALL_HINT}") from None
    return tf2onnx


def _floor_mod(ctx, node, name, args):
    """tf2onnx converts integer FloorMod as truncating x - (x / y) * y, wrong for negative x.

    The models pad H and W with ``(-H) % 32``, so with the bug a 48-pixel side
    is cropped to 32 instead of padded to 64 and predictions shift. ONNX ``Mod``
    with fmod=0 has floor semantics for integers; floats keep tf2onnx's own handler.
    """
    from onnx import TensorProto
    from tf2onnx.onnx_opset.math import FloorMod

    if ctx.get_dtype(node.input[0]) in (TensorProto.INT32, TensorProto.INT64):
        node.type = "Mod"
        node.domain = ""
        node.set_attr("fmod", 0)
        return node
    return FloorMod.version_7(ctx, node)


def _onnx_bytes(serve, spec, opset: int, meta: dict) -> bytes:
    import tensorflow as tf

    tf2onnx = _require_tf2onnx()
    traced = tf.function(serve, input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(traced, input_signature=[spec], opset=opset,
                                             custom_op_handlers={"FloorMod": (_floor_mod, [])})
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fcnseg", json.dumps(meta)
    return proto.SerializeToString()
