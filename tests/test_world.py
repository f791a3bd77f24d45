"""The tiny world: deterministic, held-out phrasings kept out of training, well-formed items."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ichigo_lib.world import (
    ANIMALS,
    ATTRIBUTES,
    COLOURS,
    LANGUAGES,
    QUESTIONS,
    World,
    WorldConfig,
    build_world,
    words,
)

ROOT = Path(__file__).resolve().parents[1]
# Record fields holding text (the others hold labels such as "split" or "role").
TEXT_KEYS = {
    "name",
    "capital",
    "flag",
    "animal",
    "country",
    "question",
    "answer",
    "content",
    "text",
}


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig())


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("world")
    return directory, world.save(directory)


def _texts(record) -> list[str]:
    """The text values of a saved record, found at any depth."""
    if isinstance(record, list):
        return [t for item in record for t in _texts(item)]
    if not isinstance(record, dict):
        return []
    out = []
    for key, value in record.items():
        if key in TEXT_KEYS and isinstance(value, str):
            out.append(value)
        elif key == "choices":
            out += value
        else:
            out += _texts(value)
    return out


def test_same_config_saves_byte_identical_files(world, saved, tmp_path):
    directory, digests = saved
    assert build_world(WorldConfig()).save(tmp_path) == digests
    for name in digests:
        assert (tmp_path / name).read_bytes() == (directory / name).read_bytes()


def test_save_is_identical_in_another_process_with_another_hash_seed(saved, tmp_path):
    code = (
        "import json, sys; from ichigo_lib.world import WorldConfig, build_world; "
        "print(json.dumps(build_world(WorldConfig()).save(sys.argv[1])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, check=True
    )
    assert json.loads(out.stdout) == saved[1]


def test_different_seed_gives_a_different_world(world):
    other = build_world(WorldConfig(seed=1))
    assert other.countries != world.countries
    assert other.sentences != world.sentences


def test_default_world_sizes(world):
    n = 240
    assert len(world.countries) == n and len(world.facts) == 4 * n
    assert Counter(q.split for q in world.qa) == {"train": 4 * n * 6, "heldout": 4 * n * 2}
    assert Counter(m.split for m in world.mc) == {"fewshot": 40, "test": 400}
    assert len(world.dialogues) == 600
    user_turns = [len(d.messages) // 2 for d in world.dialogues]
    assert set(user_turns) <= {2, 4, 5, 6}
    assert abs(sum(t == 2 for t in user_turns) / len(user_turns) - 0.9) <= 0.03


def test_heldout_phrasings_never_reach_training_conversations(world):
    trained = {
        m["content"]
        for chat in world.text_conversations("train")
        for m in chat
        if m["role"] == "user"
    }
    heldout = [q for q in world.qa if q.split == "heldout"]
    assert heldout and not any(q.question in trained for q in heldout)
    assert {q.fact for q in world.qa if q.split == "train"} == set(world.facts)
    assert [c[0]["content"] for c in world.text_conversations("heldout")] == [
        q.question for q in heldout
    ]


def test_heldout_phrasings_vary_per_fact_and_one_is_always_trained():
    world = build_world(WorldConfig(num_countries=8, heldout_fraction=0.9))
    held = {f: set() for f in world.facts}
    for q in world.qa:
        if q.split == "heldout":
            held[q.fact].add(q.template)
    assert all(len(t) == len(QUESTIONS[f.attribute]) - 1 for f, t in held.items())
    assert len({frozenset(t) for t in held.values()}) > 1


def test_every_fact_is_stated_in_training(world):
    about = {}  # country -> words of the answers to "tell me about" requests
    for chat in world.text_conversations():
        if chat[0]["content"].startswith(("Tell me about", "What do you know", "Describe")):
            country = words(chat[0]["content"])[-2]
            about.setdefault(country, set()).update(words(chat[1]["content"]))
            assert 2 <= chat[1]["content"].count(".") <= 4
    for fact in world.facts:
        assert fact.answer in about[fact.country]


def test_dialogue_follow_ups_refer_back_to_the_country(world):
    for d in world.dialogues:
        roles = [m["role"] for m in d.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert d.country in d.messages[0]["content"]
        assert all(d.country not in m["content"] for m in d.messages[2::2])
        assert {"it", "its"} & set(words(d.messages[2]["content"]))


def test_mc_items_are_well_formed(world):
    values = {
        "capital": {c.capital for c in world.countries},
        "flag": set(COLOURS["en"]),
        "animal": set(ANIMALS["en"]),
        "rivers": set("123456789"),
    }
    heldout = {q.question for q in world.qa if q.split == "heldout"}
    for item in world.mc:
        assert len(set(item.choices)) == 4
        assert item.choices[item.label] == item.fact.answer
        assert set(item.choices) <= values[item.fact.attribute]
        assert item.question in heldout
    labels = Counter(item.label for item in world.mc)
    assert len(labels) == 4 and min(labels.values()) > len(world.mc) / 8
    fewshot = {i.fact for i in world.mc if i.split == "fewshot"}
    test = {i.fact for i in world.mc if i.split == "test"}
    assert not fewshot & test
    assert Counter(f.attribute for f in fewshot) == {a: 10 for a in ATTRIBUTES}


def test_sentences_cover_eight_languages_with_disjoint_heldout(world):
    for lang in LANGUAGES:
        texts = {
            s: [x.text for x in world.sentences if x.lang == lang and x.split == s]
            for s in ("train", "heldout")
        }
        assert len(texts["train"]) == 300 and len(texts["heldout"]) == 100
        assert not set(texts["train"]) & set(texts["heldout"])
        assert all(4 <= len(t.split()) <= 12 for t in texts["train"] + texts["heldout"])
    for lang in ("fr", "de", "pl", "es"):
        assert any(
            ch.isalpha() and not ch.isascii()
            for s in world.sentences
            if s.lang == lang
            for ch in s.text
        ), lang
    english = {s.text for s in world.sentences if s.lang == "en"}
    assert english & {q.question for q in world.qa}


def test_answers_and_names_are_single_distinct_words(world):
    names = [n for c in world.countries for n in (c.name, c.capital)]
    assert len({n.lower() for n in names}) == len(names)
    assert all(words(n) == [n] and n.isalpha() and n[0].isupper() for n in names)
    assert all(len(words(f.answer)) == 1 for f in world.facts)
    assert all(q.answer == q.fact.answer for q in world.qa)
    lowered = {n.lower() for n in names}
    assert not lowered & {w.lower() for w in world.vocabulary() if w not in names}


def test_vocabulary_contains_every_saved_word(world, saved):
    directory, digests = saved
    vocabulary = set(world.vocabulary())
    for name in digests:
        for line in (directory / name).read_text("utf-8").splitlines():
            for text in _texts(json.loads(line)):
                assert set(words(text)) <= vocabulary, (name, text)
    assert len(vocabulary) < 2500


def test_save_load_round_trip(world, saved):
    loaded = World.load(saved[0])
    assert loaded == world
    assert loaded.text_conversations() == world.text_conversations()


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_countries", 7),
        ("num_countries", 10**6),
        ("heldout_fraction", -0.1),
        ("heldout_fraction", 0.95),
        ("mc_fewshot", -1),
        ("mc_test_items", -1),
        ("num_dialogues", -1),
        ("sentences_per_language", -1),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**{field: value})


def test_trained_questions_are_asked_alone_and_in_quizzes_of_up_to_seven_turns(world):
    pairs = [
        (c[i]["content"], c[i + 1]["content"])
        for c in world.text_conversations()
        for i in range(0, len(c), 2)
        if c[i + 1]["content"] in {f.answer for f in world.facts}
    ]
    trained = [(q.question, q.answer) for q in world.qa if q.split == "train"]
    quiz_pairs = [p for p in pairs if p in set(trained)]
    assert sorted(set(quiz_pairs)) == sorted(set(trained))
    turns = [
        len(c) // 2
        for c in world.text_conversations()
        if c[0]["content"] in {q for q, _ in trained}
    ]
    assert max(turns) == 7 and min(turns) == 1
