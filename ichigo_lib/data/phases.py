"""The datasets of the three training phases and the held-out evaluation sets.

Two steps, with the speech pipeline in between:

1. :func:`speech_plan` lists what must be spoken: single utterances (``{index, text, lang, voice,
   use}``) for phase 1, the phase-2 speech instructions and transcriptions and the held-out sets,
   and whole conversations (``{index, conversations, lang, voice}``) for phase 3. Held-out texts
   never occur in a training row (the world's held-out sentences and question phrasings).
2. :func:`build_phase_datasets` joins the pipeline's ``{index, tokens}`` / ``{index,
   conversations}`` outputs back to the plan and writes the chat rows of ``recipe-facts.md``:

   * ``phase1``: ``{text, lang}``, ``text`` an audio turn, trained as ``[BOS, sound_start,
     codes.., sound_end, EOS]`` (no transcript);
   * ``phase2``: ``{conversations, kind}``, ``kind`` ``speech_instruction`` (spoken question ->
     text answer), ``transcription`` (one of the eight prompts + audio -> transcript) or ``text``
     (text-only chat), mixed by :attr:`DataConfig.mix`; no transcription token;
   * ``phase3``: ``{conversations, turns}``, multi-turn speech chats (the world's dialogues: 90 %
     two user turns, 10 % four or more);
   * ``eval_speech_qa`` / ``eval_transcription``: held-out spoken questions / sentences;
   * ``eval_speech_qa_causes``: ``{conversations, question, split}``, the spoken questions new
     in one respect only (``split`` ``voice`` or ``phrasing``, see :data:`CAUSES`).

   Every row keeps ``source``: the plan index of the utterance (or dialogue) it was spoken from,
   -1 for text-only rows.

Rows whose speech failed in the pipeline are left out and counted; :func:`dataset_card` counts
rows over ``max_seq_len`` (never truncated here) and summarises lengths and mix fractions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichigo_lib import tokens as T
from ichigo_lib.config import DataConfig
from ichigo_lib.data.prompts import TRANSCRIPTION_PROMPTS
from ichigo_lib.data.synth import voice_dict
from ichigo_lib.speech import tts
from ichigo_lib.speech.corpus import heldout_voices
from ichigo_lib.wordtok import END_HEADER, START_HEADER
from ichigo_lib.world import World

KINDS = ("speech_instruction", "transcription", "text")
BATCH_SIZE = 1000  # rows per datasets.map batch
USES = (
    "phase1",
    "instruction",
    "transcription",
    "eval_instruction",
    "eval_transcription",
    "eval_instruction_voice",
    "eval_instruction_phrasing",
)
# The held-out spoken questions split by what is new in them: ``both`` (phrasing and voice, the
# headline set ``eval_speech_qa``), ``voice`` (a trained question in a held-out voice) and
# ``phrasing`` (a held-out question in a voice drawn like the training voices).
CAUSES = {"eval_instruction_voice": "voice", "eval_instruction_phrasing": "phrasing"}


@dataclass(frozen=True)
class SpeechPlan:
    """What the pipeline must speak: single utterances and whole conversations."""

    utterances: list[dict[str, Any]]
    dialogues: list[dict[str, Any]]
    text_chats: list[list[dict[str, str]]]  # the phase-2 text-only rows

    def heldout_texts(self) -> set[str]:
        """Texts no training row may contain (the ``voice`` split re-speaks trained questions)."""
        return {
            u["text"]
            for u in self.utterances
            if u["use"].startswith("eval_") and u["use"] != "eval_instruction_voice"
        }


def mix_counts(total: int, mix: Sequence[float]) -> dict[str, int]:
    """Rows per phase-2 kind: ``total`` split by ``mix`` (rounded, the remainder to text)."""
    if len(mix) != len(KINDS) or abs(sum(mix) - 1) > 1e-6 or min(mix) < 0:
        raise ValueError(f"mix must be {len(KINDS)} non-negative fractions summing to 1, got {mix}")
    si, tr = round(total * mix[0]), round(total * mix[1])
    return {"speech_instruction": si, "transcription": tr, "text": total - si - tr}


def _cycle(items: Sequence, count: int, rng: random.Random) -> list:
    """``count`` items: whole shuffled passes over ``items`` (each used evenly), then a part."""
    if not items:
        raise ValueError(f"no items to draw {count} rows from")
    out: list = []
    while len(out) < count:
        out += rng.sample(list(items), len(items))
    return out[:count]


def speech_plan(world: World, cfg: DataConfig) -> SpeechPlan:
    """The utterances and conversations to speak for every phase and held-out set."""
    rng = random.Random(f"speech-plan/{cfg.seed}")
    utterances: list[dict[str, Any]] = []

    def add(text: str, lang: str, voice: tts.Voice, use: str, **extra: Any) -> None:
        row = {"index": len(utterances), "text": text, "lang": lang, "voice": voice_dict(voice)}
        utterances.append(row | {"use": use, "answer": extra.get("answer", "")})

    def voice(lang: str) -> tts.Voice:
        return tts.random_voice(lang, rng, cfg.speeds)

    # held-out first: evaluation sets are spoken in the two fixed held-out voices
    held_qa = [q for q in world.qa if q.split == "heldout"]
    held_qa = random.Random(f"eval-questions/{cfg.seed}").sample(
        held_qa, min(cfg.eval_questions, len(held_qa))
    )  # spread over the facts (each fact has a few held-out phrasings)
    for i, q in enumerate(held_qa):
        add(q.question, "en", heldout_voices("en")[i % 2], "eval_instruction", answer=q.answer)
    per_lang: Counter[str] = Counter()
    for s in world.sentences:
        if s.split == "heldout" and per_lang[s.lang] < cfg.eval_sentences_per_language:
            per_lang[s.lang] += 1
            add(s.text, s.lang, heldout_voices(s.lang)[per_lang[s.lang] % 2], "eval_transcription")
    heldout = {u["text"] for u in utterances}
    heldout |= {s.text for s in world.sentences if s.split == "heldout"}
    heldout |= {q.question for q in world.qa if q.split == "heldout"}

    sentences = [s for s in world.sentences if s.split == "train" and s.text not in heldout]
    for s in sentences if cfg.published_phase1 is None else []:
        for _ in range(cfg.phase1_voices):
            add(s.text, s.lang, voice(s.lang), "phase1")
    counts = mix_counts(cfg.phase2_rows if cfg.published_phase2 is None else 0, cfg.mix)
    questions = [q for q in world.qa if q.split == "train" and q.question not in heldout]
    for q in _cycle(questions, counts["speech_instruction"], rng):
        add(q.question, "en", voice("en"), "instruction", answer=q.answer)
    for s in _cycle(sentences, counts["transcription"], rng):
        add(s.text, s.lang, voice(s.lang), "transcription")
    text_chats = [
        chat
        for chat in world.text_conversations("train")
        if not any(m["content"] in heldout for m in chat)
    ]
    text_chats = _cycle(text_chats, counts["text"], rng) if counts["text"] else []
    # (a published dataset replaces a phase's rows: see build.build_phase_data)
    dialogues = [
        {
            "index": i,
            "conversations": [dict(m) for m in d.messages],
            "lang": "en",
            "voice": voice_dict(voice("en")),
        }
        for i, d in enumerate(world.dialogues[: cfg.phase3_dialogues])
        if d.messages[0]["content"] not in heldout and cfg.published_phase3 is None
    ]
    _add_causes(add, utterances, held_qa, cfg)
    return SpeechPlan(utterances, dialogues, text_chats)


def _add_causes(add, utterances: list[dict[str, Any]], held_qa: list, cfg: DataConfig) -> None:
    """Half of ``eval_questions`` each: trained questions re-spoken in the held-out voices, and
    the first held-out questions spoken in voices drawn like the training ones (own seed, so the
    training rows do not change with it)."""
    rng = random.Random(f"eval-causes/{cfg.seed}")
    n = cfg.eval_questions // 2
    trained = list({u["text"]: u for u in utterances if u["use"] == "instruction"}.values())
    for i, u in enumerate(rng.sample(trained, min(n, len(trained)))):
        add(
            u["text"],
            "en",
            heldout_voices("en")[i % 2],
            "eval_instruction_voice",
            answer=u["answer"],
        )
    for q in held_qa[:n]:
        voice = tts.random_voice("en", rng, cfg.speeds)
        add(q.question, "en", voice, "eval_instruction_phrasing", answer=q.answer)


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def build_phase_datasets(
    plan: SpeechPlan,
    spoken: Mapping[int, Sequence[int]],
    spoken_dialogues: Mapping[int, list[dict[str, str]]],
    cfg: DataConfig,
) -> dict[str, list[dict[str, Any]]]:
    """Rows of every phase and held-out set (see the module docstring), in a seeded order.

    ``spoken`` maps utterance index -> codes and ``spoken_dialogues`` dialogue index -> spoken
    conversation (the pipeline outputs); rows missing from them failed and are left out.
    """
    rng = random.Random(f"phase-rows/{cfg.seed}")
    out: dict[str, list[dict[str, Any]]] = {
        "phase1": [],
        "phase2": [],
        "phase3": [],
        "eval_speech_qa": [],
        "eval_speech_qa_causes": [],
        "eval_transcription": [],
    }
    for u in plan.utterances:
        codes = spoken.get(u["index"])
        if codes is None:
            continue
        turn = T.audio_turn(codes)
        use, src = u["use"], {"source": u["index"]}
        if use == "phase1":
            out["phase1"].append({"text": turn, "lang": u["lang"], "source": u["index"]})
        elif use == "instruction":
            chat = [_user(turn), _assistant(u["answer"])]
            out["phase2"].append({"conversations": chat, "kind": "speech_instruction", **src})
        elif use == "transcription":
            prompt = rng.choice(TRANSCRIPTION_PROMPTS)
            chat = [_user(f"{prompt}\n{turn}"), _assistant(u["text"])]
            out["phase2"].append({"conversations": chat, "kind": "transcription", **src})
        elif use == "eval_instruction":
            chat = [_user(turn), _assistant(u["answer"])]
            out["eval_speech_qa"].append({"conversations": chat, "question": u["text"], **src})
        elif use in CAUSES:
            chat = [_user(turn), _assistant(u["answer"])]
            row = {"conversations": chat, "question": u["text"], "split": CAUSES[use], **src}
            out["eval_speech_qa_causes"].append(row)
        elif use == "eval_transcription":
            chat = [_user(f"{TRANSCRIPTION_PROMPTS[0]}\n{turn}"), _assistant(u["text"])]
            out["eval_transcription"].append({"conversations": chat, "lang": u["lang"], **src})
        else:
            raise ValueError(f"utterance {u['index']} has unknown use {use!r}; expected {USES}")
    out["phase2"] += [{"conversations": c, "kind": "text", "source": -1} for c in plan.text_chats]
    for d in plan.dialogues:
        chat = spoken_dialogues.get(d["index"])
        if chat is not None:
            turns = sum(m["role"] == "user" for m in chat)
            out["phase3"].append({"conversations": chat, "turns": turns, "source": d["index"]})
    for name in ("phase1", "phase2", "phase3"):
        rng.shuffle(out[name])
    return out


def with_transcription_token(rows: Sequence[Mapping[str, Any]], token: str) -> list[dict[str, Any]]:
    """Phase-2 rows as Ichigo v0.2 had them: each transcription row's prompt replaced by one
    special ``token`` (v0.3 replaced the token by the prompts: it hurt MMLU recovery)."""
    out = []
    for row in rows:
        row = dict(row)
        if row.get("kind") == "transcription":
            user, answer = row["conversations"]
            turn = user["content"][user["content"].index(T.SOUND_START) :]
            row["conversations"] = [_user(token + turn), dict(answer)]
        out.append(row)
    return out


def row_text(row: Mapping[str, Any]) -> str:
    """All of a row's text (for length counts and disjointness checks)."""
    if "text" in row:
        return row["text"]
    return "\n".join(m["content"] for m in row["conversations"])


# a well-formed audio turn: each sound token is one LLM token, counted without tokenizing
_AUDIO_TURN = re.compile(
    re.escape(T.SOUND_START) + r"(?:<\|sound_\d{4}\|>)*" + re.escape(T.SOUND_END)
)
_WRAPPERS = len(T.SOUND_START) + len(T.SOUND_END)
_SOUND_TOKEN = len(T.SOUND_TOKENS[0])


class TokenCounter:
    """LLM tokens of rows as torchtune trains them (``tokenizer``: a transformers tokenizer).

    A phase-1 row is ``[BOS] text [EOS]``; a conversation is Llama-3's layout without a system
    prompt: BOS, per message a header (``<|start_header_id|>role<|end_header_id|>`` and two
    newlines), its stripped content and EOT, then EOS: the tokens torchtune's tokenizers emit,
    whatever chat template the transformers tokenizer carries. Sound tokens, one id each, are
    counted; only the text between audio turns is tokenized (as both tokenizers split it).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._headers: dict[str, int] = {}

    def __call__(self, row: Mapping[str, Any]) -> int:
        key = "text" if "text" in row else "conversations"
        return self.batch({key: [row[key]]})[0]

    def batch(self, batch: Mapping[str, Sequence]) -> list[int]:
        """Tokens of each row of a column batch (``{"text": [...]}`` or
        ``{"conversations": [...]}``, as ``datasets.map(batched=True)`` passes them)."""
        if "text" in batch:
            return [n + 2 for n in self._texts(batch["text"])]
        chats = batch["conversations"]
        sizes = iter(self._texts([m["content"].strip() for c in chats for m in c]))
        return [2 + sum(self._header(m["role"]) + next(sizes) + 1 for m in c) for c in chats]

    def _texts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text: its audio turns' sound tokens, then the text around them."""
        counts, pieces, owners = [], [], []
        for i, text in enumerate(texts):
            last, sound = 0, 0
            for turn in _AUDIO_TURN.finditer(text):
                sound += (turn.end() - turn.start() - _WRAPPERS) // _SOUND_TOKEN + 2
                pieces.append(text[last : turn.start()])
                last = turn.end()
            pieces.append(text[last:])
            owners += [i] * (len(pieces) - len(owners))
            counts.append(sound)
        for i, ids in zip(owners, self._ids(pieces), strict=True):
            counts[i] += len(ids)
        return counts

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _header(self, role: str) -> int:
        if role not in self._headers:
            header = f"{START_HEADER}{role}{END_HEADER}\n\n"
            self._headers[role] = len(self._ids([header])[0])
        return self._headers[role]


def token_counter(tokenizer) -> TokenCounter:
    """``count(row)`` -> LLM tokens of a row as trained (see :class:`TokenCounter`)."""
    return TokenCounter(tokenizer)


def map_processes(num_proc: int | None, rows: int) -> int | None:
    """``datasets.map`` worker processes for ``rows`` rows: none for a small dataset (starting
    them costs more than they save)."""
    return num_proc if num_proc and num_proc > 1 and rows >= BATCH_SIZE * num_proc else None


def count_batch(count: Callable[[Mapping[str, Any]], int], batch: Mapping[str, Sequence]):
    """``count`` over a column batch: batched for a :class:`TokenCounter`, else row by row."""
    if isinstance(count, TokenCounter):
        return count.batch(batch)
    return [
        count(dict(zip(batch, values, strict=True))) for values in zip(*batch.values(), strict=True)
    ]


def dataset_card(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    lengths: Sequence[int],
    max_seq_len: int,
    failed: int = 0,
) -> dict[str, Any]:
    """Counts, length summary (LLM tokens), over-long rows and mix fractions of one dataset
    (``rows``: a list of rows or a ``datasets.Dataset``, whose label columns are read whole)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    card: dict[str, Any] = {
        "name": name,
        "rows": len(rows),
        "failed_rows_left_out": failed,
        "max_seq_len": max_seq_len,
        "over_long_rows": int((lengths > max_seq_len).sum()) if len(lengths) else 0,
    }
    if len(lengths):
        card |= {
            "tokens_total": int(lengths.sum()),
            "tokens_mean": float(lengths.mean()),
            "tokens_p50": float(np.percentile(lengths, 50)),
            "tokens_p95": float(np.percentile(lengths, 95)),
            "tokens_max": int(lengths.max()),
        }
    for key in ("kind", "turns", "lang"):
        counts = _label_counts(rows, key)
        if key == "turns":
            buckets: Counter = Counter()
            for turns, n in counts.items():
                buckets["2" if turns <= 2 else "4+" if turns >= 4 else "3"] += n
            counts = buckets
        total = sum(counts.values())
        if total:
            card[f"{key}_fractions"] = {str(k): counts[k] / total for k in sorted(counts)}
    return card


def _label_counts(rows, key: str) -> Counter:
    """How often each value of column ``key`` occurs (counted in Arrow for a Dataset)."""
    if hasattr(rows, "column_names"):
        if key not in rows.column_names:
            return Counter()
        import pyarrow.compute as pc

        counts = pc.value_counts(rows.with_format("arrow")[key]).to_pylist()
        return Counter({c["values"]: c["counts"] for c in counts})
    return Counter(r[key] for r in rows if key in r)
