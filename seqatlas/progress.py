"""The one progress display of long jobs: count, rate and ETA, on stderr so stdout stays data.

A :class:`Meter` counts work done and shows it in one of two ways, chosen once by the
``progress`` value every long job takes (callers never branch on it):

- ``bar``: a rich bar that redraws in place (a terminal, a notebook);
- ``log``: one plain line every :data:`INTERVAL` seconds (``SEQATLAS_PROGRESS_INTERVAL``
  overrides it), and a last one at the end, for log files and pipes::

      scoring: 12,345/100,000 positions (12%), 1,234 positions/s, elapsed 0:00:10, ETA 0:01:10

- ``none``: nothing; ``auto`` (and ``True``) is ``bar`` when stderr is a terminal or a
  notebook, else ``log``; ``False`` is ``none``.

Work in flight can be shown before it is done: :meth:`Meter.partial` sets a key's share so
far (replacing its last one), :meth:`Meter.settle` replaces it by the exact count once the
work is committed (0 when it failed, so a retried unit is never counted twice).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO

from seqatlas.errors import ConfigError

MODES = ("auto", "bar", "log", "none")
INTERVAL = 10.0  # seconds between two log lines
INTERVAL_VARIABLE = "SEQATLAS_PROGRESS_INTERVAL"


def check_progress(progress: bool | str) -> str:
    """``progress`` (a bool or one of :data:`MODES`) as a mode name, unresolved (``auto``
    stays ``auto``); anything else is a :class:`ConfigError`."""
    if isinstance(progress, bool):
        return "auto" if progress else "none"
    mode = getattr(progress, "value", progress)  # the CLI's str enum
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigError(f"progress must be True, False or one of {', '.join(MODES)}, not "
                          f"{progress!r}")
    return mode


def progress_mode(progress: bool | str, stream: IO | None = None) -> str:
    """``bar``, ``log`` or ``none``: ``auto`` is ``bar`` when ``stream`` (stderr) is a
    terminal or a notebook's, else ``log``."""
    mode = check_progress(progress)
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return "bar"
    except (AttributeError, ValueError):  # no isatty, or closed
        return "log"
    from rich.console import Console

    return "bar" if Console(file=stream).is_jupyter else "log"


def log_interval(interval: float | None = None) -> float:
    """Seconds between log lines: ``interval``, else ``$SEQATLAS_PROGRESS_INTERVAL``, else
    :data:`INTERVAL`."""
    if interval is None:
        text = os.environ.get(INTERVAL_VARIABLE)
        if not text:
            return INTERVAL
        try:
            interval = float(text)
        except ValueError:
            raise ConfigError(f"{INTERVAL_VARIABLE}={text!r} is not a number of seconds") \
                from None
    if not 0 < interval < float("inf"):
        raise ConfigError(f"the progress interval must be a positive number of seconds, not "
                          f"{interval!r}")
    return float(interval)


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Meter:
    """Counts ``unit`` toward ``total`` and shows it (see the module docstring); use it as a
    context manager around the work. The count is :attr:`completed`: what :meth:`advance`,
    :meth:`update` and :meth:`settle` counted, plus the in-flight shares of :meth:`partial`.
    """

    def __init__(self, *, label: str, unit: str, total: int, progress: bool | str = True,
                 rate_unit: str | None = None, interval: float | None = None,
                 stream: IO | None = None):
        self.label, self.unit, self.total = label, unit, int(total)
        self.rate_unit = rate_unit or unit
        self.stream = sys.stderr if stream is None else stream
        self.mode = progress_mode(progress, self.stream)
        self.interval = log_interval(interval) if self.mode == "log" else None
        self.in_flight: dict = {}  # key -> its share so far
        # (settled, sum of in_flight): one tuple, so the log thread reads a consistent pair
        self._counts = (0, 0)
        self.started: float | None = None
        self._bar = self._task = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def completed(self) -> int:
        done, flying = self._counts
        return done + flying

    @property
    def done(self) -> int:
        """What is settled (in-flight shares left out)."""
        return self._counts[0]

    # -- counting -----------------------------------------------------------------------

    def advance(self, n: int = 1) -> None:
        """``n`` more done."""
        done, flying = self._counts
        self._counts = (done + n, flying)
        self._show()

    def update(self, completed: int) -> None:
        """Done so far is ``completed`` (for work that reports where it is, not how much)."""
        self._counts = (completed, self._counts[1])
        self._show()

    def partial(self, key, n: int) -> None:
        """``key``, still in flight, has done ``n`` so far (0 forgets it)."""
        done, flying = self._counts
        flying += n - self.in_flight.pop(key, 0)
        if n:
            self.in_flight[key] = n
        self._counts = (done, flying)
        self._show()

    def settle(self, key, n: int) -> None:
        """``key`` finished: its in-flight share is replaced by ``n``, the exact count (0 for
        work that failed)."""
        done, flying = self._counts
        self._counts = (done + n, flying - self.in_flight.pop(key, 0))
        self._show()

    # -- showing ------------------------------------------------------------------------

    def __enter__(self) -> Meter:
        self.started = time.monotonic()
        if self.mode == "bar":
            self._bar, self._task = _rich_bar(self.label, self.unit, self.rate_unit,
                                              self.total, self.stream)
            self._bar.update(self._task, completed=self.completed)
            self._bar.start()
        elif self.mode == "log":
            self._stop.clear()
            self._thread = threading.Thread(target=self._log_every, name="seqatlas-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed)
            self._bar.stop()
            self._bar = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._write(self.line(end="done" if exc_type is None else "stopped"))

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed)

    def _log_every(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(self.line())

    def _write(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stderr never stops the work
                pass

    def line(self, *, end: str | None = None) -> str:
        """The log line: ``label: done/total unit (pct%), rate unit/s, elapsed H:MM:SS,
        ETA H:MM:SS`` (``end`` in place of the ETA in the last line)."""
        done, total = self.completed, self.total
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        percent = done * 100 // total if total else 100
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        speed = f"{rate:,.0f} {self.unit}/s" if rate else f"-- {self.unit}/s"
        if end is None:
            end = f"ETA {clock((total - done) / rate)}" if rate and done < total else \
                "ETA --" if done < total else "ETA 0:00:00"
        return (f"{self.label}: {done:,}/{total:,} {self.unit} ({percent}%), {speed}, "
                f"elapsed {clock(elapsed)}, {end}")


def _rich_bar(label: str, unit: str, rate_unit: str, total: int, stream: IO):
    """A rich ``Progress`` and its task: ``label [bar] done/total unit  rate  elapsed  ETA``."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    per_second = f"{rate_unit}/s"

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {per_second}" if speed else f"-- {per_second}",
                        style="cyan")

    console = Console(file=stream, force_terminal=True)
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn(unit), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console)
    return progress, progress.add_task(label, total=total)
