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
