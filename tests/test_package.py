"""fcnseg.sources is a plain subpackage (fcnseg/sources/, no symlink), seen alike from a source
checkout, an editable install and a wheel, which carries no generic top-level ``sources``."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = ("synthetic", "kitti", "cityscapes", "camvid", "folder", "lyft", "bdd100k", "carvana")
# Prints where fcnseg.sources and every built-in module would be imported from, without
# importing TensorFlow or OpenCV (find_spec does not run the module).
WHERE = ("import importlib.util, fcnseg.sources as s; print(s.__file__); "
         "[print(importlib.util.find_spec(m).origin) for m in s.BUILTIN.values()]")


def test_wheel_layout(tmp_path):
    pytest.importorskip("setuptools")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("fcnseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in (*BUILTINS, "__init__"):
        assert f"fcnseg/sources/{module}.py" in names
    assert "fcnseg/models/fcn.py" in names and "fcnseg/cli.py" in names and "fcnseg/source.py" in names
    assert not [n for n in names if n.startswith(("sources/", "tests/", "tools/"))]
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["fcnseg"]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fcnseg = fcnseg.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_sources_is_a_real_folder_not_a_symlink():
    # A symlink checks out as a text file on Windows (core.symlinks=false) and is dropped by some
    # archivers; then fcnseg.sources would not import at all.
    links = [str(p.relative_to(ROOT)) for p in (ROOT / "fcnseg").rglob("*") if p.is_symlink()]
    assert links == []
    assert (ROOT / "fcnseg" / "sources" / "__init__.py").is_file()
    assert not (ROOT / "sources").exists()  # one copy of the modules, not two places to edit


def _where(cwd: Path, *site_dirs: str) -> list[str]:
    """Origins of fcnseg.sources and its built-ins in a fresh interpreter run from ``cwd`` that sees
    only ``site_dirs`` (-S: not this venv's installed fcnseg)."""
    code = "".join(f"import site; site.addsitedir({d!r}); " for d in site_dirs) + WHERE
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_source_checkout_imports_its_own_sources():
    # `python -m fcnseg.cli` from the repository root: the checkout's fcnseg/ is first on the path.
    origins = _where(ROOT)
    assert len(origins) == 1 + len(BUILTINS)
    assert all(Path(o).resolve().is_relative_to(ROOT / "fcnseg" / "sources") for o in origins), origins


def test_editable_install_maps_fcnseg_sources_to_the_checkout(tmp_path):
    pytest.importorskip("setuptools")
    # --ignore-installed: without it pip uninstalls the fcnseg this test run is using, even with --prefix.
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--ignore-installed",
                          "--prefix", str(tmp_path / "prefix"), "-e", str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    site_dir = next((tmp_path / "prefix").rglob("site-packages"))
    origins = _where(tmp_path, str(site_dir))
    assert all(Path(o).resolve().is_relative_to(ROOT / "fcnseg" / "sources") for o in origins), origins


def test_console_script_runs():
    # The script pip installed beside this interpreter, whether or not its venv is activated.
    script = Path(sys.executable).parent / "fcnseg"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "evaluate", "predict", "export", "check-labels", "sources"):
        assert command in out.stdout
