"""The linear probe on features larger than the memory: a minibatch fit over the cached feature file.

:func:`fit_streaming_head` reads the features of :func:`~transferkit.data.cache.feature_file` a
minibatch of rows at a time (never the whole ``[N, D]`` array): one pass for the mean and standard
deviation, then :data:`EPOCHS` epochs of Adam on the L2-regularised objective of scikit-learn's
logistic regression, ``mean(loss) + ||w||^2 / (2 C N)`` (cross-entropy for classes, binary
cross-entropy per label for multi-label, squared error for values), one head per candidate ``C``
trained in the same pass, the best chosen on the validation split. The result is the same
``linear_head`` as the closed-form fit, with the standardisation folded in.

:func:`fits_in_memory` says when the closed-form fit would not fit: it holds about four float64 copies
of the features, and gets at most half of what is available (free memory, and the address space left
under ``RLIMIT_AS``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.data.memory import fits_in_memory_share
from transferkit.errors import ConfigError
from transferkit.strategies.base import linear_head
from transferkit.tasks import get_task

__all__ = ["EPOCHS", "fit_streaming_head", "fits_in_memory", "predict_in_chunks"]

EPOCHS = 10
#: Rows per minibatch: 512, fewer where that would exceed 16 MB of float32 features.
BATCH = 512


def fits_in_memory(rows: int, dim: int) -> bool:
    """Whether the closed-form fit's float64 copies of ``[rows, dim]`` features take under half the available memory."""
    return fits_in_memory_share(4 * 8 * rows * dim, 0.5)


def _moments(features) -> tuple[np.ndarray, np.ndarray]:
    total, squares = np.zeros(features.shape[1]), np.zeros(features.shape[1])
    for _, chunk in features.chunks():
        chunk = chunk.astype(np.float64)
        total += chunk.sum(0)
        squares += (chunk * chunk).sum(0)
    mean = total / len(features)
    return mean, np.sqrt(np.maximum(squares / len(features) - mean * mean, 0)) + 1e-6


def _loss(kind: str):
    if kind == "class":
        return lambda z, y: nn.functional.cross_entropy(z, y.long())
    if kind == "multi-hot":
        return lambda z, y: nn.functional.binary_cross_entropy_with_logits(z, y.float())
    return lambda z, y: nn.functional.mse_loss(z[:, 0], y.float())


def _score(kind: str, heads, features, y, mean, scale) -> list[float]:
    """Each head's validation score (accuracy, label accuracy, or minus the squared error), read in chunks."""
    totals = np.zeros(len(heads))
    for start, chunk in features.chunks():
        x = torch.from_numpy((chunk - mean) / scale).float()
        target = y[start:start + len(chunk)]
        with torch.no_grad():
            for i, head in enumerate(heads):
                z = head(x).numpy()
                if kind == "class":
                    totals[i] += (z.argmax(1) == target).sum()
                elif kind == "multi-hot":
                    totals[i] += ((z > 0) == (target > 0.5)).mean(1).sum()
                else:
                    totals[i] -= ((z[:, 0] - target) ** 2).sum()
    return (totals / len(features)).tolist()


def fit_streaming_head(task: str, features, y: np.ndarray, outputs: int, *, val: tuple | None = None,
                       C: float | None = None, grid: tuple[float, ...] = (1.0,), seed: int = 0,
                       epochs: int = EPOCHS) -> tuple[nn.Sequential, dict]:
    """Fit a linear head on a :class:`~transferkit.data.cache.FeatureFile` a minibatch at a time.

    Args:
        task: the task name (its target kind picks the loss).
        features: ``[N, D]`` features read by rows (a FeatureFile).
        y: the ``N`` targets (class ids, multi-hot rows or values).
        outputs: the head's outputs (classes, labels, or 1).
        val: ``(features, targets)`` of the validation split, to choose ``C``; without it ``C`` is 1.
        C: the inverse L2 strength; ``None``: the best of ``grid`` on validation (1 without validation).
        grid: the strengths ``C=None`` chooses from (the closed-form probe's ``C_GRID``).
        seed: the minibatch order.
        epochs: passes over the training features.
    """
    kind = get_task(task).target_kind
    y = np.asarray(y)
    grid = [C] if C is not None else (list(grid) if val is not None else [1.0])
    mean, scale = _moments(features)
    if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
        raise ConfigError("Backbone features contain NaN or inf; check the backbone and its input.")
    heads = [nn.Linear(features.shape[1], outputs) for _ in grid]
    for head in heads:
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    optims = [torch.optim.Adam(h.parameters(), lr=1e-2) for h in heads]
    loss_fn, n, rng = _loss(kind), len(features), np.random.default_rng(seed)
    batch = max(1, min(BATCH, (16 << 20) // (4 * features.shape[1])))
    mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
    for _ in range(epochs):
        for rows in np.array_split(rng.permutation(n), max(1, n // batch)):
            x = torch.from_numpy((features[np.sort(rows)] - mean32) / scale32)
            target = torch.from_numpy(y[np.sort(rows)])
            for c, head, opt in zip(grid, heads, optims):
                loss = loss_fn(head(x), target) + head.weight.pow(2).sum() / (2 * c * n)
                opt.zero_grad()
                loss.backward()
                opt.step()
    info: dict = {"streamed": True, "epochs": epochs}
    best = 0
    if len(grid) > 1:
        scores = _score(kind, heads, val[0], np.asarray(val[1]), mean32, scale32)
        best = int(np.argmax(scores))
        info["selection_score"] = scores[best]
    w = heads[best].weight.detach().double().numpy() / scale
    b = heads[best].bias.detach().double().numpy() - w @ mean
    head = linear_head(features.shape[1], outputs)
    with torch.no_grad():
        head[-1].weight.copy_(torch.from_numpy(w).float())
        head[-1].bias.copy_(torch.from_numpy(b).float())
    info["C"] = grid[best]
    return head, info


def predict_in_chunks(model, features) -> np.ndarray:
    """``model``'s outputs from its head over ``features`` read a chunk of rows at a time."""
    with torch.no_grad():
        return np.concatenate([model.outputs_to_numpy(model.head(torch.from_numpy(chunk)))
                               for _, chunk in features.chunks()])
