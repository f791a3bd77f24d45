"""The speech the tiny quantizer learns from and is measured on, drawn from the tiny world.

Training: every training sentence of the 8 languages plus English questions the later phases
speak, each in several random espeak-ng voices. Held-out: sentences of the world's held-out
split (no training text is among them), each in two fixed contrasting voices, so the same words
can be compared across voices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ichigo_lib.config import SpeechCorpusConfig
from ichigo_lib.speech.train_vq import Utterance
from ichigo_lib.speech.tts import ESPEAK_VOICES, Voice, random_voice, synthesize_many
from ichigo_lib.world import LANGUAGES, World


@dataclass(frozen=True)
class SpeechText:
    text: str
    lang: str


def tokenizer_texts(
    world: World, cfg: SpeechCorpusConfig
) -> tuple[list[SpeechText], list[SpeechText]]:
    """(training texts, held-out texts); the two share no sentence."""
    heldout_all = {s.text for s in world.sentences if s.split == "heldout"}
    train = [SpeechText(s.text, s.lang) for s in world.sentences if s.split == "train"]
    seen = {t.text for t in train}
    questions = [q.question for q in world.qa if q.split == "train"]
    random.Random(cfg.seed).shuffle(questions)
    extra = [q for q in dict.fromkeys(questions) if q not in seen and q not in heldout_all]
    train += [SpeechText(q, "en") for q in extra[: cfg.extra_english_questions]]
    heldout = []
    for lang in LANGUAGES:
        rows = [s for s in world.sentences if s.split == "heldout" and s.lang == lang]
        heldout += [SpeechText(s.text, lang) for s in rows[: cfg.heldout_per_language]]
    return train, heldout


def heldout_voices(lang: str) -> tuple[Voice, Voice]:
    """The two fixed voices every held-out sentence is spoken in: a low male and a female."""
    name = ESPEAK_VOICES[lang][0]
    return Voice(lang, name, "m3", 160, 40), Voice(lang, name, "f3", 160, 60)


def speak_training(
    texts: Sequence[SpeechText], cfg: SpeechCorpusConfig, num_workers: int
) -> list[Utterance]:
    """Each text in ``voices_per_sentence`` random voices (accent, variant, speed, pitch)."""
    rng = random.Random(cfg.seed)
    jobs = [
        (t, random_voice(t.lang, rng, cfg.speeds))
        for t in texts
        for _ in range(cfg.voices_per_sentence)
    ]
    return _speak(jobs, num_workers)


def speak_heldout(
    texts: Sequence[SpeechText], num_workers: int
) -> tuple[list[Utterance], list[Utterance]]:
    """Each held-out text in both :func:`heldout_voices`: (first-voice, second-voice clips)."""
    jobs = [(t, heldout_voices(t.lang)[k]) for k in (0, 1) for t in texts]
    both = _speak(jobs, num_workers)
    return both[: len(texts)], both[len(texts) :]


def _speak(jobs: list[tuple[SpeechText, Voice]], num_workers: int) -> list[Utterance]:
    clips = synthesize_many([t.text for t, _ in jobs], [v for _, v in jobs], num_workers)
    return [Utterance(t.text, t.lang, str(v), c) for (t, v), c in zip(jobs, clips, strict=True)]
