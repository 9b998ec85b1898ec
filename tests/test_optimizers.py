"""fcnseg.optimizers: the fused Adam/AdamW give Keras' results step for step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcnseg.optimizers import FusedAdam, FusedAdamW, make_optimizer
from fcnseg.options import TrainConfig


def _run(make_opt, steps: int = 5, seed: int = 0, strategy=None):
    """Apply ``steps`` random gradients to two variables in a tf.function; return variables, slots and
    the op types of the step's graph, its nested (cond) functions included."""
    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(seed)
    with strategy.scope():
        variables = [keras.Variable(rng.normal(size=(4, 3)).astype("float32")),
                     keras.Variable(rng.normal(size=(3,)).astype("float32"))]
        opt = make_opt()
        opt.build(variables)
    grads = [[rng.normal(size=v.shape).astype("float32") for v in variables] for _ in range(steps)]

    @tf.function
    def step(gs):
        strategy.run(lambda *g: opt.apply_gradients(zip(g, variables)), args=tuple(gs))

    for gs in grads:
        step(gs)
    graph_def = step.get_concrete_function(grads[0]).graph.as_graph_def()
    op_types = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables], op_types


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5)


@pytest.mark.parametrize("kwargs", [{}, {"clipnorm": 0.5, "beta_1": 0.8}, {"gradient_accumulation_steps": 2}])
def test_fused_adam_matches_keras_adam(kwargs):
    expected, keras_ops = _run(lambda: keras.optimizers.Adam(_schedule(), **kwargs))
    got, fused_ops = _run(lambda: FusedAdam(_schedule(), **kwargs))
    assert "ResourceApplyAdam" in fused_ops and "ResourceApplyAdam" not in keras_ops
    assert not np.allclose(expected[0], _run(lambda: keras.optimizers.Adam(0.0), steps=1)[0][0])  # the variables moved
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_fused_adamw_matches_keras_adamw_with_weight_decay():
    expected, _ = _run(lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1))
    got, fused_ops = _run(lambda: FusedAdamW(1e-2, weight_decay=0.1))
    assert "ResourceApplyAdam" in fused_ops
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_fused_adam_falls_back_for_amsgrad_and_under_a_strategy():
    expected, _ = _run(lambda: keras.optimizers.Adam(1e-2, amsgrad=True))
    got, ops = _run(lambda: FusedAdam(1e-2, amsgrad=True))
    assert "ResourceApplyAdam" not in ops
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    got, ops = _run(lambda: FusedAdam(1e-2), strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert "ResourceApplyAdam" not in ops
    np.testing.assert_allclose(got[0], _run(lambda: keras.optimizers.Adam(1e-2))[0][0], rtol=1e-5, atol=1e-7)


def test_train_uses_the_fused_adam():
    assert type(make_optimizer(TrainConfig(optimizer="adam"), 10)) is FusedAdam
    assert type(make_optimizer(TrainConfig(optimizer="adam", weight_decay=1e-4), 10)) is FusedAdamW
    scaled = make_optimizer(TrainConfig(optimizer="adam", mixed_precision="float16"), 10)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer) and type(scaled.inner_optimizer) is FusedAdam
