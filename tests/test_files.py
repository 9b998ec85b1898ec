"""fcnseg.files: atomic file and folder writes on full and read-only disks, through symlinks and on Ctrl-C."""

import json
import os
import stat

import pytest
from fs_faults import fill, remount_read_only, temp_leftovers, tmpfs

from fcnseg import files
from fcnseg.errors import FcnsegError
from fcnseg.files import atomic_dir, atomic_path, atomic_write, ensure_writable_dir, write_json


def one_line(error: FcnsegError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_write_json_on_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        write_json(str(disk / "history.json"), [{"epoch": 1}])
        with pytest.raises(FcnsegError) as caught:
            write_json(str(disk / "history.json"), [{"epoch": 2, "pad": "x" * 200_000}])
        assert one_line(caught.value) == f"{disk / 'history.json'}: could not write: No space left on device"
        assert json.loads((disk / "history.json").read_text()) == [{"epoch": 1}]
        assert os.listdir(disk) == ["history.json"]


def test_write_json_on_a_read_only_disk_is_one_line(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        write_json(str(disk / "a.json"), {"v": 1})
        remount_read_only(disk)
        with pytest.raises(FcnsegError) as caught:
            write_json(str(disk / "a.json"), {"v": 2})
        assert one_line(caught.value) == f"{disk / 'a.json'}: could not write: Read-only file system"
        assert json.loads((disk / "a.json").read_text()) == {"v": 1}


def test_atomic_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("precious")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "a.json"
    link.symlink_to(elsewhere)
    write_json(str(link), {"v": 1})
    assert elsewhere.read_text() == "precious"
    assert not link.is_symlink() and json.loads(link.read_text()) == {"v": 1}


def test_atomic_write_interrupted_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "model.tflite"
    target.write_bytes(b"old good model")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(target)) as f:
            f.write(b"half a new mod")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old good model"
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_atomic_write_creates_files_with_the_umask_mode_and_keeps_the_extension(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "x.png")) as tmp:
            assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        with atomic_write(str(tmp_path / "y.bin")) as f:
            f.write(b"y")
    finally:
        os.umask(old)
    for name in ("x.png", "y.bin"):  # mkstemp would give 0600: unreadable to a model server running as another user
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_dir_swaps_a_folder_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "sm"
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(str(target)) as tmp:
            open(os.path.join(tmp, "saved_model.pb"), "w").close()
            raise RuntimeError("conversion failed")
    assert (target / "saved_model.pb").read_text() == "old" and temp_leftovers(tmp_path) == []
    with atomic_dir(str(target)) as tmp:
        with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(target)) == ["saved_model.pb"] and (target / "saved_model.pb").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["sm"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_dir_replaces_a_symlinked_folder_not_its_target(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "out" / "sm"
    link.parent.mkdir()
    link.symlink_to(real)
    with atomic_dir(str(link)) as tmp:
        open(os.path.join(tmp, "new.txt"), "w").close()
    assert (real / "keep.txt").read_text() == "keep" and not link.is_symlink()
    assert os.listdir(link) == ["new.txt"] and os.listdir(link.parent) == ["sm"]


def test_replace_dir_puts_the_old_folder_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    old, new = tmp_path / "sm", tmp_path / "new"
    old.mkdir()
    (old / "saved_model.pb").write_text("old")
    new.mkdir()
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(new):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError):
        files.replace_dir(str(new), str(old))
    assert (old / "saved_model.pb").read_text() == "old" and temp_leftovers(tmp_path) == []


def test_atomic_dir_on_a_full_disk_is_one_line_and_keeps_the_old_folder(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "sm").mkdir()
        (disk / "sm" / "saved_model.pb").write_text("old")
        with pytest.raises(FcnsegError) as caught:
            with atomic_dir(str(disk / "sm"), "--output") as tmp:
                with open(os.path.join(tmp, "big"), "wb") as f:
                    f.write(b"\0" * 200_000)
        assert one_line(caught.value) == f"--output {disk / 'sm'}: could not write: No space left on device"
        assert (disk / "sm" / "saved_model.pb").read_text() == "old" and os.listdir(disk) == ["sm"]


def test_ensure_writable_dir_never_follows_a_planted_probe_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".fcnseg-write-test").symlink_to(victim)  # the old fixed probe name
    ensure_writable_dir(str(out), "--output-dir")
    assert victim.read_text() == "precious"


def test_ensure_writable_dir_on_a_file_and_a_full_disk(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(FcnsegError, match=r"^--output-dir .*/f is a file, not a folder$"):
        ensure_writable_dir(str(tmp_path / "f"), "--output-dir")
    with tmpfs(tmp_path / "disk", "64k") as disk:
        fill(disk)
        ensure_writable_dir(str(disk), "--output-dir")  # an empty file still fits: the writes must report it
        with pytest.raises(FcnsegError, match="No space left on device"):
            with atomic_write(str(disk / "x.png")) as f:
                f.write(b"\0" * 8192)
        assert sorted(os.listdir(disk)) == ["filler"]
