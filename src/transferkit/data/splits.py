"""Seeded, stratified samplers and splits over :class:`TaskData`.

Every function here is deterministic given its ``seed`` (NumPy's PCG64 stream,
stable across NumPy versions) and stratified by class for classification data.
Indices come back in their original order, so a subset keeps the order of the
data it came from.

Example:
    >>> import numpy as np
    >>> from transferkit.data.dataset import TaskData
    >>> data = TaskData(np.zeros((6, 2), np.float32), np.array([0, 0, 0, 1, 1, 1]), "tabular",
    ...                 label_names=["a", "b"])
    >>> len(sample_per_class(data, 2, seed=0))
    4
"""
from __future__ import annotations

import warnings

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError, DataWarning, check_range


def _require_labels(data: TaskData, what: str) -> np.ndarray:
    if data.targets is None:
        raise DataError(f"{what} needs labelled data, but '{data.name}' has no labels.")
    return np.asarray(data.targets)


def _class_indices(targets: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Indices of each class ``0..num_classes-1`` in ascending order."""
    return [np.flatnonzero(targets == c) for c in range(num_classes)]


def _num_classes(data: TaskData, targets: np.ndarray) -> int:
    names = data.label_names or []
    return max(len(names), int(targets.max()) + 1 if len(targets) else 0)


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``counts`` (largest remainder), never above a count."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0:
        return np.zeros_like(counts)
    exact = counts * (total / counts.sum())
    alloc = np.minimum(np.floor(exact).astype(np.int64), counts)
    order = np.argsort(-(exact - alloc), kind="stable")
    for g in order:
        if alloc.sum() >= total:
            break
        if alloc[g] < counts[g]:
            alloc[g] += 1
    return alloc


def _class_name(data: TaskData, c: int) -> str:
    names = data.label_names or []
    return names[c] if c < len(names) else str(c)


def sample_per_class(data: TaskData, n: int, seed: int, *, strict: bool = True) -> TaskData:
    """Draw ``n`` examples of every class, seeded and without replacement.

    The draws are nested: with the same seed, the 8-per-class sample is part
    of the 32-per-class sample, so learning curves compare like with like.

    Args:
        data: classification data.
        n: examples per class (at least 1).
        seed: random seed.
        strict: refuse a class with fewer than ``n`` examples; with ``False``
            such a class contributes all it has ("up to n per class").

    Returns:
        A subset of ``n * num_classes`` items (fewer when not strict), in their original order.

    Raises:
        DataError: a class has fewer than ``n`` examples (names the class and
            its count), or the data is not single-label classification.
    """
    check_range("sample_per_class", "n", n, low=1, kind="an int")
    targets = _require_labels(data, "sample_per_class")
    if not data.task_spec.single_label:
        raise DataError(f"sample_per_class needs classification data; '{data.name}' is {data.task}.")
    rng = np.random.default_rng(seed)
    chosen = []
    short = []
    for c, idx in enumerate(_class_indices(targets, _num_classes(data, targets))):
        perm = rng.permutation(idx)  # drawn for every class, so one class's size never shifts another's draw
        if len(idx) < n:
            short.append(f"'{_class_name(data, c)}' has {len(idx)}")
        chosen.append(perm[:n])
    if short and strict:
        raise DataError(f"{data.name}: cannot draw {n} examples per class: {', '.join(short)}.")
    return data.subset(np.sort(np.concatenate(chosen)), name=f"{data.name}[{n}/class]")


def stratified_indices(targets: np.ndarray, num_classes: int, size: int, seed: int,
                       *, keep_one: bool = False) -> np.ndarray:
    """Pick ``size`` indices stratified by class, class shares kept by largest-remainder rounding.

    Args:
        targets: int class indices ``[N]``.
        num_classes: number of classes.
        size: how many indices to pick.
        seed: random seed.
        keep_one: leave at least one example of every class unpicked.

    Returns:
        Sorted picked indices.
    """
    rng = np.random.default_rng(seed)
    groups = _class_indices(np.asarray(targets), num_classes)
    counts = np.array([len(g) for g in groups], dtype=np.int64)
    caps = np.maximum(counts - 1, 0) if keep_one else counts
    alloc = np.minimum(_allocate(counts, size), caps)
    picked = [rng.permutation(g)[:k] for g, k in zip(groups, alloc)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _random_indices(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


#: The automatic validation split: this share of the labels, held out only where every class keeps at least
#: ``MIN_VAL_PER_CLASS`` validation items (so at least 50 labelled items per class at 20%).
AUTO_VAL_FRACTION, MIN_VAL_PER_CLASS = 0.2, 10


def auto_val_fraction(data: TaskData, *, has_test: bool = True) -> float:
    """The validation share the tiny-data protocol uses for ``data`` (``val_fraction=None``).

    With few labels a validation split costs more than it gives: at 10 labels per class a 20% split
    leaves 8 to train on and 2 per class to choose a checkpoint by, and the small CNN from scratch fell
    from 73.2% to 65.0% on Fashion-MNIST that way. So every strategy and baseline trains on all labels
    with its fixed schedule, unless every class keeps at least :data:`MIN_VAL_PER_CLASS` validation
    items, or there is no test split (the validation split is then what the run is scored on).
    """
    if data.targets is None:
        return 0.0
    if not has_test:
        return AUTO_VAL_FRACTION
    labels = data.task_spec.stratify(data.targets)
    smallest = len(data)
    if labels is not None and len(labels):
        counts = np.bincount(np.asarray(labels, dtype=np.int64))
        smallest = int(counts[counts > 0].min())
    return AUTO_VAL_FRACTION if smallest * AUTO_VAL_FRACTION >= MIN_VAL_PER_CLASS else 0.0


def train_val_split(data: TaskData, fraction: float, seed: int) -> tuple[TaskData, TaskData | None]:
    """Hold out ``fraction`` of the data for validation, stratified by class.

    Every class keeps at least one training example. Regression and
    multi-label data are split at random.

    Args:
        data: labelled data.
        fraction: validation share in ``[0, 1)``; ``0`` returns ``(data, None)``.
        seed: random seed.

    Returns:
        ``(train, val)``; ``val`` is ``None`` when nothing was held out.

    Warns:
        DataWarning: validation items that are exact duplicates of training
            items (text, table rows, image arrays; image files are not
            compared), with their count.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"The 'fraction' parameter of train_val_split must be in [0, 1). Got {fraction!r} instead.")
    if fraction == 0:
        return data, None
    targets = _require_labels(data, "train_val_split")
    size = int(round(fraction * len(data)))
    if data.task_spec.single_label:
        val_idx = stratified_indices(targets, _num_classes(data, targets), size, seed, keep_one=True)
    else:
        val_idx = _random_indices(len(data), size, seed)
    if len(val_idx) == 0:
        return data, None
    train_idx = np.setdiff1d(np.arange(len(data)), val_idx)
    _warn_duplicates(data, train_idx, val_idx)
    return data.subset(train_idx, name=f"{data.name}[train]"), data.subset(val_idx, name=f"{data.name}[val]")


def _item_keys(data: TaskData) -> list | None:
    """One hashable key per item, equal for exact duplicates; ``None`` for image files (their bytes are not read)."""
    if isinstance(data.items, np.ndarray):
        return [row.tobytes() for row in data.items]
    if data.modality == "image":
        return None
    return [item if isinstance(item, str) else repr(item) for item in data.items]


def _warn_duplicates(data: TaskData, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """Warn (:class:`~transferkit.errors.DataWarning`) when validation items are exact copies of training items."""
    keys = _item_keys(data)
    if keys is None:
        return
    seen = {keys[i] for i in train_idx}
    leaked = sum(keys[i] in seen for i in val_idx)
    if leaked:
        warnings.warn(f"{data.source or data.name}: {leaked} of {len(val_idx)} validation items are exact duplicates "
                      f"of training items, so the validation score is optimistic. Remove duplicate rows first.",
                      DataWarning, stacklevel=3)


def cap_test(test: TaskData | None, max_test: int | None) -> TaskData | None:
    """``test`` cut to a stratified ``max_test`` items when it has more (seed 0: the same items for every seed)."""
    if test is not None and max_test is not None and len(test) > max_test:
        return subsample(test, max_test, 0)
    return test


def subsample(data: TaskData, n: int, seed: int) -> TaskData:
    """A stratified random subset of ``n`` items in total (for evaluating on part of a large test set).

    Class shares are kept (largest-remainder rounding). Unlabelled,
    regression and multi-label data are sampled at random.

    Args:
        data: any TaskData.
        n: total size; ``n >= len(data)`` returns ``data`` itself.
        seed: random seed.
    """
    check_range("subsample", "n", n, low=1, kind="an int")
    if n >= len(data):
        return data
    targets = None if data.targets is None else np.asarray(data.targets)
    if data.task_spec.single_label and targets is not None:
        idx = stratified_indices(targets, _num_classes(data, targets), n, seed)
    else:
        idx = _random_indices(len(data), n, seed)
    return data.subset(idx, name=f"{data.name}[{n}]")
