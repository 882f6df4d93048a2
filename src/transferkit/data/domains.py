"""Domain-shift data: target domains built offline, and the checks of a target against its source.

Builders (each deterministic for a given seed, none downloads):

* :func:`to_mnist_m` / :func:`load_fashion_mnist_m`: Fashion-MNIST blended with
  patches of natural photos, the way MNIST-M was built from MNIST.
* :func:`load_emoji_styles`: the 9 emoji groups drawn in colour (Noto Color
  Emoji) or as black line art (Symbola), rendered from the Debian fonts.
* :func:`load_penguin_islands`: Palmer penguins split by island.

:func:`prepare_target_data` resolves the ``target=`` / ``target_labelled=``
arguments of ``fit`` like ``data`` and refuses a target that cannot pair with
the source (another input kind, another feature width, unknown labels, a
labelled part of a single class).

Example:
    >>> train, test = load_fashion_mnist_m(seed=0)            # doctest: +SKIP
    >>> train.items.shape, train.items.dtype                   # doctest: +SKIP
    ((60000, 28, 28, 3), dtype('uint8'))
"""
from __future__ import annotations

import functools
import glob
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.adapters import align_labels, check_eval_labels
from transferkit.data.builtin import FASHION_MNIST_DIR, PENGUIN_FEATURES, load_fashion_mnist
from transferkit.data.dataset import TaskData
from transferkit.data.rendering import (EMOJI_STYLES, EMOJI_TEST, NOTO_EMOJI_FONT, drawable_in_both,  # noqa: F401
                                        emoji_font, read_emoji_test, render_emoji, sample_photos)
from transferkit.data.resolve import resolve_data
from transferkit.data.splits import stratified_indices
from transferkit.errors import ConfigError, DataError

# ---------------------------------------------------------------- Fashion-MNIST-M


def to_mnist_m(data: TaskData, *, seed: int = 0, photos: list[np.ndarray] | None = None,
               chunk: int = 4096) -> TaskData:
    """Blend grey images with random patches of colour photos: ``|patch - image|`` per channel.

    The MNIST-M recipe (Ganin & Lempitsky, ICML 2015, https://arxiv.org/abs/1409.7495,
    section 5): each grey image is combined with a same-sized patch cut at a
    random place of a random photo, ``out = |photo_patch - image|``, so the
    object keeps its shape while colour and texture change. Here the photos
    are scikit-learn's two sample photos (the paper used BSDS500).

    Args:
        data: grey images, a uint8 array ``[N, H, W]`` (e.g. Fashion-MNIST).
        seed: seeds the photo and patch of every image; the same seed gives the same images.
        photos: RGB uint8 photos at least ``H x W`` (default :func:`sample_photos`).

    Returns:
        The same labels with RGB uint8 items ``[N, H, W, 3]``, named ``<name>-m``.
    """
    x = np.asarray(data.items)
    if data.modality != "image" or x.dtype != np.uint8 or x.ndim != 3:
        raise DataError(f"to_mnist_m needs grey uint8 images [N, H, W]; '{data.name}' has {data.modality} items "
                        f"of shape {getattr(x, 'shape', None)}.")
    photos = sample_photos() if photos is None else photos
    n, h, w = x.shape
    if any(p.shape[0] < h or p.shape[1] < w for p in photos):
        raise DataError(f"Every photo must be at least {h}x{w} pixels.")
    rng = np.random.default_rng(seed)
    which = rng.integers(len(photos), size=n)
    tops = np.array([rng.integers(0, photos[k].shape[0] - h + 1) for k in which])
    lefts = np.array([rng.integers(0, photos[k].shape[1] - w + 1) for k in which])
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    for k, photo in enumerate(photos):
        for part in np.array_split(np.flatnonzero(which == k), max(1, n // chunk)):
            patch = photo[tops[part, None, None] + rows, lefts[part, None, None] + cols].astype(np.int16)
            out[part] = np.abs(patch - x[part, :, :, None].astype(np.int16)).astype(np.uint8)
    return replace(data, items=out, name=f"{data.name.split('[', 1)[0]}-m", _fingerprint=None, origin=None,
                   source=f"{data.source or data.name}, MNIST-M blend with scikit-learn sample photos (seed {seed})")


def load_fashion_mnist_m(seed: int = 0, root: str | os.PathLike = FASHION_MNIST_DIR) -> tuple[TaskData, TaskData]:
    """Fashion-MNIST-M: Fashion-MNIST train/test through :func:`to_mnist_m` (RGB uint8 [N, 28, 28, 3]).

    The train split is blended with ``seed``, the test split with ``seed + 1``.
    """
    train, test = load_fashion_mnist(root)
    return to_mnist_m(train, seed=seed), to_mnist_m(test, seed=seed + 1)


# ---------------------------------------------------------------- emoji in two styles


@functools.lru_cache(maxsize=4)
def _render_all(style: str, size: int, path: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Render the emoji drawable in both styles on white; returns (images, indices into read_emoji_test)."""
    from PIL import Image

    font = emoji_font(style)  # first: it names the missing Debian font package
    keep = drawable_in_both(path)
    entries = read_emoji_test(path)
    images = np.empty((len(keep), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(keep):
        glyph = render_emoji(entries[i][0], style, font)
        img = Image.new("RGB", glyph.size, "white")
        img.paste(glyph, mask=glyph.getchannel("A"))
        images[k] = np.asarray(img.resize((size, size), Image.LANCZOS))
    return images, keep


def load_emoji_styles(style: str = "color", size: int = 64, seed: int = 0,
                      emoji_test: str = EMOJI_TEST) -> tuple[TaskData, TaskData]:
    """Emoji by Unicode group (9 classes), drawn in colour (Noto Color Emoji) or as line art (Symbola).

    Only emoji that both fonts draw are kept (single code points Symbola has),
    so both styles hold the same emoji and classes, and the stratified 75/25
    train/test split depends on ``seed`` only: colour train -> line-art
    train (unlabelled) -> line-art test is a style shift with unseen test emoji.

    Args:
        style: ``"color"`` or ``"line"``.
        size: image side in pixels.
        seed: seed of the train/test split.
        emoji_test: Unicode's ``emoji-test.txt`` (Debian package unicode-data).

    Raises:
        DataError: a font or the emoji list is missing; the message names the Debian packages.
    """
    if style not in EMOJI_STYLES:
        raise ConfigError(f"The 'style' option of emoji must be one of {', '.join(EMOJI_STYLES)}. Got {style!r} instead.")
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"The 'size' option of emoji must be an int in [8, inf). Got {size!r} instead.")
    images, keep = _render_all(style, size, emoji_test)
    entries = read_emoji_test(emoji_test)
    groups = [entries[i][1] for i in keep]
    names = sorted(set(groups))
    targets = np.array([names.index(g) for g in groups], dtype=np.int64)
    font = "Noto Color Emoji" if style == "color" else "Symbola"
    data = TaskData(images, targets, "image", label_names=names, name=f"emoji-{style}",
                    source=f"Unicode emoji-test.txt groups, rendered with {font} at {size} px")
    test_idx = stratified_indices(targets, len(names), round(0.25 * len(data)), seed)
    train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
    return data.subset(train_idx, name=f"emoji-{style}-train"), data.subset(test_idx, name=f"emoji-{style}-test")


# ---------------------------------------------------------------- penguins by island


def load_penguin_islands(source_islands: tuple[str, ...] = ("Biscoe",), label: str = "sex") -> tuple[TaskData, TaskData]:
    """Palmer penguins, source = ``source_islands``, target = the other islands (4 body measurements).

    With ``label="sex"`` every island has both classes while the species mix
    differs (Biscoe: Adelie and Gentoo; Dream: Adelie and Chinstrap;
    Torgersen: Adelie), a covariate shift with the same labels. ``"species"``
    differs in its label sets between islands.
    """
    try:
        import palmerpenguins
    except ImportError:
        raise DataError("The penguins data needs the package palmerpenguins: `pip install palmerpenguins`.") from None
    if label not in ("sex", "species"):
        raise ConfigError(f"The 'label' option must be 'sex' or 'species'. Got {label!r} instead.")
    frame = palmerpenguins.load_penguins().dropna(subset=PENGUIN_FEATURES + [label, "island"]).reset_index(drop=True)
    unknown = sorted(set(source_islands) - set(frame["island"]))
    if unknown:
        raise DataError(f"Unknown island(s) {', '.join(unknown)}. Islands: {', '.join(sorted(set(frame['island'])))}.")
    names = sorted(set(frame[label]))
    out = []
    for part, mask in (("source", frame["island"].isin(source_islands)), ("target", ~frame["island"].isin(source_islands))):
        rows = frame[mask]
        out.append(TaskData(rows[PENGUIN_FEATURES].to_numpy(np.float32),
                            np.array([names.index(v) for v in rows[label]], dtype=np.int64), "tabular",
                            label_names=names, name=f"penguins-{part}", feature_names=list(PENGUIN_FEATURES),
                            source=f"palmerpenguins, islands {'/'.join(sorted(set(rows['island'])))}, label {label}"))
    return out[0], out[1]


# ---------------------------------------------------------------- target checks


def _unlabelled_folder(path: Path) -> TaskData | None:
    """A flat folder of images (no class folders) as unlabelled image data; None otherwise."""
    from transferkit.data.adapters import IMAGE_EXTENSIONS

    if not path.is_dir() or any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir()):
        return None
    files = sorted(str(f) for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no class folders.")
    return TaskData(files, None, "image", name=path.name, source=str(path.resolve()))


def resolve_domain_data(data: Any, columns: dict | None = None) -> TaskData:
    """One domain's data from any form ``fit`` takes, a flat image folder (unlabelled), or raw items."""
    columns = columns or {}
    if isinstance(data, (str, os.PathLike)) and (folder := _unlabelled_folder(Path(data))) is not None:
        return folder
    if isinstance(data, np.ndarray) or (isinstance(data, list) and data and isinstance(data[0], str)):
        from transferkit.data.adapters import from_arrays

        return from_arrays(data)
    return resolve_data(data, **columns)[0]


def check_pairable(source: TaskData, target: TaskData, what: str = "Target data", flag: str = "target") -> None:
    """Refuse a target of another input kind (or tabular width) than the source, or an empty one."""
    if target.modality != source.modality:
        raise DataError(f"{what} ({flag}) '{target.name}' is {target.modality} data but the source '{source.name}' "
                        f"is {source.modality}: source and target must be the same kind of input.")
    if len(target) == 0:
        raise DataError(f"{what} ({flag}) '{target.name}' is empty.")
    if source.modality == "tabular":
        ws, wt = np.asarray(source.items).shape[1], np.asarray(target.items).shape[1]
        if ws != wt:
            raise DataError(f"{what} ({flag}) '{target.name}' has {wt} feature columns but the source has {ws}.")


def prepare_target_data(source: TaskData, target_data: Any = None, target_labelled_data: Any = None, *,
                        text_column: str | None = None, label_column: str | None = "label",
                        feature_columns: list[str] | None = None) -> tuple[TaskData | None, TaskData | None]:
    """Resolve and check the target domain of a domain-adaptation fit.

    Args:
        source: the labelled source training data.
        target_data: unlabelled target inputs, any form ``fit``'s ``data`` takes, or a flat
            folder of images; labels it carries are checked against the source's and then dropped.
        target_labelled_data: a few labelled target examples (semi-supervised adaptation).

    Returns:
        ``(target, target_labelled)``: ``target`` without labels; ``target_labelled``
        re-indexed onto the source's label names. Either may be ``None``.

    Raises:
        DataError: another input kind or feature width than the source, labels the source
            never had, a labelled part without labels or with a single class.
    """
    columns = {"text_column": text_column, "label_column": label_column, "feature_columns": feature_columns}
    target = labelled = None
    if target_data is not None:
        target = resolve_domain_data(target_data, columns)
        check_pairable(source, target, "Target data", "target= / --target-data")
        if target.targets is not None and target.task == source.task:
            check_eval_labels(source, target)
        target = replace(target, targets=None, task=source.task, label_names=source.label_names, _fingerprint=None)
    if target_labelled_data is not None:
        labelled = resolve_domain_data(target_labelled_data, columns)
        check_pairable(source, labelled, "Labelled target data", "target_labelled= / --target-labelled-data")
        if labelled.targets is None:
            raise DataError(f"Labelled target data '{labelled.name}' has no labels.")
        check_eval_labels(source, labelled)
        labelled = align_labels(source, labelled)
        if source.task_spec.single_label and len(np.unique(labelled.targets)) < 2:
            only = (labelled.label_names or ["?"])[int(np.asarray(labelled.targets)[0])]
            raise DataError(f"Labelled target data '{labelled.name}' holds a single class ('{only}', "
                            f"{len(labelled)} items): give labelled target examples of at least 2 classes, "
                            "or leave them out (unsupervised adaptation).")
    return target, labelled


def merge_task_data(a: TaskData, b: TaskData, name: str | None = None) -> TaskData:
    """``a`` followed by ``b`` (same modality; ``b``'s targets already on ``a``'s label names)."""
    if a.modality != b.modality:
        raise DataError(f"Cannot merge {a.modality} data '{a.name}' with {b.modality} data '{b.name}'.")
    xa, xb = a.items, b.items
    if isinstance(xa, np.ndarray) and isinstance(xb, np.ndarray) and xa.shape[1:] == xb.shape[1:] and xa.dtype == xb.dtype:
        items: Any = np.concatenate([xa, xb])
    else:
        items = list(xa) + list(xb)
    targets = None
    if a.targets is not None and b.targets is not None:
        targets = np.concatenate([np.asarray(a.targets), np.asarray(b.targets)])
    return TaskData(items, targets, a.modality, a.task, a.label_names, name=name or f"{a.name}+{b.name}",
                    source=a.source, feature_names=a.feature_names)


def unlabelled(data: TaskData) -> TaskData:
    """``data`` without its targets (the inputs only)."""
    return replace(data, targets=None, _fingerprint=None)
