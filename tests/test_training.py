"""Training features of issue 5: schedules, accumulation, precision, distribution,
NaN stops, reproducibility and what TensorBoard receives."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fcnseg.errors import FcnsegError
from fcnseg.optimizers import make_optimizer, make_schedule
from fcnseg.train import TrainConfig, train

TINY = dict(width=0.125, image_size=(48, 32), batch_size=2, steps_per_epoch=3, val_steps=2, epochs=1,
            source_options={"train_size": 8, "val_size": 4}, num_images=2)


def tiny(tmp_path, **kw):
    return TrainConfig(**(TINY | {"run_dir": str(tmp_path / "run")} | kw))


def test_schedules():
    cfg = TrainConfig(learning_rate=0.1)
    poly = make_schedule(cfg.__class__(learning_rate=0.1, schedule="poly"), 100)
    assert float(poly(0)) == pytest.approx(0.1) and float(poly(50)) == pytest.approx(0.1 * 0.5**0.9, rel=1e-4)
    step = make_schedule(TrainConfig(learning_rate=0.1, schedule="step"), 90)
    assert [round(float(step(s)), 6) for s in (0, 61, 81)] == [0.1, 0.01, 0.001]
    one = make_schedule(TrainConfig(learning_rate=0.1, schedule="onecycle"), 100)
    values = [float(one(s)) for s in range(100)]
    assert int(np.argmax(values)) in range(28, 33) and values[0] < 0.01 and values[-1] < 0.001


def test_gradient_accumulation_updates_every_n_batches():
    import keras

    opt = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=1.0, momentum=0.0, accumulate=2), 10)
    var = keras.Variable(np.zeros(3, np.float32))
    opt.build([var])
    opt.apply_gradients([(np.ones(3, np.float32), var)])
    assert np.allclose(var.numpy(), 0)  # first of two batches: nothing applied yet
    opt.apply_gradients([(3 * np.ones(3, np.float32), var)])
    assert np.allclose(var.numpy(), -2)  # the mean of the two gradients, applied once


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_receives_scalars_images_and_hparams(tmp_path):
    cfg = tiny(tmp_path)
    train(cfg, log=lambda s: None)
    train_tags = _events(tmp_path / "run" / "logs" / "train").Tags()
    val = _events(tmp_path / "run" / "logs" / "val")
    scalar_tags = set(train_tags["tensors"]) | set(train_tags["scalars"])
    assert {"loss", "learning_rate"} <= scalar_tags
    val_tags = set(val.Tags()["tensors"]) | set(val.Tags()["scalars"])
    assert {"mean_iou", "pixel_accuracy", "loss", "iou/road", "iou/car", "iou/sky"} <= val_tags
    image_tags = set(val.Tags()["tensors"]) | set(val.Tags()["images"])
    assert "overlays/input_truth_prediction" in image_tags and "confusion_matrix" in image_tags
    overlays = val.Tensors("overlays/input_truth_prediction")[0].tensor_proto.string_val
    assert len(overlays) - 2 == 2  # width, height, then one PNG per shown sample
    assert any("hparams" in p for p in val.PluginTagToContent("hparams") or {}) or val.PluginTagToContent("hparams")


def test_nan_loss_stops_with_step_and_learning_rate(tmp_path, monkeypatch):
    # The loss itself turns NaN (as it does when training diverges). NaN images are no way to get
    # there: oneDNN's fused conv/batch-norm + ReLU kernels map NaN to 0, so the loss stays finite.
    from fcnseg import losses

    make_loss = losses.make_loss

    def nan_loss(*args, **kwargs):
        loss = make_loss(*args, **kwargs)
        return lambda labels, logits: loss(labels, logits) * float("nan")

    monkeypatch.setattr(losses, "make_loss", nan_loss)
    with pytest.raises(FcnsegError, match=r"loss became nan at step 1 \(learning rate 0.001\)"):
        train(tiny(tmp_path), log=lambda s: None)
    assert not (tmp_path / "run" / "best.keras").exists()


def test_same_seed_same_first_epoch_loss(tmp_path):
    a = train(tiny(tmp_path / "a"), log=lambda s: None)
    b = train(tiny(tmp_path / "b"), log=lambda s: None)
    ha = json.loads((tmp_path / "a" / "run" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "run" / "history.json").read_text())
    assert ha[0]["train_loss"] == pytest.approx(hb[0]["train_loss"], rel=1e-5)
    assert a["mean_iou"] == pytest.approx(b["mean_iou"], abs=1e-6)
    train(tiny(tmp_path / "c", seed=1), log=lambda s: None)
    hc = json.loads((tmp_path / "c" / "run" / "history.json").read_text())
    assert hc[0]["train_loss"] != pytest.approx(ha[0]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_trains_and_keeps_float32_outputs(tmp_path, precision):
    import keras

    from fcnseg import checkpoint

    scores = train(tiny(tmp_path, mixed_precision=precision, loss="ce+dice"), log=lambda s: None)
    assert 0 <= scores["mean_iou"] <= 1
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored after training
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.isfinite(history[0]["train_loss"])
    model, _, _ = checkpoint.load(str(tmp_path / "run" / "last.keras"))
    assert model(np.zeros((1, 32, 48, 3), np.float32)).dtype == "float32"


def test_bad_training_options(tmp_path):
    with pytest.raises(FcnsegError, match="--loss"):
        train(tiny(tmp_path, loss="hinge"), log=lambda s: None)
    with pytest.raises(FcnsegError, match="--strategy multiworker needs the TF_CONFIG"):
        train(tiny(tmp_path / "b", strategy="multiworker"), log=lambda s: None)
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(run_dir, strategy):
    return [sys.executable, "-m", "fcnseg.cli", "train", "--width", "0.125", "--image-size", "48x32",
            "--batch-size", "4", "--steps-per-epoch", "3", "--val-steps", "1", "--epochs", "1",
            "--source-option", "train_size=8", "--source-option", "val_size=4", "--image-every", "0",
            "--strategy", strategy, "--run-dir", str(run_dir)]


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    # Two logical CPU devices must be configured before TensorFlow starts: a fresh process.
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from fcnseg.cli import main
        main({_train_cmd(tmp_path / 'run', 'mirrored')[3:]!r})
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mirrored strategy: 2 replicas in sync" in out.stdout
    assert (tmp_path / "run" / "best.keras").is_file()


def test_multiworker_two_local_processes(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(_train_cmd(tmp_path / "run", "multiworker"), env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "multiworker strategy: 2 replicas in sync" in out
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["step"] == 3
    assert (tmp_path / "run" / "best.keras").is_file()
    assert not any(name.startswith(".workers") for name in os.listdir(tmp_path / "run"))
