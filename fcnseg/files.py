"""Writing files safely: prove a folder is writable before the slow work, and
replace files and folders atomically so an interrupted or failed write never
leaves half a file, and never destroys the previous good one.

Every writer here writes under a hidden temporary name beside the target
(``.NAME.<random>.fcnseg-tmp[.ext]``, same folder, so the final rename never
crosses file systems), flushes it to disk, then renames it onto the target.
A rename replaces a symlink at the target itself, so a link named like an
output never redirects the write to a file elsewhere. On any failure,
Ctrl-C included, the temporary file or folder is removed and the target is
left as it was; OS errors become one-line :class:`FcnsegError` naming the file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator

from fcnseg.errors import FcnsegError

TEMP_MARK = ".fcnseg-tmp"


def is_symlink_loop(path: str) -> bool:
    """Whether resolving ``path`` runs into a loop of symlinks (which os.path.exists reports as missing)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def not_a_folder(path: str) -> str:
    """Why ``path`` is no folder, as the end of a sentence naming it."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        if e.errno == errno.ENOENT:
            return "does not exist"
        return f"cannot be read: {e.strerror or e}"
    return "is not a folder"


def ensure_writable_dir(path: str, option: str) -> list[str]:
    """Create ``path`` if needed and prove we can write there, or a one-line error naming ``option``.
    Returns the folders it created, deepest first (for :func:`remove_empty_folders` on a failed start)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise FcnsegError(f"{option} {path} is a file, not a folder")
    if is_symlink_loop(path):
        raise FcnsegError(f"{option} {path} is a symlink loop")
    created = []
    folder = os.path.abspath(path)
    while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
        # A fresh exclusive name: a fixed probe name could be a planted symlink that open() would follow.
        os.remove(_create_temp(os.path.join(path, ".fcnseg-write-test"), _create_file))
    except OSError as e:
        raise FcnsegError(f"{option} {path} is not writable: {e.strerror or e}") from None
    return created


def remove_empty_folders(folders: list[str]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: undoes :func:`ensure_writable_dir`."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


def write_error(path: str, error: BaseException, what: str | None = None) -> FcnsegError:
    """The one-line error for a failed write of ``path`` (``what`` names the option, e.g. ``--output``)."""
    # TensorFlow's messages wrap the OS reason: "{{function_node ...}} PATH; No space left on device [Op:SaveV2]".
    text = re.sub(r"\{\{.*?\}\}|\s*\[Op:\w+\]\s*$", "", str(error)).strip()
    text = text.rsplit("; ", 1)[-1]
    reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__)
    return FcnsegError(f"{what + ' ' if what else ''}{path}: could not write: {reason}")


def temp_name(path: str, kind: str = "tmp") -> str:
    """A hidden sibling of ``path`` that keeps its extension (cv2 and Keras pick the format by it)."""
    folder, base = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(base)[1] if kind == "tmp" else ""
    # Keep well under NAME_MAX (255) whatever the target's name length.
    return os.path.join(folder, f".{base[:120]}.{secrets.token_hex(4)}.fcnseg-{kind}{ext}")


def _create_temp(path: str, create: Callable[[str], Any]) -> str:
    """A fresh name beside ``path`` on which ``create`` succeeded (it must refuse an existing one)."""
    for _ in range(100):
        name = temp_name(path)
        try:
            create(name)
            return name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", path)


def _create_file(name: str) -> None:
    # O_EXCL: never open something that already exists (a file or a planted link);
    # mode 0o666 lets the umask decide, as a plain open() would (mkstemp forces 0600).
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))


def _fsync_dir(folder: str) -> None:
    """Make a rename durable; some file systems cannot fsync a folder, which is no reason to fail."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Remove a file, link or folder tree, ignoring errors (cleanup must not mask the real failure)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str, what: str | None = None) -> Iterator[str]:
    """Yield a temporary file name beside ``path`` for writers that take a name (``cv2.imwrite``, Keras).

    On leaving the block without an exception the file is fsynced and renamed onto
    ``path``; on any exception it is removed and ``path`` is untouched.
    """
    with _published(path, what, _create_file, _fsync_and_replace) as tmp:
        yield tmp


def _fsync_and_replace(tmp: str, path: str) -> None:
    _fsync_file(tmp)
    os.replace(tmp, path)


@contextmanager
def _published(path: str, what: str | None, create: Callable[[str], None],
               publish: Callable[[str, str], None]) -> Iterator[str]:
    """Yield a new temporary name beside ``path`` made by ``create(name)``; after the block
    ``publish(tmp, path)`` and fsync the folder. On any failure ``tmp`` is removed (``path``
    stays as it was) and an OS error becomes one line naming ``path``."""
    try:
        tmp = _create_temp(path, create)
    except OSError as e:
        raise write_error(path, e, what) from None
    try:
        yield tmp
        publish(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise write_error(path, e, what) from None
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextmanager
def atomic_write(path: str, mode: str = "wb", what: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block completes.

    Example:
        >>> with atomic_write("model.tflite") as f:
        ...     f.write(flatbuffer)
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode, not {mode!r}")
    with atomic_path(path, what) as tmp:
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
        except OSError as e:
            raise write_error(path, e, what) from None


def write_json(path: str, data: Any, what: str | None = None) -> None:
    """Write JSON to ``path`` atomically; a failure is a one-line error (naming option ``what``, if
    given, and the file) and leaves ``path`` as it was."""
    with atomic_write(path, "w", what) as f:
        json.dump(data, f, indent=1)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        renameat2 = ctypes.CDLL(libc_name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), b)


def replace_dir(new: str, path: str) -> None:
    """Put folder ``new`` at ``path``, replacing whatever is there (folder, file or link, never followed).

    Where the file system allows, the two are exchanged atomically; otherwise the
    old one is renamed aside, ``new`` renamed into place (the old one is put back
    if that fails) and the old one removed.
    """
    if os.path.lexists(path) and _exchange(new, path):
        _remove(new)  # after the exchange ``new`` names the old content
        return
    aside = None
    if os.path.lexists(path):
        aside = temp_name(path, "old")
        os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        if aside:
            os.rename(aside, path)
        raise
    if aside:
        _remove(aside)


@contextmanager
def atomic_dir(path: str, what: str | None = None) -> Iterator[str]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` only if the block completes.

    Example:
        >>> with atomic_dir("models/fcnseg/1") as tmp:
        ...     archive.write_out(tmp)
    """
    with _published(path, what, lambda tmp: os.mkdir(tmp, 0o777), _fsync_and_replace_dir) as tmp:
        yield tmp


def _fsync_and_replace_dir(tmp: str, path: str) -> None:
    _fsync_tree(tmp)
    replace_dir(tmp, path)


def _fsync_tree(folder: str) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            _fsync_file(os.path.join(root, name))
        _fsync_dir(root)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
