"""The run folder under faults (issue 12): kill -9 at every phase of an epoch's end,
a run killed before its first save, two runs on one folder, an untrusted folder's
source file, options that contradict a resumed run, non-finite numbers, a full
disk, progress output in logs and TensorFlow's start-up noise."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fcnseg.errors import FcnsegError

TINY = ["--width", "0.125", "--image-size", "48x32", "--batch-size", "2", "--val-steps", "1",
        "--source-option", "val_size=2", "--source-option", "train_size=4", "--image-every", "0"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def run_killed(run_dir, phase, *args, timeout=300):
    """`fcnseg train` in a fresh process that SIGKILLs itself at ``phase``."""
    env = dict(os.environ, FCNSEG_TEST_KILL_AT=phase)
    proc = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", *TINY, "--run-dir", str(run_dir),
                           *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == -9, f"not killed at {phase}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
    return proc


def history(run_dir):
    def no_nan(name):
        raise ValueError(f"bare {name} in history.json")

    return json.loads((run_dir / "history.json").read_text(), parse_constant=no_nan)


def leftovers(run_dir):
    found = [p for p in run_dir.rglob("*") if "partial" in p.name or p.name.endswith("_temp")]
    return [str(p) for p in found]


# --- 1. a run that never saved its state -----------------------------------------------------

@pytest.mark.slow
def test_run_killed_before_its_first_save_resumes_from_step_zero(tmp_path):
    run_dir = tmp_path / "r"
    run_killed(run_dir, "step@1", "--steps-per-epoch", "2", "--epochs", "1", "--save-every", "100")
    assert (run_dir / "config.json").is_file() and not (run_dir / "state" / "checkpoint").exists()
    # A plain rerun still refuses the folder, and says what to do.
    again = run("train", *TINY, "--steps-per-epoch", "2", "--epochs", "1", "--run-dir", run_dir)
    assert again.exit_code != 0 and "pass --resume" in again.output
    result = run("train", "--resume", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "no saved training state yet: starting from step 0" in result.output
    assert [(h["epoch"], h["step"]) for h in history(run_dir)] == [(1, 2)]


def test_resume_sweeps_temporary_files_of_an_interrupted_save(tmp_path):
    run_dir = tmp_path / "r"
    result = run("train", *TINY, "--steps-per-epoch", "1", "--epochs", "1", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    (run_dir / "state" / "ckpt-7_temp").mkdir()
    (run_dir / "state" / "ckpt-7_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 10)
    (run_dir / "state" / "ckpt-7.index").write_bytes(b"half")  # a save killed before its record
    (run_dir / ".best.keras.partial.keras").write_bytes(b"half a zip")
    (run_dir / "history.json.partial").write_text("[{")
    killed_mid_write = run_dir / ".history.json.0badcafe.fcnseg-tmp.json"  # files.atomic_write's temp name
    killed_mid_write.write_text("[{")
    result = run("train", "--resume", "--run-dir", run_dir, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert not killed_mid_write.exists()
    assert leftovers(run_dir) == [] and not (run_dir / "state" / "ckpt-7.index").exists()
    assert "removed" in result.output and "ckpt-7_temp" in result.output
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]


# --- 2. kill -9 at every phase of an epoch's end ------------------------------------------------

EPOCHS = ["--steps-per-epoch", "2", "--epochs", "3", "--save-every", "2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "r"
    result = run("train", *TINY, *EPOCHS, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    return history(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["step_saved@4", "epoch_end@2", "last_saved@2", "history_saved@2",
                                   "epoch_saved@2", "checkpoint_written"])
def test_kill_at_an_epoch_end_loses_no_epoch(tmp_path, reference, phase):
    run_dir = tmp_path / "r"
    run_killed(run_dir, phase, *EPOCHS)
    result = run("train", "--resume", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    rows = history(run_dir)
    assert [(h["epoch"], h["step"]) for h in rows] == [(1, 2), (2, 4), (3, 6)]
    # The redone end validates the same weights: the same figures as a run never killed.
    for got, want in zip(rows, reference):
        assert got["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-6)
        assert got["best"] == pytest.approx(want["best"], abs=1e-6)
    assert leftovers(run_dir) == []
    from fcnseg import checkpoint

    for name in ("best.keras", "last.keras"):
        checkpoint.load(str(run_dir / name))


def test_resume_of_a_finished_run_says_so(tmp_path):
    run_dir = tmp_path / "r"
    assert run("train", *TINY, "--steps-per-epoch", "1", "--epochs", "1", "--run-dir", run_dir).exit_code == 0
    before = (run_dir / "history.json").read_bytes()
    result = run("train", "--resume", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "has already trained its 1 epoch(s); pass --epochs N" in result.output
    assert (run_dir / "history.json").read_bytes() == before


# --- 7. one process per run folder ----------------------------------------------------------

def test_second_train_on_a_busy_run_dir_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    run_dir = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fcnseg.rundir import RunDir; "
                               f"RunDir({str(run_dir)!r}, create=True); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run("train", *TINY, "--run-dir", run_dir)
        assert result.exit_code != 0
        assert f"--run-dir {run_dir} is in use by pid {holder.pid}" in result.output
    finally:
        holder.kill()  # SIGKILL: no chance to unlock
        holder.wait()
    result = run("train", *TINY, "--steps-per-epoch", "1", "--epochs", "1", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output


def test_resume_while_the_run_is_alive_is_refused(tmp_path):
    from fcnseg.rundir import RunDir

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    held = RunDir(str(run_dir), create=False)  # flock is per open file: this process counts as another
    try:
        result = run("train", "--resume", "--run-dir", run_dir)
        assert result.exit_code != 0 and f"is in use by pid {os.getpid()}" in result.output
    finally:
        held.release()


# --- 8. an untrusted run folder runs no code -------------------------------------------------------

SOURCE = """
import os
with open(os.environ["FCNSEG_TEST_MARKER"], "a") as f:
    f.write("imported\\n")
from fcnseg.sources.synthetic import SyntheticSource
def make_source(data_dir, image_size=None, seed=0, **options):
    return SyntheticSource(image_size, seed, train_size=2, val_size=2)
"""


def test_resume_imports_a_source_file_only_when_named_again(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("FCNSEG_TEST_MARKER", str(marker))
    src = tmp_path / "src" / "mine.py"
    src.parent.mkdir()
    src.write_text(SOURCE)
    run_dir = tmp_path / "r"
    monkeypatch.chdir(src.parent)
    result = run("train", *TINY[:6], "--steps-per-epoch", "1", "--epochs", "1", "--data-source", "mine.py",
                 "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert marker.read_text().count("imported") == 1
    assert json.loads((run_dir / "config.json").read_text())["data_source"] == str(src)  # absolute
    monkeypatch.chdir(tmp_path)
    result = run("train", "--resume", "--run-dir", run_dir, "--epochs", "2")
    assert result.exit_code != 0
    assert f"names the source file {src}, and loading it runs its code; pass --data-source {src}" in result.output
    assert marker.read_text().count("imported") == 1  # not imported
    result = run("train", "--resume", "--run-dir", run_dir, "--epochs", "2", "--data-source", str(src))
    assert result.exit_code == 0, result.output
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]


# --- 9. options: contradictions, non-finite numbers, NaN validation, absolute paths ----------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fin") / "r"
    result = run("train", *TINY, "--steps-per-epoch", "1", "--epochs", "1", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.mark.parametrize("args, needle", [
    (["--model", "fcn8s"], "--model fcn8s contradicts"),
    (["--lr", "0.01"], "--lr 0.01 contradicts"),
    (["--width", "0.25"], "--width 0.25 contradicts"),
    (["--image-size", "64x64"], "--image-size 64,64 contradicts"),
    (["--no-augment"], "--no-augment (given) contradicts"),
    (["--data-dir", "elsewhere"], "--data-dir"),
])
def test_resume_refuses_options_that_contradict_the_run(finished, args, needle):
    before = (finished / "history.json").read_bytes()
    result = run("train", "--resume", "--run-dir", finished, "--epochs", "2", *args)
    assert result.exit_code != 0
    assert needle in result.output and "config.json" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (finished / "history.json").read_bytes() == before


def test_resume_accepts_options_that_agree_with_the_run(finished, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    result = run("train", "--resume", "--run-dir", run_dir, "--epochs", "2", "--width", "0.125",
                 "--image-size", "48x32", "--model", "linknet")
    assert result.exit_code == 0, result.output
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]


@pytest.mark.parametrize("damage", ["history", "state"])
def test_resume_of_a_corrupt_run_is_one_line_and_changes_nothing(finished, tmp_path, damage):
    """A truncated state/ckpt-N.index was a TF traceback; a corrupt history.json failed only after
    config.json had been rewritten with the new --epochs."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    if damage == "history":
        bad = run_dir / "history.json"
        bad.write_text("[{")
    else:
        bad = run_dir / "state" / "ckpt-1.index"
        bad.write_bytes(bad.read_bytes()[:10])
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    result = run("train", "--resume", "--run-dir", run_dir, "--epochs", "2")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    needle = str(bad) if damage == "history" else f"training state {run_dir / 'state' / 'ckpt-1'}"
    assert needle in result.output, result.output
    if damage == "state":
        assert f"remove {run_dir / 'state'}" in result.output and f"--init-from {run_dir / 'last.keras'}" in result.output
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before


@pytest.mark.parametrize("args", [["--lr", "nan"], ["--lr", "inf"], ["--momentum", "nan"], ["--width", "inf"],
                                  ["--weight-decay", "nan"], ["--max-minutes", "inf"], ["--focal-gamma", "nan"],
                                  ["--class-weights", "1,1,nan,1,1,1"], ["--fbeta", "inf"]])
def test_non_finite_numbers_are_refused_at_parse_time(tmp_path, args):
    result = run("train", *TINY, "--run-dir", tmp_path / "r", *args)
    assert result.exit_code == 2, result.output
    assert args[0] in result.output or "--learning-rate" in result.output
    assert "finite" in result.output
    assert not (tmp_path / "r").exists()


def test_library_refuses_non_finite_numbers(tmp_path):
    from fcnseg.train import TrainConfig, train

    for bad in ({"learning_rate": float("nan")}, {"fbeta": (1.0, float("inf"))}, {"loss": "nan*ce"}):
        with pytest.raises(FcnsegError, match="finite"):
            train(TrainConfig(run_dir=str(tmp_path / "r"), **bad), log=lambda s: None)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_diverged_weights_stop_at_validation_without_saving_a_nan_model(tmp_path):
    # A huge learning rate: the step's own loss is still finite (computed before the update),
    # but the updated weights are not, so the NaN shows up first in validation.
    run_dir = tmp_path / "r"
    result = run("train", *TINY, "--steps-per-epoch", "1", "--epochs", "1", "--optimizer", "sgd",
                 "--lr", "1e38", "--momentum", "0", "--run-dir", run_dir)
    assert result.exit_code != 0, result.output
    assert "validation loss became nan at epoch 1 (step 1)" in result.output
    assert not (run_dir / "best.keras").exists() and not (run_dir / "last.keras").exists()
    assert not (run_dir / "history.json").exists()


def test_history_never_holds_bare_nan():
    from fcnseg.train import finite_or_null

    row = {"val_loss": float("nan"), "iou": {"a": float("inf"), "b": 0.5}, "x": [1.0, float("-inf")]}
    assert json.dumps(finite_or_null(row), allow_nan=False) == \
        '{"val_loss": null, "iou": {"a": null, "b": 0.5}, "x": [1.0, null]}'


def test_config_stores_absolute_paths_so_resume_works_from_another_folder(tmp_path, monkeypatch):
    import cv2

    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        (data / "masks" / split).mkdir(parents=True)
        for k in range(2):
            rng = np.random.default_rng(k)
            cv2.imwrite(str(data / "images" / split / f"{k}.png"), rng.integers(0, 255, (32, 48, 3), np.uint8))
            cv2.imwrite(str(data / "masks" / split / f"{k}.png"), rng.integers(0, 2, (32, 48), np.uint8))
    (data / "classes.csv").write_text("name,id\na,0\nb,1\n")
    monkeypatch.chdir(tmp_path)
    result = run("train", "--data-source", "folder", "--data-dir", "data", "--width", "0.125", "--image-size",
                 "48x32", "--batch-size", "2", "--epochs", "1", "--image-every", "0", "--run-dir", "r")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data_dir"] == str(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run("train", "--resume", "--run-dir", tmp_path / "r", "--epochs", "2")
    assert result.exit_code == 0, result.output


# --- failed starts leave nothing behind ---------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--data-source", "nope"], "--data-source 'nope' is unknown"),
    (["--data-source", "folder", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["--source-option", "colour=red"], "--source-option colour"),
    (["--class-weights", "1,2"], "--class-weights has 2 values"),
])
def test_failed_start_leaves_no_run_folder(tmp_path, args, needle):
    run_dir = tmp_path / "new" / "r"
    result = run("train", *TINY[:6], "--run-dir", run_dir, *args)
    assert result.exit_code != 0 and needle in result.output
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("train", *TINY[:6], "--run-dir", empty, *args)
    assert result.exit_code != 0 and os.listdir(empty) == []  # an empty folder we did not make stays, empty


# --- 4. a full disk -----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder):
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


def test_full_disk_at_the_lock_is_one_line_and_leaves_nothing(tmp_path):
    """The pid written into .lock was an uncaught ENOSPC that left run/.lock behind."""
    from fs_faults import fill, tmpfs

    with tmpfs(tmp_path / "d", "64k") as disk:
        fill(disk)
        result = run("train", *TINY, "--steps-per-epoch", "1", "--epochs", "1", "--run-dir", disk / "run")
        assert result.exit_code != 0 and not isinstance(result.exception, OSError), result.output
        assert f"--run-dir {disk / 'run'}" in result.output and "No space left" in result.output
        assert sorted(os.listdir(disk)) == ["filler"]


@pytest.mark.parametrize("save_every, failing", [(1, "state/ckpt-3"), (100, ".keras")])
def test_full_disk_during_training_keeps_the_previous_state(small_disk, save_every, failing):
    import tensorflow as tf

    from fcnseg import checkpoint
    from fcnseg.train import TrainConfig, train

    run_dir = small_disk / "r"
    config = TrainConfig(width=0.125, image_size=(48, 32), batch_size=2, steps_per_epoch=2, val_steps=1, epochs=2,
                         source_options={"train_size": 4, "val_size": 2}, image_every=0, save_every=save_every,
                         run_dir=str(run_dir))

    def log(line):
        if line == "epoch 2/2":
            fill(small_disk)

    with pytest.raises(FcnsegError) as err:
        train(config, log=log)
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message and failing in message
    assert str(run_dir) in message and "previous" in message
    assert leftovers(run_dir) == []
    assert tf.train.latest_checkpoint(str(run_dir / "state")).endswith("ckpt-2")
    assert [h["epoch"] for h in history(run_dir)] == [1]
    checkpoint.load(str(run_dir / "last.keras"))
    (small_disk / "filler").unlink()
    train(config, resume=True, log=lambda s: None)
    assert [h["epoch"] for h in history(run_dir)] == [1, 2]


def test_interrupted_checkpoint_save_removes_its_temporary_file(tmp_path, monkeypatch):
    import keras

    from fcnseg import checkpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "last.keras"
    checkpoint.save(model, str(path), {"epoch": 1})
    good = path.read_bytes()

    def interrupted(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(model, str(path), {"epoch": 2})
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["last.keras"]


# --- progress output and start-up noise -----------------------------------------------------------

def test_progress_in_a_log_is_plain_lines_with_the_epoch_mean(tmp_path):
    run_dir = tmp_path / "r"
    result = run("train", *TINY, "--steps-per-epoch", "4", "--epochs", "1", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert not any(c in result.output for c in "\r\b\x1b")
    last = [line for line in result.output.splitlines() if line.startswith("step 4/4")]
    assert len(last) == 1
    assert f"loss {history(run_dir)[0]['train_loss']:.4f}" in last[0]


def test_progress_on_a_terminal_redraws_one_line_and_ends_with_the_mean():
    import io

    from fcnseg.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = Progress(3, stream=screen)
    losses = [3.0, 2.0, 0.5]
    for k, loss in enumerate(losses, 1):
        bar.update(sum(losses[:k]) / k, 1e-3)
    bar.finish(sum(losses) / 3, 1e-3)
    text = screen.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 4
    assert "loss 1.8333" in text.splitlines()[-1] and "loss 0.5000" not in text
    plain = io.StringIO()
    bar = Progress(100, stream=plain)
    for _ in range(100):
        bar.update(1.0, 1e-3)
    bar.finish(1.0, 1e-3)
    assert len(plain.getvalue().splitlines()) == 10 and "\r" not in plain.getvalue()


@pytest.mark.slow
def test_no_tensorflow_start_up_noise_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FCNSEG_VERBOSE")}
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", *TINY, "--steps-per-epoch", "1", "--epochs", "1",
           "--run-dir", str(tmp_path / "r")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    noisy = [line for line in out.stderr.splitlines()
             if any(word in line.lower() for word in ("cuda", "absl", "onednn", "cpu_feature_guard"))]
    assert noisy == []
    help_out = subprocess.run(cmd[:4] + ["--help"], env=env, capture_output=True, text=True, timeout=120)
    assert help_out.returncode == 0 and "cuda" not in help_out.stderr.lower()


def test_verbose_flag_and_variable_leave_tensorflow_logging_alone(monkeypatch):
    for args, env, quiet in ((["sources"], {}, True), (["--verbose", "sources"], {}, False),
                             (["sources"], {"FCNSEG_VERBOSE": "1"}, False)):
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
        assert (os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3") is quiet, args
