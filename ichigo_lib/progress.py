"""Plain-line progress of ``ichigo run`` / ``ichigo book`` while papermill executes a notebook.

Inside the kernel, :meth:`ichigo_lib.runs.Run.stage` keeps ``<run dir>/.progress.json`` naming
the stage that runs now. :class:`StageWatcher` polls that file from a thread of the runner and
prints a line when a stage starts or ends and a heartbeat every ``HEARTBEAT_S`` seconds, with the
time spent and an estimate of what remains (from the previous run's manifests). Lines, not a
bar: they read the same in a terminal and in a log file read the next morning.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

HEARTBEAT_S = 30.0
POLL_S = 1.0


def duration(seconds: float | None) -> str:
    """``4.2s``, ``42s``, ``3m05s``, ``1h02m``; ``unknown`` for ``None``."""
    if seconds is None:
        return "unknown"
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def remaining(elapsed: float, previous: float | None, later: float | None) -> float | None:
    """Seconds left: this notebook's previous wall time minus ``elapsed`` (never below 0), plus
    ``later``, the previous wall times of the notebooks still to run. ``None`` (unknown) when
    either has no previous run."""
    if previous is None or later is None:
        return None
    return max(previous - elapsed, 0.0) + later


def read_progress(path: Path) -> dict | None:
    """The kernel's ``.progress.json``, or ``None`` before it exists (or if unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def format_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A plain-text table, each column padded to its widest cell and aligned as ``align`` says
    (one ``<`` or ``>`` per column)."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (
            c.ljust(w) if a == "<" else c.rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


class StageWatcher:
    """Print one notebook's stage changes and heartbeats while it executes.

    ``previous`` is the notebook's last finished manifest (its ``wall_time_s`` and ``timings``;
    ``None`` when there is none) and ``later`` the previous wall time of the notebooks to run
    after it (``None``: unknown). Use as a context manager around the execution; :meth:`poll`
    does one round and takes the time as an argument.
    """

    def __init__(
        self,
        label: str,
        path: Path,
        previous: dict | None,
        later: float | None,
        write: Callable[[str], None] = lambda line: print(line, flush=True),
        heartbeat: float = HEARTBEAT_S,
    ):
        self.label, self.path, self.write, self.heartbeat = label, Path(path), write, heartbeat
        self.previous_wall = previous["wall_time_s"] if previous else None
        self.previous_timings = previous.get("timings", {}) if previous else {}
        self.later = later
        self.started = self.last_line = time.time()
        self.current: tuple[str | None, float] = (None, self.started)  # stage, since
        self.run_started: float | None = None  # the origin of the manifest's wall_time_s
        self.timings: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def poll(self, now: float, beat: bool = True) -> None:
        """Read the progress file once; print the stages that ended and the one that started
        since the last round, or else a heartbeat when one is due (and ``beat``)."""
        stage, since = self.current
        state = read_progress(self.path) or {"stage": stage, "since": since, "timings": {}}
        timings = {**self.timings, **state["timings"]}
        lines = [
            f"stage {name} done in {duration(seconds - self.timings.get(name, 0.0))}"
            for name, seconds in timings.items()
            if seconds != self.timings.get(name)
        ]
        self.timings = timings
        self.run_started = state.get("run_started", self.run_started)
        current = (state["stage"], state["since"])
        if current[0] and current != self.current:
            last = self.previous_timings.get(current[0])
            before = f" (last run {duration(last)})" if last is not None else ""
            lines.append(f"stage {current[0]} started{before} | {self._clock(now)}")
        self.current = current
        if not lines and beat and now - self.last_line >= self.heartbeat:
            stage, since = self.current
            where = f"in stage {stage} for {duration(now - since)}" if stage else "running"
            lines.append(f"{where} | {self._clock(now)}")
        for line in lines:
            self.write(f"{self.label}: {line}")
            self.last_line = now

    def _clock(self, now: float) -> str:
        elapsed = now - self.started
        in_run = now - (self.run_started or self.started)  # wall_time_s excludes kernel start
        left = remaining(in_run, self.previous_wall, self.later)
        return f"notebook {duration(elapsed)} | remaining " + (
            "unknown" if left is None else f"~{duration(left)}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll(time.time())

    def __enter__(self) -> StageWatcher:
        self.started = self.last_line = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll(time.time(), beat=False)  # the stages that ended since the last round
