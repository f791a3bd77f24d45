"""Continue a killed ``tune run`` from its last complete epoch checkpoint.

The stock recipes checkpoint once per epoch, so a run that should checkpoint every ``k`` steps is
run as epochs of ``max_steps_per_epoch = k`` steps (see :mod:`ichigo_lib.train.phases`). After
each epoch but the last, torchtune 0.6.1 writes ``<output_dir>/epoch_<n>/`` (HF weights, their
index, the files of the start checkpoint) and then overwrites the single
``<output_dir>/recipe_state/recipe_state.pt`` (optimizer, ``epochs_run``, seed); the last epoch
writes no recipe state. Resuming uses torchtune's own mechanism: ``resume_from_checkpoint: True``,
weights named relative to ``output_dir``, recipe state from ``recipe_checkpoint``. Each epoch
starts the data afresh from its seeded shuffle (0.6.1 saves the dataloader's position but never
loads it) and the schedule from the global step, so the resumed run repeats the uninterrupted
run's steps after the checkpoint exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ichigo_lib.errors import IchigoError
from ichigo_lib.train.export import INDEX
from ichigo_lib.train.launch import TuneRun, tune_run

RUN_CONFIG = "torchtune_config.yaml"  # torchtune saves the run's config here when it starts
RECIPE_STATE = "recipe_state/recipe_state.pt"
_STEP = re.compile(r"Step (\d+) \|")


class ResumeError(IchigoError, RuntimeError):
    """A run that cannot be resumed; the message says why and what to do."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a run stands: epochs whose checkpoint is complete, and the last such checkpoint."""

    output_dir: Path
    epochs_run: int
    total_epochs: int
    checkpoint_dir: Path | None

    @property
    def complete(self) -> bool:
        return self.epochs_run == self.total_epochs


def run_config(output_dir: str | Path) -> DictConfig:
    """The config a ``tune run`` saved in its ``output_dir`` when it started."""
    path = Path(output_dir) / RUN_CONFIG
    if not path.exists():
        raise ResumeError(f"{path} not found: no torchtune run ever started in {output_dir}")
    return OmegaConf.load(path)


def epoch_is_complete(epoch_dir: Path) -> bool:
    """Whether an ``epoch_<n>`` directory holds a whole HF checkpoint (weights written first,
    then their index, then ``config.json`` and the other files of the start checkpoint)."""
    index = epoch_dir / INDEX
    if not (index.exists() and (epoch_dir / "config.json").exists()):
        return False
    shards = set(json.loads(index.read_text())["weight_map"].values())
    return all((epoch_dir / shard).exists() for shard in shards)


def find_resume_point(output_dir: str | Path) -> ResumePoint:
    """The last complete epoch checkpoint of the run in ``output_dir``.

    An intermediate epoch counts once ``recipe_state.pt`` (written after its weights) says it
    ran; the last epoch counts once its checkpoint is complete.
    """
    output_dir = Path(output_dir)
    cfg = run_config(output_dir)
    total = int(cfg.epochs)
    final = output_dir / f"epoch_{total - 1}"
    if epoch_is_complete(final):
        return ResumePoint(output_dir, total, total, final)
    state_path = output_dir / RECIPE_STATE
    if not state_path.exists():
        return ResumePoint(output_dir, 0, total, None)
    try:
        state = torch.load(state_path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # a truncated zip, a pickling error: the file is unusable
        raise ResumeError(
            f"{state_path} cannot be read ({type(err).__name__}: {err}); the run was probably "
            "killed while writing it, and torchtune keeps no earlier copy: start the run again"
        ) from err
    epochs_run = int(state["epochs_run"])
    checkpoint = output_dir / f"epoch_{epochs_run - 1}"
    if not epoch_is_complete(checkpoint):
        raise ResumeError(
            f"{state_path} says {epochs_run} epochs ran but {checkpoint} is incomplete"
        )
    return ResumePoint(output_dir, epochs_run, total, checkpoint)


def resume_config(output_dir: str | Path) -> DictConfig:
    """The run's own config, set to continue from its last complete epoch checkpoint.

    ``checkpointer.checkpoint_dir`` becomes that epoch directory (its ``config.json`` and
    tokenizer are copies of the start checkpoint's), ``checkpoint_files`` its weight shards
    relative to ``output_dir`` (where torchtune 0.6.1 looks for them when resuming), and
    ``recipe_checkpoint`` the recipe state.
    """
    return _resume_config(find_resume_point(output_dir))


def _resume_config(point: ResumePoint) -> DictConfig:
    if point.complete:
        raise ResumeError(f"{point.checkpoint_dir} is the final checkpoint: nothing to resume")
    if point.checkpoint_dir is None:
        raise ResumeError(
            f"{point.output_dir}: no epoch finished before the run stopped: start the run again"
        )
    cfg = run_config(point.output_dir)
    where = point.output_dir / RUN_CONFIG
    if cfg.get("enable_async_checkpointing", False):
        raise ResumeError(
            f"{where}: enable_async_checkpointing is set; its distributed checkpoints resume "
            "with torchtune's own flags, not through this function"
        )
    if cfg.get("max_steps_per_epoch") is None:
        raise ResumeError(
            f"{where}: max_steps_per_epoch is not set; a resumable run needs it "
            "(the steps of one checkpoint period)"
        )
    index = json.loads((point.checkpoint_dir / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    cfg.resume_from_checkpoint = True
    cfg.checkpointer.checkpoint_dir = str(point.checkpoint_dir)
    cfg.checkpointer.checkpoint_files = [f"{point.checkpoint_dir.name}/{s}" for s in shards]
    cfg.checkpointer.recipe_checkpoint = RECIPE_STATE
    return cfg


def resume_tune_run(
    recipe: str,
    output_dir: str | Path,
    run_dir: str | Path,
    num_steps: int | None = None,
    nproc_per_node: int = 1,
    num_threads: int | None = None,
    torchrun_args: tuple[str, ...] | list[str] = (),
    on_progress=None,
) -> TuneRun:
    """Continue the killed run in ``output_dir`` with :func:`tune_run`.

    Epoch directories after the resume point (partial or not backed by the recipe state) are
    removed, and the metric log keeps only the checkpointed steps, so the resumed run's steps
    follow on from them.
    """
    point = find_resume_point(output_dir)
    cfg = _resume_config(point)
    for epoch_dir in point.output_dir.glob("epoch_*"):
        if int(epoch_dir.name.split("_")[1]) >= point.epochs_run:
            shutil.rmtree(epoch_dir)
    metric_log = Path(cfg.metric_logger.log_dir) / cfg.metric_logger.filename
    truncate_metric_log(metric_log, point.epochs_run * int(cfg.max_steps_per_epoch))
    return tune_run(
        recipe,
        cfg,
        run_dir,
        num_steps=num_steps,
        nproc_per_node=nproc_per_node,
        num_threads=num_threads,
        keep_metric_log=True,
        torchrun_args=torchrun_args,
        on_progress=on_progress,
    )


def truncate_metric_log(path: str | Path, last_step: int) -> None:
    """Keep the lines of a ``DiskLogger`` file up to optimizer step ``last_step`` (atomically)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        match = _STEP.match(line)
        if match and line.endswith("\n") and int(match.group(1)) <= last_step:
            kept.append(line)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
