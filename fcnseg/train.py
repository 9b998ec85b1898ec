"""Training: composes a source, a model, a loss, an optimizer and the logging.

A run directory holds everything about one run::

    RUN_DIR/config.json     the resolved TrainConfig (what --resume and --config read back)
    RUN_DIR/best.keras      best checkpoint by the chosen validation metric
    RUN_DIR/last.keras      checkpoint after the latest epoch
    RUN_DIR/last_raw.keras  with --ema: the latest epoch's raw (not averaged) weights
    RUN_DIR/state/          optimizer + weights + step, every --save-every steps
    RUN_DIR/history.json    validation figures per epoch
    RUN_DIR/logs/{train,val}  TensorBoard event files

Read it top to bottom: :func:`train` checks the options and takes the run
folder, ``_train`` is the loop over epochs, and each phase is a section below it:
building the run, restoring a saved one, one epoch of steps, and the end of an
epoch (validation, checkpoints, history, the saved state).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fcnseg.errors import FcnsegError
from fcnseg.files import write_json
from fcnseg.monitor import resolve as resolve_monitor, value as monitor_value
from fcnseg.options import (  # noqa: F401 - TrainConfig and the refusal are public here too
    TrainConfig, absolute_paths, fcn_bfloat16_refusal, resumed_config, validate)


# --- the entry point: check the options, take the run folder, train ------------------------------

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
    validate(config)
    # Non-chief workers of a multi-worker run must still save (saving is a
    # collective operation) but into a scratch folder that is thrown away.
    folder = open_run_dir(config.run_dir, resume) if chief else None
    work_dir = config.run_dir if chief else tempfile.mkdtemp(prefix="fcnseg-worker-")
    previous_policy = previous_determinism = None
    try:
        import keras
        from tensorflow.python.framework import config as tf_config  # the public API cannot disable

        previous_policy = keras.mixed_precision.dtype_policy()
        if config.mixed_precision:
            keras.mixed_precision.set_dtype_policy(f"mixed_{config.mixed_precision}")
        # Op determinism is process-wide: a --deterministic run must not make the caller's next
        # run deterministic (slower, and unable to read the clock) too.
        previous_determinism = tf_config.is_op_determinism_enabled()
        if config.deterministic:
            tf_config.enable_op_determinism()
        return _train(config, resume, log, chief, work_dir)
    except BaseException:
        if folder is not None and not resume and not os.path.exists(os.path.join(config.run_dir, "config.json")):
            folder.abandon()  # a failed start leaves no empty run folder behind
        raise
    finally:
        if previous_policy is not None:
            keras.mixed_precision.set_dtype_policy(previous_policy)
        if previous_determinism is False:
            tf_config.disable_op_determinism()
        if folder is not None:
            folder.release()


def _train(config: TrainConfig, resume: bool, log, chief: bool, work_dir: str) -> dict:
    """The loop: build (or restore) the run, then each epoch's steps and its end."""
    from fcnseg import summaries

    run = _build(config, chief, work_dir, resume)
    # Restored first: a resume that fails on a corrupt state or history must not have rewritten config.json.
    _restore(run, resume, log)
    if chief:
        write_json_or_fail(os.path.join(config.run_dir, "config.json"),
                           config.to_json() | {"resolved_image_size": list(run.source.image_size)})
    run.writers = summaries.Writers(config.run_dir, enabled=chief)
    try:
        if not resume:
            run.writers.hparams({k: v for k, v in config.to_json().items() if k not in ("run_dir", "source_options")})
        if config.strategy != "default":
            log(f"{config.strategy} strategy: {run.strategy.num_replicas_in_sync} replicas in sync, "
                f"global batch {config.batch_size}")
        start = _first_epoch(run)
        if start >= config.epochs:
            log(f"{config.run_dir} has already trained its {start} epoch(s); pass --epochs N (more than {start}) "
                "to train further")
        for epoch in range(start, config.epochs):
            _freeze_encoder(run, epoch < config.freeze_encoder_epochs, log)
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


# --- building the run: source, model, optimizer, losses, the compiled step, the saved state --------

@dataclass
class _Run:
    """What one training run is made of: built once by ``_build``, handed to each phase.

    The five counters (``step`` ... ``loss_count``) are TensorFlow variables saved
    with the weights in ``state/``; ``history``, ``best_scores`` and
    ``train_seconds`` are the Python-side record of the epochs so far.
    """

    config: TrainConfig
    chief: bool  # this process writes the run folder (not a non-chief worker)
    work_dir: str  # the run folder, or a non-chief worker's scratch folder
    strategy: Any  # tf.distribute strategy
    source: Any  # fcnseg source
    model: Any  # keras.Model
    optimizer: Any  # keras optimizer
    train_step: Callable  # (images, labels) -> (loss, learning rate), compiled
    eval_loss: Callable  # the loss, for validation
    val_step: Callable  # fcnseg.evaluate.confusion_step of the model and eval_loss, traced once
    val_ds: Any  # validation batches (tf.data)
    shown: tuple | None  # fixed validation (images, labels) for TensorBoard
    state: Any  # tf.train.Checkpoint of model, optimizer and counters
    manager: Any  # tf.train.CheckpointManager of ``state`` in work_dir/state
    steps_per_epoch: int
    deadline: float | None  # Unix time --max-minutes runs out
    meta: dict  # stored in every .keras checkpoint
    step: Any  # optimizer steps done
    best: Any  # best monitored validation figure so far
    epochs_done: Any  # epochs whose end is complete (see _state_variables)
    loss_sum: Any  # this epoch's training loss so far, summed
    loss_count: Any  # and its number of steps
    history: list = field(default_factory=list)  # history.json's rows
    best_scores: dict = field(default_factory=dict)
    train_seconds: float = 0.0  # the current epoch's training time
    writers: Any = None  # fcnseg.summaries.Writers, opened once the run is restored
    encoder: list = field(default_factory=list)  # the model's encoder layers (--freeze-encoder-epochs)
    average: Any = None  # fcnseg.ema.WeightAverage with --ema, else None


def _build(config: TrainConfig, chief: bool, work_dir: str, resume: bool) -> _Run:
    """Source, model, optimizer, losses, the compiled step and the state to save."""
    import keras
    import tensorflow as tf

    from fcnseg import heads, losses, sources
    from fcnseg.ema import WeightAverage
    from fcnseg.evaluate import confusion_step
    from fcnseg.models.encoders import encoder_layers
    from fcnseg.optimizers import make_optimizer, scale_learning_rate

    strategy = make_strategy(config.strategy)
    source = sources.load(config.data_source, config.data_dir, config.image_size, config.seed,
                          **config.source_options)
    num_classes = source.num_classes
    refusal = heads.head_refusal(config.head, source.class_names, f"the {source.name} source")
    if refusal:
        raise FcnsegError(refusal)
    resolve_monitor(config.monitor, source.class_names)  # an unknown class fails now, not after an epoch
    if config.class_weights is not None and len(config.class_weights) != num_classes:
        raise FcnsegError(f"--class-weights has {len(config.class_weights)} values but the {source.name} source "
                          f"has {num_classes} classes")
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(source.num_training / config.batch_size))
    keras.utils.set_random_seed(config.seed)
    deadline = time.time() + 60 * config.max_minutes if config.max_minutes else None
    with strategy.scope():
        model = build_model(config, heads.output_channels(config.head, num_classes))
        if config.init_from and not resume:
            init_weights(model, config.init_from, source.classes)
        # The schedule counts optimizer updates, which accumulation makes fewer.
        optimizer = make_optimizer(config, max(1, steps_per_epoch * config.epochs // config.accumulate), deadline)
        # Slots must exist before the first distributed step: creating them
        # lazily inside strategy.run breaks mirrored variables. Built before any freezing, so the
        # encoder's slots exist too: unfreezing needs none new and every saved state has the same.
        optimizer.build(model.trainable_variables)
        encoder = encoder_layers(model)
        scale_learning_rate(optimizer, [v for layer in encoder for v in layer.trainable_variables],
                            config.encoder_lr_mult)
        counters = _state_variables()
        average = WeightAverage(model, config.ema) if config.ema else None
    opts = losses.LossOptions(class_weights=config.class_weights, fbeta=tuple(config.fbeta),
                              focal_gamma=config.focal_gamma)
    loss_fn = losses.make_loss(config.loss, num_classes, opts, config.head)
    eval_loss = losses.make_loss(config.loss, num_classes, opts, config.head)
    extra = {"ema": average.shadow} if average else {}
    state = tf.train.Checkpoint(model=model, optimizer=optimizer, **counters, **extra)
    val_ds = source.valid_dataset(config.batch_size)
    return _Run(
        config=config, chief=chief, work_dir=work_dir, strategy=strategy, source=source, model=model,
        optimizer=optimizer, train_step=_make_train_step(config, strategy, model, optimizer, loss_fn, average),
        eval_loss=eval_loss, val_step=confusion_step(model, num_classes, eval_loss),
        val_ds=val_ds.take(config.val_steps) if config.val_steps else val_ds,
        shown=_fixed_samples(source, config.num_images), state=state,
        manager=tf.train.CheckpointManager(state, os.path.join(work_dir, "state"), max_to_keep=1),
        steps_per_epoch=steps_per_epoch, deadline=deadline, encoder=encoder, average=average,
        meta={"model": config.model, "encoder": model_encoder(config), "head": config.head, "source": source.describe(),
              "config": config.to_json()}, **counters)


def build_model(config: TrainConfig, num_classes: int):
    """The model ``config`` names (fcnseg.options.validate has checked the name), with
    ``num_classes`` output channels (1 for a sigmoid head)."""
    from fcnseg.models import MODELS

    kwargs = {"encoder_weights": config.encoder_weights, "width": config.width, "input_norm": config.input_norm}
    if config.encoder is not None:
        kwargs["encoder"] = config.encoder
    try:
        return MODELS[config.model](num_classes, **kwargs)
    except ValueError as e:  # bad encoder name or weights source: already a one-line message
        raise FcnsegError(str(e).splitlines()[0]) from e


def model_encoder(config: TrainConfig) -> str:
    """The encoder the model is built on: ``config.encoder``, or the model's default."""
    from fcnseg.models import MODEL_ENCODERS

    return config.encoder or MODEL_ENCODERS[config.model][0]


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
                          f"{model.name} (check --model, --encoder, --width and --head)")
    model.set_weights(theirs)


def make_strategy(name: str):
    """The tf.distribute strategy; multiworker reads the cluster from TF_CONFIG."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise FcnsegError("--strategy multiworker needs the TF_CONFIG environment variable (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


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


def _make_train_step(config: TrainConfig, strategy, model, optimizer, loss_fn, average=None):
    """One compiled optimizer step over a (distributed) batch: returns (mean loss, learning rate).
    With ``average`` (--ema) the step also moves the weight averages.

    The learning rate is read in the step, after the update, so the loop needs no
    second (eager) evaluation of the schedule per step to log it.
    """
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
        if average is not None:  # cross-replica context: the weights are in sync after the update
            average.update(optimizer.iterations)
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None), optimizer.learning_rate

    return train_step


def _freeze_encoder(run: _Run, frozen: bool, log) -> None:
    """Freeze or unfreeze the encoder; a frozen Keras batch norm also runs in inference mode, so its
    statistics stay too. The compiled step captured the trainable variables: a change needs a new one."""
    if not run.encoder or all(layer.trainable != frozen for layer in run.encoder):
        return
    for layer in run.encoder:
        layer.trainable = not frozen
    log(f"encoder {'frozen' if frozen else 'unfrozen'} (--freeze-encoder-epochs {run.config.freeze_encoder_epochs})")
    run.train_step = _make_train_step(run.config, run.strategy, run.model, run.optimizer, run.eval_loss,
                                      run.average)


# --- restoring a run: --resume loads the last saved state and the history it committed ------------

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
    try:
        run.state.restore(latest).expect_partial()
    except (tf.errors.OpError, ValueError) as e:
        reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
        last = os.path.join(config.run_dir, "last.keras")
        or_init = f", or start a new run with --init-from {last}" if os.path.exists(last) else ""
        raise FcnsegError(f"--resume: training state {latest} (.index/.data files) is corrupt ({reason}); "
                          f"remove {os.path.dirname(latest)} to restart from step 0 with the saved "
                          f"configuration{or_init}") from None
    history_path = os.path.join(config.run_dir, "history.json")
    if os.path.exists(history_path):
        try:
            with open(history_path) as f:
                history = json.load(f)
            # Rows of epochs whose end the state does not record are redone (killed mid-end, or cut
            # short by --max-minutes and now continued).
            run.history = [row for row in history if row["epoch"] <= _first_epoch(run)]
            run.best_scores = run.history[-1].get("best", {}) if run.history else {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise FcnsegError(f"--resume: {history_path} is unreadable ({type(e).__name__}); move it away "
                              "to resume without the earlier epochs' figures") from None
    log(f"resumed {config.run_dir} at step {int(run.step.numpy())}")


def _first_epoch(run: _Run) -> int:
    done = int(run.epochs_done.numpy())
    return done if done >= 0 else int(run.step.numpy()) // run.steps_per_epoch


# --- one epoch: the steps left in it, saving the state every --save-every steps -------------------

def _train_epoch(run: _Run, epoch: int, log) -> bool:
    """The epoch's remaining steps; True when --max-minutes ran out before its end."""
    import tensorflow as tf

    from fcnseg.progress import Progress
    from fcnseg.rundir import kill_point

    config, spe = run.config, run.steps_per_epoch
    now = int(run.step.numpy())
    done_in_epoch = now - epoch * spe
    if done_in_epoch == 0:
        run.loss_sum.assign(0.0)
        run.loss_count.assign(0)
    total, count = float(run.loss_sum.numpy()), int(run.loss_count.numpy())
    batches = iter(_epoch_dataset(run, epoch, done_in_epoch))
    # Under --max-minutes the clock, not the epoch count, usually ends the run: say how much is left.
    left = (f" ({max(0.0, run.deadline - time.time()) / 60:.1f} min of the --max-minutes budget left)"
            if run.deadline else "")
    log(f"epoch {epoch + 1}/{config.epochs}{left}")
    bar = Progress(spe, done_in_epoch, enabled=run.chief)
    lr, t0, out_of_time = _current_lr(run.optimizer), time.time(), False
    while True:
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as e:  # a corrupt, truncated or mismatched file
            raise FcnsegError(_data_error(e, run.source)) from None
        loss, lr = run.train_step(images, labels)
        loss, lr = float(loss), float(lr)  # the step's one wait for the device
        run.step.assign_add(1)
        now += 1
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
                            augment=_augment(config))
    ds = ds.repeat().skip(done_in_epoch).take(spe - done_in_epoch)
    if config.strategy != "default":
        options = tf.data.Options()
        # Generated and file-list datasets cannot be sharded by file: shard by element.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = run.strategy.experimental_distribute_dataset(ds.with_options(options))
    return ds


# --- end of an epoch: validation, best/last checkpoints, the history row, then the state ----------

def _end_epoch(run: _Run, epoch: int, log) -> None:
    """Validate, keep best.keras / last.keras, add the history row, then commit the state.

    The state is saved last and records the epoch as done, so a kill anywhere in
    here makes --resume redo this whole end (each write is a full atomic replace).
    """
    from fcnseg.rundir import kill_point

    t0, now = time.time(), int(run.step.numpy())
    kill_point("epoch_end", epoch + 1)
    if run.average is not None:
        _save_raw(run, epoch)
    # With --ema the averaged weights are validated and saved; the raw ones train on.
    with run.average.swapped() if run.average is not None else contextlib.nullcontext():
        scores, val_loss = _validation(run, epoch, now)
        improved = _save_checkpoints(run, epoch, scores)
    run.history.append({
        "epoch": epoch + 1, "step": now, "train_loss": _epoch_train_loss(run), "val_loss": val_loss,
        "seconds": round(time.time() - t0 + run.train_seconds, 1), "train_seconds": round(run.train_seconds, 1),
        "mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
        "iou": {k: v["iou"] for k, v in scores["per_class"].items()},
        "best": {k: run.best_scores.get(k) for k in ("mean_iou", "pixel_accuracy")},
        "monitor": {run.config.monitor: monitor_value(run.config.monitor, scores)}})
    if run.chief:
        write_json_or_fail(os.path.join(run.config.run_dir, "history.json"), finite_or_null(run.history))
    kill_point("history_saved", epoch + 1)
    # A budget cut can leave the epoch unfinished: --resume then continues it and redoes this end.
    run.epochs_done.assign(epoch + 1 if now >= (epoch + 1) * run.steps_per_epoch else epoch)
    _save_state(run, now)
    kill_point("epoch_saved", epoch + 1)
    log(f"val loss {val_loss if val_loss is not None else float('nan'):.4f}  mIoU {scores['mean_iou']:.4f}  "
        f"pixel acc {scores['pixel_accuracy']:.4f}{'  (best so far, saved best.keras)' if improved else ''}")


def _validation(run: _Run, epoch: int, now: int) -> tuple[dict, float | None]:
    """Scores and loss on the validation split, logged to TensorBoard with the image overlays."""
    import tensorflow as tf

    from fcnseg import evaluate
    from fcnseg.metrics import scores as score

    source = run.source
    try:
        cm, val_loss = evaluate.confusion_matrix(run.model, run.val_ds, source.num_classes, loss_fn=run.eval_loss,
                                                 step=run.val_step)
    except tf.errors.InvalidArgumentError as e:  # a corrupt, truncated or mismatched validation file
        raise FcnsegError(_data_error(e, source)) from None
    if val_loss is not None and not math.isfinite(val_loss):
        raise FcnsegError(f"validation loss became {val_loss} at epoch {epoch + 1} (step {now}); stopped before "
                          f"saving this model, the last good state is in {run.config.run_dir}/state")
    scores = score(cm, source.class_names)
    run.writers.scalars("train", now, {"epoch_loss": _epoch_train_loss(run)})
    run.writers.epoch(now, scores, source.class_names, val_loss)
    every = run.config.image_every
    if every and (epoch + 1) % every == 0 and run.shown is not None:
        from fcnseg.heads import hard_labels

        preds = np.asarray(hard_labels(run.model(run.shown[0], training=False)))
        run.writers.images(now, run.shown[0], run.shown[1], preds, source.classes, cm)
    return scores, val_loss


def _save_checkpoints(run: _Run, epoch: int, scores: dict) -> bool:
    """best.keras when the monitored figure improved (returns whether it did), and last.keras."""
    from fcnseg import checkpoint
    from fcnseg.rundir import kill_point

    monitored = monitor_value(run.config.monitor, scores)
    improved = monitored > float(run.best.numpy())
    meta = run.meta | {"epoch": epoch + 1}
    # Every worker saves (saving may need all of them); only the chief's folder is the run dir.
    if improved:
        run.best.assign(monitored)
        run.best_scores = scores
        checkpoint.save(run.model, os.path.join(run.work_dir, "best.keras"), meta)
        kill_point("best_saved", epoch + 1)
    checkpoint.save(run.model, os.path.join(run.work_dir, "last.keras"), meta)
    kill_point("last_saved", epoch + 1)
    return improved


def _save_raw(run: _Run, epoch: int) -> None:
    """last_raw.keras: the raw weights beside the averaged last.keras (--ema), to compare the two."""
    from fcnseg import checkpoint

    checkpoint.save(run.model, os.path.join(run.work_dir, "last_raw.keras"), run.meta | {"epoch": epoch + 1})


def _epoch_train_loss(run: _Run) -> float | None:
    count = int(run.loss_count.numpy())
    return float(run.loss_sum.numpy()) / count if count else None


# --- writing files, and reading what failed -------------------------------------------------------

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
    """:func:`fcnseg.files.write_json`: a failed write (a full disk) is one line naming the file,
    its temporary file removed and the previous file kept."""
    write_json(path, data)


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
    import tensorflow as tf

    if n <= 0:
        return None
    try:
        for images, labels in source.valid_dataset(n).take(1):
            return images.numpy(), labels.numpy()
    except tf.errors.InvalidArgumentError as e:  # a corrupt, truncated or mismatched validation file
        raise FcnsegError(_data_error(e, source)) from None
    return None


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


def _augment(config: TrainConfig):
    """The training augmentation: --augment-preset's, or none with --no-augment."""
    from fcnseg.data import AUGMENTS, NO_AUGMENT

    return AUGMENTS[config.augment_preset] if config.augment else NO_AUGMENT


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _data_error(error: Exception, source) -> str:
    """Turn a tf.data failure into one line that names the file at fault."""
    # Imported only once a pipeline has failed: the diagnosis re-reads files with check-labels' rules.
    from fcnseg.validate import pipeline_error

    return pipeline_error(error, source)
