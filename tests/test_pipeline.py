"""The sharded pipeline: shard plans, exactly-once output with worker processes, retries and
failure logs, rejections, resume after a real SIGKILL, ranks and shard ranges, merge checks."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pipeline_rows
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_rows import SLOW, make_rows, text_tokens

from ichigo_lib.data.pipeline import (
    CoverageError,
    PipelineError,
    PlanMismatchError,
    check_text,
    merge_shards,
    pipeline_status,
    run_pipeline,
)
from ichigo_lib.data.shards import (
    Shard,
    dist_rank_from_env,
    parse_shard_range,
    plan_shards,
    select_shards,
    shard_file_name,
)

TESTS = Path(__file__).resolve().parent
run = functools.partial(run_pipeline, progress=False)


def calls(log: Path) -> list[int]:
    """Row indices ``process`` was called with, one line per call."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- shard plans


@pytest.mark.parametrize(
    ("num_rows", "num_shards", "rows_per_shard"),
    [(1, 1, None), (10, 3, None), (10, 10, None), (1000, 16, None)]
    + [(10, None, 3), (10, None, 10), (10, None, 100), (7, None, 1)],
)
def test_plan_covers_every_row_once_in_contiguous_shards(num_rows, num_shards, rows_per_shard):
    shards = plan_shards(num_rows, num_shards, rows_per_shard)
    sizes = [len(shard) for shard in shards]
    assert [shard.id for shard in shards] == list(range(len(shards)))
    assert shards[0].start == 0 and shards[-1].stop == num_rows and min(sizes) >= 1
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:], strict=False))
    if num_shards:
        assert len(shards) == num_shards and max(sizes) - min(sizes) <= 1
    else:
        assert set(sizes[:-1]) <= {rows_per_shard} and sizes[-1] <= rows_per_shard


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0, 1, None), ValueError, "num_rows must be >= 1"),
        ((10, None, None), ValueError, "exactly one of num_shards and rows_per_shard"),
        ((10, 2, 5), ValueError, "exactly one of num_shards and rows_per_shard"),
        ((10, 11, None), ValueError, "num_shards=11 exceeds num_rows=10"),
        ((10, 0, None), ValueError, "num_shards must be >= 1"),
        ((10, None, 0), ValueError, "rows_per_shard must be >= 1"),
        ((10.0, 2, None), TypeError, "num_rows must be an int"),
        ((10, True, None), TypeError, "num_shards must be an int"),
    ],
)
def test_plan_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        plan_shards(*args)


def test_shard_files_are_named_by_id_and_plan_size():
    assert shard_file_name(Shard(3, 30, 40), 16) == "shard-00003-of-00016.parquet"


def test_round_robin_gives_each_shard_to_exactly_one_rank():
    shards = plan_shards(100, num_shards=7)
    picked = [select_shards(shards, rank, 3) for rank in range(3)]
    assert [shard.id for shard in picked[1]] == [1, 4]
    assert sorted(shard.id for group in picked for shard in group) == list(range(7))
    with pytest.raises(ValueError, match="rank 3 is out of range for world_size 3"):
        select_shards(shards, 3, 3)


def test_rank_and_world_size_come_from_torchrun_env():
    assert dist_rank_from_env({}) == (0, 1)
    assert dist_rank_from_env({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    with pytest.raises(ValueError, match="only RANK is set"):
        dist_rank_from_env({"RANK": "1"})
    with pytest.raises(ValueError, match="must be integers"):
        dist_rank_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="rank 2 is out of range for world_size 2"):
        dist_rank_from_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize(
    ("text", "num_shards", "expected"),
    [("3:7", None, range(3, 7)), (" 5 ", None, range(5, 6)), ("3:", 10, range(3, 10))]
    + [(":4", None, range(4)), ("0:10", 10, range(10))],
)
def test_shard_ranges_parse_like_python_slices(text, num_shards, expected):
    assert parse_shard_range(text, num_shards) == expected


@pytest.mark.parametrize(
    ("text", "num_shards", "match"),
    [("", None, "empty"), ("a:b", None, "integer ids"), ("7:3", None, "empty or negative")]
    + [("-1:2", None, "empty or negative"), ("3:", None, "open end; pass num_shards")]
    + [("3:12", 10, "past the last shard id 9")],
)
def test_bad_shard_ranges_are_refused(text, num_shards, match):
    with pytest.raises(ValueError, match=match):
        parse_shard_range(text, num_shards)


# --------------------------------------------------------------------------- running


def test_two_workers_write_every_row_exactly_once(tmp_path):
    rows, out, log = make_rows(23), tmp_path / "out", tmp_path / "init.log"
    report = run(
        rows,
        pipeline_rows.scaled_tokens,
        out,
        num_workers=2,
        num_shards=4,
        flush_every=3,
        init=pipeline_rows.load_model,
        init_kwargs={"log": str(log), "scale": 2},
    )
    merged = merge_shards(out)
    assert list(merged["index"]) == [row["index"] for row in rows]
    assert list(merged["tokens"]) == [[2 * t for t in text_tokens(row["text"])] for row in rows]
    inits = [line.split() for line in log.read_text().splitlines()]
    assert sorted(worker for _, worker in inits) == ["0", "1"]  # init once in each worker
    worker_pids = {int(pid) for pid, _ in inits}
    assert set(merged["pid"]) <= worker_pids and os.getpid() not in worker_pids
    assert (report.rows_in, report.rows_out, report.rows_failed, report.rows_rejected) == (
        23,
        23,
        0,
        {},
    )
    assert (report.shards_done, report.shards_reused, report.rows_processed) == (4, 0, 23)
    assert report.to_dict()["rows_per_second"] > 0
    names = sorted(files(out))
    assert names == ["indices.npy", "plan.json"] + [
        f"shard-0000{i}-of-00004.parquet" for i in range(4)
    ]


def test_workers_run_torch_on_one_thread(tmp_path):
    assert os.cpu_count() > 1  # else the check below proves nothing
    run(make_rows(2), pipeline_rows.torch_threads, tmp_path, num_workers=1, num_shards=1)
    assert list(merge_shards(tmp_path)["threads"]) == [1, 1]


def test_a_row_failing_every_attempt_is_logged_and_left_out(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls.log"
    rows = make_rows(12, fail=[10, 70], log=str(log))
    report = run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=3, retries=3)
    assert report.failed_indices == [10, 70] and report.rows_failed == 2 and report.rows_out == 10
    counted = calls(log)
    assert counted.count(10) == counted.count(70) == 3 and counted.count(0) == 1
    failures = [json.loads(line) for line in (out / "failures-00000-of-00003.jsonl").open()]
    assert failures == [
        {"index": 10, "reason": "ValueError: no speech for row 10", "text": rows[1]["text"]}
        | {"attempts": 3}
    ]
    assert [json.loads(line)["index"] for line in (out / "failures-00001-of-00003.jsonl").open()]
    assert not (out / "failures-00002-of-00003.jsonl").exists()
    assert 10 not in list(merge_shards(out)["index"])  # left out, yet accounted: merge passes


def test_a_transient_failure_is_retried_in_the_worker(tmp_path):
    markers = [tmp_path / "m1", tmp_path / "m2"]
    for marker in markers:
        marker.mkdir()
    flaky = functools.partial(
        run, process="pipeline_rows:flaky_tokens", num_workers=2, num_shards=2
    )
    once = flaky(make_rows(6, marker_dir=str(markers[0])), out_dir=tmp_path / "once", retries=1)
    assert once.rows_failed == 6 and once.rows_out == 0
    twice = flaky(make_rows(6, marker_dir=str(markers[1])), out_dir=tmp_path / "twice", retries=2)
    assert twice.rows_failed == 0 and twice.rows_out == 6
    assert not list((tmp_path / "twice").glob("failures-*"))
    assert len(merge_shards(tmp_path / "once")) == 0


def test_validate_rejections_are_counted_logged_and_accounted(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls.log"
    rows = make_rows(8, log=str(log))
    rows[1]["text"], rows[4]["text"], rows[6]["text"] = "", "   ", "x" * 31
    validate = functools.partial(check_text, max_chars=30)
    report = run(rows, pipeline_rows.tokens, out, num_workers=2, num_shards=2, validate=validate)
    assert report.rows_rejected == {"empty text": 2, "text over 30 chars": 1}
    assert report.rejected_indices == {"empty text": [10, 40], "text over 30 chars": [60]}
    assert report.rows_out == 5 and sorted(calls(log)) == [0, 20, 30, 50, 70]
    logged = [json.loads(line) for path in sorted(out.glob("rejected-*")) for line in path.open()]
    assert [(r["index"], r["reason"]) for r in logged] == [
        (10, "empty text"),
        (40, "empty text"),
        (60, "text over 30 chars"),
    ]
    assert list(merge_shards(out)["index"]) == [0, 20, 30, 50, 70]


def test_a_run_killed_with_sigkill_resumes_exactly_once(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls.log"
    code = f"import pipeline_rows; pipeline_rows.run_slow({str(out)!r}, {str(log)!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 60
    while not (list(out.glob("shard-*.parquet")) and list(out.glob("parts/*/part-*"))):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no shard finished within 60 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = files(out)
    time.sleep(0.5)
    assert files(out) == before  # its workers died with it: nothing writes any more
    status = pipeline_status(out)
    assert status.done and status.partial and not status.complete
    calls_before = len(calls(log))

    report = pipeline_rows.run_slow(str(out), str(log))

    size = SLOW["rows_per_shard"]
    assert report.shards_reused == len(status.done)
    assert report.rows_reused == size * len(status.done) + sum(status.partial.values())
    assert report.rows_processed == SLOW["count"] - report.rows_reused > 0
    redone = calls(log)[calls_before:]
    assert len(redone) == report.rows_processed
    finished = {10 * i for shard in status.done for i in range(shard * size, (shard + 1) * size)}
    assert not finished & set(redone)
    merged = merge_shards(out)  # raises on any missing or repeated index
    assert list(merged["index"]) == [10 * i for i in range(SLOW["count"])]
    assert pipeline_status(out).complete and not list((out / "parts").iterdir())


def test_a_dead_worker_stops_the_run_and_the_next_run_resumes_mid_shard(tmp_path):
    out = tmp_path / "out"
    rows = make_rows(10, crash=80)  # row 8: the 4th row of shard 1
    with pytest.raises(PipelineError, match=r"on shard 1 \(rows 5:10\) died \(exit code 3\)"):
        run(rows, pipeline_rows.crash_on, out, num_workers=1, num_shards=2, flush_every=2)
    assert pipeline_status(out).partial == {1: 2}
    report = run(make_rows(10), pipeline_rows.crash_on, out, num_workers=1, num_shards=2)
    assert (report.shards_reused, report.rows_reused, report.rows_processed) == (1, 7, 3)
    assert len(merge_shards(out)) == 10


def test_a_failing_init_stops_the_run_with_its_traceback(tmp_path):
    with pytest.raises(PipelineError, match=r"(?s)worker 0 \(pid \d+\) in init failed:.*TypeError"):
        run(
            make_rows(4),
            pipeline_rows.scaled_tokens,
            tmp_path,
            num_workers=1,
            num_shards=2,
            init=pipeline_rows.load_model,
        )
    assert pipeline_status(tmp_path).missing == [0, 1]


def test_ranks_split_the_plan_and_merge_needs_them_all(tmp_path, monkeypatch):
    rows, out = make_rows(12), tmp_path / "out"
    first = run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=5, rank=0, world_size=2)
    assert pipeline_status(out).done == [0, 2, 4] and first.rows_in == 3 + 2 + 2
    with pytest.raises(CoverageError, match=r"shards \[1, 3\] of 5 are not finished"):
        merge_shards(out)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=5)
    assert (second.shards_done, second.shards_reused, second.rows_in) == (2, 0, 3 + 2)
    assert list(merge_shards(out)["index"]) == [row["index"] for row in rows]


def test_shard_ranges_run_only_their_shards_and_reuse_finished_ones(tmp_path):
    rows, out = make_rows(8), tmp_path / "out"
    for _ in range(2):
        report = run(
            rows, pipeline_rows.tokens, out, num_workers=0, num_shards=4, shard_range="1:3"
        )
    assert (report.shards_done, report.shards_reused, report.rows_processed) == (2, 2, 0)
    status = pipeline_status(out)
    assert (status.done, status.partial, status.missing) == ([1, 2], {}, [0, 3])
    run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=4, shard_range=range(0, 4, 3))
    assert pipeline_status(out).complete


def test_merge_names_missing_and_repeated_indices(tmp_path):
    rows, out = make_rows(6), tmp_path / "out"
    run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=3)
    shard = out / "shard-00001-of-00003.parquet"
    table = pq.read_table(shard)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), shard)  # keeps the metadata
    with pytest.raises(CoverageError, match=r"shard-00001-of-00003.parquet repeats indices \[20\]"):
        merge_shards(out)
    pq.write_table(table.slice(1), shard)
    with pytest.raises(CoverageError, match=r"shard-00001-of-00003.parquet misses indices \[20\]"):
        merge_shards(out)
    shard.unlink()
    with pytest.raises(CoverageError, match=r"shards \[1\] of 3 .* indices \[20, 30\]"):
        merge_shards(out)


def test_outputs_of_another_plan_are_never_mixed(tmp_path):
    rows, out = make_rows(12), tmp_path / "out"
    run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=2)
    with pytest.raises(PlanMismatchError, match="2 shards planned, now 3.*overwrite=True"):
        run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=3)
    with pytest.raises(PlanMismatchError, match="fingerprint was '', now 'tts-v2'"):
        run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=2, fingerprint="tts-v2")
    with pytest.raises(PlanMismatchError, match="the input indices differ"):
        run(make_rows(12, start=1), pipeline_rows.tokens, out, num_workers=0, num_shards=2)
    report = run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=3, overwrite=True)
    assert (report.shards_reused, report.rows_processed) == (0, 12)
    assert len(list(out.glob("shard-*"))) == 3 and len(merge_shards(out)) == 12


def test_replace_stale_starts_afresh_only_when_the_plan_changed(tmp_path):
    rows, out = make_rows(12), tmp_path / "out"
    run(rows, pipeline_rows.tokens, out, num_workers=0, num_shards=2, fingerprint="q1")
    again = run(
        rows,
        pipeline_rows.tokens,
        out,
        num_workers=0,
        num_shards=2,
        fingerprint="q1",
        replace_stale=True,
    )
    assert (again.shards_reused, again.rows_processed) == (2, 0)  # same plan: resumed
    fresh = run(
        rows,
        pipeline_rows.tokens,
        out,
        num_workers=0,
        num_shards=2,
        fingerprint="q2",
        replace_stale=True,
    )
    assert (fresh.shards_reused, fresh.rows_processed) == (0, 12)  # new quantizer: redone
    assert len(merge_shards(out)) == 12


def test_datasets_input_and_nested_output_columns(tmp_path):
    table = datasets.Dataset.from_list(make_rows(9)).shuffle(seed=0).select(range(7))
    run(table, pipeline_rows.conversation, tmp_path / "indexed", num_workers=0, num_shards=2)
    merged = merge_shards(tmp_path / "indexed")
    assert list(merged["index"]) == sorted(table["index"])
    assert merged.features["tokens"] == datasets.List(datasets.Value("int64"))
    role = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    assert merged.features["conversations"] == datasets.List(role)
    by_index = {row["index"]: row["text"] for row in table}
    for row in merged:
        text = by_index[row["index"]]
        assert row["conversations"][1] == {"role": "assistant", "content": text.upper()}
        assert row["tokens"] == text_tokens(text)
    positional = table.remove_columns("index")
    run(
        positional, pipeline_rows.conversation, tmp_path / "positional", num_workers=0, num_shards=3
    )
    merged = merge_shards(tmp_path / "positional")
    assert list(merged["tokens"]) == [text_tokens(text) for text in positional["text"]]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"index": 0}, ValueError, r"index 0 appears at rows \[0, 2\]"),
        ({"index": None}, ValueError, r"rows \[2\] have no 'index'"),
        ({"index": "2"}, TypeError, "row 2 has index '2'; expected an int"),
    ],
)
def test_bad_row_indices_are_refused(tmp_path, change, error, match):
    rows = make_rows(3)
    rows[2] = {key: value for key, value in {**rows[2], **change}.items() if value is not None}
    with pytest.raises(error, match=match):
        run(rows, pipeline_rows.tokens, tmp_path, num_workers=0, num_shards=1)


def test_rows_must_be_a_sequence_or_a_dataset(tmp_path):
    with pytest.raises(TypeError, match="rows must be a list of dicts or a datasets.Dataset"):
        run(iter(make_rows(3)), pipeline_rows.tokens, tmp_path, num_workers=0, num_shards=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"process": lambda row: row}, "cannot be sent to worker processes"),
        ({"process": "pipeline_rows:nope"}, "pipeline_rows:nope.*has no 'nope'"),
        ({"process": "pipeline_rows"}, "is not 'module:function'"),
        ({"start_method": "fork"}, "start_method must be one of"),
        ({"flush_every": 0}, "flush_every must be an int >= 1"),
        ({"num_workers": -1}, "num_workers must be an int >= 0"),
        ({"shard_range": "5:7"}, "past the last shard id 1"),
        ({"rank": 1}, "give both rank and world_size"),
    ],
)
def test_bad_arguments_fail_before_anything_is_written(tmp_path, kwargs, match):
    args = {"process": pipeline_rows.tokens, "num_workers": 1, "num_shards": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        run(make_rows(4), out_dir=tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_inconsistent_output_columns_stop_the_run_naming_the_rows(tmp_path):
    with pytest.raises(ValueError, match=r"\['note', 'tokens'\] for row index 20"):
        run(make_rows(4), pipeline_rows.ragged, tmp_path, num_workers=0, num_shards=1)
