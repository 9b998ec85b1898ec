"""fcnseg train --augment-preset: the preset reaches the training pipeline and the saved config;
an unknown one is a one-line error naming the option."""

import json
import subprocess
import sys

import numpy as np

from fcnseg.data import AUGMENTS, augment_pair, photometric
from fcnseg.train import TrainConfig, _augment


def test_the_preset_picks_the_pipelines_augmentation():
    assert _augment(TrainConfig(augment_preset="strong")) is AUGMENTS["strong"]
    assert _augment(TrainConfig()) is AUGMENTS["default"]
    assert _augment(TrainConfig(augment=False, augment_preset="strong")).brightness == 0.0


def test_strong_jitter_reaches_darker_images_than_the_default():
    import tensorflow as tf

    image = tf.fill([8, 8, 3], 110.0)  # a daylight frame's mean grey
    means = {name: np.array([float(tf.reduce_mean(photometric(image, tf.constant([s, 1]), aug))) for s in range(200)])
             for name, aug in AUGMENTS.items()}
    # CamVid's dusk sequence averages 59: a tenth of the strong draws are darker, under 1% of the default's
    assert np.mean(means["strong"] < 59) > 0.1 and np.mean(means["default"] < 59) < 0.01
    assert means["strong"].max() > means["default"].max() + 20


def test_strong_wide_zooms_objects_out_and_in_further_than_strong():
    import tensorflow as tf

    image = tf.zeros([32, 32, 3])
    label = tf.pad(tf.ones([8, 8], tf.int32), [[12, 12], [12, 12]])  # an 8x8 object of class 1 in class 0
    stats = {}
    for name in ("strong", "strong-wide"):
        pairs = [augment_pair(image, label, tf.constant([s, 7]), (32, 32), 255, AUGMENTS[name])[1] for s in range(60)]
        stats[name] = (max(int(tf.reduce_sum(tf.cast(p == 1, tf.int32))) for p in pairs),
                       max(float(tf.reduce_mean(tf.cast(p == 255, tf.float32))) for p in pairs))
    # 0.75-1.25x: the object at most 10x10, at most 1 - 0.75^2 of the crop void padding; 0.5-2x: up to
    # 16x16, and up to 1 - 0.5^2 of the crop void (never a class the label does not have)
    assert stats["strong"][0] <= 100 and stats["strong"][1] <= 0.4375
    assert stats["strong-wide"][0] > 180 and stats["strong-wide"][1] > 0.6


def test_every_preset_is_described_in_the_cli_help():
    from click.testing import CliRunner

    from fcnseg.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    for name in AUGMENTS:
        assert f"{name} (" in text or f"{name};" in text, name


def test_cli_records_the_preset_and_refuses_an_unknown_one(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "fcnseg.cli", "train", "--width", "0.25", "--image-size", "48x32",
            "--batch-size", "2", "--steps-per-epoch", "1", "--val-steps", "1", "--epochs", "1",
            "--source-option", "train_size=4", "--source-option", "val_size=2"]
    ok = subprocess.run(args + ["--augment-preset", "strong", "--run-dir", str(run_dir)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((run_dir / "config.json").read_text())["augment_preset"] == "strong"
    bad = subprocess.run(args + ["--augment-preset", "dusk", "--run-dir", str(tmp_path / "bad")],
                         capture_output=True, text=True)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("Error")]
    assert bad.returncode != 0 and len(errors) == 1 and "--augment-preset" in errors[0] and "strong" in errors[0]
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    assert np.isfinite(json.loads((run_dir / "history.json").read_text())[0]["train_loss"])
