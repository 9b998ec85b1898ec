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
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fcnseg.errors import FcnsegError


@dataclass(frozen=True)
class TrainConfig:
    data_source: str = "synthetic"  # built-in name, plugin name or path of a source .py file
    data_dir: str | None = None  # dataset root (not needed by the synthetic source)
    source_options: dict = field(default_factory=dict)  # extra source options, e.g. {"task": "lane"}
    model: str = "linknet"  # fcn8s | fcn16s | fcn32s | linknet
    encoder: str = "resnet18"  # LinkNet encoder: resnet18 | resnet34
    encoder_weights: str | None = None  # None, "imagenet" (FCN) or a local weights file
    width: float = 1.0  # filter-count multiplier (1.0 = the paper's model)
    image_size: tuple[int, int] | None = None  # (W, H) to train at; None = the source's default
    epochs: int = 8
    batch_size: int = 8
    steps_per_epoch: int | None = None  # None = one pass over the training split
    val_steps: int | None = None  # None = the whole validation split
    optimizer: str = "adam"  # adam | sgd | rmsprop
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD / RMSprop momentum
    weight_decay: float = 0.0  # decoupled weight decay
    schedule: str = "constant"  # constant | poly | step | onecycle
    class_weights: tuple[float, ...] | None = None  # per-class loss weights (e.g. median frequency)
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
        for key in ("image_size", "class_weights"):
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
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise FcnsegError(f"--run-dir {run_dir} is not writable: {e.strerror}") from None


def make_schedule(config: TrainConfig, total_steps: int):
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
        return OneCycle(lr, max(total_steps, 2))
    raise FcnsegError(f"--schedule {config.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")


def _one_cycle_class():
    import keras
    import tensorflow as tf

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        """Smith's one-cycle: cosine warm-up to ``max_lr`` over 30%, cosine anneal to ~0."""

        def __init__(self, max_lr: float, total_steps: int) -> None:
            self.max_lr, self.total_steps = max_lr, total_steps

        def __call__(self, step):
            t = tf.cast(step, tf.float32) / self.total_steps
            warm = 0.3
            lo, hi = self.max_lr / 25.0, self.max_lr
            up = lo + (hi - lo) * (1 - tf.cos(math.pi * t / warm)) / 2
            down = hi / 1e4 + (hi - hi / 1e4) * (1 + tf.cos(math.pi * tf.minimum((t - warm) / (1 - warm), 1.0))) / 2
            return tf.where(t < warm, up, down)

        def get_config(self):
            return {"max_lr": self.max_lr, "total_steps": self.total_steps}

    return OneCycle


def OneCycle(max_lr: float, total_steps: int):  # noqa: N802 - reads like the class it builds
    return _one_cycle_class()(max_lr, total_steps)


def make_optimizer(config: TrainConfig, total_steps: int):
    import keras

    lr = make_schedule(config, total_steps)
    wd = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.AdamW(lr, weight_decay=wd) if wd else keras.optimizers.Adam(lr)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, momentum=config.momentum, weight_decay=wd)
    raise FcnsegError(f"--optimizer {config.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")


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


def train(config: TrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train as ``config`` says; returns the best validation scores.

    With ``resume`` the run continues from ``config.run_dir``'s last saved
    state (its config.json wins over ``config``, except ``epochs``).
    """
    import keras
    import tensorflow as tf

    from fcnseg import checkpoint, evaluate, losses, sources, summaries

    check_run_dir(config.run_dir, resume)
    if resume:
        with open(os.path.join(config.run_dir, "config.json")) as f:
            saved = TrainConfig.from_json(json.load(f))
        config = dataclasses.replace(saved, epochs=config.epochs, run_dir=config.run_dir)

    source = sources.load(config.data_source, config.data_dir, config.image_size, config.seed,
                          **config.source_options)
    num_classes = source.num_classes
    if config.class_weights is not None and len(config.class_weights) != num_classes:
        raise FcnsegError(f"--class-weights has {len(config.class_weights)} values but the {source.name} source "
                          f"has {num_classes} classes")
    if config.optimizer not in OPTIMIZERS:
        raise FcnsegError(f"--optimizer {config.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise FcnsegError(f"--schedule {config.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(source.num_training / config.batch_size))
    total_steps = steps_per_epoch * config.epochs

    keras.utils.set_random_seed(config.seed)
    model = build_model(config, num_classes)
    optimizer = make_optimizer(config, total_steps)
    loss_fn = losses.masked_cross_entropy(num_classes, config.class_weights)

    meta = {"model": config.model, "encoder": config.encoder, "source": source.describe(),
            "config": config.to_json()}
    with open(os.path.join(config.run_dir, "config.json"), "w") as f:
        json.dump(config.to_json() | {"resolved_image_size": list(source.image_size)}, f, indent=1)

    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_metric")
    state = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, best=best)
    manager = tf.train.CheckpointManager(state, os.path.join(config.run_dir, "state"), max_to_keep=1)
    if resume:
        if manager.latest_checkpoint is None:
            raise FcnsegError(f"--resume: {config.run_dir} has no saved training state yet")
        state.restore(manager.latest_checkpoint).expect_partial()
        log(f"resumed {config.run_dir} at step {int(step.numpy())}")

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    writers = summaries.Writers(config.run_dir)
    history_path = os.path.join(config.run_dir, "history.json")
    history = json.load(open(history_path)) if resume and os.path.exists(history_path) else []
    best_scores: dict = history[-1].get("best", {}) if history else {}
    val_ds = source.valid_dataset(config.batch_size)
    if config.val_steps:
        val_ds = val_ds.take(config.val_steps)

    start_epoch = int(step.numpy()) // steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        done_in_epoch = int(step.numpy()) - epoch * steps_per_epoch
        # A fresh, epoch-seeded pipeline: order and augmentation depend only on
        # (seed, epoch), which is what lets --resume pick up mid-epoch exactly.
        train_ds = source.dataset("train", config.batch_size, training=True, seed=config.seed + epoch,
                                  augment=None if config.augment else _no_augment())
        train_ds = train_ds.repeat().skip(done_in_epoch).take(steps_per_epoch - done_in_epoch)
        log(f"epoch {epoch + 1}/{config.epochs}")
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["lr"])
        bar.update(done_in_epoch)
        t0, losses_seen = time.time(), []
        try:
            for images, labels in train_ds:
                loss = float(train_step(images, labels))
                step.assign_add(1)
                lr = _current_lr(optimizer)
                if not np.isfinite(loss):
                    raise FcnsegError(f"loss became {loss} at step {int(step.numpy())} (learning rate {lr:.3g}); "
                                      f"stopped, the last good state is in {config.run_dir}/state")
                losses_seen.append(loss)
                writers.scalars("train", int(step.numpy()), {"loss": loss, "learning_rate": lr})
                bar.add(1, [("loss", loss), ("lr", lr)])
                if int(step.numpy()) % config.save_every == 0:
                    manager.save(checkpoint_number=int(step.numpy()))
        except tf.errors.InvalidArgumentError as e:
            raise FcnsegError(_data_error(e, source)) from None
        cm = evaluate.confusion_matrix(model, val_ds, num_classes)
        scores = _scores(cm, source.class_names)
        val_loss = None
        writers.epoch(int(step.numpy()), scores, source.class_names, cm)
        improved = scores[config.monitor] > float(best.numpy())
        if improved:
            best.assign(scores[config.monitor])
            best_scores = scores
            checkpoint.save(model, os.path.join(config.run_dir, "best.keras"), meta | {"epoch": epoch + 1})
        checkpoint.save(model, os.path.join(config.run_dir, "last.keras"), meta | {"epoch": epoch + 1})
        manager.save(checkpoint_number=int(step.numpy()))
        history.append({"epoch": epoch + 1, "step": int(step.numpy()), "train_loss": float(np.mean(losses_seen or [0])),
                        "val_loss": val_loss, "seconds": round(time.time() - t0, 1),
                        "mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
                        "iou": {k: v["iou"] for k, v in scores["per_class"].items()},
                        "best": {k: best_scores[k] for k in ("mean_iou", "pixel_accuracy")}})
        _write_json(history_path, history)
        log(f"val mIoU {scores['mean_iou']:.4f}  pixel acc {scores['pixel_accuracy']:.4f}"
            f"{'  (best so far, saved best.keras)' if improved else ''}")
    writers.close()
    return best_scores


def _no_augment():
    from fcnseg.data import NO_AUGMENT

    return NO_AUGMENT


def _scores(cm, class_names):
    from fcnseg.metrics import scores

    return scores(cm, class_names)


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _write_json(path: str, data) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _data_error(error: Exception, source) -> str:
    """Turn a tf.data failure into one line that names the file at fault."""
    from fcnseg.validate import find_unreadable

    bad = find_unreadable(source)
    if bad:
        return bad
    first = str(getattr(error, "message", error)).strip().splitlines()[0]
    return f"the input pipeline of the {source.name} source failed: {first}"
