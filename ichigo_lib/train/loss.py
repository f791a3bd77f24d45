"""Cross-entropy with every trained turn weighted equally, whatever its length.

torchtune's losses average over trained tokens, so a turn's weight in a batch is its length: a
15-token transcript counts 3x a one-word answer. :class:`TurnMeanCrossEntropyLoss` averages
within each turn first (a turn: a maximal run of trained labels, which in a chat row with the
loss on answers only is one assistant message) and then over turns. It takes what the stock
recipes pass a loss, ``(logits, labels)`` already shifted, and runs unchanged inside them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def turn_ids(labels: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, int]:
    """The turn of each label of ``labels`` (flattened; -1 where ignored), and the turns.

    A turn is a maximal run of consecutive labels along the last axis that are not
    ``ignore_index``; a run never continues from one row of a batch into the next.
    """
    trained = labels != ignore_index
    before = torch.cat([trained.new_zeros(*trained.shape[:-1], 1), trained[..., :-1]], dim=-1)
    starts = (trained & ~before).reshape(-1)
    ids = torch.cumsum(starts.long(), 0) - 1
    return torch.where(trained.reshape(-1), ids, torch.full_like(ids, -1)), int(starts.sum())


class TurnMeanCrossEntropyLoss(nn.Module):
    """Mean over turns of each turn's mean token cross-entropy (see the module docstring).

    ``logits``: ``[tokens, vocab]`` or ``[batch, seq, vocab]``; ``labels`` the matching shape
    without the vocabulary axis. The stock recipes pass flat labels and end every sequence
    with an ignored label, so there too no turn runs from one sequence into the next. A batch
    with no trained label gives a zero loss that still back-propagates.
    """

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, list):
            raise TypeError("TurnMeanCrossEntropyLoss takes whole logits, not output chunks")
        ids, turns = turn_ids(labels, self.ignore_index)
        labels = labels.reshape(-1)
        logits = logits.reshape(labels.numel(), -1)
        if turns == 0:
            return logits.sum() * 0.0
        trained = ids >= 0
        token_loss = F.cross_entropy(logits[trained].float(), labels[trained], reduction="none")
        per_turn = token_loss.new_zeros(turns).index_add_(0, ids[trained], token_loss)
        counts = torch.bincount(ids[trained], minlength=turns).to(token_loss.dtype)
        return (per_turn / counts).mean()


def loss_shares(rows, count, batch_size: int = 1000) -> dict[str, dict[str, float]]:
    """The share of a phase's loss that each row ``kind`` carries, the loss on answers only.

    ``rows``: a ``datasets.Dataset`` of ``conversations`` and ``kind``; ``count``: the phase's
    :class:`~ichigo_lib.data.phases.TokenCounter`. Under ``"token"`` weighting a kind's share is
    its share of trained tokens (each assistant message: header, content, EOT), under
    ``"turn"`` its share of assistant messages.
    """
    tokens: dict[str, int] = {}
    turns: dict[str, int] = {}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        answers = [[m for m in c if m["role"] == "assistant"] for c in batch["conversations"]]
        sizes = count.batch({"conversations": answers})
        for kind, chat, n in zip(batch["kind"], answers, sizes, strict=True):
            tokens[kind] = tokens.get(kind, 0) + n - 2  # without the row's BOS and EOS
            turns[kind] = turns.get(kind, 0) + len(chat)
    return {"token": _shares(tokens), "turn": _shares(turns)}


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}
