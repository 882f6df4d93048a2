"""Choosing without target labels: validators of a domain-adapted model, and importance weights.

Unsupervised domain adaptation has no labelled target data to choose the
checkpoint or the trade-off weight with; these validators score a model from
what is there: its predictions on the unlabelled target, and the labelled
source validation split re-weighted towards the target.

=========== ======================================================= =========
name        what                                                    better
=========== ======================================================= =========
entropy     mean prediction entropy on the target                   lower
infomax     mean entropy minus entropy of the mean prediction       lower
snd         soft neighbourhood density of target predictions        higher
iwv         importance-weighted source validation loss (DEV)        lower
=========== ======================================================= =========

:func:`validator_values` computes them; :func:`select_best` picks the best of
several candidates (epochs, runs, trade-off weights) by one of them.

Example:
    >>> sharp, flat = np.eye(3)[[0, 1, 2, 0]], np.full((4, 3), 1 / 3)
    >>> validator_values(sharp)["entropy"] < validator_values(flat)["entropy"]
    True
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transferkit.errors import ConfigError, DataError, check_range
from transferkit.registry import Registry

_EPS = 1e-12


@dataclass(frozen=True)
class ValidatorInfo:
    """A registered label-free validator: ``needs`` is ``"target"`` or ``"source_val"`` (and target)."""

    name: str
    higher_is_better: bool
    needs: str
    help: str
    reference: str


VALIDATORS: Registry[ValidatorInfo] = Registry("validator")
for _v in (
    ValidatorInfo("entropy", False, "target", "mean prediction entropy on the unlabelled target",
                  "Morerio et al., ICLR 2018, https://arxiv.org/abs/1711.10288"),
    ValidatorInfo("infomax", False, "target", "information maximisation: mean entropy minus entropy of the "
                  "mean prediction", "Krause et al., NeurIPS 2010; Liang et al. (SHOT), ICML 2020, "
                  "https://arxiv.org/abs/2002.08546"),
    ValidatorInfo("snd", True, "target", "soft neighbourhood density of target predictions",
                  "Saito et al., ICCV 2021, https://arxiv.org/abs/2108.10860"),
    ValidatorInfo("iwv", False, "source_val", "importance-weighted source validation loss with DEV's control "
                  "variate", "Sugiyama et al., JMLR 2007; You et al. (DEV), ICML 2019, "
                  "http://proceedings.mlr.press/v97/you19a.html"),
):
    VALIDATORS.register(_v.name, _v, help=_v.help)


def _probs(p, what: str = "target predictions") -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or len(p) < 2:
        raise DataError(f"{what} must be class probabilities [N, C] with N >= 2; got shape {p.shape}.")
    if not np.isfinite(p).all() or (p < 0).any():
        raise DataError(f"{what} must be finite and non-negative probabilities.")
    return p / np.maximum(p.sum(1, keepdims=True), _EPS)


def _row_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + _EPS)).sum(-1)


def prediction_entropy(probs) -> float:
    """Mean Shannon entropy (nats) of the target predictions; lower is more confident."""
    return float(_row_entropy(_probs(probs)).mean())


def information_maximization(probs) -> float:
    """``H(Y|X) - H(Y)``: confident per item, yet diverse over items (lower is better).

    Collapsing every target item onto one class gives low entropy but also a
    low ``H(Y)``; this penalises that degenerate solution.
    """
    p = _probs(probs)
    return float(_row_entropy(p).mean() - _row_entropy(p.mean(0, keepdims=True))[0])


def soft_neighborhood_density(probs, *, temperature: float = 0.05) -> float:
    """Soft neighbourhood density (SND, Saito et al. 2021, https://arxiv.org/abs/2108.10860); higher is better.

    L2-normalised prediction vectors, their cosine similarities to every other
    target item (self excluded), a softmax over neighbours at ``temperature``,
    and the mean entropy of those neighbour distributions: high when items sit
    in dense clusters of similar predictions.
    """
    check_range("soft_neighborhood_density", "temperature", temperature, low=0, low_open=True)
    p = _probs(probs)
    f = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), _EPS)
    s = (f @ f.T) / temperature
    np.fill_diagonal(s, -np.inf)
    s = s - s.max(1, keepdims=True)
    e = np.exp(s)
    q = e / e.sum(1, keepdims=True)
    return float(_row_entropy(q).mean())


def importance_weighted_risk(losses, weights, *, control_variate: bool = True) -> float:
    """Importance-weighted mean of per-item source losses; lower is better.

    IWV (Sugiyama et al., JMLR 2007) is ``mean(w · l)``; DEV (You et al., ICML
    2019) subtracts the control variate ``eta (mean(w) - 1)`` with
    ``eta = -Cov(w · l, w) / Var(w)``, which lowers the variance of the
    estimate when the weights are uneven.
    """
    loss, w = np.asarray(losses, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if loss.shape != w.shape or loss.ndim != 1 or len(loss) < 2:
        raise DataError(f"losses and weights must be 1-D of the same length >= 2; got {loss.shape} and {w.shape}.")
    weighted = w * loss
    if not control_variate or w.var() < _EPS:
        return float(weighted.mean())
    eta = -np.cov(weighted, w)[0, 1] / w.var(ddof=1)
    return float(weighted.mean() + eta * w.mean() - eta)


def domain_importance_weights(source, target, *, clip: float = 10.0, folds: int = 5, C: float = 1.0,
                              seed: int = 0) -> np.ndarray:
    """Importance weights ``w(x) = p(target | x) / p(source | x) · n_s / n_t`` of the source rows.

    A standardised logistic-regression domain classifier (Bickel et al., ICML
    2007, https://doi.org/10.1145/1273496.1273507) gives ``p(target | x)``;
    each source row is scored by a classifier that did not see it
    (``folds``-fold cross-fitting); the weights are rescaled to mean 1, then
    clipped at ``clip`` (so the mean ends at or a little below 1).

    Returns:
        ``[Ns]`` float64 weights.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    check_range("domain_importance_weights", "clip", clip, low=1)
    xs, xt = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise DataError(f"Importance weights need [N, D] features of one width; got {xs.shape} and {xt.shape}.")
    k = int(min(folds, len(xs), len(xt)))
    if k < 2:
        raise DataError(f"Importance weights need at least 2 items per domain; got {len(xs)} and {len(xt)}.")
    x, y = np.concatenate([xs, xt]), np.repeat([0, 1], [len(xs), len(xt)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    with threadpool_limits(1):
        p = cross_val_predict(model, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")[: len(xs), 1]
    w = p / np.maximum(1 - p, _EPS) * len(xs) / len(xt)
    return np.clip(w / max(w.mean(), _EPS), 0.0, clip)


def _cross_entropy(probs: np.ndarray, targets) -> np.ndarray:
    t = np.asarray(targets).astype(int)
    return -np.log(np.clip(probs[np.arange(len(t)), t], _EPS, 1.0))


def validator_values(target_probs, *, names: Sequence[str] | None = None, source_val_probs=None,
                     source_val_targets=None, source_val_features=None, target_features=None,
                     seed: int = 0) -> dict[str, float]:
    """Every requested validator (default: all) of one model; NaN where an input is missing.

    Args:
        target_probs: ``[Nt, C]`` probabilities on (a sample of) the unlabelled target.
        names: validators to compute (see :data:`VALIDATORS`).
        source_val_probs, source_val_targets: ``[Nv, C]`` and ``[Nv]`` on the labelled
            source validation split (for ``iwv``).
        source_val_features, target_features: the model's features of the same items (``iwv``'s
            domain classifier).
    """
    names = list(VALIDATORS.names() if names is None else names)
    for n in names:
        VALIDATORS.get(n)
    p = _probs(target_probs)
    out: dict[str, float] = {}
    for n in names:
        if n == "entropy":
            out[n] = prediction_entropy(p)
        elif n == "infomax":
            out[n] = information_maximization(p)
        elif n == "snd":
            out[n] = soft_neighborhood_density(p)
        elif n == "iwv":
            have = (source_val_probs, source_val_targets, source_val_features, target_features)
            if any(v is None for v in have) or len(source_val_targets) < 2:
                out[n] = float("nan")
                continue
            w = domain_importance_weights(source_val_features, target_features, seed=seed)
            out[n] = importance_weighted_risk(_cross_entropy(_probs(source_val_probs, "source predictions"),
                                                             source_val_targets), w)
    return out


def select_best(values: Sequence[float], validator: str) -> int:
    """Index of the best of ``values`` (one per candidate) by ``validator``'s direction; NaNs lose.

    Ties go to the earliest candidate.

    Raises:
        ConfigError: no candidate has a finite value.
    """
    info = VALIDATORS.get(validator)
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).any():
        raise ConfigError(f"No candidate has a value of validator '{validator}' to select by.")
    v = np.where(np.isfinite(v), v if info.higher_is_better else -v, -np.inf)
    return int(np.argmax(v))
