"""Data layer: adapters to :class:`TaskData`, built-in data sets, splits, and the feature cache.

The feature cache (:func:`extract_features`, :func:`feature_cache_key`,
:func:`cached_path`) imports torch, so it is loaded on first use: listing or
loading data sets stays light.
"""
from __future__ import annotations

from typing import Any

from transferkit.data.adapters import (IMAGE_EXTENSIONS, align_labels, align_to_label_names, check_classes_present,
                                       check_eval_labels, check_two_classes, encode_labels, from_arrays, from_frame,
                                       from_hf_dataset, from_image_folder, from_table)
from transferkit.data.builtin import DATASETS, list_datasets, load_dataset
from transferkit.data.dataset import TaskData
from transferkit.data.resolve import resolve_data
from transferkit.data.splits import auto_val_fraction, sample_per_class, subsample, train_val_split

_CACHE_NAMES = ("extract_features", "feature_cache_key", "cached_path", "compute_features", "default_cache_dir")

__all__ = [
    "DATASETS", "IMAGE_EXTENSIONS", "TaskData", "align_labels", "align_to_label_names", "check_classes_present",
    "check_eval_labels", "check_two_classes",
    "encode_labels", "from_arrays", "from_frame", "from_hf_dataset", "from_image_folder", "from_table",
    "auto_val_fraction", "list_datasets", "load_dataset", "resolve_data", "sample_per_class", "subsample", "train_val_split",
    *_CACHE_NAMES,
]


def __getattr__(name: str) -> Any:
    """Load the torch-backed feature cache on first use (PEP 562)."""
    if name in _CACHE_NAMES:
        from transferkit.data import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'transferkit.data' has no attribute '{name}'")
