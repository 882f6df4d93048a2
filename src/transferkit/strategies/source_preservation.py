"""What adaptation preserved of the source task: the source head's predictions before and after training.

:func:`source_predictions` runs a backbone's source head on (a fixed subset
of) a data set; :func:`source_agreement` is the share of items whose
prediction did not change; :func:`changes_backbone` says for which strategies
``fit`` and ``compare`` report it.
"""
from __future__ import annotations

import numpy as np
import torch

from transferkit.data.batches import to_device
from transferkit.data.dataset import TaskData
from transferkit.strategies.base import ItemDataset


def changes_backbone(strategy) -> bool:
    """Whether ``strategy`` trains the user's pre-trained backbone (its ``changes_backbone`` attribute)."""
    return getattr(strategy, "kind", "transfer") == "transfer" and bool(getattr(strategy, "changes_backbone", False))


@torch.no_grad()
def source_predictions(backbone, data: TaskData, batch_size: int = 64,
                       max_items: int | None = 1000) -> np.ndarray | None:
    """Argmax of the backbone's source head on the items of ``data``; ``None`` without a source head.

    At most ``max_items`` items are used: a fixed stratified subset (seed 0),
    the same on every call, so before/after predictions line up while the
    cost stays bounded on a large test split (``None``: every item).
    """
    from transferkit.data.splits import subsample

    if backbone is None or getattr(backbone, "source_head", None) is None or data is None:
        return None
    if max_items is not None and len(data):
        data = subsample(data, max_items, 0)
    ds = ItemDataset(data, backbone.preprocess, precompute=False)
    device, was_training = next(backbone.parameters()).device, backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, len(ds), batch_size):
            inputs = to_device(ds.collate(list(range(start, min(start + batch_size, len(ds)))))["inputs"], device)
            out.append(backbone.source_head(backbone.forward_features(inputs)).argmax(-1).cpu().numpy())
    finally:
        backbone.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def source_agreement(before: np.ndarray, after: np.ndarray) -> float:
    """Share of items whose source-head class is the same before and after adaptation (NaN if none)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"source predictions differ in shape: {before.shape} vs {after.shape}")
    return float((before == after).mean()) if before.size else float("nan")
