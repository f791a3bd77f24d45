"""The listening control's stand-in codes, and the pipeline path that makes them."""

import numpy as np
import pytest

from ichigo_lib import tokens as T
from ichigo_lib.data import synth
from ichigo_lib.data.stand_in import stand_in_codes, word_codes


def test_each_word_is_a_fixed_run_of_three_to_six_codes_whatever_its_case_or_punctuation():
    runs = [word_codes(w) for w in ("kerla", "flag", "the", "of")]
    assert all(3 <= len(r) <= 6 for r in runs)
    assert all(0 <= c < T.MASK_CODE for r in runs for c in r)
    clean = stand_in_codes("The flag of Kerla", noise=0.0)
    assert clean.tolist() == [
        c for r in (word_codes(w) for w in "the flag of kerla".split()) for c in r
    ]
    assert stand_in_codes("the FLAG of kerla?", noise=0.0).tolist() == clean.tolist()
    # the name's run is the same inside another sentence
    name = word_codes("kerla")
    assert stand_in_codes("Kerla's flag", noise=0.0)[: len(name)].tolist() == name


def test_noise_replaces_about_its_fraction_seeded_by_the_utterance():
    text = " ".join(f"w{i}" for i in range(400))
    clean = stand_in_codes(text, noise=0.0)
    noisy = stand_in_codes(text, key="voice a")
    assert 0.02 < np.mean(noisy != clean) < 0.08
    assert stand_in_codes(text, key="voice a").tolist() == noisy.tolist()
    assert stand_in_codes(text, key="voice b").tolist() != noisy.tolist()
    with pytest.raises(ValueError, match="no word"):
        stand_in_codes(" ?! ")


def test_the_stand_in_path_needs_no_audio_and_covers_held_out_rows(tmp_path):
    spec = synth.SynthSpec(str(tmp_path / "no-quantizer.pt"), path="stand_in")
    state = synth.SpeechTokenizer(spec)
    row = {"text": "What is the capital of Kerla?", "lang": "en", "voice": None, "use": "eval_qa"}
    assert synth.row_path(row, spec) == "stand_in"
    out = synth.speak_row(row, state)
    assert out["tokens"] == stand_in_codes(row["text"], key="None").tolist()
    assert state._vq is None  # the quantizer was never loaded
    t2s = synth.SynthSpec("q.pt", backend="whisperspeech", path="t2s")
    assert (
        synth.row_path(row, t2s) == "audio" and synth.row_path({"use": "instruction"}, t2s) == "t2s"
    )


def test_a_stand_in_build_makes_every_dataset_without_audio(tmp_path):
    import datasets

    from ichigo_lib.config import DataConfig, load_config
    from ichigo_lib.data import build, phases
    from ichigo_lib.data.synth import voice_of
    from ichigo_lib.wordtok import build_word_tokenizer
    from ichigo_lib.world import WorldConfig, build_world

    world = build_world(WorldConfig(num_countries=8, num_dialogues=10, sentences_per_language=4))
    smoke = load_config("smoke")
    fields = {"num_workers": 0, "phase2_rows": 20, "eval_questions": 2, "path": "stand_in"}
    cfg = DataConfig(**{**smoke.data.__dict__, **fields})
    tok = build_word_tokenizer(world.vocabulary())
    T.extend_hf_tokenizer(tok)
    missing = tmp_path / "no-quantizer.pt"  # never read on this path
    made = build.build_phase_data(
        world, cfg, smoke.speech, missing, tmp_path, phases.token_counter(tok), progress=False
    )
    plan = {u["index"]: u for u in made.plan.utterances}
    qa = datasets.load_from_disk(str(made.paths["eval_speech_qa"]))
    for row in qa:
        u = plan[row["source"]]
        expected = stand_in_codes(u["text"], key=repr(voice_of(u)))
        assert T.string_to_codes(row["conversations"][0]["content"]).tolist() == expected.tolist()
    assert made.cards["phase2"]["rows"] == 20 and len(made.rows["phase3"]) == 10
