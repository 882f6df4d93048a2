"""Group fairness: metrics per value of a sensitive attribute, and Kamiran–Calders sample weights.

Layer 1: pure functions of arrays. The rates come from ``fairlearn.metrics``
(``MetricFrame`` with ``selection_rate``, ``true_positive_rate``,
``false_positive_rate``), imported when first used.

* :func:`group_metrics`: per-group count, accuracy, selection rate and the
  true/false positive rates; the worst-group accuracy and the accuracy gap;
  the demographic parity difference and the equalized odds difference.
* :func:`kamiran_calders_weights`: the reweighing of Kamiran & Calders (2012)
  that makes label and group independent in the weighted training data.

Multi-class targets: fairlearn's demographic parity and equalized odds are
defined for a binary decision. Here every class ``c`` is a binary decision
"predicted ``c``" (one-vs-rest), and the reported difference is the largest
over classes, with the class that attains it. For two classes this is exactly
fairlearn's binary value (the two one-vs-rest problems mirror each other:
selection rates ``r`` and ``1 - r``, TPR and ``1 - FPR`` swap).

Equalized odds needs both rates in every group: a group with no item of class
``c`` has no true positive rate for ``c`` (fairlearn counts it as 0, which
would report a gap that is not there). Such a (class, group) rate is left out
of the difference and listed under ``"undefined_rates"``.

Example:
    >>> y = np.array([0, 1, 1, 0, 1, 0]); pred = np.array([0, 1, 0, 0, 1, 1])
    >>> m = group_metrics(y, pred, np.array(["a", "a", "a", "b", "b", "b"]))
    >>> m["groups"]["a"]["accuracy"], round(m["demographic_parity_difference"], 3)
    (0.6666666666666666, 0.333)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from transferkit.errors import DataError

__all__ = ["check_sensitive", "group_metrics", "kamiran_calders_weights"]


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_sensitive(sensitive, n: int | None = None, name: str | None = None, min_groups: int = 2, *,
                    where: str | None = None) -> np.ndarray:
    """Validate the group of each item; return them as an array of strings (the group names).

    Args:
        sensitive: one value per item (strings or numbers).
        n: the expected number of items.
        name: the attribute's name, for the messages.
        min_groups: fewest distinct groups accepted (2: there must be something to compare).
        where: the data set's name, for the messages.

    Raises:
        DataError: missing values (None, NaN, empty), a length mismatch, or fewer than ``min_groups`` groups.
    """
    what = f"sensitive attribute '{name or 'sensitive'}'" + (f" of '{where}'" if where else "")
    if sensitive is None:
        raise DataError(f"No {what} was given: pass one group per item.")
    values = np.asarray(sensitive, dtype=object).ravel()
    if n is not None and len(values) != n:
        raise DataError(f"The {what} has {len(values)} values for {n} items.")
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing:
        raise DataError(f"The {what} is missing (empty or NaN) at {len(missing)} item(s), first at item "
                        f"{missing[0]}: drop those rows or give them a group.")
    groups = np.array([str(v).strip() if isinstance(v, str) else _group_name(v) for v in values], dtype=object)
    distinct = sorted(set(groups))
    if len(distinct) < min_groups:
        only = f"a single group ({distinct[0]!r})" if distinct else "no group"
        raise DataError(f"The {what} has {only} in the {len(values)} items: fairness metrics and mitigation "
                        f"compare groups, so it needs at least {min_groups}.")
    return groups


def _group_name(value) -> str:
    """``3`` and ``3.0`` both name group ``"3"``; ``True`` is ``"True"``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _rate(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _class_frame(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, c: int):
    """fairlearn's per-group selection rate, TPR and FPR of the one-vs-rest decision "predicted ``c``"."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    metrics = {"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate}
    frame = MetricFrame(metrics=metrics, y_true=(y_true == c).astype(int), y_pred=(y_pred == c).astype(int),
                        sensitive_features=groups)
    return frame.by_group


def _spread(values: dict[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None]
    return max(present) - min(present) if len(present) >= 2 else None


def group_metrics(y_true, y_pred, sensitive, *, label_names: Sequence[str] | None = None,
                  sensitive_name: str | None = None) -> dict:
    """Accuracy, selection rates and error rates per group of a sensitive attribute, and their gaps.

    Args:
        y_true: class indices ``[N]``.
        y_pred: predicted class indices ``[N]``, or class probabilities ``[N, C]`` (argmax taken).
        sensitive: the group of each item ``[N]`` (strings or numbers; at least two groups).
        label_names: class names (default: the indices as strings).
        sensitive_name: the attribute's name, for the result and the messages.

    Returns:
        A JSON-ready dict: ``attribute``; ``groups`` (per group: ``count``, ``accuracy``,
        and per class ``selection_rate``, ``true_positive_rate``, ``false_positive_rate``,
        ``None`` where undefined); ``worst_group``, ``accuracy_worst_group``,
        ``accuracy_gap`` (best minus worst group accuracy);
        ``demographic_parity_difference`` and ``equalized_odds_difference`` (largest over
        one-vs-rest classes, see the module docstring) with the class attaining each
        (``*_class``); ``undefined_rates`` (``[class, group, rate]`` left out of equalized odds).

    Raises:
        DataError: mismatched lengths, missing groups, a single group, or non-integer labels.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(1)
    if y_true.ndim != 1 or y_pred.ndim != 1 or len(y_true) != len(y_pred):
        raise DataError(f"group_metrics needs class indices [N] (or probabilities [N, C]); got y_true "
                        f"{y_true.shape} and y_pred {y_pred.shape}.")
    if len(y_true) and not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)):
        raise DataError(f"group_metrics is for classification: y_true and y_pred must be class indices; got "
                        f"{y_true.dtype} and {y_pred.dtype}.")
    groups = check_sensitive(sensitive, len(y_true), sensitive_name)
    n_classes = max(len(label_names or []), int(max(y_true.max(), y_pred.max())) + 1)
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_classes)]
    names += [str(i) for i in range(len(names), n_classes)]
    group_names = sorted(set(groups))
    per_group = {}
    for g in group_names:
        mask = groups == g
        per_group[g] = {"count": int(mask.sum()), "accuracy": float((y_true[mask] == y_pred[mask]).mean()),
                        "selection_rate": {}, "true_positive_rate": {}, "false_positive_rate": {}}
    dp, dp_class, eo, eo_class, undefined = 0.0, None, 0.0, None, []
    for c in range(n_classes):
        frame = _class_frame(y_true, y_pred, groups, c)
        positives = {g: bool((y_true[groups == g] == c).any()) for g in group_names}
        negatives = {g: bool((y_true[groups == g] != c).any()) for g in group_names}
        rates = {"selection_rate": {}, "true_positive_rate": {}, "false_positive_rate": {}}
        for g in group_names:
            row = frame.loc[g]
            rates["selection_rate"][g] = _rate(row["selection_rate"])
            rates["true_positive_rate"][g] = _rate(row["tpr"]) if positives[g] else None
            rates["false_positive_rate"][g] = _rate(row["fpr"]) if negatives[g] else None
            undefined += [[names[c], g, r] for r, ok in (("true_positive_rate", positives[g]),
                                                         ("false_positive_rate", negatives[g])) if not ok]
            for key, values in rates.items():
                per_group[g][key][names[c]] = values[g]
        d = _spread(rates["selection_rate"]) or 0.0
        e = max(_spread(rates["true_positive_rate"]) or 0.0, _spread(rates["false_positive_rate"]) or 0.0)
        if dp_class is None or d > dp:
            dp, dp_class = d, names[c]
        if eo_class is None or e > eo:
            eo, eo_class = e, names[c]
    accs = {g: per_group[g]["accuracy"] for g in group_names}
    worst = min(accs, key=accs.get)
    return {"attribute": sensitive_name or "sensitive", "groups": per_group, "worst_group": worst,
            "accuracy_worst_group": accs[worst], "accuracy_gap": max(accs.values()) - accs[worst],
            "demographic_parity_difference": float(dp), "demographic_parity_class": dp_class,
            "equalized_odds_difference": float(eo), "equalized_odds_class": eo_class,
            "undefined_rates": undefined,
            "definition": "one-vs-rest per class, largest difference over classes (fairlearn's binary value "
                          "for two classes); undefined rates left out"}


def kamiran_calders_weights(targets, sensitive, *, sensitive_name: str | None = None) -> np.ndarray:
    """Kamiran–Calders reweighing: ``w(g, y) = P(g) P(y) / P(g, y)`` for each item.

    Kamiran & Calders, "Data preprocessing techniques for classification
    without discrimination", Knowledge and Information Systems 33, 2012
    (https://doi.org/10.1007/s10115-011-0463-8). With empirical frequencies
    ``w = n_g n_y / (N n_gy)``: every (group, label) cell then carries the
    weight it would have if label and group were independent, so in the
    weighted data ``P_w(g, y) = P(g) P(y)``, the marginals are unchanged and the
    weights sum to ``N``. A cell with no item gets no weight (it has no items).

    Args:
        targets: class indices ``[N]``.
        sensitive: the group of each item ``[N]``.
        sensitive_name: the attribute's name, for the messages.

    Returns:
        float64 weights ``[N]``, mean 1.

    Raises:
        DataError: mismatched lengths, missing groups, a single group, or non-integer targets.
    """
    y = np.asarray(targets)
    if y.ndim != 1 or (len(y) and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"Kamiran–Calders weights need class indices [N]; got {y.dtype} {y.shape}.")
    groups = check_sensitive(sensitive, len(y), sensitive_name)
    _, g_idx = np.unique(groups, return_inverse=True)
    _, y_idx = np.unique(y, return_inverse=True)
    joint = np.zeros((g_idx.max() + 1, y_idx.max() + 1))
    np.add.at(joint, (g_idx, y_idx), 1.0)
    n = float(len(y))
    expected = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True) / n
    return (expected / np.maximum(joint, 1.0))[g_idx, y_idx]
