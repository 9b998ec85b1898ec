"""tools/fault_matrix.py: the harness itself reports what it sees (a broken expectation is a FAIL,
touched files and temporary leftovers are caught), covers every kill phase the library has, and
its quick subset passes end to end (slow)."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "fault_matrix.py"


@pytest.fixture(scope="module")
def fm():
    spec = importlib.util.spec_from_file_location("fcnseg_fault_matrix", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def tool(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_list_names_every_family_and_exits_0():
    result = tool("--list")
    assert result.returncode == 0, result.stderr
    ids = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert result.stdout.splitlines()[-1] == f"{len(ids)} cases"
    for command in ("train", "evaluate", "predict", "export", "check-labels", "sources"):
        assert any(i.startswith(command) for i in ids), command
    for family in ("kill-random", "-unreadable", "-huge", "-loop", "-value200", "-rgb", "-bilinear", "-full",
                   "-read-only-fs", "-symlinked-", "-locked", "-untrusted-py", "-contradicts-", "-nan", "-empty-"):
        assert any(family in i for i in ids), family
    quick = tool("--list", "--quick", "--only", "kill-*")
    assert 0 < len(quick.stdout.splitlines()) - 1 < len([i for i in ids if i.startswith("kill-")])


def test_every_kill_phase_of_the_library_is_in_the_matrix(fm):
    """A phase added to fcnseg's kill hook without a matrix case fails here."""
    source = "".join((REPO / "fcnseg" / name).read_text() for name in ("train.py", "checkpoint.py"))
    phases = set(re.findall(r'kill_point\("(\w+)"', source))
    assert phases >= {"step", "step_saved", "epoch_end", "last_saved", "history_saved", "epoch_saved"}
    covered = {p.split("@")[0] for p in fm.KILL_PHASES}
    assert phases <= covered, phases - covered
    assert "random" in covered


def run_one(fm, tmp_path, case):
    out = io.StringIO()
    failed = fm.run_matrix([case], tmp_path, stream=out)
    return failed, out.getvalue()


def test_a_broken_expectation_is_reported_fail(fm, tmp_path):
    # `fcnseg sources` succeeds, so an "error" expectation must fail, with the reason and a reproduction.
    failed, text = run_one(fm, tmp_path, fm.Case("selftest-broken", "sources", "error", ("sources",)))
    assert failed == 1
    assert text.splitlines()[-1] == "0 passed, 1 failed"
    assert re.search(r"^FAIL  selftest-broken .*\n +\$ fcnseg sources\n +-> exit 0 \(expected failure\)", text, re.M)
    assert "reproduce: python tools/fault_matrix.py --only selftest-broken --keep" in text
    # The same command with a bad argument meets the expectation (click's one-line usage error).
    failed, text = run_one(fm, tmp_path, fm.Case("selftest-usage", "sources extra", "error", ("extra",)))
    assert failed == 0 and text.splitlines()[-1] == "1 passed, 0 failed", text
    failed, text = run_one(fm, tmp_path, fm.Case("selftest-needle", "sources extra", "error", ("--nowhere",)))
    assert failed == 1 and "does not name ['--nowhere']" in text


def test_a_touched_file_fails_an_ok_expectation_unless_allowed(fm, tmp_path):
    cmd = "check-labels --data-source camvid --data-dir {ws}/camvid --weights-out {ws}/w.json"
    failed, text = run_one(fm, tmp_path, fm.Case("selftest-touch", cmd, "ok", setup=(("camvid",),)))
    assert failed == 1 and "1 file(s) touched: new w.json" in text, text
    failed, text = run_one(fm, tmp_path, fm.Case("selftest-allowed", cmd, "ok", setup=(("camvid",),),
                                                 changes=("w.json",)))
    assert failed == 0, text


def test_snapshot_changes_and_leftovers(fm, tmp_path):
    (tmp_path / "a.json").write_text("1")
    (tmp_path / "link").symlink_to("a.json")
    before = fm.snapshot(tmp_path)
    (tmp_path / "a.json").write_text("2")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_text("")
    assert fm.changed(before, fm.snapshot(tmp_path), ()) == ["changed a.json", "new out", "new out/x.png"]
    assert fm.changed(before, fm.snapshot(tmp_path), ("a.json", "out/**")) == []
    for name in (".x.png.1a2b.fcnseg-tmp.png", "history.json.partial", ".best.keras.partial.keras", "ckpt-3_temp"):
        (tmp_path / "out" / name).write_text("")
    assert sorted(fm.leftovers(tmp_path)) == sorted(f"out/{n}" for n in (
        ".x.png.1a2b.fcnseg-tmp.png", "history.json.partial", ".best.keras.partial.keras", "ckpt-3_temp"))


def test_unknown_pattern_and_exit_status():
    assert tool("--only", "no-such-case").returncode == 2
    result = tool("--only", "ok-sources")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1 passed, 0 failed"


@pytest.mark.slow
def test_quick_matrix_passes():
    result = tool("--quick", timeout=1800)
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed", last), result.stdout[-4000:]
    assert result.returncode == 0
