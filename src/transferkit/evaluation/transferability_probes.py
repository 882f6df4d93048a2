"""Class-separability and probe scores: GBC, leave-one-out kNN accuracy and a cross-validated linear probe."""
from __future__ import annotations

import numpy as np

from transferkit.errors import ConfigError, DataError, check_range
from transferkit.evaluation.transferability_common import _class_moments, _pca, check_score_inputs

GBC_COVARIANCES = ("diagonal", "spherical")


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
