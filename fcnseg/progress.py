"""Training progress on stdout: one line redrawn in place on a terminal, plain
lines (no carriage returns, backspaces or colour codes) in a log file or CI.

The loss shown is always the epoch's running mean, so the line printed at the
epoch's end is the figure ``history.json`` records, not the last batch's loss.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, ContextManager, TextIO


class Progress:
    """Progress of one epoch of ``total`` steps, starting at ``done`` (a resumed epoch)."""

    def __init__(self, total: int, done: int = 0, stream: TextIO | None = None, enabled: bool = True,
                 lines: int = 10) -> None:
        self.total, self.done, self.enabled = total, done, enabled
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        # Off a terminal: about ``lines`` lines per epoch, however long it is.
        self.every = max(1, math.ceil(total / max(lines, 1)))
        self.t0 = time.time()
        self.steps_here = 0
        self._width = 0  # of the line on screen, to blank a longer previous one

    def update(self, mean_loss: float, lr: float) -> None:
        """One more step done; ``mean_loss`` is the epoch's mean so far."""
        self.done += 1
        self.steps_here += 1
        if not self.enabled:
            return
        text = self._line(mean_loss, lr)
        if self.live:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif self.done % self.every == 0 and self.done < self.total:
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self, mean_loss: float, lr: float) -> None:
        """The epoch's last line, always printed, always ending the line."""
        if not self.enabled:
            return
        text = self._line(mean_loss, lr)
        self.stream.write(("\r" + text.ljust(self._width) if self.live else text) + "\n")
        self.stream.flush()

    def _line(self, mean_loss: float, lr: float) -> str:
        seconds = time.time() - self.t0
        per_step = f"{1000 * seconds / self.steps_here:.0f} ms/step" if self.steps_here else ""
        return (f"step {self.done}/{self.total}  loss {mean_loss:.4f}  lr {lr:.3g}  "
                f"{seconds:.0f}s {per_step}").rstrip()


class NoBar:
    """Stands in for a progress bar (``click.progressbar``'s interface) when none is shown."""

    def __enter__(self) -> "NoBar":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def update(self, n: int) -> None:
        pass


def open_bar(progress: Callable[[int], ContextManager] | None, total: int) -> ContextManager:
    """``progress(total)`` (e.g. ``lambda n: click.progressbar(length=n)``), or a NoBar without one."""
    return progress(total) if progress else NoBar()
