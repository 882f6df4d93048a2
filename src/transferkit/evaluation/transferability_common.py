"""What every transferability score shares: input checks and the linear algebra several scores build on.

:func:`check_score_inputs` turns features and labels into float64 features
(constant columns dropped) and labels re-coded ``0..C-1``; ``_as_probs``
checks a source head's probabilities. ``_class_moments``, ``_scatter_eigh``
and ``_pca`` are the per-class statistics and eigendecompositions that LogME,
H-score, N-LEEP and GBC reuse.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from transferkit.errors import DataError

_EPS = np.finfo(np.float64).eps


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
