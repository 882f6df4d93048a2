"""Fairness: group metrics, Kamiran–Calders weights, the two mitigation strategies, and the data/API/CLI wiring."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.fairness import check_sensitive, group_metrics, kamiran_calders_weights
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.training import TrainConfig, Trainer

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
needs_penguins = pytest.mark.skipif(importlib.util.find_spec("palmerpenguins") is None, reason="palmerpenguins absent")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny MLPs: thread hand-offs cost more than they save, and much more on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_case(n=300, classes=2, groups=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, classes, n))
    return y, pred, rng.choice(list(groups), n)


def leaky_table(n: int, seed: int) -> TaskData:
    """Group g leaks into feature 0 and shifts the label's base rate; feature 1 carries the rest of the label."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    x1 = rng.normal(size=n)
    y = (x1 + 1.5 * (g - 0.5) + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    x = np.stack([2.0 * g + 0.5 * rng.normal(size=n), x1, rng.normal(size=n)], 1).astype(np.float32)
    return TaskData(x, y, "tabular", label_names=["no", "yes"], name="leaky", sensitive=np.where(g, "b", "a"),
                    sensitive_name="grp")


# ---------------------------------------------------------------- group metrics


def test_group_metrics_match_hand_computed_values():
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    pred = np.array([0, 1, 0, 0, 1, 1, 1, 0])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    m = group_metrics(y, pred, groups, label_names=["neg", "pos"], sensitive_name="sex")
    a, b = m["groups"]["a"], m["groups"]["b"]
    assert m["attribute"] == "sex" and a["count"] == 4 and b["count"] == 4
    assert a["accuracy"] == pytest.approx(3 / 4) and b["accuracy"] == pytest.approx(2 / 4)
    assert a["selection_rate"]["pos"] == pytest.approx(1 / 4) and b["selection_rate"]["pos"] == pytest.approx(3 / 4)
    assert a["true_positive_rate"]["pos"] == pytest.approx(1 / 2) and b["true_positive_rate"]["pos"] == pytest.approx(2 / 3)
    assert a["false_positive_rate"]["pos"] == pytest.approx(0.0) and b["false_positive_rate"]["pos"] == pytest.approx(1.0)
    assert m["worst_group"] == "b" and m["accuracy_worst_group"] == pytest.approx(0.5)
    assert m["accuracy_gap"] == pytest.approx(0.25)
    assert m["demographic_parity_difference"] == pytest.approx(0.5)  # |1/4 - 3/4|
    assert m["equalized_odds_difference"] == pytest.approx(1.0)  # max(|1/2 - 2/3|, |0 - 1|)
    json.dumps(m)  # goes into the manifest as is


def test_binary_differences_equal_fairlearn():
    y, pred, s = _random_case(classes=2, seed=1)
    m = group_metrics(y, pred, s)
    assert m["demographic_parity_difference"] == pytest.approx(
        fairlearn_metrics.demographic_parity_difference(y, pred, sensitive_features=s))
    assert m["equalized_odds_difference"] == pytest.approx(
        fairlearn_metrics.equalized_odds_difference(y, pred, sensitive_features=s))
    assert m["undefined_rates"] == []


def test_multiclass_differences_are_the_largest_one_vs_rest_fairlearn_value():
    y, pred, s = _random_case(classes=3, seed=2)
    m = group_metrics(y, np.eye(3)[pred] * 0.8 + 0.1, s, label_names=["x", "y", "z"])  # probabilities: argmax taken
    dp = [fairlearn_metrics.demographic_parity_difference(y == c, pred == c, sensitive_features=s) for c in range(3)]
    eo = [fairlearn_metrics.equalized_odds_difference(y == c, pred == c, sensitive_features=s) for c in range(3)]
    assert m["demographic_parity_difference"] == pytest.approx(max(dp))
    assert m["equalized_odds_difference"] == pytest.approx(max(eo))
    assert m["demographic_parity_class"] == "xyz"[int(np.argmax(dp))]
    accs = {g: float((pred[s == g] == y[s == g]).mean()) for g in "abc"}
    assert m["accuracy_worst_group"] == pytest.approx(min(accs.values()))


def test_a_rate_undefined_in_a_group_is_left_out_not_counted_as_zero():
    # group b has no item of class 1: its true positive rate is undefined (fairlearn counts it 0)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    s = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    m = group_metrics(y, pred, s)
    assert ["1", "b", "true_positive_rate"] in m["undefined_rates"]
    assert m["groups"]["b"]["true_positive_rate"]["1"] is None
    # class 1: TPR a = 1, b undefined; FPR a = 1/2, b = 1/4 -> 0.25. Class 0: TPR a = 1/2, b = 3/4 -> 0.25.
    assert m["equalized_odds_difference"] == pytest.approx(0.25)
    assert fairlearn_metrics.equalized_odds_difference(y, pred, sensitive_features=s) == pytest.approx(1.0)


@pytest.mark.parametrize("sensitive, message", [
    (np.array(["male"] * 6), r"'sex' has a single group \('male'\)"),
    (np.array(["a", "b", None, "a", "b", "a"], dtype=object), "missing .* first at item 2"),
    (np.array([0.0, 1.0, np.nan, 1.0, 0.0, 1.0]), "missing"),
    (np.array(["a", "b"]), "2 values for 6 items"),
])
def test_bad_sensitive_attribute_gets_a_clear_error(sensitive, message):
    with pytest.raises(DataError, match=message):
        group_metrics(np.zeros(6, dtype=int), np.zeros(6, dtype=int), sensitive, sensitive_name="sex")


def test_numeric_groups_are_named_like_labels():
    assert list(check_sensitive(np.array([0.0, 1.0, 1.0]))) == ["0", "1", "1"]


# ---------------------------------------------------------------- Kamiran–Calders


def test_kamiran_calders_weights_make_label_and_group_independent():
    rng = np.random.default_rng(0)
    s = rng.choice(["a", "b", "c"], 500, p=[0.5, 0.3, 0.2])
    y = np.where(s == "a", rng.random(500) < 0.8, rng.random(500) < 0.3).astype(np.int64)  # label depends on group
    w = kamiran_calders_weights(y, s)
    total = w.sum()
    assert total == pytest.approx(len(y)) and (w > 0).all()
    before = [abs(np.mean(y[s == g]) - np.mean(y)) for g in "abc"]
    assert max(before) > 0.2  # the group changes the label's rate before weighting
    for g in "abc":
        for c in (0, 1):
            joint = w[(s == g) & (y == c)].sum() / total
            assert joint == pytest.approx((w[s == g].sum() / total) * (w[y == c].sum() / total))
        assert w[s == g].sum() == pytest.approx((s == g).sum())  # group marginals unchanged
    assert np.average(y, weights=w) == pytest.approx(y.mean())  # label marginal unchanged


def test_kamiran_calders_refuses_a_single_group():
    with pytest.raises(DataError, match="single group"):
        kamiran_calders_weights(np.array([0, 1, 0]), np.array(["x", "x", "x"]))


# ---------------------------------------------------------------- strategies


def _fit(name, data, options=None, epochs=30, seed=0):
    strategy = make_strategy(name, options or {})
    backbone = load_backbone("mlp:16", in_features=data.items.shape[1])
    return strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=epochs, lr=3e-3, head_lr=3e-3, seed=seed,
                                                                  progress=False)))


@needs_penguins
@pytest.mark.parametrize("name, term", [("reweighing", "unweighted_loss"), ("adversarial-debiasing", "adversary_loss")])
def test_mitigation_strategies_train_on_penguins(name, term):
    from transferkit.data import load_dataset

    train, test = load_dataset("penguins", label="sex", sensitive="island")
    model, history = _fit(name, train, epochs=15)
    assert all(term in row for row in history)
    if name == "adversarial-debiasing":
        assert history[0]["lambda"] < history[-1]["lambda"] <= 1.0  # the ramp
        assert 0.0 <= history[-1]["adversary_acc"] <= 1.0
        assert not any(n.startswith("adversary") for n in model.state_dict())  # not part of the saved model
    acc = (predict_outputs(model, test).argmax(1) == test.targets).mean()
    assert acc > 0.7  # sex from body measurements: well above the 50% base rate


def test_reweighing_weights_reach_the_loss():
    data = leaky_table(64, 0)
    strategy = make_strategy("reweighing")
    model = strategy.prepare(load_backbone("mlp:16", in_features=3), data)
    ds = strategy.train_dataset(model, data)
    batch = ds.collate(list(range(16)))
    assert batch["weights"].shape == (16,) and batch["sensitive"].tolist() == [
        strategy.group_names_.index(g) for g in data.sensitive[:16]]
    np.testing.assert_allclose(batch["weights"].numpy(), kamiran_calders_weights(data.targets, data.sensitive)[:16],
                               rtol=1e-6)
    out = strategy.step(model, batch)
    flat = strategy.step(model, {**batch, "weights": torch.ones(16)})
    assert not torch.isclose(out["loss"], flat["loss"])  # the weights change the loss
    assert torch.isclose(flat["loss"], flat["unweighted_loss"])


def test_reweighing_head_only_keeps_the_backbone():
    data = leaky_table(64, 0)
    strategy = make_strategy("reweighing", {"train_last": 0})
    model = strategy.prepare(load_backbone("mlp:16", in_features=3), data)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert [g["name"] for g in strategy.param_groups(model, 1e-3, 1e-2)] == ["head"]


def test_adversarial_debiasing_lowers_the_demographic_parity_gap():
    """Plain fine-tuning uses the leaked group (large DP gap); the adversary takes most of it away."""
    train, test = leaky_table(400, 0), leaky_table(400, 1)
    base, _ = _fit("finetune", train)
    fair, history = _fit("adversarial-debiasing", train)
    gap = {k: group_metrics(test.targets, predict_outputs(m, test), test.sensitive)["demographic_parity_difference"]
           for k, m in (("base", base), ("fair", fair))}
    assert gap["base"] > 0.3  # the true rates differ by about 0.47
    assert gap["fair"] < gap["base"] - 0.15  # measured: 0.43 -> 0.11 (seeds 0-2)
    assert history[-1]["adversary_acc"] < 0.8  # the adversary ends near chance (measured 0.5-0.6)


@pytest.mark.parametrize("name", ["reweighing", "adversarial-debiasing"])
def test_mitigation_without_a_sensitive_attribute_says_how_to_give_one(name):
    data = TaskData(np.zeros((10, 3), np.float32), np.arange(10) % 2, "tabular", label_names=["a", "b"], name="t")
    with pytest.raises(ConfigError, match="sensitive_column"):
        _fit(name, data, epochs=1)


@pytest.mark.parametrize("name", ["reweighing", "adversarial-debiasing"])
def test_mitigation_with_a_single_group_is_refused(name):
    data = TaskData(np.zeros((10, 3), np.float32), np.arange(10) % 2, "tabular", label_names=["a", "b"], name="t",
                    sensitive=np.array(["x"] * 10), sensitive_name="island")
    with pytest.raises(DataError, match=r"'island' of 't' has a single group \('x'\)"):
        _fit(name, data, epochs=1)


def test_adversarial_debiasing_options_are_validated():
    with pytest.raises(ConfigError, match="adversary_input"):
        make_strategy("adversarial-debiasing", {"adversary_input": "labels"})
    with pytest.raises(ConfigError, match="weight"):
        make_strategy("adversarial-debiasing", {"weight": -1})


@pytest.mark.parametrize("kind, width", [("outputs", 2), ("outputs+label", 6)])
def test_adversary_reads_the_outputs_for_parity_or_odds(kind, width):
    data = leaky_table(64, 0)
    strategy = make_strategy("adversarial-debiasing", {"adversary_input": kind, "hidden": 0})
    strategy.prepare(load_backbone("mlp:16", in_features=3), data)
    assert strategy.adversary_.in_features == width


# ---------------------------------------------------------------- data, API and CLI


def _write_csv(path, n=120, seed=0, group=None):
    d = leaky_table(n, seed)
    frame = pd.DataFrame(d.items, columns=["f0", "f1", "f2"])
    frame["grp"] = d.sensitive if group is None else group
    frame["label"] = np.array(d.label_names)[d.targets]
    frame.to_csv(path, index=False)
    return path


def test_table_keeps_the_sensitive_column_out_of_the_features(tmp_path):
    from transferkit.data import resolve_data

    csv = _write_csv(tmp_path / "t.csv", group=np.arange(120) % 2)  # numeric groups would otherwise be a feature
    train, _ = resolve_data(str(csv), sensitive_column="grp")
    assert train.feature_names == ["f0", "f1", "f2"] and train.sensitive_name == "grp"
    assert sorted(set(train.sensitive)) == ["0", "1"]
    with pytest.raises(DataError, match=r"no column 'nope' for the sensitive attribute. Columns present: f0, f1, f2, grp"):
        resolve_data(str(csv), sensitive_column="nope")
    with pytest.raises(ConfigError, match="also the label column"):
        resolve_data(str(csv), sensitive_column="label")


@needs_penguins
def test_builtin_penguins_sensitive_attribute():
    from transferkit.data import load_dataset, resolve_data

    plain, _ = load_dataset("penguins")
    assert plain.sensitive is None and len(plain) == 256  # the default is unchanged
    train, test = resolve_data("penguins", sensitive_column="sex")
    assert len(train) + len(test) == 333 and set(train.sensitive) == {"female", "male"}  # 9 rows without sex dropped
    with pytest.raises(ConfigError, match="must be one of species, sex, island"):
        load_dataset("penguins", sensitive="year")
    # label_column picks a built-in set's label, as it picks a table's label column
    sex, sex_test = resolve_data("penguins", label_column="sex", sensitive_column="island")
    assert sex.label_names == ["female", "male"] and set(sex.sensitive) == {"Biscoe", "Dream", "Torgersen"}
    assert len(sex) + len(sex_test) == 333
    with pytest.raises(ConfigError, match=r"'fashion-mnist' has no label column to choose \(label_column='sex'\)"
                                          r".*built-in sets penguins"):
        resolve_data("fashion-mnist", label_column="sex")
    with pytest.raises(ConfigError, match=r"no sensitive column to choose \(sensitive_column='island'\)"):
        resolve_data("fashion-mnist", sensitive_column="island")


def test_fit_on_a_csv_writes_fairness_into_the_metrics(tmp_path):
    import transferkit as tk

    csv, test_csv = _write_csv(tmp_path / "train.csv", 160, 0), _write_csv(tmp_path / "test.csv", 80, 1)
    result = tk.fit("mlp:16", str(csv), "adversarial-debiasing", test_data=str(test_csv), sensitive_column="grp",
                    epochs=3, progress=False, out=tmp_path / "bundle")
    fairness = result.metrics["fairness"]
    assert fairness["attribute"] == "grp" and sum(g["count"] for g in fairness["groups"].values()) == 80
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["metrics"]["fairness"]["demographic_parity_difference"] == pytest.approx(
        fairness["demographic_parity_difference"])
    assert manifest["data"]["sensitive_column"] == "grp"
    assert "Groups of the sensitive attribute" in (tmp_path / "bundle" / "report.md").read_text()
    again = tk.evaluate(tmp_path / "bundle", str(test_csv), sensitive_column="grp")
    assert again["fairness"]["accuracy_worst_group"] == pytest.approx(fairness["accuracy_worst_group"])
    plain = tk.evaluate(tmp_path / "bundle", str(test_csv), feature_columns=["f0", "f1", "f2"])
    assert "fairness" not in plain and plain["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_fit_refuses_a_single_group_before_training(tmp_path):
    import transferkit as tk

    csv = _write_csv(tmp_path / "one.csv", group=["only"] * 120)
    with pytest.raises(DataError, match=r"'grp' of '.*' has a single group \('only'\)"):
        tk.fit("mlp:16", str(csv), "finetune", sensitive_column="grp", epochs=1, progress=False)


def test_cli_unknown_sensitive_column_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    csv = _write_csv(tmp_path / "t.csv")
    r = CliRunner().invoke(app, ["fit", "--backbone", "mlp:16", "--data", str(csv), "--out", str(tmp_path / "b"),
                                 "--strategy", "reweighing", "--sensitive-column", "gender", "--epochs", "1"])
    assert r.exit_code == 2
    out = " ".join(r.output.split())  # rich wraps long lines
    assert "no column 'gender' for the sensitive attribute. Columns present: f0, f1, f2, grp, label" in out
    assert "Traceback" not in r.output
