"""The ``fcnseg`` command: parses options and calls the library, nothing more."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from typing import Callable

import click

from fcnseg import __version__
from fcnseg.errors import FcnsegError
from fcnseg.options import BOUNDS, CHOICES, default, describe_bounds


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
    """A number option that refuses nan and inf, which click's FLOAT accepts (bounds optional)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.min is None and self.max is None:
            self.name = "float"  # no "FLOAT RANGE" in --help for a number without bounds

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()

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
    fn = click.option("--data-source", default=default("data_source"), show_default=True,
                      help="Built-in source name (see `fcnseg sources`) or path of a source .py file.")(fn)
    return fn


def scales_option(fn):
    """--scales: multi-scale test-time augmentation for predict and evaluate."""
    return click.option("--scales", default=None, metavar="S1,S2,...",
                        callback=lambda c, p, v: parse_floats(v, "--scales"),
                        help="Average the probabilities of the model run at these multiples of the --size/--scale "
                             "resolution, e.g. 0.75,1,1.25 (multi-scale test-time augmentation).")(fn)


def inference_size_options(fn):
    """--size / --scale: where predict, evaluate and export run the model (fcnseg.inference.resolution)."""
    fn = click.option("--scale", default=None, type=FiniteFloat(0, 16, min_open=True), metavar="S",
                      help="Run the model on each image scaled by S (e.g. 0.5) instead of --size; "
                           "probabilities are resized back.")(fn)
    fn = click.option("--size", "size", default="train", show_default=True, metavar="train|native|WxH",
                      help="Where the model runs: train = each image resized to the checkpoint's training "
                           "size (the scale it learned), native = as stored, WxH = that size; probabilities "
                           "are resized back (bilinear) to each image's size.")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fcnseg")
@click.option("--verbose", is_flag=True, envvar="FCNSEG_VERBOSE",
              help="Show TensorFlow's start-up and device messages (hidden by default; or FCNSEG_VERBOSE=1).")
def main(verbose: bool) -> None:
    """Semantic segmentation of road scenes: FCN, LinkNet, U-Net, FPN, PSPNet, DeepLabv3+ and
    SegFormer (`fcnseg models`) on KITTI Road, Cityscapes, CamVid, BDD100K, Lyft/CARLA, Carvana,
    your own folder of images + masks, or synthetic scenes."""
    if not verbose:
        # CUDA probing, oneDNN and CPU-feature notes on every start: noise to a user.
        from fcnseg.quiet import quiet_tensorflow

        quiet_tensorflow()


class TableChoice(click.Choice):
    """A click.Choice whose names come from a library table, read when first needed
    (``fcnseg.options.CHOICES``: the model and optimizer tables import TensorFlow)."""

    def __init__(self, field_name: str) -> None:
        self.field_name = field_name
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(name for name in CHOICES[self.field_name]() if name is not None)


def train_option(*decls: str, help: str = "", **kwargs):
    """A ``train`` option for the TrainConfig field named by the last of ``decls``: its default is
    the field's default, a choice field takes the names of its table, and a numeric field's
    help states its bounds (checked, like everything, by fcnseg.options.validate)."""
    name = decls[-1]
    if name in CHOICES:
        kwargs.setdefault("type", TableChoice(name))
    if name in BOUNDS:
        text, sep, extra = help.partition("  [")
        help = f"{text} ({describe_bounds(name)}){sep}{extra}".lstrip()
    if "default" not in kwargs:
        kwargs.update(default=default(name), show_default=not kwargs.get("is_flag"))
    return click.option(*decls[:-1], name, help=help, **kwargs)


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Start from the options in this JSON file (a run's config.json, or any subset of its keys); "
                   "options given on the command line override it, --source-option key by key.")
@source_options
@train_option("--model", "model", help="Architecture (`fcnseg models` lists each with its encoders).")
@train_option("--encoder", "encoder", help="Encoder (backbone); default: the model's own, the first that "
                                           "`fcnseg models` lists for it (linknet: resnet18, fcn8s/16s/32s: vgg16, unet/fpn: resnet34, pspnet/deeplabv3plus/fcn: resnet50, segformer: mit_b0).")
@train_option("--encoder-weights", "encoder_weights",
              help="'imagenet' (keras.applications, or keras-hub for resnet18/34: pip install \"fcnseg[hub]\") "
                   "or a local Keras weights file, saved keras.applications model or keras-hub preset folder.")
@train_option("--freeze-encoder-epochs", "freeze_encoder_epochs", type=int,
              help="Train with the encoder frozen (weights and batch-norm statistics) for the first N epochs.")
@train_option("--encoder-lr-mult", "encoder_lr_mult", type=FiniteFloat(),
              help="The encoder's learning rate is --lr times this (e.g. 0.1 for a pretrained encoder).")
@train_option("--init-from", "init_from", type=click.Path(dir_okay=False),
              help="Start from the weights of this fcnseg checkpoint (fine-tuning; same model and classes).")
@train_option("--width", "width", type=FiniteFloat(), help="Filter-count multiplier; 1.0 is the paper's model.")
@train_option("--input-norm", "input_norm",
              help="encoder: the encoder's fixed ImageNet preprocessing only; per-image: first move each image's "
                   "per-channel mean and std onto ImageNet's (removes overall brightness, contrast and colour cast, "
                   "for test images lit otherwise than training's, e.g. dusk). Part of the model: predict, evaluate "
                   "and export apply it.")
@train_option("--head", "head",
              help="softmax: one output per class; sigmoid: for a two-class source (background + one, e.g. Carvana) "
                   "one output, the probability of class 1 (smp's classes=1), trained with --loss bce, dice or "
                   "bce+dice; predict, evaluate and export read the head from the checkpoint.")
@train_option("--image-size", "image_size", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              default=None, help="Training size, e.g. 480x360 (default: the source's).")
@train_option("--epochs", "epochs", default=None, type=int,
              help=f"Epochs to train  [default: {default('epochs')}; with --resume: the run's own, or this many in all]")
@train_option("--batch-size", "batch_size", type=int)
@train_option("--steps-per-epoch", "steps_per_epoch", type=int,
              help="Steps per epoch (default: one pass over the training split).")
@train_option("--val-steps", "val_steps", type=int,
              help="Validation batches per epoch (default: the whole validation split).")
@train_option("--optimizer", "optimizer")
@train_option("--learning-rate", "--lr", "learning_rate", type=FiniteFloat())
@train_option("--momentum", "momentum", type=FiniteFloat(), help="SGD/RMSprop momentum.")
@train_option("--weight-decay", "weight_decay", type=FiniteFloat(), help="Decoupled weight decay.")
@train_option("--schedule", "schedule", help="Learning-rate schedule.")
@train_option("--class-weights", "class_weights", metavar="W0,W1,...|FILE",
              help="Per-class loss weights, one per class, or a JSON file holding them "
                   "(e.g. the class_weights.json that `fcnseg check-labels` writes).")
@train_option("--loss", "loss", help="Loss: ce, dice, fbeta, focal, lovasz, ohem, tversky, or a weighted sum such as "
                                     "'ce+0.5*dice' (--head sigmoid: bce, dice, 'bce+dice'). Void pixels are "
                                     "ignored by all of them.")
@train_option("--fbeta", "fbeta", default=None, metavar="B|B0,B1,...",
              help="Beta of the fbeta loss: one value, or one per class (e.g. 2 for cars, 0.5 for road)  "
                   f"[default: {','.join(f'{b:g}' for b in default('fbeta'))}]")
@train_option("--focal-gamma", "focal_gamma", type=FiniteFloat())
@train_option("--ema", "ema", type=FiniteFloat(), metavar="DECAY",
              help="Validate and save an exponential moving average of the weights with this decay "
                   "(e.g. 0.999; 0 = off); last_raw.keras keeps the raw weights.")
@train_option("--accumulate", "accumulate", type=int,
              help="Accumulate gradients over N batches before each update (large images, small memory).")
@train_option("--mixed-precision", "mixed_precision",
              help="Compute in float16/bfloat16, keep variables, softmax and loss in float32 "
                   "(bfloat16 with an FCN on the CPU is refused: it crashes TF's oneDNN kernels).")
@train_option("--strategy", "strategy", help="tf.distribute strategy; multiworker reads the cluster from TF_CONFIG.")
@train_option("--deterministic", "deterministic", is_flag=True,
              help="Bit-identical reruns (TF op determinism; slower; one-cycle follows steps, not the clock).")
@train_option("--jit", "jit_compile", is_flag=True, help="XLA-compile the training step.")
@train_option("--max-minutes", "max_minutes", type=FiniteFloat(),
              help="Wall-clock budget: stop when spent (mid-epoch), then validate and save.")
@train_option("--image-every", "image_every", type=int, help="Epochs between TensorBoard image overlays (0: never).")
@train_option("--monitor", "monitor", metavar="EXPR",
              help="Validation figure that selects best.keras: mean_iou, pixel_accuracy, mean_accuracy, dice, "
                   "lyft ((F0.5(road)+F2(vehicles))/2), a class's iou(C), dice(C), precision(C), recall(C), "
                   "fbeta(C,BETA), or a weighted sum such as 'fbeta(road,0.5)+fbeta(vehicles,2)'.")
@click.option("--no-augment", is_flag=True, help="Train without random scale/crop/flip/colour jitter.")
@train_option("--augment-preset", "augment_preset",
              help="How strong the augmentation is: default; strong (wider brightness/contrast/saturation/gamma "
                   "jitter, for test images lit otherwise than training's); strong-wide (strong, and random scale "
                   "0.5-2.0 instead of 0.75-1.25).")
@train_option("--seed", "seed", type=int)
@train_option("--run-dir", "run_dir", default=None, type=click.Path(),
              help="Where checkpoints, config and TensorBoard logs go (default: runs/DATE-TIME-MODEL).")
@train_option("--save-every", "save_every", type=int, help="Steps between resumable state saves.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir from its last saved state, with its saved configuration "
                   "(only --epochs may change; a source .py file must be named again with --data-source).")
@reports_errors
def train(config_file: str | None, resume: bool, **_params) -> None:
    """Train a model; with no options, LinkNet on synthetic scenes (a few minutes on a CPU)."""
    # The options are read through given_options: only those the user named override
    # the --config file (or TrainConfig's defaults, which are the options' defaults).
    from fcnseg.options import TrainConfig, read_config_file, with_overrides
    from fcnseg.train import train as run_training

    given = given_options(click.get_current_context())
    run_dir = given.get("run_dir")
    if resume:
        if run_dir is None:
            raise click.BadParameter("--resume needs the --run-dir of the run to continue", param_hint="--resume")
        if config_file:
            raise click.BadParameter("a resumed run keeps its own config.json; start a new --run-dir to use "
                                     "--config", param_hint="--config")
        config = TrainConfig(run_dir=run_dir)
    else:
        values = with_overrides(read_config_file(config_file) if config_file else {}, given)
        values.setdefault("run_dir", os.path.join(
            "runs", time.strftime("%Y%m%d-%H%M%S") + f"-{values.get('model', TrainConfig.model)}"))
        config = TrainConfig(**values)
    best = run_training(config, resume=resume, log=click.echo, resume_epochs=given.get("epochs"), explicit=given)
    click.echo(f"done: best val mIoU {best.get('mean_iou', float('nan')):.4f}; checkpoints in {config.run_dir} "
               f"(tensorboard --logdir {config.run_dir})")


# train's parameters that need converting into their TrainConfig field.
_TRAIN_FIELDS = {
    "source_option": ("source_options", parse_source_options),
    "no_augment": ("augment", lambda flag: not flag),
    "class_weights": ("class_weights", parse_class_weights),
    "fbeta": ("fbeta", lambda value: parse_floats(value, "--fbeta")),
}


def given_options(ctx: click.Context) -> dict:
    """The TrainConfig fields the user set on the command line (or by environment), with their values."""
    from click.core import ParameterSource

    from fcnseg.options import FIELDS

    given = {}
    for name, value in ctx.params.items():
        if ctx.get_parameter_source(name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        field_name, convert = _TRAIN_FIELDS.get(name, (name, lambda v: v))
        if field_name in FIELDS:
            given[field_name] = convert(value)
    return given


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
@inference_size_options
@click.option("--window", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Sliding-window inference with WxH tiles at native size (for images larger than the "
                   "training size; replaces --size).")
@click.option("--overlap", default=1 / 3, show_default=True, type=FiniteFloat(0, 1, max_open=True),
              help="Fraction of a window shared with its neighbour.")
@click.option("--flip", is_flag=True, help="Average with the prediction of the horizontally flipped image.")
@scales_option
@click.option("--beta", default=1.0, show_default=True, type=FiniteFloat(min=0, min_open=True),
              help="Beta of the per-class F-beta column.")
@click.option("--monitor", default=None, metavar="EXPR",
              help="Also report this figure, as train's --monitor spells it (e.g. lyft, dice(car)).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Also write every figure and the confusion matrix to this JSON file.")
@reports_errors
def evaluate(checkpoint, data_source, data_dir, source_option, split, size, scale, window, overlap, flip, scales,
             beta, monitor, output):
    """Per-class IoU, accuracy, precision, F-beta and Dice of a checkpoint on a split (void ignored),
    from one confusion matrix over the whole split at label resolution; MaxF/AP for binary tasks."""
    from fcnseg.evaluate import EvaluateConfig, evaluate as run_evaluate, format_table

    config = EvaluateConfig(checkpoint=checkpoint, data_source=data_source, data_dir=data_dir,
                            source_options=parse_source_options(source_option), split=split, size=size,
                            scale=scale, window=window, overlap=overlap, flip=flip, scales=scales, beta=beta,
                            monitor=monitor, output=output)
    result = run_evaluate(config, log=click.echo,
                          progress=lambda n: click.progressbar(length=n, label="evaluating", file=sys.stderr))
    click.echo(format_table(result))
    if output:
        click.echo(f"wrote {output}")


@main.command("models")
@click.option("--params", is_flag=True,
              help="Also count parameters (builds every listed network at width 1: slow, seconds per network).")
@click.option("--num-classes", default=11, show_default=True, type=click.IntRange(min=1),
              help="Classes of the models whose parameters --params counts.")
@click.option("--only", multiple=True, metavar="NAME",
              help="List only this model or encoder (repeatable), e.g. --only linknet --only resnet18.")
@reports_errors
def list_models(params: bool, num_classes: int, only: tuple[str, ...]) -> None:
    """List the models (with their default and valid encoders) and the encoder table: feature
    channels, where the ImageNet weights come from and the input preprocessing they expect."""
    from fcnseg.catalog import encoder_rows, format_catalog, model_rows
    from fcnseg.models import ENCODERS, MODELS

    unknown = [name for name in only if name not in MODELS and name not in ENCODERS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: no such model or encoder (see `fcnseg models`)",
                                 param_hint="--only")
    click.echo(format_catalog(model_rows(params, num_classes, only), encoder_rows(params, only)))


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
@inference_size_options
@click.option("--window", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Predict images larger than WxH in overlapping WxH tiles at native size, averaging "
                   "probabilities (replaces --size; default: the whole image at once).")
@click.option("--overlap", default=0.5, show_default=True, type=FiniteFloat(0, 1, max_open=True),
              help="Fraction of a window shared with its neighbour.")
@click.option("--flip", is_flag=True, help="Test-time augmentation: average with the horizontally flipped image.")
@scales_option
@click.option("--alpha", default=0.5, show_default=True, type=FiniteFloat(0, 1),
              help="Weight of the class colour in the overlay.")
@click.option("--threshold", multiple=True, metavar="CLASS=P",
              help="A class whose probability is below P cannot win, e.g. road=0.7 (repeatable; "
                   "CLASS is a name or train id). Pixels no class passes become void.")
@click.option("--claim", multiple=True, metavar="CLASS=P",
              help="CLASS takes every pixel where its probability is at least P, even where another class has "
                   "more, e.g. vehicles=0.3 (repeatable, after the thresholds; a later claim wins an overlap).")
@click.option("--morphology", multiple=True, metavar="CLASS=OP:K",
              help="erode, dilate, open or close the mask of CLASS with a KxK square, e.g. car=open:5 "
                   "(repeatable, applied in order after the thresholds and claims).")
@click.option("--static-mask", type=click.Path(dir_okay=False), default=None,
              help="PNG of the images' size; its non-zero pixels are forced to --static-mask-class "
                   "(e.g. the camera hood).")
@click.option("--static-mask-class", default="void", show_default=True,
              help="Class name, train id or 'void' for the --static-mask pixels.")
@reports_errors
def predict(checkpoint, inputs, output_dir, batch_size, size, scale, window, overlap, flip, scales, alpha,
            threshold, claim, morphology, static_mask, static_mask_class):
    """Segment images, folders, globs or videos (frame by frame) with a checkpoint.

    Writes three PNGs per image or video frame: the label (uint8 train ids, void = the
    checkpoint's ignore label), the colour mask and the overlay. Video frames are named
    VIDEO-STEM_FRAME (6 digits). Unreadable inputs are reported and skipped; the exit status
    is then 1. Each PNG is written to a temporary name and renamed (a symlink named like an
    output is replaced, never followed).
    """
    from fcnseg.predict import PredictConfig, predict as run_predict

    config = PredictConfig(
        checkpoint=checkpoint, inputs=inputs, output_dir=output_dir, batch_size=batch_size, size=size, scale=scale,
        window=window, overlap=overlap, flip=flip, scales=scales, alpha=alpha,
        thresholds=parse_pairs(threshold, "--threshold", float),
        claims=parse_pairs(claim, "--claim", float),
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
@inference_size_options
@click.option("--float16", is_flag=True, help="TFLite: store weights as float16 (half the size).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=13), help="ONNX opset.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --output (kept until the new model is complete; a folder only if it "
                   "holds a SavedModel).")
@reports_errors
def export(checkpoint, fmt, output, image_size, size, scale, float16, opset, overwrite):
    """Export a checkpoint as a SavedModel, TFLite or ONNX model.

    Every format takes uint8 RGB images 'images' (B, H, W, 3) and returns 'classes' (int32 train
    ids, B x H x W) and 'probabilities' (float32 softmax, B x H x W x C; a --head sigmoid
    checkpoint gives C = 2: 1 - p and p, the sigmoid probability of its foreground class), at the
    input's size. By default the graph runs the model as predict does, each image resized to the
    training size and the probabilities resized back; --size native exports the raw model.
    """
    from fcnseg.export import ExportConfig, export as run_export

    run_export(ExportConfig(checkpoint=checkpoint, format=fmt, output=output, image_size=image_size,
                            size=size, scale=scale, float16=float16, opset=opset, overwrite=overwrite),
               log=click.echo)


@main.command("import-preset")
@click.argument("preset")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--classes", "dataset", default="auto", show_default=True,
              type=click.Choice(["auto", "cityscapes", "ade20k", "generic"]),
              help="Class table to store: auto reads cityscapes/ade20k from the preset's name.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@reports_errors
def import_preset(preset, output, dataset, overwrite):
    """Turn a keras-hub SegFormer preset into an fcnseg checkpoint.

    PRESET is a keras-hub preset name (segformer_b0_cityscapes_1024, segformer_b0_ade20k_512, ...;
    needs internet) or a local preset directory (written by keras-hub's save_to_preset). OUTPUT is
    a .keras checkpoint that predict, evaluate and export take.
    """
    from fcnseg.presets import import_preset as run_import

    meta = run_import(preset, output, dataset, overwrite)
    classes = len(meta["source"]["classes"]["rows"])
    click.echo(f"wrote {output}: {meta['model']}, {meta['source']['name']} classes ({classes} rows), "
               f"trained at {'x'.join(map(str, meta['source']['image_size']))}")


if __name__ == "__main__":
    main()
