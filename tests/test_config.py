"""Profiles load into typed configs; bad keys and values name the key and the file."""

import pytest

from ichigo_lib.config import CONFIG_DIR, Config, ConfigError, load_config


@pytest.mark.parametrize("profile", ["smoke", "tiny", "full", "small"])
def test_every_shipped_profile_loads(profile):
    cfg = load_config(profile)
    assert isinstance(cfg, Config) and cfg.profile == profile


def test_smoke_extends_tiny_and_overrides_only_sizes():
    tiny, smoke = load_config("tiny"), load_config("smoke")
    assert smoke.base_model.train.num_steps < tiny.base_model.train.num_steps
    assert smoke.base_model.train.lr == tiny.base_model.train.lr
    assert smoke.eval.mc.num_fewshot == tiny.eval.mc.num_fewshot == 5


def test_yaml_scientific_notation_without_dot_is_a_float():
    assert load_config("tiny", {"base_model.train.lr": "3e-3"}).base_model.train.lr == 0.003


def test_unknown_key_in_a_profile_file_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nbase_model:\n  train:\n    num_step: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(bad) in str(err.value)
    assert "'base_model.train.num_step'" in str(err.value)
    assert "did you mean 'base_model.train.num_steps'" in str(err.value)


def test_mistyped_value_names_the_key_and_the_source(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nworld:\n  num_countries: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'world\.num_countries' expects int"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"overrides .*'base_model\.train\.lr' expects float"):
        load_config("tiny", {"base_model.train.lr": "fast"})


def test_overrides_accept_dotted_nested_and_yaml_string_forms():
    a = load_config("tiny", {"base_model.train.num_steps": 7})
    b = load_config("tiny", {"base_model": {"train": {"num_steps": 7}}})
    c = load_config("tiny", "base_model.train.num_steps: 7")
    assert a == b == c and a.base_model.train.num_steps == 7
    assert a.base_model.train.batch_size == load_config("tiny").base_model.train.batch_size


def test_unknown_override_key_is_an_error_naming_the_overrides():
    with pytest.raises(ConfigError, match=r"overrides .*unknown key 'eval\.mc\.shots'"):
        load_config("tiny", {"eval.mc.shots": 3})


def test_literal_and_section_validation_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'eval\.mc\.benchmark' must be one of"):
        load_config("tiny", {"eval.mc.benchmark": "hellaswag"})
    with pytest.raises(ConfigError, match=r"section 'world'.*num_countries"):
        load_config("tiny", {"world.num_countries": 2})


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'huge'.*smoke.*tiny"):
        load_config("huge")


def test_extends_cycle_is_reported(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    monkeypatch.setattr("ichigo_lib.config.CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match="cycle"):
        load_config("a")


def test_resolved_config_prints_as_yaml():
    text = load_config("smoke").to_yaml()
    assert "num_steps: 4" in text and "profile: smoke" in text


def test_configs_dir_holds_the_profiles():
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} >= {"smoke", "tiny", "full", "small"}


def test_mappings_and_variadic_tuples_coerce_and_merge_per_key():
    full = load_config("full", {"data.published_phase1_languages.english": 0.25})
    languages = full.data.published_phase1_languages
    assert languages["english"] == 0.25 and languages["dutch"] == 1.0 and len(languages) == 8
    whole = load_config("full", {"data.published_phase1_languages": None})  # the whole split
    assert whole.data.published_phase1_languages is None
    with pytest.raises(ConfigError, match=r"published_phase1_languages.*\(0, 1\]"):
        load_config("full", {"data.published_phase1_languages.dutch": 0})
    with pytest.raises(
        ConfigError, match=r"'data\.published_phase1_languages' expects .*'dutch': 'all'"
    ):
        load_config("full", {"data.published_phase1_languages.dutch": "all"})
    with pytest.raises(ConfigError, match=r"published_rows: unknown phases \['phase4'\]"):
        load_config("full", {"data.published_rows": {"phase4": 10}})
    with pytest.raises(ConfigError, match=r"published_rows: row counts .*'phase2': 0"):
        load_config("full", {"data.published_rows": {"phase2": 0}})
    args = ["--nnodes", "2", "--rdzv_endpoint", "node0:29500"]
    assert load_config("full", {"phase2.train.torchrun_args": args}).phase2.train.torchrun_args == (
        tuple(args)
    )
