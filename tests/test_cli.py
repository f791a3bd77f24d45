"""The command line: expected errors end in one line naming the culprit; bugs keep tracebacks."""

import pytest
from papermill.exceptions import PapermillExecutionError

from ichigo_lib import cli, runner
from ichigo_lib.config import load_config


def one_line_error(capsys, argv):
    """Run ``ichigo argv``; its exit status must be 1 and stderr one ``ichigo: error:`` line."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ichigo: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_bad_set_override_is_named_not_the_profile_file(capsys):
    line = one_line_error(
        capsys, ["run", "04_phase2_instruct", "--set", "phase2.checkpoint_every=100"]
    )
    assert line.startswith("ichigo: error: ConfigError: override phase2.checkpoint_every=100")
    steps = load_config("tiny").phase2.train.num_steps
    assert f"must divide train.num_steps ({steps})" in line
    line = one_line_error(capsys, ["run", "--set", "phase2.chekpoint_every=10"])
    assert "unknown key 'phase2.chekpoint_every'" in line and "did you mean" in line
    line = one_line_error(capsys, ["run", "--set", "eval.items=[1,"])
    assert "--set eval.items=[1,: the value is not valid YAML" in line
    assert "--set expects KEY=VALUE, got 'eval.items'" in one_line_error(
        capsys, ["eval", "--set", "eval.items"]
    )


def test_a_missing_upstream_run_is_one_line_naming_the_manifest(capsys, tmp_path):
    line = one_line_error(capsys, ["eval", "--profile", "smoke", "--run-dir", str(tmp_path)])
    assert "MissingUpstreamError" in line and str(tmp_path / "smoke" / "00_base_model") in line


def test_an_unreadable_audio_file_is_one_line_naming_it(capsys, tmp_path):
    bad = tmp_path / "question.wav"
    bad.write_bytes(b"RIFF but not really a wav file")
    argv = ["ask", "--profile", "smoke", "--run-dir", str(tmp_path), str(bad)]
    line = one_line_error(capsys, argv)
    assert f"AudioError: {bad}: cannot decode audio" in line
    line = one_line_error(capsys, [*argv[:-1], str(tmp_path / "missing.flac")])
    assert "missing.flac: no such file" in line


def test_an_expected_error_inside_a_notebook_is_one_line_a_bug_is_not():
    def failed(ename):
        return PapermillExecutionError(3, 7, "run.upstream(...)", ename, "00 has not run", [])

    line = cli.error_line(failed("MissingUpstreamError"))
    assert line == "MissingUpstreamError in notebook, cell [7]: 00 has not run"
    named = failed("MissingUpstreamError")
    named.add_note("03_phase1_pretrain (executed copy: runs/smoke/03/03.ipynb)")
    assert cli.error_line(named).startswith("MissingUpstreamError in 03_phase1_pretrain (exec")
    for ename in ("AudioError", "ConfigError", "EndpointError", "HubDataError", "TrainingError"):
        assert cli.error_line(failed(ename)) is not None, ename
    assert cli.error_line(failed("KeyError")) is None
    assert cli.error_line(KeyError("bug")) is None


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(runner, "run_all", broken)
    with pytest.raises(ZeroDivisionError, match="a real bug"):
        cli.main(["run", "00_base_model", "--profile", "smoke"])
