"""Word error rate of transcriptions (jiwer) on normalised text.

Two normalisations: :func:`normalise` for the tiny world's eight languages, and
:func:`audiobench_normalise`, AudioBench's English one, for LibriSpeech (:func:`audiobench_wer`).

``normalise``: Unicode NFKC, lowercase, every character that is not a letter, combining mark,
digit or apostrophe becomes a space (so ``well-known`` is two words), apostrophes survive only
inside words (``don't`` stays, ``'quoted'`` loses them), whitespace is collapsed.

WER is corpus-level: total edits over total reference words, jiwer 4's definition. A reference
that is empty after normalisation adds no words; its hypothesis words count as insertions. If
no reference has any words, jiwer reports the number of inserted words (0.0 when the
hypotheses are empty too).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache

import jiwer

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})

# AudioBench's preprocess_text_asr (src/dataset_src/text_normalizer/preprocess_text.py): after
# Whisper's normaliser it spells out bare numbers up to 20 and the tens, expands contractions,
# drops bracketed text, applies four jiwer transforms and removes fillers.
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
_TEENS = "fifteen sixteen seventeen eighteen nineteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = {str(i): w for i, w in enumerate(f"{_ONES} {_TEENS}".split())} | {
    str(10 * i): w for i, w in enumerate(_TENS.split(), start=2)
}
_CONTRACTIONS = {
    "i'm": "i am",
    "you're": "you are",
    "he's": "he is",
    "she's": "she is",
    "it's": "it is",
    "we're": "we are",
    "they're": "they are",
    "i've": "i have",
    "you've": "you have",
    "we've": "we have",
    "they've": "they have",
    "isn't": "is not",
    "aren't": "are not",
    "wasn't": "was not",
    "weren't": "were not",
    "hasn't": "has not",
    "haven't": "have not",
    "hadn't": "had not",
    "doesn't": "does not",
    "don't": "do not",
    "didn't": "did not",
    "that's": "that is",
}
_BRACKETED = re.compile(r"(\[|\(|\{|\<)[^\(\)\\n\[\]]*(\]|\)|\}|\>)")
_FILLERS = re.compile(r"\b(uh|umm|um|er|ah)\b")
_JIWER = jiwer.Compose(
    [
        jiwer.RemoveMultipleSpaces(),
        jiwer.ExpandCommonEnglishContractions(),
        jiwer.RemoveKaldiNonWords(),
        jiwer.RemovePunctuation(),
    ]
)


def normalise(text: str) -> str:
    """Lowercase, NFKC, punctuation-free, single-spaced ``text`` (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    kept = "".join(c if c == "'" or unicodedata.category(c)[0] in "LMN" else " " for c in text)
    return " ".join(word for word in (w.strip("'") for w in kept.split()) if word)


@cache
def _whisper_english():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def audiobench_normalise(text: str) -> str:
    """AudioBench's English ASR normalisation: lowercase, Whisper's ``EnglishTextNormalizer``
    (spelling, numbers to digits, ``mr`` -> ``mister``, ...), numbers up to 20 and the tens as
    words, common contractions expanded, ``[...]``/``(...)``/``{...}``/``<...>`` removed,
    jiwer's space/contraction/Kaldi-non-word/punctuation transforms, fillers (uh, um, umm, er,
    ah) removed."""
    text = _whisper_english()(text.lower())
    for number, word in _NUMBER_WORDS.items():
        text = re.sub(rf"\b{number}\b", word, text)
    for contraction, expanded in _CONTRACTIONS.items():
        text = re.sub(rf"\b{contraction}\b", expanded, text)
    text = _JIWER(_BRACKETED.sub("", text))
    return _FILLERS.sub("", text).strip()


def audiobench_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER after :func:`audiobench_normalise`, as AudioBench scores LibriSpeech: a side
    left empty by the normalisation is the word ``empty``."""
    _check(references, hypotheses)
    refs = [audiobench_normalise(r) or "empty" for r in references]
    hyps = [audiobench_normalise(h) or "empty" for h in hypotheses]
    return float(jiwer.wer(refs, hyps))


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: need one each"
        )
    if not references:
        raise ValueError("no references: WER needs at least one reference/hypothesis pair")


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER of ``hypotheses`` against ``references`` after ``normalise``."""
    _check(references, hypotheses)
    return float(jiwer.wer([normalise(r) for r in references], [normalise(h) for h in hypotheses]))


def wer_by_group(
    references: Sequence[str], hypotheses: Sequence[str], groups: Sequence[str]
) -> dict[str, float]:
    """Corpus WER within each group (e.g. language), keyed by group name in sorted order."""
    _check(references, hypotheses)
    if len(groups) != len(references):
        raise ValueError(f"{len(groups)} group labels for {len(references)} references")
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    return {
        group: wer([references[i] for i in idx], [hypotheses[i] for i in idx])
        for group, idx in sorted(members.items())
    }


def entity_recall(
    questions: Sequence[str], transcripts: Sequence[str], entities: Sequence[str]
) -> float:
    """Fraction of ``questions`` whose entity also appears, as a whole word, in its transcript.

    Each question must name exactly one of ``entities`` (e.g. the tiny world's countries); both
    sides are compared after :func:`normalise`, so case, punctuation and a possessive ``'s`` do
    not matter. It measures how much of what a question is *about* survives a tokenizer.
    """
    _check(questions, transcripts)
    hits = 0
    for i, (question, transcript) in enumerate(zip(questions, transcripts, strict=True)):
        found = named(question, entities)
        if len(found) != 1:
            raise ValueError(
                f"question {i} ({question!r}) names {len(found)} of the entities {found}; "
                "need exactly one"
            )
        hits += bool(named(transcript, found))
    return hits / len(questions)


def named(text: str, entities: Sequence[str]) -> list[str]:
    """The ``entities`` that ``text`` names as whole words, both sides :func:`normalise`d (one
    per normalised form, the first given)."""
    words = normalise(text)
    forms: dict[str, str] = {}
    for e in entities:
        forms.setdefault(normalise(e), e)
    forms.pop("", None)
    return [e for n, e in forms.items() if re.search(rf"\b{re.escape(n)}\b", words)]
