"""Training phases 1-3 with torchtune: rows to JSON lines, the composed config, the run.

A phase starts from a checkpoint directory (HF format with its tokenizer), trains on one of
notebook 02's datasets and checkpoints every ``checkpoint_every`` steps: the stock recipes save
once per epoch, so a phase is run as one torchtune epoch per checkpoint period. How many steps
and periods, over how many passes of the rows, is the phase's :mod:`~ichigo_lib.train.schedule`
(``train.num_steps`` over a corpus repeated enough to fill the periods, or ``train.epochs``
passes read once each).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichigo_lib.checkpoints import safetensors_files, validate_hf_checkpoint
from ichigo_lib.config import PhaseConfig
from ichigo_lib.data.phases import BATCH_SIZE, count_batch, map_processes
from ichigo_lib.train.launch import TuneRun, compose_config, train_overrides, tune_run
from ichigo_lib.train.resume import ResumeError, find_resume_point, resume_tune_run, run_config
from ichigo_lib.train.schedule import Schedule, phase_schedule

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
    schedule: Schedule
    checkpoints: list[Path]  # one per checkpoint period, in step order

    @property
    def final(self) -> Path:
        return self.checkpoints[-1]

    @property
    def passes(self) -> int:
        return self.schedule.passes


def write_phase_rows(
    dataset_dir: str | Path,
    out_path: str | Path,
    count_tokens,
    max_seq_len: int,
    num_proc: int | None = None,
) -> PhaseRows:
    """JSON lines of a notebook-02 dataset (``text`` or ``conversations`` rows); rows longer than
    ``max_seq_len`` tokens are counted and left out, never cut.

    Tokens are counted in ``num_proc`` ``datasets.map`` processes over the memory-mapped
    dataset (``count_tokens``: :func:`~ichigo_lib.data.phases.token_counter`); the rows stream
    to ``out_path``, which appears only once complete.
    """
    import datasets

    ds = datasets.load_from_disk(str(dataset_dir))
    key = "text" if "text" in ds.column_names else "conversations"
    ds = ds.select_columns([key])
    counted = ds.map(
        _count_rows,
        batched=True,
        batch_size=BATCH_SIZE,
        fn_kwargs={"count": count_tokens},
        remove_columns=[key],
        keep_in_memory=True,  # one int per row; nothing is written beside the dataset
        num_proc=map_processes(num_proc, len(ds)),
        desc=f"counting tokens: {Path(dataset_dir).name}",
    )
    lengths = np.asarray(counted.with_format("numpy")["num_tokens"], dtype=np.int64)
    keep = lengths <= max_seq_len
    if not keep.any():
        raise ValueError(f"{dataset_dir}: no row fits max_seq_len={max_seq_len} ({len(keep)} over)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    with open(partial, "w") as fh:
        for start, batch in zip(range(0, len(ds), BATCH_SIZE), ds.iter(BATCH_SIZE), strict=True):
            for value, fits in zip(batch[key], keep[start : start + BATCH_SIZE], strict=True):
                if fits:
                    fh.write(json.dumps({key: value}, ensure_ascii=False) + "\n")
    os.replace(partial, out_path)
    kept = lengths[keep]
    return PhaseRows(out_path, len(kept), int(kept.sum()), int((~keep).sum()), kept.tolist())


def _count_rows(batch, count) -> dict[str, list[int]]:
    return {"num_tokens": count_batch(count, batch)}


def phase_values(
    phase: PhaseConfig,
    kind: str,
    start_dir: Path,
    rows: PhaseRows,
    out_dir: Path,
    schedule: Schedule,
) -> dict[str, Any]:
    """The dotted torchtune keys a phase sets on its template."""
    slices = schedule.period_samples
    values = {
        "output_dir": str(out_dir / "torchtune"),
        "checkpointer.checkpoint_dir": str(start_dir),
        "checkpointer.checkpoint_files": safetensors_files(start_dir),
        "dataset.data_files": str(rows.path),
        "dataset.repeat": schedule.passes,
        "epochs": schedule.periods,
        **train_overrides(phase.train),
        "max_steps_per_epoch": schedule.steps_per_period,
        "data_slices": None
        if slices is None
        else {"samples": schedule.samples, "period_samples": slices},
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
    """Train one phase from ``start_dir`` on its :func:`~ichigo_lib.train.schedule.phase_schedule`;
    returns its checkpoints (``on_progress``: see :func:`~ichigo_lib.train.launch.tune_run`).

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
    schedule = phase_schedule(phase, rows.lengths)
    values = phase_values(phase, kind, start_dir, rows, out_dir, schedule)
    cfg = compose_config(TEMPLATES[kind], values)
    launch = {
        "num_steps": schedule.num_steps,
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
    return PhaseRun(run, schedule, epochs)
