"""Transferability scores: how well a frozen backbone's features suit a target task, without fine-tuning.

Every score is a pure function of a feature matrix ``(n, d)`` and target
labels (LEEP and NCE take the source head's probabilities instead of
features); higher is better for all of them. Inputs go through
:func:`check_score_inputs`: float64, finite, labels re-coded ``0..C-1``, and
constant (zero-variance) feature columns dropped silently, since they carry no
information and would only make covariance matrices singular.

Example:
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> good, bad = rng.normal(size=(100, 8)) + 3 * y[:, None], rng.normal(size=(100, 8))
    >>> bool(logme(good, y) > logme(bad, y))
    True
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from transferkit.errors import ConfigError, DataError, check_range
from transferkit.registry import Registry

_EPS = np.finfo(np.float64).eps
GBC_COVARIANCES = ("diagonal", "spherical")
NLEEP_COVARIANCES = ("diagonal", "full")
REGRESSION_SCORES = ("logme",)


# ----------------------------------------------------------------------------- input checks
def _as_labels(labels, n: int | None = None) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1:
        raise DataError(f"labels must be 1-D (one class per sample); got shape {lab.shape}.")
    if n is not None and len(lab) != n:
        raise DataError(f"features have {n} rows but labels have {len(lab)} entries.")
    if len(lab) < 2:
        raise DataError(f"A transferability score needs at least 2 samples; got {len(lab)}.")
    if lab.dtype.kind in "fc" and not np.isfinite(lab).all():
        raise DataError(f"labels contain NaN or inf at row {int(np.flatnonzero(~np.isfinite(lab))[0])}.")
    classes, codes = np.unique(lab, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"labels contain a single class ({classes.tolist()[0]!r}); a transferability score needs "
                        "2 or more.")
    if len(classes) >= len(lab):
        raise DataError(f"labels have {len(classes)} classes for {len(lab)} samples: every class has a single "
                        "sample. A transferability score needs more samples than classes.")
    return codes.astype(np.intp)


def _as_targets(labels, n: int) -> np.ndarray:
    t = np.asarray(labels, dtype=np.float64)
    if t.ndim not in (1, 2) or len(t) != n:
        raise DataError(f"regression targets must have shape ({n},) or ({n}, t); got {t.shape}.")
    if not np.isfinite(t).all():
        raise DataError(f"regression targets contain NaN or inf at row {int(np.argwhere(~np.isfinite(t))[0][0])}.")
    return t


def _first_bad(bad: np.ndarray) -> tuple[int, int]:
    i, j = np.argwhere(bad)[0]
    return int(i), int(j)


def check_score_inputs(features, labels, *, regression: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise a score's inputs.

    Args:
        features: ``(n, d)`` array-like of features.
        labels: ``(n,)`` class labels of any sortable type, or with ``regression=True``
            float targets ``(n,)`` or ``(n, t)``.
        regression: Whether ``labels`` are regression targets.

    Returns:
        ``(x, y)``: float64 features with constant columns dropped, and labels
        re-coded ``0..C-1`` (int) or float64 targets of the shape given.

    Raises:
        DataError: Features not 2-D, fewer than 2 samples, length mismatch, NaN or
            inf (the first bad row and column are named), every column constant, a
            single class, or as many classes as samples.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D array (samples, dimensions); got shape {x.shape}.")
    if len(x) < 2:
        raise DataError(f"A transferability score needs at least 2 samples; got {len(x)}.")
    y = _as_targets(labels, len(x)) if regression else _as_labels(labels, len(x))
    finite = np.isfinite(x)
    if not finite.all():
        i, j = _first_bad(~finite)
        raise DataError(f"features contain {x[i, j]} at row {i}, column {j}; remove or impute bad rows first.")
    varying = x.max(0) > x.min(0)
    if not varying.any():
        raise DataError(f"every feature column is constant ({x.shape[1]} columns): the features carry no information.")
    return (x if varying.all() else x[:, varying]), y


def _as_probs(source_probs, n: int) -> np.ndarray:
    p = np.asarray(source_probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != n:
        raise DataError(f"source_probs must have shape ({n}, source classes); got {p.shape}.")
    bad = ~np.isfinite(p) | (p < 0)
    if bad.any():
        i, j = _first_bad(bad)
        raise DataError(f"source_probs must be finite and non-negative; row {i}, column {j} is {p[i, j]}.")
    total = p.sum(1)
    off = np.abs(total - 1.0) > 1e-3
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise DataError(f"source_probs rows must sum to 1 (a softmax, not logits); row {i} sums to {total[i]:.6g}.")
    return p / total[:, None]


# ----------------------------------------------------------------------------- shared linear algebra
def _onehot(y: np.ndarray, n_classes: int) -> sparse.csr_matrix:
    """Sparse ``(C, n)`` class-membership matrix: ``_onehot(y, C) @ x`` sums rows per class."""
    return sparse.csr_matrix((np.ones(len(y)), (y, np.arange(len(y)))), shape=(n_classes, len(y)))


def _class_moments(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class counts, means and (population) variances; two-pass, so no cancellation."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    onehot = _onehot(y, n_classes)
    means = np.asarray(onehot @ x) / counts[:, None]
    var = np.asarray(onehot @ (x - means[y]) ** 2) / counts[:, None]
    return counts, means, var


def _scatter_eigh(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Positive eigenvalues (descending) of the smaller of ``xc.T @ xc`` and ``xc @ xc.T``, with eigenvectors.

    Returns ``(lam, vecs, feature_side)``: eigenvectors live in feature space
    (``d``) when ``feature_side`` else in sample space (``n``). Eigenvalues below
    ``lam_max * max(n, d) * eps`` are rounding noise and dropped.
    """
    n, d = xc.shape
    feature_side = n >= d
    lam, vecs = np.linalg.eigh(xc.T @ xc if feature_side else xc @ xc.T)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    keep = lam > lam[0] * max(n, d) * _EPS
    return lam[keep], vecs[:, keep], feature_side


def _pca(x: np.ndarray, *, dim: int | None = None, variance: float | None = None) -> np.ndarray:
    """Principal-component scores of ``x``: the first ``dim`` components, or the fewest explaining
    more than ``variance`` of the total (scikit-learn's rule for a fractional ``n_components``)."""
    xc = x - x.mean(0)
    lam, vecs, feature_side = _scatter_eigh(xc)
    if variance is not None:
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), variance, side="right")) + 1
    else:
        k = dim
    k = min(k, len(lam))
    return xc @ vecs[:, :k] if feature_side else vecs[:, :k] * np.sqrt(lam[:k])


def _leep_from_probs(probs: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    joint = np.asarray(_onehot(y, n_classes) @ probs) / len(y)  # P(y, z), (C, Z)
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = (probs @ cond.T)[np.arange(len(y)), y]  # > 0: sample i itself puts mass on P(y_i | z)
    return float(np.log(eep).mean())


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


# ----------------------------------------------------------------------------- source-head scores
def leep(source_probs, labels) -> float:
    """LEEP: log expected empirical prediction of the source head's dummy label distribution.

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020, https://arxiv.org/abs/2002.12462::

        P(y, z) = 1/n sum_i theta(x_i)_z [y_i = y],   P(y | z) = P(y, z) / P(z)
        LEEP = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z

    Args:
        source_probs: ``(n, Z)`` softmax outputs of the source head (rows sum to 1).
        labels: ``(n,)`` target labels.

    Returns:
        LEEP (a mean log-likelihood, <= 0; higher is better).
    """
    y = _as_labels(labels)
    return _leep_from_probs(_as_probs(source_probs, len(y)), y, int(y.max()) + 1)


def nce(source_labels, labels) -> float:
    """NCE: negative conditional entropy ``-H(Y | Z)`` of the target labels given hard source labels.

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised
    Classification Tasks", ICCV 2019, https://arxiv.org/abs/1908.08142::

        NCE = sum_{y, z} P(y, z) log P(y | z)   (empirical joint, natural log)

    Args:
        source_labels: ``(n,)`` source-task labels of the target samples (e.g. the argmax of the source head).
        labels: ``(n,)`` target labels.

    Returns:
        ``-H(Y | Z)`` in nats (<= 0; higher is better).
    """
    y = _as_labels(labels)
    z = np.asarray(source_labels)
    if z.ndim != 1 or len(z) != len(y):
        raise DataError(f"source_labels must have shape ({len(y)},); got {z.shape}.")
    n_classes = int(y.max()) + 1
    _, zc = np.unique(z, return_inverse=True)
    joint = np.bincount(zc * n_classes + y).astype(np.float64) / len(y)
    joint = np.pad(joint, (0, -len(joint) % n_classes)).reshape(-1, n_classes)  # (Z, C)
    pz = np.broadcast_to(joint.sum(1, keepdims=True), joint.shape)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / pz[nz])).sum())


# ----------------------------------------------------------------------------- feature scores
def nleep(features, labels, *, components_per_class: int = 5, pca_variance: float = 0.8, seed: int = 0,
          covariance: str = "diagonal") -> float:
    """N-LEEP: LEEP with a Gaussian mixture fitted on PCA-reduced features as the "source head".

    Li, Jia, Sang, Zhu, Green, Wang, Gong, "Ranking Neural Checkpoints", CVPR 2021,
    https://arxiv.org/abs/2011.11200. PCA keeps the fewest components explaining
    more than ``pca_variance`` of the variance; a GMM with ``components_per_class
    * C`` components gives ``theta(x_i) = P(component | x_i)``; N-LEEP = LEEP(theta, y).

    Diagonal Gaussians by default: the reference implementations (google-research
    ``stable_transfer``, SFDA) use scikit-learn's ``"full"``, offered here, but at
    hundreds of PCA dimensions it costs O(K p^2) per sample and EM step. PCA scores
    are divided by their RMS before the fit, so the GMM's absolute ``reg_covar``
    acts relative to the data and the score does not depend on the features' units.

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` target labels.
        components_per_class: Mixture components per target class (5 in the paper).
        pca_variance: Fraction of variance the PCA keeps, in (0, 1].
        seed: Seed of the mixture's k-means initialisation.
        covariance: ``"diagonal"`` or ``"full"``.

    Returns:
        N-LEEP (<= 0; higher is better).
    """
    from sklearn.mixture import GaussianMixture

    if covariance not in NLEEP_COVARIANCES:
        raise ConfigError(f"The 'covariance' parameter of nleep must be one of {NLEEP_COVARIANCES}. "
                          f"Got {covariance!r} instead.")
    check_range("nleep", "pca_variance", pca_variance, low=0, low_open=True, high=1)
    x, y = check_score_inputs(features, labels)
    n_classes = int(y.max()) + 1
    check_range("nleep", "components_per_class", components_per_class, low=1, high=len(y) // n_classes,
                kind="an int")
    z = _pca(x, variance=pca_variance)
    z /= np.sqrt(np.mean(z * z))
    gmm = GaussianMixture(components_per_class * n_classes, covariance_type="diag" if covariance == "diagonal"
                          else "full", random_state=seed).fit(z)
    return _leep_from_probs(gmm.predict_proba(z), y, n_classes)


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


def gbc(features, labels, *, pca_dim: int = 64, covariance: str = "diagonal") -> float:
    """GBC: minus the summed Bhattacharyya coefficients between per-class Gaussians.

    Pándy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation
    using Bhattacharyya Class Separability", CVPR 2022, https://arxiv.org/abs/2111.12780.
    On the first ``pca_dim`` principal components (capped at the rank), each class
    is ``N(mu_c, Sigma_c)`` with diagonal (per-dimension population variances) or
    spherical (their mean) covariance, and::

        D_B(i, j) = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 ln(|S| / sqrt(|S_i| |S_j|)),  S = (S_i + S_j) / 2
        GBC = -sum_{i != j} exp(-D_B(i, j))   (in [-C(C-1), 0]; 0 = fully separated)

    Spherical log-determinants count all ``pca_dim`` dimensions (the reference
    code sums one log term per class, which is not ``ln|sigma^2 I|``). Variances
    are floored at ``1e-4`` times the mean PCA variance (the reference uses an
    absolute 1e-4), so single-sample classes stay finite and the score is invariant
    to the features' scale.

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` target labels.
        pca_dim: PCA dimensions (64 in the paper).
        covariance: ``"diagonal"`` or ``"spherical"``.

    Returns:
        GBC (<= 0; higher is better).
    """
    if covariance not in GBC_COVARIANCES:
        raise ConfigError(f"The 'covariance' parameter of gbc must be one of {GBC_COVARIANCES}. "
                          f"Got {covariance!r} instead.")
    check_range("gbc", "pca_dim", pca_dim, low=1, kind="an int")
    x, y = check_score_inputs(features, labels)
    z = _pca(x, dim=pca_dim)
    _, means, var = _class_moments(z, y, int(y.max()) + 1)
    var = np.maximum(var, 1e-4 * z.var(0).mean())
    if covariance == "spherical":
        var = np.broadcast_to(var.mean(1, keepdims=True), var.shape)
    logdet = np.log(var).sum(1)
    total = 0.0
    for c in range(len(means)):  # one class against all others at once: O(C p) memory
        avg = (var[c] + var) / 2
        db = ((means[c] - means) ** 2 / avg).sum(1) / 8 + 0.5 * (np.log(avg).sum(1) - 0.5 * (logdet[c] + logdet))
        coeff = np.exp(-db)
        coeff[c] = 0.0
        total += coeff.sum()
    return float(-total)


def knn_accuracy(features, labels, *, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy under cosine similarity.

    A common label-efficient probe (e.g. Wu, Xiong, Yu, Lin, "Unsupervised Feature
    Learning via Non-Parametric Instance Discrimination", CVPR 2018,
    https://arxiv.org/abs/1805.01978): each sample is classified by the majority
    label of its ``k`` most cosine-similar other samples; ties go to the tied class
    with the larger summed similarity. Similarities are computed in row chunks
    (about 64 MB each). Invariant to rotations and positive rescaling.

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` target labels.
        k: Neighbours, in [1, n - 1].

    Returns:
        The accuracy, in [0, 1].
    """
    x, y = check_score_inputs(features, labels)
    n = len(x)
    check_range("knn_accuracy", "k", k, low=1, high=n - 1, kind="an int")
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    n_classes, chunk, correct = int(y.max()) + 1, max(1, 2**23 // n), 0
    for start in range(0, n, chunk):
        sims = xn[start:start + chunk] @ xn.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf  # leave one out
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(sims), n_classes))
        np.add.at(votes, (rows[:, None], y[idx]), 1.0 + np.take_along_axis(sims, idx, 1) / (2 * k + 2))
        correct += int((votes.argmax(1) == y[start:start + chunk]).sum())
    return correct / n


def linear_probe_accuracy(features, labels, *, folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold cross-validated accuracy of a standardised logistic regression.

    The linear-evaluation protocol (e.g. Kornblith, Shlens, Le, "Do Better ImageNet
    Models Transfer Better?", CVPR 2019, https://arxiv.org/abs/1805.08974), with
    scikit-learn's ``StandardScaler`` fitted per training fold and
    ``LogisticRegression(C=1, max_iter=1000)``. ``folds`` is reduced to the smallest
    class size when needed (at least 2). Invariant to positive rescaling.

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` target labels.
        folds: Cross-validation folds, >= 2.
        seed: Seed of the fold shuffle.

    Returns:
        The mean held-out accuracy, in [0, 1].

    Raises:
        DataError: If a class has a single sample.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    check_range("linear_probe_accuracy", "folds", folds, low=2, kind="an int")
    x, y = check_score_inputs(features, labels)
    counts = np.bincount(y)
    if counts.min() < 2:
        lone = np.unique(np.asarray(labels).ravel()).tolist()[int(counts.argmin())]
        raise DataError(f"class {lone!r} has a single sample; cross-validated accuracy needs 2 or more per class.")
    cv = StratifiedKFold(int(min(folds, counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with threadpool_limits(1):  # small dense fits: BLAS threads cost more than they give
        return float(np.mean(cross_val_score(model, x, y, cv=cv)))


# ----------------------------------------------------------------------------- registry
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
                if p.kind is p.KEYWORD_ONLY and p.name != "regression"]
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
