"""Image-folder adapter: one sub-folder per class (torchvision's ``ImageFolder`` layout) to :class:`TaskData`."""
from __future__ import annotations

import os
from collections.abc import Sequence

from transferkit.data.class_folders import read_class_folders
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


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
    root, items, targets, label_names = read_class_folders(path, IMAGE_EXTENSIONS, kind="Image", contents="images",
                                                           example="cat/1.jpg")
    if verify:
        _verify_images(items)
    return TaskData(items, targets, "image", label_names=label_names, name=root.name, source=str(root.resolve()))
