"""--monitor expressions, the Dice figure, and their use by train and evaluate."""

import numpy as np
import pytest

from fcnseg.errors import FcnsegError
from fcnseg.metrics import scores
from fcnseg.monitor import fbeta, parse, resolve, value
from fcnseg.options import TrainConfig, validate

NAMES = ["background", "road", "vehicles"]
# cm[true, pred]
CM = np.array([[50, 5, 5],
               [10, 30, 0],
               [2, 0, 8]])


def direct_fbeta(c: int, beta: float) -> float:
    tp, gt, pred = CM[c, c], CM[c].sum(), CM[:, c].sum()
    return (1 + beta**2) * tp / (beta**2 * gt + pred)


def test_dice_per_class_and_mean():
    s = scores(CM, NAMES)
    for c, name in enumerate(NAMES):
        assert s["per_class"][name]["dice"] == pytest.approx(2 * CM[c, c] / (CM[c].sum() + CM[:, c].sum()))
    assert s["mean_dice"] == pytest.approx(np.mean([s["per_class"][n]["dice"] for n in NAMES]))


def test_fbeta_terms_and_weighted_sums_match_the_confusion_matrix():
    s = scores(CM, NAMES)
    assert value("fbeta(road,0.5)", s) == pytest.approx(direct_fbeta(1, 0.5))
    assert value("fbeta(road,0.5)+fbeta(vehicles,2)", s) == pytest.approx(direct_fbeta(1, 0.5) + direct_fbeta(2, 2))
    lyft = (direct_fbeta(1, 0.5) + direct_fbeta(2, 2)) / 2
    assert value("lyft", s) == pytest.approx(lyft)
    assert value("0.5*fbeta(Road,0.5) + 0.5*fbeta(vehicles,2)", s) == pytest.approx(lyft)
    assert value("iou(vehicles)", s) == pytest.approx(8 / (10 + 13 - 8))
    assert value("2*dice+mean_iou", s) == pytest.approx(2 * s["mean_dice"] + s["mean_iou"])
    assert value("recall(road)", s) == pytest.approx(30 / 40) and value("precision(road)", s) == pytest.approx(30 / 35)
    # The lyft score reads a class called car as well as vehicles.
    assert value("lyft", scores(CM, ["background", "road", "car"])) == pytest.approx(lyft)


def test_fbeta_of_undefined_precision_or_recall_is_zero():
    assert fbeta(None, 0.0, 2) == 0.0 and fbeta(0.0, None, 2) == 0.0 and fbeta(0.0, 0.0, 1) == 0.0
    s = scores(np.array([[10, 0], [0, 0]]), ["background", "car"])  # car: in neither labels nor predictions
    assert value("dice(car)", s) == 0.0 and value("fbeta(car,2)", s) == 0.0


@pytest.mark.parametrize("expr, needle", [
    ("", "empty"), ("fbeta(road)", "fbeta takes (CLASS,BETA)"), ("fbeta(road,-1)", "must be a positive number"),
    ("miou", "unknown figure 'miou'"), ("iou(road", "cannot read"), ("sum(road)", "not a per-class figure"),
    ("road*2", "cannot read"),
])
def test_bad_expressions_are_refused_up_front_in_one_line(expr, needle):
    with pytest.raises(FcnsegError, match=None) as e:
        validate(TrainConfig(monitor=expr))
    assert needle in str(e.value) and str(e.value).startswith("--monitor") and "\n" not in str(e.value)
    with pytest.raises(FcnsegError):
        parse(expr)


def test_unknown_class_names_the_source_classes():
    with pytest.raises(FcnsegError, match="no class 'car' in this source; its classes are sky, building"):
        resolve("iou(car)", ["sky", "building"])
    with pytest.raises(FcnsegError, match="no class 'road'"):
        resolve("lyft", ["background", "car"])


@pytest.mark.slow
def test_train_selects_by_the_monitor_and_evaluate_reports_it(tmp_path):
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    base = [sys.executable, "-m", "fcnseg.cli"]
    bad = subprocess.run(base + ["train", "--monitor", "iou(truck)", "--run-dir", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no class 'truck' in this source; its classes are" in bad.stderr
    assert not (tmp_path / "x").exists()  # refused before the run folder was taken
    out = subprocess.run(base + ["train", "--width", "0.125", "--image-size", "32x32", "--steps-per-epoch", "1",
                                 "--epochs", "2", "--batch-size", "2", "--source-option", "val_size=2",
                                 "--monitor", "dice(road)+0.5*mean_iou", "--run-dir", str(run)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    history = json.loads((run / "history.json").read_text())
    values = [row["monitor"]["dice(road)+0.5*mean_iou"] for row in history]
    best_epoch = json.loads(subprocess.run(
        [sys.executable, "-c", "import sys, json; from fcnseg import checkpoint; "
         "print(json.dumps(checkpoint.load(sys.argv[1])[1]['epoch']))", str(run / "best.keras")],
        capture_output=True, text=True).stdout.strip().splitlines()[-1])
    assert best_epoch == 1 + int(np.argmax(values))
    ev = subprocess.run(base + ["evaluate", "--checkpoint", str(run / "best.keras"), "--data-source", "synthetic",
                                "--source-option", "val_size=2", "--monitor", "dice(road)"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "monitor dice(road): " in ev.stdout and "dice" in ev.stdout.splitlines()[0]
