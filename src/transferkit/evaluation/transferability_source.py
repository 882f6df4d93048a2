"""Scores from a (pseudo-)source label distribution: LEEP, NCE, and N-LEEP (a Gaussian mixture as the source head).

LEEP and NCE read the source head's predictions on the target samples;
N-LEEP fits a Gaussian mixture on PCA-reduced features and uses its component
posteriors in their place.
"""
from __future__ import annotations

import numpy as np

from transferkit.errors import ConfigError, DataError, check_range
from transferkit.evaluation.transferability_common import _as_labels, _as_probs, _onehot, _pca, check_score_inputs

NLEEP_COVARIANCES = ("diagonal", "full")


def _leep_from_probs(probs: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    joint = np.asarray(_onehot(y, n_classes) @ probs) / len(y)  # P(y, z), (C, Z)
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = (probs @ cond.T)[np.arange(len(y)), y]  # > 0: sample i itself puts mass on P(y_i | z)
    return float(np.log(eep).mean())


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
