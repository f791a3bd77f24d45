"""Audio front end: decode files, mix down to mono, resample to 16 kHz, Whisper's log-mel.

Everything that reaches the quantizer goes through :func:`load_audio` (files) or
:func:`prepare_audio` (arrays), which reject what would silently produce garbage tokens:
undecodable, empty, non-finite or all-silent audio, each named in the error.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from ichigo_lib.errors import IchigoError

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160  # 10 ms: 100 mel frames per second
N_MELS = 80
WINDOW_SECONDS = 30  # Whisper's context: 3000 mel frames, 1500 encoder frames
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
MEL_PAD_VALUE = -1.5  # what WhisperVQ pads short log-mels with
SUPPORTED_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
SILENCE_PEAK = 1e-4  # a peak below this (about -80 dBFS) counts as silence


class AudioError(IchigoError, ValueError):
    """Audio that cannot be turned into sound tokens; the message names the source."""


def prepare_audio(
    samples: np.ndarray, sample_rate: int, name: str = "<array>", min_seconds: float = 0.05
) -> np.ndarray:
    """Float32 mono 16 kHz copy of ``samples`` (shape (n,) or (n, channels)), validated.

    Stereo is averaged, other rates are resampled (soxr, high quality). Raises
    :class:`AudioError` naming ``name`` for empty, too short, non-finite or silent audio.
    """
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioError(f"{name}: expected (samples,) or (samples, channels), got {x.shape}")
    if sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate}")
    if x.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if sample_rate != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if x.size < min_seconds * SAMPLE_RATE:
        raise AudioError(
            f"{name}: audio is {x.size / SAMPLE_RATE:.3f} s, shorter than {min_seconds} s"
        )
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak amplitude {peak:.2e})")
    return np.ascontiguousarray(x)


def load_audio(path: str | Path) -> np.ndarray:
    """Decode a wav/flac/mp3/ogg file to float32 mono 16 kHz samples (see :func:`prepare_audio`)."""
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise AudioError(
            f"{path}: unsupported audio format {path.suffix!r}; use one of {SUPPORTED_SUFFIXES}"
        )
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    import soundfile

    try:  # libsndfile >= 1.1 (soundfile's wheels) decodes all four formats, mp3 included
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    return prepare_audio(samples, int(rate), name=str(path))


@cache
def _mel_filters(device: str) -> torch.Tensor:
    import librosa

    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)
    return torch.from_numpy(fb).to(device)


@cache
def _window(device: str) -> torch.Tensor:
    return torch.hann_window(N_FFT, device=device)


def log_mel(samples: np.ndarray | torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """Whisper's 80-bin log-mel of one 16 kHz clip: shape (80, len // 160).

    Same numbers as ``whisper.log_mel_spectrogram`` on an unbatched clip: |STFT|^2 (400-point
    Hann, hop 160, last frame dropped), Slaney mel filters, log10 floored at max - 8, then
    (x + 4) / 4.
    """
    audio = torch.as_tensor(samples, dtype=torch.float32, device=device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=_window(device), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    spec = (_mel_filters(device) @ power).clamp(min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0


def pad_mels(
    mels: list[torch.Tensor], width: int | None = None, value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch (n, 80, width), valid frames per clip) of log-mels padded with ``value``;
    ``width`` defaults to the longest clip."""
    device = mels[0].device
    frames = torch.tensor([m.shape[-1] for m in mels], device=device)
    width = width or int(frames.max())
    batch = torch.full((len(mels), mels[0].shape[0], width), value, device=device)
    for i, m in enumerate(mels):
        batch[i, :, : m.shape[-1]] = m
    return batch, frames


SAMPLES_PER_TOKEN = 4 * HOP_LENGTH
TOKENS_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_TOKEN  # 25 WhisperVQ codes per second


def windows(samples: np.ndarray) -> list[np.ndarray]:
    """Split a clip into consecutive 30 s windows, the last one shorter, never dropping audio.

    Encoding each window and concatenating gives ``len(samples) // 640`` tokens in all, as
    one long window would; a final piece shorter than one token (40 ms) is left out because
    it produces no token.
    """
    pieces = [samples[a : a + WINDOW_SAMPLES] for a in range(0, len(samples), WINDOW_SAMPLES)]
    return [p for p in pieces if len(p) >= SAMPLES_PER_TOKEN] or pieces[:1]
