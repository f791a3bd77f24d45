"""Row order for packing: which rows share a ``max_seq_len`` pack, and how full the packs are.

torchtune's ``PackedDataset`` packs rows greedily in dataset order, a row never split across
packs, padding the rest of each pack. In a random order that wastes about half a row per pack
(~6 % for 60-token rows in 512-token packs). :func:`pass_order` instead groups each pass's
rows first-fit decreasing into packs and lists the packs in a shuffled order, so the greedy
packer meets rows that already fill their packs. :func:`count_packs` says how many packs (the
samples a packed phase trains on) the packer will make.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_order(lengths: Sequence[int], epoch: int, pack_len: int | None = None) -> np.ndarray:
    """Row indices of pass ``epoch`` over rows of ``lengths`` tokens.

    Without ``pack_len``: the first pass in file order, later ones in a seeded shuffle. With it:
    the rows grouped first-fit, longest first (ties in a seeded order), into packs of at most
    ``pack_len`` tokens, and the packs in a seeded shuffle.
    """
    rng = np.random.default_rng(epoch)
    order = rng.permutation(len(lengths)) if (epoch or pack_len) else np.arange(len(lengths))
    if pack_len is None:
        return order
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = order[np.argsort(-lengths[order], kind="stable")]  # longest first, ties seeded
    if rows.size and lengths[rows[0]] > pack_len:
        i = int(rows[0])
        raise ValueError(f"row {i} has {lengths[i]} tokens, more than the pack length {pack_len}")
    pack_of = _first_fit(lengths[rows], pack_len)
    packs = rng.permutation(int(pack_of.max()) + 1 if pack_of.size else 0)
    rank = np.empty_like(packs)
    rank[packs] = np.arange(packs.size)
    # packs in shuffled order, each pack's rows in the order first-fit placed them
    return rows[np.lexsort((np.arange(rows.size), rank[pack_of]))].astype(np.int64)


def _first_fit(sizes: np.ndarray, pack_len: int) -> np.ndarray:
    """The pack of each of ``sizes`` (non-increasing) under first fit: each goes to the oldest
    pack with room for it, else a new one. Equal sizes are placed together: each pack with room
    takes as many as fit, oldest first, the rest open new packs."""
    pack_of = np.empty(sizes.size, dtype=np.int64)
    room = np.empty(0, dtype=np.int64)
    start = 0
    while start < sizes.size:
        n = int(sizes[start])
        stop = start + int(np.searchsorted(-sizes[start:], -n, side="right"))
        fits = np.flatnonzero(room >= n)
        take = room[fits] // n
        filled = np.cumsum(take)
        used = int(np.searchsorted(filled, stop - start))  # packs needed from those with room
        take[used + 1 :] = 0
        if used < fits.size:
            take[used] -= filled[used] - (stop - start)
        placed = int(take.sum())
        pack_of[start : start + placed] = np.repeat(fits, take)
        room[fits] -= take * n
        per_pack = pack_len // n  # the rest open new packs, each as full as it gets
        fresh = np.arange(stop - start - placed) // per_pack
        pack_of[start + placed : stop] = room.size + fresh
        counts = np.bincount(fresh, minlength=fresh.max() + 1 if fresh.size else 0)
        room = np.concatenate([room, pack_len - counts * n])
        start = stop
    return pack_of


def _greedy_packs(lengths: Sequence[int], max_seq_len: int) -> int:
    """Packs torchtune's ``PackedDataset`` makes from rows of ``lengths`` (in this order)."""
    packs, fill = 0, max_seq_len
    for n in lengths:
        if n > max_seq_len:
            raise ValueError(f"a row of {n} tokens does not fit max_seq_len={max_seq_len}")
        if fill + n > max_seq_len:
            packs, fill = packs + 1, 0
        fill += n
    return packs


def packing_efficiency(lengths: Sequence[int], max_seq_len: int) -> float:
    """Non-padding fraction when rows of ``lengths`` (in this order) are packed greedily into
    ``max_seq_len`` packs, a row never split (torchtune's ``PackedDataset``)."""
    return sum(lengths) / (_greedy_packs(lengths, max_seq_len) * max_seq_len)


def _passes(lengths: Sequence[int], passes: int, pack_len: int) -> list[int]:
    """Row lengths of ``passes`` passes in :func:`pass_order`, as the packer meets them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate(
        [lengths[pass_order(lengths, e, pack_len)] for e in range(passes)]
    ).tolist()


def repeated_efficiency(lengths: Sequence[int], passes: int, pack_len: int) -> float:
    """Packing efficiency of ``passes`` passes ordered by :func:`pass_order`, as the dataset
    components with ``bin_pack`` feed them to the packer."""
    return packing_efficiency(_passes(lengths, passes, pack_len), pack_len)


def count_packs(lengths: Sequence[int], passes: int, pack_len: int) -> int:
    """Packs (samples) of ``passes`` bin-packed passes over rows of ``lengths``: the length of
    the ``PackedDataset`` a packed phase trains on."""
    return _greedy_packs(_passes(lengths, passes, pack_len), pack_len)
