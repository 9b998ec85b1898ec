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


def _one_cycle_at(t: float, max_lr: float) -> float:
    """The one-cycle formula at progress ``t`` (0..1), written out in numpy."""
    lo, hi, warm = max_lr / 25, max_lr, 0.3
    if t < warm:
        return lo + (hi - lo) * (1 - np.cos(np.pi * t / warm)) / 2
    return hi / 1e4 + (hi - hi / 1e4) * (1 + np.cos(np.pi * min((t - warm) / (1 - warm), 1.0))) / 2


def test_one_cycle_is_a_registered_schedule_that_round_trips():
    from fcnseg.optimizers import OneCycle

    schedule = OneCycle(0.1, 100)
    assert [float(schedule(s)) for s in (0, 15, 30, 65, 100)] == pytest.approx(
        [_one_cycle_at(s / 100, 0.1) for s in (0, 15, 30, 65, 100)], rel=1e-5)
    config = keras.saving.serialize_keras_object(schedule)
    assert config["registered_name"] == "fcnseg>OneCycle"
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is OneCycle and again.get_config() == schedule.get_config()
    # An optimizer carrying it serialises too (what a compiled .keras model stores).
    opt = keras.optimizers.deserialize(keras.optimizers.serialize(keras.optimizers.Adam(schedule)))
    assert float(opt.learning_rate) == pytest.approx(_one_cycle_at(0, 0.1), rel=1e-5)


def test_one_cycle_follows_the_clock_when_the_budget_runs_ahead_of_the_steps():
    import time

    from fcnseg.optimizers import OneCycle, make_schedule

    # Half the 100-second budget spent at step 0: the cycle is half done, annealing. The expected
    # value brackets the clock's progress around the call (a loaded machine can take seconds).
    deadline = time.time() + 50
    schedule = OneCycle(0.1, 1000, deadline=deadline, budget_s=100)
    before = time.time()
    value = float(schedule(0))
    after = time.time()
    bounds = [_one_cycle_at(1 - (deadline - t) / 100, 0.1) for t in (before - 0.01, after + 0.01)]
    assert after - before < 20 and min(bounds) * 0.999 <= value <= max(bounds) * 1.001
    assert float(schedule(0)) > 10 * float(OneCycle(0.1, 1000)(0))
    # Under --jit the clock read cannot be compiled: make_schedule leaves it out.
    jit = make_schedule(TrainConfig(schedule="onecycle", learning_rate=0.1, max_minutes=1, jit_compile=True), 1000,
                        deadline=time.time() + 1)
    assert jit.deadline is None and float(jit(0)) == pytest.approx(_one_cycle_at(0, 0.1), rel=1e-5)



def test_a_deterministic_run_on_a_clock_budget_follows_steps_and_leaves_determinism_off(tmp_path):
    from tensorflow.python.framework import config as tf_config

    from fcnseg.optimizers import make_schedule
    from fcnseg.train import train

    # TF refuses to read the clock under op determinism: the one-cycle follows steps only there.
    schedule = make_schedule(TrainConfig(schedule="onecycle", max_minutes=1, deterministic=True), 100,
                             deadline=1e12)
    assert schedule.deadline is None
    config = TrainConfig(run_dir=str(tmp_path / "run"), width=0.25, image_size=(48, 32), batch_size=2,
                         steps_per_epoch=2, val_steps=1, epochs=1, schedule="onecycle", max_minutes=5,
                         source_options={"train_size": 4, "val_size": 2}, num_images=0, deterministic=True)
    assert not tf_config.is_op_determinism_enabled()
    train(config, log=lambda line: None)
    assert (tmp_path / "run" / "last.keras").exists()
    assert not tf_config.is_op_determinism_enabled()  # process-wide: restored for the caller's next run

_JAX_CODE = """
import json, sys, time
sys.path.insert(0, {tests!r})
import backend_worker  # installs the TensorFlow blocker
import keras, numpy as np
from fcnseg.optimizers import FusedAdam, OneCycle, make_optimizer
from fcnseg.options import TrainConfig

def run(opt):
    var = keras.Variable(np.linspace(-1, 1, 6).astype("float32"))
    opt.build([var])
    for k in range(4):
        opt.apply_gradients([(np.full(6, k - 1.5, np.float32), var)])
    return var.numpy().tolist()

print(json.dumps({{
    "tf": "tensorflow" in sys.modules, "backend": keras.backend.backend(),
    "fused": run(FusedAdam(1e-2)), "keras": run(keras.optimizers.Adam(1e-2)),
    "made": type(make_optimizer(TrainConfig(optimizer="adam"), 10)).__name__,
    "made_w": type(make_optimizer(TrainConfig(optimizer="adam", weight_decay=0.1), 10)).__name__,
    "cycle": [float(OneCycle(0.1, 100)(s)) for s in (0, 30, 100)],
    # No clock without TensorFlow: the deadline is ignored and the cycle follows steps.
    "cycle_deadline": float(OneCycle(0.1, 100, deadline=time.time() + 50, budget_s=100)(0)),
}}))
"""


def test_optimizers_work_under_jax_without_tensorflow():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("jax", reason="jax is not installed")
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", FCNSEG_BLOCK_TENSORFLOW="1",
               PYTHONPATH=os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _JAX_CODE.format(tests=str(tests))], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "jax" and not got["tf"]
    np.testing.assert_allclose(got["fused"], got["keras"], rtol=1e-6)
    assert got["fused"] != np.linspace(-1, 1, 6).astype("float32").tolist()  # the variable moved
    assert (got["made"], got["made_w"]) == ("Adam", "AdamW")
    assert got["cycle"] == pytest.approx([_one_cycle_at(t, 0.1) for t in (0, 0.3, 1.0)], rel=1e-5)
    assert got["cycle_deadline"] == pytest.approx(_one_cycle_at(0, 0.1), rel=1e-5)
