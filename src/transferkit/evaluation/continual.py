"""Continual-learning metrics from the accuracy matrix (pure NumPy).

``a[i, j]`` is the test accuracy on experience ``j`` after training
experience ``i`` (``T`` experiences, a ``[T, T]`` matrix). Following
Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
NeurIPS 2017 (https://arxiv.org/abs/1706.08840), and Chaudhry et al.,
"Riemannian Walk for Incremental Learning", ECCV 2018
(https://arxiv.org/abs/1801.10112) for forgetting::

    average accuracy = 1/T       sum_j        a[T-1, j]
    forgetting       = 1/(T-1)   sum_{j<T-1}  max_{j<=i<T-1} a[i, j] - a[T-1, j]
    backward transf. = 1/(T-1)   sum_{j<T-1}  a[T-1, j] - a[j, j]
    forward transf.  = 1/(T-1)   sum_{j>0}    a[j-1, j] - b[j]

with ``b[j]`` the accuracy of a freshly initialised model on experience ``j``.
With one experience, forgetting and the transfers are NaN (undefined).
Forgetting only counts accuracies reached once experience ``j`` was trained
(rows ``i >= j``): in the task-incremental scenario an untrained head can
score above chance by luck, and that is nothing the learner could forget.

Example:
    >>> import numpy as np
    >>> m = continual_metrics(np.array([[0.9, 0.5], [0.6, 0.8]]), random_init=[0.5, 0.5])
    >>> {k: round(v, 3) for k, v in m.items()}
    {'average_accuracy': 0.7, 'forgetting': 0.3, 'backward_transfer': -0.3, 'forward_transfer': 0.0}
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transferkit.errors import DataError

METRICS = ("average_accuracy", "forgetting", "backward_transfer", "forward_transfer")


def check_accuracy_matrix(acc_matrix) -> np.ndarray:
    """The matrix as float64 ``[T, T]``; :class:`DataError` unless square, non-empty, finite and in [0, 1]."""
    a = np.asarray(acc_matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise DataError(f"An accuracy matrix must be square [T, T] with T >= 1 (row i: after training experience i, "
                        f"column j: accuracy on experience j); got shape {a.shape}.")
    bad = np.argwhere(~np.isfinite(a) | (a < 0) | (a > 1))
    if len(bad):
        i, j = bad[0]
        raise DataError(f"Accuracy matrix entry [{i}, {j}] is {float(a[i, j])!r}; accuracies must be finite and in [0, 1].")
    return a


def continual_metrics(acc_matrix, random_init: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """Average accuracy, forgetting, backward and forward transfer of an accuracy matrix.

    Args:
        acc_matrix: ``[T, T]`` accuracies in [0, 1].
        random_init: ``[T]`` accuracies of a freshly initialised model on each
            experience; without it forward transfer is NaN.

    Returns:
        ``{"average_accuracy", "forgetting", "backward_transfer", "forward_transfer"}`` (floats, in [−1, 1]).

    Raises:
        DataError: a matrix that is not square or holds values outside [0, 1],
            or ``random_init`` of the wrong length or range.
    """
    a = check_accuracy_matrix(acc_matrix)
    t = a.shape[0]
    out = {"average_accuracy": float(a[-1].mean())}
    if t == 1:
        return {**out, "forgetting": float("nan"), "backward_transfer": float("nan"), "forward_transfer": float("nan")}
    old = np.arange(t - 1)
    learnt = np.where(np.tril(np.ones((t - 1, t - 1), bool)), a[:-1, :-1], -np.inf)  # a[i, j] for i >= j
    out["forgetting"] = float((learnt.max(axis=0) - a[-1, :-1]).mean())
    out["backward_transfer"] = float((a[-1, old] - a[old, old]).mean())
    if random_init is None:
        out["forward_transfer"] = float("nan")
        return out
    b = np.asarray(random_init, dtype=np.float64).ravel()
    if b.shape != (t,):
        raise DataError(f"random_init must hold one accuracy per experience ({t}); got shape {b.shape}.")
    if (~np.isfinite(b) | (b < 0) | (b > 1)).any():
        raise DataError(f"random_init accuracies must be finite and in [0, 1]; got {b.tolist()}.")
    new = np.arange(1, t)
    out["forward_transfer"] = float((a[new - 1, new] - b[new]).mean())
    return out


__all__ = ["METRICS", "check_accuracy_matrix", "continual_metrics"]
