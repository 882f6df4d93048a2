"""Label rules shared by every data adapter: raw labels to targets, and evaluation labels to training labels.

* classification labels name classes. Strings are stripped. A number names
  the class of its value: ``3``, ``3.0``, and strings that write a number
  (``"3"``, ``" 3.0 "``, ``"3e0"``, ``"003"``) are all the class ``"3"``, so a
  CSV/TSV cell (always text) and a typed JSONL, array or DataFrame value give
  the same classes. A number that is not whole (``2.5``, ``"2.5"``) is
  refused: numeric targets are ``task="regression"``. A list or mapping is
  refused (multi-label data is ``task="multilabel"``). Class names are
  sorted, whole numbers numerically (``2`` before ``10``), and integer labels
  are kept as indices when ``label_names`` is given;
* multi-label labels are a list (JSONL, arrays, HF datasets) or a
  ``"a|b"`` string (CSV/TSV), each part named by the rule above;
* regression labels are floats.

:func:`encode_labels` applies these rules; :func:`check_eval_labels`,
:func:`align_labels` and :func:`align_to_label_names` make an evaluation set's
class indices mean what they meant in training; :func:`check_classes_present`
names classes without examples; :func:`check_two_classes` refuses training
data with a single class. Errors are :class:`~transferkit.errors.DataError`
naming the item (``Locate``) and the value.

Example:
    >>> encode_labels(["pos", "neg", "pos"])[0].tolist()
    [1, 0, 1]
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferkit.data.dataset import TaskData
from transferkit.tasks import TASKS
from transferkit.errors import DataError

#: ``locate(i)`` names item ``i`` in an error message (file and line, or row).
Locate = Callable[[int], str]


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


#: A decimal number as written in a text cell (ASCII digits only: other scripts' digits stay names).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _number(value: Any) -> int | float | None:
    """The number a raw label writes (``3``, ``2.5``, ``"3"``, ``" 3.0 "``, ``"1e3"``), else ``None`` (bools too)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= 100 and _NUMBER.fullmatch(text):  # longer digit strings are names (ids), not numbers
            return int(text) if text.lstrip("+-").isdigit() else float(text)
    return None


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it writes a whole number (``3``, ``3.0``, ``"3"``, ``"3.0"``), else ``None``."""
    number = _number(value)
    if isinstance(number, float):
        return int(number) if number.is_integer() else None  # inf and NaN are not whole
    return number


def _label_key(value: Any) -> str:
    """The class name a raw label stands for: ``" cat "`` -> ``"cat"``; ``3``, ``3.0``, ``"3.0"`` -> ``"3"``."""
    as_int = _as_int(value)
    if as_int is not None:
        return str(as_int)
    return value.strip() if isinstance(value, str) else str(value)


def _sort_names(values: set) -> list[str]:
    """Class names sorted; integer-like names numerically (``2`` before ``10``)."""
    def key(v: str):
        i = _as_int(v)
        return (0, i, "") if i is not None else (1, 0, v)

    return sorted(values, key=key)


def _class_index(value: Any, names: list[str], lookup: dict[str, int], by_index: bool, where: str) -> int:
    """Index of ``value`` in ``names``: by name, else (``by_index``) an int taken as the index."""
    key = _label_key(value)
    if key in lookup:
        return lookup[key]
    as_int = _as_int(value) if by_index else None
    if as_int is not None and 0 <= as_int < len(names):
        return as_int
    raise DataError(f"{where}: unknown label {value!r}. Valid labels: {', '.join(names)}.")


def _check_class_label(value: Any, where: str) -> None:
    """Refuse a label that cannot name a class: empty, a number that is not whole, a list or mapping."""
    if _is_missing(value):
        raise DataError(f"{where}: the label is empty.")
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        raise DataError(f"{where}: label {value!r:.80} is a {type(value).__name__}; a class is a name or a whole "
                        f"number (for several labels per item use task='multilabel').")
    if _number(value) is not None and _as_int(value) is None:
        raise DataError(f"{where}: label {value!r} is a number but not a whole one, so not a class; for numeric "
                        f"targets use task='regression'.")


def _classification_targets(values: Sequence, label_names: list[str] | None,
                            locate: Locate) -> tuple[np.ndarray, list[str]]:
    for i, v in enumerate(values):
        _check_class_label(v, locate(i))
    by_index = label_names is not None
    names = [str(n) for n in label_names] if by_index else _sort_names({_label_key(v) for v in values})
    lookup = {n: k for k, n in enumerate(names)}
    targets = [_class_index(v, names, lookup, by_index, locate(i)) for i, v in enumerate(values)]
    return np.array(targets, dtype=np.int64), names


def _split_multilabel(value: Any, locate: Locate, i: int) -> list[Any]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if _is_missing(value):
        raise DataError(f"{locate(i)}: the label is empty (give a list, or 'a|b' in a CSV/TSV cell).")
    return [part.strip() for part in str(value).split("|") if part.strip()]


def _multilabel_targets(values: Sequence, label_names: list[str] | None,
                        locate: Locate) -> tuple[np.ndarray, list[str]]:
    rows = [_split_multilabel(v, locate, i) for i, v in enumerate(values)]
    by_index = label_names is not None
    names = [str(n) for n in label_names] if by_index else _sort_names({_label_key(x) for r in rows for x in r})
    lookup = {n: k for k, n in enumerate(names)}
    targets = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, row in enumerate(rows):
        for lab in row:
            targets[i, _class_index(lab, names, lookup, by_index, locate(i))] = 1.0
    return targets, names


def _regression_targets(values: Sequence, locate: Locate) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float32)
    for i, v in enumerate(values):
        if _is_missing(v):
            raise DataError(f"{locate(i)}: the regression target is empty or NaN.")
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{locate(i)}: regression target {v!r} is not a number.") from None
        if not math.isfinite(out[i]):
            raise DataError(f"{locate(i)}: the regression target is {v!r}; it must be finite.")
    return out


def encode_labels(values: Sequence, *, task: str = "classification", label_names: Sequence[str] | None = None,
                  locate: Locate | None = None) -> tuple[np.ndarray, list[str] | None]:
    """Turn raw label values into TaskData targets (see the module docstring for the rules).

    Args:
        values: one raw label per item.
        task: ``"classification"``, ``"multilabel"`` or ``"regression"``.
        label_names: the class names, when known.
        locate: ``locate(i)`` names item ``i`` in error messages (file and row).

    Returns:
        ``(targets, label_names)``; ``label_names`` is ``None`` for regression.
    """
    locate = locate or (lambda i: f"row {i}")
    names = list(label_names) if label_names is not None else None
    if task == "classification":
        return _classification_targets(values, names, locate)
    if task == "multilabel":
        return _multilabel_targets(values, names, locate)
    if task == "regression":
        return _regression_targets(values, locate), None
    raise DataError(f"Unknown task '{task}'. Available: {', '.join(TASKS.names())}.")


def _used_labels(data: TaskData) -> dict[str, int]:
    """Label name -> number of items carrying it."""
    names = data.label_names or []
    targets = np.asarray(data.targets)
    counts = data.task_spec.label_counts(targets, len(names))  # boxes, masks: the task counts them
    if counts is None and data.task == "multilabel":
        counts = targets.sum(axis=0).astype(int) if len(targets) else np.zeros(len(names), int)
    elif counts is None:
        counts = np.bincount(targets, minlength=len(names)) if len(targets) else np.zeros(len(names), int)
    return {(names[k] if k < len(names) else str(k)): int(c) for k, c in enumerate(counts) if c > 0}


def check_eval_labels(train: TaskData, evaluation: TaskData) -> None:
    """Refuse evaluation data with a label the training data never had.

    A model cannot predict a class it never saw, so such a set would be
    scored as if the model had simply failed on it.

    Raises:
        DataError: names the unseen labels, their counts, and the training labels.
    """
    if evaluation.targets is None or train.targets is None or train.task == "regression":
        return
    if train.task == "token-classification" or evaluation.task == "token-classification":
        from transferkit.data.token_spans import align_token_labels

        align_token_labels(train, evaluation)
        return
    if train.task != evaluation.task:
        raise DataError(f"Training data '{train.name}' is {train.task} but evaluation data "
                        f"'{evaluation.name}' is {evaluation.task}.")
    if not train.task_spec.has_labels:  # targets are texts (transcripts, completions): no label set to compare
        return
    _check_known(evaluation, list(_used_labels(train)), train.name)


def _check_known(evaluation: TaskData, seen: Sequence[str], owner: str) -> None:
    unseen = {k: c for k, c in _used_labels(evaluation).items() if k not in seen}
    if unseen:
        listed = ", ".join(f"'{k}' ({c} items)" for k, c in unseen.items())
        raise DataError(f"Evaluation data '{evaluation.name}' has label(s) the training data '{owner}' never "
                        f"had: {listed}. Training labels: {', '.join(seen)}.")


def align_to_label_names(data: TaskData, names: Sequence[str] | None, owner: str = "the trained model") -> TaskData:
    """Re-index evaluation targets to a trained model's label order, refusing labels it never saw.

    A model keeps label names, not training data: every one of them counts as seen, and the targets are
    re-indexed by name (as :func:`align_labels` does against a training set). Regression data, data without
    targets or label sets, or a model without label names, is returned unchanged.
    """
    if names is None or data.task == "regression":
        return data
    if data.targets is None or data.label_names == list(names) or not data.task_spec.has_labels:
        return data
    _check_known(data, list(names), owner)
    return _reindex(data, names)


def align_labels(train: TaskData, evaluation: TaskData) -> TaskData:
    """Re-index ``evaluation``'s targets onto ``train.label_names`` (matched by name).

    A test file that lacks one class sorts its names differently from the
    training file; this makes index ``k`` mean the same class in both.
    Call :func:`check_eval_labels` first.
    """
    if evaluation.targets is None or train.task == "regression":
        return evaluation
    if train.task == "token-classification" or evaluation.task == "token-classification":
        from transferkit.data.token_spans import align_token_labels

        return align_token_labels(train, evaluation)
    if evaluation.label_names == train.label_names:
        return evaluation
    check_eval_labels(train, evaluation)
    return _reindex(evaluation, train.label_names or [])


def _reindex(evaluation: TaskData, label_names: Sequence[str]) -> TaskData:
    """``evaluation``'s targets re-indexed onto ``label_names`` by name (a label not among them: -1)."""
    lookup = {n: k for k, n in enumerate(label_names)}
    names = evaluation.label_names or []
    targets = np.asarray(evaluation.targets)
    if evaluation.task == "multilabel":
        new = np.zeros((len(targets), len(lookup)), dtype=np.float32)
        for k, n in enumerate(names):
            if n in lookup:
                new[:, lookup[n]] = targets[:, k]
    else:
        mapping = np.array([lookup.get(n, -1) for n in names], dtype=np.int64)
        new = evaluation.task_spec.remap_labels(targets, mapping)
        new = mapping[targets] if new is None else new
    return replace(evaluation, targets=new, label_names=list(label_names), _fingerprint=None)


def check_classes_present(data: TaskData) -> None:
    """Raise :class:`DataError` naming every class of ``label_names`` that has no example."""
    if data.targets is None or data.task == "regression":
        return
    used = _used_labels(data)
    empty = [n for n in (data.label_names or []) if n not in used]
    if empty:
        raise DataError(f"{data.name}: class(es) with no examples: {', '.join(repr(n) for n in empty)}. "
                        f"Add examples or remove them from label_names.")


def check_two_classes(data: TaskData) -> None:
    """Refuse classification training data with fewer than two classes.

    A model that can only say one class scores accuracy 1.0 on data of that
    class, so such a run would look perfect while learning nothing.

    Raises:
        DataError: names the data, the one class found and its count; for an
            image folder whose one class folder holds folders itself, it asks
            whether that folder is the one with the class folders.
    """
    if data.targets is None or not data.task_spec.single_label:
        return
    used = _used_labels(data)
    if len(used) >= 2:
        return
    where = data.source or data.name
    if not used:
        raise DataError(f"{where}: no labelled items; classification needs at least 2 classes.")
    (name, count), = used.items()
    hint = ""
    folder = Path(data.source) / name if data.modality == "image" and data.source else None
    if folder is not None and folder.is_dir() and any(d.is_dir() for d in folder.iterdir()):
        hint = f" {folder} holds folders itself: if they are the classes, pass that folder as the data."
    raise DataError(f"{where}: classification needs at least 2 classes; found only {name!r} ({count} items).{hint}")
