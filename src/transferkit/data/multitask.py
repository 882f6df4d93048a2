"""The multi-task data contract: :class:`MultiTaskData`, named :class:`TaskData` per task.

Two shapes:

* **shared inputs**: the same items with one target array per task (species and
  sex of the same penguins; the class and the super-category of the same
  clothing photos). Every task's ``TaskData`` holds the same ``items``; a
  target array of another length is refused, naming the task and both lengths.
* **separate data**: each task brings its own items (same modality), e.g. two
  labelled image sets trained on one shared backbone.

Built-in benchmark pairs: :func:`load_penguins_multitask` (species + sex) and
:func:`load_fashion_mnist_multitask` (the 10 classes + 3 super-categories).

Example:
    >>> import numpy as np
    >>> X = np.zeros((4, 2), np.float32)
    >>> mt = MultiTaskData.from_targets(X, {"a": ["x", "y", "x", "y"], "b": [1.0, 2.0, 3.0, 4.0]},
    ...                                 modality="tabular", tasks={"b": "regression"})
    >>> mt.names, mt.shared, mt["a"].label_names
    (['a', 'b'], True, ['x', 'y'])
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from transferkit.data.adapters import encode_labels
from transferkit.data.builtin import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, PENGUIN_FEATURES, load_fashion_mnist
from transferkit.data.dataset import TaskData
from transferkit.tasks import TASKS
from transferkit.data.splits import stratified_indices
from transferkit.errors import ConfigError, DataError, unknown_name

#: Fashion-MNIST super-categories: class name -> super-category.
FASHION_SUPER_CATEGORIES = {
    "T-shirt/top": "tops", "Pullover": "tops", "Coat": "tops", "Shirt": "tops",
    "Trouser": "bottoms/dresses", "Dress": "bottoms/dresses",
    "Sandal": "footwear/bags", "Sneaker": "footwear/bags", "Bag": "footwear/bags", "Ankle boot": "footwear/bags",
}
SUPER_NAMES = ["tops", "bottoms/dresses", "footwear/bags"]


@dataclass
class MultiTaskData:
    """Several labelled tasks, by name, in one modality.

    Attributes:
        tasks: task name -> its :class:`TaskData` (labelled); order is the task order.
        shared: whether every task holds the same items (one forward pass feeds all heads).
        name: a short display name.
    """

    tasks: dict[str, TaskData]
    shared: bool = False
    name: str = "multitask"

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, Mapping) or not self.tasks:
            raise DataError(f"{self.name}: a MultiTaskData needs at least one task, as a dict name -> TaskData.")
        self.tasks = dict(self.tasks)
        for task, data in self.tasks.items():
            if not isinstance(task, str) or not task:
                raise DataError(f"{self.name}: task names must be non-empty strings. Got {task!r}.")
            if not isinstance(data, TaskData):
                raise DataError(f"{self.name}: task '{task}' must be a TaskData. Got {type(data).__name__}.")
            if data.targets is None:
                raise DataError(f"{self.name}: task '{task}' has no labels ('{data.name}' is unlabelled).")
        modalities = {t: d.modality for t, d in self.tasks.items()}
        if len(set(modalities.values())) > 1:
            raise DataError(f"{self.name}: every task must have the same modality; got "
                            + ", ".join(f"'{t}': {m}" for t, m in modalities.items()) + ".")
        if self.shared:
            first, ref = next(iter(self.tasks.items()))
            for task, data in self.tasks.items():
                if len(data) != len(ref):
                    raise DataError(f"{self.name}: task '{task}' has {len(data)} items but task '{first}' has "
                                    f"{len(ref)}; tasks with shared inputs need one target per item.")

    # -- building ------------------------------------------------------------
    @classmethod
    def from_targets(cls, items, targets: Mapping[str, Sequence], *, modality: str,
                     tasks: Mapping[str, str] | None = None, label_names: Mapping[str, Sequence[str]] | None = None,
                     name: str = "multitask", feature_names: list[str] | None = None,
                     source: str = "") -> "MultiTaskData":
        """Shared inputs: the same ``items`` with one target array per task.

        Args:
            items: the raw inputs (see :class:`TaskData`).
            targets: task name -> one raw label (class name or index, number) per item.
            modality: ``"image"``, ``"text"`` or ``"tabular"``.
            tasks: task name -> ``"classification"`` (default), ``"multilabel"`` or ``"regression"``.
            label_names: task name -> class names, when the targets are indices.
            name: display name; each task's data is named ``{name}:{task}``.

        Raises:
            DataError: a target array's length differs from the items' (names the task and both lengths),
                or a label is invalid (names the row).
            ConfigError: ``tasks`` or ``label_names`` name a task that has no targets.
        """
        if not isinstance(targets, Mapping) or not targets:
            raise DataError(f"{name}: targets must be a non-empty dict task name -> target array.")
        tasks, label_names = dict(tasks or {}), dict(label_names or {})
        for what, given in (("tasks", tasks), ("label_names", label_names)):
            unknown = sorted(set(given) - set(targets))
            if unknown:
                raise ConfigError(f"{what} names task(s) {', '.join(map(repr, unknown))} that have no targets. "
                                  f"Tasks: {', '.join(targets)}.")
        n = len(items)
        out = {}
        for task, values in targets.items():
            if len(values) != n:
                raise DataError(f"{name}: task '{task}' has {len(values)} targets but there are {n} items.")
            kind = tasks.get(task, "classification")
            if kind not in TASKS:
                raise ConfigError(f"Unknown task kind {kind!r} for task '{task}'. Available: {', '.join(TASKS.names())}.")
            y, names = encode_labels(values, task=kind, label_names=label_names.get(task),
                                     locate=lambda i, t=task: f"{name} task '{t}' row {i}")
            out[task] = TaskData(items, y, modality, task=kind, label_names=names, name=f"{name}:{task}",
                                 source=source, feature_names=feature_names)
        return cls(out, shared=True, name=name)

    @classmethod
    def from_tasks(cls, tasks: Mapping[str, TaskData], name: str = "multitask") -> "MultiTaskData":
        """Separate data per task (each with its own items); ``shared`` when all tasks hold the very same items."""
        tasks = dict(tasks)
        datas = list(tasks.values())
        shared = all(isinstance(d, TaskData) for d in datas) and all(d.items is datas[0].items for d in datas)
        return cls(tasks, shared=shared, name=name)

    @classmethod
    def single(cls, data: TaskData, task: str | None = None) -> "MultiTaskData":
        """One task: what a multi-task strategy trains when handed a plain :class:`TaskData`."""
        return cls({task or "task": data}, shared=True, name=data.name)

    # -- access --------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    @property
    def modality(self) -> str:
        return next(iter(self.tasks.values())).modality

    def __getitem__(self, task: str) -> TaskData:
        if task not in self.tasks:
            raise unknown_name("task", str(task), self.tasks)
        return self.tasks[task]

    def __len__(self) -> int:
        """Items per epoch: the shared length, or the largest task's (smaller tasks cycle)."""
        return max(len(d) for d in self.tasks.values())

    def select(self, names: Sequence[str]) -> "MultiTaskData":
        """The tasks ``names`` only (e.g. one task, for its single-task baseline)."""
        if isinstance(names, str):
            names = [names]
        return replace(self, tasks={t: self[t] for t in names})

    def subset(self, indices, name: str | None = None) -> "MultiTaskData":
        """The same items of every task (shared inputs only)."""
        if not self.shared:
            raise DataError(f"{self.name}: subset() needs shared inputs; subset each task's TaskData instead.")
        name = name or self.name
        return replace(self, tasks={t: d.subset(indices, name=f"{name}:{t}") for t, d in self.tasks.items()}, name=name)

    def sample_per_class(self, task: str, n: int, seed: int) -> "MultiTaskData":
        """``n`` items per class of ``task`` (shared inputs), seeded; the other tasks follow the same items."""
        data = self[task]
        if not data.task_spec.single_label:
            raise DataError(f"{self.name}: sample_per_class needs a classification task; '{task}' is {data.task}.")
        counts = np.bincount(np.asarray(data.targets), minlength=data.num_outputs)
        if counts.min() < n:
            raise DataError(f"{self.name}: cannot draw {n} per class of task '{task}': class "
                            f"'{data.label_names[counts.argmin()]}' has {counts.min()} items.")
        return self.subset(_per_class(np.asarray(data.targets), data.num_outputs, n, seed))


def _per_class(targets: np.ndarray, num_classes: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:n] for c in range(num_classes)]))


# ---------------------------------------------------------------- built-in pairs


def load_penguins_multitask(seed: int = 0, test_fraction: float = 0.25) -> tuple[MultiTaskData, MultiTaskData]:
    """Palmer penguins: species and sex from the 4 body measurements (rows without sex dropped).

    A seeded 75/25 split stratified by species x sex. Returns ``(train, test)``.
    """
    try:
        import palmerpenguins
    except ImportError:
        raise DataError("The penguins data needs the package palmerpenguins: `pip install palmerpenguins`.") from None
    frame = palmerpenguins.load_penguins().dropna(subset=PENGUIN_FEATURES + ["species", "sex"]).reset_index(drop=True)
    data = MultiTaskData.from_targets(frame[PENGUIN_FEATURES].to_numpy(np.float32),
                                      {"species": list(frame["species"]), "sex": list(frame["sex"])},
                                      modality="tabular", name="penguins", feature_names=list(PENGUIN_FEATURES),
                                      source="palmerpenguins.load_penguins(), rows with sex")
    strata = data["species"].targets * 2 + data["sex"].targets
    test = stratified_indices(strata, 6, round(test_fraction * len(frame)), seed)
    train = np.setdiff1d(np.arange(len(frame)), test)
    return data.subset(train, name="penguins-train"), data.subset(test, name="penguins-test")


def super_category(targets: np.ndarray, label_names: Sequence[str] = FASHION_MNIST_CLASSES) -> np.ndarray:
    """Fashion-MNIST class indices -> super-category indices into :data:`SUPER_NAMES`."""
    lookup = np.array([SUPER_NAMES.index(FASHION_SUPER_CATEGORIES[c]) for c in label_names], dtype=np.int64)
    return lookup[np.asarray(targets)]


def load_fashion_mnist_multitask(root: str | os.PathLike = FASHION_MNIST_DIR) -> tuple[MultiTaskData, MultiTaskData]:
    """Fashion-MNIST with two tasks on the same photos: ``class`` (10) and ``super`` (tops, bottoms/dresses,
    footwear/bags). Returns ``(train, test)``."""
    out = []
    for part in load_fashion_mnist(root):
        unknown = sorted(set(part.label_names) - set(FASHION_SUPER_CATEGORIES))
        if unknown:
            raise DataError(f"{part.name}: no super-category for class(es) {', '.join(unknown)}.")
        tasks = {"class": replace(part, name=f"{part.name}:class"),
                 "super": replace(part, targets=super_category(part.targets, part.label_names),
                                  label_names=list(SUPER_NAMES), name=f"{part.name}:super", _fingerprint=None)}
        out.append(MultiTaskData(tasks, shared=True, name=part.name))
    return out[0], out[1]
