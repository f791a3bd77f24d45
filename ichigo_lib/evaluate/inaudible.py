"""The inaudible space against the speech space (notebook 06).

* :func:`combinatorics`: how many arrangements of 513 codes exist at speech lengths, against the
  distinct sequences and n-grams real speech actually produced, and the entropy per token of
  speech codes against uniform random codes (plug-in estimates on equal-size samples).
* :func:`token_losses`: a model's per-token cross-entropy on the sound tokens of a user turn.
* :func:`final_hidden_states` + :func:`project_2d` + :func:`probe_accuracy`: the last layer's
  state where the model starts its reply, projected to 2-D (PCA), and how linearly separable
  speech and inaudible inputs are there.
* :func:`refusal_rates`, :func:`replace_fraction`: refusal rate as a function of length and of
  the fraction of a real utterance's codes replaced by random ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ichigo_lib import tokens as T
from ichigo_lib.data.refusals import is_refusal
from ichigo_lib.evaluate.replies import generate_replies


def _ngrams(seqs: Sequence[np.ndarray], n: int) -> Counter:
    counts: Counter = Counter()
    for s in seqs:
        s = np.asarray(s, dtype=np.int64)
        if len(s) >= n:
            windows = np.lib.stride_tricks.sliding_window_view(s, n)
            counts.update(map(tuple, windows.tolist()))
    return counts


def entropy_bits(counts: Counter) -> float:
    """Plug-in Shannon entropy (bits) of a frequency table."""
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    p = np.array(list(counts.values()), dtype=np.float64) / total
    return float(-(p * np.log2(p)).sum())


def conditional_entropy_bits(seqs: Sequence[np.ndarray]) -> float:
    """Plug-in H(code_t | code_{t-1}) in bits: H(bigrams) - H(unigrams of the first element)."""
    bigrams = _ngrams(seqs, 2)
    firsts: Counter = Counter()
    for (a, _), c in bigrams.items():
        firsts[a] += c
    return entropy_bits(bigrams) - entropy_bits(firsts)


@dataclass(frozen=True)
class SpaceSize:
    """Sizes of the speech space (what was observed) and the inaudible space (513^L)."""

    sequences: int
    distinct_sequences: int
    mean_length: float
    log10_arrangements_at_mean_length: float  # log10(513 ** mean length)
    log10_arrangements_total: float  # log10(sum over observed lengths of 513 ** L), per distinct L
    ngrams: list[dict[str, float]]  # n, possible, observed (speech), observed (random), fractions
    entropy_speech_bits: float
    entropy_random_bits: float
    conditional_entropy_speech_bits: float
    conditional_entropy_random_bits: float
    max_entropy_bits: float


def combinatorics(
    speech: Sequence[np.ndarray], random_seqs: Sequence[np.ndarray], max_n: int = 4
) -> SpaceSize:
    """Counts and entropies of ``speech`` against ``random_seqs`` (same lengths, ideally)."""
    if not speech or not random_seqs:
        raise ValueError("need speech and random sequences")
    lengths = np.array([len(s) for s in speech])
    log513 = math.log10(T.NUM_CODES)
    distinct_lengths = np.unique(lengths)
    top = distinct_lengths.max() * log513  # log10 of a sum of powers, computed stably
    total = top + math.log10(sum(10 ** (L * log513 - top) for L in distinct_lengths))
    rows = []
    for n in range(1, max_n + 1):
        seen_speech, seen_random = _ngrams(speech, n), _ngrams(random_seqs, n)
        possible = T.NUM_CODES**n
        rows.append(
            {
                "n": n,
                "possible": float(possible),
                "speech_distinct": len(seen_speech),
                "random_distinct": len(seen_random),
                "speech_tokens": sum(seen_speech.values()),
                "speech_fraction_of_possible": len(seen_speech) / possible,
                "random_fraction_of_possible": len(seen_random) / possible,
            }
        )
    return SpaceSize(
        sequences=len(speech),
        distinct_sequences=len({np.asarray(s).tobytes() for s in speech}),
        mean_length=float(lengths.mean()),
        log10_arrangements_at_mean_length=float(lengths.mean() * log513),
        log10_arrangements_total=float(total),
        ngrams=rows,
        entropy_speech_bits=entropy_bits(_ngrams(speech, 1)),
        entropy_random_bits=entropy_bits(_ngrams(random_seqs, 1)),
        conditional_entropy_speech_bits=conditional_entropy_bits(speech),
        conditional_entropy_random_bits=conditional_entropy_bits(random_seqs),
        max_entropy_bits=math.log2(T.NUM_CODES),
    )


def user_turn(codes: np.ndarray) -> list[dict[str, str]]:
    """A one-message chat whose user turn is the audio of ``codes``."""
    return [{"role": "user", "content": T.audio_turn(codes)}]


def _load(model_dir: str | Path, device: str):
    from transformers import AutoModelForCausalLM

    from ichigo_lib.evaluate.replies import batch_tokenizer

    tok = batch_tokenizer(model_dir, "right")
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    return model, tok


def _encode(tok, chats: Sequence[list[dict[str, str]]], generation_prompt: bool) -> list[list[int]]:
    texts = [
        tok.apply_chat_template(c, tokenize=False, add_generation_prompt=generation_prompt)
        for c in chats
    ]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _batches(ids: list[list[int]], batch_size: int, pad: int, device: str, left: bool):
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            sl = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[i, sl] = torch.tensor(row)
            mask[i, sl] = 1
        yield start, chunk, input_ids.to(device), mask.to(device)


def token_losses(
    model_dir: str | Path,
    sequences: Sequence[np.ndarray],
    batch_size: int = 32,
    device: str = "cpu",
) -> list[np.ndarray]:
    """Per-token cross-entropy (nats) of each sequence's sound tokens, each predicted from the
    chat prefix and the codes before it (the user turn as training formats it)."""
    model, tok = _load(model_dir, device)
    vocab = T.sound_vocab_of(tok)
    ids = _encode(tok, [user_turn(s) for s in sequences], generation_prompt=False)
    out: list[np.ndarray] = []
    for _, chunk, input_ids, mask in _batches(ids, batch_size, tok.pad_token_id, device, False):
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:]
        nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu().numpy()
        is_sound = vocab.is_sound_id(targets.cpu().numpy())
        for i, row in enumerate(chunk):
            keep = is_sound[i, : len(row) - 1]
            out.append(nll[i, : len(row) - 1][keep])
    return out


def final_hidden_states(
    model_dir: str | Path,
    sequences: Sequence[np.ndarray],
    batch_size: int = 32,
    device: str = "cpu",
) -> np.ndarray:
    """(N, dim) last-layer hidden state at the last prompt position (after the assistant header,
    where the reply starts) for each sequence as a user turn."""
    model, tok = _load(model_dir, device)
    ids = _encode(tok, [user_turn(s) for s in sequences], generation_prompt=True)
    states = []
    for _, _, input_ids, mask in _batches(ids, batch_size, tok.pad_token_id, device, True):
        with torch.inference_mode():
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real positions
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
            )
        states.append(out.hidden_states[-1][:, -1].float().cpu().numpy())
    return np.concatenate(states)


def project_2d(states: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PCA of ``states`` (sklearn): the 2-D coordinates and the explained-variance ratios."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    coords = pca.fit_transform(states)
    return coords, pca.explained_variance_ratio_


def probe_accuracy(states: np.ndarray, labels: Sequence[int], folds: int = 5) -> float:
    """Cross-validated accuracy of a logistic-regression probe separating the labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    folds = int(min(folds, np.bincount(labels).min()))
    if folds < 2:
        raise ValueError("need at least 2 examples of each label for a probe")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(probe, states, labels, cv=folds).mean())


def refusal_rates(
    model_dir: str | Path,
    groups: dict[str, Sequence[list[dict[str, str]]]],
    max_new_tokens: int = 16,
    device: str = "cpu",
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Refusal rate (:func:`~ichigo_lib.data.refusals.is_refusal`) of the greedy replies to each
    group of chats, generated in one pass; returns the rates and the replies."""
    names = list(groups)
    prompts = [p for name in names for p in groups[name]]
    said = generate_replies(model_dir, prompts, max_new_tokens=max_new_tokens, device=device)
    replies, rates, at = {}, {}, 0
    for name in names:
        n = len(groups[name])
        replies[name] = said[at : at + n]
        rates[name] = sum(map(is_refusal, replies[name])) / max(n, 1)
        at += n
    return rates, replies


def replace_fraction(codes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``codes`` with ``round(fraction * len)`` positions (chosen at random) replaced by
    uniform random codes 0..512."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    codes = np.array(codes, dtype=np.int64)
    k = round(fraction * len(codes))
    where = rng.choice(len(codes), size=k, replace=False)
    codes[where] = rng.integers(0, T.NUM_CODES, size=k)
    return codes


def crossing(xs: Sequence[float], ys: Sequence[float], level: float = 0.5) -> float:
    """First ``x`` where ``ys`` reaches ``level`` (linear interpolation); NaN if it never does."""
    xs, ys = list(xs), list(ys)
    for i, y in enumerate(ys):
        if y >= level:
            if i == 0:
                return float(xs[0])
            x0, x1, y0 = xs[i - 1], xs[i], ys[i - 1]
            return float(x0 + (level - y0) * (x1 - x0) / (y - y0))
    return float("nan")
