"""Few-shot: the episode sampler, prototypes, the episodic protocol, ``protonet`` and ``maml``.

The strategies run on ``small-cnn:16`` (randomly initialised) for the mechanics, on a
tiny tanh MLP in float64 for MAML's meta-gradient against finite differences, and on
the packaged EfficientNet-Lite0 (ImageNet weights) at 32 px on Fashion-MNIST end to end.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.data import from_arrays
from transferkit.data.episodes import episode_sampler
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.few_shot import (EpisodeSampler, evaluate_episodes, prototype_classifier, prototype_logits,
                                             prototypes)
from transferkit.evaluation.stats import mean_ci
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import TransferModel, linear_head, predict_outputs
from transferkit.strategies.few_shot import maml_episode_loss, prototype_head
from transferkit.training import TrainConfig, Trainer


def _trainer(epochs=1, **kw):
    return Trainer(TrainConfig(epochs=epochs, progress=False, **kw))


# ---------------------------------------------------------------- sampler


def test_episodes_have_the_requested_shape_and_local_labels():
    labels = np.repeat(np.arange(7), 10)[np.random.default_rng(0).permutation(70)]
    sampler = EpisodeSampler(labels, n_way=4, k_shot=3, n_query=5, episodes=20, seed=3)
    eps = list(sampler)
    assert len(eps) == 20
    for ep in eps:
        assert len(set(ep.classes.tolist())) == 4
        assert len(ep.support) == 12 and len(ep.query) == 20
        assert not set(ep.support) & set(ep.query)
        np.testing.assert_array_equal(labels[ep.support], ep.classes[ep.support_labels])
        np.testing.assert_array_equal(labels[ep.query], ep.classes[ep.query_labels])
        assert np.bincount(ep.support_labels).tolist() == [3] * 4
    # seeded: the same seed replays the same episodes, another seed draws others
    again = list(EpisodeSampler(labels, 4, 3, 5, 20, seed=3))
    assert all(np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query) for a, b in zip(eps, again))
    other = list(EpisodeSampler(labels, 4, 3, 5, 20, seed=4))
    assert any(not np.array_equal(a.support, b.support) for a, b in zip(eps, other))


def test_sampler_errors_name_the_numbers_and_the_class():
    labels = np.repeat(np.arange(3), [10, 10, 4])
    with pytest.raises(DataError, match=r"n_way=5 classes.*only 3 classes"):
        EpisodeSampler(labels, n_way=5, k_shot=1)
    data = from_arrays(np.zeros((24, 8, 8), np.uint8), labels, label_names=["cat", "dog", "eel"])
    with pytest.raises(DataError, match=r"Class 'eel' has 4 item\(s\).*1 \+ 5 = 6 of each class\."):
        episode_sampler(data, n_way=2, k_shot=1, n_query=5)
    with pytest.raises(ConfigError, match="k_shot"):
        EpisodeSampler(labels, n_way=2, k_shot=0)
    with pytest.raises(DataError, match="integer class labels"):
        EpisodeSampler(labels.astype(float), n_way=2, k_shot=1, n_query=1)
    regression = from_arrays(np.zeros((24, 2), np.float32), labels.astype(np.float32), task="regression")
    with pytest.raises(DataError, match="classification"):
        episode_sampler(regression, 2, 1, 1)


# ---------------------------------------------------------------- prototypes and the protocol


def test_prototypes_are_class_means_and_heads_fold_them_exactly():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 6)), np.repeat(np.arange(3), 10)[rng.permutation(30)]
    protos = prototypes(X, y)
    for c in range(3):
        np.testing.assert_allclose(protos[c], X[y == c].mean(0))
    Q = torch.from_numpy(rng.normal(size=(8, 6))).float()
    for distance in ("euclidean", "cosine"):
        head = prototype_head(protos, distance, scale=10.0)
        ref = torch.from_numpy(prototype_logits(Q.numpy(), protos, distance, scale=10.0)).float()
        got = head(Q).detach()
        # Euclidean: equal up to the per-row constant |x|^2, so the softmax is identical
        np.testing.assert_allclose(got.softmax(1), ref.softmax(1), atol=1e-5)
    with pytest.raises(DataError, match="No example of class 1"):
        prototypes(X[y != 1], y[y != 1], n_classes=3)


def test_evaluate_episodes_separable_chance_and_custom_classifier():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 30)
    separable = rng.normal(size=(180, 16)) + 8 * np.eye(16)[labels]
    good = evaluate_episodes(separable, labels, n_way=5, k_shot=1, n_query=5, episodes=100, seed=1)
    assert good.mean > 0.95 and len(good.accuracies) == 100
    assert (good.mean, good.ci_low, good.ci_high) == pytest.approx(mean_ci(good.accuracies))
    noise = rng.normal(size=(180, 16))
    chance = evaluate_episodes(noise, labels, n_way=5, k_shot=5, n_query=5, episodes=300, distance="euclidean")
    assert chance.ci_low - 0.05 < 0.2 < chance.ci_high + 0.05
    seen = []

    def classifier(support, support_labels, query, n_way):
        seen.append((support.shape, query.shape, n_way))
        return prototype_classifier("cosine")(support, support_labels, query, n_way)

    same = evaluate_episodes(separable, labels, 5, 1, n_query=5, episodes=100, seed=1, classifier=classifier)
    np.testing.assert_array_equal(same.accuracies, good.accuracies)  # same seed: same episodes
    assert seen[0] == ((5, 16), (25, 16), 5)
    with pytest.raises(DataError, match="n_way=7"):
        evaluate_episodes(separable, labels, n_way=7, k_shot=1)


# ---------------------------------------------------------------- protonet


def test_protonet_head_is_the_class_means_of_training_features(tiny_images):
    from transferkit.data.cache import extract_features

    backbone = load_backbone("small-cnn:16")
    model, history = make_strategy("protonet", {"distance": "euclidean"}).fit(backbone, tiny_images, None, _trainer())
    feats = extract_features(backbone, tiny_images)
    means = np.stack([feats[tiny_images.targets == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(model.head[-1].weight.detach().numpy() / 2, means, rtol=1e-5, atol=1e-6)
    assert history[-1]["prototypes"] == 3
    assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("name, options", [
    ("protonet", {"distance": "euclidean", "episodic": True, "episodes_per_epoch": 2}),
    ("maml", {"first_order": True, "episodes_per_epoch": 2, "meta_batch": 2, "adapt_steps": 2}),
    ("maml", {"anil": True, "episodes_per_epoch": 2, "meta_batch": 2}),
])
def test_variants_train_and_round_trip(name, options, tiny_images, tmp_path):
    backbone = load_backbone("small-cnn:16")
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    model, history = make_strategy(name, options).fit(backbone, tiny_images, None, _trainer(epochs=1, lr=1e-2))
    assert any(not torch.equal(p, before[n]) for n, p in model.backbone.named_parameters()), "backbone never trained"
    assert history[0]["episode_shape"] == "3x5+5"  # n_way clamped to the 3 classes; queries = min(5, 12 - 5)
    out = predict_outputs(model, tiny_images)
    assert out.shape == (36, 3)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": name}})
    np.testing.assert_allclose(load(tmp_path / "b").outputs(tiny_images.items), out, atol=1e-5)


def test_episodic_protonet_recomputes_prototypes_with_the_tuned_backbone(tiny_images):
    from transferkit.data.cache import compute_features

    backbone = load_backbone("small-cnn:16")
    strategy = make_strategy("protonet", {"distance": "euclidean", "episodic": True, "episodes_per_epoch": 3})
    model, _ = strategy.fit(backbone, tiny_images, None, _trainer(epochs=1, lr=1e-2))
    feats = compute_features(model.backbone, tiny_images)
    means = np.stack([feats[tiny_images.targets == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(model.head[-1].weight.detach().numpy() / 2, means, rtol=1e-4, atol=1e-5)


def test_bad_options_and_impossible_episodes(tiny_images):
    with pytest.raises(ConfigError, match="distance.*cosine, euclidean.*'manhattan'"):
        make_strategy("protonet", {"distance": "manhattan"})
    with pytest.raises(ConfigError, match="n_way"):
        make_strategy("maml", {"n_way": 1})
    with pytest.raises(ConfigError, match="inner_lr"):
        make_strategy("maml", {"inner_lr": 0})
    backbone = load_backbone("small-cnn:16")
    with pytest.raises(DataError, match="n_way=4 classes.*only 3"):
        make_strategy("maml", {"n_way": 4}).fit(backbone, tiny_images, None, _trainer())
    with pytest.raises(DataError, match="Class 'square' has 12 item.*10 \\+ 5 = 15"):
        make_strategy("protonet", {"episodic": True, "k_shot": 10, "n_query": 5}).fit(
            backbone, tiny_images, None, _trainer())
    regression = from_arrays(np.asarray(tiny_images.items), np.zeros(36, np.float32), task="regression")
    with pytest.raises(ConfigError, match="supports classification tasks; 'arrays' is regression"):
        make_strategy("protonet").fit(backbone, regression, None, _trainer())


# ---------------------------------------------------------------- MAML's meta-gradient


class TinyTanh(Backbone):
    """A one-layer tanh feature map: smooth, so finite differences of the meta-loss are exact enough."""

    modality = "tabular"

    def __init__(self, d_in: int = 4, d: int = 5):
        super().__init__()
        self.lin = nn.Linear(d_in, d)
        self.num_features, self.spec = d, "tiny-tanh"

    def forward_features(self, x):
        return torch.tanh(self.lin(x))

    def layer_groups(self):
        return [list(self.lin.parameters())]


@pytest.mark.parametrize("anil", [False, True])
def test_second_order_meta_gradient_is_exact_and_differs_from_first_order(anil):
    torch.manual_seed(0)
    model = TransferModel(TinyTanh(), linear_head(5, 3), "classification", None).double()
    xs, xq = torch.randn(6, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    ys, yq = torch.arange(3).repeat(2), torch.arange(3).repeat(3)
    body = list(model.backbone.parameters())

    def meta_loss(first_order):
        return maml_episode_loss(model, (xs, ys), (xq, yq), 3, inner_steps=2, inner_lr=0.5,
                                 first_order=first_order, anil=anil)[0]

    second = torch.autograd.grad(meta_loss(False), body)
    first = torch.autograd.grad(meta_loss(True), body)
    direction = [torch.randn_like(p) for p in body]
    eps = 1e-6

    def shifted_loss(step):
        with torch.no_grad():
            for p, v in zip(body, direction):
                p.add_(step * v)
        return float(meta_loss(True).detach())  # the value does not depend on the order; only gradients do

    numeric = (shifted_loss(eps) - shifted_loss(-2 * eps)) / (2 * eps)

    def along(grads):
        return float(sum((g * v).sum() for g, v in zip(grads, direction)))

    assert along(second) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    assert abs(along(first) - numeric) > 1e-3 * max(abs(numeric), 1e-3)
    diff = torch.cat([(a - b).ravel() for a, b in zip(second, first)]).norm()
    assert diff > 1e-3 * torch.cat([a.ravel() for a in second]).norm()


# ---------------------------------------------------------------- end to end: EfficientNet-Lite0 on Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_lite0():
    from transferkit.data import load_dataset, sample_per_class
    from transferkit.errors import MissingWeightsError

    try:
        train, test = load_dataset("fashion-mnist")
        backbone = load_backbone("efficientnet-lite:0", image_size=32)
    except (DataError, MissingWeightsError, ImportError) as exc:
        pytest.skip(f"Fashion-MNIST or EfficientNet-Lite0 not installed: {exc}")
    return backbone, sample_per_class(train, 10, seed=0), sample_per_class(test, 10, seed=0)


def _accuracy(model, strategy, data):
    return float((strategy.predict(model, data).argmax(1) == data.targets).mean())


def test_frozen_protonet_on_lite0_is_well_above_chance(fashion_lite0):
    from transferkit.data.cache import extract_features

    backbone, train, test = fashion_lite0
    strategy = make_strategy("protonet")
    model, _ = strategy.fit(backbone, train, None, _trainer())
    acc = _accuracy(model, strategy, test)
    assert acc > 0.45, acc  # 10 classes, 10 shots each: chance is 0.10
    feats = extract_features(backbone, test)
    result = evaluate_episodes(feats, test.targets, n_way=5, k_shot=5, n_query=5, episodes=100)
    assert result.ci_low > 0.5, str(result)  # 5-way: chance is 0.20


def test_anil_on_lite0_beats_chance(fashion_lite0):
    _, train, test = fashion_lite0
    strategy = make_strategy("maml", {"anil": True, "inner_lr": 0.5, "adapt_steps": 30, "episodes_per_epoch": 1,
                                      "meta_batch": 1, "k_shot": 3, "n_query": 3})
    model, history = strategy.fit(load_backbone("efficientnet-lite:0", image_size=32), train, None, _trainer(epochs=1))
    assert _accuracy(model, strategy, test) > 0.3
    assert history[0]["episode_shape"] == "5x3+3"
