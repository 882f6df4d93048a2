"""Paired source/target batches for domain adaptation.

:class:`PairedDataset` wraps two datasets that each index items and build a
batch in ``collate(indices) -> {"inputs": ..., ...}`` (the strategies'
``ItemDataset``): the loop's sampler walks the labelled source, and every
source batch gets as many target inputs, drawn with replacement from the
target pool by a seeded generator. An epoch is one pass over the source,
however large or small the target is.

Example:
    >>> batch = PairedDataset(source_ds, target_ds, seed=0).collate([0, 1, 2])  # doctest: +SKIP
    >>> sorted(batch)                                                            # doctest: +SKIP
    ['inputs', 'target_inputs', 'targets', 'task']
"""
from __future__ import annotations

from typing import Any

import torch


class PairedDataset(torch.utils.data.Dataset):
    """Source items (by index) with target inputs sampled with replacement.

    Args:
        source: the labelled dataset the loop iterates (``__len__``, ``collate``).
        target: the target pool (``__len__``, ``collate``); its labels, if any, are not used.
        seed: seed of the target draws; the same seed gives the same pairs.
    """

    def __init__(self, source: Any, target: Any, seed: int = 0):
        if len(target) == 0:
            raise ValueError("PairedDataset needs a non-empty target pool.")
        self.source = source
        self.target = target
        # Under several processes every process draws the same target indices for its own
        # source shard: harmless (the target is unlabelled), but not more target variety.
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        batch = self.source.collate(indices)
        draw = torch.randint(len(self.target), (len(indices),), generator=self.generator).tolist()
        batch["target_inputs"] = self.target.collate(draw)["inputs"]
        return batch
