"""``feature_scale``: a new linear head on a pre-trained backbone sees unit-length embeddings (``auto``), or any
features (``rms``), at a root-mean-square of 1 (benchmarks/recipes.py: MiniLM's unit-length sentence embeddings
left the fine-tuned head learning only the class prior on the drug reviews)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.backbones import load_backbone
from transferkit.export.bundle import save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.finetune import feature_scale_of
from transferkit.tasks.heads import FeatureScale, describe_head, head_input_scale, rebuild_head
from transferkit.training import TrainConfig, Trainer


@pytest.fixture(scope="module")
def minilm():
    return load_backbone("sentence:all-MiniLM-L6-v2", max_length=32)


@pytest.fixture(scope="module")
def texts():
    train, _, test = tk.prepare_data("debian-packages", labels_per_class=3, val_fraction=0.0, seed=0, max_test=20)
    return train, test


def _rms(backbone, data, scale: float) -> float:
    backbone.eval()
    with torch.no_grad():
        f = backbone.forward_features(backbone.preprocess([data.items[i] for i in range(min(64, len(data)))]))
    return float((f * scale).pow(2).mean().sqrt())


def test_a_sentence_encoder_gets_the_scale_that_brings_its_features_to_unit_rms(minilm, texts):
    train, _ = texts
    scale = feature_scale_of(minilm, train)
    assert scale == pytest.approx(384 ** 0.5, rel=1e-2)  # unit-length 384-d vectors: components near 1 / sqrt(384)
    assert abs(_rms(minilm, train, scale) - 1.0) < 0.01
    assert feature_scale_of(minilm, train, "rms") == scale
    assert feature_scale_of(minilm, train, "none") == 1.0


def test_auto_leaves_features_that_are_not_unit_length_raw_and_rms_scales_them():
    train, _, _ = tk.prepare_data("digits", labels_per_class=3, val_fraction=0.0, seed=0)
    lite = load_backbone("efficientnet-lite:0", image_size=32)
    assert feature_scale_of(lite, train) == 1.0
    scale = feature_scale_of(lite, train, "rms")
    assert scale != 1.0 and abs(_rms(lite, train, scale) - 1.0) < 0.01


@pytest.mark.parametrize("strategy, options, scaled", [
    ("finetune", {}, True), ("lora", {}, True), ("finetune", {"feature_scale": "none"}, False),
    ("finetune", {"head_init": "probe"}, True)])
def test_the_default_head_is_scaled_on_a_pretrained_backbone(minilm, texts, strategy, options, scaled):
    train, _ = texts
    backbone = load_backbone("sentence:all-MiniLM-L6-v2", max_length=32)
    model = make_strategy(strategy, options).prepare(backbone, train)
    assert (head_input_scale(model.head) == feature_scale_of(minilm, train)) == scaled
    assert any(isinstance(m, FeatureScale) for m in model.head) == scaled


def test_a_random_backbone_and_the_scratch_baseline_keep_raw_features(texts):
    train, _ = texts
    random = load_backbone("sentence:all-MiniLM-L6-v2", max_length=32, pretrained=False)
    assert head_input_scale(make_strategy("finetune").prepare(random, train).head) == 1.0
    cnn = load_backbone("small-cnn:16")
    images, _, _ = tk.prepare_data("digits", labels_per_class=3, val_fraction=0.0, seed=0)
    assert head_input_scale(make_strategy("scratch").prepare(cnn, images).head) == 1.0


def test_the_scale_keeps_the_head_initialisation():
    train, _, _ = tk.prepare_data("digits", labels_per_class=3, val_fraction=0.0, seed=0)
    heads = []
    for scale in ("rms", "none"):
        torch.manual_seed(0)
        model = make_strategy("finetune", {"feature_scale": scale}).prepare(
            load_backbone("efficientnet-lite:0", image_size=32), train)
        heads.append(model.head)
    assert head_input_scale(heads[0]) != 1.0 and head_input_scale(heads[1]) == 1.0
    torch.testing.assert_close(heads[0][-1].weight, heads[1][-1].weight)


def test_the_scale_survives_the_manifest_and_a_bundle(texts, tmp_path):
    train, test = texts
    backbone = load_backbone("sentence:all-MiniLM-L6-v2", max_length=32)
    strategy = make_strategy("lora")
    model, _ = strategy.fit(backbone, train, None, Trainer(TrainConfig(epochs=1, progress=False)))
    description = json.loads(json.dumps(describe_head(model.head)))
    assert description["input_scale"] == head_input_scale(model.head) > 1
    assert head_input_scale(rebuild_head(description)) == description["input_scale"]
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "lora"}})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["head"]["input_scale"] == description["input_scale"]
    again = tk.load(tmp_path / "b")
    np.testing.assert_allclose(again.predict_proba(list(test.items)), strategy.predict(model, test), atol=1e-5)
