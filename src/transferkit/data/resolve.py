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

from transferkit.data.adapters import (align_labels, align_to_label_names, check_eval_labels, from_arrays, from_frame,
                                       from_hf_dataset, from_image_folder, from_table)
from transferkit.data.adapters_dense import DENSE_TASKS, read_dense
from transferkit.data.adapters_audio import (from_audio_folder, is_audio_folder, is_transcript_table,
                                             read_transcript_table)
from transferkit.data.adapters_generation import is_generation_file, read_generation_file
from transferkit.data.adapters_tokens import from_hf_token_dataset, is_conll, is_span_jsonl, read_token_file
from transferkit.data.builtin import DATASETS, load_dataset
from transferkit.data.splits import cap_test
from transferkit.data.dataset import TaskData
from transferkit.data.stream_sources import is_iterable_dataset, is_tar_pattern
from transferkit.data.streaming import StreamData, open_stream
from transferkit.tasks import get_task
from transferkit.errors import ConfigError, DataError, UnknownNameError, unknown_name


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "features")


def is_streamed(data: Any) -> bool:
    """Whether ``data`` can only be read as a stream: tar shards, or a ``datasets.IterableDataset``."""
    return is_tar_pattern(data) or is_iterable_dataset(data)


def _from_path(path: Path, columns: dict, task: str | None) -> TaskData:
    if task is None or task in DENSE_TASKS:  # COCO JSON, Pascal VOC, YOLO or image + mask folders
        dense = read_dense(path, task)
        if dense is not None:
            return dense
        if task is not None:
            raise DataError(f"{path} is not {task} data: give a COCO JSON file, a Pascal VOC folder (Annotations/, "
                            f"JPEGImages/), a YOLO folder (images/, labels/, classes.txt) or, for segmentation, "
                            f"a folder of images/ and masks/ (PNG class indices).")
    if path.is_dir() and task != "token-classification":
        if is_audio_folder(path):
            if columns.get("sensitive_column") is not None:
                raise ConfigError(f"{path} is an audio folder, which has no columns: a sensitive_column needs a "
                                  f"table (CSV/TSV/JSONL with an audio column) or a DataFrame.")
            return from_audio_folder(path)
        if columns.get("sensitive_column") is not None:
            raise ConfigError(f"{path} is an image folder, which has no columns: a sensitive_column needs a "
                              f"table (CSV/TSV/JSONL with an image_column or features) or a DataFrame.")
        return from_image_folder(path)
    # a CoNLL file, or JSONL records of text and entity spans (with another task: a clear refusal)
    if task == "token-classification" or is_conll(path) or (task is None and is_span_jsonl(path)):
        return read_token_file(path, task=task, **columns)
    # audio clips with transcripts (by their columns, or when told)
    if task == "speech-recognition" or (task is None and is_transcript_table(path)):
        label = columns.get("label_column")
        return read_transcript_table(path, transcript_column=None if label in (None, "label") else label)
    # prompt/completion pairs or chats (by their columns, or when told)
    if task == "text-generation" or (task is None and is_generation_file(path)):
        label = columns.get("label_column")
        return read_generation_file(path, prompt_column=columns.get("text_column"),
                                    completion_column=None if label in (None, "label") else label)
    return from_table(path, task=task or "classification", **columns)


def _builtin_choice(name: str, option: str, argument: str, column: str, dataset_options: dict) -> dict:
    """The built-in loader's options with ``option`` (``sensitive``, ``label``) set from the ``argument`` column."""
    if option not in DATASETS.get(name).options():
        having = ", ".join(e.name for e in DATASETS if option in e.obj.options()) or "none"
        raise ConfigError(f"The built-in data set '{name}' has no {option} column to choose ({argument}={column!r}); "
                          f"{argument} applies to table files, data frames and the built-in sets {having}.")
    if dataset_options.get(option) not in (None, column):
        raise ConfigError(f"{argument}={column!r} and {option}={dataset_options[option]!r} disagree.")
    return {**dataset_options, option: column}


def _check_given_sensitive(data: TaskData, column: str) -> TaskData:
    """A TaskData passed as is must already carry the asked-for sensitive attribute."""
    if data.sensitive is None or (data.sensitive_name not in (None, column)):
        have = f"'{data.sensitive_name}'" if data.sensitive is not None else "none"
        raise ConfigError(f"sensitive_column={column!r}, but the TaskData '{data.name}' carries a ready-made "
                          f"sensitive attribute ({have}); set TaskData.sensitive, or pass a table or DataFrame.")
    return data


def _resolve_one(data: Any, *, columns: dict, task: str | None,
                 dataset_options: dict) -> tuple[TaskData, TaskData | None]:
    """``(data, built-in test split or None)`` for one user argument."""
    sensitive = columns.get("sensitive_column")
    if isinstance(data, TaskData):
        return (data if sensitive is None else _check_given_sensitive(data, sensitive)), None
    if is_streamed(data):
        raise DataError(f"{data if isinstance(data, (str, os.PathLike)) else type(data).__name__}: tar shards and "
                        f"a datasets.IterableDataset are read as a stream, which only fit's training data is; "
                        f"here the data is read whole: give a folder, a table or a datasets.Dataset.")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.exists():
            return _from_path(path, columns, task), None
        if isinstance(data, str) and data in DATASETS:
            if sensitive is not None:
                dataset_options = _builtin_choice(data, "sensitive", "sensitive_column", sensitive, dataset_options)
            if columns.get("label_column") not in (None, "label"):
                dataset_options = _builtin_choice(data, "label", "label_column", columns["label_column"],
                                                  dataset_options)
            return load_dataset(data, **dataset_options)
        err = unknown_name("dataset", str(data), DATASETS.names())
        raise UnknownNameError(f"{err} It is not a file or folder either: {path.resolve()}") from None
    if isinstance(data, pd.DataFrame):
        return from_frame(data, task=task or "classification", **columns), None
    if sensitive is not None:
        raise ConfigError(f"sensitive_column={sensitive!r} needs a table file, a DataFrame, a built-in data set "
                          f"with a sensitive attribute or a TaskData with one; got a {type(data).__name__}.")
    if isinstance(data, tuple) and len(data) == 2:
        return from_arrays(data[0], data[1], task=task or "classification"), None
    if _is_hf_dataset(data):
        hf_columns = {k: v for k, v in columns.items() if k in ("text_column", "label_column")}
        if task == "token-classification":  # tokens_column, tags_column: the text and label columns when named
            names = {"tokens_column": hf_columns.get("text_column"), "tags_column": hf_columns.get("label_column")}
            return from_hf_token_dataset(data, **{k: v for k, v in names.items() if v not in (None, "label")}), None
        return from_hf_dataset(data, task=task, **hf_columns), None
    raise DataError(f"Cannot use a {type(data).__name__} as data. Pass a built-in data set name "
                    f"({', '.join(DATASETS.names())}), an image folder, a CSV/TSV/JSONL file, a TaskData, "
                    f"an (X, y) tuple, a pandas DataFrame or a datasets.Dataset.")


def resolve_data(data: Any, *, test_data: Any = None, text_column: str | None = None,
                 label_column: str | None = "label", feature_columns: list[str] | None = None,
                 task: str | None = None, sensitive_column: str | None = None, stream: bool = False,
                 **dataset_options) -> tuple[TaskData | StreamData, TaskData | None]:
    """Turn the user's training (and test) data into TaskData.

    Args:
        data: a built-in name (its train split; its test split becomes the
            test data unless ``test_data`` is given), a folder (image or audio folder: one
            sub-folder per class),
            a table file, a TaskData, an ``(X, y)`` tuple, a DataFrame or a
            ``datasets.Dataset``.
        test_data: the same kinds, or ``None``. A built-in name gives its test split.
        text_column: text column of a table or frame.
        label_column: label column of a table or frame.
        feature_columns: numeric columns of a table or frame.
        task: ``"classification"`` (default), ``"multilabel"``, ``"regression"``, ``"detection"`` or
            ``"segmentation"`` (COCO JSON, Pascal VOC, YOLO and image + mask folders, also detected by their
            layout), ``"text-generation"`` (prompt/completion CSV/TSV/JSONL or JSONL chats, also detected by
            their columns), ``"speech-recognition"`` (a table of audio paths and a ``transcript`` column, also
            detected) or ``"token-classification"``
            (CoNLL ``.conll``/``.iob``/``.bio``/``.txt`` or JSONL-span files, HF datasets with
            ``tokens``/``ner_tags`` columns; a ``.conll``/``.iob``/``.bio`` file is always token data).
        sensitive_column: a sensitive attribute (group) column, kept out of the
            inputs and stored as ``TaskData.sensitive`` (fairness). A built-in data
            set takes it as its ``sensitive=`` option (``penguins``: island, sex).
            Likewise a ``label_column`` other than ``"label"`` becomes a built-in
            set's ``label=`` option (``penguins``: species, sex).
        stream: read ``data`` as a stream (:func:`~transferkit.data.streaming.open_stream`: tar shards, a
            ``datasets`` stream of Parquet / JSONL / CSV files or a ``save_to_disk`` folder, an image folder)
            instead of whole. Tar shards and a ``datasets.IterableDataset`` are read only as a stream
            (refused otherwise). Test data is read whole.
        **dataset_options: options of a built-in loader (e.g. ``sections=``).

    Returns:
        ``(train, test)``; ``test`` is ``None`` when none was given or built in.
        The test targets index the training ``label_names``. ``train`` is a
        :class:`~transferkit.data.streaming.StreamData` when streamed.

    Raises:
        UnknownNameError: a string that is neither a built-in name nor an existing path.
        DataError: the test data has a label the training data never had.
        ConfigError: ``dataset_options`` given without a built-in data set; a
            ``sensitive_column`` for data that cannot have one.
        DataError: no such ``sensitive_column`` (the message lists the columns present).
    """
    if dataset_options and not any(isinstance(d, str) and d in DATASETS and not Path(d).exists()
                                   for d in (data, test_data)):
        raise ConfigError(f"Option(s) {', '.join(sorted(dataset_options))} apply only to built-in data sets "
                          f"({', '.join(DATASETS.names())}).")
    columns = {"text_column": text_column, "label_column": label_column, "feature_columns": feature_columns,
               "sensitive_column": sensitive_column}
    if stream or isinstance(data, StreamData):
        return _resolve_stream(data, test_data, columns, task)
    train, test = _resolve_one(data, columns=columns, task=task, dataset_options=dataset_options)
    if test_data is not None:
        test = _resolve_test(test_data, columns, task, dataset_options)
    if test is not None:
        check_eval_labels(train, test)
        test = align_labels(train, test)
    return train, test


def _resolve_test(test_data: Any, columns: dict, task: str | None, dataset_options: dict) -> TaskData:
    """Test data read whole: a built-in name gives its test split, anything else is read as training data is."""
    resolved, its_test = _resolve_one(test_data, columns=columns, task=task, dataset_options=dataset_options)
    return its_test if isinstance(test_data, str) and its_test is not None else resolved


def _resolve_stream(data: Any, test_data: Any, columns: dict, task: str | None) -> tuple[StreamData, TaskData | None]:
    """A stream of training data, and test data read whole with its labels indexed as the stream's."""
    if task is not None and not get_task(task).single_label:
        raise ConfigError(f"Streamed training data is read for classification, one class per item; task={task!r} "
                          f"needs the data whole (without --stream).")
    for option in ("sensitive_column", "feature_columns"):
        if columns.get(option) is not None:
            raise ConfigError(f"{option} applies to data read whole; a stream carries inputs and labels only.")
    train = data if isinstance(data, StreamData) else open_stream(data, text_column=columns["text_column"],
                                                                   label_column=columns["label_column"])
    test = None
    if test_data is not None:
        test = align_to_label_names(_resolve_test(test_data, columns, task, {}), train.label_names,
                                    owner=f"the training stream '{train.name}'")
    return train, test


def prepare_stream(train: StreamData, test, val_data, labels_per_class, val_fraction, max_test,
                   data_options: dict) -> tuple[StreamData, TaskData | None, TaskData | None]:
    """``prepare_data`` for a stream: the stream as it is (no per-class draw, no split held out), validation
    data read whole and indexed as its labels (as test data is: a built-in name gives its test split), the test
    data cut to ``max_test``.

    Raises:
        ConfigError: ``labels_per_class``, or a ``val_fraction`` above 0 (both need the data whole).
    """
    if labels_per_class is not None:
        raise ConfigError(f"labels_per_class draws from training data held whole; '{train.name}' is streamed. "
                          f"Leave it out, or read the data whole (without --stream).")
    if val_fraction:
        raise ConfigError(f"val_fraction holds a split out of training data held whole; '{train.name}' is "
                          f"streamed. Give validation data with val_data, or leave val_fraction out.")
    val = None
    if val_data is not None:
        columns = {k: v for k, v in data_options.items() if k in ("text_column", "label_column")}
        _, val = resolve_data(train, test_data=val_data, **columns)  # read whole, indexed as the stream's classes
    return train, val, cap_test(test, max_test)
