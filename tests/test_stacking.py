"""Model stacking: the ``concat:`` backbone, feature concatenation and out-of-fold stacking.

The leakage tests are the heart: a base learner that memorises its training
set (one-hot sample ids as features) must look like chance in the
out-of-fold predictions the meta-learner is fitted on, and a sample's
out-of-fold prediction must not change when only its own label does.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone, TabularPreprocess
from transferkit.backbones.concat import ConcatBackbone, ConcatPreprocess
from transferkit.data import extract_features, from_arrays
from transferkit.data.builtin import FASHION_MNIST_DIR
from transferkit.errors import ConfigError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.strategies.stacking import StackingHead, fit_stacking_head, out_of_fold_probabilities

TRAINER = SimpleNamespace(config=SimpleNamespace(seed=0))  # what the closed-form strategies read of the loop


class Columns(Backbone):
    """Tabular rows; the features are columns ``[start, stop)``: lets each member see a different view."""

    modality = "tabular"

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop
        self.spec, self.num_features, self.preprocess = f"columns:{start}-{stop}", stop - start, TabularPreprocess()

    def forward_features(self, x):
        return x[:, self.start:self.stop]

    def layer_groups(self):
        return []


# ---------------------------------------------------------------- the concat backbone


def test_concat_features_are_the_members_features_side_by_side(tiny_images):
    bb = load_backbone("concat:small-cnn:16+small-cnn:24")
    a, b = bb.members
    assert (bb.num_features, bb.slices) == (a.num_features + b.num_features,
                                            [(0, a.num_features), (a.num_features, bb.num_features)])
    assert isinstance(bb.preprocess, ConcatPreprocess)  # 16 px and 24 px: each member gets its own input
    items = list(tiny_images.items[:5])
    with torch.no_grad():
        bb.eval()
        got = bb.forward_features(bb.preprocess(items))
        want = torch.cat([a.forward_features(a.preprocess(items)), b.forward_features(b.preprocess(items))], 1)
    torch.testing.assert_close(got, want)
    # the cached features agree with the members' own cached features
    np.testing.assert_allclose(extract_features(bb, tiny_images),
                               np.hstack([extract_features(m, tiny_images) for m in bb.members]), atol=1e-5)


def test_members_that_preprocess_alike_share_one_input():
    bb = load_backbone("concat:small-cnn:16+small-cnn:16")
    assert bb.preprocess is bb.members[0].preprocess
    assert bb.spec == "concat:small-cnn:16+small-cnn:16"


def test_layer_groups_merge_by_depth_from_the_top():
    bb = load_backbone("concat:small-cnn:16+small-cnn:32")
    a, b = (m.layer_groups() for m in bb.members)
    assert (len(a), len(b)) == (2, 3)
    groups = bb.layer_groups()
    bb.check_groups()
    assert len(groups) == 3
    assert {id(p) for p in groups[-1]} == {id(p) for p in a[-1] + b[-1]}  # both members' top groups train first
    assert {id(p) for p in groups[0]} == {id(p) for p in b[0]}


@pytest.mark.parametrize("spec", ["concat:small-cnn:16", "concat:", "concat:small-cnn:16+"])
def test_concat_with_fewer_than_two_models_is_refused(spec):
    with pytest.raises(ConfigError, match=r"at least two source models joined by '\+'.*concat:efficientnet-lite:0\+"):
        load_backbone(spec)


def test_concat_of_different_modalities_is_refused():
    with pytest.raises(ConfigError, match=r"same input.*'small-cnn:16' \(image\).*'columns:0-2' \(tabular\)"):
        ConcatBackbone([load_backbone("small-cnn:16"), Columns(0, 2)])


def test_stacking_a_single_model_names_the_fix(tiny_images):
    with pytest.raises(ConfigError, match=r"'stacking' needs at least two source models.*'small-cnn:16'.*concat:A\+B"):
        make_strategy("stacking").fit(load_backbone("small-cnn:16"), tiny_images, None, TRAINER)


def test_stacking_needs_two_examples_per_class():
    X, y = np.random.default_rng(0).normal(size=(7, 4)), np.array([0, 0, 0, 1, 1, 1, 2])
    data = from_arrays(X.astype(np.float32), y, label_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="at least 2 labelled examples of every class: 'c' has 1"):
        make_strategy("stacking").fit(ConcatBackbone([Columns(0, 2), Columns(2, 4)]), data, None, TRAINER)


def test_linear_probe_on_concat_round_trips_through_a_bundle(tiny_images, tmp_path):
    bb = load_backbone("concat:small-cnn:16+small-cnn:24")
    strategy = make_strategy("linear-probe")
    model, _ = strategy.fit(bb, tiny_images, None, TRAINER)
    assert model.head[-1].in_features == bb.num_features
    out = predict_outputs(model, tiny_images)
    np.testing.assert_allclose(strategy.predict(model, tiny_images), out, atol=1e-5)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "linear-probe"}})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [m["spec"] for m in manifest["backbone"]["options"]["members"]] == ["small-cnn:16", "small-cnn:24"]
    np.testing.assert_allclose(load(tmp_path / "b").outputs(tiny_images.items), out, atol=1e-5)


# ---------------------------------------------------------------- out-of-fold stacking never sees its own label


def test_out_of_fold_prediction_of_a_sample_ignores_its_own_label():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), np.arange(40) % 3
    folds = list(KFold(4, shuffle=True, random_state=0).split(X))  # fixed folds, independent of the labels
    before = out_of_fold_probabilities(X, y, C=10.0, folds=folds)
    for i in (0, 17, 39):
        flipped = y.copy()
        flipped[i] = (y[i] + 1) % 3
        after = out_of_fold_probabilities(X, flipped, C=10.0, folds=folds)
        np.testing.assert_array_equal(after[i], before[i])  # the model that predicted i never saw y_i
        assert not np.allclose(np.delete(after, i, 0), np.delete(before, i, 0))  # others' predictions did see it


def _memoriser_task(n_train: int, n_test: int, noise: float, seed: int = 0):
    """Rows ``[one-hot sample id | noisy one-hot label]``; four classes, random labels.

    A logistic regression on the id columns memorises the training set and
    knows nothing of a new sample; one on the label columns generalises.
    """
    rng = np.random.default_rng(seed)
    n, c = n_train + n_test, 4
    y = rng.permutation(np.arange(n) % c)
    rows = np.hstack([np.eye(n), np.eye(c)[y] + noise * rng.normal(size=(n, c))]).astype(np.float32)
    names = ["a", "b", "c", "d"]
    train = from_arrays(rows[:n_train], y[:n_train], label_names=names)
    test = from_arrays(rows[n_train:], y[n_train:], label_names=names)
    return train, test, ConcatBackbone([Columns(0, n), Columns(n, n + c)])


def test_a_memorising_base_learner_is_at_chance_out_of_fold():
    train, _, bb = _memoriser_task(80, 8, noise=0.8)
    ids = extract_features(bb.members[0], train)
    in_sample = make_strategy("linear-probe", {"C": 100.0}).fit(bb.members[0], train, None, TRAINER)[0]
    assert (predict_outputs(in_sample, train).argmax(1) == train.targets).mean() == 1.0  # it does memorise
    oof = out_of_fold_probabilities(ids, train.targets, C=100.0, folds=5)
    assert (oof.argmax(1) == train.targets).mean() < 0.45  # chance is 0.25


def test_the_meta_learner_trusts_the_model_that_generalises_not_the_memoriser():
    train, test, bb = _memoriser_task(200, 200, noise=0.6)
    model, history = make_strategy("stacking", {"C": 100.0}).fit(bb, train, None, TRAINER)
    memoriser, honest = history[0]["oof_accuracy"]
    assert memoriser < 0.45 and honest > 0.6
    acc = (predict_outputs(model, test).argmax(1) == test.targets).mean()
    honest_alone = make_strategy("linear-probe").fit(bb.members[1], train, None, TRAINER)[0]
    acc_honest = (predict_outputs(honest_alone, test).argmax(1) == test.targets).mean()
    # a meta-learner fitted on in-sample probabilities would follow the (perfect in-sample) memoriser: chance
    assert acc > 0.6 and acc >= acc_honest - 0.05


def test_stacking_head_computes_meta_of_member_probabilities():
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(30, 3)), rng.normal(size=(30, 5))]
    y = np.arange(30) % 3
    head, info = fit_stacking_head(feats, y, 3, folds=3, C=1.0, meta_C=1.0)
    assert info["folds"] == 3 and len(info["oof_accuracy"]) == 2
    x = torch.from_numpy(np.hstack(feats)).float()
    bases, meta = head[0].bases, head[-1]
    probs = torch.cat([bases[0](x[:, :3]).softmax(-1), bases[1](x[:, 3:]).softmax(-1)], 1)
    torch.testing.assert_close(head(x), meta(probs))
    assert StackingHead.from_manifest(head.describe())[0].slices == [(0, 3), (3, 8)]


def test_mean_combination_is_the_log_of_the_members_mean_probability():
    rng = np.random.default_rng(2)
    feats = [rng.normal(size=(24, 3)), rng.normal(size=(24, 4)), rng.normal(size=(24, 2))]
    y = np.arange(24) % 4
    head, info = fit_stacking_head(feats, y, 4, C=1.0, combine="mean")
    assert info["combine"] == "mean" and info["base_C"] == [1.0, 1.0, 1.0] and "meta_C" not in info
    assert not list(head[-1].parameters())  # nothing is fitted on top of the members
    x = torch.from_numpy(np.hstack(feats)).float()
    bases, cuts = head[0].bases, [(0, 3), (3, 7), (7, 9)]
    mean = sum(b(x[:, a:c]).softmax(-1) for b, (a, c) in zip(bases, cuts)) / 3
    torch.testing.assert_close(head(x), mean.log())
    torch.testing.assert_close(head(x).exp().sum(1), torch.ones(24))
    again = StackingHead.from_manifest(head.describe())
    assert head.describe()["combine"] == "mean" and again.combine == "mean"
    again.load_state_dict(head.state_dict())
    torch.testing.assert_close(again(x), head(x))
    with pytest.raises(ConfigError, match="combine must be learned or mean"):
        StackingHead.from_manifest({**head.describe(), "combine": "median"})
    with pytest.raises(ConfigError, match="combine"):
        make_strategy("stacking", {"combine": "median"})


# ---------------------------------------------------------------- end to end on the packaged models


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_stacking_efficientnet_lite0_and_lite1_end_to_end(tmp_path):
    from transferkit.data import load_dataset
    from transferkit.data.splits import sample_per_class

    train_all, test_all = load_dataset("fashion-mnist")
    train, test = sample_per_class(train_all, 4, seed=0), sample_per_class(test_all, 3, seed=0)
    bb = load_backbone("concat:efficientnet-lite:0+efficientnet-lite:1", image_size=32)
    assert bb.pretrained and bb.num_features == 2560
    strategy = make_strategy("stacking")
    model, history = strategy.fit(bb, train, None, TRAINER)
    assert history[0]["folds"] == 4
    out = strategy.predict(model, test)
    np.testing.assert_allclose(predict_outputs(model, test), out, atol=1e-5)  # raw images == cached features
    assert (out.argmax(1) == test.targets).mean() > 0.2  # chance is 0.1
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "stacking"}})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["head"] == {"kind": "stacking", "slices": [[0, 1280], [1280, 2560]], "in_features": 2560,
                                "out_features": 10, "combine": "learned"}
    np.testing.assert_allclose(load(tmp_path / "b").outputs(test.items), out, atol=1e-5)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_mean_stacking_of_members_at_their_own_layer_and_size_end_to_end(tmp_path):
    """auto's stacking candidate: Lite0's block3 at 32 px and block4 at 64 px, probabilities averaged; the bundle
    rebuilds both members at their own sizes and predicts the same."""
    import transferkit as tk

    members = [{"spec": "efficientnet-lite:0@block3", "options": {"image_size": 32}},
               {"spec": "efficientnet-lite:0@block4", "options": {"image_size": 64}}]
    out = tmp_path / "b"
    bb = load_backbone("concat:efficientnet-lite:0@block3+efficientnet-lite:0@block4", members=members)
    result = tk.fit(bb, "fashion-mnist", "stacking", labels_per_class=3, max_test=20,
                    strategy_options={"combine": "mean"}, out=out)
    head = json.loads((out / "manifest.json").read_text())["head"]
    assert head["combine"] == "mean" and len(head["slices"]) == 2
    bundle = tk.load(out)
    assert [m.preprocess.size for m in bundle.model.backbone.members] == [32, 64]
    _, _, test = tk.prepare_data("fashion-mnist", labels_per_class=3, max_test=20, seed=0)
    probs = bundle.outputs(test.items)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert result.metrics["accuracy"] == pytest.approx((probs.argmax(1) == test.targets).mean())
