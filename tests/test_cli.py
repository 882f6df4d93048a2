"""The command line, driven through Typer's runner on a tiny image folder."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_every_command():
    out = invoke("--help").output
    for cmd in ("fit", "evaluate", "predict", "compare", "rank", "export", "serve", "push", "tune", "list", "demo"):
        assert cmd in out


def test_fit_evaluate_predict_round_trip(image_folder, tmp_path):
    bundle = tmp_path / "bundle"
    r = invoke("fit", "--backbone", "small-cnn:16", "--data", image_folder, "--strategy", "finetune",
               "--epochs", "2", "--out", bundle, "-o", "train_last=1")
    assert r.exit_code == 0, r.output
    assert (bundle / "manifest.json").exists() and (bundle / "report.md").exists()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["strategy"]["config"]["train_last"] == 1 and manifest["train"]["epochs"] == 2
    r = invoke("evaluate", bundle, "--data", image_folder)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output
    img = next((image_folder / "bar").iterdir())
    r = invoke("predict", bundle, img, "--json", "--top", "2")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output.strip().splitlines()[0])
    assert rec["prediction"] in ("square", "bar", "noise") and len(rec["top"]) == 2


def test_refuses_to_overwrite_and_keeps_the_bundle(image_folder, tmp_path):
    bundle = tmp_path / "b"
    assert invoke("fit", "--backbone", "small-cnn:16", "--data", image_folder, "--strategy", "finetune",
                  "--epochs", "1", "--out", bundle).exit_code == 0
    before = (bundle / "model.safetensors").read_bytes()
    r = invoke("fit", "--backbone", "small-cnn:16", "--data", image_folder, "--strategy", "finetune",
               "--epochs", "1", "--out", bundle)
    assert r.exit_code == 2 and "overwrite" in r.output
    assert (bundle / "model.safetensors").read_bytes() == before


def test_recipe_file_sets_the_same_keys_as_flags(image_folder, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"backbone: small-cnn:16\ndata: {image_folder}\nstrategy: gradual-unfreeze\n"
                      f"epochs: 2\nseed: 3\noptions:\n  head_epochs: 1\n")
    r = invoke("fit", "--config", recipe, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["strategy"]["name"] == "gradual-unfreeze" and m["train"]["seed"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 2\n")
    r = invoke("fit", "--config", bad, "--out", tmp_path / "c")
    assert r.exit_code != 0 and "epochz" in r.output and "epochs" in r.output


@pytest.mark.parametrize("args, message", [
    (["--strategy", "lora-ish"], "Unknown strategy 'lora-ish'"),
    (["--backbone", "timn:resnet18"], "Unknown backbone source 'timn'"),
    (["-o", "train_last=-2", "--strategy", "finetune"], "train_last"),
    (["--epochs", "0"], "epochs"),
])
def test_errors_are_one_clear_line(image_folder, tmp_path, args, message):
    base = {"--backbone": "small-cnn:16", "--strategy": "finetune"}
    argv = ["fit", "--data", image_folder, "--out", tmp_path / "x"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    r = invoke(*argv, *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("what, expected", [
    ("strategies", ["linear-probe", "finetune", "gradual-unfreeze", "scratch",  # and the other method registries:
                    "continual", "replay", "pre-training", "simclr", "regularizer", "l2sp"]),
    ("tasks", ["classification", "accuracy", "multilabel", "macro_f1", "regression", "r2"]),
    ("datasets", ["fashion-mnist", "digits", "drug-reviews", "penguins", "debian-packages"]),
    ("backbones", ["timm", "torchvision", "hf", "sentence", "efficientnet-lite", "file", "small-cnn", "tfidf"]),
])
def test_list(what, expected):
    r = runner.invoke(app, ["list", what], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in expected:
        assert name in r.output


def test_given_validation_data_replaces_the_split(image_folder, tmp_path):
    r = invoke("fit", "--backbone", "small-cnn:16", "--data", image_folder, "--val-data", image_folder,
               "--strategy", "finetune", "--epochs", "2", "--patience", "5", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["data"]["n_train"] == 24 and m["data"]["n_val"] == 24  # nothing held out of --data
    assert all("val_accuracy" in row for row in m["history"])


def test_evaluate_aligns_labels_by_name_and_refuses_unseen_ones(image_folder, tmp_path):
    import shutil

    import numpy as np

    import transferkit as tk
    from transferkit.data import from_image_folder
    from transferkit.errors import DataError

    assert invoke("fit", "--backbone", "small-cnn:16", "--data", image_folder, "--strategy", "finetune",
                  "--epochs", "2", "--out", tmp_path / "b").exit_code == 0
    predictor = tk.load(tmp_path / "b")  # labels sorted: bar, noise, square
    part = tmp_path / "part"
    for name in ("square", "noise"):  # a folder of two classes: its own indices are noise=0, square=1
        shutil.copytree(image_folder / name, part / name)
    data = from_image_folder(part)
    expected = np.mean(np.array(predictor.predict(data.items)) == np.array(data.label_names)[data.targets])
    assert tk.evaluate(tmp_path / "b", part)["accuracy"] == pytest.approx(expected)
    (part / "triangle").mkdir()
    shutil.copy(next((part / "square").iterdir()), part / "triangle" / "t.png")
    with pytest.raises(DataError, match="triangle"):
        tk.evaluate(tmp_path / "b", part)
