"""Transferability scores: how well a frozen backbone's features suit a target task, without fine-tuning.

Every score is a pure function of a feature matrix ``(n, d)`` and target
labels (LEEP and NCE take the source head's probabilities instead of
features); higher is better for all of them. Inputs go through
:func:`check_score_inputs`: float64, finite, labels re-coded ``0..C-1``, and
constant (zero-variance) feature columns dropped silently, since they carry no
information and would only make covariance matrices singular.

The scores live by family in :mod:`~transferkit.evaluation.transferability_linear`
(LogME, H-score, TransRate), :mod:`~transferkit.evaluation.transferability_source`
(LEEP, NCE, N-LEEP) and :mod:`~transferkit.evaluation.transferability_probes`
(GBC, kNN, linear probe), on the checks of
:mod:`~transferkit.evaluation.transferability_common`. This module registers
them in :data:`SCORES` and computes any of them by name (:func:`compute_score`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> good, bad = rng.normal(size=(100, 8)) + 3 * y[:, None], rng.normal(size=(100, 8))
    >>> bool(logme(good, y) > logme(bad, y))
    True
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from transferkit.errors import ConfigError
from transferkit.evaluation.transferability_common import _as_labels, _as_probs, check_score_inputs
from transferkit.evaluation.transferability_linear import hscore, logme, transrate
from transferkit.evaluation.transferability_probes import GBC_COVARIANCES, gbc, knn_accuracy, linear_probe_accuracy
from transferkit.evaluation.transferability_source import NLEEP_COVARIANCES, leep, nce, nleep
from transferkit.registry import Registry

REGRESSION_SCORES = ("logme",)

__all__ = ["DEFAULT_SCORES", "GBC_COVARIANCES", "NLEEP_COVARIANCES", "REGRESSION_SCORES", "SCORES", "ScoreInfo",
           "check_score_inputs", "compute_score", "gbc", "hscore", "knn_accuracy", "leep", "linear_probe_accuracy",
           "logme", "nce", "nleep", "transrate"]


@dataclass(frozen=True)
class ScoreInfo:
    """A registered transferability score.

    Attributes:
        name: Registry name.
        fn: ``fn(features_or_source, labels, **options) -> float``.
        needs: ``"features"`` or ``"source_probs"`` (the source head's probabilities).
        help: One line for ``transferkit list scores``.
        reference: Paper citation and link.
        higher_is_better: Always True for the built-in scores.
    """

    name: str
    fn: Callable
    needs: str
    help: str
    reference: str
    higher_is_better: bool = True


def _hscore_shrinkage(features, labels) -> float:
    """H-score with a Ledoit-Wolf shrunk feature covariance (see :func:`hscore`)."""
    return hscore(features, labels, shrinkage=True)


SCORES: Registry[ScoreInfo] = Registry("transferability score")
for _info in (
    ScoreInfo("logme", logme, "features", "log marginal evidence of a Bayesian linear head (per sample)",
              "You et al., ICML 2021, https://arxiv.org/abs/2102.11005"),
    ScoreInfo("leep", leep, "source_probs", "log expected empirical prediction from the source head",
              "Nguyen et al., ICML 2020, https://arxiv.org/abs/2002.12462"),
    ScoreInfo("nleep", nleep, "features", "LEEP with a Gaussian mixture on PCA features as the source head",
              "Li et al., CVPR 2021, https://arxiv.org/abs/2011.11200"),
    ScoreInfo("nce", nce, "source_probs", "negative conditional entropy of labels given source-head argmax",
              "Tran et al., ICCV 2019, https://arxiv.org/abs/1908.08142"),
    ScoreInfo("hscore", hscore, "features", "tr(cov(f)^-1 cov(E[f|y])): between-class over total variance",
              "Bao et al., ICIP 2019, https://arxiv.org/abs/2212.10082"),
    ScoreInfo("hscore-shrinkage", _hscore_shrinkage, "features", "H-score with a Ledoit-Wolf shrunk covariance",
              "Ibrahim et al., 2022, https://arxiv.org/abs/2110.06893"),
    ScoreInfo("transrate", transrate, "features", "coding rate of features minus coding rate given labels",
              "Huang et al., ICML 2022, https://arxiv.org/abs/2106.09362"),
    ScoreInfo("gbc", gbc, "features", "minus the Bhattacharyya overlap of per-class Gaussians (PCA 64)",
              "Pándy et al., CVPR 2022, https://arxiv.org/abs/2111.12780"),
    ScoreInfo("knn", knn_accuracy, "features", "leave-one-out 5-NN accuracy, cosine similarity",
              "Wu et al., CVPR 2018, https://arxiv.org/abs/1805.01978"),
    ScoreInfo("linear-probe", linear_probe_accuracy, "features", "5-fold accuracy of a logistic-regression probe",
              "Kornblith et al., CVPR 2019, https://arxiv.org/abs/1805.08974"),
):
    SCORES.register(_info.name, _info, help=_info.help)

DEFAULT_SCORES: tuple[str, ...] = ("logme", "hscore-shrinkage", "transrate", "gbc", "nleep", "knn", "linear-probe",
                                   "leep", "nce")


#: keyword options of the score functions that compute_score itself sets (not user options)
_SET_BY_COMPUTE_SCORE = frozenset(["regression"])


def compute_score(name: str, *, features=None, labels=None, source_probs=None, regression: bool = False,
                  **options) -> float:
    """Compute the registered score ``name``.

    Args:
        name: A name in :data:`SCORES`.
        features: ``(n, d)`` features, for scores that need them.
        labels: ``(n,)`` target labels (float targets with ``regression=True``).
        source_probs: ``(n, Z)`` source-head probabilities, for ``"leep"`` and ``"nce"``
            (``"nce"`` takes their argmax as the source labels).
        regression: Regression targets; only :data:`REGRESSION_SCORES` support it.
        **options: Keyword options of the score function (e.g. ``k=10`` for ``"knn"``).

    Returns:
        The score as a float (higher is better).

    Raises:
        UnknownNameError: Unknown score name (the message lists the available ones).
        ConfigError: Missing input the score needs, regression with a classification-only
            score, or an option the score does not take.
    """
    info = SCORES.get(name)
    if regression and name not in REGRESSION_SCORES:
        raise ConfigError(f"Score '{name}' does not support regression targets; scores that do: "
                          f"{', '.join(REGRESSION_SCORES)}.")
    if labels is None:
        raise ConfigError(f"Score '{name}' needs the target labels; got labels=None.")
    accepted = [p.name for p in inspect.signature(info.fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in _SET_BY_COMPUTE_SCORE]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"Score '{name}' takes no option {', '.join(map(repr, unknown))}. "
                          f"Available: {', '.join(accepted) or 'none'}.")
    if info.needs == "source_probs":
        if source_probs is None:
            raise ConfigError(f"Score '{name}' needs source_probs, the source head's class probabilities; "
                              "a backbone without a source classification head cannot be scored with it.")
        if name == "nce":
            probs = _as_probs(source_probs, len(_as_labels(labels)))
            return float(info.fn(probs.argmax(1), labels, **options))
        return float(info.fn(source_probs, labels, **options))
    if features is None:
        raise ConfigError(f"Score '{name}' needs features; got features=None.")
    if name in REGRESSION_SCORES:
        options["regression"] = regression
    return float(info.fn(features, labels, **options))
