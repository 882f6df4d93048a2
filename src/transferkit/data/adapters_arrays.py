"""Array adapter: in-memory uint8 images, 2-D number tables or lists of strings to :class:`TaskData`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from transferkit.data.adapters_labels import encode_labels
from transferkit.data.dataset import TaskData
from transferkit.tasks import TASKS
from transferkit.errors import DataError


def _infer_array_modality(x: np.ndarray) -> str:
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        return "image"
    if x.ndim == 2 and (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        return "tabular"
    raise DataError(f"Cannot tell the modality of an array of shape {x.shape} and dtype {x.dtype}: expected "
                    f"uint8 [N, H, W] or [N, H, W, C] (image) or a 2-D number array [N, F] (tabular); "
                    f"pass modality=... to say.")


def _check_finite_rows(x: np.ndarray, what: str) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"{what}: row {rows[0]} contains NaN or inf ({len(rows)} such rows"
                        f"{', e.g. ' + ', '.join(map(str, rows[:5])) if len(rows) > 1 else ''}).")


def _is_text_sequence(X: Any) -> bool:
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype.kind in "UO" and all(isinstance(v, str) for v in X)
    return isinstance(X, (list, tuple, pd.Series)) and len(X) > 0 and all(isinstance(v, str) for v in X)


def _array_items(X: Any, modality: str | None) -> tuple[Any, str]:
    if modality in (None, "text") and _is_text_sequence(X):
        return [str(v) for v in X], "text"
    if modality == "text" or (isinstance(X, (list, tuple)) and any(isinstance(v, str) for v in X)):
        bad = next(i for i, v in enumerate(X) if not isinstance(v, str))
        raise DataError(f"Text items must be str; item {bad} is {type(X[bad]).__name__}: {X[bad]!r:.80}.")
    x = np.asarray(X)
    if len(x) == 0:
        raise DataError("X is empty.")
    modality = modality or _infer_array_modality(x)
    if modality == "image" and x.ndim not in (3, 4):
        raise DataError(f"Image arrays must be [N, H, W] or [N, H, W, C]; got shape {x.shape}.")
    if modality == "tabular":
        if x.ndim != 2:
            raise DataError(f"Tabular arrays must be 2-D [N, F]; got shape {x.shape}.")
        try:
            x = x.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"Tabular array is not numeric ({exc}).") from None
    _check_finite_rows(x, f"{modality} array X")
    return x, modality


def _array_targets(y: Any, task: str, label_names: Sequence[str] | None) -> tuple[np.ndarray, list[str] | None]:
    locate = lambda i: f"labels y, row {i}"  # noqa: E731
    if task == "multilabel":
        if isinstance(y, np.ndarray) and y.ndim == 2:  # a 0/1 indicator matrix
            _check_finite_rows(y.astype(np.float32), "labels y")
            names = list(label_names) if label_names is not None else [str(k) for k in range(y.shape[1])]
            return (y != 0).astype(np.float32), names
        return encode_labels(list(y), task=task, label_names=label_names, locate=locate)
    arr = np.asarray(y)
    if arr.ndim != 1:
        hint = " For multi-label targets pass task='multilabel'." if task == "classification" else ""
        raise DataError(f"y must be 1-D, got shape {arr.shape}.{hint}")
    if task == "classification" and np.issubdtype(arr.dtype, np.integer):
        if label_names is None:
            uniq = np.unique(arr)
            return np.searchsorted(uniq, arr).astype(np.int64), [str(u) for u in uniq]
        bad = np.flatnonzero((arr < 0) | (arr >= len(label_names)))
        if len(bad):
            raise DataError(f"{locate(bad[0])}: label {arr[bad[0]]} is outside 0..{len(label_names) - 1} "
                            f"({len(label_names)} label_names).")
        return arr.astype(np.int64), list(label_names)
    return encode_labels(arr.tolist(), task=task, label_names=label_names, locate=locate)


def from_arrays(X: Any, y: Any = None, *, modality: str | None = None, task: str = "classification",
                label_names: Sequence[str] | None = None, name: str = "arrays") -> TaskData:
    """In-memory arrays: uint8 ``[N, H, W(, C)]`` images, 2-D float tables, or a list of str.

    Args:
        X: the inputs.
        y: labels (strings, ints, floats for regression, a 0/1 matrix or lists
            for multi-label), or ``None``.
        modality: override the inferred modality.
        task: ``"classification"``, ``"multilabel"`` or ``"regression"``.
        label_names: class names; integer ``y`` then indexes them.
        name: display name.

    Raises:
        DataError: NaN in a float array (names the row), an unknown label, a shape mismatch.
    """
    if task not in TASKS:
        raise DataError(f"Unknown task '{task}'. Available: {', '.join(TASKS.names())}.")
    items, modality = _array_items(X, modality)
    targets, names = (None, list(label_names) if label_names else None)
    if y is not None:
        if len(y) != len(items):
            raise DataError(f"X has {len(items)} items but y has {len(y)} labels.")
        targets, names = _array_targets(y, task, label_names)
    feature_names = [f"x{j}" for j in range(items.shape[1])] if modality == "tabular" else None
    return TaskData(items, targets, modality, task=task, label_names=names, name=name, source="arrays",
                    feature_names=feature_names)
