"""Domain shift: measures of the gap between two domains, for ``transferkit shift`` and model selection.

The differentiable alignment losses the domain-adaptation strategies train with
(gradient reversal, multi-kernel MMD, deep CORAL) live in :mod:`transferkit.losses`;
the measures below reuse them on fixed features.

Measures (numpy in, float out), each computed in a backbone's feature space:

* :func:`mmd`: the same multi-kernel MMD², on up to ``max_items`` per domain.
* :func:`proxy_a_distance`: ``2 (1 - 2 err)`` of a cross-validated linear domain classifier.
* :func:`coral_distance`: the CORAL loss value between the two feature covariances.

Example:
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) + 3
    >>> round(mmd(a, a), 6), mmd(a, b) > 0.5
    (0.0, True)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from transferkit.errors import DataError, check_range
from transferkit.losses import MMD_SCALES, coral_loss, mk_mmd

_C_GRID = (0.01, 0.1, 1.0)


# ----------------------------------------------------------------------------- measures (numpy)
def _pair(source, target, what: str) -> tuple[np.ndarray, np.ndarray]:
    xs, xt = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise DataError(f"{what} needs source and target features of the same width [N, D]; got {xs.shape} "
                        f"and {xt.shape}.")
    if len(xs) < 2 or len(xt) < 2:
        raise DataError(f"{what} needs at least 2 items per domain; got {len(xs)} and {len(xt)}.")
    for name, x in (("source", xs), ("target", xt)):
        if not np.isfinite(x).all():
            raise DataError(f"{what}: the {name} features contain NaN or inf (row "
                            f"{int(np.argwhere(~np.isfinite(x))[0][0])}).")
    return xs, xt


def _cap(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]


def mmd(source, target, *, scales: Sequence[float] = MMD_SCALES, max_items: int = 1000, seed: int = 0) -> float:
    """Multi-kernel MMD² between two feature sets (see :func:`mk_mmd`), on at most ``max_items`` each.

    0 for identical samples; a few hundredths for two draws of the same
    distribution; up to 2 for distributions with no overlap.
    """
    xs, xt = _pair(source, target, "MMD")
    rng = np.random.default_rng(seed)
    xs, xt = _cap(xs, max_items, rng), _cap(xt, max_items, rng)
    with torch.no_grad():
        return float(mk_mmd(torch.from_numpy(xs).double(), torch.from_numpy(xt).double(), scales).clamp_min(0))


def proxy_a_distance(source, target, *, folds: int = 5, max_items: int = 1000, seed: int = 0) -> float:
    """Proxy A-distance ``2 (1 - 2 err)`` of a linear domain classifier, clipped to [0, 2].

    Ben-David et al., NeurIPS 2007 (https://papers.nips.cc/paper/2006/hash/
    b1b0432ceafb0ce714426e9114852ac7-Abstract.html), as used by Ganin et al.
    2016: ``err`` is the held-out error of telling source from target. Both
    domains are cut to the same size (at most ``max_items``), features are
    standardised, and the error is the best stratified ``folds``-fold
    cross-validated error of an L2 logistic regression over C in {0.01, 0.1, 1}.
    0: the domains cannot be told apart; 2: perfectly separable.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    check_range("proxy_a_distance", "folds", folds, low=2, kind="an int")
    xs, xt = _pair(source, target, "The proxy A-distance")
    rng = np.random.default_rng(seed)
    n = min(len(xs), len(xt), max_items)
    if n < folds:
        raise DataError(f"The proxy A-distance needs at least {folds} items per domain; got {n}.")
    x = np.concatenate([_cap(xs, n, rng), _cap(xt, n, rng)])
    y = np.repeat([0, 1], n)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with threadpool_limits(1):
        acc = max(float(np.mean(cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500)),
                                                x, y, cv=cv))) for C in _C_GRID)
    return float(np.clip(2.0 * (1.0 - 2.0 * (1.0 - acc)), 0.0, 2.0))


def coral_distance(source, target) -> float:
    """``||C_s - C_t||_F² / (4 d²)`` between the feature covariances (:func:`coral_loss`); 0 for equal covariances."""
    xs, xt = _pair(source, target, "The CORAL distance")
    return float(coral_loss(torch.from_numpy(xs).double(), torch.from_numpy(xt).double()))


def shift_measures(source, target, *, max_items: int = 1000, seed: int = 0) -> dict[str, float]:
    """The three measures of ``transferkit shift``: ``mmd``, ``proxy_a_distance``, ``coral``."""
    return {"mmd": mmd(source, target, max_items=max_items, seed=seed),
            "proxy_a_distance": proxy_a_distance(source, target, max_items=max_items, seed=seed),
            "coral": coral_distance(source, target)}


# ----------------------------------------------------------------------------- closed-form CORAL
def _sqrtm(c: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.clip(w, 1e-12, None) ** power) @ v.T


def coral_map(source, target, *, reg: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form CORAL: whiten the source features, re-colour them with the target covariance.

    Sun, Feng & Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI
    2016, https://arxiv.org/abs/1511.05547:
    ``x' = (x - m_s) C_s^{-1/2} C_t^{1/2} + m_t`` with ``C = cov + reg · I``.
    Here ``reg`` is relative to the mean feature variance (the paper adds ``I``
    to unit-variance features), and the means are aligned too, so a classifier
    trained on re-coloured source features applies to the raw target features.

    Args:
        source: ``[Ns, D]`` source features.
        target: ``[Nt, D]`` target features.
        reg: ridge added to both covariances, as a fraction of the mean variance (> 0).

    Returns:
        ``(m_s, A, m_t)``: apply as ``(x - m_s) @ A + m_t`` (see :func:`coral_transform`).
    """
    check_range("coral_map", "reg", reg, low=0, low_open=True)
    xs, xt = _pair(source, target, "CORAL")
    cs = np.atleast_2d(np.cov(xs, rowvar=False, ddof=1))
    ct = np.atleast_2d(np.cov(xt, rowvar=False, ddof=1))
    scale = max(float(np.trace(cs) + np.trace(ct)) / (2 * xs.shape[1]), 1e-12)
    eye = np.eye(xs.shape[1]) * reg * scale
    return xs.mean(0), _sqrtm(cs + eye, -0.5) @ _sqrtm(ct + eye, 0.5), xt.mean(0)


def coral_transform(source, target, *, reg: float = 1.0) -> np.ndarray:
    """The source features re-coloured by :func:`coral_map` (float64 ``[Ns, D]``)."""
    ms, a, mt = coral_map(source, target, reg=reg)
    return (np.asarray(source, dtype=np.float64) - ms) @ a + mt
