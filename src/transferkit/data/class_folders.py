"""The class-folder layout shared by the image and audio folder readers: one sub-folder per class.

``root/cat/1.jpg``, ``root/dog/a/2.png``: the class is the first-level sub-folder; files below it
are found recursively by suffix (any case). Hidden files and folders are skipped.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.errors import DataError


def class_dirs(root: Path) -> list[Path]:
    """The visible first-level sub-folders of ``root``, sorted by name: one a class."""
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def class_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """The visible files below ``folder`` (recursively) whose suffix, lower-cased, is in ``extensions``."""
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and f.suffix.lower() in extensions and not f.name.startswith("."))


def read_class_folders(path: str | os.PathLike, extensions: Sequence[str], *, kind: str, contents: str,
                       example: str) -> tuple[Path, list[str], np.ndarray, list[str]]:
    """Walk a class-folder tree into file paths and integer targets.

    Args:
        path: the root folder.
        extensions: the lower-case suffixes (with the dot) that count as files of a class.
        kind: the folder's kind in the "not found" message (``"Image"``: "Image folder not found").
        contents: what an empty class folder lacks (``"images"``: "Class folder(s) with no images").
        example: a class folder and file for the "no class sub-folders" hint (``"cat/1.jpg"``).

    Returns:
        ``(root, items, targets, label_names)``: items are file paths grouped by class, targets
        their class indices, classes sorted by folder name.

    Raises:
        DataError: the folder is missing or not a folder, has no class folders, or a class folder
            holds no file with one of ``extensions`` (named).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{kind} folder not found: {root}" if not root.exists() else f"{root} is not a folder.")
    classes = class_dirs(root)
    if not classes:
        raise DataError(f"{root} has no class sub-folders. Expected one folder per class, e.g. {root}/{example}.")
    files = {d.name: class_files(d, extensions) for d in classes}
    empty = [str(d) for d in classes if not files[d.name]]
    if empty:
        raise DataError(f"Class folder(s) with no {contents} ({', '.join(extensions)}): {', '.join(empty)}.")
    items = [str(f) for d in classes for f in files[d.name]]
    targets = np.concatenate([np.full(len(files[d.name]), k, dtype=np.int64) for k, d in enumerate(classes)])
    return root, items, targets, [d.name for d in classes]
