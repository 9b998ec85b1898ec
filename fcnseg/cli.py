"""The ``fcnseg`` command: parses options and calls the library, nothing more."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Callable

import click

from fcnseg import __version__
from fcnseg.errors import FcnsegError


def image_size_option(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 480x360") from None
    if w < 8 or h < 8:
        raise click.BadParameter(f"{value!r}: width and height must be at least 8 pixels")
    return w, h


def parse_source_options(values: tuple[str, ...]) -> dict:
    options = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--source-option")
        options[key.replace("-", "_")] = val
    return options


class FiniteFloat(click.FloatRange):
    """A number option that refuses nan and inf, which click's FLOAT accepts."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of numbers", param_hint=option) from None
    if not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter(f"{value!r} holds a number that is not finite", param_hint=option)
    return numbers


def parse_class_weights(value: str | None) -> tuple[float, ...] | None:
    """Numbers on the command line, or a JSON file: a list, or {"class_weights": [...]}."""
    if value is None or not os.path.isfile(value):
        return parse_floats(value, "--class-weights")
    import json

    try:
        with open(value) as f:
            data = json.load(f)
        weights = data["class_weights"] if isinstance(data, dict) else data
        numbers = tuple(float(w) for w in weights)
    except (OSError, ValueError, KeyError, TypeError):
        raise click.BadParameter(f"{value} holds no list of class weights", param_hint="--class-weights") from None
    if not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter(f"{value} holds a class weight that is not finite", param_hint="--class-weights")
    return numbers


def reports_errors(fn):
    """Turn library errors into one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FcnsegError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def source_options(fn):
    """--data-source / --data-dir / --source-option, shared by every command that reads data."""
    fn = click.option("--source-option", "source_option", multiple=True, metavar="KEY=VALUE",
                      help="Source-specific option, e.g. task=lane for kitti (repeatable).")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                      help="Root folder of the dataset (not needed for the synthetic source).")(fn)
    fn = click.option("--data-source", default="synthetic", show_default=True,
                      help="Built-in source name (see `fcnseg sources`) or path of a source .py file.")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fcnseg")
@click.option("--verbose", is_flag=True, envvar="FCNSEG_VERBOSE",
              help="Show TensorFlow's start-up and device messages (hidden by default; or FCNSEG_VERBOSE=1).")
def main(verbose: bool) -> None:
    """Semantic segmentation of road scenes: FCN-8s/16s/32s and LinkNet on KITTI Road,
    Cityscapes, CamVid, your own folder of images + masks, or synthetic scenes."""
    if not verbose:
        # CUDA probing, oneDNN and CPU-feature notes on every start: noise to a user.
        from fcnseg.quiet import quiet_tensorflow

        quiet_tensorflow()


@main.command()
@source_options
@click.option("--model", default="linknet", show_default=True,
              type=click.Choice(["fcn8s", "fcn16s", "fcn32s", "linknet"]), help="Architecture.")
@click.option("--encoder", default="resnet18", show_default=True, type=click.Choice(["resnet18", "resnet34"]),
              help="LinkNet encoder.")
@click.option("--encoder-weights", default=None,
              help="'imagenet' (FCN: VGG16 via keras.applications) or a local weights file.")
@click.option("--init-from", type=click.Path(dir_okay=False), default=None,
              help="Start from the weights of this fcnseg checkpoint (fine-tuning; same model and classes).")
@click.option("--width", default=1.0, show_default=True, type=FiniteFloat(min=0.01),
              help="Filter-count multiplier; 1.0 is the paper's model.")
@click.option("--image-size", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Training size, e.g. 480x360 (default: the source's).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Epochs to train  [default: 6; with --resume: the run's own, or this many in all]")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--steps-per-epoch", default=None, type=click.IntRange(min=1),
              help="Steps per epoch (default: one pass over the training split).")
@click.option("--val-steps", default=None, type=click.IntRange(min=1),
              help="Validation batches per epoch (default: the whole validation split).")
@click.option("--optimizer", default="adam", show_default=True, type=click.Choice(["adam", "sgd", "rmsprop"]))
@click.option("--learning-rate", "--lr", "learning_rate", default=1e-3, show_default=True,
              type=FiniteFloat(min=0, min_open=True))
@click.option("--momentum", default=0.9, show_default=True, type=FiniteFloat(0, 1), help="SGD/RMSprop momentum.")
@click.option("--weight-decay", default=0.0, show_default=True, type=FiniteFloat(min=0),
              help="Decoupled weight decay.")
@click.option("--schedule", default="constant", show_default=True,
              type=click.Choice(["constant", "poly", "step", "onecycle"]), help="Learning-rate schedule.")
@click.option("--class-weights", default=None, metavar="W0,W1,...|FILE",
              help="Per-class loss weights, one per class, or a JSON file holding them "
                   "(e.g. the class_weights.json that `fcnseg check-labels` writes).")
@click.option("--loss", default="ce", show_default=True,
              help="Loss: ce, dice, fbeta, focal, tversky, or a weighted sum such as 'ce+0.5*dice'. "
                   "Void pixels are ignored by all of them.")
@click.option("--fbeta", default=None, metavar="B|B0,B1,...",
              help="Beta of the fbeta loss: one value, or one per class (e.g. 2 for cars, 0.5 for road).")
@click.option("--focal-gamma", default=2.0, show_default=True, type=FiniteFloat(min=0))
@click.option("--accumulate", default=1, show_default=True, type=click.IntRange(min=1),
              help="Accumulate gradients over N batches before each update (large images, small memory).")
@click.option("--mixed-precision", type=click.Choice(["float16", "bfloat16"]), default=None,
              help="Compute in float16/bfloat16, keep variables, softmax and loss in float32 "
                   "(bfloat16 with an FCN on the CPU is refused: it crashes TF's oneDNN kernels).")
@click.option("--strategy", default="default", show_default=True,
              type=click.Choice(["default", "mirrored", "multiworker"]),
              help="tf.distribute strategy; multiworker reads the cluster from TF_CONFIG.")
@click.option("--deterministic", is_flag=True, help="Bit-identical reruns (TF op determinism; slower).")
@click.option("--jit", is_flag=True, help="XLA-compile the training step.")
@click.option("--max-minutes", default=None, type=FiniteFloat(min=0, min_open=True),
              help="Wall-clock budget: stop when spent (mid-epoch), then validate and save.")
@click.option("--image-every", default=1, show_default=True, type=click.IntRange(min=0),
              help="Epochs between TensorBoard image overlays (0: never).")
@click.option("--monitor", default="mean_iou", show_default=True,
              type=click.Choice(["mean_iou", "pixel_accuracy", "mean_accuracy"]),
              help="Validation figure that selects best.keras.")
@click.option("--no-augment", is_flag=True, help="Train without random scale/crop/flip/colour jitter.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--run-dir", default=None, type=click.Path(),
              help="Where checkpoints, config and TensorBoard logs go (default: runs/DATE-TIME-MODEL).")
@click.option("--save-every", default=200, show_default=True, type=click.IntRange(min=1),
              help="Steps between resumable state saves.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir from its last saved state, with its saved configuration "
                   "(only --epochs may change; a source .py file must be named again with --data-source).")
@reports_errors
def train(data_source, data_dir, source_option, model, encoder, encoder_weights, init_from, width, image_size,
          epochs,
          batch_size, steps_per_epoch, val_steps, optimizer, learning_rate, momentum, weight_decay, schedule,
          class_weights, loss, fbeta, focal_gamma, accumulate, mixed_precision, strategy, deterministic, jit,
          max_minutes, image_every, monitor, no_augment, seed, run_dir, save_every, resume):
    """Train a model; with no options, LinkNet on synthetic scenes (a few minutes on a CPU)."""
    from fcnseg.train import TrainConfig, train as run_training

    if resume and run_dir is None:
        raise click.BadParameter("--resume needs the --run-dir of the run to continue", param_hint="--resume")
    run_dir = run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{model}")
    config = TrainConfig(
        data_source=data_source, data_dir=data_dir, source_options=parse_source_options(source_option),
        model=model, encoder=encoder, encoder_weights=encoder_weights, init_from=init_from, width=width,
        image_size=image_size,
        epochs=epochs or TrainConfig.epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch, val_steps=val_steps,
        optimizer=optimizer, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, class_weights=parse_class_weights(class_weights),
        loss=loss, fbeta=parse_floats(fbeta, "--fbeta") or (1.0,), focal_gamma=focal_gamma,
        accumulate=accumulate, mixed_precision=mixed_precision, strategy=strategy, deterministic=deterministic,
        jit_compile=jit, max_minutes=max_minutes, image_every=image_every, monitor=monitor,
        augment=not no_augment, seed=seed, run_dir=run_dir, save_every=save_every,
    )
    explicit = explicit_options(click.get_current_context(), config)
    best = run_training(config, resume=resume, log=click.echo, resume_epochs=epochs, explicit=explicit)
    click.echo(f"done: best val mIoU {best.get('mean_iou', float('nan')):.4f}; checkpoints in {run_dir} "
               f"(tensorboard --logdir {run_dir})")


# train's parameters whose TrainConfig field has another name.
_TRAIN_FIELDS = {"source_option": "source_options", "jit": "jit_compile", "no_augment": "augment"}


def explicit_options(ctx: click.Context, config) -> dict:
    """The TrainConfig fields the user set on the command line (or by environment), with their values."""
    from click.core import ParameterSource

    fields = {f.name for f in dataclasses.fields(config)}
    named = [_TRAIN_FIELDS.get(name, name) for name in ctx.params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    return {name: getattr(config, name) for name in named if name in fields}


@main.command("check-labels")
@source_options
@click.option("--split", default="all", show_default=True, type=click.Choice(["train", "val", "all"]),
              help="Split to check; all = train and val.")
@click.option("--previews", "previews_dir", type=click.Path(file_okay=False), default=None,
              help="Write blended previews (image + colour-coded labels + legend) to this folder.")
@click.option("--num-previews", default=8, show_default=True, type=click.IntRange(min=0),
              help="How many previews, spread over the checked samples.")
@click.option("--weights-out", type=click.Path(dir_okay=False), default=None,
              help="Write the class histogram and median-frequency weights as JSON "
                   "(for `fcnseg train --class-weights FILE`).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Files read in parallel (default: CPU cores, at most 8).")
@reports_errors
def check_labels(data_source, data_dir, source_option, split, previews_dir, num_previews, weights_out, workers):
    """Check every label pixel, the image/label pairing and sizes; print a class histogram.

    One line per problem (path: reason: details), a summary per split, then the per-class
    pixel counts and median-frequency class weights. Exit status 0 when every label is
    valid, 1 otherwise.
    """
    from fcnseg import sources
    from fcnseg.check_labels import check_labels as run_check, check_weights_out, write_weights

    if weights_out:
        check_weights_out(weights_out)
    source = sources.load(data_source, data_dir, collect_orphans=True, **parse_source_options(source_option))
    report = run_check(source, ("train", "val") if split == "all" else (split,), previews_dir=previews_dir,
                       num_previews=num_previews, workers=workers,
                       progress=lambda n: click.progressbar(length=n, label="checking", file=sys.stderr))
    for line in report.lines():
        click.echo(line)
    if report.previews:
        click.echo(f"wrote {len(report.previews)} previews to {previews_dir}")
    if weights_out:
        write_weights(report, weights_out)
        click.echo(f"wrote class weights to {weights_out}")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A .keras checkpoint written by `fcnseg train` (e.g. RUN_DIR/best.keras).")
@source_options
@click.option("--split", default="val", show_default=True, help="Split to evaluate (val, test, train, ...).")
@click.option("--size", "size", default="train", show_default=True, type=click.Choice(["train", "native"]),
              help="Run the model at the checkpoint's training size (probabilities resized back to each "
                   "label) or at the images' native size.")
@click.option("--window", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Sliding-window inference with WxH tiles at native size (for images larger than the "
                   "training size).")
@click.option("--overlap", default=1 / 3, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Fraction of a window shared with its neighbour.")
@click.option("--flip", is_flag=True, help="Average with the prediction of the horizontally flipped image.")
@click.option("--beta", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Beta of the per-class F-beta column.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Also write every figure and the confusion matrix to this JSON file.")
@reports_errors
def evaluate(checkpoint, data_source, data_dir, source_option, split, size, window, overlap, flip, beta, output):
    """Per-class IoU, accuracy, precision and F-beta of a checkpoint on a split (void ignored),
    from one confusion matrix over the whole split at label resolution; MaxF/AP for binary tasks."""
    from fcnseg.evaluate import EvaluateConfig, evaluate as run_evaluate, format_table

    config = EvaluateConfig(checkpoint=checkpoint, data_source=data_source, data_dir=data_dir,
                            source_options=parse_source_options(source_option), split=split, size=size,
                            window=window, overlap=overlap, flip=flip, beta=beta, output=output)
    result = run_evaluate(config, log=click.echo,
                          progress=lambda n: click.progressbar(length=n, label="evaluating", file=sys.stderr))
    click.echo(format_table(result))
    if output:
        click.echo(f"wrote {output}")


@main.command("sources")
def list_sources():
    """List the data sources this installation knows, with their classes."""
    from fcnseg import sources

    for name, module in sorted(sources.available().items()):
        try:
            import importlib

            mod = importlib.import_module(module.split(":")[0])
            table = getattr(mod, "CLASSES", None)
            if table is None:  # e.g. folder: the classes come with the data
                note = getattr(mod, "CLASSES_NOTE", "classes defined by the data at run time")
                click.echo(f"{name:12s}   - classes  {note}")
                continue
            click.echo(f"{name:12s} {table.num_classes:3d} classes  {', '.join(table.class_names)}")
        except Exception as e:  # a broken plugin must not hide the others
            click.echo(f"{name:12s} (cannot load: {e})")


def parse_pairs(values: tuple[str, ...], option: str, parse: Callable[[str], object]) -> tuple:
    """CLASS=VALUE items -> ((class, parse(value)), ...); the library resolves class names."""
    pairs = []
    for item in values:
        name, sep, value = item.partition("=")
        try:
            pairs.append((name.strip(), parse(value.strip())))
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not in the form the help shows", param_hint=option)
    return tuple(pairs)


def _morphology_value(value: str) -> tuple[str, int]:
    op, _, size = value.partition(":")
    return op, int(size or 3)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A .keras checkpoint written by `fcnseg train` (e.g. RUN_DIR/best.keras).")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False),
              help="Where NAME_label.png, NAME_color.png and NAME_overlay.png go (created if missing).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images (or sliding-window tiles) per model call.")
@click.option("--window", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Predict images larger than WxH in overlapping WxH tiles, averaging probabilities "
                   "(default: the whole image at once).")
@click.option("--overlap", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Fraction of a window shared with its neighbour.")
@click.option("--flip", is_flag=True, help="Test-time augmentation: average with the horizontally flipped image.")
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Weight of the class colour in the overlay.")
@click.option("--threshold", multiple=True, metavar="CLASS=P",
              help="A class whose probability is below P cannot win, e.g. road=0.7 (repeatable; "
                   "CLASS is a name or train id). Pixels no class passes become void.")
@click.option("--morphology", multiple=True, metavar="CLASS=OP:K",
              help="erode, dilate, open or close the mask of CLASS with a KxK square, e.g. car=open:5 "
                   "(repeatable, applied in order after the thresholds).")
@click.option("--static-mask", type=click.Path(dir_okay=False), default=None,
              help="PNG of the images' size; its non-zero pixels are forced to --static-mask-class "
                   "(e.g. the camera hood).")
@click.option("--static-mask-class", default="void", show_default=True,
              help="Class name, train id or 'void' for the --static-mask pixels.")
@reports_errors
def predict(checkpoint, inputs, output_dir, batch_size, window, overlap, flip, alpha, threshold, morphology,
            static_mask, static_mask_class):
    """Segment images, folders, globs or videos (frame by frame) with a checkpoint.

    Writes three PNGs per image or video frame: the label (uint8 train ids, void = the
    checkpoint's ignore label), the colour mask and the overlay. Video frames are named
    VIDEO-STEM_FRAME (6 digits). Unreadable inputs are reported and skipped; the exit status
    is then 1. Each PNG is written to a temporary name and renamed (a symlink named like an
    output is replaced, never followed).
    """
    from fcnseg.predict import PredictConfig, predict as run_predict

    config = PredictConfig(
        checkpoint=checkpoint, inputs=inputs, output_dir=output_dir, batch_size=batch_size, window=window,
        overlap=overlap, flip=flip, alpha=alpha, thresholds=parse_pairs(threshold, "--threshold", float),
        morphology=tuple((c, op, k) for c, (op, k) in parse_pairs(morphology, "--morphology", _morphology_value)),
        static_mask=static_mask, static_class=static_mask_class,
    )
    result = run_predict(config, log=lambda m: click.echo(m, err=True),
                         progress=lambda n: click.progressbar(length=n, label="predicting", file=sys.stderr))
    if result.written:
        click.echo(f"wrote {result.written} x 3 PNGs to {output_dir}: "
                   f"{1000 * result.model_seconds / result.written:.1f} ms per image (model + post-processing), "
                   f"{1000 * result.total_seconds / result.written:.1f} ms end to end")
    if result.failed:
        raise FcnsegError(f"{len(result.failed)} input(s) could not be read: {', '.join(result.failed[:5])}"
                          + (" ..." if len(result.failed) > 5 else ""))


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A .keras checkpoint written by `fcnseg train`.")
@click.option("--format", "fmt", required=True, type=click.Choice(["savedmodel", "tflite", "onnx"]),
              help="savedmodel: a folder for TF Serving; tflite: a .tflite file; onnx: a .onnx file "
                   '(needs pip install "fcnseg[export]").')
@click.option("--output", required=True, type=click.Path(),
              help="Folder (savedmodel, e.g. models/fcnseg/1 for TF Serving) or file to write.")
@click.option("--image-size", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Fix the input size. TFLite always has a fixed (1, H, W, 3) input: default the "
                   "checkpoint's training size. SavedModel and ONNX default to any batch and size.")
@click.option("--float16", is_flag=True, help="TFLite: store weights as float16 (half the size).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=13), help="ONNX opset.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --output (kept until the new model is complete; a folder only if it "
                   "holds a SavedModel).")
@reports_errors
def export(checkpoint, fmt, output, image_size, float16, opset, overwrite):
    """Export a checkpoint as a SavedModel, TFLite or ONNX model.

    Every format takes uint8 RGB images 'images' (B, H, W, 3) and returns 'classes' (int32 train
    ids, B x H x W) and 'probabilities' (float32 softmax, B x H x W x C).
    """
    from fcnseg.export import ExportConfig, export as run_export

    run_export(ExportConfig(checkpoint=checkpoint, format=fmt, output=output, image_size=image_size,
                            float16=float16, opset=opset, overwrite=overwrite), log=click.echo)


if __name__ == "__main__":
    main()
