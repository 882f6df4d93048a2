"""``fit(..., pretrain=...)`` and ``transferkit fit --pretrain``: self-supervised pre-training chained with a strategy."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import transferkit as tk
from conftest import shapes_images, tiny_texts
from transferkit.cli.main import app
from transferkit.errors import ConfigError, DataError, UnknownNameError


def _unlabelled_images(n_per_class: int = 16) -> np.ndarray:
    X, _ = shapes_images(n_per_class=n_per_class, seed=1)
    return X


def test_fit_pretrains_the_backbone_and_the_bundle_keeps_its_weights(tiny_images, tmp_path):
    common = dict(strategy_options={"train_last": 1}, epochs=1, seed=0, progress=False, report=False)
    plain = tk.fit("small-cnn:16", tiny_images, "finetune", **common)
    result = tk.fit("small-cnn:16", tiny_images, "finetune", pretrain="simclr", unlabelled_data=_unlabelled_images(),
                    pretrain_epochs=2, out=tmp_path / "b", **common)
    pre = result.manifest["pretrain"]
    assert pre["method"] == "simclr" and pre["items"] == 48 and pre["epochs"] == 2 and len(pre["history"]) == 2
    assert pre["from"] == "small-cnn:16" and "temperature" in pre["options"]  # the resolved config
    # train_last=1 freezes the first block in fine-tuning: there, only pre-training can have moved the weights.
    first = next(k for k in plain.predictor.model.state_dict() if k.startswith("backbone.") and k.endswith("weight"))
    before, after = plain.predictor.model.state_dict()[first], result.predictor.model.state_dict()[first]
    assert not torch.equal(before, after)
    loaded = tk.load(tmp_path / "b")  # a fresh rebuild needs no pre-training run: the weights are in the bundle
    torch.testing.assert_close(loaded.model.state_dict()[first], after)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["pretrain"]["method"] == "simclr"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"pretrain": "simclr"}, ConfigError, "unlabelled data"),
    ({"unlabelled_data": "X"}, ConfigError, "method"),
    ({"pretrain": "simclrr", "unlabelled_data": "X"}, UnknownNameError, "simclr"),
    ({"pretrain": "simclr", "unlabelled_data": "texts"}, DataError, "same kind of input"),
])
def test_bad_pretraining_requests_are_named(tiny_images, kwargs, error, message):
    stand_in = {"X": _unlabelled_images(2), "texts": tiny_texts()[0]}
    kwargs = {k: stand_in.get(v, v) if isinstance(v, str) and k == "unlabelled_data" else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message):
        tk.fit("small-cnn:16", tiny_images, "finetune", epochs=1, progress=False, report=False, **kwargs)


def test_scratch_strategies_refuse_pretraining(tiny_images):
    with pytest.raises(ConfigError, match="from scratch"):
        tk.fit(None, tiny_images, "scratch", pretrain="simclr", unlabelled_data=_unlabelled_images(2),
               progress=False, report=False)


def test_cli_fit_pretrain(image_folder, tmp_path):
    from PIL import Image

    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for i, img in enumerate(_unlabelled_images(4)):
        Image.fromarray(img).save(flat / f"u{i}.png")
    r = CliRunner().invoke(app, ["fit", "--backbone", "small-cnn:16", "--data", str(image_folder), "--strategy",
                                 "finetune", "--epochs", "1", "--out", str(tmp_path / "b"), "--pretrain", "simsiam",
                                 "--unlabelled-data", str(flat), "--pretrain-epochs", "1"])
    assert r.exit_code == 0, r.output
    assert "pre-trained with simsiam on 12 unlabelled items for 1 epoch" in r.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["pretrain"]["items"] == 12


def test_lora_on_a_file_checkpoint_gives_a_bundle_that_reloads(tiny_images, tmp_path):
    """A file: base is not fetched again by spec, so its adapter bundle stores the whole model."""
    from transferkit.backbones import load_backbone, save_checkpoint

    ckpt = save_checkpoint(load_backbone("small-cnn:16"), tmp_path / "base.safetensors")
    result = tk.fit(f"file:{ckpt}", tiny_images, "lora", epochs=1, out=tmp_path / "b", progress=False, report=False)
    ckpt.unlink()  # the bundle must not need the checkpoint any more
    loaded = tk.load(tmp_path / "b")
    np.testing.assert_allclose(loaded.predict_proba(tiny_images.items[:6]),
                               result.predictor.predict_proba(tiny_images.items[:6]), atol=1e-5)
