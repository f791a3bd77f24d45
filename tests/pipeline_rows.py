"""Toy rows and row functions for tests/test_pipeline.py, importable by spawned workers.

Rows carry their own knobs (``sleep``, ``fail``, ``log``, ``marker_dir``) so each function is a
plain top-level function that any worker process can import and run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ichigo_lib.data.pipeline import run_pipeline, worker_info


def make_rows(count: int, start: int = 0, **knobs: Any) -> list[dict[str, Any]]:
    """Rows ``{index, text, **knobs}`` with index ``start + 10 * i`` (not positions)."""
    return [
        {"index": start + 10 * i, "text": f"row {i} " + "ab" * (i % 7), **knobs}
        for i in range(count)
    ]


def text_tokens(text: str) -> list[int]:
    """Deterministic 'speech tokens' of a text: one code per character."""
    return [ord(char) % 513 for char in text]


def _log_call(row: dict[str, Any]) -> None:
    if row.get("log"):
        with open(row["log"], "a") as fh:  # one short O_APPEND write per call: process-safe
            fh.write(f"{row['index']}\n")


def tokens(row: dict[str, Any]) -> dict[str, Any]:
    """``{"tokens": text_tokens(text)}``; sleeps ``row["sleep"]`` and logs the call if asked;
    raises on ``row["fail"]`` indices."""
    _log_call(row)
    time.sleep(row.get("sleep", 0.0))
    if row["index"] in row.get("fail", ()):
        raise ValueError(f"no speech for row {row['index']}")
    return {"tokens": text_tokens(row["text"])}


def flaky_tokens(row: dict[str, Any]) -> dict[str, Any]:
    """Fails the first call for each row (a marker file remembers it), then succeeds."""
    _log_call(row)
    marker = Path(row["marker_dir"]) / f"{row['index']}.failed-once"
    if not marker.exists():
        marker.touch()
        raise ConnectionError("transient")
    return {"tokens": text_tokens(row["text"])}


def conversation(row: dict[str, Any]) -> dict[str, Any]:
    """A multi-turn output: a list of {role, content} structs plus token lists."""
    return {
        "conversations": [
            {"role": "user", "content": row["text"]},
            {"role": "assistant", "content": row["text"].upper()},
        ],
        "tokens": text_tokens(row["text"]),
    }


def load_model(log: str, scale: int) -> dict[str, Any]:
    """An ``init``: logs the worker it ran in and returns the 'model' state."""
    info = worker_info()
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {info.id if info else -1}\n")
    return {"pid": os.getpid(), "scale": scale}


def scaled_tokens(row: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """A ``process(row, state)``: uses the init state and reports which worker ran it."""
    return {"tokens": [t * state["scale"] for t in text_tokens(row["text"])], "pid": state["pid"]}


def ragged(row: dict[str, Any]) -> dict[str, Any]:
    """Returns an extra column for row index 20 only: a bug the pipeline must not hide."""
    extra = {"note": "odd"} if row["index"] == 20 else {}
    return {"tokens": text_tokens(row["text"]), **extra}


def crash_on(row: dict[str, Any]) -> dict[str, Any]:
    """Kills its own worker process on ``row["crash"]``, as an out-of-memory kill would."""
    if row["index"] == row.get("crash"):
        os._exit(3)
    return {"tokens": text_tokens(row["text"])}


SLOW = {"count": 40, "rows_per_shard": 5, "flush_every": 2, "sleep": 0.05}


def run_slow(out_dir: str, log: str, num_workers: int = 2):
    """The run the resume test kills (in a subprocess) and then runs again (in-process)."""
    rows = make_rows(SLOW["count"], sleep=SLOW["sleep"], log=log)
    return run_pipeline(
        rows,
        "pipeline_rows:tokens",
        out_dir,
        num_workers=num_workers,
        rows_per_shard=SLOW["rows_per_shard"],
        flush_every=SLOW["flush_every"],
        progress=False,
    )


def torch_threads(row: dict[str, Any]) -> dict[str, Any]:
    """The intra-op thread count torch uses in this worker (imported here, on first use)."""
    import torch

    return {"threads": torch.get_num_threads()}
