"""Closed-form scores from the features' linear statistics: LogME, H-score (plain and shrunk) and TransRate.

Each works from the features' scatter or Gram matrices (always the smaller of
the two), through an eigendecomposition or a Cholesky factor; nothing is
trained beyond LogME's few fixed-point steps.
"""
from __future__ import annotations

import math

import numpy as np

from transferkit.errors import check_range
from transferkit.evaluation.transferability_common import _class_moments, _scatter_eigh, check_score_inputs


# ----------------------------------------------------------------------------- LogME
def _logme_terms(s: np.ndarray, x2: np.ndarray, res_x2: np.ndarray, t: np.ndarray):
    """``m^T m`` and ``||F m - y||^2`` at ``t = alpha / beta``, in the SVD basis of ``F``."""
    den = t + s
    return (s * x2 / den**2).sum(0), (x2 * (t / den) ** 2).sum(0) + res_x2


def _logme_fit(f: np.ndarray, y: np.ndarray, tol: float = 1e-3, max_iter: int = 11):
    """Maximise the evidence of every column of ``y`` (n, t); returns ``(log evidence, alpha, beta)``, each (t,).

    One eigendecomposition of the smaller Gram matrix gives ``sigma`` (the
    squared singular values of ``f``) and ``x = U^T y``; every fixed-point step
    is then O(k t). The evidence is evaluated at the final ``(alpha, beta)``
    with ``m`` recomputed there, so it is exactly ``log N(y | 0, F F^T / alpha + I / beta)``.
    """
    n, d = f.shape
    sigma, vecs, feature_side = _scatter_eigh(f)
    x2 = (vecs.T @ (f.T @ y)) ** 2 / sigma[:, None] if feature_side else (vecs.T @ y) ** 2
    yy = (y * y).sum(0)
    res_x2 = np.maximum(yy - x2.sum(0), 0.0)  # the part of y outside F's column space
    s, guard = sigma[:, None], 1e-12 * yy + 1e-300
    alpha, beta = np.ones(y.shape[1]), np.ones(y.shape[1])
    active = np.ones(y.shape[1], dtype=bool)
    for _ in range(max_iter):
        t = alpha / beta
        gamma = (s / (s + t)).sum(0)
        m2, res2 = _logme_terms(s, x2, res_x2, t)
        new_alpha, new_beta = gamma / (m2 + guard), (n - gamma) / (res2 + guard)
        done = np.abs(new_alpha / new_beta - t) / t <= tol
        alpha, beta = np.where(active, new_alpha, alpha), np.where(active, new_beta, beta)
        active &= ~done
        if not active.any():
            break
    m2, res2 = _logme_terms(s, x2, res_x2, alpha / beta)
    logdet_a = np.log(alpha + beta * s).sum(0) + (d - len(sigma)) * np.log(alpha)  # A has d - k eigenvalues alpha
    evidence = 0.5 * (n * np.log(beta) + d * np.log(alpha) - n * math.log(2 * math.pi)
                      - beta * res2 - alpha * m2 - logdet_a)
    return evidence, alpha, beta


def logme(features, labels, *, regression: bool = False) -> float:
    """LogME: the maximised log marginal likelihood of a Bayesian linear model on the features, per sample.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
    Transfer Learning", ICML 2021, https://arxiv.org/abs/2102.11005.

    For each target column ``y`` (a one-hot class indicator, or a regression
    target) with prior ``w ~ N(0, alpha^-1 I)`` and noise ``N(0, beta^-1)``::

        log p(y | F, alpha, beta) = n/2 log beta + d/2 log alpha - n/2 log 2pi
            - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log|A|,
        A = alpha I + beta F^T F,  m = beta A^-1 F^T y,

    maximised over ``alpha, beta`` by the paper's fixed point (``gamma = sum_i
    beta sigma_i / (alpha + beta sigma_i)``, ``alpha = gamma / m^T m``, ``beta =
    (n - gamma) / ||F m - y||^2``; stop when ``alpha / beta`` changes by less than
    1e-3 or after 11 steps, as the reference code). LogME is the mean over
    targets of the maximum divided by ``n``. ``|A|`` counts all ``d`` eigenvalues,
    ``alpha`` for the ``d - rank(F)`` null directions, so ``n < d`` is exact
    (thuml/LogME issue #23). Features are not centred. The maximum is invariant to
    rotations of the features and, since ``alpha`` absorbs a scale, to rescaling
    (up to the stopping tolerance).

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` class labels, or float targets ``(n,)`` / ``(n, t)`` with ``regression=True``.
        regression: Treat ``labels`` as regression targets.

    Returns:
        The LogME score (nats per sample, higher is better).
    """
    x, y = check_score_inputs(features, labels, regression=regression)
    if regression:
        targets = y.reshape(len(y), -1)
    else:
        targets = (y[:, None] == np.arange(y.max() + 1)).astype(np.float64)
    evidence, _, _ = _logme_fit(x, targets)
    return float(evidence.mean() / len(x))


# ----------------------------------------------------------------------------- H-score and TransRate
def hscore(features, labels, *, shrinkage: bool = False) -> float:
    """H-score: ``tr(cov(f)^-1 cov(E[f | y]))``, optionally with a Ledoit-Wolf shrunk ``cov(f)``.

    Bao, Li, Huang, Zhang, Zheng, Zamir, Guibas, "An Information-Theoretic Approach
    to Transferability in Task Transfer Learning", ICIP 2019,
    https://arxiv.org/abs/2212.10082. The inverse is a pseudo-inverse (as the
    reference code); eigenvalues below ``max * max(n, d) * eps`` count as zero.

    ``shrinkage=True`` is the regularised H-score of Ibrahim, Ponomareva, Mazumder,
    "Newer is not always better: Rethinking transferability metrics, their
    peculiarities, stability and performance", https://arxiv.org/abs/2110.06893::

        H_alpha = tr(cov_alpha(f)^+ (1 - alpha) cov(E[f | y])),
        cov_alpha = (1 - alpha) S + alpha mu I   (Ledoit-Wolf, mu = tr(S) / d)

    on centred features, ``alpha`` being scikit-learn's Ledoit-Wolf shrinkage. Both
    covariances use ``1/n`` (the reference code takes ``1/(n-1)`` for ``cov(E[f | y])``,
    a factor ``n/(n-1)``), so ``alpha = 0`` gives the plain H-score. Both variants are
    invariant to rotations and rescaling of the features.

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` target labels.
        shrinkage: Use the Ledoit-Wolf shrunk covariance.

    Returns:
        The H-score (>= 0; higher is better).
    """
    x, y = check_score_inputs(features, labels)
    n, d = x.shape
    xc = x - x.mean(0)
    counts, means, _ = _class_moments(xc, y, int(y.max()) + 1)  # means are centred: cov(E[f|y]) = M^T P M
    lam, vecs, feature_side = _scatter_eigh(xc)
    lam = lam / n
    # coordinates of the class means on the scatter's eigenvectors (V^T m_c; V = xc^T U / sqrt(n lam) when n < d)
    proj = vecs.T @ means.T if feature_side else (vecs.T @ (xc @ means.T)) / np.sqrt(n * lam)[:, None]
    alpha, mu = 0.0, lam.sum() / d
    if shrinkage:
        frob2 = (lam**2).sum()  # ||S||_F^2
        b = ((xc * xc).sum(1) ** 2).sum() / n**2 / d - frob2 / (n * d)
        delta = (frob2 - d * mu**2) / d
        b = min(b, delta)
        alpha = 0.0 if b <= 0 or delta <= 0 else b / delta
    den = (1 - alpha) * lam + alpha * mu  # eigenvalues of cov_alpha on the scatter's range, where cov(E[f|y]) lives
    return float((1 - alpha) * (counts / n) @ (proj**2 / den[:, None]).sum(0))


def transrate(features, labels, *, eps: float = 1e-4) -> float:
    """TransRate: coding rate of the features minus their coding rate given the labels.

    Huang, Huang, Rong, Yang, Wei, "Frustratingly Easy Transferability
    Estimation", ICML 2022, https://arxiv.org/abs/2106.09362. On globally centred
    features ``Z`` (classes are not re-centred, as the reference code)::

        R(Z, eps) = 1/2 logdet(I_d + d / (n eps^2) Z^T Z)
        TrR = R(Z, eps) - sum_y (n_y / n) R(Z_y, eps)

    Class rates are weighted by class size, as the coding rate of a partition
    (Ma et al. 2007; MCR^2). The authors' code scales by ``1/(n e)`` and averages
    the class rates unweighted: it equals this function with ``eps = sqrt(d e)``
    when classes are balanced. ``eps`` is absolute, so the score depends on the
    features' scale. Log-determinants use the smaller Gram matrix (Sylvester).

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` target labels.
        eps: Distortion ``eps`` > 0.

    Returns:
        TransRate in nats (higher is better).
    """
    check_range("transrate", "eps", eps, low=0, low_open=True)
    x, y = check_score_inputs(features, labels)
    n, d = x.shape
    z = x - x.mean(0)

    def rate(zc: np.ndarray) -> float:
        m = len(zc)
        g = zc.T @ zc if m >= d else zc @ zc.T
        g *= d / (m * eps**2)
        g.flat[:: len(g) + 1] += 1.0
        try:
            return float(np.log(np.diag(np.linalg.cholesky(g))).sum())
        except np.linalg.LinAlgError:  # rounding broke positive definiteness: eigenvalues are >= 1 in theory
            return float(0.5 * np.log(np.maximum(np.linalg.eigvalsh(g), 1.0)).sum())

    order = np.argsort(y, kind="stable")
    bounds = np.cumsum(np.bincount(y))[:-1]
    return rate(z) - sum(len(idx) / n * rate(z[idx]) for idx in np.split(order, bounds))
