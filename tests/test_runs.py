"""Manifests record config, inputs, timings, metrics; downstream finds inputs only through them."""

import json

import pytest

from ichigo_lib.runs import (
    PROGRESS,
    MissingUpstreamError,
    read_manifest,
    repo_root,
    sha256_path,
    shown,
    start_run,
)


def test_manifest_records_everything_a_reader_needs(tmp_path):
    run = start_run("00_base_model", "smoke", tmp_path, {"base_model.train.num_steps": 2})
    data_file = tmp_path / "input.txt"
    data_file.write_text("hello")
    run.add_input("text", data_file)
    (run.dir / "model").mkdir()
    (run.dir / "model" / "w.bin").write_bytes(b"\0" * 8)
    run.add_artifact("model", run.dir / "model")
    with run.stage("train"):
        pass
    run.log_metrics(mc_accuracy=0.9, steps=2, note="ok")
    path = run.finish()
    assert path == tmp_path / "smoke" / "00_base_model" / "manifest.json"
    data = json.loads(path.read_text())
    assert data["status"] == "finished"
    assert data["config"]["base_model"]["train"]["num_steps"] == 2
    assert data["overrides"] == {"base_model.train.num_steps": 2}
    assert data["inputs"]["text"]["sha256"] == sha256_path(data_file)
    assert data["artifacts"]["model"] == "model"
    assert "train" in data["timings"] and data["wall_time_s"] >= 0
    assert data["metrics"] == {"mc_accuracy": 0.9, "steps": 2, "note": "ok"}
    assert {"torch", "torchtune", "transformers", "lm_eval", "python"} <= set(data["versions"])
    assert set(data["git"]) == {"revision", "dirty"}
    assert read_manifest(path).artifact("model") == (run.dir / "model").resolve()


def test_missing_upstream_manifest_says_which_notebook_to_run_first(tmp_path):
    run = start_run("01_tokenizer", "smoke", tmp_path)
    with pytest.raises(MissingUpstreamError, match=r"run notebooks/00_base_model\.ipynb first"):
        run.upstream("00_base_model")


def test_upstream_manifest_is_recorded_as_an_input_with_its_hash(tmp_path):
    first = start_run("00_base_model", "smoke", tmp_path)
    first.finish()
    second = start_run("01_tokenizer", "smoke", tmp_path)
    manifest = second.upstream("00_base_model")
    assert second.inputs["manifest:00_base_model"]["sha256"] == manifest.sha256


def test_restarting_a_run_removes_its_old_manifest_so_a_killed_run_leaves_none(tmp_path):
    start_run("00_base_model", "smoke", tmp_path).finish()
    run = start_run("00_base_model", "smoke", tmp_path)  # then "killed" before finish()
    assert not (run.dir / "manifest.json").exists()
    later = start_run("01_tokenizer", "smoke", tmp_path)
    with pytest.raises(MissingUpstreamError):
        later.upstream("00_base_model")


def test_metrics_must_be_flat_scalars(tmp_path):
    run = start_run("00_base_model", "smoke", tmp_path)
    with pytest.raises(TypeError, match="metric 'curve' must be a scalar"):
        run.log_metrics(curve=[1, 2])


def test_artifact_must_exist(tmp_path):
    run = start_run("00_base_model", "smoke", tmp_path)
    with pytest.raises(FileNotFoundError, match="artifact 'model'"):
        run.add_artifact("model", run.dir / "nope")


def test_corrupt_or_unfinished_manifest_is_not_trusted(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        read_manifest(bad)
    bad.write_text(json.dumps({"status": "running"}))
    with pytest.raises(MissingUpstreamError, match="did not finish"):
        read_manifest(bad)


def test_directory_hash_covers_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    h1 = sha256_path(tmp_path / "a")
    (tmp_path / "a" / "x").write_text("2")
    h2 = sha256_path(tmp_path / "a")
    (tmp_path / "a" / "x").rename(tmp_path / "a" / "y")
    assert len({h1, h2, sha256_path(tmp_path / "a")}) == 3


def test_a_stage_names_itself_in_the_progress_file_while_it_runs(tmp_path):
    run = start_run("00_base_model", "smoke", tmp_path)
    progress = run.dir / PROGRESS
    assert not progress.exists()
    with run.stage("train"):
        inside = json.loads(progress.read_text())
        with run.stage("eval"):
            nested = json.loads(progress.read_text())
        back = json.loads(progress.read_text())
    after = json.loads(progress.read_text())
    assert inside["stage"] == "train" and inside["timings"] == {}
    assert inside["run_started"] == run.started
    assert nested["stage"] == "eval" and nested["since"] >= inside["since"]
    assert back["stage"] == "train" and back["since"] == inside["since"]
    assert back["timings"] == {"eval": run.timings["eval"]}
    assert after["stage"] is None and after["timings"] == run.timings
    assert not list(run.dir.glob("*.tmp"))
    start_run("00_base_model", "smoke", tmp_path)  # a restarted run drops the stale file
    assert not progress.exists()


def test_paths_are_shown_relative_to_the_repository_when_under_it(tmp_path):
    root = repo_root()
    assert shown(root / "runs" / "tiny" / "00_base_model") == "runs/tiny/00_base_model"
    assert shown(tmp_path / "x") == str(tmp_path.resolve() / "x")
