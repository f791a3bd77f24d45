"""Compose torchtune configs from a profile and launch ``tune run`` with live progress."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ichigo_lib.config import CONFIG_DIR, TrainConfig
from ichigo_lib.errors import IchigoError

TORCHTUNE_CONFIGS = CONFIG_DIR / "torchtune"
RECIPES_PACKAGE = "ichigo_lib.train.recipes"
RECIPES_DIR = Path(__file__).parent / "recipes"
REQUIRED = "REQUIRED"
_STEP_LINE = re.compile(r"^Step (\d+) \| (.*)$")


class TrainingError(IchigoError, RuntimeError):
    """``tune run`` exited with an error; the message carries the tail of its log."""


LOSSES = {
    "token": "torchtune.modules.loss.CEWithChunkedOutputLoss",
    "turn": "ichigo_lib.train.loss.TurnMeanCrossEntropyLoss",
}


def train_overrides(train: TrainConfig) -> dict[str, Any]:
    """The torchtune keys a profile's :class:`TrainConfig` sets."""
    return {
        "seed": train.seed,
        "batch_size": train.batch_size,
        "max_steps_per_epoch": train.num_steps,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "optimizer.lr": train.lr,
        "optimizer.betas": list(train.betas),
        "optimizer.weight_decay": train.weight_decay,
        "optimizer.fused": train.fused_optimizer,
        "lr_scheduler.num_warmup_steps": train.warmup_steps,
        "clip_grad_norm": train.clip_grad_norm,
        "dtype": train.dtype,
        "device": train.device,
        "compile": train.compile,
        "enable_activation_checkpointing": train.activation_checkpointing,
        "log_every_n_steps": train.log_every_n_steps,
        "tokenizer.max_seq_len": train.max_seq_len,
        "dataset.packed": train.packed,
        "dataset.train_on_input": train.train_on_input,
        "loss._component_": LOSSES[train.loss_weighting],
    }


def compose_config(template: str | Path, values: dict[str, Any]) -> DictConfig:
    """Load a torchtune YAML (a name under ``configs/torchtune`` or a path), set dotted keys.

    Every ``REQUIRED`` placeholder must be filled; a key the template lacks is an error.
    """
    path = Path(template)
    if not path.suffix:
        path = TORCHTUNE_CONFIGS / f"{template}.yaml"
    cfg = OmegaConf.load(path)
    for key, value in values.items():
        if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            raise KeyError(f"{path}: no key '{key}' to set")
        OmegaConf.update(cfg, key, value, merge=False)
    missing = [k for k, v in _flatten(OmegaConf.to_container(cfg)).items() if v == REQUIRED]
    if missing:
        raise ValueError(f"{path}: keys left REQUIRED: {missing}")
    return cfg


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def read_metric_log(path: str | Path) -> list[dict[str, float]]:
    """Parse torchtune's ``DiskLogger`` file into one dict per logged step."""
    rows = []
    for line in Path(path).read_text().splitlines():
        match = _STEP_LINE.match(line.strip())
        if not match:
            continue
        row: dict[str, float] = {"step": int(match.group(1))}
        for item in match.group(2).split():
            name, _, value = item.partition(":")
            try:
                row[name] = float(value)
            except ValueError:
                continue
        rows.append(row)
    return rows


@dataclass(frozen=True)
class TuneRun:
    """A finished ``tune run``: where its config, console log, metrics and checkpoint are."""

    config_path: Path
    console_log: Path
    metric_log: Path
    output_dir: Path
    wall_time_s: float

    def metrics(self) -> list[dict[str, float]]:
        return read_metric_log(self.metric_log)

    def checkpoint_dir(self) -> Path:
        """The last epoch's HF-format checkpoint directory."""
        epochs = sorted(self.output_dir.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
        if not epochs:
            raise FileNotFoundError(f"no epoch_* checkpoint under {self.output_dir}")
        return epochs[-1]


def recipe_path(recipe: str) -> str:
    """What ``tune run`` is given for ``recipe``: this package's version of a stock recipe when
    there is one (``ichigo_lib/train/recipes/<recipe>.py``, which tune run imports as the module
    ``ichigo_lib.train.recipes.<recipe>``), else the stock recipe's name."""
    if (RECIPES_DIR / f"{recipe}.py").exists():
        return f"{RECIPES_PACKAGE.replace('.', '/')}/{recipe}.py"
    return recipe


def tune_command(
    recipe: str,
    config_path: str | Path,
    nproc_per_node: int = 1,
    torchrun_args: tuple[str, ...] | list[str] = (),
) -> list[str]:
    """The ``tune run`` command line; a distributed recipe always goes through torchrun, with
    ``torchrun_args`` (``--nnodes``, ``--rdzv_endpoint``, ...) for multi-node runs."""
    cmd = [str(Path(sys.executable).with_name("tune")), "run"]
    if nproc_per_node > 1 or recipe.endswith("_distributed") or torchrun_args:
        cmd += ["--nproc_per_node", str(nproc_per_node), *torchrun_args]
    return [*cmd, recipe_path(recipe), "--config", str(config_path)]


def tune_run(
    recipe: str,
    cfg: DictConfig,
    run_dir: str | Path,
    num_steps: int | None = None,
    nproc_per_node: int = 1,
    num_threads: int | None = None,
    keep_metric_log: bool = False,
    torchrun_args: tuple[str, ...] | list[str] = (),
    on_progress: Callable[[list[dict[str, float]], bool], None] | None = None,
) -> TuneRun:
    """Run a torchtune recipe in a subprocess; stream its log; show a progress bar with loss.

    ``on_progress(rows, final)`` gets the metric log's rows while it grows (about every 5 s)
    and once more at the end (``final=True``), e.g. :class:`ichigo_lib.plots.LiveLoss`.

    The resolved config is written to ``run_dir/<recipe>.yaml`` and the console output to
    ``run_dir/<recipe>.log``. A non-zero exit raises :class:`TrainingError` with the log's tail.
    The metric log starts empty unless ``keep_metric_log`` (a resumed run appends to it).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / f"{recipe}.yaml"
    OmegaConf.save(cfg, config_path)
    output_dir = Path(cfg.output_dir)
    metric_log = Path(cfg.metric_logger.log_dir) / cfg.metric_logger.filename
    if not keep_metric_log:
        metric_log.unlink(missing_ok=True)
    console_log = run_dir / f"{recipe}.log"
    cmd = tune_command(recipe, config_path, nproc_per_node, torchrun_args)
    env = dict(os.environ)
    if num_threads:
        env["OMP_NUM_THREADS"] = str(num_threads)
    t0 = time.perf_counter()
    tail: deque[str] = deque(maxlen=60)
    with (
        open(console_log, "w") as log,
        tqdm(total=num_steps, desc=recipe, unit="step", mininterval=2.0) as bar,
    ):
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, tail), daemon=True)
        reader.start()
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.5)
            _update_bar(bar, metric_log)
            if on_progress and metric_log.exists() and time.monotonic() - last > 5:
                on_progress(read_metric_log(metric_log), False)
                last = time.monotonic()
        reader.join()
        _update_bar(bar, metric_log)
    if on_progress and metric_log.exists():
        on_progress(read_metric_log(metric_log), True)
    if proc.returncode != 0:
        raise TrainingError(
            f"tune run {recipe} failed (exit {proc.returncode}); config {config_path}, "
            f"full log {console_log}. Last lines:\n" + "".join(tail)
        )
    return TuneRun(config_path, console_log, metric_log, output_dir, time.perf_counter() - t0)


def _pump(stream, log, tail: deque[str]) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        tail.append(line)


def _update_bar(bar: tqdm, metric_log: Path) -> None:
    if not metric_log.exists():
        return
    rows = read_metric_log(metric_log)
    if rows:
        bar.n = int(rows[-1]["step"])
        bar.set_postfix(loss=f"{rows[-1].get('loss', float('nan')):.3f}")
        bar.refresh()
