"""Ichigo sound tokens: WhisperVQ codes as LLM vocabulary entries.

A WhisperVQ code ``c`` (0..512) is written ``<|sound_cccc|>`` (4 zero-padded digits); an audio
turn is ``<|sound_start|>`` + the concatenated sound tokens + ``<|sound_end|>``. Code 512 is the
WhisperVQ mask/pad code: real encodings never emit it, but it is a valid token. This module
converts codes <-> strings <-> token ids (vectorised with numpy), places the 515 new tokens in
Hugging Face and torchtune tokenizers, and grows a model's embeddings to match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ichigo_lib.errors import IchigoError

NUM_CODES = 513
MASK_CODE = 512
SOUND_START = "<|sound_start|>"
SOUND_END = "<|sound_end|>"
SOUND_TOKENS: tuple[str, ...] = tuple(f"<|sound_{c:04d}|>" for c in range(NUM_CODES))

_TOKEN_LEN = len(SOUND_TOKENS[0])  # 14 characters per sound token
_TABLE = np.frombuffer("".join(SOUND_TOKENS).encode("ascii"), dtype=np.uint8).reshape(NUM_CODES, -1)
_TEMPLATE = _TABLE[0]
_DIGITS = slice(8, 12)  # the "cccc" in "<|sound_cccc|>"
_PLACE_VALUES = np.array([1000, 100, 10, 1], dtype=np.int64)
_FIXED = np.ones(_TOKEN_LEN, dtype=bool)
_FIXED[_DIGITS] = False


class SoundTokenError(IchigoError, ValueError):
    """Malformed sound codes, sound-token text, sound ids or sound-token layout."""


def _as_int_array(values, name: str) -> np.ndarray:
    """``values`` as an int64 array; floats must be integral, other dtypes are rejected."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind != "f":
        raise SoundTokenError(f"{name}s must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
    if bad.size:
        idx = np.unravel_index(bad[0], arr.shape)
        raise SoundTokenError(f"{name} {arr[idx].item()!r} at index {_fmt(idx)} is not an integer")
    return arr.astype(np.int64)


def _fmt(idx: tuple) -> str:
    """An array index as ``3`` (1-D) or ``(1, 3)``."""
    return str(int(idx[0])) if len(idx) == 1 else str(tuple(int(i) for i in idx))


def _check_range(arr: np.ndarray, lo: int, hi: int, name: str, expected: str) -> None:
    """Raise naming the first entry of ``arr`` outside ``lo..hi-1``."""
    bad = np.flatnonzero((arr < lo) | (arr >= hi))
    if bad.size:
        idx = np.unravel_index(bad[0], arr.shape)
        raise SoundTokenError(f"{name} {int(arr[idx])} at index {_fmt(idx)} is {expected}")


def _as_codes(codes) -> np.ndarray:
    """Validated int64 array of WhisperVQ codes (any shape)."""
    arr = _as_int_array(codes, "code")
    _check_range(arr, 0, NUM_CODES, "code", f"outside 0..{NUM_CODES - 1}")
    return arr


def codes_to_string(codes) -> str:
    """Concatenated sound tokens for a 1-D sequence of codes (no boundary tokens)."""
    arr = _as_codes(codes)
    if arr.ndim != 1:
        raise SoundTokenError(f"codes must be 1-D, got shape {arr.shape}")
    return _TABLE[arr].tobytes().decode("ascii")


def audio_turn(codes) -> str:
    """``<|sound_start|>`` + sound tokens + ``<|sound_end|>``."""
    return SOUND_START + codes_to_string(codes) + SOUND_END


def _bad_text(text: str, offset: int, problem: str) -> SoundTokenError:
    snippet = repr(text[offset : offset + 20]) if offset < len(text) else "end of text"
    return SoundTokenError(f"{problem} at character {offset}: {snippet}")


def string_to_codes(text: str) -> np.ndarray:
    """int64 codes of a bare run of sound tokens or of exactly one audio turn."""
    start, end = 0, len(text)
    if text.startswith(SOUND_START):
        if not text.endswith(SOUND_END):
            raise _bad_text(text, end, f"missing {SOUND_END}")
        start, end = len(SOUND_START), end - len(SOUND_END)
    elif text.endswith(SOUND_END):
        raise _bad_text(text, 0, f"missing {SOUND_START}")
    return _parse_run(text, start, end)


def _parse_run(text: str, start: int, end: int) -> np.ndarray:
    """Codes of ``text[start:end]`` (sound tokens only); errors give offsets in ``text``."""
    # One byte per character (non-ASCII becomes "?"), so byte offsets are character offsets.
    raw = text[start:end].encode("ascii", errors="replace")
    n = len(raw) // _TOKEN_LEN
    chars = np.frombuffer(raw, dtype=np.uint8, count=n * _TOKEN_LEN).reshape(n, _TOKEN_LEN)
    digits = chars[:, _DIGITS]
    bad_rows = np.flatnonzero(
        (chars[:, _FIXED] != _TEMPLATE[_FIXED]).any(axis=1)
        | ((digits < ord("0")) | (digits > ord("9"))).any(axis=1)
    )
    if bad_rows.size or len(raw) % _TOKEN_LEN:
        row = bad_rows[0] if bad_rows.size else n
        raise _bad_text(text, start + row * _TOKEN_LEN, "expected a sound token <|sound_dddd|>")
    codes = (digits.astype(np.int64) - ord("0")) @ _PLACE_VALUES
    over = np.flatnonzero(codes >= NUM_CODES)
    if over.size:
        raise _bad_text(
            text, start + over[0] * _TOKEN_LEN, f"sound code {codes[over[0]]} > {MASK_CODE}"
        )
    return codes


@dataclass(frozen=True)
class SoundVocab:
    """Where the 515 sound tokens sit in an LLM vocabulary (sound ids are contiguous)."""

    start_id: int
    end_id: int
    first_sound_id: int

    def __post_init__(self):
        sound = range(self.first_sound_id, self.first_sound_id + NUM_CODES)
        if self.start_id == self.end_id or self.start_id in sound or self.end_id in sound:
            raise SoundTokenError(f"overlapping sound-token ids in {self}")

    @property
    def sound_ids(self) -> np.ndarray:
        """The 513 sound ids in code order."""
        return np.arange(self.first_sound_id, self.first_sound_id + NUM_CODES, dtype=np.int64)

    @property
    def vocab_size_min(self) -> int:
        """Smallest vocabulary size that holds every sound id."""
        return self.first_sound_id + NUM_CODES

    def codes_to_ids(self, codes) -> np.ndarray:
        """Token ids of WhisperVQ codes (any shape)."""
        return _as_codes(codes) + self.first_sound_id

    def ids_to_codes(self, ids) -> np.ndarray:
        """WhisperVQ codes of sound token ids (any shape); other ids raise."""
        arr = _as_int_array(ids, "id")
        last = self.first_sound_id + NUM_CODES - 1
        _check_range(
            arr,
            self.first_sound_id,
            last + 1,
            "id",
            f"not a sound id ({self.first_sound_id}..{last})",
        )
        return arr - self.first_sound_id

    def is_sound_id(self, ids) -> np.ndarray:
        """Boolean mask of the sound ids (boundaries excluded)."""
        arr = np.asarray(ids)
        return (arr >= self.first_sound_id) & (arr < self.first_sound_id + NUM_CODES)

    def wrap(self, codes) -> np.ndarray:
        """Token ids of an audio turn: ``[start_id, *sound ids, end_id]``."""
        ids = self.codes_to_ids(codes)
        if ids.ndim != 1:
            raise SoundTokenError(f"codes must be 1-D, got shape {ids.shape}")
        return np.concatenate([[self.start_id], ids, [self.end_id]]).astype(np.int64)


LLAMA31 = SoundVocab(start_id=128256, end_id=128257, first_sound_id=128258)
LLAMA31_VOCAB_SIZE = 128771

_ALL_TOKENS = (SOUND_START, SOUND_END, *SOUND_TOKENS)


def sound_vocab_of(tokenizer) -> SoundVocab:
    """The sound-token layout of an already extended Hugging Face tokenizer."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in _ALL_TOKENS if t not in vocab]
    if missing:
        raise SoundTokenError(
            f"tokenizer lacks {len(missing)} of the {len(_ALL_TOKENS)} sound tokens, "
            f"e.g. {missing[0]}; call extend_hf_tokenizer first"
        )
    ids = np.array([vocab[t] for t in SOUND_TOKENS], dtype=np.int64)
    layout = SoundVocab(vocab[SOUND_START], vocab[SOUND_END], int(ids[0]))
    bad = np.flatnonzero(ids != layout.sound_ids)
    if bad.size:
        raise SoundTokenError(
            f"sound tokens are not contiguous in code order: {SOUND_TOKENS[bad[0]]} has id "
            f"{ids[bad[0]]}, expected {layout.sound_ids[bad[0]]}"
        )
    return layout


def extend_hf_tokenizer(tokenizer) -> SoundVocab:
    """Add start, end, then the 513 sound tokens to a HF fast tokenizer; return their layout.

    Start/end become special tokens, sound tokens plain added tokens; ids are contiguous after
    the current vocabulary. Idempotent on a tokenizer already extended this way.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    present = [t for t in _ALL_TOKENS if t in vocab]
    if not present:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [SOUND_START, SOUND_END]}, replace_extra_special_tokens=False
        )
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in SOUND_TOKENS])
    elif len(present) < len(_ALL_TOKENS):
        raise SoundTokenError(
            f"tokenizer already holds {len(present)} of the {len(_ALL_TOKENS)} sound tokens "
            f"(e.g. {present[0]}); refusing to extend it partially"
        )
    layout = sound_vocab_of(tokenizer)
    if (layout.end_id, layout.first_sound_id) != (layout.start_id + 1, layout.start_id + 2):
        raise SoundTokenError(f"sound tokens are not laid out start, end, sounds: {layout}")
    return layout


def __getattr__(name: str):
    """Define ``Llama3STokenizer`` on first use: importing torchtune takes seconds."""
    if name != "Llama3STokenizer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls = _define_llama3_s_tokenizer()
    return cls


def _define_llama3_s_tokenizer() -> type:
    """The torchtune tokenizer subclass (built once, by ``__getattr__``)."""
    from torchtune.models.llama3 import Llama3Tokenizer

    boundary = {SOUND_START: LLAMA31.start_id, SOUND_END: LLAMA31.end_id}
    pattern = re.compile(r"<\|sound_(?:start|end)\|>|(?:<\|sound_\d{4}\|>)+")

    class Llama3STokenizer(Llama3Tokenizer):
        """Llama-3 tiktoken tokenizer that encodes sound tokens in text as single ids.

        torchtune's ``encode`` treats special-token strings in text as plain text (tiktoken with
        ``allowed_special=set()``), so sound runs are split out here and mapped vectorised.
        """

        __qualname__ = "Llama3STokenizer"  # picklable as ichigo_lib.tokens.Llama3STokenizer

        sound_vocab = LLAMA31

        def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
            """Token ids of ``text``; sound tokens and boundaries become one id each."""
            ids = [self.bos_id] if add_bos else []
            pos = 0
            for m in pattern.finditer(text):
                ids += self._encode_plain(text, pos, m.start())
                if m.group() in boundary:
                    ids.append(boundary[m.group()])
                else:
                    ids += (_parse_run(text, m.start(), m.end()) + LLAMA31.first_sound_id).tolist()
                pos = m.end()
            ids += self._encode_plain(text, pos, len(text))
            return ids + [self.eos_id] if add_eos else ids

        def _encode_plain(self, text: str, start: int, stop: int) -> list[int]:
            """BPE ids of ``text[start:stop]``, refusing malformed sound tokens."""
            plain = text[start:stop]
            if "<|sound_" in plain:
                raise _bad_text(text, start + plain.index("<|sound_"), "malformed sound token")
            return super().encode(plain, add_bos=False, add_eos=False)

    return Llama3STokenizer


def llama3_s_tokenizer(path: str, max_seq_len: int | None = None, prompt_template=None):
    """torchtune Llama-3 tokenizer (tiktoken file at ``path``) with the Llama-3.1 sound layout.

    torchtune's ``LLAMA3_SPECIAL_TOKENS`` puts ``<|image|>`` at 128256; it moves to the one free
    slot, 128011, so that 128256.. hold start, end and the sound tokens (vocab size 128771).
    """
    from torchtune.data._prompt_templates import _get_prompt_template
    from torchtune.models.llama3._tokenizer import LLAMA3_SPECIAL_TOKENS

    ids = [LLAMA31.start_id, LLAMA31.end_id, *LLAMA31.sound_ids.tolist()]
    special = {
        **LLAMA3_SPECIAL_TOKENS,
        "<|image|>": 128011,
        **dict(zip(_ALL_TOKENS, ids, strict=True)),
    }
    template = _get_prompt_template(prompt_template) if prompt_template is not None else None
    cls = globals().get("Llama3STokenizer") or __getattr__("Llama3STokenizer")
    return cls(path, special_tokens=special, max_seq_len=max_seq_len, prompt_template=template)


def mean_extend(weight: torch.Tensor, num_new: int) -> torch.Tensor:
    """``weight`` (V, ...) with ``num_new`` rows appended, each the mean of the old rows."""
    if num_new < 0:
        raise ValueError(f"num_new must be >= 0, got {num_new}")
    acc = torch.promote_types(weight.dtype, torch.float32)
    mean = weight.mean(dim=0, keepdim=True, dtype=acc).to(weight.dtype)
    return torch.cat([weight, mean.expand(num_new, *weight.shape[1:])])


def _grow(module: nn.Module, name: str, num_new: int) -> None:
    """Replace ``module.<name>`` by its mean-extended copy, keeping requires_grad."""
    old = getattr(module, name)
    if old is not None:
        with torch.no_grad():
            new = nn.Parameter(mean_extend(old, num_new), requires_grad=old.requires_grad)
        setattr(module, name, new)


def resize_token_embeddings(model, new_vocab_size: int) -> None:
    """Grow input embeddings and output head of a HF or torchtune model in place.

    New rows are the mean of the old ones (so old-token logits are unchanged and new tokens
    start neutral). Tied weights stay tied; HF ``config.vocab_size`` is updated.
    """
    is_hf = hasattr(model, "get_input_embeddings")
    emb = model.get_input_embeddings() if is_hf else model.tok_embeddings
    out = model.get_output_embeddings() if is_hf else model.output
    old_size = emb.weight.shape[0]
    if new_vocab_size < old_size:
        raise SoundTokenError(f"cannot shrink vocabulary from {old_size} to {new_vocab_size}")
    num_new = new_vocab_size - old_size
    if num_new == 0:
        return
    tied = isinstance(out, nn.Linear) and out.weight is emb.weight
    _grow(emb, "weight", num_new)
    emb.num_embeddings = new_vocab_size
    if isinstance(out, nn.Linear):  # torchtune's TiedLinear reads emb.weight itself
        if tied:
            out.weight = emb.weight
        else:
            if out.weight.shape[0] != old_size:
                raise SoundTokenError(f"output head has {out.weight.shape[0]} rows, not {old_size}")
            _grow(out, "weight", num_new)
            _grow(out, "bias", num_new)
        out.out_features = new_vocab_size
    if is_hf:
        model.config.get_text_config().vocab_size = new_vocab_size
        if hasattr(model, "vocab_size"):
            model.vocab_size = new_vocab_size
