"""Shard plans: contiguous, non-overlapping row ranges that one or many machines can split.

The same plan serves every way of running the pipeline: worker processes on one machine take
whole shards, torchrun ranks take ``select_shards(shards, rank, world_size)`` (round-robin), and
independent jobs take a ``parse_shard_range("3:7")`` slice of shard ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Rows ``start`` (inclusive) to ``stop`` (exclusive) of the input, in input order."""

    id: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def plan_shards(
    num_rows: int, num_shards: int | None = None, rows_per_shard: int | None = None
) -> list[Shard]:
    """Split rows ``0..num_rows`` into contiguous shards; give exactly one of the two sizes.

    With ``num_shards`` the sizes differ by at most one row (larger shards first); with
    ``rows_per_shard`` every shard but the last holds exactly that many rows.
    """
    _check_int("num_rows", num_rows, 1)
    if (num_shards is None) == (rows_per_shard is None):
        raise ValueError("give exactly one of num_shards and rows_per_shard")
    if rows_per_shard is not None:
        size = _check_int("rows_per_shard", rows_per_shard, 1)
        bounds = [*range(0, num_rows, size), num_rows]
    else:
        count = _check_int("num_shards", num_shards, 1)
        if count > num_rows:
            raise ValueError(
                f"num_shards={count} exceeds num_rows={num_rows}: every shard needs a row"
            )
        base, extra = divmod(num_rows, count)
        bounds = [i * base + min(i, extra) for i in range(count + 1)]
    return [Shard(i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]


def shard_file_name(
    shard: Shard, num_shards: int, prefix: str = "shard", suffix: str = "parquet"
) -> str:
    """``shard-00003-of-00016.parquet``: the file of one shard in a plan of ``num_shards``."""
    return f"{prefix}-{shard.id:05d}-of-{num_shards:05d}.{suffix}"


def select_shards(shards: Sequence[Shard], rank: int, world_size: int) -> list[Shard]:
    """The shards rank ``rank`` of ``world_size`` runs: every ``world_size``-th, from ``rank``."""
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
    return list(shards[rank::world_size])


def dist_rank_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's ``RANK``/``WORLD_SIZE``; ``(0, 1)`` when unset."""
    env = os.environ if env is None else env
    present = [key for key in ("RANK", "WORLD_SIZE") if key in env]
    if not present:
        return 0, 1
    if len(present) == 1:
        raise ValueError(f"only {present[0]} is set; torchrun sets both RANK and WORLD_SIZE")
    try:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError as exc:
        raise ValueError(
            f"RANK={env['RANK']!r} and WORLD_SIZE={env['WORLD_SIZE']!r} must be integers"
        ) from exc
    select_shards([], rank, world_size)  # validates the pair
    return rank, world_size


def parse_shard_range(text: str, num_shards: int | None = None) -> range:
    """Shard ids from ``"3:7"`` (3, 4, 5, 6: stop excluded, as in Python), ``"3:"``, ``":7"``
    or ``"5"``; open ends and bounds need ``num_shards``."""
    start_text, sep, stop_text = text.strip().partition(":")
    if not (start_text or sep):
        raise ValueError("shard range is empty; expected 'START:STOP'")
    try:
        start = int(start_text) if start_text.strip() else 0
        stop = int(stop_text) if stop_text.strip() else None
    except ValueError as exc:
        raise ValueError(f"shard range {text!r} is not 'START:STOP' with integer ids") from exc
    if not sep:
        stop = start + 1
    if stop is None:
        if num_shards is None:
            raise ValueError(f"shard range {text!r} has an open end; pass num_shards")
        stop = num_shards
    if not 0 <= start < stop:
        raise ValueError(f"shard range {text!r} is empty or negative")
    if num_shards is not None and stop > num_shards:
        raise ValueError(f"shard range {text!r} goes past the last shard id {num_shards - 1}")
    return range(start, stop)
