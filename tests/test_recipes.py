"""Each recipes/*.json runs as a tiny smoke run on fixtures in its dataset's layout."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.cli import main
from fcnseg.options import read_config_file
from test_task_sources import carla_frame, carla_seg, image, write, write_bdd, write_carvana

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def lyft_fixture(root):
    for k in range(5):
        write(root / f"Train/CameraRGB/{k}.png", image(k))
        write(root / f"Train/CameraSeg/{k}.png", carla_seg(carla_frame(k)[0]))


FIXTURES = {"lyft": lyft_fixture, "bdd100k": lambda root: write_bdd(root, "drivable_maps"),
            "carvana": lambda root: write_carvana(root, cars=3, views=2)}


def test_every_recipe_is_a_valid_config_for_a_known_source():
    names = sorted(p.stem for p in RECIPES.glob("*.json"))
    assert names == sorted(FIXTURES)
    for name in names:
        assert read_config_file(str(RECIPES / f"{name}.json"))["data_source"] == name


def test_lyft_recipe_loss_is_the_write_up_loss():
    # (1-F1(background)) + (1-F0.5(road)) + (1-F2(vehicles)) == 3 * fbeta with betas 1,0.5,2 in class
    # order, when all three classes are in the batch (the fbeta loss averages over present classes).
    import keras

    from fcnseg import losses

    config = json.loads((RECIPES / "lyft.json").read_text())
    loss = losses.make_loss(config["loss"], 3, losses.LossOptions(fbeta=tuple(config["fbeta"])))
    labels = np.array([[[0, 1, 2, 1]]])
    logits = np.log(np.array([[[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]]]]))
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, -1))[0, 0]
    onehot = np.eye(3)[labels[0, 0]]
    want = 0.0
    for c, beta in enumerate((1.0, 0.5, 2.0)):
        tp, p, y = (probs[:, c] * onehot[:, c]).sum(), probs[:, c].sum(), onehot[:, c].sum()
        want += 1 - (1 + beta**2) * tp / (beta**2 * y + p)
    assert float(loss(labels, logits)) == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_recipe_smoke_run(tmp_path, name):
    FIXTURES[name](tmp_path / "data")
    result = CliRunner().invoke(main, [
        "train", "--config", str(RECIPES / f"{name}.json"), "--data-dir", str(tmp_path / "data"),
        "--width", "0.125", "--image-size", "64x48", "--steps-per-epoch", "1", "--epochs", "1",
        "--batch-size", "2", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    recipe = json.loads((RECIPES / f"{name}.json").read_text())
    assert {k: saved[k] for k in ("loss", "monitor", "model", "encoder", "data_source")} == \
        {k: recipe.get(k, saved[k]) for k in ("loss", "monitor", "model", "encoder", "data_source")}
    assert (tmp_path / "run" / "best.keras").is_file()
