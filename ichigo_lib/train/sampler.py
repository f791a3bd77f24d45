"""One pass over a dataset split across torchtune epochs (a phase's checkpoint periods).

The stock recipes checkpoint once per epoch and reshuffle the whole dataset every epoch, so
periods of a phase defined by ``train.epochs`` would read overlapping random subsets.
:class:`PassSliceSampler` stands in for the recipes' ``StatefulDistributedSampler`` (see
``ichigo_lib.train.recipes``): epoch ``e`` reads the ``e``-th slice of ``period_samples`` of
one seeded permutation, each rank every ``num_replicas``-th sample of it, so the periods
together read every sample at most once. A resumed run starts at the slice of its epoch.
"""

from __future__ import annotations

import torch
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler


class PassSliceSampler(StatefulDistributedSampler):
    """Epoch ``e`` yields this rank's share of slice ``e`` of one seeded permutation.

    ``samples``: the dataset length the phase's schedule was derived for (a different length
    means the schedule's token counts disagree with the training tokenizer: an error).
    """

    def __init__(
        self,
        dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        *,
        samples: int,
        period_samples: int,
    ):
        super().__init__(dataset, num_replicas, rank, shuffle, seed, drop_last)
        if len(dataset) != samples:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, the phase's schedule was derived for "
                f"{samples}: its row lengths disagree with the training tokenizer's"
            )
        if period_samples % self.num_replicas:
            raise ValueError(
                f"a period's {period_samples} samples do not split over {self.num_replicas} "
                "ranks: the schedule's nproc_per_node disagrees with the launch"
            )
        self.period_samples = period_samples
        self.num_samples = period_samples // self.num_replicas
        self.total_size = period_samples

    def _slice(self) -> list[int]:
        start = self.epoch * self.period_samples
        if start + self.period_samples > len(self.dataset):
            raise ValueError(
                f"epoch {self.epoch} needs samples {start}..{start + self.period_samples - 1} "
                f"of a dataset of {len(self.dataset)}: more epochs than the schedule's periods"
            )
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        return order[start + self.rank : start + self.period_samples : self.num_replicas].tolist()

    def __iter__(self):
        self.yielded, self.next_yielded = self.next_yielded or 0, None
        for index in self._slice()[self.yielded :]:
            self.yielded += 1
            yield index
