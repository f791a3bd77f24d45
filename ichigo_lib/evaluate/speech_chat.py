"""Spoken questions answered two ways, streamed token by token: early fusion and a cascade.

* :class:`EarlyFusion` (Ichigo): audio -> WhisperVQ codes -> an audio turn of sound tokens ->
  the speech LLM -> reply.
* :class:`Cascade`: audio -> an ASR callable (``asr(wav) -> str``) -> the transcript as the user
  turn -> a text LLM -> reply. The transcript really is the prompt (upstream's latency script
  never passed it to the LLM).

Both stream greedy token ids from :class:`ChatModel`; the first id yielded marks the time to
first token, whatever it is (an end-of-turn token counts too), so time to first token is defined
even for a model that answers nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ichigo_lib import tokens as T

ASR = Callable[[np.ndarray], str]
STOP_TOKENS = ("<|eot_id|>", "<|end_of_text|>")


class ChatModel:
    """An exported HF checkpoint (model + tokenizer) that streams greedy replies to chats."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir}: not a transformers checkpoint directory")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir).to(device).eval()
        self.device = device
        vocab = self.tokenizer.get_vocab()
        self.stop_ids = {vocab[t] for t in STOP_TOKENS if t in vocab}

    def prompt_ids(self, messages: list[dict[str, str]]) -> torch.Tensor:
        """Token ids of ``messages`` in the chat format, ending with the assistant header."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    @torch.inference_mode()
    def stream_ids(self, messages: list[dict[str, str]], max_new_tokens: int) -> Iterator[int]:
        """Greedy token ids one at a time (KV cache); the stop token, if reached, is the last."""
        ids, cache = self.prompt_ids(messages), None
        for _ in range(max_new_tokens):
            out = self.model(input_ids=ids, cache=cache, use_cache=True)
            cache = out.cache
            next_id = int(out.logits[0, -1].argmax())
            yield next_id
            if next_id in self.stop_ids:
                return
            ids = torch.tensor([[next_id]], device=self.device)

    def stream_text(self, messages: list[dict[str, str]], max_new_tokens: int) -> Iterator[str]:
        """The reply as growing text: each item is the whole reply decoded so far."""
        ids: list[int] = []
        for token_id in self.stream_ids(messages, max_new_tokens):
            if token_id in self.stop_ids:
                return
            ids.append(token_id)
            yield self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def reply(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        *_, last = ("", *self.stream_text(messages, max_new_tokens))
        return last


@dataclass
class EarlyFusion:
    """Ichigo's path: ``encode(wav) -> codes`` (WhisperVQ), the codes as an audio turn."""

    encode: Callable[[np.ndarray], np.ndarray]
    llm: ChatModel
    max_new_tokens: int = 32
    name: str = "early fusion (WhisperVQ -> speech LLM)"

    def messages(self, wav: np.ndarray) -> list[dict[str, str]]:
        return [{"role": "user", "content": T.audio_turn(self.encode(wav))}]

    def stream_ids(self, wav: np.ndarray) -> Iterator[int]:
        return self.llm.stream_ids(self.messages(wav), self.max_new_tokens)

    def reply(self, wav: np.ndarray) -> str:
        return self.llm.reply(self.messages(wav), self.max_new_tokens)


@dataclass
class Cascade:
    """ASR, then a text LLM answering the transcript; ``last_transcript`` keeps what it heard."""

    asr: ASR
    llm: ChatModel
    max_new_tokens: int = 32
    name: str = "cascade (ASR -> text LLM)"
    last_transcript: str = field(default="", init=False)

    def messages(self, wav: np.ndarray) -> list[dict[str, str]]:
        self.last_transcript = self.asr(wav)
        if not self.last_transcript.strip():
            # an empty user turn still gets an answer; keep it visible rather than fail
            return [{"role": "user", "content": ""}]
        return [{"role": "user", "content": self.last_transcript}]

    def stream_ids(self, wav: np.ndarray) -> Iterator[int]:
        return self.llm.stream_ids(self.messages(wav), self.max_new_tokens)

    def reply(self, wav: np.ndarray) -> str:
        return self.llm.reply(self.messages(wav), self.max_new_tokens)


def first_token(pipeline: EarlyFusion | Cascade) -> Callable[[np.ndarray], int]:
    """``wav -> first generated token id``: what time to first token times, end to end."""

    def run(wav: np.ndarray) -> int:
        return next(iter(pipeline.stream_ids(wav)))

    return run


def quantizer_encoder(vq, batch_size: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """``wav -> codes`` with a loaded WhisperVQ (one clip at a time, as a live request)."""

    def encode(wav: np.ndarray) -> np.ndarray:
        return vq.encode([wav], batch_size=batch_size)[0]

    return encode


def quantizer_asr(vq, lang: str = "en") -> ASR:
    """``wav -> transcript`` with the quantizer's own decoder (the tiny one's CTC head, or
    Whisper's decoder for real checkpoints): the ASR half of the cascade."""

    def asr(wav: np.ndarray) -> str:
        codes = vq.encode([wav], batch_size=1)[0]
        return vq.transcribe([codes], [lang])[0]

    return asr


def user_turns(rows: Sequence[dict]) -> list[list[dict[str, str]]]:
    """The first (user) message of each dataset row's ``conversations``, as a one-turn chat."""
    out = []
    for i, row in enumerate(rows):
        conv = row.get("conversations") or []
        if not conv or conv[0].get("role") != "user":
            raise ValueError(f"row {i}: conversations must start with a user turn, got {conv[:1]}")
        out.append([{"role": "user", "content": conv[0]["content"]}])
    return out
