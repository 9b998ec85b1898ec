"""tools/compare_models.py on a tiny CamVid-layout fixture: the table and JSON hold real, consistent numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_models.py"
CLASSES = ("Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")


def load_tool():
    spec = importlib.util.spec_from_file_location("fcnseg_compare_models_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def camvid_fixture(root: Path) -> Path:
    """CamVid in the SegNet layout: train/ trainannot/ val/ valannot/, split lists with the SegNet
    authors' absolute paths, sequence-prefixed names (0001TP_..., 0016E5_...), void = 11."""
    from fcnseg.sources.synthetic import render_scene

    names = {"train": ["0001TP_006690", "0001TP_006720", "0016E5_07959", "0016E5_07961", "0006R0_f02400"],
             "val": ["0016E5_08085", "0016E5_08115"]}
    seed = 0
    for split, stems in names.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for stem in stems:
            rgb, label = render_scene(64, 48, seed)
            seed += 1
            label = np.where(label == 255, 11, label).astype(np.uint8)  # CamVid's void is 11
            label[:2] = 11  # a void band, which every figure must ignore
            assert cv2.imwrite(str(root / split / f"{stem}.png"), np.ascontiguousarray(rgb[..., ::-1]))
            assert cv2.imwrite(str(root / f"{split}annot" / f"{stem}.png"), label)
            lines.append(f"/SegNet/CamVid/{split}/{stem}.png /SegNet/CamVid/{split}annot/{stem}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def held_out_supported(data_dir: Path) -> bool:
    from fcnseg import sources
    from fcnseg.errors import FcnsegError

    try:
        sources.load("camvid", str(data_dir), val_sequences="0001TP")
    except FcnsegError:
        return False
    return True


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def cpu_model_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))


def table_after(lines: list[str], title: str) -> list[list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows[2:] if rows and rows[0][0] == "class" else rows


@pytest.mark.slow  # two models trained, evaluated twice and timed, each in its own process: ~1-2 minutes
def test_two_tiny_models_give_a_consistent_table_and_json(tmp_path):
    import fcnseg

    data = camvid_fixture(tmp_path / "camvid")
    out = tmp_path / "compare"
    budget = 0.05  # minutes: a few seconds of training each, ended by the clock
    jobs = ["--jobs", "2"] if len(os.sched_getaffinity(0)) >= 2 else []  # two at once, one core each
    done = subprocess.run(
        [sys.executable, str(TOOL), "--data-dir", data, "--out", out, "--models", "linknet/resnet18,nosuchnet,fcn32s",
         "--width", "0.25", "--image-size", "64x48", "--batch-size", "2", "--minutes-per-model", str(budget),
         "--timing-runs", "2", *jobs], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped nosuchnet: fcnseg has no model 'nosuchnet'" in done.stdout
    report = json.loads((out / "comparison.json").read_text())
    assert not [r for r in report["models"] if "failed" in r]
    held = held_out_supported(data)
    assert report["cpu"] == cpu_model_name()
    assert report["recipe"]["held_out"] == ("0001TP" if held else None)
    assert report["recipe"]["cores_per_model"] == (1 if jobs else len(os.sched_getaffinity(0)))
    assert ("2 models at a time" in (out / "comparison.md").read_text()) == bool(jobs)
    assert [(r["model"], r["encoder"]) for r in report["models"]] == [("linknet", "resnet18"), ("fcn32s", "vgg16")]
    lines = (out / "comparison.md").read_text().splitlines()
    header = next(cells(line) for line in lines if line.startswith("| model |"))
    assert header[2] == ("mIoU held-out 0001TP" if held else "mIoU held-out (n/a)")
    main_rows = {(c[0], c[1]): dict(zip(header, c)) for c in table_after(lines, "| model |")}
    for r in report["models"]:
        run_dir = out / f"{r['model']}-{r['encoder']}"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["max_minutes"] == budget and config["epochs"] >= 10_000  # the clock, not an epoch count
        history = json.loads((run_dir / "history.json").read_text())
        assert r["epochs"] == len(history) >= 1 and r["steps"] == history[-1]["step"] >= 1
        ckpt = run_dir / "last.keras"
        assert r["params"] == fcnseg.load(str(ckpt)).model.count_params()
        assert r["checkpoint_mb"] == round(ckpt.stat().st_size / 1e6, 2)
        assert r["gflops"] > 0 and r["train_images_per_s"] > 0 and r["inference_ms"] > 0
        assert r["peak_rss_mb"] > 200  # TensorFlow alone takes more
        which_runs = ("held_out",) if held else ("standard",)  # a held-out run trained on the standard val
        assert set(which_runs) <= set(r) and not ({"standard", "held_out"} - set(which_runs)) & set(r)
        for which in which_runs:
            ious = [math.nan if v is None else v for v in r[which]["iou"].values()]
            assert list(r[which]["iou"]) == list(CLASSES)
            assert all(0 <= v <= 1 for v in ious if not math.isnan(v))
            assert r[which]["mean_iou"] == pytest.approx(np.nanmean(ious), abs=1e-9)
        assert r[which_runs[0]]["images"] == 2
        row = main_rows[(r["model"], r["encoder"])]
        assert row["mIoU standard val"] == ("n/a" if held else f"{100 * r['standard']['mean_iou']:.2f}")
        assert row[header[2]] == (f"{100 * r['held_out']['mean_iou']:.2f}" if held else "n/a")
        assert float(row["params (M)"]) == pytest.approx(r["params"] / 1e6, abs=0.005)
        assert float(row["GFLOPs/image"]) == pytest.approx(r["gflops"], abs=0.0005)
    assert report["models"][0]["params"] < report["models"][1]["params"]  # FCN's fc6 outweighs LinkNet
    # Per-class tables: a cell per class and model, and the mIoU row is the mean of its column.
    titles = ["Per-class IoU, held-out sequence 0001TP"] if held else ["Per-class IoU, CamVid standard val"]
    assert sum(line.startswith("Per-class IoU") for line in lines) == len(titles)
    for title in titles:
        rows = table_after(lines, title)
        assert [c[0] for c in rows] == [*CLASSES, "**mIoU**"]
        for col in (1, 2):
            values = [float(c[col]) for c in rows[:-1] if c[col] != "n/a"]
            assert values and float(rows[-1][col]) == pytest.approx(np.mean(values), abs=0.006)


def test_absent_data_is_skipped_with_a_message(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "out"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"skipped: no CamVid at {tmp_path / 'nowhere'}" in done.stdout
    assert not (tmp_path / "out").exists()


def test_budget_is_minutes_or_epochs_not_both(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), "--minutes-per-model", "1", "--epochs", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    tool = load_tool()
    assert tool.parse_args([]).minutes_per_model == 30.0
    args = tool.parse_args(["--epochs", "3"])
    assert args.epochs == 3 and args.minutes_per_model is None and tool.budget_words(args) == "3 epochs per model"


def test_models_absent_from_the_table_and_refused_pairs_are_skipped():
    tool = load_tool()
    said = []
    pairs = tool.resolve_pairs("linknet,nosuchnet/resnet18,fcn8s/resnet18,fcn8s", said.append)
    assert pairs == [("linknet", "resnet18"), ("fcn8s", "vgg16")]
    assert said[0].startswith("skipped nosuchnet/resnet18: fcnseg has no model 'nosuchnet'")
    assert said[1] == "skipped fcn8s/resnet18: --model fcn8s cannot take --encoder resnet18; its encoders are: vgg16"


def test_a_camvid_source_without_val_sequences_gives_n_a(monkeypatch, tmp_path):
    from fcnseg import sources
    from fcnseg.errors import FcnsegError

    tool = load_tool()

    def refuse(name, data_dir, **options):
        raise FcnsegError("--source-option val_sequences: the camvid source has no such option")

    monkeypatch.setattr(sources, "load", refuse)
    said = []
    assert tool.held_out_support(str(tmp_path), "0001TP", said.append) is None
    assert said and said[0].startswith("held-out column n/a")
    assert tool.held_out_support(str(tmp_path), None, said.append) is None

    def bad_sequence(name, data_dir, **options):
        raise FcnsegError("--source-option val_sequences: no frames of sequence 9999XX")

    monkeypatch.setattr(sources, "load", bad_sequence)
    with pytest.raises(FcnsegError, match="9999XX"):
        tool.held_out_support(str(tmp_path), "9999XX", said.append)


def test_gflops_counts_a_convolution_as_its_multiply_adds():
    import keras

    tool = load_tool()
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs))
    assert tool.gflops(model, 48, 64) * 1e9 == pytest.approx(2 * 48 * 64 * 3 * 3 * 3 * 8)
    dense = keras.Model(inputs, keras.layers.Dense(5, use_bias=False)(inputs))
    assert tool.gflops(dense, 48, 64) * 1e9 == pytest.approx(2 * 48 * 64 * 3 * 5)


def test_markdown_labels_each_miou_and_leaves_failed_runs_out_of_the_numbers():
    tool = load_tool()
    iou = {name: (0.5 if i % 2 else None) for i, name in enumerate(CLASSES)}
    row = {"model": "linknet", "encoder": "resnet18", "params": 11_500_000, "checkpoint_mb": 46.1, "gflops": 7.5,
           "train_images_per_s": 3.2, "inference_ms": 41.0, "peak_rss_mb": 2100.0, "epochs": 4,
           "standard": {"mean_iou": 0.5, "iou": iou}}
    report = {"cpu": "Some CPU", "date": "today", "budget": "30 minutes of training per model (ended by the clock)",
              "recipe": {"held_out": None, "image_size": [320, 240], "batch_size": 8, "lr": 2e-3, "loss": "ce",
                         "weights": "sqrt", "precision": "float32"},
              "models": [row, {"model": "fcn8s", "encoder": "vgg16", "failed": "exit status 1"}]}
    text = tool.markdown(report)
    assert "| linknet | resnet18 | n/a | 50.00 | 11.50 | 46.10 | 7.500 | 3.2 | 41.00 | 2100 | 4 |" in text
    assert "| fcn8s | vgg16 | failed (exit status 1) |" in text
    assert "held-out sequence" not in text and "| Sky | n/a |" in text and "| Building | 50.00 |" in text
    assert "Measured on Some CPU" in text
    assert "models at a time" not in text
    two = tool.markdown({**report, "recipe": {**report["recipe"], "jobs": 2, "cores_per_model": 1}})
    assert "; 2 models at a time, each pinned to 1 core(s) (speeds are per model's share)." in two


class FakeWorker:
    """subprocess.Popen for run_all: writes the row a worker would, records how it was started."""

    started: list = []

    def __init__(self, argv, preexec_fn=None):
        spec = json.loads(argv[argv.index("--worker") + 1])
        os.makedirs(spec["run_dir"], exist_ok=True)
        self.ok = spec["model"] != "broken"
        if self.ok:
            Path(spec["run_dir"], "result.json").write_text(json.dumps({"model": spec["model"], "fresh": True}))
        FakeWorker.started.append((spec["model"], preexec_fn))
        self.returncode = None

    def poll(self):
        self.returncode = 0 if self.ok else 3
        return self.returncode


def test_run_all_keeps_finished_runs_restarts_interrupted_ones_and_pins_each_worker(tmp_path, monkeypatch):
    tool = load_tool()
    specs = [{"model": m, "encoder": "e", "run_dir": str(tmp_path / m)} for m in ("done", "cut", "new", "broken")]
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "result.json").write_text(json.dumps({"model": "done", "fresh": False}))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "stale.txt").write_text("from the interrupted run")
    FakeWorker.started = []
    monkeypatch.setattr(tool.subprocess, "Popen", FakeWorker)
    said = []
    rows = tool.run_all(specs, [[0], [1]], "1 minute", said.append)
    assert [r["model"] for r in rows] == ["done", "cut", "new", "broken"]
    assert rows[0]["fresh"] is False and rows[1]["fresh"] and rows[2]["fresh"]
    assert rows[3] == {"model": "broken", "encoder": "e", "failed": "exit status 3"}
    assert not (tmp_path / "cut" / "stale.txt").exists()  # the interrupted run started again from nothing
    assert [m for m, _ in FakeWorker.started] == ["cut", "new", "broken"]
    assert all(callable(pin) for _, pin in FakeWorker.started)  # two shares: every worker pinned
    assert any("kept the finished run" in line for line in said)
    assert any("CPUs 0)" in line or "CPUs 1)" in line for line in said)
    FakeWorker.started = []
    tool.run_all([{"model": "alone", "encoder": "e", "run_dir": str(tmp_path / "alone")}], [[0, 1]], "1 minute",
                 said.append)
    assert FakeWorker.started == [("alone", None)]  # one share: not pinned


def test_cpu_shares_and_a_resume_with_other_settings_refused(tmp_path):
    tool = load_tool()
    cpus = sorted(os.sched_getaffinity(0))
    groups = tool.cpu_groups(len(cpus))
    assert sorted(c for g in groups for c in g) == cpus and all(len(g) == 1 for g in groups)
    assert tool.cpu_groups(1) == [cpus]
    with pytest.raises(SystemExit, match=f"--jobs {len(cpus) + 1}: this process may use only {len(cpus)} CPUs"):
        tool.cpu_groups(len(cpus) + 1)
    out = tmp_path / "cmp"
    tool.take_out_dir(str(out), {"lr": 0.002, "image_size": (320, 240)})
    tool.take_out_dir(str(out), {"lr": 0.002, "image_size": (320, 240)})  # the same recipe: continues
    with pytest.raises(SystemExit) as e:
        tool.take_out_dir(str(out), {"lr": 0.01, "image_size": (320, 240)})
    assert str(e.value) == (f"--resume: {out} was run with other settings (lr); use the same options or a new --out")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit, match="recipe.json is missing or unreadable"):
        tool.take_out_dir(str(tmp_path / "plain"), {"lr": 0.002})
