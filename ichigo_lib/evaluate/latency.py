"""Latency harness: wall time per call after warm-up, and time to first streamed token.

For time to first token, either give ``time_calls`` an ``fn`` that returns once the first token
exists (``lambda x: next(iter(generate_stream(x)))``) or time each stream with
``first_token_time``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]


@dataclass(frozen=True)
class LatencyStats:
    """Measured times in seconds, in call order; ``std`` is the sample std (0.0 for one)."""

    times: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times:
            raise ValueError("LatencyStats needs at least one measured time")

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def std(self) -> float:
        return statistics.stdev(self.times) if self.n > 1 else 0.0


def time_calls(
    fn: Callable[[Any], object],
    inputs: Sequence[Any],
    repeats: int = 1,
    warmup: int = 1,
    clock: Clock = time.perf_counter,
) -> LatencyStats:
    """Time ``fn(x)`` for each input, ``repeats`` times over, after ``warmup`` dropped calls.

    The warm-up calls (compilation, caches, lazy allocation) run first, cycling through
    ``inputs``; their times are discarded. ``fn``'s return value is ignored.
    """
    if not inputs:
        raise ValueError("time_calls needs at least one input")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    for _ in range(repeats):
        for x in inputs:
            start = clock()
            fn(x)
            times.append(clock() - start)
    return LatencyStats(tuple(times))


def first_token_time(
    stream: Iterable[object], clock: Clock = time.perf_counter, start: float | None = None
) -> float:
    """Seconds from ``start`` (default: now) until ``stream`` yields its first item.

    Pass ``start`` when generation began before the stream is read (e.g. a HF
    ``TextIteratorStreamer`` fed by a thread). The rest of the stream is drained so that the
    generation finishes before the next measurement.
    """
    start = clock() if start is None else start
    items = iter(stream)
    try:
        next(items)
    except StopIteration:
        raise ValueError("stream ended before yielding a first token") from None
    elapsed = clock() - start
    for _ in items:
        pass
    return elapsed


def ratio(a: LatencyStats, b: LatencyStats) -> float:
    """How many times slower ``a`` is than ``b`` on average (``a.mean / b.mean``)."""
    if not math.isfinite(b.mean) or b.mean <= 0:
        raise ValueError(f"cannot divide by a mean latency of {b.mean}")
    return a.mean / b.mean
