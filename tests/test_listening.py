"""The listening ladder's functions on hand-made codes with known answers."""

import random

import numpy as np
import pytest

from ichigo_lib.evaluate import listening as L
from ichigo_lib.speech.metrics import dedup

COUNTRIES = [f"C{i}" for i in range(12)]


def spoken(country: int, rng: random.Random, stable: bool) -> list[int]:
    """A question: random context codes around the country's name, the name's codes fixed
    (``stable``) or drawn afresh each time."""
    name_rng = random.Random(country) if stable else rng
    name = [name_rng.randrange(512) for _ in range(8)]
    before = [rng.randrange(512) for _ in range(rng.randrange(5, 15))]
    after = [rng.randrange(512) for _ in range(rng.randrange(3, 8))]
    return [c for c in before + name + after for _ in range(rng.choice((1, 2)))]  # repeats


def dataset(stable: bool, per_country: int, seed: int):
    rng = random.Random(seed)
    labels = [c for c in range(len(COUNTRIES)) for _ in range(per_country)]
    return [spoken(c, rng, stable) for c in labels], [COUNTRIES[c] for c in labels]


def test_dedup_collapses_runs_only():
    assert dedup([3, 3, 3, 1, 1, 3, 2, 2]).tolist() == [3, 1, 3, 2]
    assert dedup([]).tolist() == [] and dedup([7]).tolist() == [7]


def test_the_probe_finds_stable_names_and_not_shuffled_labels():
    train, train_labels = dataset(stable=True, per_country=6, seed=0)
    test, test_labels = dataset(stable=True, per_country=3, seed=1)
    assert L.country_probe_accuracy(train, train_labels, test, test_labels) == 1.0
    shuffled = random.Random(2).sample(train_labels, len(train_labels))
    chance = L.country_probe_accuracy(train, shuffled, test, test_labels)
    assert chance < 0.35  # chance is 1/12
    unstable, unstable_labels = dataset(stable=False, per_country=6, seed=3)
    fresh, fresh_labels = dataset(stable=False, per_country=3, seed=4)
    assert L.country_probe_accuracy(unstable, unstable_labels, fresh, fresh_labels) < 0.35


def test_the_probe_counts_a_country_it_never_saw_as_a_miss_and_checks_its_input():
    train, labels = dataset(stable=True, per_country=4, seed=0)
    keep = [i for i, label in enumerate(labels) if label != "C0"]
    test, test_labels = dataset(stable=True, per_country=1, seed=5)
    acc = L.country_probe_accuracy(
        [train[i] for i in keep], [labels[i] for i in keep], test, test_labels
    )
    assert acc == pytest.approx(11 / 12)
    with pytest.raises(ValueError, match="one label per sequence"):
        L.CountryProbe(train, labels[:-1])
    with pytest.raises(ValueError, match="two distinct labels"):
        L.CountryProbe(train[:2], ["C1", "C1"])
    with pytest.raises(ValueError, match="one label per test sequence"):
        L.country_probe_accuracy(train, labels, [], [])


def test_the_probe_reads_codes_from_user_turns_and_countries_from_their_text():
    from ichigo_lib import tokens as T

    train, labels = dataset(stable=True, per_country=4, seed=0)
    test, test_labels = dataset(stable=True, per_country=2, seed=1)

    def pairs(codes, names):
        return [
            (f"Transcribe this.\n{T.audio_turn(np.array(c))}", f"Where is {n}?")
            for c, n in zip(codes, names, strict=True)
        ]

    acc = L.spoken_country_probe(pairs(train, labels), pairs(test, test_labels), COUNTRIES)
    assert acc == 1.0


def test_country_of_names_exactly_one():
    assert L.country_of("What is the capital of Larlor?", ["Larlor", "Keta"]) == "Larlor"
    with pytest.raises(ValueError, match="names 0"):
        L.country_of("What is red?", ["Larlor", "Keta"])
    with pytest.raises(ValueError, match="names 2"):
        L.country_of("Keta or Larlor?", ["Larlor", "Keta"])


def test_named_entity_recall_skips_texts_without_one_country():
    texts = ["The capital of Keta is Vazelro.", "Bonjour a tous.", "Larlor has two rivers."]
    heard = ["the capital of keta is vasero", "bonjour", "lalor has two rivers"]
    assert L.named_entity_recall(texts, heard, ["Keta", "Larlor"]) == (0.5, 2)
    assert L.named_entity_recall(["Bonjour."], ["bonjour"], ["Keta"]) == (None, 0)
    with pytest.raises(ValueError, match="one transcript per text"):
        L.named_entity_recall(texts, heard[:1], ["Keta"])


def test_split_accuracy_per_cause():
    out = L.split_accuracy([True, False, True, True], ["voice", "voice", "both", "phrasing"])
    assert out == {"both": 1.0, "phrasing": 1.0, "voice": 0.5}
    with pytest.raises(ValueError, match="one split per item"):
        L.split_accuracy([True], [])
    assert np.isclose(L.split_accuracy([False] * 3, ["both"] * 3)["both"], 0.0)


def test_llm_listening_on_a_real_tiny_checkpoint(tmp_path):
    from ichigo_lib import tokens as T
    from ichigo_lib.checkpoints import write_llama_init, write_sound_init
    from ichigo_lib.config import LlamaArch
    from ichigo_lib.wordtok import build_word_tokenizer

    arch = LlamaArch(
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        embed_dim=32,
        intermediate_dim=64,
        max_seq_len=256,
    )
    vocab = ["what", "is", "the", "capital", "of", "Larlor", "Keta", "?", "Vazelro", "red"]
    base = write_llama_init(arch, build_word_tokenizer(vocab), tmp_path / "base", seed=0)
    write_sound_init(base, tmp_path / "init")
    model = tmp_path / "init"

    def row(codes, question, answer):
        turn = T.audio_turn(np.array(codes))
        chat = [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
        return {"conversations": chat, "question": question, "source": 0}

    transcribe = row([9, 9], "Keta", "Keta")
    transcribe["conversations"][0]["content"] = "Transcribe.\n" + T.audio_turn(np.array([9]))
    pool = [transcribe, row([1, 2, 3], "What is the capital of Keta?", "Vazelro")] * 3
    seen = L.spoken_questions(pool, 2)
    assert len(seen) == 2 and all(r["question"].startswith("What") for r in seen)
    heldout = [row([4, 5, 6, 7], "What is the capital of Larlor?", "red")] * 3
    causes = [{**heldout[0], "split": "voice"}, {**seen[0], "split": "phrasing"}]
    out = L.llm_listening(model, heldout, seen, ["Larlor", "Keta"], causes, max_new_tokens=4)
    assert out["speech_qa_seen_items"] == 2 and 0.0 <= out["speech_qa_accuracy_seen"] <= 1.0
    assert out["speech_qa_accuracy_phrasing"] == out["speech_qa_accuracy_seen"]  # same rows
    assert 0.0 <= out["speech_qa_accuracy_voice"] <= 1.0
    assert 0.0 <= out["llm_entity_recall"] <= 1.0 and len(out["_transcripts"]) == 3
    assert 0.0 <= out["text_qa_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="need seen and held-out rows"):
        L.llm_listening(model, heldout, [], ["Larlor"])
    bad = {"conversations": [{"role": "user", "content": "no audio"}], "question": "?", "source": 9}
    with pytest.raises(ValueError, match="row 9: no"):
        L.llm_listening(model, [bad], seen, ["Larlor", "Keta"])


def test_llm_listening_asks_the_heldout_questions_in_text_too(monkeypatch):
    """``text_qa_accuracy``: the held-out questions as text, scored apart from every spoken
    rung (a model that knows the answer in text but not from speech scores 1 and 0)."""
    from ichigo_lib import tokens as T
    from ichigo_lib.evaluate import replies

    def fake(model_dir, prompts, max_new_tokens=24, **_):
        said = []
        for p in prompts:
            text = p[0]["content"]
            said.append("Keta" if T.SOUND_START in text else "red")
        return said

    monkeypatch.setattr(replies, "generate_replies", fake)
    turn = T.audio_turn(np.array([1, 2]))
    heldout = [
        {
            "conversations": [
                {"role": "user", "content": turn},
                {"role": "assistant", "content": "red"},
            ],
            "question": "What colour is the flag of Keta?",
            "source": i,
        }
        for i in range(4)
    ]
    out = L.llm_listening("unused", heldout, heldout[:2], ["Keta"])
    assert out["text_qa_accuracy"] == 1.0
    assert out["speech_qa_accuracy_seen"] == 0.0 and out["llm_entity_recall"] == 1.0
