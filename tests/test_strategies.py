"""Conformance tests generated from the strategy registry, plus the fine-tuning options.

Every registered strategy is trained briefly on a tiny real architecture
(``small-cnn:16``, randomly initialised) and must give a model whose outputs
have the right shape, a history, and a bundle that reloads to the same outputs.
A new strategy is tested the moment it is registered.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import STRATEGIES, make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.tasks import TASKS
from transferkit.training import TrainConfig, Trainer

ALL = STRATEGIES.names()


def test_registry_has_the_core_strategies():
    assert {"linear-probe", "finetune", "gradual-unfreeze", "scratch"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_config_defaults_validate_and_describe(name):
    cls = STRATEGIES.get(name)
    s = cls()
    assert dataclasses.is_dataclass(s.config)
    for field, _default, help_text in cls.Config.describe():
        assert help_text, f"{name}.{field} has no help text"
    with pytest.raises(ConfigError, match="Valid options"):
        cls({"no_such_option": 1})


def _setup(strategy, data, request):
    """The data and backbone a strategy's tags ask for: text for text-only strategies, a target domain, ..."""
    if "image" in strategy.modalities:
        backbone = load_backbone("small-cnn:16")
    else:  # text-only strategies (prompt and prefix tuning): a tiny randomly initialised BERT
        from conftest import tiny_texts

        texts, _ = tiny_texts()
        reps = -(-len(data) // len(texts))
        data = dataclasses.replace(data, items=(texts * reps)[:len(data)], modality="text", origin=None,
                                   _fingerprint=None)
        backbone = load_backbone(f"hf:{request.getfixturevalue('tiny_bert')}", max_length=16)
    if strategy.needs_target:  # domain adaptation: an unlabelled, shifted target (inverted images)
        from transferkit.data import from_arrays

        strategy.set_target(from_arrays(255 - np.asarray(tiny_images_array())))
    if strategy.needs_sensitive:  # fairness mitigation: a two-group attribute
        data = dataclasses.replace(data, sensitive=np.arange(len(data)) % 2, sensitive_name="group")
    if strategy.min_backbones > 1:  # stacking: several source models side by side
        backbone = load_backbone("concat:small-cnn:16+small-cnn:16")
    return data, backbone


def tiny_images_array():
    from conftest import shapes_images

    return shapes_images()[0]


#: strategies that train image classification (the CRF tags words only: the per-task test covers it)
CLASSIFIERS = [n for n in ALL if STRATEGIES.get(n).tasks is None or "classification" in STRATEGIES.get(n).tasks]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_strategy_trains_and_bundle_round_trips(name, tiny_images, tmp_path, request):
    strategy = make_strategy(name)
    data, backbone = _setup(strategy, tiny_images, request)
    model, history = strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=2, progress=False)))
    out = predict_outputs(model, data)
    assert out.shape == (len(data), 3)
    assert np.allclose(out.sum(1), 1, atol=1e-5)
    assert history and "epoch" in history[0]
    save_bundle(model, tmp_path / "b", {"strategy": {"name": name}})
    again = load(tmp_path / "b").outputs(data.items)
    np.testing.assert_allclose(again, out, atol=1e-5)


def _task_data(task: str, images):
    from transferkit.data import from_arrays

    y = np.asarray(images.targets)
    if task == "token-classification":  # a sentence per image: its class word is tagged, the rest is O
        from transferkit.data.token_spans import token_data

        words = [["the", "square" if c == 0 else "bar" if c == 1 else "dot", "is", "here"] for c in y]
        tags = [["O", "B-SHAPE" if c < 2 else "O", "O", "O"] for c in y]
        return token_data(words, tags, name="shapes-tagged")
    if task == "regression":
        return from_arrays(np.asarray(images.items), (y == 1).astype(np.float32) + 0.5, task="regression")
    multi = np.stack([y == 0, y == 1], axis=1).astype(np.float32)
    return from_arrays(np.asarray(images.items), multi, task="multilabel", label_names=["square", "bar"])


@pytest.mark.parametrize("task", [t for t in TASKS.names() if t != "classification"])
@pytest.mark.parametrize("name", ALL)
def test_strategy_trains_each_task_it_declares_and_refuses_the_others(name, task, tiny_images, tmp_path, request):
    """Conformance over strategies x tasks: a declared task trains and reloads; an undeclared one is refused."""
    strategy = make_strategy(name)
    if task in ("text-generation", "speech-recognition"):
        return _check_generative(strategy, task, request, tmp_path)
    if TASKS.get(task).feature_kind == "pyramid":
        return _check_dense(strategy, task, tmp_path)
    if task == "token-classification":  # word lists: a text backbone with a fast tokenizer
        data, backbone = _task_data(task, tiny_images), load_backbone(f"hf:{request.getfixturevalue('tiny_bert')}",
                                                                      max_length=16)
    else:
        data, backbone = _setup(strategy, _task_data(task, tiny_images), request)
    if strategy.tasks is not None and task not in strategy.tasks:
        with pytest.raises(ConfigError, match=f"Strategy '{name}' supports .* tasks; .* is {task}"):
            strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=1, progress=False)))
        return
    model, _ = strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=1, progress=False)))
    out = predict_outputs(model, data)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": name}})
    again = load(tmp_path / "b").outputs(data.items)
    if task == "token-classification":  # per sentence: a probability row per word
        assert [o.shape for o in out] == [(len(w), len(data.label_names)) for w in data.items]
        np.testing.assert_allclose(np.concatenate(list(out)).sum(1), 1, atol=1e-5)
        np.testing.assert_allclose(np.concatenate(list(again)), np.concatenate(list(out)), atol=1e-5)
        return
    assert out.shape == ((len(data),) if task == "regression" else (len(data), 2))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(again, out, atol=1e-5)


def _check_generative(strategy, task: str, request, tmp_path) -> None:
    """Generative strategies train the backbone's own decoder (a causal LM's output layer for text-generation,
    Whisper's decoder for speech-recognition) and reload it; the others refuse, naming the task."""
    if task == "text-generation":
        from transferkit.data.adapters_generation import from_pairs

        data = from_pairs(["Colour of the sky?", "Colour of grass?"], ["blue", "green"])
        # SmolLM2's template adds a system turn
        backbone = load_backbone(f"causal:{request.getfixturevalue('tiny_llama')}", max_length=64)
        inputs = [{"prompt": "Colour of the sky?"}, "Colour of grass?"]
    else:
        from conftest import speech_pairs

        data = speech_pairs(tmp_path / "clips")
        backbone = load_backbone(f"whisper:{request.getfixturevalue('tiny_whisper_asr')}", decoder=True)
        inputs = data.items
    declared = strategy.tasks is not None and task in strategy.tasks
    if strategy.generative and data.modality not in strategy.modalities:  # prompt-tuning generates text only
        with pytest.raises(ConfigError, match=f"supports .* data; '{data.name}' is {data.modality}"):
            strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=1, progress=False)))
        return
    if not (strategy.generative and strategy.tasks is None) and not declared:
        with pytest.raises(ConfigError, match=task):
            strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=1, progress=False)))
        return
    model, _ = strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=1, progress=False)))
    model.generation = {"max_new_tokens": 3}
    out = predict_outputs(model, data)
    assert out.shape == (2,) and all(isinstance(t, str) for t in out)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": strategy.name}})
    assert load(tmp_path / "b").predict(inputs) == list(out)


def _check_dense(strategy, task: str, tmp_path) -> None:
    """Strategies tagged dense train a detector or segmenter on a random Lite0 pyramid and reload it; the others
    refuse, naming the strategies that can."""
    from conftest import box_scenes, tiny_pyramid_backbone

    data = box_scenes(4, size=32, task=task)
    if not strategy.dense or (strategy.tasks is not None and task not in strategy.tasks):
        with pytest.raises(ConfigError, match=f"Strategies for {task}: finetune, gradual-unfreeze, lora, scratch"):
            strategy.fit(tiny_pyramid_backbone(32), data, None, Trainer(TrainConfig(epochs=1, progress=False)))
        return
    model, _ = strategy.fit(tiny_pyramid_backbone(32), data, None,
                            Trainer(TrainConfig(epochs=1, batch_size=2, progress=False)))
    out = predict_outputs(model, data)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": strategy.name}})
    again = load(tmp_path / "b").outputs(data.items)
    assert len(out) == len(again) == len(data)
    for a, b in zip(out, again):
        if isinstance(a, dict):  # detection, instance segmentation: boxes (and masks) per image
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
            np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-5)
            assert a.get("masks") == b.get("masks")
        else:
            assert a.shape == (32, 32) and np.array_equal(a, b)


def test_unknown_strategy_suggests_the_close_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'finetune'"):
        make_strategy("fintune")


@pytest.mark.parametrize("options, message", [
    ({"lr_decay": 0}, "lr_decay"), ({"dropout": 1.5}, "dropout"), ({"train_last": -1}, "train_last"),
    ({"freeze": ["a"], "train_only": ["b"]}, "not both"),
])
def test_finetune_config_out_of_range(options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy("finetune", options)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_train_last_k_changes_only_the_top_groups(tiny_images):
    backbone = load_backbone("small-cnn:16")
    groups = backbone.layer_groups()
    top = {id(p) for p in groups[-1]}
    strategy = make_strategy("finetune", {"train_last": 1})
    model = strategy.prepare(backbone, tiny_images)
    before = _snapshot(model)
    Trainer(TrainConfig(epochs=2, progress=False, lr=1e-2)).fit(strategy, model, tiny_images, None)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    names = dict(model.named_parameters())
    assert any(n.startswith("head.") for n in changed)
    assert changed, "nothing trained"
    assert all(n.startswith("head.") or id(names[n]) in top for n in changed)
    # frozen BatchNorm statistics stayed put, too
    bn = model.backbone.blocks[0][0][1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_freeze_by_name_pattern(tiny_images):
    strategy = make_strategy("finetune", {"freeze": ["blocks.0.*"]})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("blocks.0.") for n in frozen)
    with pytest.raises(ConfigError, match="matches no parameter"):
        make_strategy("finetune", {"freeze": ["nope.*"]}).prepare(load_backbone("small-cnn:16"), tiny_images)


def test_discriminative_learning_rates_decay_from_the_top(tiny_images):
    strategy = make_strategy("finetune", {"lr_decay": 0.5})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    groups = strategy.param_groups(model, lr=1e-3, head_lr=1e-2)
    lrs = [g["lr"] for g in groups]
    assert lrs[-1] == 1e-2 and lrs[-2] == pytest.approx(1e-3) and lrs[-3] == pytest.approx(5e-4)
    assert lrs[0] == pytest.approx(1e-3 * 0.5 ** (len(groups) - 2))


def test_gradual_unfreeze_opens_groups_top_down(tiny_images):
    strategy = make_strategy("gradual-unfreeze", {"head_epochs": 1, "unfreeze_every": 1})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    groups = model.backbone.layer_groups()
    trainable = []
    for epoch in range(len(groups) + 1):
        strategy.on_epoch_start(model, epoch, len(groups) + 1)
        trainable.append([all(p.requires_grad for p in g) for g in groups])
    assert trainable[0] == [False] * len(groups)
    assert trainable[1] == [False] * (len(groups) - 1) + [True]
    assert trainable[-1] == [True] * len(groups)


def test_scratch_variants_pick_by_modality(tiny_images):
    s = make_strategy("scratch")
    assert s.variant(tiny_images) == "small-cnn"
    with pytest.raises(ConfigError, match="does not apply"):
        make_strategy("scratch", {"variant": "tfidf"}).variant(tiny_images)
    with pytest.raises(ConfigError, match="variant"):
        make_strategy("scratch", {"variant": "xgboost"})


def test_scratch_tfidf_learns_text_and_matches_sklearn(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from conftest import tiny_texts
    from transferkit.data import from_arrays

    texts, labels = tiny_texts()
    data = from_arrays(texts, labels)
    model, _ = make_strategy("scratch").fit(None, data, None, Trainer(TrainConfig(progress=False)))
    ref = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts).transform(texts[:3]).toarray()
    ours = model.backbone.forward_features(model.backbone.preprocess(texts[:3])).numpy()
    vocab = model.backbone.vocabulary
    ref_vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts)
    cols = [vocab[t] for t in ref_vec.get_feature_names_out()]
    np.testing.assert_allclose(ours[:, cols], ref, atol=1e-5)
    assert (predict_outputs(model, data).argmax(1) == data.targets).mean() == 1.0
    save_bundle(model, tmp_path / "tfidf", {})
    assert load(tmp_path / "tfidf").predict(["a chess puzzle game"]) == ["games"]


@pytest.mark.parametrize("name", ["linear-probe", "finetune"])
def test_regression_and_multilabel_tasks_train_and_reload(name, tmp_path):
    """Besides single-label classification: regression (MSE) and multi-label (per-label sigmoid)."""
    import transferkit as tk
    from conftest import shapes_images
    from transferkit.data import from_arrays

    X, y = shapes_images(n_per_class=10)
    brightness = X.reshape(len(X), -1).mean(1).astype(np.float32) / 255.0
    reg = from_arrays(X, brightness, task="regression")
    r = tk.fit("small-cnn:16", reg, name, test_data=reg, epochs=3, val_fraction=0.0, out=tmp_path / "reg",
               progress=False)
    assert {"mse", "mae", "r2"} <= set(r.metrics)
    values = tk.load(tmp_path / "reg").predict(list(X[:3]))
    assert all(isinstance(v, float) for v in values)

    multi = np.stack([y == 0, y == 1], axis=1).astype(np.float32)  # "square", "bar"; noise has neither
    ml = from_arrays(X, multi, task="multilabel", label_names=["square", "bar"])
    r = tk.fit("small-cnn:16", ml, name, test_data=ml, epochs=3, val_fraction=0.0, out=tmp_path / "ml",
               progress=False)
    assert {"micro_f1", "macro_f1", "mAP"} <= set(r.metrics)
    preds = tk.load(tmp_path / "ml").predict(list(X[:3]))
    assert all(set(p) <= {"square", "bar"} for p in preds)


@pytest.mark.parametrize("name", ["finetune", "linear-probe", "lora"])
def test_strategies_called_directly_refuse_a_single_class(name, tiny_images):
    """The Python API without fit's data preparation: one class would train a model that scores 1.0."""
    one_class = tiny_images.subset(np.flatnonzero(np.asarray(tiny_images.targets) == 1), name="bars")
    with pytest.raises(DataError, match="classification needs at least 2 classes; found only .bar."):
        make_strategy(name).fit(load_backbone("small-cnn:16"), one_class, None,
                                Trainer(TrainConfig(epochs=1, progress=False)))
