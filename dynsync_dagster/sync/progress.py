"""How far a full read has come, on the terminal of the command that runs the cycle.

A first copy of a large org takes minutes; without a sign of life it looks hung. Progress is
drawn only when a command in this process asked for it with its terminal (`dynsync sync`,
the demo) and that terminal is a TTY: runs launched by the Dagster daemon or webserver, and
commands whose output goes to a file or a pipe, print nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

# Redraw at most this often: a page of 5,000 rows can arrive every few milliseconds.
_REDRAW_S = 0.2


class ReadProgress:
    """Silent: what a cycle reports to when nobody is watching."""

    def start(self, entity: str, mode: str, total: int | None, already: int = 0) -> None:
        pass

    def page(self, entity: str, rows: int) -> None:
        pass

    def done(self, entity: str) -> None:
        pass


class TerminalProgress(ReadProgress):
    """One line per entity, redrawn in place: rows read of the total, pages, rate, ETA."""

    def __init__(self, stream: TextIO, clock=time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._entity = ""
        self._mode = ""
        self._total: int | None = None
        self._rows = self._pages = self._base = 0
        self._started = self._drawn = 0.0

    def start(self, entity: str, mode: str, total: int | None, already: int = 0) -> None:
        self._entity, self._mode, self._total = entity, mode, total
        self._rows, self._pages, self._base = already, 0, already
        self._started = self._clock()
        self._drawn = 0.0
        self._draw()

    def page(self, entity: str, rows: int) -> None:
        self._rows += rows
        self._pages += 1
        if self._clock() - self._drawn >= _REDRAW_S:
            self._draw()

    def done(self, entity: str) -> None:
        self._total = self._rows  # the snapshot total was an estimate; the read is exact
        self._draw(final=True)

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = (self._rows - self._base) / elapsed
        parts = [f"{self._entity}s ({self._mode} read): {self._rows:,}"]
        if self._total:
            shown = max(self._total, self._rows)
            parts[0] += f" of ~{shown:,} ({min(100, 100 * self._rows // shown)}%)"
        parts.append(f"{self._pages:,} page{'s' if self._pages != 1 else ''}")
        if self._rows > self._base:
            parts.append(f"{rate:,.0f} rows/s")
        if self._total and rate > 0 and self._total > self._rows:
            parts.append(f"ETA {_duration((self._total - self._rows) / rate)}")
        return ", ".join(parts)

    def _draw(self, final: bool = False) -> None:
        self._drawn = self._clock()
        # \r and clear-to-end-of-line: the line shrinks as well as grows.
        self._stream.write("\r" + self.line() + "\x1b[K" + ("\n" if final else ""))
        self._stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


_lock = threading.Lock()
_current: ReadProgress = ReadProgress()


def current() -> ReadProgress:
    """Where this process's cycles report progress (silent unless a command asked)."""
    return _current


def show_on_terminal(stream: TextIO | None = None) -> None:
    """Called by a command before it runs a cycle in this process: draw progress on its
    terminal, if it is one. The stream's descriptor is duplicated now, because Dagster
    redirects stdout and stderr into its compute logs while a step runs."""
    global _current
    stream = stream or sys.stderr
    if not stream.isatty() or os.environ.get("TERM") == "dumb":
        return
    with _lock:
        terminal = os.fdopen(os.dup(stream.fileno()), "w", buffering=1, closefd=True)
        _current = TerminalProgress(terminal)
