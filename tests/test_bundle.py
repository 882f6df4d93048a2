"""Bundles: atomic writes, no silent overwrite, no pickles, a fresh process can predict."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from transferkit.backbones import load_backbone
from transferkit.errors import BundleError
from transferkit.export.bundle import load, read_manifest, save_bundle
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer


@pytest.fixture
def trained(tiny_images):
    model, _ = make_strategy("finetune").fit(load_backbone("small-cnn:16"), tiny_images, None,
                                            Trainer(TrainConfig(epochs=1, progress=False)))
    return model


def test_manifest_records_what_the_issue_lists(trained, tmp_path):
    save_bundle(trained, tmp_path / "b", {"strategy": {"name": "finetune"}, "data": {"fingerprint": "abc"}})
    m = read_manifest(tmp_path / "b")
    for key in ("backbone", "strategy", "label_names", "preprocess", "versions", "data", "task"):
        assert key in m, key
    assert m["backbone"]["spec"] == "small-cnn:16"
    assert m["label_names"] == ["square", "bar", "noise"]
    assert "torch" in m["versions"]


def test_existing_bundle_is_not_overwritten(trained, tmp_path):
    save_bundle(trained, tmp_path / "b", {"run": 1})
    with pytest.raises(BundleError, match="overwrite"):
        save_bundle(trained, tmp_path / "b", {"run": 2})
    assert read_manifest(tmp_path / "b")["run"] == 1
    save_bundle(trained, tmp_path / "b", {"run": 3}, overwrite=True)
    assert read_manifest(tmp_path / "b")["run"] == 3


def test_failure_while_writing_leaves_nothing(trained, tmp_path):
    def boom(directory):
        raise RuntimeError("report failed")

    with pytest.raises(RuntimeError):
        save_bundle(trained, tmp_path / "b", {}, extra=boom)
    assert list(tmp_path.iterdir()) == []


def test_failure_while_overwriting_keeps_the_old_bundle(trained, tmp_path):
    save_bundle(trained, tmp_path / "b", {"run": 1})
    with pytest.raises(RuntimeError):
        save_bundle(trained, tmp_path / "b", {"run": 2}, overwrite=True,
                    extra=lambda d: (_ for _ in ()).throw(RuntimeError("x")))
    assert read_manifest(tmp_path / "b")["run"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.safetensors").unlink(), "not a complete"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "Corrupt manifest"),
    (lambda p: (p / "manifest.json").write_text(json.dumps({"format": "other"})), "not a transferkit manifest"),
])
def test_damaged_bundles_are_refused(trained, tmp_path, damage, message):
    save_bundle(trained, tmp_path / "b", {})
    damage(tmp_path / "b")
    with pytest.raises(BundleError, match=message):
        load(tmp_path / "b")


def test_fresh_process_predicts_the_same_without_pickles(trained, tiny_images, tmp_path):
    save_bundle(trained, tmp_path / "b", {})
    np.save(tmp_path / "x.npy", tiny_images.items[:5])
    expected = load(tmp_path / "b").predict(list(tiny_images.items[:5]))
    code = ("import pickle, sys, numpy as np\n"
            "def nope(*a, **k): raise AssertionError('unpickling')\n"
            "pickle.load = pickle.loads = nope\n"
            "import transferkit\n"
            f"x = np.load(r'{tmp_path / 'x.npy'}')\n"
            f"print(transferkit.load(r'{tmp_path / 'b'}').predict(list(x)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


def test_normalised_head_round_trips(trained, tmp_path):
    """A cosine head (prototypes, label embeddings) is stored as such and predicts the same after load."""
    import torch

    from transferkit.strategies.base import is_normalized_head, linear_head

    head = linear_head(trained.head[-1].in_features, 3, normalize=True)
    with torch.no_grad():
        head[-1].weight.copy_(torch.nn.functional.normalize(torch.randn(3, head[-1].in_features), dim=1) * 10)
        head[-1].bias.zero_()
    trained.head = head
    save_bundle(trained, tmp_path / "b", {})
    assert read_manifest(tmp_path / "b")["head"]["normalize"] is True
    predictor = load(tmp_path / "b")
    assert is_normalized_head(predictor.model.head)
    x = trained.backbone.preprocess(np.zeros((4, 16, 16), np.uint8) + np.arange(4)[:, None, None].astype(np.uint8) * 60)
    with torch.no_grad():
        feats = trained.backbone.forward_features(x)
        expected = head(feats)
        # Scaling the features changes nothing: the head normalises them.
        torch.testing.assert_close(head(3 * feats), expected)
        torch.testing.assert_close(predictor.model.head(feats), expected)
