"""Augmentation policies, mixup / cutmix and their loss, and stochastic depth on timm backbones."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import Identity, shapes_images
from transferkit.backbones import load_backbone
from transferkit.backbones.base import ImagePreprocess
from transferkit.data import from_arrays
from transferkit.errors import ConfigError
from transferkit.strategies import finetune, make_strategy
from transferkit.strategies.augment import (PHOTOMETRIC, POLICIES, ImageAugment, MixedBatch, cutmix_box,
                                            cutmix_images, mix_batch, mixup_images, random_shift_flip,
                                            resolve_policy, soft_target_cross_entropy)
from transferkit.strategies.base import predict_outputs
from transferkit.training import TrainConfig, Trainer

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batch(n: int = 8, size: int = 16) -> torch.Tensor:
    X, _ = shapes_images(n_per_class=3, size=size)
    return ImagePreprocess(size, MEAN, STD)(list(X[:n]))


# ----------------------------------------------------------------------------- mixing


def test_mixup_images_and_soft_targets():
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    perm = torch.tensor([1, 2, 0, 4, 5, 3])
    lam = 0.3
    mixed = mixup_images(x, lam, perm)
    for i in range(6):
        torch.testing.assert_close(mixed[i], lam * x[i] + (1 - lam) * x[perm[i]])
    soft = MixedBatch(mixed, y, perm, lam, "mixup").soft_targets(3, label_smoothing=0.1)
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    # item 0: own class 0 with lam, partner's class 1 with 1 - lam, smoothing spread over 3 classes
    torch.testing.assert_close(soft[0], torch.tensor([0.3 * 0.9 + 0.1 / 3, 0.7 * 0.9 + 0.1 / 3, 0.1 / 3]))


def test_mix_batch_draws_a_consistent_mix():
    torch.manual_seed(0)
    x, y = torch.randn(7, 3, 8, 8), torch.randint(0, 3, (7,))  # an odd batch: timm's Mixup refuses these
    m = mix_batch(x, y, mixup=0.4)
    assert m.kind == "mixup" and 0 <= m.lam <= 1 and sorted(m.perm.tolist()) == list(range(7))
    torch.testing.assert_close(m.inputs, m.lam * x + (1 - m.lam) * x[m.perm])
    assert mix_batch(x, y, mixup=0.4, prob=0.0) is None
    assert mix_batch(x, y) is None
    assert mix_batch(x, y, cutmix=1.0).kind == "cutmix"
    kinds = {mix_batch(x, y, mixup=0.4, cutmix=1.0).kind for _ in range(40)}
    assert kinds == {"mixup", "cutmix"}


def test_cutmix_pastes_one_box_and_lam_is_its_area():
    torch.manual_seed(1)
    x = torch.randn(5, 3, 32, 32)
    perm = torch.tensor([4, 0, 1, 2, 3])
    interior = 0
    for _ in range(50):
        lam = float(torch.rand(()))
        top, bottom, left, right = box = cutmix_box(32, 32, lam)
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
        out, lam_box = cutmix_images(x, box, perm)
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(out[:, :, inside], x[perm][:, :, inside])
        assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
        assert lam_box == pytest.approx(1 - inside.sum().item() / 32 ** 2)
        if top > 0 and left > 0 and bottom < 32 and right < 32:  # not clipped: the paper's box size
            interior += 1
            side = int(32 * np.sqrt(1 - lam))
            assert (bottom - top, right - left) == (side, side)
    assert interior > 0


def test_soft_cross_entropy_matches_hard_and_mixed_losses():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    one = MixedBatch(torch.zeros(6), y, perm, 1.0, "mixup").soft_targets(4, 0.1)
    torch.testing.assert_close(soft_target_cross_entropy(logits, one), F.cross_entropy(logits, y, label_smoothing=0.1))
    soft = MixedBatch(torch.zeros(6), y, perm, 0.25, "mixup").soft_targets(4)
    expected = 0.25 * F.cross_entropy(logits, y) + 0.75 * F.cross_entropy(logits, y[perm])
    torch.testing.assert_close(soft_target_cross_entropy(logits, soft), expected)


def test_finetune_step_mixes_inputs_and_uses_the_soft_loss(tiny_images):
    strategy = make_strategy("finetune", {"mixup": 1.0, "label_smoothing": 0.1})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    ds = strategy.train_dataset(model, tiny_images)
    batch = ds.collate(list(range(12)))
    model.eval()  # no BatchNorm updates: both passes see the same model
    torch.manual_seed(3)
    loss = strategy.step(model, dict(batch))["loss"]
    torch.manual_seed(3)
    mixed = mix_batch(batch["inputs"], batch["targets"], mixup=1.0)
    expected = soft_target_cross_entropy(model(mixed.inputs), mixed.soft_targets(3, 0.1))
    torch.testing.assert_close(loss, expected)
    plain = F.cross_entropy(model(batch["inputs"]), batch["targets"], label_smoothing=0.1)
    assert not torch.allclose(loss, plain)


@pytest.mark.parametrize("options, kinds", [({"mixup": 0.4}, {"mixup"}), ({"cutmix": 1.0}, {"cutmix"}),
                                            ({"mixup": 0.4, "cutmix": 1.0, "mix_prob": 0.8,
                                              "augment": "trivialaugment"}, {"mixup", "cutmix", None})])
def test_finetune_trains_with_mixup_and_cutmix(tiny_images, monkeypatch, options, kinds):
    seen = []

    def spy(*args, **kwargs):
        out = mix_batch(*args, **kwargs)
        seen.append(out.kind if out is not None else None)
        return out

    monkeypatch.setattr(finetune, "mix_batch", spy)
    strategy = make_strategy("finetune", options)
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    model, history = Trainer(TrainConfig(epochs=10, lr=3e-3, head_lr=3e-3, batch_size=16, progress=False)).fit(
        strategy, model, tiny_images, None)
    assert set(seen) == kinds
    assert all(np.isfinite(h["train_loss"]) for h in history)
    acc = (predict_outputs(model, tiny_images).argmax(1) == tiny_images.targets).mean()
    assert acc > 0.7


def test_mixup_needs_image_classification(tiny_images):
    X, _ = shapes_images()
    regression = from_arrays(X, np.linspace(0, 1, len(X)), task="regression")
    with pytest.raises(ConfigError, match="image classification data.*image regression"):
        make_strategy("finetune", {"mixup": 0.2}).prepare(load_backbone("small-cnn:16"), regression)
    table = from_arrays(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2)
    with pytest.raises(ConfigError, match="tabular classification"):
        make_strategy("finetune", {"cutmix": 1.0}).prepare(Identity(4), table)
    with pytest.raises(ConfigError, match="augment='randaugment' transforms images"):
        make_strategy("finetune", {"augment": "randaugment"}).prepare(Identity(4), table)
    make_strategy("finetune", {"augment": True}).prepare(Identity(4), table)  # the bool stays lenient (scratch)


@pytest.mark.parametrize("options, message", [
    ({"augment": "randaug"}, ("one of none, shift-flip, crop-flip, trivialaugment, randaugment, autoaugment. "
                              "Got 'randaug' instead. Did you mean 'randaugment'")),
    ({"augment": 3}, "'augment' parameter of FinetuneConfig"),
    ({"mixup": -0.1}, "'mixup' parameter"), ({"cutmix": -1}, "'cutmix' parameter"),
    ({"mix_prob": 1.5}, r"'mix_prob' parameter of FinetuneConfig must be a number in \[0, 1\]"),
])
def test_bad_options_name_the_valid_choices(options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy("finetune", options)


# ----------------------------------------------------------------------------- policies


def test_augment_true_keeps_meaning_shift_flip(tiny_images):
    assert resolve_policy(True) == "shift-flip" and resolve_policy(False) == "none"
    strategy = make_strategy("finetune", {"augment": True})
    strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    x = _batch()
    torch.manual_seed(0)
    out = strategy.augment(x)
    torch.manual_seed(0)
    torch.testing.assert_close(out, random_shift_flip(x))
    assert finetune.random_shift_flip is random_shift_flip  # the old import path still works
    assert make_strategy("finetune").augment(x) is x


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_keep_shape_dtype_and_pixel_range(policy):
    torch.manual_seed(0)
    x = _batch()
    aug = ImageAugment(policy, MEAN, STD)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    changed = False
    for _ in range(3):
        out = aug(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        pixels = out * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        if policy in PHOTOMETRIC:  # un-normalised to uint8 and back: still whole pixel values
            torch.testing.assert_close(pixels * 255, (pixels * 255).round(), atol=1e-3, rtol=0)
        changed |= not torch.allclose(out, x)
    assert changed == (policy != "none")
    text = {"input_ids": torch.ones(2, 5, dtype=torch.long)}
    assert aug(text) is text


def test_photometric_policies_need_the_normalisation():
    with pytest.raises(ConfigError, match="needs the backbone's normalisation"):
        ImageAugment("autoaugment")
    ImageAugment("crop-flip")(_batch())  # geometric policies work on normalised values


# ----------------------------------------------------------------------------- stochastic depth


def _drop_probs(module) -> list[float]:
    from timm.layers import DropPath

    return [m.drop_prob for m in module.modules() if isinstance(m, DropPath)]


def test_drop_path_reaches_timm_models_and_bundles_rebuild(tiny_images, tmp_path):
    import transferkit as tk

    bb = load_backbone("timm:test_resnet", pretrained=False, image_size=32, drop_path=0.2)
    assert max(_drop_probs(bb.model)) == pytest.approx(0.2)
    assert _drop_probs(load_backbone("timm:test_resnet", pretrained=False, image_size=32)) == []
    assert "drop_path" not in bb.architecture()["options"]
    lite = load_backbone("efficientnet-lite:0", pretrained=False, image_size=32, drop_path=0.1)
    assert 0.09 < max(_drop_probs(lite.model)) <= 0.1  # timm ramps it with depth: (n - 1) / n of it at the top

    result = tk.fit("timm:test_resnet", tiny_images, "finetune", pretrained=False, image_size=32, drop_path=0.1,
                    epochs=1, progress=False, out=tmp_path / "b", report=False)
    assert result.manifest["backbone_training"] == {"drop_path": 0.1}
    loaded = tk.load(tmp_path / "b")
    np.testing.assert_allclose(loaded.outputs(tiny_images.items[:6]), result.predictor.outputs(tiny_images.items[:6]),
                               atol=1e-5)


@pytest.mark.parametrize("spec, value, message", [
    ("timm:test_resnet", 1.0, r"'drop_path' parameter of timm:test_resnet must be a float in \[0, 1\)"),
    ("efficientnet-lite:0", -0.1, "'drop_path' parameter of efficientnet-lite:0"),
    ("torchvision:resnet18", 0.1, "'drop_path'.*'torchvision:' takes: image_size"),
])
def test_drop_path_bad_values_and_sources(spec, value, message):
    with pytest.raises(ConfigError, match=message):
        load_backbone(spec, pretrained=False, drop_path=value)
