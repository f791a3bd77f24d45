"""Published phase datasets (the ``full`` profile) in this book's row formats.

Upstream released its synthetic data as HF datasets with rows ``{index, tokens}`` or ``{text}``
(sound-only, phase 1: codes, or one audio turn as a string, the column upstream's torchtune
configs read) or ``{index, conversations: [{role, content}]}`` (chat rows whose audio turns are
already ``<|sound_start|>..<|sound_end|>`` strings). :func:`hub_rows` loads either, from the hub
(``"owner/name"`` or ``"owner/name:config"``) or a local file/directory in the same format, and
returns rows as :mod:`ichigo_lib.data.phases` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ichigo_lib import tokens as T
from ichigo_lib.errors import IchigoError

_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


class HubDataError(IchigoError, ValueError):
    """A published dataset that does not have the expected columns; names the row and key."""


def load_published(ref: str, split: str = "train"):
    """A ``datasets.Dataset`` from a hub id (``owner/name[:config]``) or a local file/dir."""
    import datasets

    path = Path(ref)
    if path.exists():
        if path.is_dir() and (path / "dataset_info.json").exists():
            return datasets.load_from_disk(str(path))
        files = sorted(path.glob("**/*")) if path.is_dir() else [path]
        files = [f for f in files if f.suffix in _LOCAL_BUILDERS]
        if not files:
            raise HubDataError(f"{ref}: no parquet/json/arrow files")
        builder = _LOCAL_BUILDERS[files[0].suffix]
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    repo, _, config = ref.partition(":")
    return datasets.load_dataset(repo, config or None, split=split)


def hub_rows(ref: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a published dataset: ``{text}`` (an audio turn) for ``tokens`` rows,
    ``{conversations}`` for chat rows; anything else is an error naming the row."""
    ds = load_published(ref, split)
    columns = set(ds.column_names)
    out = []
    sound = "tokens" if "tokens" in columns else "text" if "text" in columns else None
    if sound is not None:
        for i, row in enumerate(ds):
            try:
                value = row[sound]
                codes = T.string_to_codes(value) if isinstance(value, str) else value
                out.append({"text": T.audio_turn(codes), "source": row.get("index", i)})
            except T.SoundTokenError as err:
                raise HubDataError(f"{ref}: row {i}: '{sound}': {err}") from err
        return out
    key = "conversations" if "conversations" in columns else "messages"
    if key not in columns:
        raise HubDataError(
            f"{ref}: expected a 'tokens', 'text' or 'conversations' column, found {sorted(columns)}"
        )
    for i, row in enumerate(ds):
        chat = row[key]
        if not chat or any({"role", "content"} - set(m) for m in chat):
            raise HubDataError(f"{ref}: row {i}: '{key}' needs role/content messages")
        out.append(
            {
                "conversations": [{"role": m["role"], "content": m["content"]} for m in chat],
                "source": row.get("index", i),
            }
        )
    return out
