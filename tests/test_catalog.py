"""`fcnseg models`: the model and encoder tables, read from MODELS / MODEL_ENCODERS / ENCODERS."""

import re

import pytest
from click.testing import CliRunner

from fcnseg.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def model_line(output, name):
    lines = [line for line in output.splitlines() if re.match(rf"  {re.escape(name)} ", line)]
    assert len(lines) == 1, output
    return lines[0]


def test_lists_every_model_with_its_encoders_default_first_and_every_encoder(monkeypatch):
    from fcnseg import catalog
    from fcnseg.models import MODEL_ENCODERS, MODELS
    from fcnseg.models.encoders import ENCODERS, PREPROCESSING

    # Building a network would make the plain listing slow: it must only read the tables.
    monkeypatch.setattr("fcnseg.models.encoders.build_encoder", lambda *a, **k: pytest.fail("built an encoder"))
    monkeypatch.setattr(catalog, "_count", lambda model: pytest.fail("counted parameters"))
    result = run("models")
    assert result.exit_code == 0, result.output
    for name, encoders in MODEL_ENCODERS.items():
        listed = model_line(result.output, name).split("encoders: ")[1].split(", ")
        assert listed == list(encoders) and listed[0] == encoders[0]
    assert set(MODEL_ENCODERS) == set(MODELS)
    for name, row in ENCODERS.items():
        line = model_line(result.output, name + ("*" if row.scales_with_width else ""))
        assert row.weights in line and PREPROCESSING[row.preprocess][1] in line
        assert "/".join(str(c) if c else "-" for c in row.channels) in line
    assert "fcnseg models --params" in result.output


def test_a_model_added_to_the_tables_is_listed(monkeypatch):
    from fcnseg.models import MODEL_ENCODERS, MODELS

    def toy(num_classes, encoder="resnet34", encoder_weights=None, width=1.0):
        """Toy: a model registered only in this test."""

    monkeypatch.setitem(MODELS, "toy", toy)
    monkeypatch.setitem(MODEL_ENCODERS, "toy", ("resnet34", "resnet18"))
    result = run("models")
    assert result.exit_code == 0, result.output
    assert model_line(result.output, "toy").endswith("encoders: resnet34, resnet18")
    assert "Toy: a model registered only in this test." in result.output


def test_params_counts_the_built_networks():
    from fcnseg.models import linknet
    from fcnseg.models.encoders import build_encoder

    result = run("models", "--params", "--only", "linknet", "--only", "resnet18", "--num-classes", "5")
    assert result.exit_code == 0, result.output
    assert "fcn8s" not in result.output and "  resnet34" not in result.output
    expected_model = linknet(5).count_params()
    expected_encoder = build_encoder("resnet18").count_params()
    assert f"{expected_model / 1e6:.2f}M" in model_line(result.output, "linknet")
    assert f"{expected_encoder / 1e6:.2f}M" in model_line(result.output, "resnet18*")
    assert 11.1e6 < expected_encoder < 11.2e6  # torchvision's resnet18 without its fc: 11,176,512


def test_unknown_only_name_is_one_line():
    result = run("models", "--only", "resnet9")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: Invalid value for --only: resnet9: no such model or encoder (see `fcnseg models`)"]


def test_train_help_points_to_fcnseg_models():
    result = run("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Architecture (`fcnseg models` lists each with its encoders)" in text
    assert "`fcnseg models` lists for it" in text
