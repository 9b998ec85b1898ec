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
from fcnseg.files import ensure_writable_dir, write_json


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


def check_run_dir(run_dir: str, resume: bool) -> None:
    """Refuse to overwrite a run, and fail early on a folder we cannot write."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise FcnsegError(f"--run-dir {run_dir} exists and is not a folder")
    if resume:
        if not os.path.isfile(os.path.join(run_dir, "config.json")):
            raise FcnsegError(f"--resume: {run_dir} holds no run to resume (no config.json)")
        return
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise FcnsegError(f"--run-dir {run_dir} exists and is not empty; choose a new folder or pass --resume")
    ensure_writable_dir(run_dir, "--run-dir")


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
    refusal = fcn_bfloat16_refusal(config.model, config.mixed_precision)
    if refusal:
        raise FcnsegError(refusal)
    from fcnseg.losses import parse_spec

    parse_spec(config.loss)


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
          resume_epochs: int | None = None) -> dict:
    """Train as ``config`` says; returns the best validation scores.

    With ``resume`` the run continues from ``config.run_dir``'s last saved
    state with the configuration saved there; ``resume_epochs`` extends it.
    """
    import keras

    chief = is_chief()
    if resume:
        check_run_dir(config.run_dir, resume=True)
        with open(os.path.join(config.run_dir, "config.json")) as f:
            saved = TrainConfig.from_json({k: v for k, v in json.load(f).items() if k in _FIELDS})
        config = dataclasses.replace(saved, epochs=resume_epochs or saved.epochs, run_dir=config.run_dir)
    _validate(config)
    # Non-chief workers of a multi-worker run must still save (saving is a
    # collective operation) but into a scratch folder that is thrown away.
    if chief:
        work_dir = config.run_dir
        if not resume:
            check_run_dir(config.run_dir, resume=False)
    else:
        work_dir = tempfile.mkdtemp(prefix="fcnseg-worker-")

    previous_policy = keras.mixed_precision.dtype_policy()
    try:
        if config.mixed_precision:
            keras.mixed_precision.set_dtype_policy(f"mixed_{config.mixed_precision}")
        return _train(config, resume, log, chief, work_dir)
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _train(config: TrainConfig, resume: bool, log, chief: bool, work_dir: str) -> dict:
    import keras
    import tensorflow as tf

    from fcnseg import checkpoint, evaluate, losses, sources, summaries

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
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_metric")
    opts = losses.LossOptions(class_weights=config.class_weights, fbeta=tuple(config.fbeta),
                              focal_gamma=config.focal_gamma)
    loss_fn = losses.make_loss(config.loss, num_classes, opts)
    eval_loss = losses.make_loss(config.loss, num_classes, opts)

    meta = {"model": config.model, "encoder": config.encoder, "source": source.describe(),
            "config": config.to_json()}
    if chief:
        write_json(os.path.join(config.run_dir, "config.json"),
                   config.to_json() | {"resolved_image_size": list(source.image_size)})

    state = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, best=best)
    manager = tf.train.CheckpointManager(state, os.path.join(work_dir, "state"), max_to_keep=1)
    if resume:
        _remove_partial_files(config.run_dir)
        latest = tf.train.latest_checkpoint(os.path.join(config.run_dir, "state"))
        if latest is None:
            raise FcnsegError(f"--resume: {config.run_dir} has no saved training state yet")
        state.restore(latest).expect_partial()
        log(f"resumed {config.run_dir} at step {int(step.numpy())}")

    replicas = strategy.num_replicas_in_sync
    if config.strategy != "default":
        log(f"{config.strategy} strategy: {replicas} replicas in sync, global batch {config.batch_size}")

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

    writers = summaries.Writers(config.run_dir, enabled=chief)
    if not resume:
        writers.hparams({k: v for k, v in config.to_json().items() if k not in ("run_dir", "source_options")})
    history_path = os.path.join(config.run_dir, "history.json")
    history = json.load(open(history_path)) if resume and os.path.exists(history_path) else []
    best_scores: dict = history[-1].get("best", {}) if history else {}
    val_ds = source.valid_dataset(config.batch_size)
    if config.val_steps:
        val_ds = val_ds.take(config.val_steps)
    shown = _fixed_samples(source, config.num_images)

    start_epoch = int(step.numpy()) // steps_per_epoch
    out_of_time = False
    for epoch in range(start_epoch, config.epochs):
        done_in_epoch = int(step.numpy()) - epoch * steps_per_epoch
        # A fresh, epoch-seeded pipeline: order and augmentation depend only on
        # (seed, epoch), which is what lets --resume pick up mid-epoch exactly.
        train_ds = source.dataset("train", config.batch_size, training=True, seed=config.seed + epoch,
                                  augment=None if config.augment else _no_augment())
        train_ds = train_ds.repeat().skip(done_in_epoch).take(steps_per_epoch - done_in_epoch)
        if config.strategy != "default":
            options = tf.data.Options()
            # Generated and file-list datasets cannot be sharded by file: shard by element.
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            train_ds = strategy.experimental_distribute_dataset(train_ds.with_options(options))
        log(f"epoch {epoch + 1}/{config.epochs}")
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["lr"], verbose=1 if chief else 0)
        bar.update(done_in_epoch)
        t0, losses_seen = time.time(), []
        batches = iter(train_ds)
        while True:
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            except tf.errors.InvalidArgumentError as e:  # a corrupt, truncated or mismatched file
                raise FcnsegError(_data_error(e, source)) from None
            loss = float(train_step(images, labels))
            step.assign_add(1)
            now, lr = int(step.numpy()), _current_lr(optimizer)
            if not np.isfinite(loss):
                raise FcnsegError(f"loss became {loss} at step {now} (learning rate {lr:.3g}); stopped, "
                                  f"the last good state is in {config.run_dir}/state")
            losses_seen.append(loss)
            writers.scalars("train", now, {"loss": loss, "learning_rate": lr})
            bar.add(1, [("loss", loss), ("lr", lr)])
            if now % config.save_every == 0:
                manager.save(checkpoint_number=now)
            if deadline is not None and time.time() > deadline:
                out_of_time = True
                break
        train_seconds = time.time() - t0
        now = int(step.numpy())
        cm, val_loss = evaluate.confusion_matrix(model, val_ds, num_classes, loss_fn=eval_loss)
        scores = _scores(cm, source.class_names)
        writers.scalars("train", now, {"epoch_loss": float(np.mean(losses_seen or [np.nan]))})
        writers.epoch(now, scores, source.class_names, val_loss)
        if config.image_every and (epoch + 1) % config.image_every == 0 and shown is not None:
            preds = np.argmax(model(shown[0], training=False), axis=-1)
            writers.images(now, shown[0], shown[1], preds, source.classes, cm)
        improved = scores[config.monitor] > float(best.numpy())
        if improved:
            best.assign(scores[config.monitor])
            best_scores = scores
        # Every worker saves (saving may need all of them); only the chief's folder is the run dir.
        if improved:
            checkpoint.save(model, os.path.join(work_dir, "best.keras"), meta | {"epoch": epoch + 1})
        checkpoint.save(model, os.path.join(work_dir, "last.keras"), meta | {"epoch": epoch + 1})
        manager.save(checkpoint_number=now)
        history.append({"epoch": epoch + 1, "step": now, "train_loss": float(np.mean(losses_seen or [np.nan])),
                        "val_loss": val_loss, "seconds": round(time.time() - t0, 1),
                        "train_seconds": round(train_seconds, 1),
                        "mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
                        "iou": {k: v["iou"] for k, v in scores["per_class"].items()},
                        "best": {k: best_scores[k] for k in ("mean_iou", "pixel_accuracy")}})
        if chief:
            write_json(history_path, history)
        log(f"val loss {val_loss if val_loss is not None else float('nan'):.4f}  mIoU {scores['mean_iou']:.4f}  pixel acc {scores['pixel_accuracy']:.4f}"
            f"{'  (best so far, saved best.keras)' if improved else ''}")
        if out_of_time:
            log(f"stopped: the {config.max_minutes:g}-minute budget (--max-minutes) ran out at step {now}")
            break
    writers.close()
    return best_scores


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


def _remove_partial_files(run_dir: str) -> None:
    """Drop what a killed run was writing: the finished files were never touched."""
    for name in os.listdir(run_dir):
        if name.endswith(".partial") or name.endswith(".partial.keras"):
            os.remove(os.path.join(run_dir, name))


def _data_error(error: Exception, source) -> str:
    """Turn a tf.data failure into one line that names the file at fault."""
    import re

    from fcnseg.validate import find_unreadable

    bad = find_unreadable(source)
    if bad:
        return bad
    first = str(getattr(error, "message", error)).strip().splitlines()[0]
    # The pipeline's own checks (fcnseg.data) are asserts whose message names the file.
    asserted = re.search(r"assertion failed: \[(.*)\]", first)
    if asserted:
        return asserted.group(1).replace("] [", " ")
    return f"the input pipeline of the {source.name} source failed: {first}"
