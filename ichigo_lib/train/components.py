"""Builders that torchtune YAML configs name as ``_component_``s."""

from __future__ import annotations

import numpy as np
import torch
from torchtune.data import OpenAIToMessages
from torchtune.datasets import PackedDataset, SFTDataset
from torchtune.models.llama3 import llama3
from torchtune.modules import TransformerDecoder

from ichigo_lib.train.packing import pass_order
from ichigo_lib.wordtok import OverLongError


def tiny_llama(
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    rope_base: float = 500000.0,
    norm_eps: float = 1e-5,
) -> TransformerDecoder:
    """The tiny profile's stand-in base LLM: a small Llama-3 (torchtune's ``llama3`` builder).

    Also turns on flushing of denormal floats: without it a tiny model's CPU steps slow down
    ~20x once weights decay towards zero (see the reference notes on tiny-scale training).
    """
    torch.set_flush_denormal(True)
    return llama3(
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len,
        rope_base=rope_base,
        norm_eps=norm_eps,
    )


class _PassOrder:
    """Flat index -> row of a corpus repeated pass after pass (see ``packing.pass_order``)."""

    def __init__(self, lengths: list[int], pack_len: int | None):
        self.lengths, self.pack_len = lengths, pack_len
        self._orders: dict[int, np.ndarray] = {}

    def row(self, index: int) -> int:
        epoch, offset = divmod(index, len(self.lengths))
        if epoch not in self._orders:
            self._orders[epoch] = pass_order(self.lengths, epoch, self.pack_len)
        return int(self._orders[epoch][offset])


class SoundCompletionDataset(torch.utils.data.Dataset):
    """Phase-1 rows ``{"text": "<|sound_start|>...<|sound_end|>"}`` from JSON lines, repeated.

    Each row becomes ``[BOS, sound_start, codes.., sound_end, EOS]`` with loss on every token
    (no transcript, no chat template), tokenized once. A row longer than the tokenizer's
    ``max_seq_len`` is an error naming it: rows are counted and filtered when the data is made,
    never cut here.
    """

    def __init__(
        self,
        tokenizer,
        data_files: str,
        repeat: int = 1,
        column: str = "text",
        bin_pack: bool = False,
    ):
        from datasets import load_dataset

        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        rows = load_dataset("json", data_files=data_files, split="train")
        limit = tokenizer.max_seq_len
        # every row's ids in one int32 array (4 bytes a token, not a Python int object each)
        pieces, lengths = [], np.zeros(len(rows), dtype=np.int64)
        for i, text in enumerate(rows[column]):
            toks = tokenizer.encode(text, add_bos=True, add_eos=True)
            if limit is not None and len(toks) > limit:
                raise ValueError(f"{data_files}: row {i} has {len(toks)} tokens > {limit}")
            pieces.append(np.asarray(toks, dtype=np.int32))
            lengths[i] = len(toks)
        self._ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self._repeat = repeat
        self._order = _PassOrder(lengths.tolist(), limit if bin_pack else None)

    def __len__(self) -> int:
        return (len(self._starts) - 1) * self._repeat

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self._order.row(index)
        toks = self._ids[self._starts[row] : self._starts[row + 1]].tolist()
        return {"tokens": toks, "labels": list(toks)}


def sound_completion_dataset(
    tokenizer, data_files: str, repeat: int = 1, packed: bool = False, bin_pack: bool = False
):
    """torchtune ``_component_``: :class:`SoundCompletionDataset`, optionally packed
    (``bin_pack``: each pass ordered so packs come out nearly full, see ``train.packing``)."""
    ds = SoundCompletionDataset(tokenizer, data_files, repeat, bin_pack=packed and bin_pack)
    return _maybe_packed(ds, tokenizer, packed)


def _maybe_packed(ds, tokenizer, packed: bool, split_across_pack: bool = False):
    if not packed:
        return ds
    if tokenizer.max_seq_len is None:
        raise ValueError("packed=True needs tokenizer.max_seq_len to be set")
    return PackedDataset(ds, max_seq_len=tokenizer.max_seq_len, split_across_pack=split_across_pack)


class ChatDataset(SFTDataset):
    """Chat rows ``{"conversations": [{role, content}, ...]}`` from JSON lines, repeated.

    ``repeat`` lets one torchtune epoch cover many passes over a small corpus (the stock
    recipes checkpoint once per epoch); each pass visits the rows in its own seeded order, so
    packed batches differ between passes, and each row is tokenized once. Indexing past the
    end raises ``IndexError``, which torchtune's ``PackedDataset`` needs to stop iterating.
    """

    def __init__(
        self,
        tokenizer,
        data_files: str,
        train_on_input: bool,
        repeat: int = 1,
        pack_len: int | None = None,
    ):
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        super().__init__(
            source="json",
            data_files=data_files,
            split="train",
            message_transform=OpenAIToMessages(
                train_on_input=train_on_input, column_map={"messages": "conversations"}
            ),
            model_transform=tokenizer,
        )
        self._data_files = data_files
        self._rows = super().__len__()
        self._repeat = repeat
        self._cache: dict[int, dict] = {}
        lengths = [len(self._sample(i)["tokens"]) for i in range(self._rows)] if pack_len else []
        self._order = _PassOrder(lengths or [0] * self._rows, pack_len)

    def __len__(self) -> int:
        return self._rows * self._repeat

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        return {k: v.tolist() for k, v in self._sample(self._order.row(index)).items()}

    def _sample(self, row: int) -> dict:
        """A row's ``tokens`` and ``labels`` as int32 arrays, tokenized once and kept compact
        (4 bytes a token instead of a Python int object each)."""
        if row not in self._cache:
            try:
                sample = super().__getitem__(row)
            except OverLongError as err:
                raise ValueError(f"{self._data_files}: row {row}: {err}") from err
            self._cache[row] = {k: np.asarray(sample[k], dtype=np.int32) for k in sample}
        return self._cache[row]


def chat_dataset(
    tokenizer,
    data_files: str,
    train_on_input: bool = True,
    repeat: int = 1,
    packed: bool = False,
    split_across_pack: bool = False,
    bin_pack: bool = False,
):
    """torchtune ``_component_``: :class:`ChatDataset`, optionally packed to ``max_seq_len``
    (``bin_pack``: each pass ordered so packs come out nearly full, see ``train.packing``)."""
    pack_len = tokenizer.max_seq_len if packed and bin_pack else None
    ds = ChatDataset(tokenizer, data_files, train_on_input, repeat=repeat, pack_len=pack_len)
    return _maybe_packed(ds, tokenizer, packed, split_across_pack)


def llama_from_checkpoint(checkpoint_dir: str) -> TransformerDecoder:
    """torchtune ``_component_``: the Llama of ``checkpoint_dir/config.json`` (any size: the
    tiny model or Llama-3.1-s with its 128,771-token vocabulary); the checkpointer loads the
    weights. Flushes denormal floats, as :func:`tiny_llama`."""
    from ichigo_lib.checkpoints import torchtune_llama_from_config

    torch.set_flush_denormal(True)
    return torchtune_llama_from_config(checkpoint_dir)


def checkpoint_tokenizer(checkpoint_dir: str, max_seq_len: int | None = None):
    """torchtune ``_component_``: the tokenizer saved with a checkpoint: Llama-3.1's tiktoken
    file (``original/tokenizer.model``) with the sound layout, else the word-level
    ``tokenizer.json`` of the tiny model."""
    from pathlib import Path

    from ichigo_lib.tokens import llama3_s_tokenizer
    from ichigo_lib.wordtok import word_tokenizer

    tiktoken = Path(checkpoint_dir) / "original" / "tokenizer.model"
    if tiktoken.exists():
        return llama3_s_tokenizer(str(tiktoken), max_seq_len=max_seq_len)
    return word_tokenizer(str(Path(checkpoint_dir) / "tokenizer.json"), max_seq_len=max_seq_len)
