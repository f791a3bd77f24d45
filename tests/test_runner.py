"""The runner's progress lines, time estimates, summary table, book staging and noise filter."""

import json
import logging
import os

import pytest

from ichigo_lib import progress, quiet, runner
from ichigo_lib.runs import MANIFEST, PROGRESS, repo_root, sha256_path, start_run

ROOT = repo_root()


def _manifest(path, wall, metrics=None, timings=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"status": "finished", "wall_time_s": wall, "timings": timings or {}}
    path.write_text(json.dumps({**data, "metrics": metrics or {}}))
    return path


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "unknown"), (0.04, "0.0s"), (4.25, "4.2s"), (42.4, "42s"), (185, "3m05s"),
     (3725, "1h02m")],
)  # fmt: skip
def test_durations_read_at_a_glance(seconds, text):
    assert progress.duration(seconds) == text


def test_remaining_is_this_notebooks_rest_plus_the_later_ones_or_unknown():
    assert progress.remaining(elapsed=10, previous=30, later=100) == 120
    assert progress.remaining(elapsed=50, previous=30, later=100) == 100  # over its last time
    assert progress.remaining(elapsed=10, previous=None, later=100) is None
    assert progress.remaining(elapsed=10, previous=30, later=None) is None


def test_expected_seconds_count_reused_notebooks_as_zero_and_every_one_after_a_rerun(tmp_path):
    names = runner.toc_notebooks(ROOT)[:3]
    for name in names:  # three finished runs, 10 / 20 / 30 s, each still valid
        out = tmp_path / "smoke" / name
        manifest = _manifest(out / MANIFEST, 10.0 * (1 + names.index(name)))
        (out / f"{name}.ipynb").write_text("{}")
        fingerprint = runner._fingerprint(ROOT, name, "smoke", {}, tmp_path)
        stamp = {"fingerprint": fingerprint, "manifest_sha256": sha256_path(manifest)}
        (out / runner.STAMP).write_text(json.dumps(stamp))
    expect = runner._expected_seconds
    assert expect(ROOT, names, "smoke", tmp_path, {}, force=False) == [0.0, 0.0, 0.0]
    assert expect(ROOT, names, "smoke", tmp_path, {}, force=True) == [10.0, 20.0, 30.0]
    (tmp_path / "smoke" / names[1] / runner.STAMP).unlink()  # 01 must run again, so must 02
    assert expect(ROOT, names, "smoke", tmp_path, {}, force=False) == [0.0, 20.0, 30.0]
    (tmp_path / "smoke" / names[2] / MANIFEST).unlink()
    assert expect(ROOT, names, "smoke", tmp_path, {}, force=False) == [0.0, 20.0, None]
    assert runner._total([20.0, 30.0]) == 50.0 and runner._total([20.0, None]) is None


def test_summary_table_lists_status_wall_time_and_headline_metric(tmp_path):
    results = []
    for name, status, seconds, metrics in [
        ("00_base_model", "executed", 129.4, {"mc_accuracy": 0.41234, "train_steps": 300}),
        ("01_tokenizer", "reused", 0.0, {"bottleneck_wer": 0.5}),
        ("02_synthetic_data", "executed", 9.0, {}),  # its headline metric missing
    ]:
        _manifest(tmp_path / name / MANIFEST, seconds, metrics)
        results.append(runner.NotebookRun(name, status, seconds, tmp_path / name / f"{name}.ipynb"))
    assert runner.summary_table(results).splitlines() == [
        "notebook           status    wall time  headline",
        "-----------------  --------  ---------  ------------------",
        "00_base_model      executed      2m09s  mc_accuracy 0.4123",
        "01_tokenizer       reused            -  bottleneck_wer 0.5",
        "02_synthetic_data  executed       9.0s",
        "2 executed in 2m18s, 1 reused",
    ]
    assert set(runner.HEADLINES) == set(runner.toc_notebooks(ROOT))


def test_watcher_prints_stage_changes_and_heartbeats_from_the_progress_file(tmp_path):
    run = start_run("03_phase1_pretrain", "smoke", tmp_path)
    previous = {"wall_time_s": 100.0, "timings": {"train": 60.0}}
    lines = []
    watcher = progress.StageWatcher(
        "[smoke] 03", run.dir / PROGRESS, previous, later=50.0, write=lines.append
    )
    t0 = watcher.started
    watcher.poll(t0 + 1)  # no stage yet, no heartbeat due
    assert lines == []
    with run.stage("rows"):
        pass
    with run.stage("train"):
        since = json.loads((run.dir / PROGRESS).read_text())["since"]
        watcher.poll(t0 + 20)
        watcher.poll(t0 + 21)  # nothing new
        watcher.poll(t0 + 50)  # 30 s after the last line
        watcher.poll(t0 + 51, beat=False)

    def left(now):  # the previous wall time counts from start_run, as the manifest's does
        return progress.duration(progress.remaining(now - run.started, 100.0, 50.0))

    assert lines == [
        f"[smoke] 03: stage rows done in {progress.duration(run.timings['rows'])}",
        "[smoke] 03: stage train started (last run 1m00s) | notebook 20s"
        f" | remaining ~{left(t0 + 20)}",
        f"[smoke] 03: in stage train for {progress.duration(t0 + 50 - since)} | notebook 50s"
        f" | remaining ~{left(t0 + 50)}",
    ]
    watcher.poll(t0 + 52)
    assert lines[-1] == f"[smoke] 03: stage train done in {progress.duration(run.timings['train'])}"


def test_watcher_without_a_previous_run_says_unknown(tmp_path):
    lines = []
    watcher = progress.StageWatcher("nb", tmp_path / PROGRESS, None, 5.0, write=lines.append)
    watcher.poll(watcher.started + 30)
    assert lines == ["nb: running | notebook 30s | remaining unknown"]


def test_book_copy_hides_the_injected_parameters_cell_and_is_staged_only_when_changed(tmp_path):
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "profile = 'tiny'"},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "x = 1"},
    ]
    executed = tmp_path / "runs" / "00.ipynb"
    executed.parent.mkdir()
    papermill = {"input_path": str(ROOT / "notebooks" / "00.ipynb"), "output_path": str(executed)}
    executed.write_text(json.dumps({"cells": cells, "metadata": {"papermill": papermill}}))
    staged = tmp_path / "_book" / "00.ipynb"
    runner._write_if_changed(staged, runner._for_book(executed, ROOT))
    book = json.loads(staged.read_text())
    assert [c["metadata"]["tags"] for c in book["cells"]] == [
        ["parameters"],
        ["injected-parameters", "remove-cell"],
    ]
    assert book["metadata"]["papermill"]["input_path"] == "notebooks/00.ipynb"
    assert "remove-cell" not in executed.read_text()  # the executed copy keeps its cell
    os.utime(staged, (1_000_000, 1_000_000))
    runner._write_if_changed(staged, runner._for_book(executed, ROOT))  # the same: kept
    assert staged.stat().st_mtime == 1_000_000
    runner._write_if_changed(staged, b"{}")
    assert staged.read_bytes() == b"{}" and staged.stat().st_mtime > 1_000_000


def test_torchaos_version_warning_alone_is_dropped(caplog):
    quiet.install()
    logger = logging.getLogger("torchao")
    with caplog.at_level(logging.WARNING):
        logger.warning(
            "Skipping import of cpp extensions due to incompatible torch version 2.13.0+cpu"
        )
        logger.warning("Skipping import of cpp extensions due to TORCHAO_FORCE_SKIP_LOADING")
    assert [r.getMessage() for r in caplog.records] == [
        "Skipping import of cpp extensions due to TORCHAO_FORCE_SKIP_LOADING"
    ]
    quiet.install()
    assert len(logger.filters) == 1
