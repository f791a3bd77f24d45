"""Inaudible input for phase 3: random sound-token sequences, length-matched to real speech.

Ichigo learns to say it cannot hear from user turns whose codes are drawn uniformly from
0..512 (the mask code 512 included), each sequence as long as a real spoken prompt would be:
lengths are drawn from the empirical distribution of the speech prompts the rows are mixed
with, so length alone never gives the game away (:func:`length_match` reports a two-sample KS
test). A generated sequence never equals a real one (it is drawn again; at 513 choices per code
that happens only for very short lengths).

:func:`mix_phase3` builds notebook 05's mix from notebook 02's spoken multi-turn chats: every
chat kept, a fraction given an inaudible exchange between two of its turns (the conversation
then goes on), plus single-turn inaudible rows making ``inaudible_fraction`` of all rows, and a
held-out set of inaudible inputs that no training row contains.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichigo_lib import tokens as T
from ichigo_lib.config import Phase3DataConfig

AUDIO_TURN = re.compile(re.escape(T.SOUND_START) + r".*?" + re.escape(T.SOUND_END), re.S)


def audio_codes(content: str) -> np.ndarray | None:
    """The codes of the (first) audio turn in a message, or ``None`` if it has none."""
    match = AUDIO_TURN.search(content)
    return None if match is None else T.string_to_codes(match.group())


def speech_sequences(rows: Iterable[Mapping[str, Any]]) -> list[np.ndarray]:
    """Codes of every spoken user turn of ``conversations`` rows, in order."""
    out = []
    for i, row in enumerate(rows):
        if "conversations" not in row:
            raise ValueError(f"row {i}: no 'conversations' column (keys: {sorted(row)})")
        for message in row["conversations"]:
            if message["role"] != "user":
                continue
            try:
                codes = audio_codes(message["content"])
            except T.SoundTokenError as err:
                raise ValueError(f"row {i}: malformed audio turn: {err}") from err
            if codes is not None:
                out.append(codes)
    return out


def _key(codes: np.ndarray) -> bytes:
    return np.asarray(codes, dtype=np.int16).tobytes()


def inaudible_sequences(
    lengths: Sequence[int],
    n: int,
    seed: int | Sequence[int],
    exclude: Iterable[np.ndarray] = (),
) -> list[np.ndarray]:
    """``n`` sequences of uniform codes 0..512 whose lengths are drawn (with replacement) from
    ``lengths``; none equals a sequence of ``exclude`` or another of the returned ones."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError("no speech lengths to match: the speech prompts are empty")
    if (lengths < 1).any():
        raise ValueError(f"speech lengths must be >= 1, got {int(lengths.min())}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    taken = {_key(c) for c in exclude}
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n:
        codes = rng.integers(0, T.NUM_CODES, size=int(rng.choice(lengths)), dtype=np.int64)
        key = _key(codes)
        if key in taken:
            tries += 1
            if tries > 100 * (n + 1):
                raise ValueError(
                    f"could not draw {n} distinct inaudible sequences unlike the real ones "
                    f"(lengths {sorted(set(lengths.tolist()))[:10]}... are too short)"
                )
            continue
        taken.add(key)
        out.append(codes)
    return out


@dataclass(frozen=True)
class LengthMatch:
    """Two-sample Kolmogorov-Smirnov test of generated against real sequence lengths."""

    statistic: float
    pvalue: float
    n_real: int
    n_generated: int
    mean_real: float
    mean_generated: float


def length_match(real: Sequence[int], generated: Sequence[int]) -> LengthMatch:
    """KS test (``scipy.stats.ks_2samp``) of two samples of lengths."""
    from scipy.stats import ks_2samp

    real, generated = np.asarray(real), np.asarray(generated)
    if real.size == 0 or generated.size == 0:
        raise ValueError(f"need lengths on both sides, got {real.size} and {generated.size}")
    result = ks_2samp(real, generated)
    return LengthMatch(
        float(result.statistic),
        float(result.pvalue),
        int(real.size),
        int(generated.size),
        float(real.mean()),
        float(generated.mean()),
    )


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def refusal_row(codes: np.ndarray, refusal: str) -> dict[str, Any]:
    """A single-turn inaudible row: random sound tokens -> a refusal."""
    chat = [_user(T.audio_turn(codes)), _assistant(refusal)]
    return {"conversations": chat, "turns": 1, "kind": "inaudible", "source": -1}


def with_inaudible_turn(
    conversation: Sequence[Mapping[str, str]], codes: np.ndarray, refusal: str, position: int
) -> list[dict[str, str]]:
    """``conversation`` with an inaudible exchange (random sound -> refusal) inserted after its
    first ``position`` exchanges (1 <= position <= number of user turns)."""
    messages = [dict(m) for m in conversation]
    roles = [m["role"] for m in messages]
    exchanges = len(messages) // 2
    if roles != ["user", "assistant"] * exchanges or len(messages) % 2:
        raise ValueError(f"expected alternating user/assistant turns, got roles {roles}")
    if not 1 <= position <= exchanges:
        raise ValueError(f"position must be in 1..{exchanges}, got {position}")
    cut = 2 * position
    inserted = [_user(T.audio_turn(codes)), _assistant(refusal)]
    return messages[:cut] + inserted + messages[cut:]


@dataclass(frozen=True)
class Phase3Mix:
    """The phase-3 training rows, the held-out inaudible rows and what went into them."""

    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    counts: dict[str, int]
    speech_lengths: list[int]  # codes per spoken user turn (the distribution matched)
    inaudible_lengths: list[int]  # codes per inaudible user turn in the training rows

    def kind_fractions(self) -> dict[str, float]:
        kinds = Counter(r["kind"] for r in self.rows)
        return {k: kinds[k] / len(self.rows) for k in sorted(kinds)}


def inaudible_count(speech_rows: int, fraction: float) -> int:
    """Single-turn inaudible rows so that they are ``fraction`` of all rows."""
    return round(speech_rows * fraction / (1 - fraction))


def mix_phase3(
    speech_rows: Sequence[Mapping[str, Any]],
    refusals: Sequence[str],
    cfg: Phase3DataConfig,
    phase2_rows: Sequence[Mapping[str, Any]] = (),
) -> Phase3Mix:
    """The phase-3 mix (module docstring): ``speech_rows`` are notebook 02's ``phase3`` rows
    (``{conversations, turns, source}``), ``refusals`` the phrasings to answer with;
    ``cfg.phase2_replay_rows`` rows drawn from ``phase2_rows`` (notebook 02's ``phase2``) are
    replayed beside them (kind ``replay``)."""
    if not speech_rows:
        raise ValueError("no spoken phase-3 conversations to mix with")
    if not refusals:
        raise ValueError("no refusal phrasings")
    real = speech_sequences(speech_rows)
    lengths = [len(c) for c in real]
    if cfg.phase2_replay_rows > len(phase2_rows):
        raise ValueError(
            f"phase3_data.phase2_replay_rows is {cfg.phase2_replay_rows} but only "
            f"{len(phase2_rows)} phase-2 rows were given"
        )
    replay = random.Random(f"phase3-replay/{cfg.seed}").sample(
        list(phase2_rows), cfg.phase2_replay_rows
    )
    n_single = inaudible_count(len(speech_rows) + len(replay), cfg.inaudible_fraction)
    n_mid = round(len(speech_rows) * cfg.mid_conversation_fraction)
    train_codes = inaudible_sequences(lengths, n_single + n_mid, [cfg.seed, 3, 0], exclude=real)
    eval_codes = inaudible_sequences(
        lengths, cfg.eval_inaudible, [cfg.seed, 3, 1], exclude=[*real, *train_codes]
    )
    rng = random.Random(f"phase3-mix/{cfg.seed}")
    rows = [{**dict(r), "kind": "speech"} for r in speech_rows]
    mid = rng.sample(range(len(rows)), n_mid)
    for j, i in enumerate(mid):
        row = rows[i]
        exchanges = len(row["conversations"]) // 2
        try:
            chat = with_inaudible_turn(
                row["conversations"],
                train_codes[n_single + j],
                rng.choice(refusals),
                rng.randint(1, exchanges),
            )
        except ValueError as err:
            raise ValueError(f"phase-3 row {i} (source {row.get('source')}): {err}") from err
        rows[i] = {
            **row,
            "conversations": chat,
            "turns": row["turns"] + 1,
            "kind": "speech+inaudible",
        }
    rows += [refusal_row(c, rng.choice(refusals)) for c in train_codes[:n_single]]
    rows += [
        {
            "conversations": [dict(m) for m in r["conversations"]],
            "turns": sum(m["role"] == "user" for m in r["conversations"]),
            "kind": "replay",
            "source": r.get("source", -1),
        }
        for r in replay
    ]
    rng.shuffle(rows)
    eval_rows = [{"conversations": [_user(T.audio_turn(c))], "length": len(c)} for c in eval_codes]
    turns = Counter(
        "2" if r["turns"] <= 2 else "4+" if r["turns"] >= 4 else "3" for r in speech_rows
    )
    counts = {
        "rows": len(rows),
        "speech_conversations": len(speech_rows) - n_mid,
        "speech_conversations_with_inaudible_turn": n_mid,
        "inaudible_single_turn": n_single,
        "replay_phase2": len(replay),
        "speech_conversations_2_turns": turns["2"],
        "speech_conversations_3_turns": turns["3"],
        "speech_conversations_4plus_turns": turns["4+"],
        "eval_inaudible": len(eval_rows),
        "refusal_phrasings": len(set(refusals)),
    }
    return Phase3Mix(rows, eval_rows, counts, lengths, [len(c) for c in train_codes])
