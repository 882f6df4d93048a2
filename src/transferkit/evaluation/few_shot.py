"""Few-shot evaluation: episodes, prototypes and the N-way K-shot protocol, on arrays.

An *episode* draws ``n_way`` classes, then ``k_shot`` support and ``n_query``
query items of each; its labels are episode-local (``0..n_way-1`` in the
order the classes were drawn). A classifier sees the support rows and labels
and predicts the query rows; its accuracy over many seeded episodes is
reported as a mean with a 95% Student-t interval (the protocol of Vinyals et
al. 2016, https://arxiv.org/abs/1606.04080, and Snell et al. 2017,
https://arxiv.org/abs/1703.05175: 600 episodes, 15 queries per class).

The sampler lives here, in layer 1, because :func:`evaluate_episodes` needs
it and this layer may not import ``transferkit.data``;
:mod:`transferkit.data.episodes` re-exports it with a :class:`TaskData` front.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(4), 20)
    >>> features = rng.normal(size=(80, 8)) + 3 * np.eye(8)[labels]
    >>> result = evaluate_episodes(features, labels, n_way=3, k_shot=5, episodes=50)
    >>> result.mean > 0.9, len(result.accuracies)
    (True, 50)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from transferkit.errors import ConfigError, DataError, check_range
from transferkit.evaluation.stats import mean_ci

DISTANCES = ("cosine", "euclidean")

#: ``classifier(support_rows, support_labels, query_rows, n_way) -> predicted query labels``.
EpisodeClassifier = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode: row indices into the data and episode-local labels.

    Attributes:
        classes: ``[n_way]`` original labels; position ``j`` is local label ``j``.
        support: ``[n_way * k_shot]`` row indices, grouped by class.
        support_labels: ``[n_way * k_shot]`` local labels of ``support``.
        query: ``[n_way * n_query]`` row indices, grouped by class.
        query_labels: ``[n_way * n_query]`` local labels of ``query``.
    """

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


class EpisodeSampler:
    """Seeded N-way K-shot episodes over integer labels; the same seed gives the same episodes.

    All classes and counts are checked up front, so a bad request fails before
    any work is done, whichever classes a given episode would have drawn.

    Args:
        labels: ``[N]`` integer class labels (any values; unique values are the classes).
        n_way: classes per episode.
        k_shot: support items per class.
        n_query: query items per class.
        episodes: episodes per pass (``len(sampler)``); iterating again gives the same ones.
        seed: random seed.
        class_names: optional display name per label value (``class_names[label]``), for errors.

    Raises:
        ConfigError: ``n_way < 1``, ``k_shot < 1``, ``n_query < 0`` or ``episodes < 1``.
        DataError: ``n_way`` exceeds the number of classes (names both), or a
            class has fewer than ``k_shot + n_query`` items (names the class and both counts).
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, n_way: int, k_shot: int, n_query: int = 15,
                 episodes: int = 600, seed: int = 0, class_names: Sequence[str] | None = None):
        check_range("EpisodeSampler", "n_way", n_way, low=1, kind="an int")
        check_range("EpisodeSampler", "k_shot", k_shot, low=1, kind="an int")
        check_range("EpisodeSampler", "n_query", n_query, low=0, kind="an int")
        check_range("EpisodeSampler", "episodes", episodes, low=1, kind="an int")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"Episodes need a 1-d array of integer class labels; got dtype {labels.dtype}, "
                            f"shape {labels.shape}.")
        self.classes, counts = np.unique(labels, return_counts=True)
        if n_way > len(self.classes):
            raise DataError(f"An episode asks for n_way={n_way} classes, but the labels have only "
                            f"{len(self.classes)} classes.")
        need = k_shot + n_query
        short = sorted(((c, n) for c, n in zip(self.classes, counts) if n < need), key=lambda cn: cn[1])
        if short:
            c, n = short[0]
            name = class_names[int(c)] if class_names is not None and 0 <= int(c) < len(class_names) else str(c)
            raise DataError(f"Class '{name}' has {n} item(s), but an episode needs k_shot + n_query = "
                            f"{k_shot} + {n_query} = {need} of each class"
                            + (f" ({len(short)} classes are that small)." if len(short) > 1 else "."))
        self.by_class = {int(c): np.flatnonzero(labels == c) for c in self.classes}
        self.n_way, self.k_shot, self.n_query = int(n_way), int(k_shot), int(n_query)
        self.episodes, self.seed = int(episodes), int(seed)

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[Episode]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.episodes):
            yield self.draw(rng)

    def draw(self, rng: np.random.Generator) -> Episode:
        """One episode from ``rng`` (the stream advances)."""
        n, k, q = self.n_way, self.k_shot, self.n_query
        classes = rng.choice(self.classes, size=n, replace=False)
        picks = np.stack([rng.choice(self.by_class[int(c)], size=k + q, replace=False) for c in classes])
        local = np.arange(n)
        return Episode(classes=classes, support=picks[:, :k].ravel(), support_labels=np.repeat(local, k),
                       query=picks[:, k:].ravel(), query_labels=np.repeat(local, q))


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ConfigError(f"Unknown distance {distance!r}. Available: {', '.join(DISTANCES)}.")


def prototypes(features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Class means of ``features``: row ``c`` is the mean of the rows labelled ``c``.

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` integer labels in ``0..n_classes-1``.
        n_classes: number of prototypes (default ``labels.max() + 1``).

    Returns:
        ``[n_classes, D]`` float64.

    Raises:
        DataError: lengths differ, or a class in ``0..n_classes-1`` has no row.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise DataError(f"prototypes needs features [N, D] and labels [N]; got {features.shape} and {labels.shape}.")
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    if (counts == 0).any():
        raise DataError(f"No example of class {int(np.flatnonzero(counts == 0)[0])}: cannot build its prototype.")
    sums = np.zeros((n_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / counts[:, None]


def prototype_logits(features: np.ndarray, protos: np.ndarray, distance: str = "euclidean",
                     scale: float = 1.0) -> np.ndarray:
    """Scores of every row against every prototype (higher = closer).

    ``euclidean``: ``-|x - c|^2``; ``cosine``: ``scale * cos(x, c)``.
    """
    _check_distance(distance)
    x = np.asarray(features, dtype=np.float64)
    c = np.asarray(protos, dtype=np.float64)
    if distance == "euclidean":
        return -((x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :])
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return scale * xn @ cn.T


def prototype_classifier(distance: str = "cosine") -> EpisodeClassifier:
    """An :data:`EpisodeClassifier`: nearest class mean of the support rows."""
    _check_distance(distance)

    def classify(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, n_way: int) -> np.ndarray:
        return prototype_logits(query, prototypes(support, support_labels, n_way), distance).argmax(1)

    return classify


@dataclass(frozen=True)
class EpisodeResult:
    """Accuracy over episodes: the mean, its interval and every episode's accuracy."""

    mean: float
    ci_low: float
    ci_high: float
    accuracies: np.ndarray
    n_way: int
    k_shot: int
    n_query: int

    @property
    def half_width(self) -> float:
        """Half the interval's width: the ``x`` of ``mean ± x``."""
        return (self.ci_high - self.ci_low) / 2

    def __str__(self) -> str:
        return (f"{self.n_way}-way {self.k_shot}-shot: {100 * self.mean:.2f} ± {100 * self.half_width:.2f}% "
                f"({len(self.accuracies)} episodes)")


def evaluate_episodes(features: np.ndarray, labels: np.ndarray, n_way: int, k_shot: int, n_query: int = 15,
                      episodes: int = 600, seed: int = 0, *, distance: str = "cosine",
                      classifier: EpisodeClassifier | None = None, confidence: float = 0.95,
                      class_names: Sequence[str] | None = None) -> EpisodeResult:
    """Mean accuracy over seeded N-way K-shot episodes, with its confidence interval.

    Args:
        features: ``[N, ...]`` rows; a classifier receives ``features[indices]``
            (feature vectors for the prototype classifier, preprocessed inputs
            for one that adapts a network).
        labels: ``[N]`` integer class labels.
        n_way, k_shot, n_query: episode shape (queries per class).
        episodes: number of episodes (600 is the usual protocol).
        seed: episode seed; methods evaluated with the same seed see the same episodes.
        distance: of the default prototype classifier: ``cosine`` or ``euclidean``.
        classifier: replaces the prototype classifier (see :data:`EpisodeClassifier`).
        confidence: coverage of the interval.
        class_names: display names for errors.

    Returns:
        An :class:`EpisodeResult` (interval from :func:`~transferkit.evaluation.stats.mean_ci`).

    Raises:
        DataError: lengths differ, or the sampler refuses the request (see :class:`EpisodeSampler`).
    """
    if len(features) != len(labels):
        raise DataError(f"{len(features)} feature rows but {len(labels)} labels.")
    check_range("evaluate_episodes", "n_query", n_query, low=1, kind="an int")
    sampler = EpisodeSampler(labels, n_way, k_shot, n_query, episodes, seed, class_names)
    classify = classifier or prototype_classifier(distance)
    accs = np.empty(len(sampler))
    for i, ep in enumerate(sampler):
        pred = np.asarray(classify(features[ep.support], ep.support_labels, features[ep.query], n_way))
        accs[i] = float((pred == ep.query_labels).mean())
    mean, low, high = mean_ci(accs, confidence)
    return EpisodeResult(mean, low, high, accs, int(n_way), int(k_shot), int(n_query))
