"""Weight averaging (``fcnseg train --ema DECAY``): an exponential moving average of the model's
weights, kept beside the weights that training updates.

The averaged weights are what validation measures and what ``best.keras`` and ``last.keras``
hold; training itself never sees them (its trajectory is the same with or without ``--ema``),
and ``last_raw.keras`` keeps the raw weights of the same run for comparison. Batch-norm
statistics are averaged like the other float weights, as timm's ``ModelEmaV2`` does.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class WeightAverage:
    """Shadow copies of a model's float weights, moved toward them after every training step."""

    def __init__(self, model: Any, decay: float):
        import tensorflow as tf

        self.decay = decay
        # Integer variables (seed-generator states) are counters, not weights to average.
        self.weights = [w for w in model.weights if "float" in str(w.dtype)]
        self.shadow = [tf.Variable(w.value, trainable=False, name="ema_" + w.path.replace("/", "_"))
                       for w in self.weights]

    def update(self, steps_done: Any) -> None:
        """Move the averages one step (traceable: called inside the compiled training step)."""
        import tensorflow as tf

        steps = tf.cast(steps_done, tf.float32)
        # TensorFlow's ExponentialMovingAverage warm-up (num_updates): early on the decay is small,
        # so the average forgets the random initial weights within tens of steps, not thousands.
        decay = tf.minimum(self.decay, (1.0 + steps) / (10.0 + steps))
        for shadow, weight in zip(self.shadow, self.weights):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.cast(weight.value, shadow.dtype))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside this block and its raw weights again after it."""
        raw = [w.numpy() for w in self.weights]
        for weight, shadow in zip(self.weights, self.shadow):
            weight.assign(shadow.read_value())
        try:
            yield
        finally:
            for weight, value in zip(self.weights, raw):
                weight.assign(value)
