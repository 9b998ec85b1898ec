"""A plain (non-editable) install must carry the built-in sources as fcnseg.sources
and no generic top-level package named ``sources``."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    pytest.importorskip("setuptools")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("fcnseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("synthetic", "kitti", "cityscapes", "camvid", "folder", "__init__"):
        assert f"fcnseg/sources/{module}.py" in names
    assert "fcnseg/models/fcn.py" in names and "fcnseg/cli.py" in names
    assert not [n for n in names if n.startswith(("sources/", "tests/", "tools/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fcnseg = fcnseg.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_console_script_runs():
    # The script pip installed beside this interpreter, whether or not its venv is activated.
    script = Path(sys.executable).parent / "fcnseg"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "evaluate", "predict", "export", "check-labels", "sources"):
        assert command in out.stdout
