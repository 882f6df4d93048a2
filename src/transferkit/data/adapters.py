"""Adapters from the user's data to :class:`TaskData`: image folders, tables, arrays, frames, HF datasets.

Label rules, the same for every adapter (:mod:`~transferkit.data.adapters_labels` has them in full):

* classification labels name classes; a number names the class of its value,
  so ``1``, ``1.0``, ``"1"`` and a CSV cell ``1.0`` are one class ``"1"`` in
  every format, and a number that is not whole (``2.5``) is refused (use
  ``task="regression"``); string labels map to the sorted class names
  (``label_names``); integer labels are kept as indices when ``label_names``
  is given;
* multi-label labels are a list (JSONL, arrays, HF datasets) or a
  ``"a|b"`` string (CSV/TSV);
* regression labels are floats.

Every problem with the input raises :class:`~transferkit.errors.DataError`
naming the file, the row (or line) and the value.

This module gathers the public names; each format lives in its own module:

* :mod:`~transferkit.data.adapters_labels`: the label rules above and label alignment;
* :mod:`~transferkit.data.adapters_images`: image folders;
* :mod:`~transferkit.data.adapters_tables`: CSV/TSV/JSONL files and DataFrames;
* :mod:`~transferkit.data.adapters_arrays`: in-memory arrays and lists of text;
* :mod:`~transferkit.data.adapters_hf`: Hugging Face datasets.

Example:
    >>> data = from_arrays(["good film", "bad film"], ["pos", "neg"])
    >>> data.modality, data.label_names, data.targets.tolist()
    ('text', ['neg', 'pos'], [1, 0])
"""
from __future__ import annotations

from transferkit.data.adapters_arrays import from_arrays
from transferkit.data.adapters_hf import from_hf_dataset
from transferkit.data.adapters_images import IMAGE_EXTENSIONS, from_image_folder
from transferkit.data.adapters_labels import (Locate, align_labels, align_to_label_names, check_classes_present,
                                              check_eval_labels, check_two_classes, encode_labels)
from transferkit.data.adapters_tables import TABLE_SUFFIXES, from_frame, from_table, read_table
from transferkit.data.adapters_tables import _looks_numeric  # noqa: F401  (workflows/multitask.py imports it)
from transferkit.data.adapters_tokens import from_hf_token_dataset, read_conll, read_span_jsonl

__all__ = ["IMAGE_EXTENSIONS", "TABLE_SUFFIXES", "Locate", "align_labels", "align_to_label_names",
           "check_classes_present", "check_eval_labels", "check_two_classes", "encode_labels", "from_arrays",
           "from_frame", "from_hf_dataset", "from_image_folder", "from_table", "read_table",
           "read_conll", "read_span_jsonl", "from_hf_token_dataset"]
