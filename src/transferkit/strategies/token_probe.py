"""Linear probe on frozen token features: the feature-extraction baseline of per-token tasks.

The backbone runs once over the words (no gradients); each word's feature is
its sequence feature at the position the task reads it from (the first
sub-token, see :func:`~transferkit.tasks.token_classification.label_positions`),
and :func:`~transferkit.strategies.linear_probe.fit_linear_head` fits one
logistic regression over every word's tag. The fitted ``nn.Linear`` acts on the
last axis, so the bundle's head tags every token of a ``[B, T, D]`` sequence.
"""
from __future__ import annotations

import numpy as np

from transferkit.backbones.base import Backbone
from transferkit.data.batches import run_batches
from transferkit.data.dataset import TaskData
from transferkit.tasks import IGNORE_INDEX


def word_features(backbone: Backbone, data: TaskData, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(X [words, D], y [words])``: the frozen features and tags of every labelled word of ``data``."""
    task = data.task_spec
    items = list(data.items)
    xs, ys = [], []
    backbone.eval()
    for idx, inputs, feats in run_batches(lambda batch: backbone.features(batch, "sequence"),
                                          lambda idx: backbone.preprocess([items[i] for i in idx]), len(items),
                                          batch_size=batch_size, device=next(backbone.parameters()).device):
        labels = task.collate_targets(data.targets[idx], inputs).to(feats.device)  # targets: an object array
        keep = labels != IGNORE_INDEX
        xs.append(feats[keep].float().cpu().numpy())
        ys.append(labels[keep].cpu().numpy())
    return np.concatenate(xs), np.concatenate(ys)

