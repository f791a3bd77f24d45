"""CTC prefix scores for joint CTC/attention decoding (Watanabe et al., 2017).

An attention decoder alone can drift into fluent text the audio does not contain; the CTC head
cannot, because its probability of a prefix is a sum over alignments of that prefix to the
frames. :class:`CTCPrefixScorer` keeps, for one growing prefix per batch row, the forward
variables of those alignments and scores candidate next characters (and end-of-text), all rows
and candidates at once; the loop runs over frames only.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """Prefix log-probabilities under CTC for a batch of utterances.

    ``logp`` (batch, frames, vocab) are the CTC head's log-softmax outputs and ``frames`` the
    valid frames per row (later frames are treated as certain blanks, so padding changes
    nothing). Each row starts from the empty prefix.
    """

    def __init__(self, logp: Tensor, frames: Tensor, blank: int = 0):
        batch, total, _ = logp.shape
        valid = torch.arange(total, device=logp.device)[None, :] < frames[:, None]
        padded = torch.full_like(logp, NEG_INF)
        padded[..., blank] = 0.0
        self.logp = torch.where(valid[..., None], logp, padded).transpose(0, 1)  # (T, B, V)
        self.blank = blank
        # forward variables of the current prefix, ending in a non-blank / a blank, per frame
        self.r_nonblank = torch.full((total, batch), NEG_INF, device=logp.device)
        self.r_blank = torch.cumsum(self.logp[:, :, blank], dim=0)
        self.last = torch.full((batch,), -1, dtype=torch.long, device=logp.device)
        self.score = torch.zeros(batch, device=logp.device)  # log P(prefix...) of the prefix

    def end_score(self) -> Tensor:
        """(batch,) log-probability that the utterance is exactly the current prefix."""
        return torch.logaddexp(self.r_nonblank[-1], self.r_blank[-1])

    def extend_scores(self, chars: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Prefix scores (batch, k) of the current prefix + each of ``chars`` (batch, k), and
        the forward variables to pass to :meth:`advance` for the chosen one."""
        x = torch.gather(self.logp, 2, chars[None].expand(self.logp.shape[0], -1, -1))  # (T, B, k)
        both = torch.logaddexp(self.r_nonblank, self.r_blank)[..., None]
        repeat = chars == self.last[:, None]  # a repeated character needs a blank in between
        phi = torch.where(repeat[None], self.r_blank[..., None], both)  # (T, B, k)
        r_n = torch.full_like(x, NEG_INF)
        r_b = torch.full_like(x, NEG_INF)
        empty = (self.last < 0)[:, None]
        r_n[0] = torch.where(empty, x[0], torch.full_like(x[0], NEG_INF))
        blank = self.logp[:, :, self.blank][..., None]
        for t in range(1, x.shape[0]):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + x[t]
            r_b[t] = torch.logaddexp(r_n[t - 1], r_b[t - 1]) + blank[t]
        starts = torch.cat([r_n[:1], phi[:-1] + x[1:]], dim=0)
        return torch.logsumexp(starts, dim=0), (r_n, r_b)

    def advance(self, chars: Tensor, scores: Tensor, state: tuple[Tensor, Tensor], pick: Tensor):
        """Append ``chars[b, pick[b]]`` to each row whose ``pick`` is >= 0."""
        keep = pick >= 0
        col = pick.clamp(min=0)
        rows = torch.arange(chars.shape[0], device=chars.device)
        r_n, r_b = state
        self.r_nonblank = torch.where(keep[None], r_n[:, rows, col], self.r_nonblank)
        self.r_blank = torch.where(keep[None], r_b[:, rows, col], self.r_blank)
        self.last = torch.where(keep, chars[rows, col], self.last)
        self.score = torch.where(keep, scores[rows, col], self.score)
