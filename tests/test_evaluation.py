"""Metrics and statistics, checked against values computed by hand on tiny arrays."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.tasks import compute_metrics, primary_metric
from transferkit.evaluation import (
    classification_metrics,
    higher_is_better,
    is_fraction_metric,
    mean_ci,
    multilabel_metrics,
    paired_difference,
    regression_metrics,
    summarize,
    transfer_verdicts,
    welch_difference,
)

T_975_DF2 = 4.302652729911275  # Student t quantiles from printed tables
T_975_DF4 = 2.7764451051977987
T_975_DF7 = 2.3646242510102993

# --------------------------------------------------------------------------- metrics

Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]


def test_classification_metrics_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED)
    # confusion rows (true): [1,1,0], [0,2,0], [1,0,1]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == pytest.approx({"0": 0.5, "1": 1.0, "2": 0.5})
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx(2 / 3)
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["n"] == 6


def test_classification_confusion_covers_all_named_labels():
    m = classification_metrics(Y_TRUE, Y_PRED, label_names=["a", "b", "c", "d"])
    assert len(m["confusion_matrix"]) == 4 and all(len(r) == 4 for r in m["confusion_matrix"])
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert m["labels"] == ["a", "b", "c", "d"]
    assert math.isnan(m["per_class_recall"]["d"])
    assert m["per_class_recall"]["b"] == 1.0


def test_classification_log_loss_from_proba():
    proba = np.array([[0.8, 0.2], [0.4, 0.6]])
    m = classification_metrics([0, 0], [0, 1], proba=proba)
    assert m["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)


def test_classification_bad_input():
    with pytest.raises(DataError, match="3 samples but y_pred has 2"):
        classification_metrics([0, 1, 1], [0, 1])
    with pytest.raises(DataError, match="empty"):
        classification_metrics([], [])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        classification_metrics([0, 2], [0, 1], label_names=["a", "b"])


def test_regression_metrics_by_hand():
    m = regression_metrics([1, 2, 3, 4], [1, 2, 3, 5])
    assert m == pytest.approx({"mse": 0.25, "rmse": 0.5, "mae": 0.25, "r2": 1 - 1 / 5, "n": 4})
    assert math.isnan(regression_metrics([1.0], [2.0])["r2"])


def test_multilabel_metrics_by_hand():
    y = [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    s = [[0.9, 0.2, 0.1], [0.4, 0.6, 0.1], [0.3, 0.8, 0.7]]
    m = multilabel_metrics(y, s, label_names=["x", "y", "z"])
    # predicted: [1,0,0], [0,1,0], [0,1,1]: rows 0 and 1 exactly right
    assert m["subset_accuracy"] == pytest.approx(2 / 3)
    # micro: TP=3, FP=1 (z in row 2), FN=1 (x in row 2)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # per label F1: x 2/3, y 1, z 0 (only a false positive)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # AP x: ranks pos(0.9), neg(0.4), pos(0.3) -> 0.5*1 + 0.5*2/3; y: 1; z has no positive: excluded
    assert m["per_label_ap"]["x"] == pytest.approx(5 / 6)
    assert math.isnan(m["per_label_ap"]["z"])
    assert m["mAP"] == pytest.approx((5 / 6 + 1) / 2)
    assert m["n"] == 3


def test_compute_metrics_dispatch():
    proba = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    m = compute_metrics("classification", [0, 1, 1], proba, label_names=["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3) and "log_loss" in m
    assert compute_metrics("regression", [1.0, 2.0], np.array([[1.0], [2.0]]))["mse"] == 0.0
    assert compute_metrics("multilabel", [[1, 0]], [[0.9, 0.1]])["subset_accuracy"] == 1.0
    with pytest.raises(UnknownNameError, match="Unknown task .keypoints.. Available: classification, detection, instance-segmentation, multilabel"):
        compute_metrics("keypoints", [0], [[1.0]])


def test_metric_direction_and_primary():
    assert {t: primary_metric(t) for t in ("classification", "multilabel", "regression")} == {
        "classification": "accuracy", "multilabel": "macro_f1", "regression": "r2"}
    assert higher_is_better("accuracy") and higher_is_better("r2") and higher_is_better("val_macro_f1")
    assert not higher_is_better("mse") and not higher_is_better("val_loss") and not higher_is_better("log_loss")
    assert is_fraction_metric("accuracy") and is_fraction_metric("mAP") and is_fraction_metric("macro_f1")
    assert not is_fraction_metric("r2") and not is_fraction_metric("mse")


# --------------------------------------------------------------------------- intervals


def test_mean_ci_known_values():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # = 2.4841
    assert mean == 2.0
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)
    assert half == pytest.approx(2.4841, abs=1e-4)
    mean, low, high = mean_ci([2, 4, 4, 4, 5, 5, 7, 9])
    half = T_975_DF7 * math.sqrt(32 / 7) / math.sqrt(8)
    assert mean == 5.0 and high - mean == pytest.approx(half, abs=1e-9)


def test_mean_ci_single_value_and_errors():
    mean, low, high = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert mean_ci([3.0, 3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(DataError):
        mean_ci([])
    with pytest.raises(ConfigError, match="confidence"):
        mean_ci([1, 2], confidence=1.5)


def test_paired_and_welch_differences():
    d, low, high = paired_difference([3, 5, 7], [1, 2, 3])  # differences 2, 3, 4
    assert d == 3.0 and high - d == pytest.approx(T_975_DF2 / math.sqrt(3), abs=1e-9)
    with pytest.raises(DataError, match="same length"):
        paired_difference([1, 2], [1])
    # equal n and variances: Welch's df = 2(n-1) = 4, se = sqrt(2/3)
    d, low, high = welch_difference([1, 2, 3], [4, 5, 6])
    assert d == -3.0 and high - d == pytest.approx(T_975_DF4 * math.sqrt(2 / 3), abs=1e-9)
    d, low, high = welch_difference([1.0], [4, 5, 6])
    assert d == -4.0 and math.isnan(low) and math.isnan(high)


# --------------------------------------------------------------------------- summaries and verdicts


def _runs(spec: dict[str, tuple[str, list[float]]], experiment="e", lpc=10, metric="accuracy") -> pd.DataFrame:
    """``{strategy: (kind, values per seed)}`` -> runs table."""
    rows = [
        {"experiment": experiment, "labels_per_class": lpc, "strategy": name, "kind": kind, "seed": seed, metric: v}
        for name, (kind, values) in spec.items()
        for seed, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_summarize_columns_and_values():
    runs = _runs({"ft": ("transfer", [0.74, 0.75, 0.76]), "mlp": ("scratch", [0.5, np.nan, 0.6])})
    s = summarize(runs, "accuracy")
    assert list(s.columns) == ["experiment", "labels_per_class", "strategy", "kind", "n", "mean", "ci_low",
                               "ci_high", "std"]
    ft = s[s.strategy == "ft"].iloc[0]
    assert ft.n == 3 and ft["mean"] == pytest.approx(0.75) and ft["std"] == pytest.approx(0.01)
    assert ft.ci_high - ft["mean"] == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3))
    assert s[s.strategy == "mlp"].iloc[0].n == 2  # the NaN run is dropped
    with pytest.raises(DataError, match="lacks column"):
        summarize(runs, "f1")


def _verdict(runs, metric="accuracy", **kw) -> pd.Series:
    v = transfer_verdicts(runs, metric, **kw)
    assert len(v) == 1
    return v.iloc[0]


def test_verdict_positive_negative_unclear():
    base = [0.60, 0.62, 0.58, 0.61]
    pos = _verdict(_runs({"ft": ("transfer", [b + 0.10 + e for b, e in zip(base, [0.01, -0.01, 0.0, 0.005])]),
                          "mlp": ("scratch", base)}))
    assert pos.verdict == "positive transfer" and pos.gain == pytest.approx(0.10125) and pos.gain_low > 0
    assert "paired" in pos.test and "helped" in pos.explanation
    neg = _verdict(_runs({"ft": ("transfer", [b - 0.05 + e for b, e in zip(base, [0.01, -0.01, 0.0, 0.005])]),
                          "mlp": ("scratch", base)}))
    assert neg.verdict == "negative transfer" and neg.gain_high < 0 and "hurt" in neg.explanation
    unclear = _verdict(_runs({"ft": ("transfer", [b + e for b, e in zip(base, [0.02, -0.02, 0.01, -0.005])]),
                              "mlp": ("scratch", base)}))
    assert unclear.verdict == "no clear gain" and unclear.gain_low < 0 < unclear.gain_high
    assert "not shown to be better" in unclear.explanation


def test_verdict_uses_strongest_scratch_baseline():
    runs = _runs({"ft": ("transfer", [0.65, 0.66, 0.64]), "weak": ("scratch", [0.50, 0.52, 0.48]),
                  "strong": ("scratch", [0.70, 0.71, 0.69])})
    v = _verdict(runs)
    assert v.baseline == "strong" and v.baseline_mean == pytest.approx(0.70)
    assert v.verdict == "negative transfer" and v.gain == pytest.approx(-0.05)


def test_verdict_lower_is_better():
    runs = _runs({"ft": ("transfer", [0.10, 0.11, 0.09]), "a": ("scratch", [0.30, 0.31, 0.29]),
                  "b": ("scratch", [0.20, 0.22, 0.18])}, metric="mse")
    for kw in ({"higher_is_better": False}, {"higher_is_better": None}):
        v = _verdict(runs, "mse", **kw)
        assert v.baseline == "b"  # lowest mse is the strongest baseline
        assert v.verdict == "positive transfer" and v.gain == pytest.approx(0.10)
        assert "Lower mse is better" in v.explanation
    assert _verdict(runs, "mse", higher_is_better=True).verdict == "negative transfer"


def test_verdict_single_seed_and_unpaired():
    one = _verdict(_runs({"ft": ("transfer", [0.8]), "mlp": ("scratch", [0.7])}))
    assert one.verdict == "positive transfer" and math.isnan(one.gain_low)
    assert "interval is unknown" in one.explanation and "not statistically supported" in one.explanation
    runs = _runs({"ft": ("transfer", [0.8, 0.82, 0.81]), "mlp": ("scratch", [0.6, 0.62])})
    runs.loc[runs.strategy == "mlp", "seed"] = [10, 11]
    v = _verdict(runs)
    assert "Welch" in v.test and v.verdict == "positive transfer"


def test_verdict_groups_and_errors():
    runs = pd.concat([_runs({"ft": ("transfer", [0.8, 0.8]), "mlp": ("scratch", [0.7, 0.7])}, lpc=5),
                      _runs({"ft": ("transfer", [0.9, 0.9])}, lpc=50)])
    v = transfer_verdicts(runs, "accuracy")
    assert list(v.columns[:11]) == ["experiment", "labels_per_class", "strategy", "baseline", "mean",
                                    "baseline_mean", "gain", "gain_low", "gain_high", "verdict", "explanation"]
    assert v.verdict.tolist() == ["positive transfer", "no baseline"]
    bad = runs.assign(kind="pretrained")
    with pytest.raises(DataError, match="Unknown kind"):
        transfer_verdicts(bad, "accuracy")
    with pytest.raises(DataError, match="seed"):
        transfer_verdicts(runs.drop(columns="seed"), "accuracy")


def test_bootstrap_difference_covers_the_true_gain_and_judges_it():
    from transferkit.evaluation import bootstrap_difference, judge

    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.80).astype(float)  # model A right 80% of the time
    b = (rng.random(2000) < 0.70).astype(float)
    gain, low, high = bootstrap_difference(a, b, seed=1)
    assert gain == pytest.approx(a.mean() - b.mean())
    assert low < gain < high and low > 0.05 and high < 0.15
    assert judge(gain, low, high) == "positive transfer"
    # Identical predictions: no gain, a zero-width interval, no verdict either way.
    assert bootstrap_difference(a, a) == (0.0, 0.0, 0.0)
    assert judge(*bootstrap_difference(a, a)) == "no clear gain"
    # A small difference on few items is not significant.
    assert judge(*bootstrap_difference([1, 0, 1, 1, 0], [1, 0, 1, 0, 0])) == "no clear gain"
    with pytest.raises(DataError, match="same length"):
        bootstrap_difference([1, 0], [1])
