"""`fcnseg train` end to end on the synthetic source, and its bad-input errors."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main

TINY = ["--width", "0.125", "--image-size", "48x32", "--batch-size", "2", "--steps-per-epoch", "3",
        "--val-steps", "2", "--source-option", "val_size=4", "--source-option", "train_size=8"]


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "r"
    result = run("train", *TINY, "--epochs", "2", "--run-dir", str(run_dir), "--save-every", "2")
    assert result.exit_code == 0, result.output
    return run_dir, result


def test_train_writes_checkpoints_config_and_events(tiny_run):
    run_dir, result = tiny_run
    for name in ("best.keras", "last.keras", "config.json", "history.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "linknet" and config["image_size"] == [48, 32]
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0 <= h["mean_iou"] <= 1 for h in history)
    assert list((run_dir / "logs" / "train").iterdir()) and list((run_dir / "logs" / "val").iterdir())
    assert (run_dir / "state" / "checkpoint").is_file()
    assert "best val mIoU" in result.output


def test_checkpoint_carries_classes_and_reloads(tiny_run):
    from fcnseg import checkpoint

    run_dir, _ = tiny_run
    model, meta, classes = checkpoint.load(str(run_dir / "best.keras"))
    assert classes.class_names == ("sky", "building", "vegetation", "road", "lane_marking", "car")
    out = model(np.zeros((1, 32, 48, 3), np.float32))
    assert out.shape == (1, 32, 48, 6)


def test_existing_run_dir_is_never_overwritten(tiny_run):
    run_dir, _ = tiny_run
    before = (run_dir / "best.keras").stat().st_mtime_ns
    result = run("train", *TINY, "--run-dir", str(run_dir))
    assert result.exit_code != 0
    assert "--run-dir" in result.output and "not empty" in result.output
    assert (run_dir / "best.keras").stat().st_mtime_ns == before


def test_resume_continues_from_saved_step(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run[0], run_dir)
    result = run("train", "--resume", "--run-dir", str(run_dir), "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "at step 6" in result.output
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["step"] == 9


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data-source", "nope"], "--data-source 'nope' is unknown"),
        (["--data-source", "missing_file.py"], "missing_file.py"),
        (["--model", "nosuchnet"], "--model"),
        (["--image-size", "48by32"], "--image-size"),
        (["--source-option", "colour=red"], "--source-option colour"),
        (["--class-weights", "1,2"], "--class-weights has 2 values"),
    ],
)
def test_bad_options_fail_with_one_line(tmp_path, args, needle):
    result = run("train", *TINY, "--run-dir", str(tmp_path / "r"), *args)
    assert result.exit_code != 0
    assert needle in result.output
    assert not (tmp_path / "r" / "best.keras").exists()


def test_fcn_bfloat16_on_the_cpu_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the refusal is for oneDNN CPU kernels")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    result = run("train", *TINY, "--model", "fcn8s", "--mixed-precision", "bfloat16", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code != 0
    assert "--mixed-precision bfloat16 with --model fcn8s" in result.output
    assert "TF_ENABLE_ONEDNN_OPTS=0" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    # LinkNet in bfloat16 is not refused.
    from fcnseg.options import TrainConfig, validate

    validate(TrainConfig(model="linknet", mixed_precision="bfloat16"))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    validate(TrainConfig(model="fcn8s", mixed_precision="bfloat16"))


def test_corrupt_image_stops_training_with_its_name(tmp_path):
    import cv2

    data = tmp_path / "data"
    (data / "images" / "train").mkdir(parents=True)
    (data / "masks" / "train").mkdir(parents=True)
    (data / "classes.csv").write_text("name,id\na,0\nb,1\n")
    rng = np.random.default_rng(0)
    for k in range(4):
        cv2.imwrite(str(data / "images" / "train" / f"{k}.png"), rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
        cv2.imwrite(str(data / "masks" / "train" / f"{k}.png"), rng.integers(0, 2, (32, 48), dtype=np.uint8))
    bad = data / "images" / "train" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    result = run("train", "--data-source", "folder", "--data-dir", str(data), "--source-option", "val_fraction=0.25",
                 "--width", "0.125", "--image-size", "48x32", "--batch-size", "2", "--epochs", "1",
                 "--run-dir", str(tmp_path / "r"))
    assert result.exit_code != 0
    assert f"{bad}: missing, empty, corrupt or truncated image" in result.output.strip().splitlines()[-1]
    assert not (tmp_path / "r" / "best.keras").exists()


def test_resume_without_state_is_an_error(tmp_path):
    result = run("train", "--resume", "--run-dir", str(tmp_path))
    assert result.exit_code != 0 and "no run to resume" in result.output


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("train", *TINY, "--run-dir", str(blocker / "sub"))
    assert result.exit_code != 0 and "--run-dir" in result.output


def test_user_source_file(tmp_path):
    src = tmp_path / "my_source.py"
    src.write_text(
        "from fcnseg.sources.synthetic import SyntheticSource\n"
        "class Mine(SyntheticSource):\n"
        "    name = 'mine'\n"
        "def make_source(data_dir, image_size=None, seed=0, **options):\n"
        "    return Mine(image_size, seed, train_size=4, val_size=2)\n"
    )
    result = run("train", *TINY[:6], "--steps-per-epoch", "1", "--epochs", "1", "--data-source", str(src),
                 "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad_source.py"
    bad.write_text("x = 1\n")
    result = run("train", *TINY, "--data-source", str(bad), "--run-dir", str(tmp_path / "r2"))
    assert result.exit_code != 0 and "make_source" in result.output


def test_sources_command_lists_builtins():
    result = run("sources")
    assert result.exit_code == 0
    assert "synthetic" in result.output and "6 classes" in result.output


@pytest.mark.slow
def test_default_training_learns(tmp_path):
    """The README's main job: a short real run beats the constant prediction clearly."""
    result = run("train", "--epochs", "3", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    best = json.loads((tmp_path / "r" / "history.json").read_text())[-1]["best"]["mean_iou"]
    # predicting the most frequent class everywhere scores about 0.05 mIoU on these scenes
    assert best > 0.35, best


def test_resume_after_kill_9(tmp_path):
    """A run killed with SIGKILL resumes from its last saved step and finishes the epoch."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "r"
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", *TINY[:6], "--steps-per-epoch", "150", "--val-steps", "1",
           "--source-option", "val_size=2", "--source-option", "train_size=8", "--epochs", "1",
           "--save-every", "3", "--image-every", "0", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run_dir / "state" / "checkpoint"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no state was saved before the kill"
    assert not (run_dir / "history.json").exists()  # killed mid-epoch
    saved = int(state.read_text().split('"')[1].split("-")[-1])
    assert saved % 3 == 0 and 0 < saved < 150
    result = run("train", "--resume", "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert f"at step {saved}" in result.output
    history = json.loads((run_dir / "history.json").read_text())
    assert history[-1]["step"] == 150
    assert not [p for p in os.listdir(run_dir) if "partial" in p]


def test_init_from_checkpoint(tiny_run, tmp_path):
    from fcnseg import checkpoint

    best = str(tiny_run[0] / "best.keras")
    result = run("train", *TINY, "--epochs", "1", "--steps-per-epoch", "1", "--init-from", best,
                 "--lr", "1e-12", "--run-dir", str(tmp_path / "ok"))
    assert result.exit_code == 0, result.output
    start, _, _ = checkpoint.load(best)
    tuned, _, _ = checkpoint.load(str(tmp_path / "ok" / "last.keras"))
    # a ~zero learning rate: the fine-tuned run starts from (and stays at) the checkpoint's conv weights
    np.testing.assert_allclose(tuned.get_weights()[0], start.get_weights()[0], atol=1e-6)
    wide = [a if a != "0.125" else "0.25" for a in TINY]
    result = run("train", *wide, "--init-from", best, "--run-dir", str(tmp_path / "shape"))
    assert result.exit_code != 0 and "--init-from" in result.output and "another shape" in result.output
    src = tmp_path / "two.py"
    src.write_text(
        "from fcnseg.classes import table\n"
        "from fcnseg.sources.synthetic import SyntheticSource\n"
        "class Two(SyntheticSource):\n"
        "    classes = table([('a', 0, 0, (1, 1, 1)), ('b', 1, 1, (2, 2, 2))])\n"
        "def make_source(data_dir, image_size=None, seed=0, train_size=8, val_size=4):\n"
        "    return Two(image_size, seed, train_size=int(train_size), val_size=int(val_size))\n")
    result = run("train", *TINY, "--data-source", str(src), "--init-from", best, "--run-dir", str(tmp_path / "c"))
    assert result.exit_code != 0 and "predicts 6 classes but the source has 2" in result.output


def _folder_data(root, splits=("train", "val"), n=2):
    import cv2

    for split in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for k in range(n):
            rng = np.random.default_rng(k)
            cv2.imwrite(str(root / "images" / split / f"{k}.png"), rng.integers(0, 255, (32, 48, 3), np.uint8))
            cv2.imwrite(str(root / "masks" / split / f"{k}.png"), rng.integers(0, 2, (32, 48), np.uint8))
    (root / "classes.csv").write_text("name,id\na,0\nb,1\n")
    return root


@pytest.mark.parametrize("num_images", [4, 0])
def test_corrupt_validation_label_stops_training_with_its_name(tmp_path, num_images):
    """With num_images > 0 the fixed TensorBoard samples read it first; with 0, the epoch's validation."""
    from fcnseg.errors import FcnsegError
    from fcnseg.train import TrainConfig, train

    data = _folder_data(tmp_path / "data")
    bad = data / "masks" / "val" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    config = TrainConfig(data_source="folder", data_dir=str(data), width=0.125, image_size=(48, 32), batch_size=2,
                         epochs=1, num_images=num_images, run_dir=str(tmp_path / "r"))
    with pytest.raises(FcnsegError) as caught:
        train(config, log=lambda s: None)
    message = str(caught.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message, message
    assert not (tmp_path / "r" / "best.keras").exists()


# --- one source of truth for options: tables, TrainConfig defaults, one validation, --config ----

def test_train_options_come_from_the_tables_and_trainconfig_defaults(monkeypatch):
    from fcnseg import options
    from fcnseg.models import MODELS
    from fcnseg.models.linknet import ENCODERS
    from fcnseg.optimizers import OPTIMIZERS, SCHEDULES

    params = {p.name: p for p in main.commands["train"].params}
    assert params["model"].type.choices == tuple(MODELS)
    assert params["encoder"].type.choices == tuple(ENCODERS)
    assert params["optimizer"].type.choices == tuple(OPTIMIZERS)
    assert params["schedule"].type.choices == tuple(SCHEDULES)
    assert params["strategy"].type.choices == options.STRATEGIES
    assert params["mixed_precision"].type.choices == ("float16", "bfloat16")
    assert params["monitor"].type.name == "text"  # an expression (fcnseg.monitor), checked by options
    monkeypatch.setitem(MODELS, "linknet2", MODELS["linknet"])  # a model added to the table is offered
    assert "linknet2" in params["model"].type.choices
    defaulted = {name: p.default for name, p in params.items() if name in options.FIELDS and p.default is not None}
    assert {"model", "width", "batch_size", "learning_rate", "momentum", "schedule", "save_every"} <= set(defaulted)
    for name, value in defaulted.items():
        assert value == options.default(name), name


def test_monitor_names_are_figures_that_scores_reports():
    from fcnseg.metrics import scores
    from fcnseg.monitor import value
    from fcnseg.options import MONITORS

    for name in MONITORS:  # each named figure computes from what scores() reports
        assert np.isfinite(value(name, scores(np.eye(3), ["background", "road", "vehicles"])))


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "--batch-size 0 is out of range: at least 1"),
    (["--momentum", "1.5"], "--momentum 1.5 is out of range: 0 to 1"),
    (["--lr", "0"], "--lr 0.0 is out of range: above 0"),
    (["--width", "0.001"], "--width 0.001 is out of range: at least 0.01"),
    (["--image-every", "-1"], "--image-every -1 is out of range: at least 0"),
])
def test_out_of_range_options_are_refused_by_the_library_with_the_option_name(tmp_path, args, needle):
    from fcnseg.errors import FcnsegError
    from fcnseg.options import TrainConfig, validate

    result = run("train", *TINY, "--run-dir", str(tmp_path / "r"), *args)
    assert result.exit_code == 1 and result.output.strip() == f"Error: {needle}", result.output
    assert not (tmp_path / "r").exists()
    field = {"--lr": "learning_rate"}.get(args[0], args[0][2:].replace("-", "_"))
    with pytest.raises(FcnsegError, match=f"^{needle}$".replace("(", r"\(").replace(")", r"\)")):
        validate(TrainConfig(**{field: type(getattr(TrainConfig, field))(args[1])}))


def test_config_file_reproduces_a_run(tiny_run, tmp_path):
    original = json.loads((tiny_run[0] / "config.json").read_text())
    new = tmp_path / "again"
    result = run("train", "--config", str(tiny_run[0] / "config.json"), "--run-dir", str(new))
    assert result.exit_code == 0, result.output
    assert json.loads((new / "config.json").read_text()) == original | {"run_dir": str(new)}
    assert [h["epoch"] for h in json.loads((new / "history.json").read_text())] == [1, 2]
    # Flags given on the command line override the file; source options merge key by key.
    over = tmp_path / "over"
    result = run("train", "--config", str(tiny_run[0] / "config.json"), "--run-dir", str(over), "--epochs", "1",
                 "--lr", "0.01", "--steps-per-epoch", "1", "--source-option", "val_size=2")
    assert result.exit_code == 0, result.output
    changed = {"run_dir": str(over), "epochs": 1, "learning_rate": 0.01, "steps_per_epoch": 1,
               "source_options": original["source_options"] | {"val_size": "2"}}
    assert json.loads((over / "config.json").read_text()) == original | changed


@pytest.mark.parametrize("content, needle", [
    ({"model": "linknet", "lerning_rate": 0.1}, "unknown option 'lerning_rate'"),
    ({"epochs": 0}, "epochs: 0 is out of range: at least 1"),
    ({"optimizer": "adagrad"}, "optimizer: 'adagrad' is unknown; choose one of adam, sgd, rmsprop"),
    ({"batch_size": "8"}, "batch_size: '8' is not a whole number"),
    ({"image_size": [48]}, "image_size: [48] is not [width, height]"),
    ({"learning_rate": float("nan")}, "learning_rate: nan is not a finite number"),
    ([1, 2], "holds no JSON object of options"),
    ("{not json", "is not JSON"),
])
def test_bad_config_file_is_one_line_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "c.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = run("train", "--config", str(path), "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"--config {path}" in lines[0] and needle in lines[0], result.output
    assert not (tmp_path / "r").exists()


def test_config_cannot_be_combined_with_resume(tiny_run):
    result = run("train", "--resume", "--run-dir", str(tiny_run[0]), "--config", str(tiny_run[0] / "config.json"))
    assert result.exit_code == 2 and "--config" in result.output and "keeps its own config.json" in result.output
