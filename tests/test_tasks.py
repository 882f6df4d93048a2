"""The Task contract: the registry, the built-in tasks, and a new per-token task added from outside.

The last test is the contract's proof: a word-tagging task and its head are
defined here, through ``transferkit.tasks`` only, and fit, save, reload and
predict run through the unchanged loop, bundle and strategy code.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.tasks import (HEADS, IGNORE_INDEX, TASKS, Task, build_head, describe_head, get_task, rebuild_head,
                               register_head, register_task)


def test_builtin_tasks_are_registered_with_their_metrics():
    assert {"classification", "multilabel", "regression"} <= set(TASKS.names())
    assert get_task("classification").primary_metric == "accuracy"
    assert get_task("multilabel").primary_metric == "macro_f1"
    assert get_task("regression").primary_metric == "r2"
    with pytest.raises(UnknownNameError, match="Did you mean 'regression'"):
        get_task("regresion")


@pytest.mark.parametrize("name, outputs, decoded", [
    ("classification", np.array([[0.2, 0.8], [0.9, 0.1]]), ["b", "a"]),
    ("multilabel", np.array([[0.7, 0.6], [0.1, 0.2]]), [["a", "b"], []]),
    ("regression", np.array([1.5, -2.0]), [1.5, -2.0]),
])
def test_decode_and_records_agree(name, outputs, decoded):
    task = get_task(name)
    assert task.decode(outputs, ["a", "b"]) == decoded
    records = task.records(outputs, ["a", "b"])
    assert len(records) == 2
    key = {"classification": "label", "multilabel": "labels", "regression": "value"}[name]
    assert [r[key] for r in records] == decoded


def test_postprocess_matches_the_export_postprocess():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    for name in ("classification", "multilabel"):
        task = get_task(name)
        np.testing.assert_allclose(task.postprocess(logits), task.apply_export_postprocess(logits.numpy()), atol=1e-6)
    assert get_task("classification").export_postprocess() == "softmax"


def test_targets_of_the_wrong_shape_are_refused_naming_the_data():
    with pytest.raises(DataError, match="toy: multi-label targets must be a 0/1 matrix"):
        TaskData(["a", "b"], np.array([1, 0]), "text", "multilabel", ["x", "y"], name="toy")
    with pytest.raises(DataError, match="toy: target of row 1 is NaN"):
        TaskData(["a", "b"], np.array([1.0, np.nan]), "text", "regression", name="toy")


def test_linear_head_round_trips_through_the_registry():
    head = build_head("linear", 8, 3, dropout=0.2, normalize=True)
    again = rebuild_head(describe_head(head))
    assert describe_head(again) == describe_head(head) == {
        "in_features": 8, "out_features": 3, "dropout": 0.2, "normalize": True, "kind": "linear"}
    # bundles written before heads had kinds rebuild as linear heads
    assert isinstance(rebuild_head({"in_features": 4, "out_features": 2})[-1], nn.Linear)


# -- a per-token task defined outside the library ---------------------------------------------


class WordTagging(Task):
    """One label per word; the first sub-token of each word carries it (Hugging Face's run_ner recipe)."""

    name = "word-tagging"
    primary_metric = "word_accuracy"
    feature_kind = "sequence"
    head = "token-linear"
    target_kind = "per-token"

    def check_targets(self, targets, label_names, where):
        out = np.empty(len(targets), dtype=object)
        for i, row in enumerate(targets):
            out[i] = np.asarray(row, dtype=np.int64)
        return out

    def target_bytes(self, targets):
        return b"|".join(np.asarray(t, np.int64).tobytes() for t in targets)

    @staticmethod
    def _first_subtokens(word_ids: torch.Tensor) -> torch.Tensor:
        previous = torch.cat([torch.full_like(word_ids[:, :1], -1), word_ids[:, :-1]], dim=1)
        return (word_ids >= 0) & (word_ids != previous)

    def collate_targets(self, targets, inputs):
        word_ids = inputs["word_ids"]
        labels = torch.full(word_ids.shape, IGNORE_INDEX, dtype=torch.long)
        first = self._first_subtokens(word_ids)
        for b, row in enumerate(targets):
            cols = first[b].nonzero().flatten()
            labels[b, cols] = torch.as_tensor(row[word_ids[b, cols].numpy()])
        return labels

    def loss(self, outputs, targets, *, label_smoothing=0.0):
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def postprocess(self, outputs, inputs=None):
        probs, first = outputs.float().softmax(-1).cpu(), self._first_subtokens(inputs["word_ids"].cpu())
        out = np.empty(len(probs), dtype=object)
        for b in range(len(probs)):
            out[b] = probs[b][first[b]].numpy()
        return out

    def concat(self, parts, num_outputs):
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)

    def decode(self, outputs, label_names, items=None):
        return [[label_names[i] for i in row.argmax(1)] for row in outputs]

    def metrics(self, y_true, outputs, label_names=None):
        right = [np.asarray(t) == np.asarray(p).argmax(1) for t, p in zip(y_true, outputs)]
        return {"word_accuracy": float(np.concatenate(right).mean()), "n": len(right)}


def _token_head(in_features, out_features, *, dropout=0.0):
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))


@pytest.fixture(scope="module")
def word_tagging():
    if "word-tagging" not in TASKS:
        register_task(WordTagging)
        register_head("token-linear", _token_head,
                      lambda h: {"in_features": h[-1].in_features, "out_features": h[-1].out_features,
                                 "dropout": h[0].p},
                      lambda d: _token_head(d["in_features"], d["out_features"], dropout=d["dropout"]))
    yield TASKS.get("word-tagging")


def _sentences(n: int, seed: int):
    """Words from three groups; a word's label is its group, so the tags are learnable from the words."""
    groups = [["cat", "dog", "horse", "mouse"], ["runs", "sleeps", "eats", "jumps"], ["quickly", "slowly", "often"]]
    rng = np.random.default_rng(seed)
    items, targets = [], []
    for _ in range(n):
        labels = rng.integers(0, 3, size=rng.integers(2, 7))
        items.append([groups[g][rng.integers(len(groups[g]))] for g in labels])
        targets.append(labels)
    return items, targets


def test_a_new_per_token_task_fits_saves_reloads_and_predicts(word_tagging, tiny_bert, tmp_path):
    from transferkit.backbones import load_backbone
    from transferkit.export.bundle import load, save_bundle
    from transferkit.strategies import make_strategy
    from transferkit.strategies.base import predict_outputs
    from transferkit.training import TrainConfig, Trainer

    names = ["NOUN", "VERB", "ADV"]
    items, targets = _sentences(48, seed=0)
    train = TaskData(items, targets, "text", "word-tagging", names, name="tags")
    test_items, test_targets = _sentences(16, seed=1)
    test = TaskData(test_items, test_targets, "text", "word-tagging", names, name="tags-test")
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=16)
    strategy = make_strategy("finetune")
    trainer = Trainer(TrainConfig(epochs=8, lr=3e-3, head_lr=1e-2, batch_size=8, progress=False))
    model, history = strategy.fit(backbone, train, test, trainer)

    out = predict_outputs(model, test)
    assert [len(o) for o in out] == [len(words) for words in test_items]  # one row per word, not per sub-token
    accuracy = word_tagging.metrics(test.targets, out)["word_accuracy"]
    assert accuracy > 0.8, history  # chance is about 1/3
    assert "val_word_accuracy" in history[-1]

    save_bundle(model, tmp_path / "b", {"strategy": {"name": "finetune"}, "task": "word-tagging"})
    predictor = load(tmp_path / "b")
    assert predictor.task == "word-tagging"
    predicted = predictor.predict(test_items)
    assert predicted == word_tagging.decode(out, names)
    assert all(len(p) == len(w) for p, w in zip(predicted, test_items))


def test_a_sequence_task_refuses_a_backbone_with_pooled_features_only(word_tagging):
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy

    data = TaskData([["a"]], [[0]], "image", "word-tagging", ["X"], name="tags")
    with pytest.raises(ConfigError, match="gives pooled features; the task needs sequence features"):
        make_strategy("finetune").check_data(load_backbone("small-cnn:16"), data)


def test_strategies_declare_the_tasks_they_support(word_tagging):
    from transferkit.strategies import make_strategy

    data = TaskData([["a"]], [[0]], "text", "word-tagging", ["X"], name="tags")
    with pytest.raises(ConfigError, match="Strategy 'protonet' supports classification "
                                          "tasks; 'tags' is word-tagging"):
        make_strategy("protonet").check_data(None, data)
