"""Transferability scores: closed forms worked by hand, brute-force references, invariances, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.evaluation import (
    DEFAULT_SCORES,
    SCORES,
    check_score_inputs,
    compute_score,
    gbc,
    hscore,
    knn_accuracy,
    leep,
    linear_probe_accuracy,
    logme,
    nce,
    nleep,
    transrate,
)
from transferkit.evaluation.transferability_common import _pca
from transferkit.evaluation.transferability_linear import _logme_fit

FEATURE_SCORES = [e.name for e in SCORES if e.obj.needs == "features"]
SOURCE_SCORES = [e.name for e in SCORES if e.obj.needs == "source_probs"]


def clustered(n=180, d=10, classes=3, sep=4.0, seed=0):
    """Gaussian clusters, one per class, ``sep`` apart in a random direction per class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * sep / math.sqrt(d)
    return centres[y] + rng.normal(size=(n, d)), y


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- LogME
def brute_log_evidence(f, y, alpha, beta):
    """log N(y | 0, F F^T / alpha + I / beta): the marginal likelihood, by an explicit dense Gaussian."""
    cov = f @ f.T / alpha + np.eye(len(f)) / beta
    return multivariate_normal(mean=np.zeros(len(f)), cov=cov).logpdf(y)


@pytest.mark.parametrize("n,d,rank", [(40, 6, 6), (12, 30, 12), (40, 6, 4)], ids=["n>d", "n<d", "rank-deficient"])
def test_logme_evidence_is_the_gaussian_marginal_at_a_stationary_point(n, d, rank):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d))
    w = rng.normal(size=(d, 2))
    # two targets with a linear signal (interior optimum) and one without (alpha -> inf: the
    # fixed point stops after 11 steps, as the reference code, so only the identity is checked there)
    y = np.column_stack([f @ w + rng.normal(size=(n, 2)) * [1.0, 0.3], (np.arange(n) % 2).astype(float)])
    evidence, alpha, beta = _logme_fit(f, y)
    for j in range(y.shape[1]):
        best = brute_log_evidence(f, y[:, j], alpha[j], beta[j])
        assert evidence[j] == pytest.approx(best, rel=1e-9, abs=1e-9)
        if j == 2:
            continue
        for da in (0.95, 1.0, 1.05):
            for db in (0.95, 1.0, 1.05):
                assert brute_log_evidence(f, y[:, j], alpha[j] * da, beta[j] * db) <= best + 1e-7 * abs(best)


def test_logme_classification_is_mean_per_sample_evidence_of_one_hot_columns():
    f, y = clustered(n=30, d=5, classes=3)
    _, alpha, beta = _logme_fit(f, (y[:, None] == np.arange(3)).astype(float))
    brute = [brute_log_evidence(f, (y == c).astype(float), alpha[c], beta[c]) for c in range(3)]
    assert logme(f, y) == pytest.approx(np.mean(brute) / len(f), rel=1e-9)
    assert logme(f, np.array(["b", "c", "a"])[y]) == pytest.approx(logme(f, y), rel=1e-12)  # label names don't matter


def test_logme_regression_one_and_several_targets():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(60, 8))
    t = np.column_stack([f @ rng.normal(size=8), f[:, 0] ** 2]) + 0.1 * rng.normal(size=(60, 2))
    one, two = logme(f, t[:, 0], regression=True), logme(f, t[:, 1], regression=True)
    assert logme(f, t, regression=True) == pytest.approx((one + two) / 2, rel=1e-12)
    assert one > two  # a linear target is explained, a quadratic one is not
    assert one > logme(rng.normal(size=(60, 8)), t[:, 0], regression=True)
    assert compute_score("logme", features=f, labels=t[:, 0], regression=True) == one


def test_logme_is_scale_and_rotation_invariant_transrate_is_not():
    # The marginal N(y | 0, F F^T / alpha + I / beta) is unchanged by F -> cF, alpha -> c^2 alpha, so the
    # maximised evidence is scale invariant (up to the fixed point's stopping tolerance); F F^T is rotation invariant.
    f, y = clustered()
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(10, 10)))
    assert logme(3.7 * f, y) == pytest.approx(logme(f, y), rel=1e-6)
    assert logme(f @ q, y) == pytest.approx(logme(f, y), rel=1e-9)
    # eps is an absolute distortion (at the default 1e-4 the identity in the log det is negligible, and the
    # log c terms of R(Z) and R(Z|Y) almost cancel; at eps = 1 they do not)
    assert transrate(3.7 * f, y, eps=1.0) != pytest.approx(transrate(f, y, eps=1.0), rel=1e-3)


# ----------------------------------------------------------------------------- LEEP, NCE, N-LEEP
def test_leep_by_hand():
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    # P(y, z) = [[0.35, 0.15], [0.10, 0.40]], P(z) = [0.45, 0.55],
    # P(y | z) = [[7/9, 3/11], [2/9, 8/11]]. Expected empirical predictions:
    # 0.8*7/9 + 0.2*3/11 = 67/99, 0.6*7/9 + 0.4*3/11 = 57/99, 0.3*2/9 + 0.7*8/11 = 57/99, 0.1*2/9 + 0.9*8/11 = 67/99.
    expected = (math.log(67 / 99) + math.log(57 / 99)) / 2
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)
    assert compute_score("leep", source_probs=theta, labels=y) == pytest.approx(expected, rel=1e-12)


def test_nce_by_hand():
    z = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([0, 0, 1, 1, 1, 1])
    # P(z=0) = 1/2 with Y|z=0 = (2/3, 1/3); Y|z=1 is certain. H(Y|Z) = 1/2 H(2/3, 1/3).
    expected = 0.5 * (2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(z, y) == pytest.approx(expected, rel=1e-12)
    assert nce(np.array([7, 7, 7, 3, 3, 3]), y) == pytest.approx(expected, rel=1e-12)  # source names don't matter
    probs = np.eye(2)[z] * 0.8 + 0.1
    assert compute_score("nce", source_probs=probs, labels=y) == pytest.approx(expected, rel=1e-12)
    assert nce(y, y) == 0.0  # Y determined by Z


def test_nleep_ranks_separable_above_random():
    f, y = clustered(n=150, d=6)
    rng = np.random.default_rng(3)
    assert nleep(f, y, components_per_class=2) > nleep(rng.normal(size=f.shape), y, components_per_class=2)
    assert -1.2 < nleep(rng.normal(size=f.shape), y, components_per_class=2) <= 0  # about log(1/3) at chance
    assert nleep(f, y, components_per_class=2, covariance="full") > -0.5


# ----------------------------------------------------------------------------- H-score
def test_hscore_by_hand():
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    # cov(f) = (9 + 1 + 1 + 9) / 4 = 5; E[f|y] = [1, 1, 5, 5] so cov(E[f|y]) = 4; H = 4/5.
    assert hscore(f, y) == pytest.approx(0.8, rel=1e-12)
    assert hscore(f, y, shrinkage=True) == pytest.approx(0.8, rel=1e-12)  # one feature: Ledoit-Wolf shrinks nothing


def class_mean_matrix(f, y):
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return g


@pytest.mark.parametrize("n,d", [(120, 8), (15, 40)], ids=["n>d", "n<d"])
def test_hscore_matches_reference_formulas(n, d):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(4)
    y = np.arange(n) % 3
    f = rng.normal(size=(n, d)) + y[:, None] * rng.normal(size=d)
    g = class_mean_matrix(f, y)
    plain = np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-10) @ np.cov(g, rowvar=False))
    assert hscore(f, y) == pytest.approx(plain, rel=1e-7)
    lw = LedoitWolf().fit(f)
    shrunk = np.trace(np.linalg.pinv(lw.covariance_) @ ((1 - lw.shrinkage_) * np.cov(g, rowvar=False, bias=True)))
    assert 0 < lw.shrinkage_ < 1
    assert hscore(f, y, shrinkage=True) == pytest.approx(shrunk, rel=1e-9)


def test_hscore_pseudo_inverse_ignores_dependent_columns():
    # an extra column f0 + f1 makes cov(f) singular; tr(cov^+ cov_g) is unchanged by an injective linear map
    f, y = clustered(n=90, d=5)
    assert hscore(np.column_stack([f, f[:, 0] + f[:, 1]]), y) == pytest.approx(hscore(f, y), rel=1e-6)


def test_hscore_shrinkage_capped_at_one():
    # near-isotropic features: the Ledoit-Wolf estimate of the shrinkage exceeds 1 and is capped (H = 0)
    from sklearn.covariance import LedoitWolf

    f = np.vstack([np.eye(4), -np.eye(4)]) + 0.05 * np.random.default_rng(0).normal(size=(8, 4))
    assert LedoitWolf().fit(f).shrinkage_ == 1.0
    assert hscore(f, np.array([0, 1, 0, 1, 1, 0, 1, 0]), shrinkage=True) == 0.0


@pytest.mark.parametrize("shrinkage", [False, True])
def test_hscore_rotation_invariant(shrinkage):
    f, y = clustered(n=90, d=6)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(6, 6)))
    assert hscore(f @ q, y, shrinkage=shrinkage) == pytest.approx(hscore(f, y, shrinkage=shrinkage), rel=1e-9)


# ----------------------------------------------------------------------------- TransRate
def test_transrate_orthogonal_directions_closed_form():
    # class 0 at +-e1, class 1 at +-e2 (two each): Z^T Z = 4 I, Z_c^T Z_c = diag(4, 0) / diag(0, 4).
    # R(Z) = 1/2 * 2 log(1 + 2/(8 eps^2) 4) = log(1 + 1/eps^2); R(Z_c) = 1/2 log(1 + 2/(4 eps^2) 4) = 1/2 log(1 + 2/eps^2).
    f = np.array([[1, 0], [-1, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=float)
    y = np.repeat([0, 1], 4)
    eps = 0.5
    assert transrate(f, y, eps=eps) == pytest.approx(math.log(1 + 1 / eps**2) - 0.5 * math.log(1 + 2 / eps**2), rel=1e-12)
    assert transrate(f, y, eps=eps) == pytest.approx(math.log(5 / 3), rel=1e-12)


def test_transrate_weights_classes_by_size():
    # d = 1: class 0 = {1, -1}, class 1 = {2, -2, 2, -2}; Z^T Z = 18 over n = 6.
    f = np.array([1, -1, 2, -2, 2, -2], dtype=float)[:, None]
    y = np.array([0, 0, 1, 1, 1, 1])
    r = lambda zz, m: 0.5 * math.log(1 + zz / m)  # eps = 1, d = 1
    expected = r(18, 6) - 2 / 6 * r(2, 2) - 4 / 6 * r(16, 4)
    assert transrate(f, y, eps=1.0) == pytest.approx(expected, rel=1e-12)


def test_transrate_n_below_d_uses_the_small_gram():
    f, y = clustered(n=12, d=40)
    z = f - f.mean(0)
    big = lambda zc: 0.5 * np.linalg.slogdet(np.eye(40) + 40 / (len(zc) * 0.3**2) * zc.T @ zc)[1]
    expected = big(z) - sum((y == c).mean() * big(z[y == c]) for c in range(3))
    assert transrate(f, y, eps=0.3) == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------- GBC
def test_gbc_identical_classes_overlap_fully_and_far_classes_not_at_all():
    rng = np.random.default_rng(6)
    base = rng.normal(size=(40, 5))
    same = np.vstack([base, base, base])
    y = np.repeat([0, 1, 2], 40)
    for cov in ("diagonal", "spherical"):
        assert gbc(same, y, covariance=cov) == pytest.approx(-6.0, rel=1e-12)  # every ordered pair has BC = 1
        far = same + 1000.0 * np.eye(5)[y]
        assert -1e-6 < gbc(far, y, covariance=cov) <= 0.0


def test_gbc_single_sample_class_is_finite_and_scale_free():
    f, y = clustered(n=31, d=4)
    y[-1] = 3  # a class with one sample: zero variance, floored relative to the data's scale
    for cov in ("diagonal", "spherical"):
        score = gbc(f, y, covariance=cov)
        assert np.isfinite(score) and gbc(1e-3 * f, y, covariance=cov) == pytest.approx(score, rel=1e-9)


@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
def test_gbc_matches_dense_bhattacharyya(covariance):
    f, y = clustered(n=90, d=6, sep=2.0)
    z = _pca(f, dim=4)
    total = 0.0
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            vi, vj = z[y == i].var(0), z[y == j].var(0)
            if covariance == "spherical":
                vi, vj = np.full(4, vi.mean()), np.full(4, vj.mean())
            si, sj = np.diag(vi), np.diag(vj)
            s = (si + sj) / 2
            dm = z[y == i].mean(0) - z[y == j].mean(0)
            db = dm @ np.linalg.inv(s) @ dm / 8 + 0.5 * math.log(np.linalg.det(s) / math.sqrt(np.linalg.det(si) * np.linalg.det(sj)))
            total += math.exp(-db)
    assert gbc(f, y, pca_dim=4, covariance=covariance) == pytest.approx(-total, rel=1e-9)


# ----------------------------------------------------------------------------- k-NN and linear probe
@pytest.mark.parametrize("n", [40, 3000], ids=["one-chunk", "several-chunks"])
def test_knn_matches_brute_force_one_nn(n):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, n)
    f = rng.normal(size=(n, 8)) + 0.7 * np.eye(8)[y]
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    assert knn_accuracy(f, y, k=1) == pytest.approx(np.mean(y[sims.argmax(1)] == y), abs=1e-12)


def angles(degrees):
    rad = np.radians(degrees)
    return np.column_stack([np.cos(rad), np.sin(rad)])


def test_knn_majority_vote_by_hand():
    # cosine neighbours are the nearest angles. k=3: the samples at 0, 10, 25, 45 degrees are each outvoted
    # (0 and 10 see 10|0, 25, 45 -> class 1; 25 sees 10, 45, 0 -> class 0; 45 sees 25, 10, 0 -> class 0);
    # the three near 180 see each other plus 45 -> class 1, right. k=1: only 25 (nearest 10) is wrong.
    f, y = angles([0, 10, 25, 45, 180, 190, 200]), np.array([0, 0, 1, 1, 1, 1, 1])
    assert knn_accuracy(f, y, k=3) == pytest.approx(3 / 7)
    assert knn_accuracy(f, y, k=1) == pytest.approx(6 / 7)
    # k=2 ties one vote each: the class with the larger similarity (the nearer neighbour) wins, so all 3 are wrong.
    assert knn_accuracy(angles([0, 10, 30]), np.array([0, 1, 0]), k=2) == 0.0


def test_linear_probe_reduces_folds_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y = clustered(n=9, d=4, sep=1.0)  # 3 per class: 5 folds become 3
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    expected = cross_val_score(model, f, y, cv=StratifiedKFold(3, shuffle=True, random_state=0)).mean()
    assert linear_probe_accuracy(f, y) == pytest.approx(expected)
    with pytest.raises(DataError, match="class 'z' has a single sample"):
        linear_probe_accuracy(f[:7], np.array(["a", "b", "c", "a", "b", "c", "z"]))


# ----------------------------------------------------------------------------- every score, from the registry
@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_separable_features_score_higher_than_random(name):
    f, y = clustered(n=150, d=6)
    noise = np.random.default_rng(8).normal(size=f.shape)
    options = {"components_per_class": 2} if name == "nleep" else {}
    assert compute_score(name, features=f, labels=y, **options) > compute_score(name, features=noise, labels=y,
                                                                                  **options)


@pytest.mark.parametrize("name", list(SCORES.names()))
def test_label_permutation_invariance(name):
    f, y = clustered(n=120, d=5, sep=3.0)
    probs = softmax(np.random.default_rng(9).normal(size=(120, 7)) * 2)
    renamed = np.array([2, 0, 1])[y]
    kw = {"features": f, "source_probs": probs}
    assert compute_score(name, labels=renamed, **kw) == pytest.approx(compute_score(name, labels=y, **kw), rel=1e-9)


@pytest.mark.parametrize("name", ["knn", "linear-probe", "hscore", "hscore-shrinkage", "nleep", "gbc", "logme"])
def test_positive_scaling_invariance(name):
    f, y = clustered(n=120, d=5, sep=3.0)
    before = compute_score(name, features=f, labels=y)
    assert compute_score(name, features=3.7 * f, labels=y) == pytest.approx(before, rel=1e-7)


def test_registry_contract():
    assert set(SCORES.names()) == {"logme", "leep", "nleep", "nce", "hscore", "hscore-shrinkage", "transrate", "gbc",
                                   "knn", "linear-probe"}
    assert set(DEFAULT_SCORES) <= set(SCORES.names())
    assert set(SOURCE_SCORES) == {"leep", "nce"}
    for entry in SCORES:
        info = entry.obj
        assert info.name == entry.name and info.help and "arxiv.org/abs/" in info.reference and info.higher_is_better
        assert "arxiv.org/abs/" in (info.fn.__doc__ or "") or info.name == "hscore-shrinkage"


# ----------------------------------------------------------------------------- bad inputs
def test_bad_features_and_labels():
    f, y = clustered(n=12, d=3)
    bad = f.copy()
    bad[7, 2] = np.nan
    with pytest.raises(DataError, match="row 7, column 2"):
        logme(bad, y)
    with pytest.raises(DataError, match="single class"):
        hscore(f, np.zeros(12))
    with pytest.raises(DataError, match="12 classes for 12 samples"):
        gbc(f, np.arange(12))
    with pytest.raises(DataError, match="every feature column is constant"):
        transrate(np.ones((12, 3)), y)
    with pytest.raises(DataError, match="2-D"):
        logme(f[:, 0], y)
    with pytest.raises(DataError, match="12 rows but labels have 11"):
        logme(f, y[:11])
    with pytest.raises(DataError, match="at least 2 samples"):
        check_score_inputs(f[:1], y[:1])
    with pytest.raises(DataError, match="row 3"):
        hscore(f, np.where(np.arange(12) == 3, np.nan, y.astype(float)))


def test_constant_columns_are_dropped():
    f, y = clustered(n=30, d=4)
    padded = np.column_stack([f[:, :2], np.full(30, 5.0), f[:, 2:], np.zeros(30)])
    x, codes = check_score_inputs(padded, y)
    assert x.shape == (30, 4) and np.array_equal(codes, y)
    for name in FEATURE_SCORES:
        assert compute_score(name, features=padded, labels=y) == pytest.approx(
            compute_score(name, features=f, labels=y), rel=1e-9), name


def test_compute_score_errors():
    f, y = clustered(n=30, d=4)
    with pytest.raises(UnknownNameError, match="Unknown transferability score 'logmee'. Did you mean 'logme'.*"
                                               "Available: gbc, hscore"):
        compute_score("logmee", features=f, labels=y)
    with pytest.raises(ConfigError, match="'leep' needs source_probs"):
        compute_score("leep", features=f, labels=y)
    with pytest.raises(ConfigError, match="'nce' needs source_probs"):
        compute_score("nce", features=f, labels=y)
    with pytest.raises(ConfigError, match="one of \\('diagonal', 'spherical'\\). Got 'full'"):
        compute_score("gbc", features=f, labels=y, covariance="full")
    with pytest.raises(ConfigError, match="one of \\('diagonal', 'full'\\)"):
        nleep(f, y, covariance="spherical")
    with pytest.raises(ConfigError, match="'hscore' does not support regression.*logme"):
        compute_score("hscore", features=f, labels=y.astype(float), regression=True)
    with pytest.raises(ConfigError, match="takes no option 'kk'. Available: k"):
        compute_score("knn", features=f, labels=y, kk=3)
    with pytest.raises(ConfigError, match="'k' parameter of knn_accuracy must be an int in \\[1, 29\\]"):
        knn_accuracy(f, y, k=30)
    with pytest.raises(ConfigError, match="'eps' parameter of transrate"):
        transrate(f, y, eps=0.0)
    with pytest.raises(DataError, match="row 1 sums to 2"):
        leep(np.array([[0.5, 0.5], [1.0, 1.0], [0.2, 0.8]]), [0, 1, 1])
    with pytest.raises(DataError, match="row 0, column 1"):
        leep(np.array([[1.5, -0.5], [1.0, 0.0], [0.2, 0.8]]), [0, 1, 1])
