"""Image-folder adapter: one sub-folder per class (torchvision's ``ImageFolder`` layout) to :class:`TaskData`."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _class_images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))


def _verify_images(paths: Sequence[str]) -> None:
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
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
