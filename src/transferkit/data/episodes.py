"""Episodic N-way K-shot sampling over :class:`TaskData`.

The sampler itself works on integer labels and lives in layer 1
(:class:`transferkit.evaluation.few_shot.EpisodeSampler`), where the few-shot
evaluation protocol needs it; this module re-exports it and adds the
:class:`TaskData` front that strategies use (class names in errors, a check
that the data is single-label classification).

Example:
    >>> import numpy as np
    >>> from transferkit.data.dataset import TaskData
    >>> data = TaskData(np.zeros((12, 2), np.float32), np.repeat([0, 1, 2], 4), "tabular",
    ...                 label_names=["a", "b", "c"])
    >>> ep = next(iter(episode_sampler(data, n_way=2, k_shot=1, n_query=2, episodes=5)))
    >>> ep.support_labels.tolist(), ep.query_labels.tolist()
    ([0, 1], [0, 0, 1, 1])
"""
from __future__ import annotations

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import DataError
from transferkit.evaluation.few_shot import Episode, EpisodeSampler

__all__ = ["Episode", "EpisodeSampler", "episode_sampler", "smallest_class"]


def _labels(data: TaskData, what: str) -> np.ndarray:
    if not data.task_spec.single_label:
        raise DataError(f"{what} needs single-label classification data; '{data.name}' is {data.task}.")
    if data.targets is None:
        raise DataError(f"{what} needs labelled data, but '{data.name}' has no labels.")
    return np.asarray(data.targets, dtype=np.int64)


def episode_sampler(data: TaskData, n_way: int, k_shot: int, n_query: int = 15, episodes: int = 600,
                    seed: int = 0) -> EpisodeSampler:
    """A seeded :class:`EpisodeSampler` over the labels of ``data`` (indices are rows of ``data``).

    Raises:
        DataError: the data is not labelled single-label classification, ``n_way``
            exceeds its number of classes, or a class has fewer than
            ``k_shot + n_query`` items (the message names the class).
    """
    labels = _labels(data, "Episodic sampling")
    return EpisodeSampler(labels, n_way, k_shot, n_query, episodes, seed, class_names=data.label_names)


def smallest_class(data: TaskData) -> tuple[int, int]:
    """``(number of classes present, items in the smallest of them)`` of classification ``data``."""
    labels = _labels(data, "Episodic sampling")
    counts = np.unique(labels, return_counts=True)[1]
    return len(counts), int(counts.min()) if len(counts) else 0
