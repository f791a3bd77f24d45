"""espeak-ng text-to-speech: the CPU voice of the ``tiny``/``smoke`` profiles.

A :class:`Voice` is an espeak-ng language voice plus a variant (``m1``..``m7``, ``f1``..``f5``),
a speed (words per minute) and a pitch, so one sentence can be spoken many different ways.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ichigo_lib.errors import IchigoError
from ichigo_lib.speech.audio import AudioError, prepare_audio

# espeak-ng language voices for the 8 MLS languages (accents count as extra voices).
ESPEAK_VOICES = {
    "en": ("en-us", "en-gb"),
    "nl": ("nl",),
    "fr": ("fr-fr", "fr-be"),
    "de": ("de",),
    "it": ("it",),
    "pl": ("pl",),
    "pt": ("pt", "pt-br"),
    "es": ("es", "es-419"),
}
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


class TTSError(IchigoError, RuntimeError):
    """espeak-ng is missing or failed; the message names the text and voice."""


@dataclass(frozen=True)
class Voice:
    """One way of speaking: espeak-ng voice + variant, speed (words/min) and pitch (0-99)."""

    lang: str
    name: str
    variant: str = "m3"
    speed: int = 160
    pitch: int = 50

    @property
    def espeak(self) -> str:
        return f"{self.name}+{self.variant}"

    def __str__(self) -> str:
        return f"{self.espeak} {self.speed}wpm p{self.pitch}"


def random_voice(
    lang: str, rng: random.Random, speeds: tuple[int, int] = (130, 190), variants=VARIANTS
) -> Voice:
    """A voice for ``lang`` with random accent, variant, speed and pitch."""
    if lang not in ESPEAK_VOICES:
        raise KeyError(f"no espeak-ng voice for language {lang!r}; have {sorted(ESPEAK_VOICES)}")
    return Voice(
        lang,
        rng.choice(ESPEAK_VOICES[lang]),
        rng.choice(variants),
        rng.randint(*speeds),
        rng.randint(35, 65),
    )


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TTSError("espeak-ng is not installed: apt-get install espeak-ng (make setup does)")
    return exe


def espeak_raw(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """espeak-ng's own output for ``text``: (float32 samples, sample rate, 22.05 kHz)."""
    if not text.strip():
        raise TTSError(f"empty text for voice {voice}")
    cmd = [espeak_binary(), "-v", voice.espeak, "-s", str(voice.speed), "-p", str(voice.pitch)]
    proc = subprocess.run(
        [*cmd, "--stdout", "--stdin"], input=text.encode(), capture_output=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip()
        raise TTSError(f"espeak-ng failed for {text!r} with voice {voice}: {err}")
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="float32")
    return samples, rate


def to_16k(samples: np.ndarray, rate: int, text: str, voice: Voice) -> np.ndarray:
    """Validated 16 kHz mono samples of a synthesized clip (errors name text and voice)."""
    try:
        return prepare_audio(samples, rate, name=f"espeak-ng {voice} {text!r}")
    except AudioError as err:
        raise TTSError(str(err)) from err


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak ``text`` with ``voice``: float32 mono 16 kHz samples."""
    return to_16k(*espeak_raw(text, voice), text, voice)


def synthesize_many(
    texts: Sequence[str], voices: Sequence[Voice], num_workers: int = 2
) -> list[np.ndarray]:
    """Speak each text with its voice, ``num_workers`` espeak-ng processes at a time."""
    if len(texts) != len(voices):
        raise ValueError(f"{len(texts)} texts but {len(voices)} voices")
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        return list(pool.map(synthesize, texts, voices))
