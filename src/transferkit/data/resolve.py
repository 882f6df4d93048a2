"""One entry point from whatever the user passed to ``(train, test)`` TaskData.

``resolve_data`` accepts a built-in data set name, an image folder, a table
file, a TaskData, an ``(X, y)`` tuple, a pandas DataFrame or a Hugging Face
``datasets.Dataset``, for the training data and (optionally) the test data.

Example:
    >>> train, test = resolve_data("penguins")
    >>> train.modality, test is not None
    ('tabular', True)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from transferkit.data.adapters import (align_labels, check_eval_labels, from_arrays, from_frame, from_hf_dataset,
                                       from_image_folder, from_table)
from transferkit.data.builtin import DATASETS, load_dataset
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError, UnknownNameError, unknown_name


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "features")


def _from_path(path: Path, columns: dict, task: str | None) -> TaskData:
    if path.is_dir():
        return from_image_folder(path)
    return from_table(path, task=task or "classification", **columns)


def _resolve_one(data: Any, *, columns: dict, task: str | None,
                 dataset_options: dict) -> tuple[TaskData, TaskData | None]:
    """``(data, built-in test split or None)`` for one user argument."""
    if isinstance(data, TaskData):
        return data, None
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.exists():
            return _from_path(path, columns, task), None
        if isinstance(data, str) and data in DATASETS:
            return load_dataset(data, **dataset_options)
        err = unknown_name("dataset", str(data), DATASETS.names())
        raise UnknownNameError(f"{err} It is not a file or folder either: {path.resolve()}") from None
    if isinstance(data, pd.DataFrame):
        return from_frame(data, task=task or "classification", **columns), None
    if isinstance(data, tuple) and len(data) == 2:
        return from_arrays(data[0], data[1], task=task or "classification"), None
    if _is_hf_dataset(data):
        hf_columns = {k: v for k, v in columns.items() if k in ("text_column", "label_column")}
        return from_hf_dataset(data, task=task, **hf_columns), None
    raise DataError(f"Cannot use a {type(data).__name__} as data. Pass a built-in data set name "
                    f"({', '.join(DATASETS.names())}), an image folder, a CSV/TSV/JSONL file, a TaskData, "
                    f"an (X, y) tuple, a pandas DataFrame or a datasets.Dataset.")


def resolve_data(data: Any, *, test_data: Any = None, text_column: str | None = None,
                 label_column: str | None = "label", feature_columns: list[str] | None = None,
                 task: str | None = None, **dataset_options) -> tuple[TaskData, TaskData | None]:
    """Turn the user's training (and test) data into TaskData.

    Args:
        data: a built-in name (its train split; its test split becomes the
            test data unless ``test_data`` is given), a folder (image folder),
            a table file, a TaskData, an ``(X, y)`` tuple, a DataFrame or a
            ``datasets.Dataset``.
        test_data: the same kinds, or ``None``. A built-in name gives its test split.
        text_column: text column of a table or frame.
        label_column: label column of a table or frame.
        feature_columns: numeric columns of a table or frame.
        task: ``"classification"`` (default), ``"multilabel"`` or ``"regression"``.
        **dataset_options: options of a built-in loader (e.g. ``sections=``).

    Returns:
        ``(train, test)``; ``test`` is ``None`` when none was given or built in.
        The test targets index the training ``label_names``.

    Raises:
        UnknownNameError: a string that is neither a built-in name nor an existing path.
        DataError: the test data has a label the training data never had.
        ConfigError: ``dataset_options`` given without a built-in data set.
    """
    if dataset_options and not any(isinstance(d, str) and d in DATASETS and not Path(d).exists()
                                   for d in (data, test_data)):
        raise ConfigError(f"Option(s) {', '.join(sorted(dataset_options))} apply only to built-in data sets "
                          f"({', '.join(DATASETS.names())}).")
    columns = {"text_column": text_column, "label_column": label_column, "feature_columns": feature_columns}
    train, builtin_test = _resolve_one(data, columns=columns, task=task, dataset_options=dataset_options)
    test = builtin_test
    if test_data is not None:
        resolved, its_test = _resolve_one(test_data, columns=columns, task=task, dataset_options=dataset_options)
        is_builtin = isinstance(test_data, str) and its_test is not None
        test = its_test if is_builtin else resolved
    if test is not None:
        check_eval_labels(train, test)
        test = align_labels(train, test)
    return train, test
