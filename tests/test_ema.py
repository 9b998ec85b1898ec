"""--ema: the averaged weights are validated and saved, training's own trajectory is untouched,
last_raw.keras keeps the raw weights, and a resumed run averages exactly as an unbroken one."""

import subprocess
import sys

import numpy as np
import pytest

from fcnseg.train import TrainConfig, train

TINY = dict(width=0.25, image_size=(48, 32), batch_size=2, steps_per_epoch=3, val_steps=2, epochs=2,
            source_options={"train_size": 8, "val_size": 4}, num_images=0, deterministic=True)


def weights(path):
    from fcnseg import checkpoint

    model, _, _ = checkpoint.load(path)
    return model.get_weights()


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_average_follows_tensorflows_warm_up_and_swaps_back():
    import keras

    from fcnseg.ema import WeightAverage

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    average = WeightAverage(model, 0.9)
    start = [w.copy() for w in model.get_weights()]
    expected = [w.copy() for w in start]
    for step in range(1, 4):
        model.set_weights([w + 1.0 for w in model.get_weights()])
        average.update(step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, model.get_weights())]
    raw = model.get_weights()
    with average.swapped():
        for got, want in zip(model.get_weights(), expected):  # batch-norm statistics included
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert same(model.get_weights(), raw)


def test_ema_saves_the_average_and_leaves_training_unchanged(tmp_path):
    plain = TrainConfig(**TINY, run_dir=str(tmp_path / "plain"))
    averaged = TrainConfig(**TINY, ema=0.9, run_dir=str(tmp_path / "ema"))
    train(plain, log=lambda s: None)
    train(averaged, log=lambda s: None)
    raw = weights(tmp_path / "ema" / "last_raw.keras")
    assert same(raw, weights(tmp_path / "plain" / "last.keras"))  # the average never feeds back
    assert not (tmp_path / "plain" / "last_raw.keras").exists()
    ema_last = weights(tmp_path / "ema" / "last.keras")
    assert not same(ema_last, raw)
    # 6 steps at decay min(0.9, (1+t)/(10+t)): the average lies between the first and last weights.
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(ema_last, raw))


def test_resumed_ema_run_equals_an_unbroken_one(tmp_path):
    whole = TrainConfig(**TINY, ema=0.9, run_dir=str(tmp_path / "whole"))
    train(whole, log=lambda s: None)
    first = TrainConfig(**(TINY | {"epochs": 1}), ema=0.9, run_dir=str(tmp_path / "split"))
    train(first, log=lambda s: None)
    train(TrainConfig(run_dir=str(tmp_path / "split")), resume=True, resume_epochs=2, log=lambda s: None)
    for name in ("last.keras", "last_raw.keras"):
        assert same(weights(tmp_path / "split" / name), weights(tmp_path / "whole" / name)), name


@pytest.mark.parametrize("value", ["1", "-0.5", "nan"])
def test_bad_ema_is_one_line_naming_the_option(tmp_path, value):
    run_dir = tmp_path / "r"
    result = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", "--ema", value, "--run-dir", str(run_dir)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--ema" in errors[0] and "Traceback" not in result.stderr
    assert not run_dir.exists()
