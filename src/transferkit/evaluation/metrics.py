"""Metrics on plain arrays: classification, multi-label and regression.

Which metrics a task reports, and its primary metric, are the task's business
(:mod:`transferkit.tasks`); these are the pure functions they call.

Every function returns a flat ``dict`` of JSON-able Python values (``float``,
``int``, nested ``list``/``dict``), ready to be written to a bundle manifest or
turned into a DataFrame row. A value that is undefined on the given data (the
recall of a class with no true sample, R² on one sample, mAP when no label has
a positive) is ``float("nan")`` rather than an error or a silent 0.

Example:
    >>> m = classification_metrics([0, 1, 1], [0, 1, 0])
    >>> round(m["accuracy"], 3), m["n"]
    (0.667, 3)
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from transferkit.errors import DataError

_LOWER_IS_BETTER = frozenset({"mse", "mae", "rmse", "log_loss", "loss", "error", "error_rate", "ece", "brier",
                              "perplexity", "wer", "cer"})
_FRACTION_WORDS = ("accuracy", "f1", "precision", "recall", "map", "auc", "ap", "rougel", "chrf", "match", "iou",
                   "wer", "cer")


def _strip_split(metric: str) -> str:
    """``"val_accuracy"`` -> ``"accuracy"``: the split prefix does not change a metric's direction."""
    name = metric.lower()
    for prefix in ("train_", "val_", "valid_", "test_", "eval_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better.

    Losses and errors (``mse``, ``mae``, ``rmse``, ``log_loss``, any name ending
    in ``loss`` or ``error``, with or without a ``val_``/``test_`` prefix) are
    lower-is-better; every other metric is higher-is-better.

    Args:
        metric: A metric name such as ``"accuracy"`` or ``"val_mse"``.

    Returns:
        ``False`` for losses and errors, ``True`` otherwise.
    """
    name = _strip_split(metric)
    return not (name in _LOWER_IS_BETTER or name.endswith("loss") or name.endswith("error"))


def is_fraction_metric(metric: str) -> bool:
    """Whether ``metric`` is a proportion in [0, 1] best shown as a percentage (accuracy, F1, mAP...).

    R² is not one (it can be negative), nor is any loss.

    Args:
        metric: A metric name.

    Returns:
        ``True`` for accuracy-like metrics.
    """
    name = _strip_split(metric)
    if not higher_is_better(name) or name == "r2":
        return False
    parts = name.replace("-", "_").split("_")
    return any(word in parts for word in _FRACTION_WORDS)


def _as_1d(values, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what} must be a 1-D array; got shape {arr.shape}.")
    return arr


def _check_lengths(y_true: np.ndarray, other: np.ndarray, what: str) -> None:
    if len(y_true) == 0:
        raise DataError("Cannot compute metrics on 0 samples: y_true is empty.")
    if len(other) != len(y_true):
        raise DataError(f"y_true has {len(y_true)} samples but {what} has {len(other)}.")


def _label_list(y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str] | None) -> list[int]:
    if label_names is None:
        return sorted(int(v) for v in np.union1d(y_true, y_pred))
    n_labels = len(label_names)
    seen = np.union1d(y_true, y_pred)
    if seen.min() < 0 or seen.max() >= n_labels:
        raise DataError(
            f"Labels must be integers in [0, {n_labels - 1}] for {n_labels} label names; got {seen.tolist()}."
        )
    return list(range(n_labels))


def classification_metrics(y_true, y_pred, *, proba=None, label_names: Sequence[str] | None = None) -> dict:
    """Single-label classification metrics.

    Precision, recall and F1 are macro averages over the labels that occur in
    ``y_true`` or ``y_pred`` (scikit-learn's default), with ``zero_division=0``.
    The confusion matrix covers every label ``0..C-1`` when ``label_names`` is
    given, otherwise the labels seen; rows are true labels, columns predictions.

    Args:
        y_true: Integer class indices ``[N]``.
        y_pred: Predicted class indices ``[N]``.
        proba: Optional class probabilities ``[N, C]``; adds ``log_loss``.
        label_names: Optional names of classes ``0..C-1``.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
        ``confusion_matrix`` (nested list), ``labels`` (the names of its rows),
        ``per_class_recall`` (name -> recall, NaN for a class with no true
        sample), ``n`` and, with ``proba``, ``log_loss``.

    Raises:
        DataError: On empty input, mismatched lengths or out-of-range labels.
    """
    y_true = _as_1d(y_true, "y_true").astype(np.int64)
    y_pred = _as_1d(y_pred, "y_pred").astype(np.int64)
    _check_lengths(y_true, y_pred, "y_pred")
    labels = _label_list(y_true, y_pred, label_names)
    names = [str(label_names[i]) for i in labels] if label_names is not None else [str(i) for i in labels]
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    with warnings.catch_warnings():  # classes missing from y_true are expected on small splits
        warnings.simplefilter("ignore", UserWarning)
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f),
        "confusion_matrix": cm.tolist(),
        "labels": names,
        "per_class_recall": {
            name: float(cm[i, i] / support[i]) if support[i] else float("nan") for i, name in enumerate(names)
        },
        "n": int(len(y_true)),
    }
    if proba is not None:
        out["log_loss"] = _log_loss(y_true, proba, len(label_names) if label_names is not None else None)
    return out


def _log_loss(y_true: np.ndarray, proba, n_classes: int | None) -> float:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(y_true):
        raise DataError(f"proba must have shape [N={len(y_true)}, C]; got {proba.shape}.")
    if n_classes is not None and proba.shape[1] != n_classes:
        raise DataError(f"proba has {proba.shape[1]} columns but there are {n_classes} label names.")
    if y_true.max() >= proba.shape[1]:
        raise DataError(f"Label {int(y_true.max())} is out of range for proba with {proba.shape[1]} columns.")
    picked = np.clip(proba[np.arange(len(y_true)), y_true], 1e-15, 1.0)
    return float(-np.mean(np.log(picked)))


def regression_metrics(y_true, y_pred) -> dict:
    """Regression metrics.

    Args:
        y_true: Targets ``[N]`` (or ``[N, 1]``).
        y_pred: Predictions ``[N]`` (or ``[N, 1]``).

    Returns:
        ``mse``, ``rmse``, ``mae``, ``r2`` (NaN when ``N < 2`` or the targets
        are constant) and ``n``.

    Raises:
        DataError: On empty input or mismatched lengths.
    """
    y_true = _as_1d(y_true, "y_true").astype(np.float64)
    y_pred = _as_1d(y_pred, "y_pred").astype(np.float64)
    _check_lengths(y_true, y_pred, "y_pred")
    err = y_pred - y_true
    mse = float(np.mean(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if len(y_true) > 1 and ss_tot > 0 else float("nan")
    mae = float(np.mean(np.abs(err)))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": mae, "r2": r2, "n": int(len(y_true))}


def multilabel_metrics(y_true, scores, *, threshold: float = 0.5, label_names: Sequence[str] | None = None) -> dict:
    """Multi-label metrics.

    A label is predicted where ``scores >= threshold`` (0.5 suits
    probabilities; use 0.0 for logits). Mean average precision averages over
    the labels with at least one positive in ``y_true``, since AP is undefined
    for the others.

    Args:
        y_true: 0/1 indicator matrix ``[N, C]``.
        scores: Scores or probabilities ``[N, C]``.
        threshold: Decision threshold on ``scores``.
        label_names: Optional names of the ``C`` labels.

    Returns:
        ``micro_f1``, ``macro_f1``, ``mAP`` (NaN when no label has a positive),
        ``subset_accuracy`` (all labels of a sample right), ``per_label_ap``
        (name -> AP, NaN without positives) and ``n``.

    Raises:
        DataError: On empty input or mismatched shapes.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or scores.shape != y_true.shape:
        raise DataError(f"y_true and scores must both have shape [N, C]; got {y_true.shape} and {scores.shape}.")
    _check_lengths(y_true, scores, "scores")
    if label_names is not None and len(label_names) != y_true.shape[1]:
        raise DataError(f"{len(label_names)} label names for {y_true.shape[1]} label columns.")
    names = [str(n) for n in label_names] if label_names is not None else [str(i) for i in range(y_true.shape[1])]
    y_true = (y_true > 0).astype(np.int64)
    y_pred = (scores >= threshold).astype(np.int64)
    per_label_ap = {}
    for j, name in enumerate(names):
        has_pos = y_true[:, j].any()
        per_label_ap[name] = float(skm.average_precision_score(y_true[:, j], scores[:, j])) if has_pos else float("nan")
    defined = [v for v in per_label_ap.values() if not np.isnan(v)]
    return {
        "micro_f1": float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mAP": float(np.mean(defined)) if defined else float("nan"),
        "subset_accuracy": float(np.mean(np.all(y_true == y_pred, axis=1))),
        "per_label_ap": per_label_ap,
        "n": int(len(y_true)),
    }
