"""Stand-in sound codes: the listening control, speech with the acoustics taken out.

Each word (lower-cased, punctuation dropped) becomes a fixed pseudo-random run of 3 to 6 of the
512 codes, the same in every sentence, language and voice; then each code of an utterance is
replaced by a random one with probability ``noise`` (seeded by the utterance, so two voices of
one sentence differ a little). A pipeline trained and evaluated on such codes should answer
spoken questions about as well as written ones: if it does not, the LLM side, not the sound
tokens, is what fails (``data.path: stand_in``, notebook 02).
"""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np

from ichigo_lib import tokens as T

NOISE = 0.05
_WORD = re.compile(r"\w+")


def word_codes(word: str, codes: int = T.MASK_CODE) -> list[int]:
    """The fixed run of 3-6 codes of ``word`` (case-insensitive; the mask code never)."""
    rng = random.Random(hashlib.sha256(word.lower().encode()).hexdigest())
    return [rng.randrange(codes) for _ in range(rng.randint(3, 6))]


def stand_in_codes(
    text: str, key: str = "", noise: float = NOISE, codes: int = T.MASK_CODE
) -> np.ndarray:
    """The stand-in codes (int64) of ``text``: its words' runs, each code replaced at random
    with probability ``noise``, seeded by ``text`` and ``key`` (e.g. the voice)."""
    words = _WORD.findall(text)
    if not words:
        raise ValueError(f"no word to stand in for in {text!r}")
    rng = random.Random(hashlib.sha256(f"{key}\n{text}".encode()).hexdigest())
    run = [c for w in words for c in word_codes(w, codes)]
    return np.asarray([rng.randrange(codes) if rng.random() < noise else c for c in run], np.int64)
