"""The zero-shot strategy: text encoders, CLIP image-text models and NLI models, bundles and bad input.

The text end-to-end test uses the real packaged MiniLM on real Debian package
descriptions. CLIP and NLI weights do not ship offline, so their tests build
small randomly initialised models of the real architectures (transformers
``CLIPModel``, ``BertForSequenceClassification``) and check the plumbing
against the same models called directly through transformers.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transferkit as tk
from transferkit.backbones import load_backbone
from transferkit.data import from_arrays, load_dataset
from transferkit.errors import ConfigError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.training import TrainConfig, Trainer

from conftest import _tiny_nli

SECTIONS = ["database", "editors", "fonts", "games", "mail", "sound"]


def _trainer():
    return Trainer(TrainConfig(progress=False))


def test_minilm_zero_shot_on_debian_is_far_above_chance_and_bundle_round_trips(tmp_path):
    train, test = load_dataset("debian-packages", sections=SECTIONS)
    picks = np.concatenate([np.flatnonzero(test.targets == c)[:5] for c in range(len(SECTIONS))])
    # 5 real descriptions per section, 30 in all; chance is 1/6. Without origin the feature cache embeds
    # these 30 only, not the whole test pool they were drawn from.
    test = dataclasses.replace(test.subset(picks), origin=None)
    result = tk.fit("sentence:all-MiniLM-L6-v2", train, "zero-shot", labels_per_class=2, test_data=test,
                    max_length=64, out=tmp_path / "b", report=False, progress=False)
    assert result.metrics["accuracy"] >= 0.75, result.metrics
    history = result.history[0]
    assert history["trained"] is False and "not used" in history["note"]
    assert history["label_texts"]["games"] == ["This example is games."]
    # The head is a cosine classifier: unit label embeddings times the default scale.
    head = result.predictor.model.head
    assert torch.allclose(head[-1].weight.norm(dim=1), torch.full((6,), 20.0)) and not head[-1].bias.any()
    again = tk.load(tmp_path / "b")
    np.testing.assert_allclose(again.outputs(test.items), result.predictor.outputs(test.items), atol=1e-6)
    # The training examples play no part: another draw gives the same head.
    other, _ = make_strategy("zero-shot").fit(again.model.backbone, train.subset(np.arange(40, 60)), None,
                                              _trainer())
    torch.testing.assert_close(other.head[-1].weight, head[-1].weight)


def test_label_descriptions_fill_the_templates_and_are_averaged(tiny_bert):
    data = from_arrays(["chess puzzle", "audio mixer"] * 3, [0, 1] * 3)  # label names "0" and "1"
    options = {"templates": ["about {label}", "{label}."],
               "label_descriptions": {0: "games", "1": ["sound", "music"]}}  # keys as YAML reads them, too
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=16)
    model, history = make_strategy("zero-shot", options).fit(backbone, data, None, _trainer())
    texts = history[0]["label_texts"]
    assert texts == {"0": ["about games", "games."], "1": ["about sound", "sound.", "about music", "music."]}
    with torch.no_grad():
        emb = F.normalize(backbone.forward_features(backbone.preprocess(texts["1"])), dim=-1)
    expected = 20.0 * F.normalize(emb.mean(0), dim=0)
    torch.testing.assert_close(model.head[-1].weight[1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"templates": ["a photo"]}, "holding '{label}'"),
    ({"templates": "{label} by {author}"}, "placeholder other than"),
    ({"templates": []}, "non-empty list"),
    ({"label_descriptions": {"games": ""}}, "non-empty string"),
    ({"label_descriptions": ["games"]}, "must be a mapping"),
    ({"scale": 0}, "scale"),
])
def test_bad_config_is_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy("zero-shot", options)


def test_labels_that_cannot_be_described_are_refused(tiny_bert):
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=16)
    numbers = from_arrays(["a", "b", "c"], [0, 1, 2])
    with pytest.raises(ConfigError, match=r"'0', '1', '2' are bare numbers"):
        make_strategy("zero-shot").fit(backbone, numbers, None, _trainer())
    with pytest.raises(ConfigError, match=r"'2' are bare numbers"):  # described labels are fine, the rest not
        make_strategy("zero-shot", {"label_descriptions": {"0": "x", "1": "y"}}).fit(backbone, numbers, None,
                                                                                      _trainer())
    named = from_arrays(["a", "b"], ["games", "sound"])
    with pytest.raises(ConfigError, match=r"'gmaes'.*Valid labels: 'games', 'sound'"):
        make_strategy("zero-shot", {"label_descriptions": {"gmaes": "video games"}}).fit(backbone, named, None,
                                                                                          _trainer())
    multilabel = from_arrays(["a", "b"], np.eye(2, dtype=np.float32), task="multilabel", label_names=["x", "y"])
    with pytest.raises(ConfigError,
                       match="Strategy 'zero-shot' supports classification, text-generation, detection tasks; .* is multilabel"):
        make_strategy("zero-shot").fit(backbone, multilabel, None, _trainer())


def test_image_backbone_without_text_tower_is_refused(tiny_images):
    with pytest.raises(ConfigError, match="small-cnn:16' has no text encoder.*clip:"):
        make_strategy("zero-shot").fit(load_backbone("small-cnn:16"), tiny_images, None, _trainer())


def test_clip_backbone_matches_transformers(tiny_clip, tiny_images):
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(tiny_clip).eval()
    backbone = load_backbone(f"clip:{tiny_clip}").eval()
    assert backbone.modality == "image" and backbone.num_features == 16
    assert backbone.preprocess.config()["size"] == 32 and backbone.preprocess.interpolation == "bicubic"
    backbone.check_groups()  # groups cover the vision tower and projection; the text tower is not a submodule
    assert not any(k.startswith("text") for k in backbone.state_dict())
    x = backbone.preprocess(list(tiny_images.items[:4]))
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=x).pooler_output
        torch.testing.assert_close(backbone.forward_features(x), expected)
        assert backbone.forward_features(load_backbone(f"clip:{tiny_clip}", image_size=48).preprocess(
            list(tiny_images.items[:2]))).shape == (2, 16)  # other sizes interpolate the position embeddings


def test_clip_zero_shot_head_holds_the_text_embeddings_and_round_trips(tiny_clip, tiny_images, tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    templates = ["a photo of a {label}.", "a drawing of a {label}."]
    result = tk.fit(f"clip:{tiny_clip}", tiny_images, "zero-shot", strategy_options={"templates": templates},
                    test_data=tiny_images, out=tmp_path / "clip", report=False, progress=False)
    head = result.predictor.model.head[-1]
    reference, tok = CLIPModel.from_pretrained(tiny_clip).eval(), AutoTokenizer.from_pretrained(tiny_clip)
    scale = reference.logit_scale.exp().item()  # CLIP's own learnt temperature is the default scale
    for row, label in enumerate(tiny_images.label_names):
        enc = tok([t.format(label=label) for t in templates], padding=True, return_tensors="pt")
        with torch.no_grad():
            emb = F.normalize(reference.get_text_features(**enc).pooler_output, dim=-1)
        torch.testing.assert_close(head.weight[row], scale * F.normalize(emb.mean(0), dim=0), rtol=1e-5, atol=1e-5)
    loaded = tk.load(tmp_path / "clip")
    out = loaded.outputs(tiny_images.items)
    assert out.shape == (len(tiny_images), 3)
    np.testing.assert_allclose(out, result.predictor.outputs(tiny_images.items), atol=1e-6)
    with pytest.raises(ConfigError, match="vision tower only"):
        loaded.model.backbone.encode_text(["a square"])


def _entailment_probs(path, texts, hypotheses_per_label, max_length):
    """The pipeline's single-label scores, computed directly: softmax over labels of mean entailment logits."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    model, tok = BertForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    rows = []
    for text in texts:
        scores = []
        for hyps in hypotheses_per_label:
            enc = tok([text] * len(hyps), hyps, padding=True, truncation="only_first", max_length=max_length,
                      return_tensors="pt")
            with torch.no_grad():
                scores.append(model(**enc).logits[:, 2].mean())
        rows.append(torch.stack(scores).softmax(0))
    return torch.stack(rows).numpy()


def test_nli_zero_shot_scores_entailment_and_round_trips(tiny_nli, tmp_path):
    from conftest import tiny_texts

    texts, labels = tiny_texts(4)
    data = from_arrays(texts, labels)
    templates = ["This package is about {label}.", "{label}"]
    backbone = load_backbone(f"nli:{tiny_nli}", max_length=24)
    model, history = make_strategy("zero-shot", {"templates": templates}).fit(backbone, data, None, _trainer())
    out = predict_outputs(model, data)
    expected = _entailment_probs(tiny_nli, texts, list(history[0]["label_texts"].values()), 24)
    assert np.ptp(expected[:, 0]) > 0.01  # the random model does tell the texts apart
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert model.backbone.architecture()["options"]["hypotheses"] == [
        "This package is about games.", "games", "This package is about sound.", "sound"]
    save_bundle(model, tmp_path / "nli", {})
    np.testing.assert_allclose(load(tmp_path / "nli").outputs(texts), out, atol=1e-6)


def test_nli_model_without_entailment_label_is_refused(tmp_path, minilm_path):
    path = _tiny_nli(tmp_path / "sentiment", minilm_path, {0: "negative", 1: "positive"})
    with pytest.raises(ConfigError, match="no entailment label.*negative, positive"):
        load_backbone(f"nli:{path}")
