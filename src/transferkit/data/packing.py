"""Packing for text-generation training: several prompt/completion pairs in one row (``-o packing=true``).

After TRL's ``packing=True`` with its best-fit-decreasing strategy: the training pairs are tokenized once,
and whole pairs (never split) are placed into rows of at most the backbone's ``max_length`` tokens, longest
first, each into the first row with room (first-fit decreasing). A batch then holds ``batch_size`` full rows
instead of ``batch_size`` pairs padded to the longest: fewer padding tokens, and fewer optimizer steps per
epoch. The loss still reads only the completions' tokens; positions restart with every pair and attention
stays within it (see :meth:`~transferkit.backbones.causal_text.CausalPreprocess.packed_batch`), so a pair's
loss is what it would be unpacked.

Example:
    >>> plan_rows([5, 3, 4, 2], capacity=8)
    [[0, 1], [2, 3]]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from transferkit.data.dataset import TaskData


def plan_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Item indices per row: longest first, each into the first row it fits (first-fit decreasing).

    Every length must be at most ``capacity`` (the preprocessing refuses longer items, naming them). Rows
    keep their items in placement order; the plan depends only on the lengths.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


class PackedDataset(torch.utils.data.Dataset):
    """The packed rows of a text-generation training set; ``collate`` gives what a training step reads.

    The same interface as :class:`~transferkit.strategies.base.ItemDataset` (indices in, a batch dict out),
    over rows instead of items.

    Args:
        data: text-generation training data (prompts and completions).
        preprocess: the causal backbone's preprocessing (:class:`~transferkit.backbones.causal_text.CausalPreprocess`).
    """

    def __init__(self, data: TaskData, preprocess):
        task = data.task_spec
        items = task.training_items(data.items, np.asarray(data.targets))
        self.encoded = [preprocess.encode(item, f"item {i}", training=True) for i, item in enumerate(items)]
        self.rows = plan_rows([len(ids) for ids, _ in self.encoded], preprocess.max_length)
        self.preprocess, self.task = preprocess, data.task

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        inputs = self.preprocess.packed_batch([[self.encoded[j] for j in self.rows[i]] for i in indices])
        return {"inputs": inputs, "task": self.task, "targets": inputs["labels"]}
