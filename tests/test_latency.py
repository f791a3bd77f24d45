"""Latency harness on a fake clock: warm-up dropped, stats right, first-token timing."""

import statistics

import pytest

from ichigo_lib.evaluate.latency import LatencyStats, first_token_time, ratio, time_calls


class FakeClock:
    """Time moves only when a test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def slow_first_call(clock, compile_s=50.0):
    """An fn whose call with input x takes x seconds, plus ``compile_s`` on its first call."""
    calls = []

    def fn(x):
        clock.advance(x + (compile_s if not calls else 0.0))
        calls.append(x)
        return "ignored"

    return fn, calls


def test_warmup_calls_are_made_but_dropped():
    clock = FakeClock()
    fn, calls = slow_first_call(clock)
    stats = time_calls(fn, [1.0, 2.0, 3.0], warmup=1, clock=clock)
    assert calls == [1.0, 1.0, 2.0, 3.0]
    assert stats.times == (1.0, 2.0, 3.0)
    assert (stats.n, stats.mean, stats.std) == (3, 2.0, 1.0)


def test_without_warmup_the_first_call_is_measured():
    clock = FakeClock()
    fn, _ = slow_first_call(clock)
    stats = time_calls(fn, [1.0, 2.0, 3.0], warmup=0, clock=clock)
    assert stats.times == (51.0, 2.0, 3.0)


def test_repeats_and_warmup_cycle_through_inputs():
    clock = FakeClock()
    fn, calls = slow_first_call(clock)
    stats = time_calls(fn, [1.0, 4.0], repeats=3, warmup=3, clock=clock)
    assert calls == [1.0, 4.0, 1.0] + [1.0, 4.0] * 3
    assert stats.times == (1.0, 4.0) * 3
    assert stats.mean == 2.5
    assert stats.std == pytest.approx(statistics.stdev([1.0, 4.0] * 3))


def test_real_clock_measures_something():
    stats = time_calls(lambda x: sum(range(x)), [1000, 2000], warmup=0)
    assert stats.n == 2 and all(t >= 0 for t in stats.times)


def test_single_time_has_zero_std_and_no_times_is_an_error():
    assert LatencyStats((0.5,)).std == 0.0
    with pytest.raises(ValueError, match="at least one measured time"):
        LatencyStats(())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inputs": []}, "at least one input"),
        ({"repeats": 0}, "repeats >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
    ],
)
def test_time_calls_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_calls(print, **{"inputs": [1], **kwargs})


def test_first_token_time_stops_the_clock_at_the_first_item_and_drains_the_rest():
    clock = FakeClock()
    produced = []

    def stream():
        for token, delay in (("Hel", 0.25), ("lo", 1.0), ("!", 1.0)):
            clock.advance(delay)
            produced.append(token)
            yield token

    assert first_token_time(stream(), clock=clock) == 0.25
    assert produced == ["Hel", "lo", "!"]


def test_first_token_time_from_an_earlier_start():
    clock = FakeClock()
    start = clock()
    clock.advance(2.0)  # generation started in a background thread before the stream is read
    assert first_token_time(iter(["a"]), clock=clock, start=start) == 2.0


def test_first_token_time_of_an_empty_stream_is_an_error():
    with pytest.raises(ValueError, match="before yielding a first token"):
        first_token_time([])


def test_ratio_of_means():
    assert ratio(LatencyStats((3.0, 5.0)), LatencyStats((1.0, 1.0))) == 4.0
    with pytest.raises(ValueError, match="mean latency of 0.0"):
        ratio(LatencyStats((1.0,)), LatencyStats((0.0,)))
