"""Table adapters: CSV, TSV and JSONL files (optionally gzipped) and pandas DataFrames to :class:`TaskData`.

:func:`read_table` reads a file into a frame of strings/JSON values, keeping
the file line of every row; :func:`from_table` and :func:`from_frame` pick the
input column(s) (text, numeric features or image paths), the labels and an
optional sensitive attribute, and name the file, line and value of any bad cell.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.adapters_labels import Locate, _is_missing, _label_key, encode_labels
from transferkit.data.dataset import TaskData
from transferkit.tasks import TASKS
from transferkit.errors import ConfigError, DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


#: Byte-order marks of the Unicode encodings other than UTF-8 that a file can announce (UTF-32 first: its
#: little-endian mark begins with UTF-16's).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, or UTF-16/32 where a byte-order mark says so (a ``.gz`` is decompressed first)."""
    if not path.is_file():
        raise DataError(f"Table file not found: {path}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc}).") from None
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8-sig")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding != "utf-8-sig":
            raise DataError(f"{path}: starts with a {encoding.upper()} byte-order mark but byte {exc.start} is not "
                            f"valid {encoding.upper()}. Save the file as UTF-8.") from None
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: line {line}, column {column} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}). "
                        f"Save the file as UTF-8.") from None
    nul = text.find("\0")
    if nul >= 0:  # no text table holds NUL characters; UTF-16 without its byte-order mark is full of them
        line = text.count("\n", 0, nul) + 1
        raise DataError(f"{path}: line {line} holds a NUL character: is the file UTF-16 without a byte-order "
                        f"mark? Save it as UTF-8.")
    return text


@contextlib.contextmanager
def _field_limit(size: int):
    """Let the csv module read fields up to ``size`` characters (its default stops at 131,072)."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, size))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _check_header(path: Path, header: list[str]) -> list[str]:
    names = [h.strip() for h in header]
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header ({', '.join(names)}).")
        seen.add(name)
    return names


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[pd.DataFrame, list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, lines = [], []
    try:
        with _field_limit(len(text)):  # no field is longer than the file
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: the file is empty; expected a header row with column names.")
            names = _check_header(path, header)
            for row in reader:
                if not row:
                    continue
                if len(row) != len(names):
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields but the header has "
                                    f"{len(names)} ({', '.join(names)}).")
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as exc:
        kind = "TSV" if delimiter == "\t" else "CSV"
        hint = " (a UTF-16 file without a byte-order mark? Save it as UTF-8)" if "NUL" in str(exc) else ""
        raise DataError(f"{path}: line {reader.line_num} cannot be read as {kind}: {exc}{hint}.") from None
    if not rows:
        raise DataError(f"{path}: the file has a header ({', '.join(names)}) but no rows.")
    return pd.DataFrame(rows, columns=names, dtype=object), lines


def _read_jsonl(path: Path, text: str) -> tuple[pd.DataFrame, list[int]]:
    records, lines = [], []
    # split at newlines only: str.splitlines() also splits at U+2028 and others, which JSON strings may hold
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n} is not valid JSON ({exc.msg} at column {exc.colno}).") from None
        except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting deeper than Python's stack
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise DataError(f"{path}: line {n} cannot be read as JSON ({what}).") from None
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
               audio_column: str | None = None,
               task: str = "classification", label_names: Sequence[str] | None = None,
               sensitive_column: str | None = None) -> TaskData:
    """Read a CSV, TSV or JSONL file (optionally gzipped).

    The inputs are the ``text_column`` (a text task), the ``feature_columns``
    (tabular), the ``image_column`` (image paths, relative to the file's
    folder) or the ``audio_column`` (audio paths, likewise). With none given, a
    column named ``text`` makes a text task, a column named ``audio``, ``path``
    or ``file`` whose cells end in an audio suffix (``.wav``, ``.flac``, ...) an
    audio one, and otherwise every numeric column but the label makes a tabular one.

    Args:
        path: the file; ``.csv``, ``.tsv`` or ``.jsonl``, each optionally ``.gz``.
        text_column: column holding text.
        label_column: column holding labels; ``None`` for unlabelled data.
        feature_columns: numeric columns (tabular).
        image_column: column holding image file paths.
        audio_column: column holding audio file paths (each file's header is read now).
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
                              feature_columns=feature_columns, image_column=image_column, audio_column=audio_column,
                              task=task,
                              label_names=label_names, sensitive_column=sensitive_column, name=p.name, origin=str(p),
                              locate=lambda i: f"{p}: line {lines[i]}", base_dir=p.parent)


def from_frame(df: pd.DataFrame, *, text_column: str | None = None, label_column: str | None = "label",
               feature_columns: Sequence[str] | None = None, image_column: str | None = None,
               audio_column: str | None = None,
               task: str = "classification", label_names: Sequence[str] | None = None,
               name: str = "frame", sensitive_column: str | None = None) -> TaskData:
    """A pandas DataFrame, with the same column arguments and rules as :func:`from_table`.

    Errors name the row by its index label.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"from_frame expects a pandas DataFrame, got {type(df).__name__}.")
    index = df.index
    return _frame_to_taskdata(df.reset_index(drop=True), text_column=text_column, label_column=label_column,
                              feature_columns=feature_columns, image_column=image_column, audio_column=audio_column,
                              task=task,
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


def audio_path_column(frame: pd.DataFrame, exclude: Sequence) -> str | None:
    """A column named ``audio``, ``path`` or ``file`` whose filled cells all end in an audio suffix, or ``None``."""
    from transferkit.backbones.audio import is_audio_path

    for col in ("audio", "path", "file"):
        if col in frame.columns and col not in exclude:
            cells = [v for v in frame[col] if not _is_missing(v)]
            if cells and all(is_audio_path(str(v).strip()) for v in cells):
                return col
    return None


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
        if isinstance(v, (list, tuple, dict, np.ndarray)):
            raise DataError(f"{locate(i)}: the text in column '{column}' is a {type(v).__name__} ({v!r:.60}); "
                            f"expected a string.")
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


def _audio_items(series: pd.Series, column: str, base_dir: Path | None, locate: Locate) -> list[str]:
    from transferkit.backbones.audio import audio_info

    items = []
    for i, v in enumerate(series):
        if _is_missing(v):
            raise DataError(f"{locate(i)}: the audio path in column '{column}' is empty.")
        p = Path(str(v).strip())
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        if not p.is_file():
            raise DataError(f"{locate(i)}: audio file not found: {p}")
        try:
            audio_info(p)
        except DataError as exc:
            raise DataError(f"{locate(i)}: {exc}") from None
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
                       sensitive_column: str | None = None, audio_column: str | None = None) -> TaskData:
    if task not in TASKS:
        raise DataError(f"Unknown task '{task}'. Available: {', '.join(TASKS.names())}.")
    if sensitive_column is not None and sensitive_column not in frame.columns:
        raise DataError(f"{origin}: no column '{sensitive_column}' for the sensitive attribute. "
                        f"Columns present: {', '.join(map(str, frame.columns))}.")
    named = [label_column, text_column, image_column, audio_column, sensitive_column, *(feature_columns or [])]
    _require_columns(list(frame.columns), [c for c in named if c is not None], origin)
    if sensitive_column is not None:
        _check_sensitive_column(sensitive_column, label_column, text_column, image_column, feature_columns, origin)
    if text_column is None and image_column is None and audio_column is None and not feature_columns:
        audio_column = audio_path_column(frame, (label_column, sensitive_column))
        if audio_column is None:
            text_column, feature_columns = _infer_inputs(frame, label_column, origin, sensitive_column)
    if audio_column is not None:
        items, modality = _audio_items(frame[audio_column], audio_column, base_dir, locate), "audio"
    elif image_column is not None:
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
