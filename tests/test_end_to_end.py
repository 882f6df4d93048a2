"""End to end with the real packaged models: EfficientNet-Lite0 (ImageNet) and MiniLM."""
from __future__ import annotations

import pytest

import transferkit as tk
from transferkit.errors import BundleError, ConfigError, DataError, UnknownNameError

pytestmark = pytest.mark.slow


def _fmnist_or_skip():
    from transferkit.data import load_dataset

    try:
        load_dataset("fashion-mnist")
    except DataError as exc:
        pytest.skip(str(exc))


def test_lite0_linear_probe_on_fashion_mnist(tmp_path):
    _fmnist_or_skip()
    result = tk.fit("efficientnet-lite:0", "fashion-mnist", "linear-probe", labels_per_class=10, image_size=32,
                    val_fraction=0.0, max_test=500, out=tmp_path / "probe", progress=False)
    # 10 classes: chance is 0.10; ImageNet features at 32 px get far above it.
    assert result.metrics["accuracy"] > 0.45
    assert (tmp_path / "probe" / "report.html").exists()
    manifest = tk.load(tmp_path / "probe").manifest
    assert manifest["backbone"]["spec"].startswith("efficientnet-lite:0")
    assert manifest["data"]["n_train"] == 100 and manifest["data"]["labels_per_class"] == 10
    assert "ImageNet" in manifest["backbone_provenance"]
    assert "ImageNet" in (tmp_path / "probe" / "report.md").read_text()
    again = tk.evaluate(tmp_path / "probe", "fashion-mnist")
    assert again["n"] == 10000 and again["accuracy"] > 0.45


def test_lite0_finetune_runs_and_reloads(tmp_path):
    _fmnist_or_skip()
    result = tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", labels_per_class=5, image_size=32,
                    epochs=2, max_test=200, out=tmp_path / "ft", progress=False)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and len(result.history) == 2
    from transferkit.data import load_dataset

    _, test = load_dataset("fashion-mnist")
    preds = tk.load(tmp_path / "ft").predict(list(test.items[:4]))
    assert preds == result.predictor.predict(list(test.items[:4]))
    assert set(preds) <= set(test.label_names)


def test_minilm_linear_probe_beats_chance_on_debian_topics(tmp_path):
    result = tk.fit("sentence:all-MiniLM-L6-v2", "debian-packages", "linear-probe", labels_per_class=8,
                    val_fraction=0.0, max_test=140, out=tmp_path / "text", progress=False)
    assert result.metrics["accuracy"] > 0.5  # chance is 1/14
    p = tk.load(tmp_path / "text")
    assert p.predict(["a fast paced space shooter arcade game with levels"]) == ["games"]


def test_compare_reports_a_verdict_against_scratch(tmp_path):
    from conftest import shapes_images
    X, y = shapes_images(n_per_class=16)
    from transferkit.data import from_arrays

    data = from_arrays(X, y, label_names=["square", "bar", "noise"])
    result = tk.compare("efficientnet-lite:0", data, ["linear-probe"], seeds=2, image_size=32,
                        test_data=data, baselines=["small-cnn"], out=tmp_path / "cmp", progress=False)
    assert set(result.runs["strategy"]) == {"linear-probe", "scratch:small-cnn"}
    assert len(result.runs) == 4
    v = result.verdicts.iloc[0]
    assert v["baseline"] == "scratch:small-cnn"
    assert v["verdict"] in ("positive transfer", "negative transfer", "no clear gain")
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "data:image/png;base64" in html


def test_bad_inputs_fail_before_training(tmp_path):
    with pytest.raises(UnknownNameError, match="Available"):
        tk.fit("efficientnet-lite:0", "fashion-mnits", "linear-probe")
    with pytest.raises(UnknownNameError, match="Did you mean 'linear-probe'"):
        tk.fit("efficientnet-lite:0", "digits", "linear-prob")
    with pytest.raises(ConfigError, match="labels_per_class"):
        tk.fit("efficientnet-lite:0", "digits", "linear-probe", labels_per_class=0)
    (tmp_path / "exists").mkdir()
    with pytest.raises(BundleError, match="overwrite"):
        tk.fit("efficientnet-lite:0", "digits", "linear-probe", out=tmp_path / "exists")
    with pytest.raises(ConfigError, match="takes image input|is text|text data"):
        tk.fit("efficientnet-lite:0", "debian-packages", "finetune", labels_per_class=2)
