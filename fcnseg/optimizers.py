"""Optimizers and learning-rate schedules by name (``OPTIMIZERS``, ``SCHEDULES``), and a fused Adam.

``make_optimizer(config, total_steps)`` builds what ``fcnseg train --optimizer
--schedule`` ask for; the names are the keys of the two tables (``fcnseg.options``
checks a configuration against them before anything is built).

``FusedAdam`` / ``FusedAdamW`` are Keras' Adam and AdamW with the dense update as
one fused TensorFlow kernel per variable. Keras 3's Adam updates each variable
with about ten element-wise ops (m, v, the square root, the division, three
assigns), each a pass over memory; for FCN-8s's 134M parameters that is about
6% of a training step on a 2-core CPU. TensorFlow's ``ResourceApplyAdam`` does
the same arithmetic in one multi-threaded kernel: FCN-8s's training step at
480x360, batch 4, went from 6.30 to 5.99 s (the step without any update: 5.99
s). The classes take Keras' arguments, slots, schedules, weight decay, clipping
and gradient accumulation; only ``update_step`` differs, and it falls back to
Keras' own for what the kernel does not cover (AMSGrad, sparse gradients,
variables of other dtypes, a tf.distribute strategy, a backend other than
TensorFlow). SGD with momentum (two passes in Keras) measured no faster fused
and is left alone.

This module imports TensorFlow only where the backend is TensorFlow, so it
works under ``KERAS_BACKEND=jax`` with TensorFlow absent.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import keras
from keras import ops

_FUSED_DTYPES = ("float32", "float64", "float16", "bfloat16")
_WARM = 0.3  # share of the one-cycle spent warming up


class OptimizerSettings(Protocol):
    """What :func:`make_optimizer` reads; a ``fcnseg.train.TrainConfig`` has all of it."""

    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: str
    accumulate: int
    mixed_precision: str | None
    jit_compile: bool
    max_minutes: float | None
    deterministic: bool


def _tensorflow_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package="fcnseg")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's one-cycle: cosine warm-up from ``max_lr / 25`` to ``max_lr`` over 30% of
    ``total_steps``, then cosine anneal to ``max_lr / 1e4``.

    With a ``deadline`` (Unix time) and ``budget_s`` the cycle's progress is the
    larger of steps done and wall-clock spent, so a wall-clock budget that runs
    out before the planned steps (a slower or shared machine) still ends
    annealed. The clock is read with TensorFlow's ``tf.timestamp``: under another
    backend, or inside an XLA-compiled step (which cannot compile it), leave the
    deadline out and the cycle follows steps only.
    """

    def __init__(self, max_lr: float, total_steps: int, deadline: float | None = None,
                 budget_s: float = 0.0) -> None:
        self.max_lr, self.total_steps = max_lr, total_steps
        self.deadline, self.budget_s = deadline, budget_s

    def __call__(self, step):
        t = ops.cast(step, "float32") / self.total_steps
        if self.deadline and self.budget_s and _tensorflow_backend():
            t = ops.maximum(t, _budget_spent(self.deadline, self.budget_s))
        lo, hi = self.max_lr / 25.0, self.max_lr
        up = lo + (hi - lo) * (1 - ops.cos(math.pi * t / _WARM)) / 2
        down = hi / 1e4 + (hi - hi / 1e4) * (1 + ops.cos(math.pi * ops.minimum((t - _WARM) / (1 - _WARM), 1.0))) / 2
        return ops.where(t < _WARM, up, down)

    def get_config(self) -> dict:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "deadline": self.deadline,
                "budget_s": self.budget_s}

    @classmethod
    def from_config(cls, config: dict) -> "OneCycle":
        return cls(**config)


def _budget_spent(deadline: float, budget_s: float):
    import tensorflow as tf  # reached only under the TensorFlow backend

    # In float64: a Unix time in float32 is only good to about two minutes.
    return tf.cast(1.0 - (deadline - tf.timestamp()) / budget_s, tf.float32)


class _FusedAdamStep:
    def _fusable(self, gradient, variable) -> bool:
        import tensorflow as tf

        # Under a strategy the slots are distributed variables whose per-replica update
        # Keras routes through assign(); the raw kernels would need each replica's handle.
        return (not tf.distribute.has_strategy() and not isinstance(gradient, tf.IndexedSlices)
                and tf.as_dtype(variable.dtype).name in _FUSED_DTYPES)

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _tensorflow_backend() or not self._fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = tf.as_dtype(variable.dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        # Same formula as Keras' Adam: lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon).
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


@keras.saving.register_keras_serializable(package="fcnseg")
class FusedAdam(_FusedAdamStep, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with a fused dense update (same arguments and results)."""


@keras.saving.register_keras_serializable(package="fcnseg")
class FusedAdamW(_FusedAdamStep, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with a fused dense update (decoupled weight decay stays Keras')."""


# --- schedules: (config, optimizer updates in all, deadline) -> learning rate -------------------

def _constant(config: OptimizerSettings, total_steps: int, deadline: float | None):
    return config.learning_rate


def _poly(config: OptimizerSettings, total_steps: int, deadline: float | None):
    # FCN / DeepLab habit: lr * (1 - t/T)^0.9
    return keras.optimizers.schedules.PolynomialDecay(config.learning_rate, max(total_steps, 1),
                                                      end_learning_rate=0.0, power=0.9)


def _step(config: OptimizerSettings, total_steps: int, deadline: float | None):
    # Divide by 10 at 2/3 and again at 8/9 of training.
    lr = config.learning_rate
    bounds = [max(1, int(total_steps * 2 / 3)), max(2, int(total_steps * 8 / 9))]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr / 10, lr / 100])


def _onecycle(config: OptimizerSettings, total_steps: int, deadline: float | None):
    # XLA cannot compile a clock read (tf.timestamp), and TF refuses it under op determinism (a
    # clock-driven rate would break bit-identical reruns anyway): there the cycle follows steps only.
    clock = None if config.jit_compile or config.deterministic else deadline
    return OneCycle(config.learning_rate, max(total_steps, 2), clock, 60 * (config.max_minutes or 0))


SCHEDULES: dict[str, Callable] = {"constant": _constant, "poly": _poly, "step": _step, "onecycle": _onecycle}


def make_schedule(config: OptimizerSettings, total_steps: int, deadline: float | None = None):
    """The learning rate ``config.schedule`` names over ``total_steps`` updates: a float or a schedule."""
    return SCHEDULES[config.schedule](config, total_steps, deadline)


# --- optimizers: (config, learning rate, options every optimizer takes) -> optimizer --------------

def _adam(config: OptimizerSettings, lr, common: dict):
    if not _tensorflow_backend():  # the fused kernel is TensorFlow's
        return keras.optimizers.AdamW(lr, **common) if config.weight_decay else keras.optimizers.Adam(lr, **common)
    return FusedAdamW(lr, **common) if config.weight_decay else FusedAdam(lr, **common)


def _sgd(config: OptimizerSettings, lr, common: dict):
    return keras.optimizers.SGD(lr, momentum=config.momentum, **common)


def _rmsprop(config: OptimizerSettings, lr, common: dict):
    return keras.optimizers.RMSprop(lr, momentum=config.momentum, **common)


OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "sgd": _sgd, "rmsprop": _rmsprop}


def make_optimizer(config: OptimizerSettings, total_steps: int,
                   deadline: float | None = None) -> keras.optimizers.Optimizer:
    """The optimizer ``config`` names, its learning rate following ``config.schedule`` over
    ``total_steps`` updates (``deadline``: Unix time the run must end by, for onecycle)."""
    common = {"weight_decay": config.weight_decay or None,
              "gradient_accumulation_steps": config.accumulate if config.accumulate > 1 else None}
    opt = OPTIMIZERS[config.optimizer](config, make_schedule(config, total_steps, deadline), common)
    if config.mixed_precision == "float16":
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def scale_learning_rate(optimizer: keras.optimizers.Optimizer, variables, factor: float) -> None:
    """Makes ``optimizer`` update ``variables`` with its learning rate times ``factor`` (a pretrained
    encoder fine-tuned slower than the decoder); every other variable keeps the rate.

    The rate is scaled inside each variable's update, not the gradient: Adam and RMSprop divide the
    gradient's scale away. Decoupled weight decay keeps the base rate.

    Example:
        >>> scale_learning_rate(optimizer, model.get_layer("resnet18").trainable_variables, 0.1)
    """
    if factor == 1.0:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's updates are its inner's
    # Keras hands update_step the backend's variable (tf.Variable under TensorFlow); its own key maps both.
    scaled = {inner._var_key(v) for v in variables}
    base = inner.update_step

    def update_step(gradient, variable, learning_rate):
        if inner._var_key(variable) in scaled:
            learning_rate = ops.multiply(learning_rate, ops.cast(factor, learning_rate.dtype))
        return base(gradient, variable, learning_rate)

    inner.update_step = update_step
