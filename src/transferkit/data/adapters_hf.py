"""Hugging Face adapter: one split of a loaded ``datasets.Dataset`` to :class:`TaskData`.

``ClassLabel`` names become ``label_names`` with their indices kept; ``Image``
features become uint8 arrays (or file paths when not decoded). Nothing is
downloaded here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from transferkit.data.adapters_labels import Locate, encode_labels
from transferkit.data.adapters_tables import _require_columns, _text_items
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError


def _hf_images(values: Sequence) -> Any:
    """Decoded HF images as uint8 arrays (stacked when they share a shape), or file paths."""
    from transferkit.backbones.base import to_rgb  # 16-bit and palette images scaled, not clipped

    arrays = []
    for i, v in enumerate(values):
        if isinstance(v, dict):  # Image(decode=False): {"path": ..., "bytes": ...}
            if not v.get("path"):
                raise DataError(f"Hugging Face dataset row {i}: undecoded image without a path.")
            arrays.append(v["path"])
        else:
            arrays.append(np.asarray(to_rgb(v, f"Hugging Face dataset row {i}") if v.mode not in ("L", "RGB") else v,
                                     dtype=np.uint8))
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
