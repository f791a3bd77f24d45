"""The listening ladder: where, between the audio and the answer, a spoken question is lost.

Rung by rung (notebooks 01, 04 and 05 report them):

* the tokens: :func:`country_probe_accuracy`, a fixed classifier that names the country of a
  spoken question from its codes alone, fitted only on training questions' codes; it measures
  the tokens, not a model that listens (the quantizer's own decoder: ``wer.entity_recall``);
* the LLM: exact answers to training questions it was trained on (does it fit?) and to held-out
  questions split by cause, :func:`split_accuracy`; the entity recall of its own transcripts.

The probe is a nearest centroid (cosine) over L2-normalised tf-idf vectors of code unigrams and
bigrams with consecutive repeats collapsed: cheap, deterministic, and blind to order beyond
pairs, so a name whose codes recur across voices and contexts is found and one whose codes vary
is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ichigo_lib.speech.metrics import dedup


def _features(codes: Sequence[int]) -> list[str]:
    units = [str(c) for c in dedup(codes)]
    return units + [f"{a}_{b}" for a, b in zip(units, units[1:], strict=False)]


class CountryProbe:
    """Names the label (a country) of a code sequence; fit once on training codes."""

    def __init__(self, codes: Sequence[Sequence[int]], labels: Sequence[str]) -> None:
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import normalize

        if len(codes) != len(labels) or not codes:
            raise ValueError(f"need one label per sequence, got {len(codes)} and {len(labels)}")
        self.labels = sorted(set(labels))
        if len(self.labels) < 2:
            raise ValueError("the probe needs at least two distinct labels")
        self.vectorizer = TfidfVectorizer(analyzer=_features, sublinear_tf=True)
        features = self.vectorizer.fit_transform(codes)  # rows L2-normalised
        index = {label: i for i, label in enumerate(self.labels)}
        members = sparse.csr_matrix(
            (np.ones(len(labels)), ([index[x] for x in labels], np.arange(len(labels)))),
            shape=(len(self.labels), len(labels)),
        )
        self.centroids = normalize(members @ features)  # one unit vector per label

    def predict(self, codes: Sequence[Sequence[int]]) -> list[str]:
        """The label whose centroid is nearest (cosine) to each sequence's vector."""
        scores = self.vectorizer.transform(codes) @ self.centroids.T
        return [self.labels[i] for i in np.asarray(scores.argmax(axis=1)).ravel()]


def country_probe_accuracy(
    train_codes: Sequence[Sequence[int]],
    train_labels: Sequence[str],
    test_codes: Sequence[Sequence[int]],
    test_labels: Sequence[str],
) -> float:
    """Fraction of ``test_codes`` whose label a :class:`CountryProbe` fitted on the training
    codes names; labels absent from training count as misses."""
    if len(test_codes) != len(test_labels) or not test_codes:
        raise ValueError(
            f"need one label per test sequence, got {len(test_codes)} and {len(test_labels)}"
        )
    predicted = CountryProbe(train_codes, train_labels).predict(test_codes)
    return float(np.mean([p == t for p, t in zip(predicted, test_labels, strict=True)]))


def spoken_country_probe(
    train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]], countries: Sequence[str]
) -> float:
    """:func:`country_probe_accuracy` on ``(user turn, question text)`` pairs: the codes of the
    turn's audio, the country the text names (:func:`country_of`)."""
    from ichigo_lib.data.inaudible import audio_codes

    def codes(pairs):
        found = [audio_codes(turn) for turn, _ in pairs]
        if any(c is None for c in found):
            raise ValueError("every user turn needs an audio turn")
        return found

    def labels(pairs):
        return [country_of(text, countries) for _, text in pairs]

    return country_probe_accuracy(codes(train), labels(train), codes(test), labels(test))


def country_of(question: str, countries: Sequence[str]) -> str:
    """The one country a question names (``wer.named``); an error otherwise."""
    from ichigo_lib.evaluate.wer import named

    found = named(question, countries)
    if len(found) != 1:
        raise ValueError(f"{question!r} names {len(found)} of the countries {found}; need one")
    return found[0]


def named_entity_recall(
    texts: Sequence[str], transcripts: Sequence[str], countries: Sequence[str]
) -> tuple[float | None, int]:
    """``wer.entity_recall`` over the texts that name exactly one country (the others, e.g.
    sentences in other languages, are skipped), and how many there were (None: none)."""
    from ichigo_lib.evaluate.wer import entity_recall, named

    if len(texts) != len(transcripts):
        raise ValueError(f"need one transcript per text, got {len(texts)} and {len(transcripts)}")
    kept = [
        (t, h) for t, h in zip(texts, transcripts, strict=True) if len(named(t, countries)) == 1
    ]
    if not kept:
        return None, 0
    return entity_recall([t for t, _ in kept], [h for _, h in kept], countries), len(kept)


def split_accuracy(correct: Sequence[bool], splits: Sequence[str]) -> dict[str, float]:
    """Exact-answer rate per held-out split (``split`` of each item), e.g. ``voice`` (a seen
    phrasing in a held-out voice), ``phrasing`` (a held-out phrasing in a training voice) and
    ``both``."""
    if len(correct) != len(splits):
        raise ValueError(f"need one split per item, got {len(correct)} and {len(splits)}")
    out: dict[str, list[bool]] = {}
    for ok, split in zip(correct, splits, strict=True):
        out.setdefault(split, []).append(bool(ok))
    return {split: float(np.mean(v)) for split, v in sorted(out.items())}


def llm_listening(
    model_dir,
    heldout: Sequence[dict],
    seen: Sequence[dict],
    countries: Sequence[str],
    causes: Sequence[dict] = (),
    max_new_tokens: int = 24,
) -> dict:
    """What a phase's LLM makes of speech, beside its answers to held-out questions.

    ``seen`` are training rows (``conversations``: the spoken question as trained, the answer):
    ``speech_qa_accuracy_seen`` says whether the model fits what it was taught. ``causes`` rows
    (``conversations``, ``split``) give ``speech_qa_accuracy_<split>`` (:func:`split_accuracy`).
    ``heldout`` rows (``conversations``, ``question``) are asked for a transcript with the first
    transcription prompt: ``llm_entity_recall`` is the fraction whose transcript names the
    question's country; and asked as text: ``text_qa_accuracy``, what the model knows, the
    ceiling of every spoken rung. Returns those metrics and the transcripts under
    ``"_transcripts"``.
    """
    from ichigo_lib.data.prompts import TRANSCRIPTION_PROMPTS
    from ichigo_lib.evaluate import replies
    from ichigo_lib.evaluate.report import with_prompt
    from ichigo_lib.evaluate.wer import entity_recall

    if not seen or not heldout:
        raise ValueError(f"need seen and held-out rows, got {len(seen)} and {len(heldout)}")
    asks = []
    for i, r in enumerate(heldout):
        content = r["conversations"][0]["content"]
        turn = with_prompt(content, TRANSCRIPTION_PROMPTS[0], r.get("source", i))
        asks.append([{"role": "user", "content": turn}])
    questions = [r["question"] for r in heldout]
    # one generation pass for every answer: the spoken rows, then the held-out questions as text
    asked = [*seen, *causes, *heldout]
    prompts = [r["conversations"][:1] for r in [*seen, *causes]]
    prompts += [[{"role": "user", "content": q}] for q in questions]
    said = replies.generate_replies(model_dir, prompts)
    correct = replies.matches([r["conversations"][1]["content"] for r in asked], said)
    splits = ["seen"] * len(seen) + [r["split"] for r in causes] + ["text"] * len(heldout)
    by_split = split_accuracy(correct, splits)
    text_qa = by_split.pop("text")
    transcripts = replies.generate_replies(model_dir, asks, max_new_tokens=max_new_tokens)
    return {
        **{f"speech_qa_accuracy_{split}": value for split, value in by_split.items()},
        "speech_qa_seen_items": len(seen),
        "text_qa_accuracy": text_qa,
        "llm_entity_recall": entity_recall(questions, transcripts, countries),
        "_transcripts": transcripts,
    }


def spoken_questions(rows, n: int) -> list[dict]:
    """The first ``n`` training rows whose user turn is audio alone (spoken instructions: the
    world's ``speech_instruction`` rows, or a published chat dataset's), read lazily."""
    from ichigo_lib import tokens as T

    out = []
    for row in rows:
        content = row["conversations"][0]["content"]
        if content.startswith(T.SOUND_START) and content.rstrip().endswith(T.SOUND_END):
            out.append(row)
            if len(out) == n:
                break
    return out
