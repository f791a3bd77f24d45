"""Published phase datasets (the ``full`` profile's default) in this book's row formats, as Arrow.

Upstream released its data as HF datasets: sound-only rows for phase 1 (``text``: one audio
turn as a ``<|sound_start|>..<|sound_end|>`` string, or ``tokens``: its codes) and chat rows for
phases 2 and 3 (``conversations``: OpenAI-style ``role``/``content`` messages, audio turns as
strings). :func:`prepare_published` reads one from the hub (``owner/name[:config]``) or a local
parquet/json/``save_to_disk`` path, checks every row, rewrites it as notebook 02 writes its own
rows (``{text, lang, source}`` / ``{conversations, source[, turns]}``, ``source`` -1: spoken
from no plan utterance) and counts its tokens, in ``datasets.map`` worker processes over
memory-mapped Arrow, then ``save_to_disk``: rows never become a Python list. Over-long rows are
counted in the card and kept, as for the world's rows (notebooks 03-05 leave them out).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichigo_lib import tokens as T
from ichigo_lib.data import phases
from ichigo_lib.errors import IchigoError

_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
SOUND_COLUMNS = ("text", "tokens")
CHAT_COLUMNS = ("conversations", "messages")
ROLES = ("system", "user", "assistant")
_AUDIO_TURN = re.compile(re.escape(T.SOUND_START) + r".*?" + re.escape(T.SOUND_END), re.S)


class HubDataError(IchigoError, ValueError):
    """A published dataset that does not fit upstream's schema; names the dataset, row, column."""


def load_published(
    ref: str, split: str = "train", data_dir: str | None = None, num_proc: int | None = None
):
    """A memory-mapped ``datasets.Dataset`` from a hub id (``owner/name[:config]``) or a local
    file/dir; ``data_dir``: a subdirectory of either (upstream's phase-1 languages). Parquet and
    json become Arrow in the HF datasets cache once."""
    import datasets

    path = Path(ref) / (data_dir or "")
    if Path(ref).exists():
        if path.is_dir() and (path / "dataset_info.json").exists():
            return datasets.load_from_disk(str(path))
        files = sorted(path.glob("**/*")) if path.is_dir() else [path]
        files = [f for f in files if f.suffix in _LOCAL_BUILDERS]
        if not files:
            raise HubDataError(f"{path}: no parquet/json/arrow files")
        builder = _LOCAL_BUILDERS[files[0].suffix]
        files = [str(f) for f in files]
        return datasets.load_dataset(builder, data_files=files, split="train", num_proc=num_proc)
    repo, _, config = ref.partition(":")
    return datasets.load_dataset(
        repo, config or None, data_dir=data_dir, split=split, num_proc=num_proc
    )


def check_audio_turn(text: Any, where: str) -> None:
    """``text`` must be exactly one non-empty audio turn, wrappers included (upstream's
    tokenizer drops the first and last piece of a phase-1 row)."""
    if not isinstance(text, str):
        raise HubDataError(f"{where}: expected a string, got {type(text).__name__}")
    if not (text.startswith(T.SOUND_START) and text.endswith(T.SOUND_END)):
        raise HubDataError(
            f"{where}: not wrapped in {T.SOUND_START}...{T.SOUND_END}: {text[:40]!r}"
        )
    try:
        codes = T.string_to_codes(text)
    except T.SoundTokenError as err:
        raise HubDataError(f"{where}: {err}") from err
    if not codes.size:
        raise HubDataError(f"{where}: empty audio turn")


def check_chat(chat: Any, where: str) -> None:
    """OpenAI-style messages with a known ``role`` and string ``content``; every sound token
    inside a well-formed, non-empty ``<|sound_start|>..<|sound_end|>`` turn."""
    if not isinstance(chat, list) or not chat:
        raise HubDataError(f"{where}: expected a non-empty list of messages, got {chat!r:.60}")
    for j, message in enumerate(chat):
        at = f"{where}[{j}]"
        # Arrow gives every message the keys of all messages: a missing one reads as None
        if not isinstance(message, dict) or None in (message.get("role"), message.get("content")):
            raise HubDataError(f"{at}: a message needs 'role' and 'content', got {message!r:.80}")
        if message["role"] not in ROLES:
            raise HubDataError(f"{at}: role {message['role']!r} is not one of {ROLES}")
        content = message["content"]
        if not isinstance(content, str):
            raise HubDataError(f"{at}: 'content' must be a string, got {type(content).__name__}")
        for turn in _AUDIO_TURN.findall(content):
            check_audio_turn(turn, at)
        if "<|sound_" in _AUDIO_TURN.sub("", content):
            raise HubDataError(
                f"{at}: sound tokens outside a {T.SOUND_START}...{T.SOUND_END} turn: "
                f"{content[:60]!r}"
            )


def _sound_rows(batch, indices, ref: str, column: str, lang: str, count) -> dict[str, list]:
    texts = []
    for i, value in zip(indices, batch[column], strict=True):
        where = f"{ref}: row {i}: '{column}'"
        if column == "tokens":
            try:
                value = T.audio_turn(value)
            except T.SoundTokenError as err:
                raise HubDataError(f"{where}: {err}") from err
        check_audio_turn(value, where)
        texts.append(value)
    n = len(texts)
    lengths = phases.count_batch(count, {"text": texts})
    return {"text": texts, "lang": [lang] * n, "source": [-1] * n, "num_tokens": lengths}


def _chat_rows(batch, indices, ref: str, column: str, turns: bool, count) -> dict[str, list]:
    chats = []
    for i, chat in zip(indices, batch[column], strict=True):
        check_chat(chat, f"{ref}: row {i}: '{column}'")
        chats.append([{"role": m["role"], "content": m["content"]} for m in chat])
    out = {"conversations": chats, "source": [-1] * len(chats)}
    if turns:
        out["turns"] = [sum(m["role"] == "user" for m in chat) for chat in chats]
    return out | {"num_tokens": phases.count_batch(count, {"conversations": chats})}


def _book_rows(name: str, ds, ref: str, count, num_proc: int | None, cache: Path, lang: str):
    """``ds`` (a published dataset) checked and rewritten as phase ``name``'s rows, with a
    ``num_tokens`` column; its Arrow files under ``cache``."""
    columns = SOUND_COLUMNS if name == "phase1" else CHAT_COLUMNS
    column = next((c for c in columns if c in ds.column_names), None)
    if column is None:
        raise HubDataError(
            f"{ref}: {name} expects a column {' or '.join(map(repr, columns))}, found "
            f"{sorted(ds.column_names)}"
        )
    if name == "phase1":
        fn, extra = _sound_rows, {"lang": lang}
    else:
        fn, extra = _chat_rows, {"turns": name == "phase3"}
    cache.mkdir(parents=True, exist_ok=True)
    return ds.map(
        fn,
        batched=True,
        batch_size=phases.BATCH_SIZE,
        with_indices=True,
        remove_columns=ds.column_names,
        fn_kwargs={
            "ref": f"{ref}/{lang}" if lang else ref,
            "column": column,
            "count": count,
            **extra,
        },
        num_proc=phases.map_processes(num_proc, len(ds)),
        cache_file_name=str(cache / f"{lang or name}.arrow"),
        desc=f"{name}: {ref} {lang}".strip(),
    )


@dataclass(frozen=True)
class Published:
    """A published dataset prepared as a phase dataset: where, what, its lengths and card."""

    path: Path
    dataset: Any  # datasets.Dataset, memory-mapped from ``path``
    lengths: np.ndarray
    card: dict[str, Any]


def prepare_published(
    name: str,
    ref: str,
    out_dir: str | Path,
    count,
    max_seq_len: int,
    num_proc: int | None = None,
    languages: Mapping[str, float] | None = None,
    split: str = "train",
    seed: int = 0,
    rows: int | None = None,
) -> Published:
    """Phase ``name``'s dataset (``phase1``: sound rows; ``phase2``/``phase3``: chat rows, phase
    3's with ``turns``) from published ``ref``, saved to ``out_dir``.

    ``languages`` (phase 1): data directory -> fraction of its rows kept (a seeded sample; every
    row is checked first); ``rows``: the rows kept in all (a seeded sample of the checked rows;
    None or more than there are: all). ``count``: :func:`~ichigo_lib.data.phases.token_counter`.
    A bad row raises :class:`HubDataError` before anything is written; ``out_dir`` is replaced
    only once the new dataset is complete.
    """
    import datasets

    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    try:
        parts = []
        for lang, fraction in (languages or {"": 1.0}).items():
            ds = load_published(ref, split, lang or None, num_proc if num_proc != 1 else None)
            part = _book_rows(name, ds, ref, count, num_proc, work / "map", lang)
            if fraction < 1:
                rng = np.random.default_rng([seed, len(parts)])
                keep = rng.choice(len(part), round(fraction * len(part)), replace=False)
                part = part.select(np.sort(keep))
            parts.append(part)
        kept = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if rows is not None and rows < len(kept):
            keep = np.random.default_rng([seed, len(parts), rows]).choice(len(kept), rows, False)
            kept = kept.select(np.sort(keep))
        lengths = np.asarray(kept.with_format("numpy")["num_tokens"], dtype=np.int64)
        kept = kept.remove_columns("num_tokens")
        kept.save_to_disk(str(work / "saved"))
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(work / "saved", out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    saved = datasets.load_from_disk(str(out_dir))
    card = phases.dataset_card(name, saved, lengths, max_seq_len) | {"published": ref}
    return Published(out_dir, saved, lengths, card)
