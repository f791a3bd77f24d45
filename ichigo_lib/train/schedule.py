"""How long a phase trains: optimizer steps, checkpoint periods and passes over its rows.

A phase is defined either by ``train.num_steps`` (the toy profiles) or by ``train.epochs``
(``full``: one epoch of the paper's data, as upstream trained each phase). Upstream did not pack:
8,064 steps x 480 rows, 7,400 x 256 and 644 x 256 are one epoch of ~3.87M, ~1.89M and ~165K
rows. Packed, the same steps would see each row about as many times as rows fit in a pack, so
with ``epochs`` the steps follow from the data: the samples (packs, or rows unpacked) of the
passes, ``steps = samples // global batch`` (torchtune drops the last, partial batch), split
into the checkpoint periods (torchtune epochs) of at most ``checkpoint_every`` steps. Each period
reads its own slice of one shuffled pass (:class:`~ichigo_lib.train.sampler.PassSliceSampler`),
so every sample is read once; the few that do not fill a period's last batch are left out and
reported. The learning rate warms up and decays (cosine) over exactly these steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ichigo_lib.config import PhaseConfig
from ichigo_lib.train.packing import count_packs, repeated_efficiency


@dataclass(frozen=True)
class Schedule:
    """A phase's optimizer steps in ``periods`` checkpoint periods over ``passes`` of its rows.

    ``samples``: packs (packed) or rows in those passes; ``period_samples``: with ``epochs``,
    the samples each period reads (None: every period reshuffles all samples, ``num_steps``
    mode); ``tokens``: tokens the steps train on, the passes' tokens times the share of samples
    read (in expectation: which samples are left out, or read twice, is random).
    """

    num_steps: int
    periods: int
    passes: int
    global_batch: int
    samples: int
    period_samples: int | None
    tokens: int

    @property
    def steps_per_period(self) -> int:
        return self.num_steps // self.periods

    @property
    def samples_left_out(self) -> int:
        """Samples of the passes no step reads (``epochs`` mode; 0 with ``num_steps``)."""
        return (
            0 if self.period_samples is None else self.samples - self.num_steps * self.global_batch
        )

    def metrics(self) -> dict[str, int]:
        """What a notebook logs about the schedule (manifest metrics)."""
        return {
            "train_steps_planned": self.num_steps,
            "train_periods": self.periods,
            "train_samples": self.samples,
            "train_samples_left_out": self.samples_left_out,
            "train_tokens_planned": self.tokens,
        }


def global_batch(phase: PhaseConfig) -> int:
    """Samples per optimizer step: batch size x gradient accumulation x processes."""
    t = phase.train
    return t.batch_size * t.gradient_accumulation_steps * t.nproc_per_node


def steps_per_epoch(samples: int, batch: int) -> int:
    """Optimizer steps of one pass over ``samples`` at ``batch`` samples per step (the last,
    partial batch left out): 8,064 x 480 rows -> 8,064 steps."""
    return samples // batch


def epoch_periods(steps: int, checkpoint_every: int | None) -> tuple[int, int]:
    """``(periods, steps per period)`` for ``steps`` split into periods of at most
    ``checkpoint_every`` steps, as even as whole steps allow (the remainder, fewer steps than
    periods, is left out)."""
    periods = math.ceil(steps / checkpoint_every) if checkpoint_every else 1
    return periods, steps // periods


def phase_schedule(phase: PhaseConfig, lengths: list[int]) -> Schedule:
    """The schedule of ``phase`` over rows of ``lengths`` tokens (as torchtune tokenizes them)."""
    t, batch = phase.train, global_batch(phase)
    if t.epochs is not None:
        passes = t.epochs
        samples = _samples(lengths, passes, phase)
        steps = steps_per_epoch(samples, batch)
        if steps < 1:
            raise ValueError(
                f"{len(lengths)} rows make {samples} samples, less than one step of {batch} "
                f"(batch_size x gradient_accumulation_steps x nproc_per_node)"
            )
        periods, per_period = epoch_periods(steps, phase.checkpoint_every)
        num_steps, period_samples = periods * per_period, per_period * batch
    else:
        num_steps, per_period = t.num_steps, phase.checkpoint_every or t.num_steps
        passes = passes_needed(lengths, phase, per_period)
        samples = _samples(lengths, passes, phase)
        periods, period_samples = num_steps // per_period, None
    tokens = round(sum(lengths) * passes * num_steps * batch / samples)
    return Schedule(num_steps, periods, passes, batch, samples, period_samples, tokens)


def _samples(lengths: list[int], passes: int, phase: PhaseConfig) -> int:
    """Samples of ``passes`` passes: packs (the dataset components' bin-packed order) or rows."""
    t = phase.train
    return count_packs(lengths, passes, t.max_seq_len) if t.packed else len(lengths) * passes


def passes_needed(lengths: list[int], phase: PhaseConfig, period_steps: int) -> int:
    """Repeats of the corpus so each checkpoint period (torchtune epoch) has enough batches:
    every epoch starts the (re-shuffled) data from the beginning."""
    t = phase.train
    per_pass = (
        sum(lengths) / (t.max_seq_len * repeated_efficiency(lengths, 1, t.max_seq_len))
        if t.packed
        else len(lengths)
    )
    return max(1, math.ceil(period_steps / max(per_pass / global_batch(phase), 1e-9) * 1.05))
