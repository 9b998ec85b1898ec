"""Hide TensorFlow's native start-up log from the ``fcnseg`` command.

On a machine without a GPU, importing TensorFlow prints CUDA probing, oneDNN
and CPU-feature lines through absl *before* absl reads any setting, so
``TF_CPP_MIN_LOG_LEVEL`` cannot stop them (TF 2.21). The only place to drop
them is the process's stderr itself: :func:`filter_native_stderr` passes fd 2
through a pipe that removes absl-formatted lines and keeps everything else
(error messages, tracebacks, progress bars) unchanged.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                   rb"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
                   rb"|To enable the following instructions: .* rebuild TensorFlow)")
# A partial line starting like this may still become noise: hold it until its newline.
_MAYBE = re.compile(rb"^(W(A(R(N(I(N(G(:( (A(l(l)?)?)?)?)?)?)?)?)?)?)?|[IWEF]\d{0,4}( .*)?|To( .*)?)$")


def quiet_tensorflow() -> None:
    """Silence TensorFlow's logging for this process; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # what absl logs after its start-up
    filter_native_stderr()


def filter_native_stderr() -> None:
    """Drop absl log lines from fd 2 for the rest of the process (only for a real process
    whose sys.stderr is fd 2: under a test runner that captures output, do nothing)."""
    if sys.stderr is not sys.__stderr__:
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return
    sys.stderr.flush()
    out, restore = os.dup(fd), os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    pump = threading.Thread(target=_pump, args=(read_end, out), daemon=True)
    pump.start()

    def finish() -> None:
        sys.stderr.flush()
        os.dup2(restore, fd)  # closes the pipe's write end: the pump sees EOF and drains
        pump.join(timeout=5)

    atexit.register(finish)


def _pump(read_end: int, out: int) -> None:
    pending = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        if pending and not _MAYBE.match(pending):  # e.g. a progress bar redrawn with \r
            kept, pending = kept + pending, b""
        _write_all(out, kept)
    if pending and not NOISE.match(pending):
        _write_all(out, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
