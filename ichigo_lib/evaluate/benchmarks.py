"""The paper's speech benchmarks, read from the hub or a local copy in the same schema.

* AudioBench's spoken instructions, OpenHermes-Audio and ALPACA-Audio: ``context`` (the audio),
  ``speech_instruction`` (what it says, shown to the judge as the question) and ``answer`` (the
  reference); the model hears the audio alone, as one audio turn.
* LibriSpeech test-clean as AudioBench serves it: ``context`` (audio) and ``answer`` (the
  transcript); the model is asked with one of the eight transcription prompts and scored by
  corpus WER after AudioBench's normalisation.

Audio comes decoded (``{array, sampling_rate}``) or as a ``datasets.Audio`` column (``{bytes,
path}``, decoded here with soundfile); every clip goes through
:func:`~ichigo_lib.speech.audio.prepare_audio` (resampled to 16 kHz, empty or silent audio
rejected). A row that does not fit is an error naming the dataset, the row and the column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichigo_lib import tokens as T
from ichigo_lib.errors import IchigoError
from ichigo_lib.evaluate import judge as J
from ichigo_lib.evaluate.wer import audiobench_wer

AUDIOBENCH = {"openhermes": "OpenHermes-Audio", "alpaca": "ALPACA-Audio"}
LIBRISPEECH = "LibriSpeech test-clean"
AUDIO, INSTRUCTION, ANSWER = "context", "speech_instruction", "answer"

Chats = list[list[dict[str, str]]]
Encode = Callable[[list[np.ndarray]], list[np.ndarray]]  # 16 kHz clips -> WhisperVQ codes
Generate = Callable[[Chats], list[str]]  # chats -> the model's greedy replies


class BenchmarkDataError(IchigoError, ValueError):
    """A benchmark dataset that does not have the expected schema; names dataset, row, column."""


@dataclass(frozen=True)
class SpokenSet:
    """One benchmark's rows: 16 kHz clips, the references, and (AudioBench) the instructions."""

    name: str
    source: str
    clips: list[np.ndarray]
    references: list[str]
    instructions: list[str] | None = None


def load_spoken_set(
    name: str, source: str, split: str, limit: int | None, instructions: bool = False
) -> SpokenSet:
    """The first ``limit`` rows (all when None) of ``split`` of ``source``, a hub id or a local
    copy; ``instructions``: the rows also carry ``speech_instruction`` (AudioBench's sets)."""
    import datasets

    from ichigo_lib.data.hub import load_published

    ds = load_published(source, split)
    what = f"{name} ({source})"
    required = [AUDIO, *([INSTRUCTION] if instructions else []), ANSWER]
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise BenchmarkDataError(
            f"{what}: no column {missing}; expected {required}, found {sorted(ds.column_names)}"
        )
    if isinstance(ds.features[AUDIO], datasets.Audio):
        ds = ds.cast_column(AUDIO, datasets.Audio(decode=False))  # bytes, decoded below
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise BenchmarkDataError(f"{what}: split '{split}' has no rows")
    clips, references, said = [], [], []
    for i, row in enumerate(ds.select(range(n))):
        where = f"{what} row {i}"
        clips.append(_clip(row[AUDIO], f"{where} column '{AUDIO}'"))
        references.append(_text(row[ANSWER], f"{where} column '{ANSWER}'"))
        if instructions:
            said.append(_text(row[INSTRUCTION], f"{where} column '{INSTRUCTION}'"))
    return SpokenSet(name, source, clips, references, said if instructions else None)


def _clip(value: Any, where: str) -> np.ndarray:
    from ichigo_lib.evaluate.demo import wav_from_bytes
    from ichigo_lib.speech.audio import prepare_audio

    if not isinstance(value, dict):
        raise BenchmarkDataError(
            f"{where}: expected audio ({{array, sampling_rate}} or {{bytes, path}}), "
            f"got {type(value).__name__}"
        )
    if value.get("array") is not None:
        if value.get("sampling_rate") is None:
            raise BenchmarkDataError(f"{where}: audio 'array' without a 'sampling_rate'")
        samples = np.asarray(value["array"], dtype=np.float32)
        return prepare_audio(samples, int(value["sampling_rate"]), name=where)
    if value.get("bytes"):
        return wav_from_bytes(value["bytes"], where)
    if value.get("path") and Path(value["path"]).is_file():
        return wav_from_bytes(Path(value["path"]).read_bytes(), where)
    raise BenchmarkDataError(
        f"{where}: audio has neither 'array' and 'sampling_rate' nor 'bytes' or a readable "
        f"'path' (keys {sorted(value)})"
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkDataError(f"{where}: expected non-empty text, got {value!r}")
    return value


def speech_instructions(
    spoken: SpokenSet, encode: Encode, generate: Generate, judge: J.Judge, samples: int = 5
) -> dict[str, Any]:
    """The model's answers to the spoken instructions (audio only), rated by ``judge`` against
    the references; failed or unparsed judgements score 0 and count (``J.summarise``)."""
    if spoken.instructions is None:
        raise ValueError(f"{spoken.name}: loaded without its instructions")
    chats = [[{"role": "user", "content": T.audio_turn(codes)}] for codes in encode(spoken.clips)]
    said = generate(chats)
    results = judge.score(spoken.instructions, said, spoken.references)
    rows = zip(spoken.instructions, spoken.references, said, results, strict=True)
    return {
        "name": spoken.name,
        "source": spoken.source,
        **J.summarise(results),
        "failed_items": [
            {"item": i, "reason": r.failure or J.NO_RATING, "detail": r.raw}
            for i, r in enumerate(results)
            if r.rating is None
        ],
        "samples": [
            {"instruction": q, "reference": ref, "reply": s, "rating": r.rating, "judge": r.raw}
            for q, ref, s, r in list(rows)[:samples]
        ],
    }


def transcription(
    spoken: SpokenSet, encode: Encode, generate: Generate, prompt: str, samples: int = 5
) -> dict[str, Any]:
    """Corpus WER (AudioBench's normalisation) of the model's transcripts, asked with
    ``prompt`` followed by the audio turn."""
    chats = [
        [{"role": "user", "content": f"{prompt}\n{T.audio_turn(codes)}"}]
        for codes in encode(spoken.clips)
    ]
    heard = generate(chats)
    return {
        "name": spoken.name,
        "source": spoken.source,
        "items": len(heard),
        "prompt": prompt,
        "wer": audiobench_wer(spoken.references, heard),
        "samples": [
            {"reference": r, "transcript": h}
            for r, h in list(zip(spoken.references, heard, strict=True))[:samples]
        ],
    }
