"""Sharded, resumable, multi-process row processing: the engine behind text -> speech tokens.

``run_pipeline(rows, process, out_dir, ...)`` maps every input row through ``process`` (one row
-> one dict of output columns) in worker processes that each take whole shards of a
:func:`~ichigo_lib.data.shards.plan_shards` plan, and leaves in ``out_dir``::

    plan.json, indices.npy                  the shard plan and the input indices it was made for
    shard-00003-of-00016.parquet            a finished shard: ``index`` + the output columns
    failures-00003-of-00016.jsonl           rows that failed every attempt (index, reason)
    rejected-00003-of-00016.jsonl           rows ``validate`` rejected (index, reason)
    parts/shard-00003-of-00016/part-*.parquet   progress of an unfinished shard

Every file appears atomically (written as ``*.tmp-<pid>``, then ``os.replace``). A part records
in its parquet metadata the failed and rejected rows of its chunk, so the parts of a shard
account for every row they cover, and a shard file appears only once all its rows are accounted.
A run killed at any point therefore resumes exactly: finished shards are reused and an
unfinished shard goes on after its last part. :func:`merge_shards` checks that every planned
index appears exactly once (in the output or a log) and returns one ``datasets.Dataset``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import json
import multiprocessing as mp
import numbers
import os
import pickle
import shutil
import signal
import sys
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ichigo_lib.data.shards import (
    Shard,
    dist_rank_from_env,
    parse_shard_range,
    plan_shards,
    select_shards,
    shard_file_name,
)
from ichigo_lib.errors import IchigoError

if TYPE_CHECKING:
    import datasets

PLAN = "plan.json"
INDICES = "indices.npy"
PARTS = "parts"
META_KEY = b"ichigo_pipeline"
PLAN_FORMAT = 1
TEXT_PREVIEW_CHARS = 200
# Read by torch (and BLAS builds) that a worker loads after it sets them: one thread per worker.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
START_METHODS = ("spawn", "forkserver")  # fork is unsafe once torch (or CUDA) is loaded

Target = Callable[..., Any] | str


class PipelineError(IchigoError, RuntimeError):
    """A worker or a shard failed; finished work is kept, so running again resumes."""


class PlanMismatchError(IchigoError, ValueError):
    """``out_dir`` holds outputs of a different shard plan, input or fingerprint."""


class CoverageError(IchigoError, ValueError):
    """Merged shards miss or repeat planned indices."""


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker process this is (e.g. to pick ``cuda:{id % torch.cuda.device_count()}``)."""

    id: int
    num_workers: int


_WORKER: WorkerInfo | None = None


def worker_info() -> WorkerInfo | None:
    """The :class:`WorkerInfo` inside a pipeline worker process; None elsewhere."""
    return _WORKER


@dataclass(frozen=True)
class PipelineReport:
    """What one :func:`run_pipeline` call covered (its selected shards).

    ``rows_reused`` came from earlier runs (finished shards and parts); ``rows_processed`` ran
    now and alone count in ``rows_per_second``. Failed and rejected rows are not in the output.
    """

    rows_in: int
    rows_out: int
    rows_failed: int
    rows_rejected: dict[str, int]
    shards_done: int
    shards_reused: int
    rows_reused: int
    rows_processed: int
    seconds: float
    rows_per_second: float
    failed_indices: list[int]
    rejected_indices: dict[str, list[int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PipelineStatus:
    """Shard ids of a plan by state; ``partial`` maps a shard to the rows its parts account."""

    num_shards: int
    done: list[int]
    partial: dict[int, int]
    missing: list[int]

    @property
    def complete(self) -> bool:
        return len(self.done) == self.num_shards


def check_text(
    row: Mapping[str, Any], *, key: str = "text", max_chars: int | None = None
) -> str | None:
    """A ``validate`` for text rows: rejects a missing, blank or over-long ``row[key]``.

    Bind options with ``functools.partial(check_text, key="prompt", max_chars=2000)``.
    """
    text = row.get(key)
    if not isinstance(text, str):
        return f"no {key} string"
    if not text.strip():
        return f"empty {key}"
    if max_chars is not None and len(text) > max_chars:
        return f"{key} over {max_chars} chars"
    return None


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Input:
    rows: Any  # a sequence of dicts or a datasets.Dataset
    indices: np.ndarray

    def take(self, shard: Shard) -> tuple[list[int], list[dict[str, Any]]]:
        indices = self.indices[shard.start : shard.stop].tolist()
        if not _is_dataset(self.rows):
            return indices, list(self.rows[shard.start : shard.stop])
        batch = self.rows.with_format(None)[shard.start : shard.stop]
        columns = zip(*batch.values(), strict=True)
        return indices, [dict(zip(batch, values, strict=True)) for values in columns]


def _is_dataset(rows: Any) -> bool:
    module = sys.modules.get("datasets")
    return module is not None and isinstance(rows, module.Dataset)


def _row_index(row: Any, position: int) -> int | None:
    if not isinstance(row, Mapping):
        raise TypeError(f"row {position} is a {type(row).__name__}; rows must be dicts")
    value = row.get("index")
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"row {position} has index {value!r}; expected an int")
    return None if value is None else int(value)


def _input_indices(rows: Any) -> np.ndarray:
    """Each row's ``index`` (all rows have one, or none does: then its position); unique."""
    if not (_is_dataset(rows) or isinstance(rows, Sequence)):
        raise TypeError(f"rows must be a list of dicts or a datasets.Dataset, not {type(rows)}")
    if _is_dataset(rows):
        if "index" not in rows.column_names:
            return np.arange(len(rows), dtype=np.int64)
        column = rows.with_format("arrow")["index"]
        if not pa.types.is_integer(column.type) or column.null_count:
            raise TypeError(
                f"the dataset's 'index' column must be non-null ints, not {column.type}"
            )
        indices = np.asarray(column, dtype=np.int64)
    else:
        found = [_row_index(row, position) for position, row in enumerate(rows)]
        absent = [position for position, value in enumerate(found) if value is None]
        if len(absent) == len(found):
            return np.arange(len(found), dtype=np.int64)
        if absent:
            raise ValueError(f"rows {absent[:5]} have no 'index' while others do; give all or none")
        indices = np.asarray(found, dtype=np.int64)
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        first = values[counts > 1][0]
        positions = np.flatnonzero(indices == first).tolist()
        raise ValueError(f"index {first} appears at rows {positions}; indices must be unique")
    return indices


def _resolve(target: Target | None, name: str) -> Callable[..., Any] | None:
    """A callable, importing ``"module:function"`` strings."""
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        if not (module_name and attr):
            raise ValueError(f"{name}={target!r} is not 'module:function'")
        obj = importlib.import_module(module_name)
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"{name}={target!r}: {module_name} has no {attr!r}") from exc
        target = obj
    if target is not None and not callable(target):
        raise TypeError(f"{name} must be a callable or 'module:function', got {target!r}")
    return target


def _check_picklable(name: str, value: Any) -> None:
    module = getattr(value, "__module__", None)
    if module == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        raise ValueError(
            f"{name} {value!r} is defined in an interactive session, which worker processes "
            "cannot import; move it to a module or pass num_workers=0"
        )
    try:
        pickle.dumps(value)
    except Exception as exc:
        raise ValueError(
            f"{name} {value!r} cannot be sent to worker processes ({exc}); pass a top-level "
            "function of an importable module, or 'module:function'"
        ) from exc


# --------------------------------------------------------------------------- files


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(table: pa.Table, path: Path, meta: dict[str, Any]) -> None:
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta)})
    _atomic(path, lambda tmp: pq.write_table(table, tmp))


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        path.unlink(missing_ok=True)
        return
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _meta(path: Path) -> dict[str, Any]:
    metadata = pq.read_schema(path).metadata or {}
    if META_KEY not in metadata:
        raise ValueError(f"{path} has no pipeline metadata; run_pipeline did not write it")
    return json.loads(metadata[META_KEY])


def _concat(tables: list[pa.Table], where: str) -> pa.Table:
    tables = [table.replace_schema_metadata(None) for table in tables]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        exc.add_note(f"while joining the tables of {where}")
        raise


def _shard_path(out_dir: Path, shard: Shard, num_shards: int, prefix: str = "shard") -> Path:
    suffix = "parquet" if prefix == "shard" else "jsonl"
    return out_dir / shard_file_name(shard, num_shards, prefix, suffix)


def _parts_dir(out_dir: Path, shard: Shard, num_shards: int) -> Path:
    return out_dir / PARTS / shard_file_name(shard, num_shards).removesuffix(".parquet")


def _indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def _plan_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    notes = []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key == "shards":
            notes.append(f"{len(old.get(key) or [])} shards planned, now {len(value)}")
        elif key == "indices_sha256":
            notes.append("the input indices differ")
        else:
            notes.append(f"{key} was {old.get(key)!r}, now {value!r}")
    return notes


def _plan(shards: list[Shard], indices: np.ndarray, fingerprint: str) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "num_rows": len(indices),
        "shards": [[shard.start, shard.stop] for shard in shards],
        "indices_sha256": _indices_sha256(indices),
        "fingerprint": fingerprint,
    }


def _is_stale(out_dir: Path, plan: dict[str, Any]) -> bool:
    """``out_dir`` holds the outputs of another plan or fingerprint."""
    path = out_dir / PLAN
    return path.exists() and bool(_plan_differences(json.loads(path.read_text()), plan))


def _save_or_check_plan(out_dir: Path, plan: dict[str, Any], indices: np.ndarray) -> None:
    path = out_dir / PLAN
    if path.exists():
        differences = _plan_differences(json.loads(path.read_text()), plan)
        if differences:
            raise PlanMismatchError(
                f"{path} belongs to another run ({'; '.join(differences)}); use another "
                "out_dir, or overwrite=True to delete its outputs"
            )
        return
    out_dir.mkdir(parents=True, exist_ok=True)

    def save_indices(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, indices)

    _atomic(out_dir / INDICES, save_indices)
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(plan)))


def _load_plan(out_dir: Path) -> list[Shard]:
    path = out_dir / PLAN
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {out_dir} holds no run_pipeline output")
    bounds = json.loads(path.read_text())["shards"]
    return [Shard(i, start, stop) for i, (start, stop) in enumerate(bounds)]


def _wipe(out_dir: Path) -> None:
    """Delete what run_pipeline writes in ``out_dir`` (and nothing else)."""
    shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    patterns = (f"{PLAN}*", f"{INDICES}*", "shard-*.parquet*", "failures-*.jsonl*")
    for pattern in (*patterns, "rejected-*.jsonl*"):
        for path in out_dir.glob(pattern):
            path.unlink()


# --------------------------------------------------------------------------- one shard


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, sent once to each worker as a pickle."""

    out_dir: Path
    num_shards: int
    process: Callable[..., Any]
    init: Callable[..., Any] | None
    init_kwargs: dict[str, Any]
    validate: Callable[[Any], str | None] | None
    retries: int
    flush_every: int
    text_key: str | None


@dataclass(frozen=True)
class _ShardResult:
    shard: int
    rows_in: int
    rows_out: int
    rows_reused: int
    failed: list[dict[str, Any]]
    rejected: list[dict[str, Any]]


def _record(job: _Job, index: int, row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "reason": reason}
    text = row.get(job.text_key) if job.text_key else None
    if isinstance(text, str):
        record[job.text_key] = text[:TEXT_PREVIEW_CHARS]
    return record


def _output_row(index: int, output: Any) -> dict[str, Any]:
    if not isinstance(output, Mapping):
        raise TypeError(f"process returned a {type(output).__name__}; expected a dict of columns")
    if "index" in output:
        raise ValueError("process returned an 'index' column; the pipeline sets it")
    return {"index": index, **output}


def _run_row(job: _Job, index: int, row: Mapping[str, Any], state: Any) -> tuple[str, Any]:
    """``("ok", output row)``, ``("failed", record)`` or ``("rejected", record)``."""
    if job.validate is not None:
        try:
            reason = job.validate(row)
        except Exception as exc:
            exc.add_note(f"while validating row index {index}")
            raise
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"validate returned {reason!r} for row index {index}, not a str")
            return "rejected", _record(job, index, row, reason)
    args = (row,) if job.init is None else (row, state)
    for _ in range(job.retries):
        try:
            return "ok", _output_row(index, job.process(*args))
        except Exception as exc:
            error = exc
    record = _record(job, index, row, f"{type(error).__name__}: {error}")
    return "failed", {**record, "attempts": job.retries}


def _output_table(outputs: list[dict[str, Any]]) -> pa.Table:
    if not outputs:
        return pa.table({"index": pa.array([], pa.int64())})
    keys = outputs[0].keys()
    for row in outputs:
        if row.keys() != keys:
            raise ValueError(
                f"process returned columns {sorted(row.keys() - {'index'})} for row index "
                f"{row['index']} but {sorted(keys - {'index'})} for row index "
                f"{outputs[0]['index']}; they must match"
            )
    return pa.Table.from_pylist(outputs)


def _write_part(path: Path, chunk: dict[str, list[dict[str, Any]]]) -> None:
    try:
        table = _output_table(chunk["ok"])
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        exc.add_note(f"while writing {path}")
        raise
    _write_parquet(table, path, {"failed": chunk["failed"], "rejected": chunk["rejected"]})


def _collect_parts(parts: Path) -> tuple[list[pa.Table], list[dict], list[dict], set[int]]:
    """Outputs, failures, rejections and all indices of a shard's parts, each index once (a
    worker of a killed run may have written a chunk again before it died with its parent)."""
    tables, failed, rejected, seen = [], [], [], set()
    for path in sorted(parts.glob("part-*.parquet")):
        table, meta = pq.read_table(path), _meta(path)
        indices = table["index"].to_pylist()
        tables.append(table.filter(pa.array([i not in seen for i in indices], pa.bool_())))
        seen.update(indices)
        for records, kept in ((meta["failed"], failed), (meta["rejected"], rejected)):
            kept += [record for record in records if record["index"] not in seen]
            seen.update(record["index"] for record in records)
    return tables, failed, rejected, seen


def _run_shard(
    job: _Job,
    shard: Shard,
    indices: list[int],
    rows: list[dict[str, Any]],
    state: Any,
    tick: Callable[[int], None],
) -> _ShardResult:
    """Process the rows no part accounts for yet, a part every ``flush_every`` rows, then merge
    the parts into the shard file."""
    parts = _parts_dir(job.out_dir, shard, job.num_shards)
    parts.mkdir(parents=True, exist_ok=True)
    done = _collect_parts(parts)[3]
    tick(len(done))
    chunk: dict[str, list[dict[str, Any]]] = {"ok": [], "failed": [], "rejected": []}
    first = None
    for position, (index, row) in enumerate(zip(indices, rows, strict=True)):
        if index in done:
            continue
        first = position if first is None else first
        kind, value = _run_row(job, index, row, state)
        chunk[kind].append(value)
        tick(1)
        if sum(map(len, chunk.values())) >= job.flush_every:
            _write_part(parts / f"part-{first:09d}.parquet", chunk)
            chunk, first = {"ok": [], "failed": [], "rejected": []}, None
    if first is not None:
        _write_part(parts / f"part-{first:09d}.parquet", chunk)
    return _finish_shard(job, shard, indices, rows_reused=len(done))


def _finish_shard(job: _Job, shard: Shard, indices: list[int], rows_reused: int) -> _ShardResult:
    parts = _parts_dir(job.out_dir, shard, job.num_shards)
    tables, failed, rejected, seen = _collect_parts(parts)
    if seen != set(indices):
        missing = sorted(set(indices) - seen)
        raise PipelineError(
            f"{parts} accounts for {len(seen)} of the {len(indices)} rows of shard {shard.id}; "
            f"missing indices {missing[:10]}"
        )
    _write_jsonl(_shard_path(job.out_dir, shard, job.num_shards, "failures"), failed)
    _write_jsonl(_shard_path(job.out_dir, shard, job.num_shards, "rejected"), rejected)
    table = _concat(tables, str(parts))
    meta = {"shard": shard.id, "rows_in": len(indices), "failed": failed, "rejected": rejected}
    _write_parquet(table, _shard_path(job.out_dir, shard, job.num_shards), meta)
    shutil.rmtree(parts)
    for stale in job.out_dir.glob(f"*-{shard.id:05d}-of-{job.num_shards:05d}.*.tmp-*"):
        stale.unlink(missing_ok=True)  # left by a run killed mid-write
    return _ShardResult(shard.id, len(indices), table.num_rows, rows_reused, failed, rejected)


def _finished_shard(path: Path) -> _ShardResult:
    meta, rows_out = _meta(path), pq.read_metadata(path).num_rows
    rows_in = meta["rows_in"]
    return _ShardResult(meta["shard"], rows_in, rows_out, rows_in, meta["failed"], meta["rejected"])


# --------------------------------------------------------------------------- workers


def _die_with_parent() -> None:
    """On Linux the kernel kills this worker as soon as its parent dies (freeing its GPU for the
    next run). Elsewhere the worker stops at its next report: sending to a dead parent fails."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():  # died before prctl
        os._exit(1)


def _limit_torch_threads() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _worker_main(info: WorkerInfo, payload: bytes, conn: Connection) -> None:
    """Worker process: init once, then run the shards the parent sends until None.

    It tells the parent over ``conn`` (synchronous, unlike a queue's feeder thread): "ready"
    after init, "rows" as rows finish, "done" with each shard's result, or "error"."""
    global _WORKER
    _die_with_parent()
    _WORKER = info
    for name in THREAD_ENV_VARS:
        os.environ[name] = "1"

    def tick(rows_done: int) -> None:
        if rows_done:
            conn.send(("rows", rows_done))

    try:
        job: _Job = pickle.loads(payload)
        state = job.init(**job.init_kwargs) if job.init is not None else None
        _limit_torch_threads()
        conn.send(("ready", None))
        while (task := conn.recv()) is not None:
            conn.send(("done", _run_shard(job, *task, state, tick)))
    except BaseException:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            conn.send(("error", traceback.format_exc()))


def _run_in_workers(
    job: _Job, todo: list[Shard], data: _Input, num_workers: int, start_method: str, bar: tqdm
) -> list[_ShardResult]:
    """Send one shard at a time to each idle worker process; stop all at the first error."""
    ctx = mp.get_context(start_method)
    payload, count = pickle.dumps(job), min(num_workers, len(todo))
    pipes = [ctx.Pipe() for _ in range(count)]
    conns = [parent_end for parent_end, _ in pipes]
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(WorkerInfo(i, count), payload, child_end),
            name=f"pipeline-worker-{i}",
        )
        for i, (_, child_end) in enumerate(pipes)
    ]
    pending, assigned, results, active = deque(todo), {}, [], list(conns)
    try:
        for worker, (_, child_end) in zip(workers, pipes, strict=True):
            worker.start()
            child_end.close()  # the worker's death then reads as EOF here
        while len(results) < len(todo):
            for conn in wait(active):
                i = conns.index(conn)
                shard = assigned.get(i)
                where = f"worker {i} (pid {workers[i].pid}) " + (
                    f"on shard {shard.id} (rows {shard.start}:{shard.stop})" if shard else "in init"
                )
                try:
                    kind, value = conn.recv()
                except EOFError:
                    workers[i].join(5)
                    raise PipelineError(
                        f"{where} died (exit code {workers[i].exitcode}); finished work is "
                        "kept, run again to resume"
                    ) from None
                if kind == "rows":
                    bar.update(value)
                elif kind == "error":
                    raise PipelineError(f"{where} failed:\n{value}")
                else:  # "ready" or "done": the worker is idle
                    if kind == "done":
                        results.append(value)
                    assigned[i] = shard = pending.popleft() if pending else None
                    if shard is None:
                        active.remove(conn)
                    conn.send(shard and (shard, *data.take(shard)))
        for conn in active:  # workers still in init when the last shard finished
            conn.send(None)
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for conn in conns:
            conn.close()
    return results


def _run_inline(job: _Job, todo: list[Shard], data: _Input, bar: tqdm) -> list[_ShardResult]:
    state = job.init(**job.init_kwargs) if job.init is not None and todo else None
    return [_run_shard(job, shard, *data.take(shard), state, bar.update) for shard in todo]


# --------------------------------------------------------------------------- public API


def _selected_shards(
    shards: list[Shard],
    shard_range: str | range | None,
    rank: int | None,
    world_size: int | None,
) -> list[Shard]:
    if shard_range is not None:
        ids = (
            parse_shard_range(shard_range, len(shards))
            if isinstance(shard_range, str)
            else shard_range
        )
        if not set(ids) <= set(range(len(shards))):
            raise ValueError(f"shard_range {shard_range!r} is outside shards 0..{len(shards) - 1}")
        shards = [shards[i] for i in ids]
    if rank is None and world_size is None:
        rank, world_size = dist_rank_from_env()
    elif rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither (then RANK/WORLD_SIZE)")
    return select_shards(shards, rank, world_size)


def _check_options(**values: int) -> None:
    for name, value in values.items():
        least = 0 if name == "num_workers" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _report(results: list[_ShardResult], shards_reused: int, seconds: float) -> PipelineReport:
    results = sorted(results, key=lambda result: result.shard)
    rejected: dict[str, list[int]] = defaultdict(list)
    for result in results:
        for record in result.rejected:
            rejected[record["reason"]].append(record["index"])
    rows_in = sum(result.rows_in for result in results)
    rows_reused = sum(result.rows_reused for result in results)
    failed = [record["index"] for result in results for record in result.failed]
    return PipelineReport(
        rows_in=rows_in,
        rows_out=sum(result.rows_out for result in results),
        rows_failed=len(failed),
        rows_rejected={reason: len(indices) for reason, indices in rejected.items()},
        shards_done=len(results),
        shards_reused=shards_reused,
        rows_reused=rows_reused,
        rows_processed=rows_in - rows_reused,
        seconds=seconds,
        rows_per_second=(rows_in - rows_reused) / seconds if seconds > 0 else 0.0,
        failed_indices=failed,
        rejected_indices=dict(rejected),
    )


def run_pipeline(
    rows: Sequence[Mapping[str, Any]] | datasets.Dataset,
    process: Target,
    out_dir: str | os.PathLike[str],
    *,
    num_workers: int = 1,
    num_shards: int | None = None,
    rows_per_shard: int | None = None,
    init: Target | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    validate: Target | None = None,
    retries: int = 3,
    flush_every: int = 50,
    shard_range: str | range | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    fingerprint: str = "",
    overwrite: bool = False,
    replace_stale: bool = False,
    text_key: str | None = "text",
    progress: bool = True,
    start_method: str = "spawn",
) -> PipelineReport:
    """Map every row through ``process`` into parquet shards in ``out_dir``; resumable.

    ``rows`` are dicts (or a ``datasets.Dataset``) with a unique int ``index`` each, or none (the
    position is the index). ``process(row)`` -> dict of output columns, or ``process(row, state)``
    with ``state = init(**init_kwargs)`` run once per worker; both are top-level functions or
    ``"module:function"`` strings. ``validate(row)`` -> a rejection reason or None runs first.
    A row is tried ``retries`` times; one that still fails is logged, not written. Progress is
    saved every ``flush_every`` rows, so a killed run loses at most that many per worker.

    ``num_workers`` processes (0: in this process) take whole shards of the plan; this call runs
    the shards of ``shard_range`` (``"3:7"``), split round-robin over ``rank``/``world_size``
    (default: torchrun's ``RANK``/``WORLD_SIZE``). Finished shards are reused; ``out_dir`` made for
    another plan or ``fingerprint`` raises :class:`PlanMismatchError` unless ``overwrite`` (always
    start afresh) or ``replace_stale`` (start afresh only then: the owner of ``out_dir`` whose
    inputs changed, e.g. a notebook after a new quantizer; never jobs sharing a directory).
    ``text_key`` names the input column quoted in the failure and rejection logs.
    """
    started = time.perf_counter()
    _check_options(num_workers=num_workers, retries=retries, flush_every=flush_every)
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
    data = _Input(rows, _input_indices(rows))
    shards = plan_shards(len(data.indices), num_shards, rows_per_shard)
    mine = _selected_shards(shards, shard_range, rank, world_size)
    job = _Job(
        out_dir=Path(out_dir),
        num_shards=len(shards),
        process=_resolve(process, "process"),
        init=_resolve(init, "init"),
        init_kwargs=dict(init_kwargs or {}),
        validate=_resolve(validate, "validate"),
        retries=retries,
        flush_every=flush_every,
        text_key=text_key,
    )
    if num_workers:
        for name in ("process", "init", "validate", "init_kwargs"):
            _check_picklable(name, getattr(job, name))
    plan = _plan(shards, data.indices, fingerprint)
    if overwrite or (replace_stale and _is_stale(job.out_dir, plan)):
        _wipe(job.out_dir)
    _save_or_check_plan(job.out_dir, plan, data.indices)
    done = [s for s in mine if _shard_path(job.out_dir, s, len(shards)).exists()]
    todo = [s for s in mine if s not in done]
    for shard in done:  # a run killed between writing a shard and deleting its parts
        shutil.rmtree(_parts_dir(job.out_dir, shard, len(shards)), ignore_errors=True)
    reused = [_finished_shard(_shard_path(job.out_dir, s, len(shards))) for s in done]
    with tqdm(
        total=sum(map(len, mine)),
        initial=sum(map(len, done)),
        desc="pipeline",
        unit="row",
        mininterval=1.0,
        disable=not progress,
    ) as bar:
        if num_workers and todo:
            results = _run_in_workers(job, todo, data, num_workers, start_method, bar)
        else:
            results = _run_inline(job, todo, data, bar)
    return _report(reused + results, len(done), time.perf_counter() - started)


def pipeline_status(out_dir: str | os.PathLike[str]) -> PipelineStatus:
    """Which shards of ``out_dir``'s plan are done, partial (rows accounted) or not started."""
    out_dir = Path(out_dir)
    shards = _load_plan(out_dir)
    done, partial, missing = [], {}, []
    for shard in shards:
        parts = _parts_dir(out_dir, shard, len(shards))
        if _shard_path(out_dir, shard, len(shards)).exists():
            done.append(shard.id)
        elif parts.is_dir() and any(parts.glob("part-*.parquet")):
            partial[shard.id] = len(_collect_parts(parts)[3])
        else:
            missing.append(shard.id)
    return PipelineStatus(len(shards), done, partial, missing)


def _coverage_problems(name: str, found: np.ndarray, expected: np.ndarray) -> list[str]:
    values, counts = np.unique(found, return_counts=True)
    problems = []
    for label, bad in (
        ("repeats indices", values[counts > 1]),
        ("misses indices", np.setdiff1d(expected, values)),
        ("holds unplanned indices", np.setdiff1d(values, expected)),
    ):
        if bad.size:
            problems.append(f"{name} {label} {bad[:10].tolist()} ({bad.size} in all)")
    return problems


def merge_shards(out_dir: str | os.PathLike[str]) -> datasets.Dataset:
    """All shards of ``out_dir`` as one ``datasets.Dataset`` sorted by index (in memory).

    Raises :class:`CoverageError` naming shards and indices unless every planned index appears
    exactly once: in the output, or in the failure or rejection logs (those rows are left out).
    """
    import datasets

    out_dir = Path(out_dir)
    shards = _load_plan(out_dir)
    indices = np.load(out_dir / INDICES)
    paths = [_shard_path(out_dir, shard, len(shards)) for shard in shards]
    absent = [shard for shard, path in zip(shards, paths, strict=True) if not path.exists()]
    if absent:
        lost = np.concatenate([indices[s.start : s.stop] for s in absent])
        raise CoverageError(
            f"{out_dir}: shards {[s.id for s in absent]} of {len(shards)} are not finished; "
            f"their indices {lost[:10].tolist()} ({lost.size} in all) are missing"
        )
    tables, problems = [], []
    for shard, path in zip(shards, paths, strict=True):
        table, meta = pq.read_table(path), _meta(path)
        logged = [record["index"] for record in meta["failed"] + meta["rejected"]]
        found = np.concatenate([table["index"].to_numpy(), np.asarray(logged, dtype=np.int64)])
        problems += _coverage_problems(path.name, found, indices[shard.start : shard.stop])
        tables.append(table)
    if problems:
        raise CoverageError(f"{out_dir}: " + "; ".join(problems))
    return datasets.Dataset(_concat(tables, str(out_dir)).sort_by("index"))
