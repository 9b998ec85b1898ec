"""Training options: :class:`TrainConfig`, the names each choice accepts, and the one check of a config.

Everything that reads options goes through here: ``fcnseg train``'s flags (whose
defaults are TrainConfig's field defaults and whose choices are the tables below),
``--config FILE`` (a JSON file of ``config.json``'s schema), ``--resume`` (the
run's own ``config.json``) and Python callers of :func:`fcnseg.train.train`. The
names come from the tables that implement them (``fcnseg.models.MODELS``, the
encoder table, ``fcnseg.optimizers.OPTIMIZERS`` / ``SCHEDULES``), read only
when asked for, because importing them loads TensorFlow. This module imports
nothing heavy, so the CLI can build its options from it at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from fcnseg.errors import FcnsegError


# The paper's FCNs on VGG16 (not "fcn", torchvision's FCN-ResNet on a dilated encoder).
VGG_FCNS = ("fcn8s", "fcn16s", "fcn32s")

@dataclass(frozen=True)
class TrainConfig:
    data_source: str = "synthetic"  # built-in name, plugin name or path of a source .py file
    data_dir: str | None = None  # dataset root (not needed by the synthetic source)
    source_options: dict = field(default_factory=dict)  # extra source options, e.g. {"task": "lane"}
    model: str = "linknet"  # a key of fcnseg.models.MODELS
    encoder: str | None = None  # a key of fcnseg.models.encoders.ENCODERS; None = the model's default
    encoder_weights: str | None = None  # None, "imagenet", a weights file, saved model or keras-hub preset dir
    freeze_encoder_epochs: int = 0  # encoder frozen (weights and BN statistics) for the first N epochs
    encoder_lr_mult: float = 1.0  # the encoder's learning rate is the optimizer's times this
    init_from: str | None = None  # start from this fcnseg checkpoint's weights (fine-tuning)
    width: float = 1.0  # filter-count multiplier (1.0 = the paper's model)
    input_norm: str = "encoder"  # a key of fcnseg.models.encoders.INPUT_NORMS: per-image colour standardisation
    head: str = "softmax"  # a key of fcnseg.heads.HEADS: softmax over C classes, or sigmoid (one logit, 2 classes)
    image_size: tuple[int, int] | None = None  # (W, H) to train at; None = the source's default
    epochs: int = 6
    batch_size: int = 8
    steps_per_epoch: int | None = None  # None = one pass over the training split
    val_steps: int | None = None  # None = the whole validation split
    optimizer: str = "adam"  # a key of fcnseg.optimizers.OPTIMIZERS
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD / RMSprop momentum
    weight_decay: float = 0.0  # decoupled weight decay
    schedule: str = "constant"  # a key of fcnseg.optimizers.SCHEDULES
    loss: str = "ce"  # weighted sum of ce | dice | fbeta | focal | tversky, e.g. "ce+0.5*dice"
    class_weights: tuple[float, ...] | None = None  # per-class loss weights (e.g. median frequency)
    fbeta: tuple[float, ...] = (1.0,)  # F-beta loss: one beta or one per class
    focal_gamma: float = 2.0  # focal loss focusing parameter
    ema: float = 0.0  # decay of the weights' moving average that is validated and saved (0 = off)
    accumulate: int = 1  # apply gradients every N batches (large images on small memory)
    mixed_precision: str | None = None  # None | float16 | bfloat16 (softmax and loss stay float32)
    strategy: str = "default"  # default | mirrored | multiworker (reads TF_CONFIG)
    deterministic: bool = False  # enable TF op determinism (bit-identical reruns, slower)
    jit_compile: bool = False  # XLA-compile the training step
    max_minutes: float | None = None  # wall-clock budget: stop mid-epoch when spent, then validate and save
    image_every: int = 1  # epochs between TensorBoard image overlays (0 = never)
    num_images: int = 4  # validation samples shown in TensorBoard
    augment: bool = True  # random scale/crop/flip + photometric jitter on training images
    augment_preset: str = "default"  # a key of fcnseg.data.AUGMENTS: how strong that augmentation is
    seed: int = 0
    run_dir: str = "runs/run"
    save_every: int = 200  # steps between resumable state saves
    monitor: str = "mean_iou"  # validation figure that picks best.keras

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        for key in ("image_size", "class_weights", "fbeta"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if data.get("model") in VGG_FCNS and data.get("encoder") == "resnet18":
            data["encoder"] = None  # runs saved before the encoder table recorded LinkNet's default beside an FCN
        return cls(**data)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = (None, "float16", "bfloat16")
# --monitor's named figures; it also takes per-class terms and weighted sums (fcnseg.monitor).
MONITORS = ("mean_iou", "pixel_accuracy", "mean_accuracy", "dice", "lyft")


def _models() -> tuple:
    from fcnseg.models import MODELS

    return tuple(MODELS)


def _encoders() -> tuple:
    from fcnseg.models.encoders import ENCODERS

    return tuple(ENCODERS)


def _input_norms() -> tuple:
    from fcnseg.models.encoders import INPUT_NORMS

    return tuple(INPUT_NORMS)


def _heads() -> tuple:
    from fcnseg.heads import HEADS

    return tuple(HEADS)


def _augments() -> tuple:
    from fcnseg.data import AUGMENTS

    return tuple(AUGMENTS)


def _optimizers() -> tuple:
    from fcnseg.optimizers import OPTIMIZERS

    return tuple(OPTIMIZERS)


def _schedules() -> tuple:
    from fcnseg.optimizers import SCHEDULES

    return tuple(SCHEDULES)


# The fields that take one of a set of names, and where the names come from.
CHOICES: dict[str, Callable[[], tuple]] = {
    "model": _models, "encoder": _encoders, "input_norm": _input_norms, "head": _heads, "optimizer": _optimizers, "schedule": _schedules,
    "augment_preset": _augments, "strategy": lambda: STRATEGIES, "mixed_precision": lambda: PRECISIONS}

# Bounds of the numeric fields: (lowest, lowest excluded, highest); image_size bounds each side.
BOUNDS: dict[str, tuple[float, bool, float | None]] = {
    "width": (0.01, False, None), "learning_rate": (0, True, None), "momentum": (0, False, 1),
    "weight_decay": (0, False, None), "focal_gamma": (0, False, None), "max_minutes": (0, True, None),
    "epochs": (1, False, None), "batch_size": (1, False, None), "steps_per_epoch": (1, False, None),
    "val_steps": (1, False, None), "accumulate": (1, False, None), "image_every": (0, False, None),
    "num_images": (0, False, None), "save_every": (1, False, None), "image_size": (8, False, None),
    "freeze_encoder_epochs": (0, False, None), "encoder_lr_mult": (0, False, None),
    "ema": (0, False, 0.9999)}

# Options whose name is not "--" + the field's name with dashes.
_OPTION_NAMES = {"learning_rate": "--lr", "jit_compile": "--jit", "augment": "--no-augment",
                 "source_options": "--source-option"}
# Free to change on --resume: where the run is and how long it goes on.
_RESUME_FREE = ("run_dir", "epochs")
# Written to config.json beside the fields, read back by nothing.
_RECORDED = ("resolved_image_size",)


def option_name(field_name: str) -> str:
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def default(field_name: str) -> Any:
    """TrainConfig's default for ``field_name`` (the CLI's default too)."""
    f = FIELDS[field_name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def describe_bounds(field_name: str) -> str:
    """The bounds of a numeric field in words, e.g. 'at least 1' (for --help)."""
    low, open_, high = BOUNDS[field_name]
    if high is not None:
        return f"{low:g} to {high:g}"
    return f"{'above' if open_ else 'at least'} {low:g}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What each annotation of TrainConfig accepts, and how to say it.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "a whole number"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "an object of name: value"),
    "tuple[int, int]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_int, v)),
                        "[width, height]"),
    "tuple[float, ...]": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_number, v)), "a list of numbers"),
}


def field_problem(name: str, value) -> str | None:
    """What is wrong with ``value`` for TrainConfig's field ``name`` (starting with the value), or None."""
    annotation = str(FIELDS[name].type)
    base = annotation.removesuffix(" | None")
    if value is None:
        return None if base != annotation else f"{value} is not allowed here; it takes {_KINDS[base][1]}"
    accepts, wanted = _KINDS[base]
    if not accepts(value):
        return f"{value!r} is not {wanted}"
    numbers = value if isinstance(value, (tuple, list)) else (value,) if _is_number(value) else ()
    if not all(math.isfinite(v) for v in numbers):
        return f"{_shown(name, value)} is not a finite number"
    if name in CHOICES:
        names = CHOICES[name]()
        if value not in names:
            return f"{value!r} is unknown; choose one of {', '.join(str(n) for n in names if n is not None)}"
    if name == "monitor":  # an expression, not one of a set of names
        from fcnseg.monitor import problem

        return problem(value)
    if name in BOUNDS:
        low, open_, high = BOUNDS[name]
        if any(v < low or (open_ and v == low) or (high is not None and v > high) for v in numbers):
            return f"{_shown(name, value)} is out of range: {describe_bounds(name)}"
    return None


def validate(config: TrainConfig) -> None:
    """Refuse a configuration that cannot train, with one line naming the option; writes nothing."""
    for name in FIELDS:
        problem = field_problem(name, getattr(config, name))
        if problem:
            raise FcnsegError(f"{option_name(name)} {problem}")
    from fcnseg.models import encoder_refusal

    refusal = fcn_bfloat16_refusal(config.model, config.mixed_precision) or encoder_refusal(config.model,
                                                                                             config.encoder)
    if refusal:
        raise FcnsegError(refusal)
    from fcnseg.losses import parse_spec

    if not all(math.isfinite(weight) for weight, _ in parse_spec(config.loss, config.head)):
        raise FcnsegError(f"--loss {config.loss!r}: a weight is not a finite number")


def fcn_bfloat16_refusal(model: str, mixed_precision: str | None) -> str | None:
    """Why ``model`` cannot train under ``mixed_precision`` here, or None when it can."""
    # Full-width FCN-8s/16s training under mixed_bfloat16 corrupted the heap in TF 2.21's oneDNN
    # CPU kernels ("malloc(): unaligned tcache chunk detected", SIGABRT/SIGSEGV on a 2-core Xeon
    # with AMX, 2026-11-25); LinkNet, narrow FCNs and TF_ENABLE_ONEDNN_OPTS=0 ran. A one-line
    # refusal beats a crash that can leave a half-finished run behind.
    if (mixed_precision != "bfloat16" or model not in VGG_FCNS
            or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"):
        return None
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    return (f"--mixed-precision bfloat16 with --model {model} on the CPU crashes TensorFlow's "
            "oneDNN kernels (heap corruption); train in float32, or set TF_ENABLE_ONEDNN_OPTS=0 "
            "(much slower)")


def read_config_file(path: str) -> dict:
    """The options in a JSON file of ``config.json``'s schema (``--config``), checked field by field."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise FcnsegError(f"--config {path}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:
        raise FcnsegError(f"--config {path} is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FcnsegError(f"--config {path} holds no JSON object of options (like a run's config.json)")
    for key, value in data.items():
        if key in _RECORDED:
            continue
        if key not in FIELDS:
            raise FcnsegError(f"--config {path}: unknown option {key!r} (the keys are those of a run's config.json)")
        problem = field_problem(key, value)
        if problem:
            raise FcnsegError(f"--config {path}: {key}: {problem}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in FIELDS}


def with_overrides(values: dict, given: dict) -> dict:
    """``values`` (e.g. from a --config file) with the options given on the command line on top;
    source options are merged name by name."""
    merged = dict(values) | given
    if "source_options" in given:
        merged["source_options"] = dict(values.get("source_options") or {}) | given["source_options"]
    return merged


def is_source_file(name: str) -> bool:
    """A ``--data-source`` that names a Python file (loading it runs its code)."""
    return name.endswith(".py") or os.sep in name


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with every path absolute, so ``--resume`` works from any folder."""
    def absolute(path):
        return os.path.abspath(path) if path else path

    weights = config.encoder_weights
    return dataclasses.replace(
        config, data_dir=absolute(config.data_dir), init_from=absolute(config.init_from),
        data_source=absolute(config.data_source) if is_source_file(config.data_source) else config.data_source,
        encoder_weights=absolute(weights) if weights and os.path.exists(weights) else weights)


def resumed_config(run_dir: str, explicit: dict, epochs: int | None) -> TrainConfig:
    """The configuration saved in ``run_dir``, checked against what the user named again."""
    path = os.path.join(run_dir, "config.json")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise FcnsegError(f"--run-dir {run_dir} exists and is not a folder")
    if not os.path.isfile(path):
        raise FcnsegError(f"--resume: {run_dir} holds no run to resume (no config.json)")
    try:
        with open(path) as f:
            saved = TrainConfig.from_json({k: v for k, v in json.load(f).items() if k in FIELDS})
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise FcnsegError(f"--resume: {path} is not a readable fcnseg configuration "
                          f"({type(e).__name__})") from None
    given = absolute_paths(dataclasses.replace(saved, **{k: v for k, v in explicit.items() if k in FIELDS}))
    ours = absolute_paths(saved)
    for key in sorted(set(explicit) & set(FIELDS) - set(_RESUME_FREE)):
        if _comparable(getattr(given, key)) != _comparable(getattr(ours, key)):
            raise FcnsegError(f"--resume: {option_name(key)} {_shown(key, getattr(given, key))} contradicts {path} "
                              f"({_shown(key, getattr(saved, key))}); a resumed run keeps its configuration, "
                              "start a new --run-dir to change it")
    if is_source_file(saved.data_source) and "data_source" not in explicit:
        raise FcnsegError(f"--resume: {path} names the source file {saved.data_source}, and loading it runs its "
                          f"code; pass --data-source {saved.data_source} again if you trust it")
    return dataclasses.replace(saved, epochs=saved.epochs if epochs is None else epochs, run_dir=run_dir)


def _comparable(value):
    return tuple(value) if isinstance(value, list) else value


def _shown(key: str, value) -> str:
    if key == "augment":
        return "(given)" if not value else "(not given)"
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)
