"""The run folder as a resource: one process at a time, nothing left behind by a
failed start, and the debris of a killed run swept before it resumes.

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``: the kernel drops it when the
process dies, so a run killed with ``kill -9`` leaves a folder that the next
``--resume`` can take at once, with no stale-lock file to delete by hand.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal

from fcnseg.errors import FcnsegError
from fcnseg.files import ensure_writable_dir

LOCK_NAME = ".lock"
KILL_ENV = "FCNSEG_TEST_KILL_AT"


class RunDir:
    """Exclusive use of ``path`` for the life of this object (until :meth:`release`).

    ``create=True`` makes the folder (and missing parents) and remembers what it made,
    so that :meth:`abandon` can remove it again when the run fails before writing anything.
    """

    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        self.created: list[str] = []
        if create:
            self.created = _missing_parents(path)
            ensure_writable_dir(path, "--run-dir")
        try:
            self._fd = _lock(path)
        except FcnsegError:
            self._fd = None
            self._remove_created()
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def abandon(self) -> None:
        """Undo a failed start: remove the lock file and every folder we created, if still empty."""
        self.release()
        try:
            os.remove(os.path.join(self.path, LOCK_NAME))
        except OSError:
            pass
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break


def _missing_parents(path: str) -> list[str]:
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _lock(path: str) -> int:
    lock_path = os.path.join(path, LOCK_NAME)
    existed = os.path.lexists(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise FcnsegError(f"--run-dir {path} is not writable: {e.strerror or e} ({lock_path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FcnsegError(f"--run-dir {path} is in use by pid {holder}; wait for that run to end or choose "
                          "another folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:  # a full disk: even the pid does not fit
        os.close(fd)
        if not existed:
            os.remove(lock_path)
        raise FcnsegError(f"--run-dir {path}: cannot write {lock_path}: {e.strerror or e}") from None
    return fd


def is_empty(path: str) -> bool:
    """True when ``path`` holds nothing but our own lock file."""
    return not [name for name in os.listdir(path) if name != LOCK_NAME]


def sweep_leftovers(run_dir: str) -> list[str]:
    """Remove what a killed or failed run was writing; returns the paths removed.

    Finished files are never touched: every file is written under a temporary
    name (``*.partial``, ``.NAME.partial.keras``, :func:`fcnseg.files.temp_name`'s
    ``.NAME.XXXXXXXX.fcnseg-tmp.EXT``; TensorFlow's ``state/ckpt-N_temp``) and
    renamed, and state files no ``state/checkpoint`` record names are
    half-written saves. The caller holds the run's lock, so no other process
    owns a temporary file here.
    """
    removed = []
    for name in os.listdir(run_dir):
        if name.endswith((".partial", ".partial.keras")) or (name.startswith(".") and ".fcnseg-tmp" in name):
            removed.append(os.path.join(run_dir, name))
    state_dir = os.path.join(run_dir, "state")
    if os.path.isdir(state_dir):
        removed += [os.path.join(state_dir, n) for n in orphan_state_files(state_dir)]
    remove_all(removed)
    return removed


def orphan_state_files(state_dir: str) -> list[str]:
    """Names in ``state_dir`` that belong to no checkpoint the ``checkpoint`` record lists."""
    import tensorflow as tf

    record = tf.train.get_checkpoint_state(state_dir)
    kept = set()
    if record is not None:
        kept = {os.path.basename(p) for p in record.all_model_checkpoint_paths}
        kept.add(os.path.basename(record.model_checkpoint_path))
    orphans = []
    for name in os.listdir(state_dir):
        if name == "checkpoint":
            continue
        prefix = name.split(".", 1)[0]
        if name.endswith("_temp") or prefix.endswith("_temp") or prefix not in kept:
            orphans.append(name)
    return orphans


def kill_point(phase: str, epoch: int | None = None) -> None:
    """Test hook: SIGKILL this process at a named phase (``FCNSEG_TEST_KILL_AT=phase`` or
    ``phase@EPOCH``), so kill -9 tests hit the exact moment instead of racing a timer."""
    target = os.environ.get(KILL_ENV)
    if target and target in (phase, f"{phase}@{epoch}"):
        os.kill(os.getpid(), signal.SIGKILL)


def remove_all(paths) -> None:
    """Remove files and folders, ignoring those already gone."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
