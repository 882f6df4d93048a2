"""Adapters from the user's data to :class:`TaskData`: image folders, tables, arrays, frames, HF datasets.

Label rules, the same for every adapter:

* classification labels given as strings map to the sorted class names
  (``label_names``); integer labels are kept as indices when ``label_names``
  is given, and otherwise name themselves (``"0"``, ``"1"``, ...);
* multi-label labels are a list (JSONL, arrays, HF datasets) or a
  ``"a|b"`` string (CSV/TSV);
* regression labels are floats.

Every problem with the input raises :class:`~transferkit.errors.DataError`
naming the file, the row (or line) and the value.

Example:
    >>> data = from_arrays(["good film", "bad film"], ["pos", "neg"])
    >>> data.modality, data.label_names, data.targets.tolist()
    ('text', ['neg', 'pos'], [1, 0])
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferkit.data.dataset import TASKS, TaskData
from transferkit.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")

Locate = Callable[[int], str]


# ---------------------------------------------------------------- labels


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _label_key(value: Any) -> str:
    """The class name a raw label stands for: ``" cat "`` -> ``"cat"``, ``3`` and ``3.0`` -> ``"3"``."""
    if isinstance(value, str):
        return value.strip()
    as_int = _as_int(value)
    return str(as_int) if as_int is not None else str(value)


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (``3``, ``3.0``, ``"3"``), else ``None``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


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


def _classification_targets(values: Sequence, label_names: list[str] | None,
                            locate: Locate) -> tuple[np.ndarray, list[str]]:
    for i, v in enumerate(values):
        if _is_missing(v):
            raise DataError(f"{locate(i)}: the label is empty.")
        if isinstance(v, (float, np.floating)) and not float(v).is_integer():
            raise DataError(f"{locate(i)}: label {v!r} is not a class; for numeric targets use task='regression'.")
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
    raise DataError(f"Unknown task '{task}'. Available: {', '.join(TASKS)}.")


def _used_labels(data: TaskData) -> dict[str, int]:
    """Label name -> number of items carrying it."""
    names = data.label_names or []
    targets = np.asarray(data.targets)
    if data.task == "multilabel":
        counts = targets.sum(axis=0).astype(int) if len(targets) else np.zeros(len(names), int)
    else:
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
    if train.task != evaluation.task:
        raise DataError(f"Training data '{train.name}' is {train.task} but evaluation data "
                        f"'{evaluation.name}' is {evaluation.task}.")
    seen = _used_labels(train)
    unseen = {k: c for k, c in _used_labels(evaluation).items() if k not in seen}
    if unseen:
        listed = ", ".join(f"'{k}' ({c} items)" for k, c in unseen.items())
        raise DataError(f"Evaluation data '{evaluation.name}' has label(s) the training data '{train.name}' never "
                        f"had: {listed}. Training labels: {', '.join(seen)}.")


def align_to_label_names(data: TaskData, names: Sequence[str] | None, owner: str = "the trained model") -> TaskData:
    """Re-index evaluation targets to a trained model's label order, refusing labels it never saw.

    A model keeps label names, not training data, so a reference that holds
    every known label once stands in for the training set of :func:`align_labels`.
    Regression data, or a model without label names, is returned unchanged.
    """
    if names is None or data.task == "regression":
        return data
    known = np.eye(len(names), dtype=np.float32) if data.task == "multilabel" else np.arange(len(names))
    return align_labels(TaskData(list(names), known, data.modality, data.task, list(names), name=owner), data)


def align_labels(train: TaskData, evaluation: TaskData) -> TaskData:
    """Re-index ``evaluation``'s targets onto ``train.label_names`` (matched by name).

    A test file that lacks one class sorts its names differently from the
    training file; this makes index ``k`` mean the same class in both.
    Call :func:`check_eval_labels` first.
    """
    if evaluation.targets is None or train.task == "regression" or evaluation.label_names == train.label_names:
        return evaluation
    check_eval_labels(train, evaluation)
    lookup = {n: k for k, n in enumerate(train.label_names or [])}
    names = evaluation.label_names or []
    targets = np.asarray(evaluation.targets)
    if evaluation.task == "multilabel":
        new = np.zeros((len(targets), len(lookup)), dtype=np.float32)
        for k, n in enumerate(names):
            if n in lookup:
                new[:, lookup[n]] = targets[:, k]
    else:
        mapping = np.array([lookup.get(n, -1) for n in names], dtype=np.int64)
        new = mapping[targets]
    return replace(evaluation, targets=new, label_names=list(train.label_names or []), _fingerprint=None)


def check_classes_present(data: TaskData) -> None:
    """Raise :class:`DataError` naming every class of ``label_names`` that has no example."""
    if data.targets is None or data.task == "regression":
        return
    used = _used_labels(data)
    empty = [n for n in (data.label_names or []) if n not in used]
    if empty:
        raise DataError(f"{data.name}: class(es) with no examples: {', '.join(repr(n) for n in empty)}. "
                        f"Add examples or remove them from label_names.")


# ---------------------------------------------------------------- image folders


def _class_images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))


def _verify_images(paths: Sequence[str]) -> None:
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"Cannot read image {path}: {exc}") from None


def from_image_folder(path: str | os.PathLike, *, verify: bool = False) -> TaskData:
    """Read a folder with one sub-folder per class (torchvision's ``ImageFolder`` layout).

    ``path/cat/1.jpg``, ``path/dog/a/2.png``: the class is the first-level
    sub-folder; images below it are found recursively. Extensions: jpg, jpeg,
    png, bmp, gif, webp (any case). Hidden files and folders are skipped.

    Args:
        path: the root folder.
        verify: open every image now, so a corrupt file fails here rather
            than in the middle of training.

    Returns:
        Image TaskData whose items are file paths; classes sorted by folder name.

    Raises:
        DataError: the folder is missing, has no class folders, a class
            folder holds no image (named), or (``verify``) an image is corrupt.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}" if not root.exists() else f"{root} is not a folder.")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders. Expected one folder per class, e.g. {root}/cat/1.jpg.")
    files = {d.name: _class_images(d) for d in classes}
    empty = [str(d) for d in classes if not files[d.name]]
    if empty:
        raise DataError(f"Class folder(s) with no images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}.")
    items = [str(f) for d in classes for f in files[d.name]]
    targets = np.concatenate([np.full(len(files[d.name]), k, dtype=np.int64) for k, d in enumerate(classes)])
    if verify:
        _verify_images(items)
    return TaskData(items, targets, "image", label_names=[d.name for d in classes], name=root.name,
                    source=str(root.resolve()))


# ---------------------------------------------------------------- tables


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a ``.gz`` file is decompressed first)."""
    if not path.is_file():
        raise DataError(f"Table file not found: {path}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc}).") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: line {line}, column {column} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}). "
                        f"Save the file as UTF-8.") from None


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[pd.DataFrame, list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: the file is empty; expected a header row with column names.")
    rows, lines = [], []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields but the header has "
                            f"{len(header)} ({', '.join(header)}).")
        rows.append(row)
        lines.append(reader.line_num)
    return pd.DataFrame(rows, columns=[h.strip() for h in header], dtype=object), lines


def _read_jsonl(path: Path, text: str) -> tuple[pd.DataFrame, list[int]]:
    records, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n} is not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {n} is a JSON {type(record).__name__}, expected an object.")
        records.append(record)
        lines.append(n)
    if not records:
        raise DataError(f"{path}: the file has no records.")
    return pd.DataFrame.from_records(records).astype(object), lines


def read_table(path: str | os.PathLike) -> tuple[pd.DataFrame, list[int]]:
    """Read a CSV, TSV or JSONL file (optionally ``.gz``) as strings/JSON values.

    Returns:
        ``(frame, lines)``: ``lines[i]`` is the file line where row ``i`` ends.
    """
    p = Path(path)
    suffix = Path(p.stem).suffix.lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{p}: unsupported table format '{suffix}'. Supported: "
                        f"{', '.join(TABLE_SUFFIXES)} (optionally .gz).")
    text = _read_text(p)
    if suffix == ".jsonl":
        return _read_jsonl(p, text)
    return _read_delimited(p, text, "\t" if suffix == ".tsv" else ",")


def from_table(path: str | os.PathLike, *, text_column: str | None = None, label_column: str | None = "label",
               feature_columns: Sequence[str] | None = None, image_column: str | None = None,
               task: str = "classification", label_names: Sequence[str] | None = None,
               sensitive_column: str | None = None) -> TaskData:
    """Read a CSV, TSV or JSONL file (optionally gzipped).

    The inputs are the ``text_column`` (a text task), the ``feature_columns``
    (tabular), or the ``image_column`` (image paths, relative to the file's
    folder). With none given, a column named ``text`` makes a text task, and
    otherwise every numeric column but the label makes a tabular one.

    Args:
        path: the file; ``.csv``, ``.tsv`` or ``.jsonl``, each optionally ``.gz``.
        text_column: column holding text.
        label_column: column holding labels; ``None`` for unlabelled data.
        feature_columns: numeric columns (tabular).
        image_column: column holding image file paths.
        task: ``"classification"``, ``"multilabel"`` (a JSON list or ``"a|b"``) or ``"regression"``.
        label_names: the class names, when they should not be inferred.
        sensitive_column: a sensitive attribute (sex, island, ...) for fairness
            evaluation and mitigation: kept out of the inputs, stored as
            ``TaskData.sensitive``.

    Raises:
        DataError: non-UTF-8 bytes (file and line), a missing column (file,
            column and the columns present), an empty label, text or
            sensitive value, a non-numeric feature (file, line, value), a
            missing image file.
    """
    p = Path(path)
    frame, lines = read_table(p)
    return _frame_to_taskdata(frame, text_column=text_column, label_column=label_column,
                              feature_columns=feature_columns, image_column=image_column, task=task,
                              label_names=label_names, sensitive_column=sensitive_column, name=p.name, origin=str(p),
                              locate=lambda i: f"{p}: line {lines[i]}", base_dir=p.parent)


def from_frame(df: pd.DataFrame, *, text_column: str | None = None, label_column: str | None = "label",
               feature_columns: Sequence[str] | None = None, image_column: str | None = None,
               task: str = "classification", label_names: Sequence[str] | None = None,
               name: str = "frame", sensitive_column: str | None = None) -> TaskData:
    """A pandas DataFrame, with the same column arguments and rules as :func:`from_table`.

    Errors name the row by its index label.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"from_frame expects a pandas DataFrame, got {type(df).__name__}.")
    index = df.index
    return _frame_to_taskdata(df.reset_index(drop=True), text_column=text_column, label_column=label_column,
                              feature_columns=feature_columns, image_column=image_column, task=task,
                              label_names=label_names, sensitive_column=sensitive_column, name=name,
                              origin=f"DataFrame '{name}'",
                              locate=lambda i: f"DataFrame '{name}', row {index[i]}", base_dir=None)


def _require_columns(present: Sequence, columns: Sequence[str], origin: str) -> None:
    for col in columns:
        if col not in present:
            raise DataError(f"{origin}: no column '{col}'. Columns present: {', '.join(map(str, present))}.")


def _to_numbers(series: pd.Series) -> np.ndarray:
    """Float64 values; NaN where a cell is empty or not a number."""
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        series = series.map(lambda v: v.strip() if isinstance(v, str) else v)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _looks_numeric(series: pd.Series) -> bool:
    """Every non-empty cell is a number (and there is at least one)."""
    filled = ~series.map(_is_missing).to_numpy(dtype=bool)
    return bool(filled.any()) and bool(np.isfinite(_to_numbers(series)[filled]).all())


def _infer_inputs(frame: pd.DataFrame, label_column: str | None, origin: str,
                  sensitive_column: str | None = None) -> tuple[str | None, list[str] | None]:
    """``(text_column, feature_columns)`` guessed when the caller named neither (not the label or sensitive column)."""
    if "text" in frame.columns and "text" not in (label_column, sensitive_column):
        return "text", None
    others = [c for c in frame.columns if c not in (label_column, sensitive_column)]
    numeric = [c for c in others if _looks_numeric(frame[c])]
    if numeric and len(numeric) == len(others):
        return None, [str(c) for c in numeric]
    raise DataError(f"{origin}: say which column holds the inputs: text_column=..., feature_columns=[...] "
                    f"or image_column=.... Columns present: {', '.join(map(str, frame.columns))}.")


def _text_items(series: pd.Series, column: str, locate: Locate) -> list[str]:
    items = []
    for i, v in enumerate(series):
        if _is_missing(v):
            raise DataError(f"{locate(i)}: the text in column '{column}' is empty.")
        items.append(v if isinstance(v, str) else str(v))
    return items


def _feature_matrix(frame: pd.DataFrame, columns: Sequence[str], locate: Locate) -> np.ndarray:
    x = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        numbers = _to_numbers(frame[col])
        bad = np.flatnonzero(~np.isfinite(numbers))
        if len(bad):
            i, v = int(bad[0]), frame[col].iloc[int(bad[0])]
            what = "empty or NaN" if _is_missing(v) else f"{v!r}, not a finite number"
            raise DataError(f"{locate(i)}: feature '{col}' is {what} ({len(bad)} such rows in this column).")
        x[:, j] = numbers
    return x


def _image_items(series: pd.Series, column: str, base_dir: Path | None, locate: Locate) -> list[str]:
    items = []
    for i, v in enumerate(series):
        if _is_missing(v):
            raise DataError(f"{locate(i)}: the image path in column '{column}' is empty.")
        p = Path(str(v).strip())
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        if not p.is_file():
            raise DataError(f"{locate(i)}: image file not found: {p}")
        items.append(str(p))
    return items


def _sensitive_values(series: pd.Series, column: str, locate: Locate) -> np.ndarray:
    """The group of each row (strings; numbers as written), refusing empty cells by row."""
    values = []
    for i, v in enumerate(series):
        if _is_missing(v):
            raise DataError(f"{locate(i)}: the sensitive attribute in column '{column}' is empty. "
                            f"Drop such rows or give them a group.")
        values.append(_label_key(v))
    return np.asarray(values, dtype=object)


def _check_sensitive_column(sensitive_column: str, label_column, text_column, image_column, feature_columns,
                            origin: str) -> None:
    inputs = [c for c in (text_column, image_column, *(feature_columns or [])) if c is not None]
    if sensitive_column == label_column or sensitive_column in inputs:
        role = "label" if sensitive_column == label_column else "input"
        raise ConfigError(f"{origin}: the sensitive column '{sensitive_column}' is also the {role} column; "
                          f"a sensitive attribute is kept out of the labels and the inputs.")


def _frame_to_taskdata(frame: pd.DataFrame, *, text_column, label_column, feature_columns, image_column, task,
                       label_names, name: str, origin: str, locate: Locate, base_dir: Path | None,
                       sensitive_column: str | None = None) -> TaskData:
    if task not in TASKS:
        raise DataError(f"Unknown task '{task}'. Available: {', '.join(TASKS)}.")
    if sensitive_column is not None and sensitive_column not in frame.columns:
        raise DataError(f"{origin}: no column '{sensitive_column}' for the sensitive attribute. "
                        f"Columns present: {', '.join(map(str, frame.columns))}.")
    named = [label_column, text_column, image_column, sensitive_column, *(feature_columns or [])]
    _require_columns(list(frame.columns), [c for c in named if c is not None], origin)
    if sensitive_column is not None:
        _check_sensitive_column(sensitive_column, label_column, text_column, image_column, feature_columns, origin)
    if text_column is None and image_column is None and not feature_columns:
        text_column, feature_columns = _infer_inputs(frame, label_column, origin, sensitive_column)
    if image_column is not None:
        items, modality = _image_items(frame[image_column], image_column, base_dir, locate), "image"
    elif text_column is not None:
        items, modality = _text_items(frame[text_column], text_column, locate), "text"
    else:
        items, modality = _feature_matrix(frame, list(feature_columns), locate), "tabular"
    targets, names = None, list(label_names) if label_names is not None else None
    if label_column is not None:
        targets, names = encode_labels(list(frame[label_column]), task=task, label_names=label_names, locate=locate)
    sensitive = None
    if sensitive_column is not None:
        sensitive = _sensitive_values(frame[sensitive_column], sensitive_column, locate)
    return TaskData(items, targets, modality, task=task, label_names=names, name=name, source=origin,
                    feature_names=[str(c) for c in feature_columns] if modality == "tabular" else None,
                    sensitive=sensitive, sensitive_name=sensitive_column)


# ---------------------------------------------------------------- arrays


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
        raise DataError(f"Unknown task '{task}'. Available: {', '.join(TASKS)}.")
    items, modality = _array_items(X, modality)
    targets, names = (None, list(label_names) if label_names else None)
    if y is not None:
        if len(y) != len(items):
            raise DataError(f"X has {len(items)} items but y has {len(y)} labels.")
        targets, names = _array_targets(y, task, label_names)
    feature_names = [f"x{j}" for j in range(items.shape[1])] if modality == "tabular" else None
    return TaskData(items, targets, modality, task=task, label_names=names, name=name, source="arrays",
                    feature_names=feature_names)


# ---------------------------------------------------------------- Hugging Face datasets


def _hf_images(values: Sequence) -> Any:
    """Decoded HF images as uint8 arrays (stacked when they share a shape), or file paths."""
    arrays = []
    for i, v in enumerate(values):
        if isinstance(v, dict):  # Image(decode=False): {"path": ..., "bytes": ...}
            if not v.get("path"):
                raise DataError(f"Hugging Face dataset row {i}: undecoded image without a path.")
            arrays.append(v["path"])
        else:
            arrays.append(np.asarray(v.convert("RGB") if v.mode not in ("L", "RGB") else v, dtype=np.uint8))
    if arrays and all(isinstance(a, np.ndarray) for a in arrays) and len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    return arrays


def _hf_label_kind(feature: Any) -> tuple[str | None, list[str] | None]:
    """``(task, names)`` implied by a HF label feature (``None`` when it does not say)."""
    names = getattr(feature, "names", None)
    if names is not None:
        return "classification", list(names)
    inner = getattr(feature, "feature", None)
    if inner is not None and getattr(inner, "names", None) is not None:
        return "multilabel", list(inner.names)
    if getattr(feature, "dtype", "").startswith("float"):
        return "regression", None
    return None, None


def _hf_classlabel_targets(raw: list, names: list[str], task: str, locate: Locate) -> np.ndarray:
    """ClassLabel values are indices into ``names`` (-1 marks a missing label)."""
    if task == "multilabel":
        targets = np.zeros((len(raw), len(names)), dtype=np.float32)
        for i, row in enumerate(raw):
            for k in row:
                if not 0 <= k < len(names):
                    raise DataError(f"{locate(i)}: label index {k} is outside 0..{len(names) - 1}.")
                targets[i, k] = 1.0
        return targets
    targets = np.asarray(raw, dtype=np.int64)
    bad = np.flatnonzero((targets < 0) | (targets >= len(names)))
    if len(bad):
        raise DataError(f"{locate(int(bad[0]))}: the label is missing or out of range ({targets[bad[0]]}); "
                        f"{len(bad)} such rows.")
    return targets


def _hf_input_column(ds: Any, text_column: str | None, image_column: str | None) -> tuple[str, str]:
    if image_column is not None:
        return image_column, "image"
    if text_column is not None:
        return text_column, "text"
    for col, feat in ds.features.items():
        if type(feat).__name__ == "Image":
            return col, "image"
    for col in ("text", "sentence", "content"):
        if col in ds.column_names:
            return col, "text"
    raise DataError(f"Hugging Face dataset: say which column holds the inputs (text_column=... or "
                    f"image_column=...). Columns: {', '.join(ds.column_names)}.")


def from_hf_dataset(ds: Any, *, text_column: str | None = None, image_column: str | None = None,
                    label_column: str | None = "label", task: str | None = None) -> TaskData:
    """A ``datasets.Dataset`` (one split). ``ClassLabel`` names become ``label_names``, indices kept.

    Args:
        ds: the dataset (already loaded; nothing is downloaded here).
        text_column: column holding text.
        image_column: column holding images (an ``Image`` feature or paths).
        label_column: label column, or ``None`` for unlabelled data.
        task: override the task implied by the label feature.
    """
    if not hasattr(ds, "features") or not hasattr(ds, "column_names"):
        raise DataError(f"from_hf_dataset expects a datasets.Dataset (one split), got {type(ds).__name__}.")
    name = (getattr(ds, "info", None) and ds.info.dataset_name) or "hf-dataset"
    origin = f"Hugging Face dataset '{name}'"
    column, modality = _hf_input_column(ds, text_column, image_column)
    _require_columns(ds.column_names, [column] + ([label_column] if label_column else []), origin)
    values = list(ds[column])
    locate = lambda i: f"{origin}, row {i}"  # noqa: E731
    items = (_hf_images(values) if modality == "image" and type(ds.features[column]).__name__ == "Image"
             else _text_items(pd.Series(values, dtype=object), column, locate))
    targets, names, kind = None, None, task or "classification"
    if label_column is not None:
        implied, names = _hf_label_kind(ds.features[label_column])
        kind = task or implied or "classification"
        raw = list(ds[label_column])
        if names is not None and kind == implied:
            targets = _hf_classlabel_targets(raw, names, kind, locate)
        else:
            targets, names = encode_labels(raw, task=kind, label_names=names, locate=locate)
    return TaskData(items, targets, modality, task=kind, label_names=names, name=name, source=origin)
