"""Figures and reports: files exist, images are valid PNGs, tables show the numbers."""
from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferkit.errors import DataError
from transferkit.evaluation import classification_metrics, summarize, transfer_verdicts
from transferkit.reports import (
    confusion_png,
    data_efficiency_png,
    format_table,
    learning_curve_png,
    strategy_bars_png,
    write_compare_report,
    write_fit_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HISTORY = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1), "val_accuracy": 0.5 + 0.1 * e}
           for e in range(4)]


def _check_png(data: bytes) -> None:
    assert data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size[0] > 200 and image.size[1] > 150


def _runs(lpcs=(10,), seeds=3) -> pd.DataFrame:
    """ft always 0.74/0.75/0.76 (mean 75.0 ± 2.5 %), lp equal to mlp, mlp 0.60/0.61/0.62, logreg weaker."""
    base = {"ft": ("transfer", 0.75), "lp": ("transfer", 0.61), "mlp": ("scratch", 0.61), "logreg": ("scratch", 0.5)}
    jitter = [-0.01, 0.0, 0.01][:seeds]
    rows = [{"experiment": exp, "labels_per_class": lpc, "strategy": s, "kind": kind, "seed": i,
             "accuracy": mean + (jitter[i] if s != "lp" else -jitter[i])}
            for exp in ("digits", "pets") for lpc in lpcs for s, (kind, mean) in base.items()
            for i in range(len(jitter))]
    return pd.DataFrame(rows)


def _data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_plots_return_valid_pngs():
    runs = _runs(lpcs=(5, 20, 100))
    summary = summarize(runs, "accuracy")
    _check_png(learning_curve_png(HISTORY))
    _check_png(learning_curve_png([{"train_loss": 0.5}]))
    _check_png(confusion_png([[5, 1], [0, 0]], ["cat", "dog"]))  # an empty row does not divide by 0
    _check_png(confusion_png(np.eye(20, dtype=int) * 3))  # too many classes to annotate
    _check_png(strategy_bars_png(summary, "accuracy"))
    _check_png(data_efficiency_png(summary, "accuracy"))


def test_plot_input_errors():
    with pytest.raises(DataError, match="empty history"):
        learning_curve_png([])
    with pytest.raises(DataError, match="square"):
        confusion_png([[1, 2, 3]], ["a"])
    with pytest.raises(DataError, match="label names"):
        confusion_png([[1, 0], [0, 1]], ["a", "b", "c"])
    with pytest.raises(DataError, match="empty"):
        strategy_bars_png(summarize(_runs(), "accuracy").iloc[0:0], "accuracy")


def test_plots_do_not_use_pyplot():
    code = ("import sys; from transferkit.reports import learning_curve_png as f; "
            "f([{'epoch': 1, 'train_loss': 1.0}]); assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_fit_report(tmp_path):
    metrics = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 2], label_names=["cat", "dog", "bird"])
    manifest = {
        "name": "pets-resnet",
        "task": "classification",
        "backbone": {"spec": "timm:resnet18", "provenance": {"weights": "imagenet-1k", "license": "apache-2.0"}},
        "data": {"name": "pets", "fingerprint": "0123abcd", "n_train": 40},
        "strategy": {"name": "fine-tune", "config": {"lr": 0.001}},
        "verdict": {"verdict": "positive transfer", "explanation": "beats the mlp baseline"},
        "versions": {"transferkit": "0.1.0"},
    }
    paths = write_fit_report(tmp_path, manifest=manifest, history=HISTORY, metrics=metrics)
    assert {p.name for p in paths} == {"report.md", "report.html", "learning_curve.png", "confusion.png"}
    assert all(p.exists() for p in paths)
    md = (tmp_path / "report.md").read_text()
    for text in ("timm:resnet18", "imagenet-1k", "0123abcd", "fine-tune", "positive transfer", "0.8", "0.001",
                 "Intended use", "plots/learning_curve.png", "plots/confusion.png"):
        assert text in md
    images = _data_uris((tmp_path / "report.html").read_text())
    assert len(images) == 2
    for image in images:
        _check_png(image)
    assert not list(tmp_path.rglob("*.tmp"))


def test_fit_report_with_empty_manifest(tmp_path):
    paths = write_fit_report(tmp_path / "out", manifest={}, history=[], metrics=None)
    assert [p.name for p in paths] == ["report.md", "report.html"]
    md = paths[0].read_text()
    assert "not recorded" in md and "Not measured" in md
    assert "| numpy |" in md  # installed versions when the manifest has none
    assert "<img" not in paths[1].read_text()


def test_format_table_numbers():
    runs = _runs()
    summary, verdicts = summarize(runs, "accuracy"), transfer_verdicts(runs, "accuracy")
    table = format_table(summary, verdicts, "accuracy")
    # ft: 0.74, 0.75, 0.76 -> 75.0 ± t(0.975, 2) * 0.01 / sqrt(3) = 2.48 %
    assert "75.0 ± 2.5" in table
    assert "61.0 ± 2.5" in table and "baseline" in table
    assert "+14.0 [+14.0, +14.0]" in table and "positive transfer" in table  # constant paired gain
    assert "no clear gain" in table  # lp: same mean as mlp, opposite jitter
    assert table.splitlines()[0].startswith("| experiment |")


def test_compare_report(tmp_path):
    runs = _runs(lpcs=(5, 50))
    summary, verdicts = summarize(runs, "accuracy"), transfer_verdicts(runs, "accuracy")
    paths = write_compare_report(tmp_path, runs=runs, summary=summary, verdicts=verdicts, metric="accuracy",
                                 title="Digits and pets", notes=["toy numbers"])
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "runs.csv", "summary.csv", "strategy_bars.png",
            "data_efficiency.png"} <= names
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)
    assert list(pd.read_csv(tmp_path / "summary.csv").columns) == list(summary.columns)
    md = (tmp_path / "report.md").read_text()
    for text in ("# Digits and pets", "toy numbers", "75.0 ± 2.5", "no clear gain", "not shown to be better",
                 "plots/strategy_bars.png", "plots/data_efficiency.png"):
        assert text in md
    images = _data_uris((tmp_path / "report.html").read_text())
    assert len(images) == 2
    for image in images:
        _check_png(image)


def test_compare_report_single_budget_has_no_curve(tmp_path):
    runs = _runs(lpcs=(10,), seeds=1)
    summary, verdicts = summarize(runs, "accuracy"), transfer_verdicts(runs, "accuracy")
    paths = write_compare_report(tmp_path, runs=runs, summary=summary, verdicts=verdicts, metric="accuracy",
                                 title="One seed")
    assert "data_efficiency.png" not in {p.name for p in paths}
    md = (tmp_path / "report.md").read_text()
    assert "± n/a" in md and "interval unknown" in md


def test_projection_png_draws_classes_and_refuses_bad_shapes():
    from transferkit.errors import DataError
    from transferkit.reports.plots import projection_png

    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(60, 8)) + np.repeat(np.eye(3, 8) * 5, 20, axis=0), np.repeat([0, 1, 2], 20)
    png = projection_png(feats, labels, ["a", "b", "c"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(DataError, match="N labels"):
        projection_png(feats, labels[:10])


def test_fit_report_draws_the_tasks_figure_truth_beside_prediction(tmp_path):
    from transferkit.reports.plots import prediction_pairs_png

    truth = np.zeros((40, 60, 3), np.uint8)
    truth[10:20, 10:30] = (0, 255, 0)  # a green box where the object is
    rows = [("image 3", truth, np.full((40, 60, 3), 255, np.uint8)), ("image 0", truth, truth)]
    figure = ("Predictions on evaluated images", "Two images, worst first.", rows)
    paths = write_fit_report(tmp_path, manifest={}, history=HISTORY, metrics=None, figure=figure)
    assert {p.name for p in paths} == {"report.md", "report.html", "learning_curve.png", "predictions.png"}
    md = (tmp_path / "report.md").read_text()
    assert "## Predictions on evaluated images" in md and "Two images, worst first." in md
    assert "plots/predictions.png" in md
    png = (tmp_path / "plots" / "predictions.png").read_bytes()
    _check_png(png)
    with Image.open(io.BytesIO(png)) as image:  # one row per item: taller with more rows
        tall = image.size[1]
    with Image.open(io.BytesIO(prediction_pairs_png(rows[:1]))) as image:
        assert image.size[1] < tall
    assert len(_data_uris((tmp_path / "report.html").read_text())) == 2
    with pytest.raises(DataError, match="'image 3'.*\\[H, W, 3\\]"):
        prediction_pairs_png([("image 3", truth[..., 0], truth)])
    with pytest.raises(DataError, match="No items"):
        prediction_pairs_png([])
    empty = write_fit_report(tmp_path / "none", manifest={}, history=[], metrics=None, figure=("t", "c", []))
    assert [p.name for p in empty] == ["report.md", "report.html"]
