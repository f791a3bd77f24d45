"""Word error rate of transcriptions (jiwer) on normalised text.

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

import jiwer

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})


def normalise(text: str) -> str:
    """Lowercase, NFKC, punctuation-free, single-spaced ``text`` (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    kept = "".join(c if c == "'" or unicodedata.category(c)[0] in "LMN" else " " for c in text)
    return " ".join(word for word in (w.strip("'") for w in kept.split()) if word)


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
    names = {normalise(e) for e in entities} - {""}
    hits = 0
    for i, (question, transcript) in enumerate(zip(questions, transcripts, strict=True)):
        found = [n for n in names if re.search(rf"\b{re.escape(n)}\b", normalise(question))]
        if len(found) != 1:
            raise ValueError(
                f"question {i} ({question!r}) names {len(found)} of the entities {found}; "
                "need exactly one"
            )
        hits += bool(re.search(rf"\b{re.escape(found[0])}\b", normalise(transcript)))
    return hits / len(questions)
