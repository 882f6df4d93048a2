"""``class_weight=balanced``: every class's share of the training loss is weighted by n / (classes x count), so
a rare class is not traded away for the majority (scikit-learn's ``balanced`` rule)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.data import from_arrays
from transferkit.errors import ConfigError
from transferkit.strategies import make_strategy
from transferkit.strategies.finetune import balanced_class_weights
from transferkit.tasks import get_task


def test_balanced_weights_follow_scikit_learns_rule():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 12 + [1] * 3 + [2] * 1)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert balanced_class_weights(y, 3).numpy() == pytest.approx(expected, rel=1e-6)
    # a class without an item gets no weight; the others keep the rule over the classes present
    assert balanced_class_weights([0, 0, 2], 3).tolist() == pytest.approx([0.75, 0.0, 1.5])


def test_the_classification_loss_is_the_weighted_mean_over_the_batch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    weight = torch.tensor([1.0, 3.0])
    per_item = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = (per_item * weight[targets]).sum() / weight[targets].sum()
    got = get_task("classification").loss(logits, targets, class_weight=weight)
    assert float(got) == pytest.approx(float(expected))
    assert float(get_task("classification").loss(logits, targets)) == pytest.approx(float(per_item.mean()))


def _imbalanced(n_major: int, n_minor: int, seed: int):
    """Two overlapping Gaussian classes in 4-D, the second rare."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0.0, 1.0, (n_major, 4)), rng.normal(1.2, 1.0, (n_minor, 4))]).astype(np.float32)
    y = np.array([0] * n_major + [1] * n_minor)
    return from_arrays(X, y, label_names=["common", "rare"])


def test_balanced_weights_raise_the_rare_class_recall():
    train, test = _imbalanced(190, 10, seed=0), _imbalanced(300, 300, seed=1)
    recall = {}
    for mode in ("none", "balanced"):
        result = tk.fit("mlp:16", train, "finetune", test_data=test, strategy_options={"class_weight": mode},
                        epochs=30, seed=0, report=False, progress=False)
        probs = result.predictor.predict_proba(test.items)
        recall[mode] = float((np.asarray(probs).argmax(1)[np.asarray(test.targets) == 1] == 1).mean())
    # unweighted, the rare class is mostly traded away for the majority; weighted, most of it is found
    assert recall["none"] < 0.5 < recall["balanced"]
    assert recall["balanced"] - recall["none"] > 0.25


def test_class_weight_is_refused_where_classes_are_not_one_per_item():
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    values = from_arrays(X, X[:, 0], task="regression")
    with pytest.raises(ConfigError, match="class_weight='balanced'.*regression.*class_weight=none"):
        tk.fit("mlp:8", values, "finetune", strategy_options={"class_weight": "balanced"}, epochs=1,
               report=False, progress=False)
    with pytest.raises(Exception, match="class_weight"):
        make_strategy("finetune", {"class_weight": "inverse"})
