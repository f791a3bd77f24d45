"""Text -> speech -> sound tokens: the per-row work of the synthetic-data pipeline.

Three paths share one interface, :class:`SpeechTokenizer` (``tokens(text, lang, voice)`` ->
WhisperVQ codes):

* **audio** (upstream's): a TTS backend speaks the text (espeak-ng on CPU, WhisperSpeech's
  T2S + S2A + Vocos on GPU, 24 kHz), the clip is resampled to 16 kHz and WhisperVQ-encoded;
* **stand_in** (the listening control, :mod:`ichigo_lib.data.stand_in`): each word a fixed
  pseudo-random run of codes, no audio at all; it applies to every row, held-out ones too.
* **t2s** (how upstream made its v0.3 instruction tokens): WhisperSpeech's T2S model emits the
  semantic tokens of the text directly (greedy, ``cps`` 15), skipping S2A, the vocoder and
  Whisper. Its tokens are only as good as the T2S model; :func:`agreement` measures them against
  the audio path on the same texts. The path applies to training rows only: held-out rows
  (``use`` ``eval_*``) always go through real audio, since the model is judged on speech.

:func:`init_worker` builds one :class:`SpeechTokenizer` per pipeline worker process and
:func:`speak_row` / :func:`speak_conversation` are the ``process`` functions handed to
:func:`ichigo_lib.data.pipeline.run_pipeline`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ichigo_lib import tokens as T
from ichigo_lib.data.stand_in import stand_in_codes
from ichigo_lib.speech import audio as A
from ichigo_lib.speech import tts
from ichigo_lib.speech.metrics import edit_distance

WHISPERSPEECH_RATE = 24_000  # Vocos output rate
BACKENDS = ("espeak", "whisperspeech")
PATHS = ("audio", "t2s", "stand_in")


def check_path(path: str, backend: str) -> None:
    """Refuse an unknown path, or T2S on a backend without a T2S model."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "t2s" and backend != "whisperspeech":
        raise ValueError("the t2s path needs backend 'whisperspeech' (espeak has no T2S model)")


@dataclass(frozen=True)
class SynthSpec:
    """What a worker needs to turn text into tokens (picklable: it travels to each worker)."""

    quantizer: str  # WhisperVQ file (see ``load_whispervq``)
    backend: str = "espeak"  # espeak | whisperspeech
    path: str = "audio"  # audio | t2s | stand_in (see row_path for held-out rows)
    device: str = "cpu"
    whisper: str | None = None
    whisper_root: str | None = None
    t2s_model: str | None = None  # WhisperSpeech refs ("repo:file"); None = its defaults
    s2a_model: str | None = None
    cps: float = 15.0  # characters per second asked of WhisperSpeech's T2S

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_path(self.path, self.backend)


def voice_dict(voice: tts.Voice) -> dict[str, Any]:
    return asdict(voice)


def voice_of(row: Mapping[str, Any]) -> tts.Voice:
    v = row["voice"]
    return tts.Voice(v["lang"], v["name"], v["variant"], int(v["speed"]), int(v["pitch"]))


@dataclass
class StageTimes:
    """Wall seconds per stage and audio seconds produced, summed over the rows of a worker."""

    tts: float = 0.0
    resample: float = 0.0
    encode: float = 0.0
    audio_seconds: float = 0.0
    rows: int = 0


class SpeechTokenizer:
    """Text -> sound tokens through the configured backend and path (one per worker)."""

    def __init__(self, spec: SynthSpec):
        self.spec = spec
        self.times = StageTimes()
        self._vq = None  # WhisperVQ (and its Whisper encoder), loaded on first audio row
        self._pipe = None  # WhisperSpeech pipeline, loaded on first use

    @property
    def vq(self):
        from ichigo_lib.speech.whispervq import load_whispervq

        if self._vq is None:
            spec = self.spec
            self._vq = load_whispervq(spec.quantizer, spec.whisper, spec.whisper_root, spec.device)
        return self._vq

    # -- the WhisperSpeech models (full profile, GPU) ------------------------------------------
    def _whisperspeech(self):
        if self._pipe is None:
            try:
                from whisperspeech.pipeline import Pipeline
            except ImportError as err:
                raise ImportError(
                    "backend 'whisperspeech' needs WhisperSpeech and its GPU dependencies "
                    "(torchaudio, speechbrain, vocos): pip install whisperspeech"
                ) from err
            kwargs = {"device": self.spec.device}
            if self.spec.t2s_model:
                kwargs["t2s_ref"] = self.spec.t2s_model
            if self.spec.s2a_model:
                kwargs["s2a_ref"] = self.spec.s2a_model
            self._pipe = Pipeline(**kwargs)
        return self._pipe

    def speak(self, text: str, lang: str, voice: tts.Voice | None) -> np.ndarray:
        """16 kHz mono samples of ``text`` (``voice`` is espeak-ng's; WhisperSpeech uses its
        default speaker)."""
        start = time.perf_counter()
        if self.spec.backend == "espeak":
            if voice is None:
                raise ValueError(f"backend 'espeak' needs a voice for {text!r}")
            samples, rate = tts.espeak_raw(text, voice)
            mid = time.perf_counter()
            clip = tts.to_16k(samples, rate, text, voice)
            self.times.tts += mid - start
            self.times.resample += time.perf_counter() - mid
            return clip
        wav = self._whisperspeech().generate(text, lang=lang, cps=self.spec.cps)
        wav = np.asarray(wav.float().cpu().numpy() if hasattr(wav, "cpu") else wav).reshape(-1)
        mid = time.perf_counter()
        self.times.tts += mid - start
        clip = A.prepare_audio(wav, WHISPERSPEECH_RATE, name=f"WhisperSpeech {text!r}")
        self.times.resample += time.perf_counter() - mid
        return clip

    def tokens(
        self, text: str, lang: str, voice: tts.Voice | None = None, path: str | None = None
    ) -> np.ndarray:
        """WhisperVQ codes (int64) of ``text`` spoken in ``lang``, through ``path`` (default: the
        spec's)."""
        path = path or self.spec.path
        check_path(path, self.spec.backend)
        if path == "stand_in":
            codes = stand_in_codes(text, key=repr(voice))
            self.times.audio_seconds += len(codes) / A.TOKENS_PER_SECOND
            self.times.rows += 1
            return codes
        if path == "t2s":
            start = time.perf_counter()
            toks = self._whisperspeech().t2s.generate(
                text, cps=self.spec.cps, lang=lang, show_progress_bar=False
            )[0]
            self.times.tts += time.perf_counter() - start
            codes = np.asarray(toks.cpu().numpy(), dtype=np.int64)
            self.times.audio_seconds += len(codes) / A.TOKENS_PER_SECOND
            self.times.rows += 1
            return codes
        clip = self.speak(text, lang, voice)
        start = time.perf_counter()
        codes = self.vq.encode([clip], batch_size=1, names=[repr(text)])[0]
        self.times.encode += time.perf_counter() - start
        self.times.audio_seconds += len(clip) / A.SAMPLE_RATE
        self.times.rows += 1
        return codes


def init_worker(**spec: Any) -> SpeechTokenizer:
    """Pipeline ``init``: one tokenizer (and one WhisperVQ) per worker process."""
    return SpeechTokenizer(SynthSpec(**spec))


MAX_TEXT_CHARS = 1000  # ~60 s of speech: longer texts are rejected (logged), not spoken


def check_row_text(row: Mapping[str, Any], max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Pipeline ``validate``: the reason a row's text cannot be spoken, or None."""
    texts = [row["text"]] if "text" in row else [m["content"] for m in _user_turns(row)]
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            return "empty text"
        if len(text) > max_chars:
            return f"over-long text ({len(text)} > {max_chars} characters)"
    return None


def row_path(row: Mapping[str, Any], spec: SynthSpec) -> str:
    """The path a row takes: held-out rows (``use`` ``eval_*``) are real audio on the T2S path
    (the model is judged on speech); the control's stand-in codes stand in everywhere."""
    held_out = str(row.get("use", "")).startswith("eval_")
    return "audio" if held_out and spec.path == "t2s" else spec.path


def speak_row(row: Mapping[str, Any], state: SpeechTokenizer) -> dict[str, Any]:
    """``{text, lang, voice, use}`` -> ``{tokens}`` (single-turn output)."""
    voice = voice_of(row) if row.get("voice") else None
    path = row_path(row, state.spec)
    return {"tokens": state.tokens(row["text"], row["lang"], voice, path).tolist()}


def _user_turns(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [m for m in row["conversations"] if m["role"] == "user"]


def speak_conversation(row: Mapping[str, Any], state: SpeechTokenizer) -> dict[str, Any]:
    """``{conversations, lang, voice}`` -> ``{conversations}`` with every user turn replaced by its
    audio turn (``<|sound_start|>`` codes ``<|sound_end|>``); the whole chat in one voice."""
    voice = voice_of(row) if row.get("voice") else None
    out = []
    for message in row["conversations"]:
        content = message["content"]
        if message["role"] == "user":
            content = T.audio_turn(state.tokens(content, row["lang"], voice))
        out.append({"role": message["role"], "content": content})
    return {"conversations": out}


def agreement(audio_codes: Sequence[Sequence[int]], t2s_codes: Sequence[Sequence[int]]) -> dict:
    """How far T2S-direct tokens are from audio-path tokens of the same texts.

    ``mean_edit_distance`` (normalised, 0 = identical; unrelated speech scores ~0.95),
    ``length_ratio`` (T2S length / audio length, mean) and ``agreement`` = 1 - distance.
    """
    if len(audio_codes) != len(t2s_codes) or not audio_codes:
        raise ValueError(f"{len(audio_codes)} audio-path and {len(t2s_codes)} T2S token lists")
    dist = [edit_distance(a, b) for a, b in zip(audio_codes, t2s_codes, strict=True)]
    ratio = [len(b) / max(1, len(a)) for a, b in zip(audio_codes, t2s_codes, strict=True)]
    return {
        "mean_edit_distance": float(np.mean(dist)),
        "agreement": float(1 - np.mean(dist)),
        "length_ratio": float(np.mean(ratio)),
        "rows": len(dist),
    }
