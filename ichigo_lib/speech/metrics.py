"""How good a speech tokenizer is: code usage, token rate, voice (in)dependence, baselines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ichigo_lib.speech import audio as A


def codebook_usage(codes: Sequence[np.ndarray], vq_codes: int = 512) -> float:
    """Fraction of the ``vq_codes`` real codes that occur at least once."""
    used = np.unique(np.concatenate(codes))
    return float(np.count_nonzero(used < vq_codes)) / vq_codes


def code_perplexity(codes: Sequence[np.ndarray], vq_codes: int = 513) -> float:
    """exp(entropy) of the code distribution: the number of equally used codes it amounts to."""
    counts = np.bincount(np.concatenate(codes), minlength=vq_codes).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def tokens_per_second(codes: Sequence[np.ndarray], clips: Sequence[np.ndarray]) -> float:
    return sum(len(c) for c in codes) / (sum(len(x) for x in clips) / A.SAMPLE_RATE)


def edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Levenshtein distance of two code sequences divided by the longer length (0 = same)."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(list(a), list(b)))


def dedup(codes: Sequence[int]) -> np.ndarray:
    """``codes`` with each run of a repeated code collapsed to one (GSLM-style deduplication)."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return codes
    keep = np.concatenate([[True], codes[1:] != codes[:-1]])
    return codes[keep]


def pair_distance(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> float:
    """Mean normalised edit distance of aligned pairs (e.g. the same sentence, two voices)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"need two equal non-empty lists, got {len(first)} and {len(second)}")
    return float(np.mean([edit_distance(a, b) for a, b in zip(first, second, strict=True)]))


def random_pair_distance(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> float:
    """The same measure on mismatched pairs (sentence i vs i + 1): what "unrelated" scores."""
    return pair_distance(list(first), list(second[1:]) + list(second[:1]))


def pooled_mel_frames(clip: np.ndarray, pool: int = 4) -> torch.Tensor:
    """Log-mel frames averaged ``pool`` at a time: 25 vectors per second, like the tokens."""
    mel = A.log_mel(clip).T
    n = mel.shape[0] // pool * pool
    return mel[:n].reshape(-1, pool, mel.shape[1]).mean(1)


def kmeans_tokenizer(clips: Sequence[np.ndarray], k: int = 512, iters: int = 15, seed: int = 0):
    """Baseline tokenizer: plain k-means on 25 Hz pooled log-mel frames; returns encode(clip).
    Fewer frames than ``k`` give as many means as frames."""
    x = torch.cat([pooled_mel_frames(c) for c in clips])
    gen = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, means).argmin(1)
        sums = torch.zeros_like(means).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=len(means))
        means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], means)

    def encode(clip: np.ndarray) -> np.ndarray:
        return torch.cdist(pooled_mel_frames(clip), means).argmin(1).numpy()

    return encode


def timed_encode(
    model, clips: Sequence[np.ndarray], batch_size: int, repeats: int = 3
) -> tuple[list, float]:
    """(codes, audio seconds encoded per wall second), log-mel included, after one warm-up;
    the fastest of ``repeats`` passes (as ``timeit``: slower passes measure other load)."""
    import time

    model.encode(clips[:2], batch_size=batch_size)
    walls = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        codes = model.encode(clips, batch_size=batch_size)
        walls.append(time.perf_counter() - start)
    return codes, sum(len(c) for c in clips) / A.SAMPLE_RATE / min(walls)


def evaluate_quantizer(model, first, second, baseline_clips, batch_size: int = 16) -> dict:
    """The tokenizer's metrics on held-out speech, each sentence in two voices.

    ``first``/``second`` are aligned lists of ``Utterance`` (same text, other voice);
    ``baseline_clips`` (training audio) fit the k-means baseline. Returns flat metrics plus
    the codes and transcripts under ``"_codes"``/``"_transcripts"`` for display.
    """
    from ichigo_lib.evaluate.wer import wer, wer_by_group

    utts = [*first, *second]
    clips = [u.audio for u in utts]
    codes, rtf = timed_encode(model, clips, batch_size)
    hyps = model.transcribe(codes, [u.lang for u in utts])
    refs = [u.text for u in utts]
    n = len(first)
    kmeans = kmeans_tokenizer(baseline_clips)
    km_codes = [kmeans(c) for c in clips]
    metrics = {
        "codebook_usage": codebook_usage(codes, model.vq_codes),
        "code_perplexity": code_perplexity(codes, model.vq_codes + 1),
        "mask_code_emitted": int(sum(int((c == model.vq_codes).sum()) for c in codes)),
        "tokens_per_second_audio": tokens_per_second(codes, clips),
        "bottleneck_wer": wer(refs, hyps),
        "encode_realtime_factor": rtf,
        "voice_token_distance": pair_distance(codes[:n], codes[n:]),
        "voice_token_distance_dedup": pair_distance(
            [dedup(c) for c in codes[:n]], [dedup(c) for c in codes[n:]]
        ),
        "random_pair_token_distance": random_pair_distance(codes[:n], codes[n:]),
        "kmeans_voice_token_distance": pair_distance(km_codes[:n], km_codes[n:]),
        "heldout_clips": len(utts),
        "heldout_audio_seconds": sum(len(c) for c in clips) / A.SAMPLE_RATE,
    }
    metrics |= {
        f"bottleneck_wer_{g}": v
        for g, v in wer_by_group(refs, hyps, [u.lang for u in utts]).items()
    }
    if getattr(model, "decoder", None) is not None:  # what the CTC prefix score adds
        alone = model.transcribe(codes, [u.lang for u in utts], ctc_weight=0.0)
        metrics["bottleneck_wer_decoder_alone"] = wer(refs, alone)
    return metrics | {"_codes": codes, "_transcripts": hyps}
