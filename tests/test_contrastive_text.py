"""``contrastive-text``: pair building, batches, errors, and a real MiniLM end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.data import from_arrays
from transferkit.errors import ConfigError, DataError
from transferkit.strategies import make_strategy
from transferkit.strategies.contrastive_text import PairBatches, build_pairs, check_pairs, embed, pair_targets
from transferkit.training import TrainConfig, Trainer

Y = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def test_pair_targets_are_one_exactly_for_the_same_class():
    T = pair_targets(Y, "classification")
    assert T.shape == (8, 8)
    np.testing.assert_array_equal(T, (Y[:, None] == Y[None, :]).astype(np.float32))


def test_build_pairs_counts_classes_and_seeding():
    left, right, t = build_pairs(Y, "classification", 101, seed=3)
    assert len(left) == len(right) == len(t) == 101
    assert (left < right).all()  # no self-pairs (zero loss), each unordered pair once
    assert (t[0::2] == 1).all() and (t[1::2] == 0).all()  # alternately positive and negative
    assert (Y[left[t == 1]] == Y[right[t == 1]]).all()
    assert (Y[left[t == 0]] != Y[right[t == 0]]).all()
    # 51 positives cycle over the 3 + 1 + 3 = 7 same-class pairs: every one is used
    assert len(set(zip(left[t == 1], right[t == 1]))) == 7
    again = build_pairs(Y, "classification", 101, seed=3)
    other = build_pairs(Y, "classification", 101, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((left, right, t), again))
    assert not all(np.array_equal(a, b) for a, b in zip((left, right, t), other))


def test_multilabel_pairs_any_shared_label_or_jaccard():
    Y3 = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    anyT = pair_targets(Y3, "multilabel", "any")
    assert anyT[0, 1] == 1 and anyT[0, 2] == 0 and anyT[1, 2] == 0 and anyT[3, 4] == 0
    jac = pair_targets(Y3, "multilabel", "jaccard")
    assert jac[0, 1] == pytest.approx(0.5) and jac[0, 2] == 0 and jac[2, 2] == 1
    assert jac[3, 4] == 1  # two empty label sets are the same set
    left, right, t = build_pairs(Y3, "multilabel", 10, seed=0, rule="jaccard")
    assert (t[0::2] > 0).all() and (t[1::2] == 0).all()
    assert np.allclose(t, jac[left, right])


def _tokens(n: int, width: int = 6) -> dict:
    ids = torch.arange(n * width).view(n, width)
    mask = torch.ones(n, width, dtype=torch.long)
    mask[:, width - 2:] = 0  # every row has two padding columns: batches are cut to 4
    return {"input_ids": ids, "attention_mask": mask}


def test_in_batch_collate_uses_every_pair_of_distinct_texts_once():
    ds = PairBatches(_tokens(8), Y, "classification", 32, rule="any", balance=True)
    batch = ds.collate([0, 8, 3, 5, 13])  # slot 8 is text 0 again, 13 is text 5: three distinct texts
    assert batch["inputs"]["input_ids"].shape == (3, 4)
    assert len(batch["left"]) == 3  # 3 * 2 / 2
    assert batch["target"].tolist() == [0.0, 0.0, 0.0]
    batch = ds.collate([0, 1, 3, 4, 5])  # texts 0,1 (class 0), 3,4 (class 1), 5 (class 2)
    assert len(batch["target"]) == 10 and int(batch["target"].sum()) == 2
    w = batch["weight"]
    assert w.sum().item() == pytest.approx(1.0)
    assert w[batch["target"] > 0].sum().item() == pytest.approx(0.5)  # positives weigh as much as negatives


def test_pairs_collate_encodes_a_shared_text_once_and_maps_it_back():
    pairs = (np.array([0, 0, 3]), np.array([1, 3, 4]), np.array([1.0, 0.0, 1.0], dtype=np.float32))
    ds = PairBatches(_tokens(8), Y, "classification", 3, rule="any", balance=False, pairs=pairs)
    batch = ds.collate([0, 1, 2])
    ids = batch["inputs"]["input_ids"][:, 0] // 6  # the text each encoded row came from
    assert sorted(ids.tolist()) == [0, 1, 3, 4]
    assert ids[batch["left"]].tolist() == [0, 0, 3] and ids[batch["right"]].tolist() == [1, 3, 4]
    assert torch.allclose(batch["weight"], torch.full((3,), 1 / 3))


def test_refuses_data_without_positive_or_negative_pairs():
    with pytest.raises(DataError, match="at least 2 classes"):
        check_pairs(from_arrays(["a", "b", "c"], ["x", "x", "x"]))
    with pytest.raises(DataError, match="no positive pair"):
        check_pairs(from_arrays(["a", "b", "c"], ["x", "y", "z"]))
    check_pairs(from_arrays(["a", "b", "c"], ["x", "x", "y"]))  # a one-example class: negatives only, allowed
    with pytest.raises(ConfigError, match="classification or multilabel"):
        check_pairs(from_arrays(["a", "b"], [0.5, 1.5], task="regression"))


@pytest.mark.parametrize("options, message", [
    ({"pairing": "triplets"}, "in-batch, pairs"), ({"loss": "hinge"}, "cosine-mse, contrastive"),
    ({"pair_rule": "all"}, "any, jaccard"), ({"max_steps": 0}, "max_steps"), ({"margin": 0}, "margin"),
    ({"head_C": -1.0}, "head_C"),
])
def test_config_errors_name_the_valid_choices(options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy("contrastive-text", options)


@pytest.mark.parametrize("pairing", ["in-batch", "pairs"])
def test_step_budget_is_max_steps_whatever_the_epochs(pairing, tiny_bert):
    from conftest import tiny_texts

    texts, labels = tiny_texts(6)
    data = from_arrays(texts, labels)
    strategy = make_strategy("contrastive-text", {"max_steps": 5, "pairing": pairing})
    calls = []
    step = strategy.step
    strategy.step = lambda model, batch, ctx: calls.append(len(batch["target"])) or step(model, batch, ctx)
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=12)
    model, history = strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=2, batch_size=4, progress=False)))
    assert len(calls) == 6  # ceil(5 / 2) steps per epoch, 2 epochs
    assert calls[0] == (6 if pairing == "in-batch" else 4)  # 4 texts -> 6 pairs; or 4 pairs
    assert history[-1]["steps"] == 6 and "C" in history[-1]
    assert strategy.predict(model, data).shape == (12, 2)


def test_multilabel_trains_and_gives_one_probability_per_label(tiny_bert):
    texts = [f"text {i} about {w}" for i, w in enumerate(["cats", "dogs", "cats and dogs", "fish"] * 3)]
    Y3 = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 3, dtype=np.float32)
    data = from_arrays(texts, Y3, task="multilabel", label_names=["cat", "dog", "fish"])
    strategy = make_strategy("contrastive-text", {"max_steps": 2, "pair_rule": "jaccard", "loss": "contrastive"})
    model, _ = strategy.fit(load_backbone(f"hf:{tiny_bert}", max_length=12), data, None,
                            Trainer(TrainConfig(batch_size=6, progress=False)))
    out = strategy.predict(model, data)
    assert out.shape == (12, 3) and ((out >= 0) & (out <= 1)).all()


def _class_gap(X: np.ndarray, y: np.ndarray) -> float:
    """Mean same-class cosine minus mean different-class cosine (distinct items)."""
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = Z @ Z.T
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    return float(C[same].mean() - C[y[:, None] != y[None, :]].mean())


def test_minilm_on_debian_packages_pulls_classes_apart(minilm_path):
    from transferkit.data import load_dataset, sample_per_class

    train, test = load_dataset("debian-packages", sections=["games", "fonts", "mail", "science"])
    draw = sample_per_class(train, 4, seed=0)
    backbone = load_backbone(f"sentence:{minilm_path}", max_length=32)
    before = _class_gap(embed(backbone, draw.items), draw.targets)
    strategy = make_strategy("contrastive-text", {"max_steps": 6})
    model, history = strategy.fit(backbone, draw, None,
                                  Trainer(TrainConfig(batch_size=16, lr=5e-5, progress=False, seed=0)))
    after = _class_gap(embed(model.backbone, draw.items), draw.targets)
    assert after > before + 0.1, (before, after)  # measured 0.19 -> 0.39
    assert history[0]["train_loss"] > 0
    probs = strategy.predict(model, test.subset(range(0, len(test), 8)))
    assert probs.shape[1] == 4 and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("train_table", [False, True])
def test_token_embedding_table_frozen_unless_asked(train_table, tiny_bert):
    from conftest import tiny_texts

    data = from_arrays(*tiny_texts(4))
    strategy = make_strategy("contrastive-text", {"max_steps": 2, "train_token_embeddings": train_table})
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=12)
    table = backbone.model.get_input_embeddings().weight
    before, layer = table.detach().clone(), backbone.model.encoder.layer[0].attention.self.query.weight
    layer_before = layer.detach().clone()
    strategy.fit(backbone, data, None, Trainer(TrainConfig(batch_size=8, lr=1e-2, progress=False)))
    assert torch.equal(table, before) != train_table
    assert not torch.equal(layer, layer_before)
