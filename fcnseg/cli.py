"""The ``fcnseg`` command: parses options and calls the library, nothing more."""

from __future__ import annotations

import functools
import os
import sys
import time

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


def parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of numbers", param_hint=option) from None


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
def main() -> None:
    """Semantic segmentation of road scenes: FCN-8s/16s/32s and LinkNet on KITTI Road,
    Cityscapes, CamVid, your own folder of images + masks, or synthetic scenes."""


@main.command()
@source_options
@click.option("--model", default="linknet", show_default=True,
              type=click.Choice(["fcn8s", "fcn16s", "fcn32s", "linknet"]), help="Architecture.")
@click.option("--encoder", default="resnet18", show_default=True, type=click.Choice(["resnet18", "resnet34"]),
              help="LinkNet encoder.")
@click.option("--encoder-weights", default=None,
              help="'imagenet' (FCN: VGG16 via keras.applications) or a local weights file.")
@click.option("--width", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Filter-count multiplier; 1.0 is the paper's model.")
@click.option("--image-size", callback=lambda c, p, v: image_size_option(v), metavar="WxH",
              help="Training size, e.g. 480x360 (default: the source's).")
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--steps-per-epoch", default=None, type=click.IntRange(min=1),
              help="Steps per epoch (default: one pass over the training split).")
@click.option("--val-steps", default=None, type=click.IntRange(min=1),
              help="Validation batches per epoch (default: the whole validation split).")
@click.option("--optimizer", default="adam", show_default=True, type=click.Choice(["adam", "sgd", "rmsprop"]))
@click.option("--learning-rate", "--lr", "learning_rate", default=1e-3, show_default=True,
              type=click.FloatRange(min=0, min_open=True))
@click.option("--momentum", default=0.9, show_default=True, type=float, help="SGD/RMSprop momentum.")
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Decoupled weight decay.")
@click.option("--schedule", default="constant", show_default=True,
              type=click.Choice(["constant", "poly", "step", "onecycle"]), help="Learning-rate schedule.")
@click.option("--class-weights", default=None, metavar="W0,W1,...",
              help="Per-class loss weights, one per class (e.g. from `fcnseg check-labels`).")
@click.option("--no-augment", is_flag=True, help="Train without random scale/crop/flip/colour jitter.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--run-dir", default=None, type=click.Path(),
              help="Where checkpoints, config and TensorBoard logs go (default: runs/DATE-TIME-MODEL).")
@click.option("--save-every", default=200, show_default=True, type=click.IntRange(min=1),
              help="Steps between resumable state saves.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last saved state.")
@reports_errors
def train(data_source, data_dir, source_option, model, encoder, encoder_weights, width, image_size, epochs,
          batch_size, steps_per_epoch, val_steps, optimizer, learning_rate, momentum, weight_decay, schedule,
          class_weights, no_augment, seed, run_dir, save_every, resume):
    """Train a model; with no options, LinkNet on synthetic scenes (a few minutes on a CPU)."""
    from fcnseg.train import TrainConfig, train as run_training

    if resume and run_dir is None:
        raise click.BadParameter("--resume needs the --run-dir of the run to continue", param_hint="--resume")
    run_dir = run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{model}")
    config = TrainConfig(
        data_source=data_source, data_dir=data_dir, source_options=parse_source_options(source_option),
        model=model, encoder=encoder, encoder_weights=encoder_weights, width=width, image_size=image_size,
        epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch, val_steps=val_steps,
        optimizer=optimizer, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, class_weights=parse_floats(class_weights, "--class-weights"),
        augment=not no_augment, seed=seed, run_dir=run_dir, save_every=save_every,
    )
    best = run_training(config, resume=resume, log=click.echo)
    click.echo(f"done: best val mIoU {best.get('mean_iou', float('nan')):.4f}; checkpoints in {run_dir} "
               f"(tensorboard --logdir {run_dir})")


@main.command("sources")
def list_sources():
    """List the data sources this installation knows, with their classes."""
    from fcnseg import sources

    for name, module in sorted(sources.available().items()):
        try:
            import importlib

            mod = importlib.import_module(module.split(":")[0])
            table = mod.CLASSES
            click.echo(f"{name:12s} {table.num_classes:3d} classes  {', '.join(table.class_names)}")
        except Exception as e:  # a broken plugin must not hide the others
            click.echo(f"{name:12s} (cannot load: {e})")
