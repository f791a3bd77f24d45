"""Notebooks are committed clean, carry a parameters cell, and every one runs under smoke."""

import json
from pathlib import Path

import nbformat
import pytest

from ichigo_lib import runner
from ichigo_lib.runs import read_manifest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOISE = (  # what torchao, jupyter_client's kernel and librosa's audioread fallback used to print
    "Skipping import of cpp extensions",
    "Kernel is running over TCP without encryption",
    "PySoundFile failed",
    "audioread",
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_tagged_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    names = {line.split("=")[0].strip() for line in first.source.splitlines() if "=" in line}
    assert {"profile", "run_dir", "overrides"} <= names


def test_toc_lists_every_notebook_and_nothing_else():
    assert sorted(runner.toc_notebooks(ROOT)) == [p.stem for p in NOTEBOOKS]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    return run_dir, runner.run_all("smoke", run_dir)


@pytest.fixture(scope="module")
def smoke_book(smoke_runs, tmp_path_factory):
    run_dir, _ = smoke_runs
    return runner.build_book("smoke", run_dir, path_output=tmp_path_factory.mktemp("book"))


@pytest.mark.notebook
def test_every_notebook_runs_under_smoke_and_writes_its_manifest(smoke_runs):
    run_dir, results = smoke_runs
    assert [r.name for r in results] == runner.toc_notebooks(ROOT)
    for result in results:
        assert result.status == "executed"
        manifest = read_manifest(run_dir / "smoke" / result.name / "manifest.json")
        assert manifest.data["profile"] == "smoke" and manifest.metrics
        assert manifest.data["timings"]


@pytest.mark.notebook
def test_base_model_manifest_carries_both_mc_formulations(smoke_runs):
    run_dir, _ = smoke_runs
    metrics = read_manifest(run_dir / "smoke" / "00_base_model" / "manifest.json").metrics
    for key in ("mc_accuracy", "mc_accuracy_cloze", "mc_accuracy_letter"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["mc_accuracy"] == metrics["mc_accuracy_cloze"]  # smoke leads with cloze
    assert metrics["train_steps"] == 4


@pytest.mark.notebook
def test_second_run_with_nothing_changed_reuses_every_manifest(smoke_runs):
    run_dir, _ = smoke_runs
    before = {p: p.read_bytes() for p in (run_dir / "smoke").glob("*/manifest.json")}
    again = runner.run_all("smoke", run_dir)
    assert {r.status for r in again} == {"reused"}
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.notebook
def test_a_changed_override_or_profile_invalidates_reuse(smoke_runs):
    run_dir, _ = smoke_runs
    base = runner._fingerprint(ROOT, "00_base_model", "smoke", {}, run_dir)
    assert base == runner._fingerprint(ROOT, "00_base_model", "smoke", {}, run_dir)
    changed = runner._fingerprint(
        ROOT, "00_base_model", "smoke", {"base_model.train.num_steps": 3}, run_dir
    )
    assert changed != base
    assert runner._fingerprint(ROOT, "00_base_model", "tiny", {}, run_dir) != base


@pytest.mark.notebook
def test_book_renders_from_the_executed_copies_warning_free(smoke_runs, smoke_book):
    run_dir, _ = smoke_runs
    html = smoke_book
    page = (html / "notebooks" / "00_base_model.html").read_text()
    assert "5-shot multiple choice" in page
    executed = json.loads((run_dir / "smoke" / "00_base_model" / "00_base_model.ipynb").read_text())
    assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
    assert (html / "index.html").exists()


@pytest.mark.notebook
def test_book_pages_carry_no_machine_paths_known_warnings_or_injected_parameters(
    smoke_runs, smoke_book
):
    """Every file of the site: the pages, their search index, the downloadable sources."""
    run_dir, _ = smoke_runs
    files = {
        p.relative_to(smoke_book): p.read_bytes() for p in smoke_book.rglob("*") if p.is_file()
    }
    assert len([p for p in files if p.suffix == ".html"]) >= len(NOTEBOOKS)
    for path, data in files.items():
        assert str(ROOT).encode() not in data, path
        for text in (*NOISE, "tag_injected-parameters"):
            assert text.encode() not in data, (path, text)
    executed = (run_dir / "smoke" / "00_base_model" / "00_base_model.ipynb").read_text()
    assert "injected-parameters" in executed  # the executed copy under runs/ keeps the cell


@pytest.mark.notebook
def test_phase3_manifest_carries_what_evaluation_reads(smoke_runs):
    run_dir, _ = smoke_runs
    manifest = read_manifest(run_dir / "smoke" / "05_phase3_refusal" / "manifest.json")
    for key in ("model", "dataset_phase3", "dataset_eval_inaudible", "train_log"):
        assert manifest.artifact(key).exists()
    metrics = manifest.metrics
    for key in (
        "mc_accuracy",
        "mc_accuracy_base",
        "speech_qa_accuracy",
        "inaudible_refusal_rate",
        "speech_false_refusal_rate",
        "ks_pvalue",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    if metrics["mc_accuracy_base"]:  # a 4-step smoke model may score 0 by chance
        assert metrics["mc_ratio_to_base"] == metrics["mc_accuracy"] / metrics["mc_accuracy_base"]
    assert metrics["train_steps"] == 4 and metrics["count_eval_inaudible"] == 16
    import datasets

    held = datasets.load_from_disk(str(manifest.artifact("dataset_eval_inaudible")))
    assert held.column_names == ["conversations", "length"] and len(held) == 16
    analysis = read_manifest(run_dir / "smoke" / "06_inaudible_space" / "manifest.json").metrics
    assert analysis["random_entropy_bits"] > analysis["speech_entropy_bits"]


@pytest.mark.notebook
def test_evaluation_manifest_and_results_page_are_filled_from_it(smoke_runs, smoke_book):
    run_dir, _ = smoke_runs
    manifest = read_manifest(run_dir / "smoke" / "07_evaluation" / "manifest.json")
    m = manifest.metrics
    assert m["judge_name"] == "reference-match"
    assert 0.0 <= m["judge_score_mean"] <= 5.0 and m["wer"] >= 0.0
    assert m["ttft_early_fusion_ms"] > 0 and m["ttft_cascade_ms"] > 0
    ratio = m["ttft_early_fusion_ms"] / m["ttft_cascade_ms"]
    assert m["ttft_ratio_vs_cascade"] == pytest.approx(ratio)
    report = json.loads(manifest.artifact("report").read_text())
    assert report["latency"]["clips"] == 3 and set(report["refusal"]["phases"]) == {
        "phase 1",
        "phase 2",
        "phase 3",
    }
    page = (smoke_book / "book" / "results.html").read_text()
    for value in (f"{m['wer']:.3f}", f"{m['ttft_ratio_vs_cascade']:.3f}", "reference-match"):
        assert value in page, value
    assert "453.18" in page and "profile smoke" in page  # the paper beside ours, the profile
    demo = (smoke_book / "notebooks" / "07_evaluation.html").read_text()  # the saved widget
    assert "application/vnd.jupyter.widget-state+json" in demo and "first token after" in demo


@pytest.mark.notebook
def test_ichigo_eval_writes_the_report_headless_with_an_endpoint_judge(smoke_runs, tmp_path):
    from http_stub import Reply, chat, serve

    from ichigo_lib import cli

    run_dir, _ = smoke_runs
    out = tmp_path / "report.json"
    with serve(lambda i, req: Reply(body=chat("Close to the reference.\nRating: 3"))) as stub:
        argv = ["eval", "--profile", "smoke", "--run-dir", str(run_dir), "--out", str(out)]
        assert cli.main([*argv, "--judge-url", stub.url, "--judge-model", "stub-judge"]) == 0
    report = json.loads(out.read_text())
    assert report["judge"] == report["metrics"]["judge_name"] == "llm:stub-judge"
    assert report["metrics"]["judge_score_mean"] == 3.0
    phases = report["speech_instructions"]["phases"].values()  # 2 and 3, every sample (8 items)
    distinct = {(s["question"], s["reply"], s["reference"]) for p in phases for s in p["samples"]}
    # one request per distinct judged answer (the reply cache may spare repeats)
    assert len(distinct) <= len(stub.requests) <= 2 * report["speech_instructions"]["items"]
    assert "[Reference Answer]" in stub.requests[0]["messages"][0]["content"]
    for section in ("knowledge", "transcription", "refusal", "latency"):
        assert report[section], section


@pytest.mark.notebook
def test_ichigo_eval_survives_a_faulty_judge_and_a_rerun_asks_only_for_the_failed(
    smoke_runs, tmp_path
):
    from http_stub import Reply, chat, serve

    from ichigo_lib import cli

    run_dir, _ = smoke_runs
    faults = [
        Reply(body="<html>502 bad gateway</html>"),
        Reply(500, {"error": "overloaded"}),
        Reply(body={"object": "chat.completion"}),  # no choices
        Reply(body=chat("The answer seems fine to me.")),  # no rating
        Reply(body=chat("Rating: 5"), delay_s=0.6),  # slower than the timeout
        Reply(body=chat("Close to the reference.\nRating: 3")),
    ]
    state = {"healthy": False, "rated": set()}

    def script(i, req):
        reply = Reply(body=chat("Rating: 4")) if state["healthy"] else faults[i % len(faults)]
        if reply.body == faults[-1].body or state["healthy"]:
            state["rated"].add(req["messages"][0]["content"])
        return reply

    def evaluate(url, out):
        argv = ["eval", "--profile", "smoke", "--run-dir", str(run_dir), "--out", str(out)]
        judge = ["--judge-url", url, "--judge-model", "flaky"]
        settings = ["max_retries=1", "backoff_s=0", "timeout_s=0.2", "concurrency=1"]
        sets = [arg for s in settings for arg in ("--set", f"eval.judge.{s}")]
        assert cli.main([*argv, *judge, *sets]) == 0
        return json.loads(out.read_text())

    with serve(script) as stub:
        first = evaluate(stub.url, tmp_path / "first.json")
        asked_first, rated_first = len(stub.requests), set(state["rated"])
        state["healthy"] = True
        second = evaluate(stub.url, tmp_path / "second.json")
    phases = first["speech_instructions"]["phases"]
    items = sum(p["judge_n"] for p in phases.values())
    assert asked_first <= 2 * items  # one retry each at most
    failed = 0
    for p in phases.values():
        assert p["judge_rated"] + p["judge_parse_failures"] + p["judge_failures"] == p["judge_n"]
        assert len(p["failed_items"]) == p["judge_failures"]
        assert all(item["reason"] for item in p["failed_items"])
        failed += p["judge_parse_failures"] + p["judge_failures"]
    totals = {k: sum(p[k] for p in phases.values()) for k in ("judge_rated", "judge_failures")}
    assert totals["judge_rated"] and totals["judge_failures"] and failed > totals["judge_failures"]
    m = first["metrics"]
    assert "judge_failures" in m and "judge_failures_phase2" in m
    # the rerun asks only for what failed, and every item is rated now
    asked_again = [r["messages"][0]["content"] for r in stub.requests[asked_first:]]
    assert 1 <= len(asked_again) <= failed and not set(asked_again) & rated_first
    for p in second["speech_instructions"]["phases"].values():
        assert p["judge_rated"] == p["judge_n"] and p["judge_failures"] == 0
