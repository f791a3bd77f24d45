"""Transcription WER: normalisation, corpus WER, per-group WER, edge cases."""

import pytest

from ichigo_lib.evaluate.wer import entity_recall, normalise, wer, wer_by_group


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        ("Café déjà-vu", "café déjà vu"),
        ("Cafe\u0301", "café"),  # combining accent composed by NFKC
        ("Łódź STRAßE", "łódź straße"),
        ("Don't 'quote' me, students'", "don't quote me students"),
        ("It\u2019s fine", "it's fine"),
        ("Room 101: ５ people", "room 101 5 people"),  # full-width digit folded by NFKC
        ("ﬁne", "fine"),  # ligature
        ("snake_case/path", "snake case path"),
        ("«Привет», мир…", "привет мир"),
        ("?!...", ""),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_wer_counts_edits_over_reference_words_after_normalising():
    assert wer(["Hello, world!"], ["hello world"]) == 0.0
    # one deletion over 3 words + one substitution over 2 words = 2 / 5
    assert wer(["the cat sat", "a dog"], ["the cat", "a frog"]) == pytest.approx(0.4)
    # insertions can push WER above 1
    assert wer(["yes"], ["oh yes yes yes"]) == pytest.approx(3.0)


def test_empty_normalised_reference_counts_its_hypothesis_as_insertions():
    assert wer(["...", "one two"], ["uh", "one two"]) == pytest.approx(0.5)
    assert wer(["", "?"], ["", ""]) == 0.0
    assert wer([""], ["two words"]) == 2.0


def test_wer_by_group_scores_each_group_on_its_own():
    refs = ["un deux", "one two three", "trois", "four"]
    hyps = ["un deux", "one two", "quatre", "four"]
    groups = ["fr", "en", "fr", "en"]
    assert wer_by_group(refs, hyps, groups) == {"en": pytest.approx(0.25), "fr": 1 / 3}
    assert list(wer_by_group(refs, hyps, groups)) == ["en", "fr"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: wer(["a", "b"], ["a"]), "2 references but 1 hypotheses"),
        (lambda: wer([], []), "no references"),
        (lambda: wer_by_group(["a"], ["a"], ["en", "fr"]), "2 group labels for 1 references"),
        (lambda: wer_by_group([], [], []), "no references"),
    ],
)
def test_mismatched_or_empty_inputs_are_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_entity_recall_counts_questions_whose_entity_the_transcript_keeps():
    questions = ["What is Nuren's capital?", "Name the colour of the flag of Paren.", "Mikor?"]
    transcripts = ["what is nuren's capitol", "name the colour of the flag of peren", "MIKOR"]
    assert entity_recall(questions, transcripts, ["Nuren", "Paren", "Mikor", "Nure"]) == 2 / 3
    # a word inside a longer word is not a mention: "Nure" is not found in "Nuren"
    assert entity_recall(["Nure?"], ["nuren"], ["Nuren", "Nure"]) == 0.0


def test_entity_recall_names_a_question_without_exactly_one_entity():
    with pytest.raises(ValueError, match="question 1 .*names 0"):
        entity_recall(["Nuren?", "What?"], ["nuren", "what"], ["Nuren"])
    with pytest.raises(ValueError, match="names 2"):
        entity_recall(["Nuren or Paren?"], ["x"], ["Nuren", "Paren"])
    with pytest.raises(ValueError, match="2 references but 1"):
        entity_recall(["Nuren?", "Paren?"], ["x"], ["Nuren", "Paren"])
