"""Training phases 1-3 with torchtune: rows to JSON lines, the composed config, the run.

A phase starts from a checkpoint directory (HF format with its tokenizer), trains on one of
notebook 02's datasets and checkpoints every ``checkpoint_every`` steps: the stock recipes save
once per epoch, so a phase is run as ``num_steps / checkpoint_every`` epochs over a corpus
repeated enough to fill them.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichigo_lib.checkpoints import safetensors_files, validate_hf_checkpoint
from ichigo_lib.config import PhaseConfig
from ichigo_lib.train.launch import TuneRun, compose_config, train_overrides, tune_run
from ichigo_lib.train.packing import repeated_efficiency
from ichigo_lib.train.resume import ResumeError, find_resume_point, resume_tune_run, run_config

TEMPLATES = {"sound": "phase_sound", "chat": "phase_chat"}


@dataclass(frozen=True)
class PhaseRows:
    """A phase's training rows as torchtune reads them, and what was left out."""

    path: Path
    rows: int
    tokens: int
    over_long: int
    lengths: list[int]


@dataclass(frozen=True)
class PhaseRun:
    tune: TuneRun
    passes: int
    checkpoints: list[Path]  # one per checkpoint period, in step order

    @property
    def final(self) -> Path:
        return self.checkpoints[-1]


def write_phase_rows(
    dataset_dir: str | Path, out_path: str | Path, count_tokens, max_seq_len: int
) -> PhaseRows:
    """JSON lines of a notebook-02 dataset (``text`` or ``conversations`` rows); rows longer than
    ``max_seq_len`` tokens are counted and left out, never cut."""
    import datasets

    ds = datasets.load_from_disk(str(dataset_dir))
    key = "text" if "text" in ds.column_names else "conversations"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lengths, over = [], 0
    with open(out_path, "w") as fh:
        for row in ds:
            n = count_tokens(row)
            if n > max_seq_len:
                over += 1
                continue
            lengths.append(n)
            fh.write(json.dumps({key: row[key]}, ensure_ascii=False) + "\n")
    if not lengths:
        raise ValueError(f"{dataset_dir}: no row fits max_seq_len={max_seq_len} ({over} over)")
    return PhaseRows(out_path, len(lengths), sum(lengths), over, lengths)


def passes_needed(rows: PhaseRows, phase: PhaseConfig) -> int:
    """Repeats of the corpus so each epoch (checkpoint period) has enough batches: every epoch
    starts the (re-shuffled) data from the beginning."""
    t = phase.train
    steps = phase.checkpoint_every or t.num_steps
    per_pass = (
        rows.tokens / (t.max_seq_len * repeated_efficiency(rows.lengths, 1, t.max_seq_len))
        if t.packed
        else rows.rows
    )
    batches_per_pass = per_pass / (t.batch_size * t.gradient_accumulation_steps * t.nproc_per_node)
    return max(1, math.ceil(steps / max(batches_per_pass, 1e-9) * 1.05))


def phase_values(
    phase: PhaseConfig, kind: str, start_dir: Path, rows: PhaseRows, out_dir: Path
) -> dict[str, Any]:
    """The dotted torchtune keys a phase sets on its template."""
    values = {
        "output_dir": str(out_dir / "torchtune"),
        "checkpointer.checkpoint_dir": str(start_dir),
        "checkpointer.checkpoint_files": safetensors_files(start_dir),
        "dataset.data_files": str(rows.path),
        "dataset.repeat": passes_needed(rows, phase),
        "epochs": phase.num_checkpoints,
        **train_overrides(phase.train),
        "max_steps_per_epoch": phase.checkpoint_every or phase.train.num_steps,
    }
    if kind == "sound":  # loss on every token: there is no user turn to mask
        del values["dataset.train_on_input"]
    return values


_RESUME_KEYS = ("resume_from_checkpoint", "checkpointer", "model", "tokenizer")


def _resumable(output_dir: Path, cfg) -> bool:
    """Whether ``output_dir`` holds an unfinished run of ``cfg`` with a checkpoint to go on from
    (the keys resuming changes are not compared)."""
    from omegaconf import OmegaConf

    try:
        point = find_resume_point(output_dir)
        old = run_config(output_dir)
    except ResumeError:
        return False
    if point.complete or point.checkpoint_dir is None:
        return False

    def key(c) -> dict:
        tree = OmegaConf.to_container(c, resolve=False)
        return {k: v for k, v in tree.items() if k not in _RESUME_KEYS}

    return key(old) == key(cfg)


def train_phase(
    name: str,
    phase: PhaseConfig,
    kind: str,
    start_dir: str | Path,
    rows: PhaseRows,
    out_dir: str | Path,
    num_threads: int | None = None,
    on_progress=None,
) -> PhaseRun:
    """Train one phase from ``start_dir``; returns its checkpoints (``on_progress``: see
    :func:`~ichigo_lib.train.launch.tune_run`).

    A run of the same config killed midway in ``out_dir`` resumes from its last checkpoint;
    anything else there (another config, a finished run) is replaced by a fresh run.
    """
    if kind not in TEMPLATES:
        raise ValueError(f"kind must be one of {sorted(TEMPLATES)}, got {kind!r}")
    out_dir, start_dir = Path(out_dir), Path(start_dir)
    context = validate_hf_checkpoint(start_dir)["max_position_embeddings"]
    if phase.train.max_seq_len > context:
        raise ValueError(
            f"{name}.train.max_seq_len {phase.train.max_seq_len} exceeds the model's context "
            f"({context}, {start_dir}/config.json max_position_embeddings)"
        )
    values = phase_values(phase, kind, start_dir, rows, out_dir)
    cfg = compose_config(TEMPLATES[kind], values)
    launch = {
        "num_steps": phase.train.num_steps,
        "nproc_per_node": phase.train.nproc_per_node,
        "num_threads": num_threads,
        "torchrun_args": phase.train.torchrun_args,
        "on_progress": on_progress,
    }
    if _resumable(out_dir / "torchtune", cfg):
        run = resume_tune_run(phase.recipe, out_dir / "torchtune", out_dir, **launch)
    else:
        shutil.rmtree(out_dir / "torchtune", ignore_errors=True)
        run = tune_run(phase.recipe, cfg, out_dir, **launch)
    epochs = sorted(
        (out_dir / "torchtune").glob("epoch_*"), key=lambda p: int(p.name.split("_")[1])
    )
    return PhaseRun(run, values["dataset.repeat"], epochs)
