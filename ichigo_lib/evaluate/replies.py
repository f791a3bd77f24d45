"""Greedy replies of a checkpoint to chat prompts, and exact-match scoring of short answers.

Used for held-out spoken questions (the user turn is an audio turn, the reference the bare
answer word). Generation goes through transformers on the exported HF-format checkpoint, the
same directory lm-evaluation-harness reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ichigo_lib.evaluate.wer import normalise

# The pad token of a tokenizer that has none (Llama-3.1/3.2-Instruct publish none): Llama-3's
# own reserved padding token, else end-of-text. Padded positions are masked out either way.
PAD_FALLBACKS = ("<|finetune_right_pad_id|>", "<|end_of_text|>")


def batch_tokenizer(model_dir: str | Path, padding_side: str):
    """The checkpoint's tokenizer, padding on ``padding_side``, with a pad token
    (:data:`PAD_FALLBACKS` when it has none, as Llama-3.1-Instruct's)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        pad = next((t for t in PAD_FALLBACKS if t in vocab), None)
        if pad is None:
            raise ValueError(f"{model_dir}: the tokenizer has no pad token nor {PAD_FALLBACKS}")
        tok.pad_token = pad
    return tok


def generate_replies(
    model_dir: str | Path,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 8,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[str]:
    """The model's greedy reply to each chat (messages up to, not including, the answer)."""
    from transformers import AutoModelForCausalLM

    tok = batch_tokenizer(model_dir, "left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    stop = [tok.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")]
    texts = [
        tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    replies = []
    for start in range(0, len(texts), batch_size):
        batch = tok(
            texts[start : start + batch_size],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        ).to(device)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        replies += [tok.decode(row, skip_special_tokens=True).strip() for row in new]
    return replies


def matches(references: Sequence[str], replies: Sequence[str]) -> list[bool]:
    """Whether each reply equals its reference after :func:`~ichigo_lib.evaluate.wer.normalise`
    (case and punctuation ignored)."""
    if len(references) != len(replies) or not references:
        raise ValueError(f"{len(references)} references and {len(replies)} replies")
    return [normalise(r) == normalise(h) for r, h in zip(references, replies, strict=True)]


def exact_match(references: Sequence[str], replies: Sequence[str]) -> float:
    """Fraction of replies that :func:`matches` their reference."""
    return sum(matches(references, replies)) / len(references)
