"""The base LLM of notebook 00: trained here on the tiny world, or fetched (Llama-3.1-8B-Instruct).

Either way the result is an HF-format checkpoint directory with its tokenizer, which the
vocabulary extension (notebook 01) and lm-evaluation-harness load.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from ichigo_lib.checkpoints import fetch_hf_checkpoint, write_llama_init
from ichigo_lib.config import BaseModelConfig
from ichigo_lib.evaluate.mc import FORMAT_WORDS
from ichigo_lib.train.launch import TuneRun, compose_config, train_overrides, tune_run
from ichigo_lib.wordtok import build_word_tokenizer
from ichigo_lib.world import World


@dataclass(frozen=True)
class TextCorpus:
    """The chat-format training file and its size in tokens."""

    path: Path
    rows: int
    tokens: int
    max_row_tokens: int


def write_text_corpus(world: World, tokenizer, path: str | Path) -> TextCorpus:
    """Write the world's training conversations as JSON lines ``{"conversations": [...]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conversations = world.text_conversations("train")
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = [len(row) + 1 for row in ids]  # + the end-of-text token torchtune appends
    with open(path, "w") as fh:
        for conv in conversations:
            fh.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")
    return TextCorpus(path, len(conversations), sum(lengths), max(lengths))


def passes_needed(corpus: TextCorpus, num_steps: int, batch_size: int, max_seq_len: int) -> int:
    """How many passes over the corpus make ``num_steps`` packed batches (10 % packing slack)."""
    tokens_needed = num_steps * batch_size * max_seq_len * 1.1
    return max(1, math.ceil(tokens_needed / corpus.tokens))


@dataclass(frozen=True)
class TrainedBase:
    model_dir: Path
    corpus: TextCorpus
    passes: int
    tune: TuneRun


def train_base_model(
    cfg: BaseModelConfig, world: World, out_dir: str | Path, num_threads: int | None = None
) -> TrainedBase:
    """Train the tiny stand-in LLM with torchtune on the world's chat-format text."""
    if cfg.arch is None or cfg.train is None:
        raise ValueError("base_model.source 'train' needs base_model.arch and base_model.train")
    if cfg.train.num_steps is None:
        raise ValueError("base_model.train needs num_steps (epochs is for the training phases)")
    out_dir = Path(out_dir)
    train = cfg.train
    if train.max_seq_len > cfg.arch.max_seq_len:
        raise ValueError(
            f"base_model.train.max_seq_len {train.max_seq_len} exceeds the model's "
            f"base_model.arch.max_seq_len {cfg.arch.max_seq_len}"
        )
    tokenizer = build_word_tokenizer([*world.vocabulary(), *FORMAT_WORDS])
    init_dir = write_llama_init(cfg.arch, tokenizer, out_dir / "init", seed=train.seed)
    corpus = write_text_corpus(world, tokenizer, out_dir / "text_train.jsonl")
    if corpus.max_row_tokens > train.max_seq_len:
        raise ValueError(
            f"{corpus.path}: a conversation has {corpus.max_row_tokens} tokens, more than "
            f"base_model.train.max_seq_len={train.max_seq_len}"
        )
    passes = passes_needed(corpus, train.num_steps, train.batch_size, train.max_seq_len)
    arch = cfg.arch
    values = {
        "output_dir": str(out_dir / "torchtune"),
        "model.vocab_size": len(tokenizer),
        "model.num_layers": arch.num_layers,
        "model.num_heads": arch.num_heads,
        "model.num_kv_heads": arch.num_kv_heads,
        "model.embed_dim": arch.embed_dim,
        "model.intermediate_dim": arch.intermediate_dim,
        "model.max_seq_len": arch.max_seq_len,
        "tokenizer.path": str(init_dir / "tokenizer.json"),
        "dataset.data_files": str(corpus.path),
        "dataset.repeat": passes,
        "checkpointer.checkpoint_dir": str(init_dir),
        **train_overrides(train),
    }
    # a fresh run: stale epoch_* files of an earlier config must not mix into this checkpoint
    shutil.rmtree(out_dir / "torchtune", ignore_errors=True)
    run = tune_run(
        "full_finetune_single_device",
        compose_config("base_text", values),
        out_dir,
        num_steps=train.num_steps,
        num_threads=num_threads,
    )
    return TrainedBase(run.checkpoint_dir(), corpus, passes, run)


def fetch_base_model(cfg: BaseModelConfig) -> Path:
    """The published base LLM (``hf_repo``: a hub id or a local directory)."""
    if not cfg.hf_repo:
        raise ValueError("base_model.source 'hf' needs base_model.hf_repo")
    return fetch_hf_checkpoint(cfg.hf_repo, cfg.hf_revision)
