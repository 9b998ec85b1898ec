"""tools/camvid_recipe.py: the clock ends the run (no pilot), held-out and standard val each labelled,
per-class IoU and the CPU model in the output."""

import importlib.util
import json
import os

import pytest

from test_camvid_sequences import write_camvid

FRAMES = {  # CamVid's sequences as the real split holds them: val is all 0016E5
    "train": ["0001TP_006690", "0001TP_006720", "0006R0_f01800", "0006R0_f01830", "0016E5_00390", "0016E5_00420"],
    "val": ["0016E5_07959", "0016E5_07961"],
}


def load_recipe():
    spec = importlib.util.spec_from_file_location(
        "camvid_recipe", os.path.join(os.path.dirname(__file__), "..", "tools", "camvid_recipe.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


@pytest.mark.slow
def test_recipe_trains_until_the_clock_and_reports_both_vals(tmp_path, capsys):
    recipe = load_recipe()
    data = write_camvid(tmp_path / "camvid", FRAMES)
    out = tmp_path / "out"
    minutes = 0.4
    recipe.main(["--minutes", str(minutes), "--data-dir", str(data), "--out", str(out), "--width", "16",
                 "--height", "12", "--batch-size", "2", "--precision", "float32", "--model-width", "0.125",
                 "--ema", "0.9", "--no-native-crops"])
    summary = json.loads((out / "val_scores.json").read_text())
    # 0001TP held out: train is the 6 other frames of train+val, 3 steps per pass at batch 2,
    # and an epoch (what one validation follows) is the default 3 passes
    assert summary["steps_per_pass"] == 3 and summary["steps_per_epoch"] == 9
    history = json.loads((out / "train" / "history.json").read_text())
    assert [row["step"] for row in history[:-1]] == [9 * (i + 1) for i in range(len(history) - 1)]
    # the clock ended the run: it lasted the budget and took many epochs' worth of steps, far fewer than planned
    assert summary["wall_minutes_training"] >= minutes
    assert summary["wall_minutes_training"] < minutes + 1.5
    assert summary["steps"] > 2 * summary["steps_per_epoch"] and summary["epochs"] > 2
    assert summary["epochs"] < recipe.ENDLESS_EPOCHS and summary["config"]["max_minutes"] <= minutes
    assert summary["config"]["source_options"] == {"val_sequences": "0001TP"}
    assert summary["held_out"]["images"] == 2 and summary["standard_val"]["images"] == 2
    assert set(summary["held_out"]["per_class"]) >= {"Road", "Car", "Bicyclist"}
    # one run, three held-out figures: the averaged weights, the same with flip averaging, the raw weights
    assert summary["config"]["ema"] == 0.9
    assert summary["held_out_flip"]["images"] == 2 and summary["held_out_raw"]["images"] == 2
    assert "flip TTA" in summary["held_out_flip"]["protocol"] and "flip" not in summary["held_out"]["protocol"]
    assert summary["held_out_raw"]["checkpoint"].endswith("last_raw.keras")
    cpu = recipe.cpu_model()
    assert summary["cpu"] == cpu and "cores" in cpu
    table = (out / "val_table.md").read_text()
    assert "held-out sequences 0001TP (new streets)" in table and "standard val (0016E5; its frames were trained" in table
    assert table.count("| Road |") == 4 and table.count(cpu) == 4
    assert "same checkpoint with flip averaging" in table and "raw weights (last_raw.keras" in table
    printed = capsys.readouterr().out
    assert "budget (--max-minutes) ran out" in printed
    assert f"epoch 2/{recipe.ENDLESS_EPOCHS} (0." in printed and "min of the --max-minutes budget left)" in printed
    assert not (out / "pilot").exists()


def test_recipe_refuses_an_unknown_sequence_in_one_line_before_making_out(tmp_path):
    recipe = load_recipe()
    data = write_camvid(tmp_path / "camvid", FRAMES)
    with pytest.raises(SystemExit) as e:
        recipe.main(["--minutes", "0.1", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                     "--val-sequences", "0002XX"])
    assert str(e.value).startswith("Error: --source-option val_sequences=0002XX") and "\n" not in str(e.value)
    assert "0001TP, 0006R0, 0016E5" in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        recipe.main(["--minutes", "0.1", "--data-dir", str(data), "--out", str(tmp_path / "out"), "--loss", "ce+hinge"])
    assert str(e.value).startswith("Error: --loss 'ce+hinge': unknown loss 'hinge'") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        recipe.main(["--minutes", "0.1", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                     "--passes-per-validation", "0"])
    assert str(e.value) == "Error: --passes-per-validation 0: must be at least 1"
    assert not (tmp_path / "out").exists()
    for option, value in (("--weight-decay", "-1"), ("--ema", "2")):
        with pytest.raises(SystemExit) as e:
            recipe.main(["--minutes", "0.1", "--data-dir", str(data), "--out", str(tmp_path / "out"), option, value])
        assert str(e.value).startswith(f"Error: {option} ") and "out of range" in str(e.value)
        assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_standard_split_labels_only_the_standard_val():
    recipe = load_recipe()
    args = recipe.parse_args(["--val-sequences", ""])
    assert args.val_sequences == "" and recipe.split_label(args, "standard_val").startswith("standard val (0016E5, a")
    assert recipe.parse_args([]).val_sequences == "0001TP"


def test_native_crops_option_trains_on_crops_of_the_stored_frames(tmp_path):
    """--native-crops: the source keeps 480x360 (inference runs there) and training takes WxH windows of it."""
    from fcnseg import sources

    recipe = load_recipe()
    data = write_camvid(tmp_path / "camvid", FRAMES)
    args = recipe.parse_args(["--data-dir", str(data), "--width", "32", "--height", "16"])  # the default
    config = recipe.recipe_config(args, str(tmp_path / "run"), 10, None, 1.0)
    assert config.image_size == (480, 360)
    assert config.source_options == {"val_sequences": "0001TP", "train_crop": "32x16"}
    shrunk = recipe.recipe_config(recipe.parse_args(["--no-native-crops"]), str(tmp_path / "r"), 10, None, 1.0)
    assert shrunk.image_size == (320, 240) and "train_crop" not in shrunk.source_options
    source = sources.load("camvid", str(data), config.image_size, **config.source_options)
    images, labels = next(iter(source.dataset("train", 2, training=True)))
    assert images.shape == (2, 16, 32, 3) and labels.shape == (2, 16, 32)


def test_augment_preset_and_ema_reach_the_training_config(tmp_path):
    from fcnseg.data import AUGMENTS

    recipe = load_recipe()
    args = recipe.parse_args(["--augment-preset", "default", "--ema", "0.998", "--loss", "ce+0.5*dice"])
    config = recipe.recipe_config(args, str(tmp_path / "run"), 10, None, 1.0)
    assert config.augment_preset == "default" and config.ema == 0.998 and config.loss == "ce+0.5*dice"
    recipe_default = recipe.recipe_config(recipe.parse_args([]), str(tmp_path / "r"), 10, None, 1.0)
    assert recipe_default.augment_preset == "strong" and recipe_default.ema == 0.0 and recipe_default.loss == "ce+dice"
    assert recipe_default.input_norm == "per-image"
    plain = recipe.recipe_config(recipe.parse_args(["--input-norm", "encoder"]), str(tmp_path / "p"), 10, None, 1.0)
    assert plain.input_norm == "encoder"
    assert recipe_default.weight_decay == 0.0
    decayed = recipe.recipe_config(recipe.parse_args(["--weight-decay", "0.05"]), str(tmp_path / "w"), 10, None, 1.0)
    assert decayed.weight_decay == 0.05
    # strong widens every photometric range and leaves the geometry alone
    strong, default = AUGMENTS["strong"], AUGMENTS["default"]
    assert all(getattr(strong, k) > getattr(default, k) for k in ("brightness", "contrast", "saturation", "gamma"))
    assert (strong.scale, strong.flip) == (default.scale, default.flip)


@pytest.mark.parametrize("units, expected", [(("AMX", "AVX512_BF16"), "bfloat16"), (("AVX512_BF16",), "bfloat16"),
                                             ((), "float32")])
def test_auto_precision_is_bfloat16_where_the_cpu_has_bf16_units(monkeypatch, units, expected):
    import tensorflow as tf

    import fcnseg.machine

    recipe = load_recipe()
    monkeypatch.setattr(fcnseg.machine, "cpu_bf16_units", lambda cpuinfo=None: units)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert recipe.resolve_precision("auto") == expected
    assert recipe.resolve_precision("float32") == "float32"
    assert recipe.cpu_model().endswith("cores" + "".join(", " + unit for unit in units))
