"""Training: composes a source, a model, a loss, an optimizer and the logging.

A run directory holds everything about one run::

    RUN_DIR/config.json     the resolved TrainConfig (what --resume reads back)
    RUN_DIR/best.keras      best checkpoint by the chosen validation metric
    RUN_DIR/last.keras      checkpoint after the latest epoch
    RUN_DIR/state/          optimizer + weights + step, every --save-every steps
    RUN_DIR/history.json    validation figures per epoch
    RUN_DIR/logs/{train,val}  TensorBoard event files
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fcnseg.errors import FcnsegError
from fcnseg.files import write_json


@dataclass(frozen=True)
class TrainConfig:
    data_source: str = "synthetic"  # built-in name, plugin name or path of a source .py file
    data_dir: str | None = None  # dataset root (not needed by the synthetic source)
    source_options: dict = field(default_factory=dict)  # extra source options, e.g. {"task": "lane"}
    model: str = "linknet"  # fcn8s | fcn16s | fcn32s | linknet
    encoder: str = "resnet18"  # LinkNet encoder: resnet18 | resnet34
    encoder_weights: str | None = None  # None, "imagenet" (FCN) or a local weights file
    init_from: str | None = None  # start from this fcnseg checkpoint's weights (fine-tuning)
    width: float = 1.0  # filter-count multiplier (1.0 = the paper's model)
    image_size: tuple[int, int] | None = None  # (W, H) to train at; None = the source's default
    epochs: int = 6
    batch_size: int = 8
    steps_per_epoch: int | None = None  # None = one pass over the training split
    val_steps: int | None = None  # None = the whole validation split
    optimizer: str = "adam"  # adam | sgd | rmsprop
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD / RMSprop momentum
    weight_decay: float = 0.0  # decoupled weight decay
    schedule: str = "constant"  # constant | poly | step | onecycle
    loss: str = "ce"  # weighted sum of ce | dice | fbeta | focal | tversky, e.g. "ce+0.5*dice"
    class_weights: tuple[float, ...] | None = None  # per-class loss weights (e.g. median frequency)
    fbeta: tuple[float, ...] = (1.0,)  # F-beta loss: one beta or one per class
    focal_gamma: float = 2.0  # focal loss focusing parameter
    accumulate: int = 1  # apply gradients every N batches (large images on small memory)
    mixed_precision: str | None = None  # None | float16 | bfloat16 (softmax and loss stay float32)
    strategy: str = "default"  # default | mirrored | multiworker (reads TF_CONFIG)
    deterministic: bool = False  # enable TF op determinism (bit-identical reruns, slower)
    jit_compile: bool = False  # XLA-compile the training step
    max_minutes: float | None = None  # wall-clock budget: stop mid-epoch when spent, then validate and save
    image_every: int = 1  # epochs between TensorBoard image overlays (0 = never)
    num_images: int = 4  # validation samples shown in TensorBoard
    augment: bool = True  # random scale/crop/flip + photometric jitter on training images
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
        return cls(**data)


OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("constant", "poly", "step", "onecycle")


def make_schedule(config: TrainConfig, total_steps: int, deadline: float | None = None):
    import keras

    lr = config.learning_rate
    if config.schedule == "constant":
        return lr
    if config.schedule == "poly":  # FCN / DeepLab habit: lr * (1 - t/T)^0.9
        return keras.optimizers.schedules.PolynomialDecay(lr, max(total_steps, 1), end_learning_rate=0.0, power=0.9)
    if config.schedule == "step":  # divide by 10 at 2/3 and again at 8/9 of training
        bounds = [max(1, int(total_steps * 2 / 3)), max(2, int(total_steps * 8 / 9))]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr / 10, lr / 100])
    if config.schedule == "onecycle":
        # XLA cannot compile a clock read (tf.timestamp), so under --jit the cycle follows steps only.
        clock = None if config.jit_compile else deadline
        return OneCycle(lr, max(total_steps, 2), clock, 60 * (config.max_minutes or 0))
    raise FcnsegError(f"--schedule {config.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")


def _one_cycle_class():
    import keras
    import tensorflow as tf

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        """Smith's one-cycle: cosine warm-up to ``max_lr`` over 30%, cosine anneal to ~0.

        With a ``deadline`` (Unix time) the cycle's progress is the larger of
        steps done and wall-clock spent, so a wall-clock budget that runs out
        before the planned steps (a slower or shared machine) still ends annealed.
        """

        def __init__(self, max_lr: float, total_steps: int, deadline: float | None = None,
                     budget_s: float = 0.0) -> None:
            self.max_lr, self.total_steps = max_lr, total_steps
            self.deadline, self.budget_s = deadline, budget_s

        def __call__(self, step):
            t = tf.cast(step, tf.float32) / self.total_steps
            if self.deadline and self.budget_s:
                spent = 1.0 - (self.deadline - tf.timestamp()) / self.budget_s
                t = tf.maximum(t, tf.cast(spent, tf.float32))
            warm = 0.3
            lo, hi = self.max_lr / 25.0, self.max_lr
            up = lo + (hi - lo) * (1 - tf.cos(math.pi * t / warm)) / 2
            down = hi / 1e4 + (hi - hi / 1e4) * (1 + tf.cos(math.pi * tf.minimum((t - warm) / (1 - warm), 1.0))) / 2
            return tf.where(t < warm, up, down)

        def get_config(self):
            return {"max_lr": self.max_lr, "total_steps": self.total_steps, "deadline": self.deadline,
                    "budget_s": self.budget_s}

    return OneCycle


def OneCycle(max_lr: float, total_steps: int, deadline: float | None = None,  # noqa: N802 - reads like a class
             budget_s: float = 0.0):
    return _one_cycle_class()(max_lr, total_steps, deadline, budget_s)


def make_optimizer(config: TrainConfig, total_steps: int, deadline: float | None = None):
    import keras

    if config.optimizer not in OPTIMIZERS:
        raise FcnsegError(f"--optimizer {config.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    lr = make_schedule(config, total_steps, deadline)
    common = {"weight_decay": config.weight_decay or None,
              "gradient_accumulation_steps": config.accumulate if config.accumulate > 1 else None}
    if config.optimizer == "adam":
        from fcnseg.optimizers import FusedAdam, FusedAdamW

        opt = FusedAdamW(lr, **common) if config.weight_decay else FusedAdam(lr, **common)
    elif config.optimizer == "sgd":
        opt = keras.optimizers.SGD(lr, momentum=config.momentum, **common)
    else:
        opt = keras.optimizers.RMSprop(lr, momentum=config.momentum, **common)
    if config.mixed_precision == "float16":
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def build_model(config: TrainConfig, num_classes: int):
    from fcnseg.models import MODELS

    if config.model not in MODELS:
        raise FcnsegError(f"--model {config.model!r} is unknown; choose one of {', '.join(MODELS)}")
    kwargs = {"encoder_weights": config.encoder_weights, "width": config.width}
    if config.model == "linknet":
        kwargs["encoder"] = config.encoder
    try:
        return MODELS[config.model](num_classes, **kwargs)
    except ValueError as e:  # bad encoder name or weights file: already a one-line message
        raise FcnsegError(str(e).splitlines()[0]) from e


def init_weights(model, path: str, classes) -> None:
    """Copy a checkpoint's weights into ``model``, refusing one of another shape or class count."""
    from fcnseg import checkpoint

    other, meta, table = checkpoint.load(path)
    if table.num_classes != classes.num_classes:
        raise FcnsegError(f"--init-from {path} predicts {table.num_classes} classes but the source has "
                          f"{classes.num_classes}; train a new model or use a matching checkpoint")
    mine, theirs = model.get_weights(), other.get_weights()
    if len(mine) != len(theirs) or any(a.shape != b.shape for a, b in zip(mine, theirs)):
        raise FcnsegError(f"--init-from {path} is a {meta.get('model')} of another shape than --model "
                          f"{model.name} (check --model, --encoder and --width)")
    model.set_weights(theirs)


STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = (None, "float16", "bfloat16")


def make_strategy(name: str):
    """The tf.distribute strategy; multiworker reads the cluster from TF_CONFIG."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise FcnsegError("--strategy multiworker needs the TF_CONFIG environment variable (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise FcnsegError(f"--strategy {name!r} is unknown; choose one of {', '.join(STRATEGIES)}")


def is_chief() -> bool:
    """True unless TF_CONFIG says this process is a non-chief worker."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster


def _validate(config: TrainConfig) -> None:
    if config.optimizer not in OPTIMIZERS:
        raise FcnsegError(f"--optimizer {config.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise FcnsegError(f"--schedule {config.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if config.strategy not in STRATEGIES:
        raise FcnsegError(f"--strategy {config.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    if config.mixed_precision not in PRECISIONS:
        raise FcnsegError(f"--mixed-precision {config.mixed_precision!r} is unknown; choose float16 or bfloat16")
    for name in ("width", "learning_rate", "momentum", "weight_decay", "focal_gamma", "max_minutes",
                 "class_weights", "fbeta"):
        value = getattr(config, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(v is None or math.isfinite(v) for v in values):
            raise FcnsegError(f"{option_name(name)} {_shown(name, value)} is not a finite number")
    refusal = fcn_bfloat16_refusal(config.model, config.mixed_precision)
    if refusal:
        raise FcnsegError(refusal)
    from fcnseg.losses import parse_spec

    if not all(math.isfinite(weight) for weight, _ in parse_spec(config.loss)):
        raise FcnsegError(f"--loss {config.loss!r}: a weight is not a finite number")


def fcn_bfloat16_refusal(model: str, mixed_precision: str | None) -> str | None:
    """Why ``model`` cannot train under ``mixed_precision`` here, or None when it can."""
    # Full-width FCN-8s/16s training under mixed_bfloat16 corrupted the heap in TF 2.21's oneDNN
    # CPU kernels ("malloc(): unaligned tcache chunk detected", SIGABRT/SIGSEGV on a 2-core Xeon
    # with AMX, 2026-11-25); LinkNet, narrow FCNs and TF_ENABLE_ONEDNN_OPTS=0 ran. A one-line
    # refusal beats a crash that can leave a half-finished run behind.
    if (mixed_precision != "bfloat16" or not model.startswith("fcn")
            or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"):
        return None
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    return (f"--mixed-precision bfloat16 with --model {model} on the CPU crashes TensorFlow's "
            "oneDNN kernels (heap corruption); train in float32, or set TF_ENABLE_ONEDNN_OPTS=0 "
            "(much slower)")


def train(config: TrainConfig, resume: bool = False, log: Callable[[str], None] = print,
          resume_epochs: int | None = None, explicit: dict | None = None) -> dict:
    """Train as ``config`` says; returns the best validation scores.

    With ``resume`` the run continues from ``config.run_dir``'s last saved
    state with the configuration saved there; ``resume_epochs`` extends it.
    ``explicit`` holds the options the user named (field -> value): on resume,
    one that contradicts the saved configuration is an error, and a source
    ``.py`` file saved in the run is imported only when named here again.
    """
    chief = is_chief()
    if resume:
        config = resumed_config(config.run_dir, explicit or {}, resume_epochs)
    else:
        config = absolute_paths(config)
    _validate(config)
    # Non-chief workers of a multi-worker run must still save (saving is a
    # collective operation) but into a scratch folder that is thrown away.
    folder = open_run_dir(config.run_dir, resume) if chief else None
    work_dir = config.run_dir if chief else tempfile.mkdtemp(prefix="fcnseg-worker-")
    previous_policy = None
    try:
        import keras

        previous_policy = keras.mixed_precision.dtype_policy()
        if config.mixed_precision:
            keras.mixed_precision.set_dtype_policy(f"mixed_{config.mixed_precision}")
        return _train(config, resume, log, chief, work_dir)
    except BaseException:
        if folder is not None and not resume and not os.path.exists(os.path.join(config.run_dir, "config.json")):
            folder.abandon()  # a failed start leaves no empty run folder behind
        raise
    finally:
        if previous_policy is not None:
            keras.mixed_precision.set_dtype_policy(previous_policy)
        if folder is not None:
            folder.release()


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# Options whose name is not "--" + the field's name with dashes.
_OPTION_NAMES = {"learning_rate": "--lr", "jit_compile": "--jit", "augment": "--no-augment",
                 "source_options": "--source-option"}
# Free to change on --resume: where the run is and how long it goes on.
_RESUME_FREE = ("run_dir", "epochs")


def option_name(field_name: str) -> str:
    return _OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


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
            saved = TrainConfig.from_json({k: v for k, v in json.load(f).items() if k in _FIELDS})
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise FcnsegError(f"--resume: {path} is not a readable fcnseg configuration "
                          f"({type(e).__name__})") from None
    given = absolute_paths(dataclasses.replace(saved, **{k: v for k, v in explicit.items() if k in _FIELDS}))
    ours = absolute_paths(saved)
    for key in sorted(set(explicit) & _FIELDS - set(_RESUME_FREE)):
        if _comparable(getattr(given, key)) != _comparable(getattr(ours, key)):
            raise FcnsegError(f"--resume: {option_name(key)} {_shown(key, getattr(given, key))} contradicts {path} "
                              f"({_shown(key, getattr(saved, key))}); a resumed run keeps its configuration, "
                              "start a new --run-dir to change it")
    if is_source_file(saved.data_source) and "data_source" not in explicit:
        raise FcnsegError(f"--resume: {path} names the source file {saved.data_source}, and loading it runs its "
                          f"code; pass --data-source {saved.data_source} again if you trust it")
    return dataclasses.replace(saved, epochs=epochs or saved.epochs, run_dir=run_dir)


def _comparable(value):
    return tuple(value) if isinstance(value, list) else value


def _shown(key: str, value) -> str:
    if key == "augment":
        return "(given)" if not value else "(not given)"
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def open_run_dir(run_dir: str, resume: bool):
    """Take the run folder for this process; a new run needs it missing or empty."""
    from fcnseg.rundir import LOCK_NAME, RunDir, is_empty

    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise FcnsegError(f"--run-dir {run_dir} exists and is not a folder")
    if resume:
        return RunDir(run_dir, create=False)
    not_empty = FcnsegError(f"--run-dir {run_dir} exists and is not empty; choose a new folder or pass --resume")
    # A foreign non-empty folder gets no lock file of ours; one with a lock may be a live run.
    if os.path.isdir(run_dir) and not is_empty(run_dir) and not os.path.exists(os.path.join(run_dir, LOCK_NAME)):
        raise not_empty
    folder = RunDir(run_dir, create=True)
    if not is_empty(run_dir):
        folder.release()
        raise not_empty
    return folder


class _Run:
    """What one training run is made of, built once and handed to each phase."""

    def __init__(self, **parts) -> None:
        self.__dict__.update(parts)


def _train(config: TrainConfig, resume: bool, log, chief: bool, work_dir: str) -> dict:
    run = _build(config, chief, work_dir, resume)
    if chief:
        write_json_or_fail(os.path.join(config.run_dir, "config.json"),
                           config.to_json() | {"resolved_image_size": list(run.source.image_size)})
    _restore(run, resume, log)
    from fcnseg import summaries

    run.writers = summaries.Writers(config.run_dir, enabled=chief)
    try:
        if not resume:
            run.writers.hparams({k: v for k, v in config.to_json().items() if k not in ("run_dir", "source_options")})
        if config.strategy != "default":
            log(f"{config.strategy} strategy: {run.replicas} replicas in sync, global batch {config.batch_size}")
        start = _first_epoch(run)
        if start >= config.epochs:
            log(f"{config.run_dir} has already trained its {start} epoch(s); pass --epochs N (more than {start}) "
                "to train further")
        for epoch in range(start, config.epochs):
            out_of_time = _train_epoch(run, epoch, log)
            _end_epoch(run, epoch, log)
            if out_of_time:
                log(f"stopped: the {config.max_minutes:g}-minute budget (--max-minutes) ran out at step "
                    f"{int(run.step.numpy())}")
                break
    except BaseException:
        run.writers.close(quiet=True)  # a full disk must not hide the error that stopped us
        raise
    run.writers.close()
    return run.best_scores


def _build(config: TrainConfig, chief: bool, work_dir: str, resume: bool) -> _Run:
    """Source, model, optimizer, losses, the compiled step and the state to save."""
    import keras
    import tensorflow as tf

    from fcnseg import losses, sources

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy)
    source = sources.load(config.data_source, config.data_dir, config.image_size, config.seed,
                          **config.source_options)
    num_classes = source.num_classes
    if config.class_weights is not None and len(config.class_weights) != num_classes:
        raise FcnsegError(f"--class-weights has {len(config.class_weights)} values but the {source.name} source "
                          f"has {num_classes} classes")
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(source.num_training / config.batch_size))
    total_steps = steps_per_epoch * config.epochs

    keras.utils.set_random_seed(config.seed)
    deadline = time.time() + 60 * config.max_minutes if config.max_minutes else None
    with strategy.scope():
        model = build_model(config, num_classes)
        if config.init_from and not resume:
            init_weights(model, config.init_from, source.classes)
        # The schedule counts optimizer updates, which accumulation makes fewer.
        optimizer = make_optimizer(config, max(1, total_steps // config.accumulate), deadline)
        # Slots must exist before the first distributed step: creating them
        # lazily inside strategy.run breaks mirrored variables.
        optimizer.build(model.trainable_variables)
        counters = _state_variables()
    opts = losses.LossOptions(class_weights=config.class_weights, fbeta=tuple(config.fbeta),
                              focal_gamma=config.focal_gamma)
    loss_fn = losses.make_loss(config.loss, num_classes, opts)
    eval_loss = losses.make_loss(config.loss, num_classes, opts)
    state = tf.train.Checkpoint(model=model, optimizer=optimizer, **counters)
    val_ds = source.valid_dataset(config.batch_size)
    return _Run(
        config=config, chief=chief, work_dir=work_dir, strategy=strategy, source=source, model=model,
        optimizer=optimizer, eval_loss=eval_loss, state=state, deadline=deadline,
        manager=tf.train.CheckpointManager(state, os.path.join(work_dir, "state"), max_to_keep=1),
        steps_per_epoch=steps_per_epoch, replicas=strategy.num_replicas_in_sync,
        train_step=_make_train_step(config, strategy, model, optimizer, loss_fn),
        val_ds=val_ds.take(config.val_steps) if config.val_steps else val_ds,
        shown=_fixed_samples(source, config.num_images),
        meta={"model": config.model, "encoder": config.encoder, "source": source.describe(),
              "config": config.to_json()},
        history=[], best_scores={}, train_seconds=0.0, **counters)


def _state_variables() -> dict:
    """The counters saved with the weights. ``epochs_done`` counts the epochs whose end
    (validation, checkpoints, history row) is complete: a state saved at an epoch's last
    step but before its end makes --resume redo that end instead of skipping it."""
    import tensorflow as tf

    return {"step": tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
            "best": tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_metric"),
            # -1: a state saved before this counter existed; the epoch then follows from the step.
            "epochs_done": tf.Variable(-1, dtype=tf.int64, trainable=False, name="epochs_done"),
            "loss_sum": tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum"),
            "loss_count": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_loss_count")}


def _make_train_step(config: TrainConfig, strategy, model, optimizer, loss_fn):
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
            # Gradients are summed over replicas; dividing here makes them a mean.
            scaled = optimizer.scale_loss(loss / replicas) if hasattr(optimizer, "scale_loss") else loss / replicas
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(jit_compile=config.jit_compile or None)
    def train_step(images, labels):
        per_replica = strategy.run(step_fn, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    return train_step


def _restore(run: _Run, resume: bool, log) -> None:
    """Sweep a killed run's debris, then load its last state and the history it committed."""
    import tensorflow as tf

    run.epochs_done.assign(0)  # a fresh start; a state saved before this counter existed leaves -1
    if not resume:
        return
    config = run.config
    if run.chief:
        from fcnseg.rundir import sweep_leftovers

        for path in sweep_leftovers(config.run_dir):
            log(f"removed {path} (left by an interrupted save)")
    latest = tf.train.latest_checkpoint(os.path.join(config.run_dir, "state"))
    if latest is None:
        # Killed or failed before its first save: nothing to continue, so start again.
        log(f"{config.run_dir} has no saved training state yet: starting from step 0 with its saved configuration")
        return
    run.epochs_done.assign(-1)
    run.state.restore(latest).expect_partial()
    log(f"resumed {config.run_dir} at step {int(run.step.numpy())}")
    history_path = os.path.join(config.run_dir, "history.json")
    if os.path.exists(history_path):
        try:
            with open(history_path) as f:
                history = json.load(f)
        except (OSError, ValueError) as e:
            raise FcnsegError(f"--resume: {history_path} is unreadable ({type(e).__name__}); move it away "
                              "to resume without the earlier epochs' figures") from None
        # Rows of epochs whose end the state does not record are redone (killed mid-end, or cut
        # short by --max-minutes and now continued).
        run.history = [row for row in history if row["epoch"] <= _first_epoch(run)]
        run.best_scores = run.history[-1].get("best", {}) if run.history else {}


def _first_epoch(run: _Run) -> int:
    done = int(run.epochs_done.numpy())
    return done if done >= 0 else int(run.step.numpy()) // run.steps_per_epoch


def _train_epoch(run: _Run, epoch: int, log) -> bool:
    """The epoch's remaining steps; True when --max-minutes ran out before its end."""
    import tensorflow as tf

    from fcnseg.progress import Progress
    from fcnseg.rundir import kill_point

    config, spe = run.config, run.steps_per_epoch
    done_in_epoch = int(run.step.numpy()) - epoch * spe
    if done_in_epoch == 0:
        run.loss_sum.assign(0.0)
        run.loss_count.assign(0)
    total, count = float(run.loss_sum.numpy()), int(run.loss_count.numpy())
    batches = iter(_epoch_dataset(run, epoch, done_in_epoch))
    log(f"epoch {epoch + 1}/{config.epochs}")
    bar = Progress(spe, done_in_epoch, enabled=run.chief)
    lr, t0, out_of_time = _current_lr(run.optimizer), time.time(), False
    while True:
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as e:  # a corrupt, truncated or mismatched file
            raise FcnsegError(_data_error(e, run.source)) from None
        loss = float(run.train_step(images, labels))
        run.step.assign_add(1)
        now, lr = int(run.step.numpy()), _current_lr(run.optimizer)
        if not np.isfinite(loss):
            raise FcnsegError(f"loss became {loss} at step {now} (learning rate {lr:.3g}); stopped, "
                              f"the last good state is in {config.run_dir}/state")
        total, count = total + loss, count + 1
        kill_point("step", now)
        run.writers.scalars("train", now, {"loss": loss, "learning_rate": lr})
        bar.update(total / count, lr)
        if now % config.save_every == 0:
            run.loss_sum.assign(total)
            run.loss_count.assign(count)
            _save_state(run, now)
            kill_point("step_saved", now)
        if run.deadline is not None and time.time() > run.deadline:
            out_of_time = True
            break
    run.train_seconds = time.time() - t0
    run.loss_sum.assign(total)
    run.loss_count.assign(count)
    bar.finish(total / count if count else float("nan"), lr)
    return out_of_time


def _epoch_dataset(run: _Run, epoch: int, done_in_epoch: int):
    import tensorflow as tf

    config, spe = run.config, run.steps_per_epoch
    # A fresh, epoch-seeded pipeline: order and augmentation depend only on
    # (seed, epoch), which is what lets --resume pick up mid-epoch exactly.
    ds = run.source.dataset("train", config.batch_size, training=True, seed=config.seed + epoch,
                            augment=None if config.augment else _no_augment())
    ds = ds.repeat().skip(done_in_epoch).take(spe - done_in_epoch)
    if config.strategy != "default":
        options = tf.data.Options()
        # Generated and file-list datasets cannot be sharded by file: shard by element.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = run.strategy.experimental_distribute_dataset(ds.with_options(options))
    return ds


def _end_epoch(run: _Run, epoch: int, log) -> None:
    """Validate, keep best.keras / last.keras, add the history row, then commit the state.

    The state is saved last and records the epoch as done, so a kill anywhere in
    here makes --resume redo this whole end (each write is a full atomic replace).
    """
    from fcnseg import checkpoint, evaluate
    from fcnseg.rundir import kill_point

    config, source, t0 = run.config, run.source, time.time()
    now = int(run.step.numpy())
    kill_point("epoch_end", epoch + 1)
    cm, val_loss = evaluate.confusion_matrix(run.model, run.val_ds, source.num_classes, loss_fn=run.eval_loss)
    if val_loss is not None and not math.isfinite(val_loss):
        raise FcnsegError(f"validation loss became {val_loss} at epoch {epoch + 1} (step {now}); stopped before "
                          f"saving this model, the last good state is in {config.run_dir}/state")
    scores = _scores(cm, source.class_names)
    count = int(run.loss_count.numpy())
    train_loss = float(run.loss_sum.numpy()) / count if count else None
    run.writers.scalars("train", now, {"epoch_loss": train_loss})
    run.writers.epoch(now, scores, source.class_names, val_loss)
    if config.image_every and (epoch + 1) % config.image_every == 0 and run.shown is not None:
        preds = np.argmax(run.model(run.shown[0], training=False), axis=-1)
        run.writers.images(now, run.shown[0], run.shown[1], preds, source.classes, cm)
    improved = scores[config.monitor] > float(run.best.numpy())
    meta = run.meta | {"epoch": epoch + 1}
    # Every worker saves (saving may need all of them); only the chief's folder is the run dir.
    if improved:
        run.best.assign(scores[config.monitor])
        run.best_scores = scores
        checkpoint.save(run.model, os.path.join(run.work_dir, "best.keras"), meta)
        kill_point("best_saved", epoch + 1)
    checkpoint.save(run.model, os.path.join(run.work_dir, "last.keras"), meta)
    kill_point("last_saved", epoch + 1)
    run.history.append({
        "epoch": epoch + 1, "step": now, "train_loss": train_loss, "val_loss": val_loss,
        "seconds": round(time.time() - t0 + run.train_seconds, 1), "train_seconds": round(run.train_seconds, 1),
        "mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
        "iou": {k: v["iou"] for k, v in scores["per_class"].items()},
        "best": {k: run.best_scores.get(k) for k in ("mean_iou", "pixel_accuracy")}})
    if run.chief:
        write_json_or_fail(os.path.join(config.run_dir, "history.json"), finite_or_null(run.history))
    kill_point("history_saved", epoch + 1)
    # A budget cut can leave the epoch unfinished: --resume then continues it and redoes this end.
    run.epochs_done.assign(epoch + 1 if now >= (epoch + 1) * run.steps_per_epoch else epoch)
    _save_state(run, now)
    kill_point("epoch_saved", epoch + 1)
    log(f"val loss {val_loss if val_loss is not None else float('nan'):.4f}  mIoU {scores['mean_iou']:.4f}  "
        f"pixel acc {scores['pixel_accuracy']:.4f}{'  (best so far, saved best.keras)' if improved else ''}")


def _save_state(run: _Run, now: int) -> None:
    """Save the resumable state; on failure (a full disk) keep the previous one and say so."""
    import tensorflow as tf

    state_dir = os.path.join(run.work_dir, "state")
    try:
        run.manager.save(checkpoint_number=now)
    except (tf.errors.OpError, OSError) as e:
        if run.chief:
            from fcnseg.rundir import orphan_state_files, remove_all

            remove_all(os.path.join(state_dir, name) for name in orphan_state_files(state_dir))
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(getattr(e, "message", e))
        raise FcnsegError(f"{state_dir}/ckpt-{now}: could not save the training state: "
                          f"{reason.strip().splitlines()[0]}; the previous state is kept") from None


def write_json_or_fail(path: str, data) -> None:
    """:func:`fcnseg.files.write_json`, with a failed write (a full disk) as one line naming the file."""
    try:
        write_json(path, data)
    except OSError as e:
        try:
            os.remove(path + ".partial")
        except OSError:
            pass
        raise FcnsegError(f"{path}: could not write it: {e.strerror or e}; the previous file is kept") from None


def finite_or_null(value):
    """``value`` with NaN and infinities as None: JSON has no NaN, and strict readers reject it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def _fixed_samples(source, n: int):
    """The first ``n`` validation samples, the same every epoch, for TensorBoard."""
    if n <= 0:
        return None
    for images, labels in source.valid_dataset(n).take(1):
        return images.numpy(), labels.numpy()
    return None


def _no_augment():
    from fcnseg.data import NO_AUGMENT

    return NO_AUGMENT


def _scores(cm, class_names):
    from fcnseg.metrics import scores

    return scores(cm, class_names)


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _data_error(error: Exception, source) -> str:
    """Turn a tf.data failure into one line that names the file at fault."""
    from fcnseg.validate import pipeline_error  # TODO(train): call pipeline_error directly, drop this wrapper

    return pipeline_error(error, source)
