"""Continual-learning streams: experiences (task data sets) met one after another.

A :class:`Stream` is a list of :class:`Experience` (a training set, an
optional test set and a task id) and a scenario (van de Ven & Tolias, "Three
scenarios for continual learning", 2019, https://arxiv.org/abs/1904.07734):

* ``"task"`` incremental: each experience has its own classes and its own
  head; the task id is known at test time (Split Fashion-MNIST).
* ``"class"`` incremental: one head that grows with every experience's new
  classes; no task id at test. Class ids must not repeat between experiences.
* ``"domain"`` incremental: the same classes in every experience, one head,
  the input distribution changes (Permuted Fashion-MNIST).

Targets are re-expressed in the space of the head that predicts them, so a
learner never re-maps labels: local indices ``0..k-1`` per task (task),
positions in the stream's class order (class), unchanged (domain).

Example:
    >>> from transferkit.data import load_dataset                                   # doctest: +SKIP
    >>> train, test = load_dataset("fashion-mnist")                                 # doctest: +SKIP
    >>> stream = split_by_classes(train, 2, test=test, scenario="task")             # doctest: +SKIP
    >>> [e.classes for e in stream][:2]                                             # doctest: +SKIP
    [('T-shirt/top', 'Trouser'), ('Pullover', 'Dress')]
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError, check_range

SCENARIOS = ("task", "class", "domain")


@dataclass
class Experience:
    """One step of a stream.

    Attributes:
        task_id: position in the stream (0, 1, ...).
        train: training data, targets in the space of the head that predicts them.
        test: test data in the same space, or ``None``.
        classes: the names of the classes this experience holds, in head order
            (task: its own head; class: the new rows of the growing head; domain: all).
    """

    task_id: int
    train: TaskData
    test: TaskData | None
    classes: tuple[str, ...]


@dataclass
class Stream:
    """Experiences in training order, and the scenario they are learnt under."""

    experiences: list[Experience]
    scenario: str
    name: str = "stream"

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    def head_sizes(self) -> list[int]:
        """Outputs of the head that predicts each experience (class: the grown head after it)."""
        if self.scenario == "class":
            return list(np.cumsum([len(e.classes) for e in self.experiences]))
        return [len(e.classes) for e in self.experiences]

    @property
    def has_test(self) -> bool:
        return all(e.test is not None for e in self.experiences)


def _check_scenario(scenario: str) -> None:
    if scenario not in SCENARIOS:
        raise ConfigError(f"Unknown continual scenario {scenario!r}. Available: {', '.join(SCENARIOS)} "
                          f"(task: a head per task, task id known at test; class: one growing head; domain: "
                          f"same classes every experience).")


def _present(data: TaskData, i: int) -> list[int]:
    if data.targets is None:
        raise DataError(f"Experience {i} ('{data.name}') has no labels; a continual stream needs labelled data.")
    if not data.task_spec.single_label:
        raise DataError(f"Experience {i} ('{data.name}') is {data.task}; continual streams need single-label "
                        f"classification.")
    return sorted(int(c) for c in np.unique(np.asarray(data.targets)))


def _name(data: TaskData, c: int) -> str:
    names = data.label_names or []
    return str(names[c]) if c < len(names) else str(c)


def _relabel(data: TaskData, mapping: dict[int, int], names: list[str]) -> TaskData:
    targets = np.array([mapping[int(t)] for t in np.asarray(data.targets)], dtype=np.int64)
    return replace(data, targets=targets, label_names=list(names), _fingerprint=None)


def make_stream(train: Sequence[TaskData], scenario: str = "task", test: Sequence[TaskData] | None = None,
                name: str = "stream") -> Stream:
    """Validate a sequence of data sets as a stream under ``scenario`` and express targets per head.

    Class identity is the label name where the data has ``label_names``, else
    the integer id.

    Args:
        train: one training set per experience (same modality).
        scenario: ``"task"``, ``"class"`` or ``"domain"``.
        test: one test set per experience (its classes must be among the experience's), or ``None``.
        name: display name.

    Raises:
        DataError: unlabelled or non-classification data, mixed modalities, a
            class repeated between experiences (class scenario, naming the
            experience and the classes), different label spaces (domain), a
            test class the experience's training data lacks.
        ConfigError: an unknown scenario or an empty stream.
    """
    _check_scenario(scenario)
    train = list(train)
    if not train:
        raise ConfigError("A continual stream needs at least one experience; got none.")
    test = list(test) if test is not None else [None] * len(train)
    if len(test) != len(train):
        raise DataError(f"{len(train)} training experiences but {len(test)} test sets.")
    modalities = {d.modality for d in train}
    if len(modalities) > 1:
        raise DataError(f"A stream's experiences must share one modality; got {', '.join(sorted(modalities))}.")
    present = [_present(d, i) for i, d in enumerate(train)]
    for i, (d, t) in enumerate(zip(train, test)):
        if t is not None:
            extra = sorted(set(_present(t, i)) - set(present[i]))
            if extra:
                raise DataError(f"Test data of experience {i} ('{t.name}') holds class(es) "
                                f"{', '.join(_name(t, c) for c in extra)} that its training data '{d.name}' lacks.")
    if scenario == "domain":
        return _domain_stream(train, test, present, name)
    seen: dict[str, int] = {}
    order: list[str] = []
    experiences = []
    for i, (d, t) in enumerate(zip(train, test)):
        names = [_name(d, c) for c in present[i]]
        if scenario == "class":
            repeated = [(c, n) for c, n in zip(present[i], names) if n in seen]
            if repeated:
                earlier = sorted({seen[n] for _, n in repeated})
                raise DataError(
                    f"Class-incremental stream '{name}': experience {i} ('{d.name}') repeats class(es) "
                    f"{', '.join(f'{n!r} (id {c})' for c, n in repeated)} of experience(s) "
                    f"{', '.join(map(str, earlier))}. Class ids must not overlap between experiences in the "
                    f"class-incremental scenario; use scenario='task' or 'domain' for repeated classes.")
            seen.update({n: i for n in names})
            order += names
            mapping = {c: order.index(n) for c, n in zip(present[i], names)}
            head_names = order  # the final list is set below, once every class is known
        else:
            mapping = {c: k for k, c in enumerate(present[i])}
            head_names = names
        experiences.append(Experience(i, _relabel(d, mapping, head_names),
                                      _relabel(t, mapping, head_names) if t is not None else None, tuple(names)))
    if scenario == "class":
        for e in experiences:
            e.train.label_names = list(order)
            if e.test is not None:
                e.test.label_names = list(order)
    return Stream(experiences, scenario, name)


def _domain_stream(train, test, present, name) -> Stream:
    first = train[0]
    width = max(len(first.label_names or []), present[0][-1] + 1)
    names = list(first.label_names) if first.label_names else [str(c) for c in range(width)]
    for i, d in enumerate(train[1:], start=1):
        if d.label_names and first.label_names and list(d.label_names) != list(first.label_names):
            raise DataError(f"Domain-incremental stream '{name}': experience {i} ('{d.name}') has classes "
                            f"{d.label_names} but experience 0 has {first.label_names}; every experience of the "
                            f"domain scenario has the same classes.")
        if present[i][-1] >= width:
            raise DataError(f"Domain-incremental stream '{name}': experience {i} ('{d.name}') has class id "
                            f"{present[i][-1]}, outside experience 0's {width} classes.")
    return Stream([Experience(i, replace(d, label_names=names), replace(t, label_names=names) if t is not None else None,
                              tuple(names)) for i, (d, t) in enumerate(zip(train, test))], "domain", name)


def _groups(data: TaskData, classes_per_task: int | None, groups) -> list[list[int]]:
    classes = _present(data, 0)
    if groups is None:
        if classes_per_task is None:
            raise ConfigError("split_by_classes needs classes_per_task or explicit groups of class ids.")
        check_range("split_by_classes", "classes_per_task", classes_per_task, low=1, kind="an int")
        if len(classes) % classes_per_task:
            raise ConfigError(f"The 'classes_per_task' parameter of split_by_classes must divide the "
                              f"{len(classes)} classes of '{data.name}'. Got {classes_per_task} instead.")
        return [classes[i:i + classes_per_task] for i in range(0, len(classes), classes_per_task)]
    out = [[int(c) for c in g] for g in groups]
    for i, g in enumerate(out):
        if not g:
            raise ConfigError(f"Group {i} of split_by_classes is empty.")
        missing = [c for c in g if c not in classes]
        if missing:
            raise DataError(f"Group {i} of split_by_classes names class id(s) {missing} that '{data.name}' does not "
                            f"hold. Present: {classes}.")
    return out


def split_by_classes(data: TaskData, classes_per_task: int | None = None, *, groups: Sequence[Sequence[int]] | None = None,
                     test: TaskData | None = None, scenario: str = "task", name: str | None = None) -> Stream:
    """Split a classification data set into experiences of disjoint class groups (Split MNIST style).

    Args:
        data: training data with global class ids.
        classes_per_task: consecutive class ids per experience (``2``: {0,1}, {2,3}, ...).
        groups: explicit class-id groups instead, e.g. ``[[3, 7], [0, 1]]``.
        test: test data split the same way.
        scenario: ``"task"`` (default) or ``"class"``.
        name: display name (default ``split-<data name>``).
    """
    _check_scenario(scenario)
    if scenario == "domain":
        raise ConfigError("split_by_classes gives each experience different classes; the domain scenario needs the "
                          "same classes in every experience (see permuted). Use scenario='task' or 'class'.")
    out = _groups(data, classes_per_task, groups)

    def pick(d: TaskData, g: list[int]) -> TaskData:
        return d.subset(np.flatnonzero(np.isin(np.asarray(d.targets), g)), name=f"{d.name}{g}")

    return make_stream([pick(data, g) for g in out], scenario,
                       [pick(test, g) for g in out] if test is not None else None, name or f"split-{data.name}")


def _pixels(data: TaskData) -> np.ndarray:
    if not isinstance(data.items, np.ndarray) or data.modality not in ("image", "tabular"):
        raise DataError(f"permuted needs images as an array [N, H, W(, C)] or a table [N, F]; '{data.name}' holds "
                        f"{type(data.items).__name__} {data.modality} items (load the images into an array first).")
    return data.items.reshape(len(data), -1)


def permuted(data: TaskData, n_tasks: int, seed: int = 0, *, test: TaskData | None = None, flatten: bool = False,
             name: str | None = None) -> Stream:
    """Domain-incremental stream: the same data under ``n_tasks`` fixed random pixel permutations.

    Goodfellow et al. 2013 / Kirkpatrick et al. 2017 (Permuted MNIST). Each
    experience applies one permutation (drawn from ``seed``; none is the
    identity) to every image of ``data`` and ``test``.

    Args:
        data: images as an array ``[N, H, W]`` / ``[N, H, W, C]`` (or a table ``[N, F]``).
        n_tasks: number of experiences.
        seed: seed of the permutations.
        test: test data permuted the same way.
        flatten: return tabular data (pixels scaled to [0, 1], ``[N, H*W*C]``) for an MLP on pixels.
        name: display name (default ``permuted-<data name>``).
    """
    check_range("permuted", "n_tasks", n_tasks, low=1, kind="an int")
    rng = np.random.default_rng(seed)
    size = _pixels(data).shape[1]
    if test is not None and _pixels(test).shape[1] != size:
        raise DataError(f"Test data '{test.name}' has {_pixels(test).shape[1]} pixels per item, training data {size}.")
    perms = [rng.permutation(size) for _ in range(n_tasks)]

    def apply(d: TaskData, perm: np.ndarray, i: int) -> TaskData:
        flat = _pixels(d)[:, perm]
        if flatten:
            scale = 255.0 if d.items.dtype == np.uint8 else 1.0
            return replace(d, items=(flat / scale).astype(np.float32), modality="tabular", name=f"{d.name}-perm{i}",
                           feature_names=None, _fingerprint=None, origin=None)
        return replace(d, items=flat.reshape(d.items.shape), name=f"{d.name}-perm{i}", _fingerprint=None, origin=None)

    return make_stream([apply(data, p, i) for i, p in enumerate(perms)], "domain",
                       [apply(test, p, i) for i, p in enumerate(perms)] if test is not None else None,
                       name or f"permuted-{data.name}")


__all__ = ["SCENARIOS", "Experience", "Stream", "make_stream", "permuted", "split_by_classes"]
