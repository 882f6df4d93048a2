"""The learning-rate range test: its curve, its suggestion, what it leaves alone, fit(lr="auto"), lr-find."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from conftest import Identity
from transferkit.backbones import load_backbone
from transferkit.data import from_arrays
from transferkit.errors import ConfigError
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer
from transferkit.training.lr_finder import LRFinderResult, find_lr, suggest

PNG = b"\x89PNG\r\n\x1a\n"


def linear_task(task: str, seed: int = 0, n: int = 256, d: int = 8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    if task == "regression":
        return from_arrays(X, X @ w + 0.1 * rng.normal(size=n), task="regression")
    return from_arrays(X, (X @ w > 0).astype(int), label_names=["neg", "pos"])


def _prepared(task: str, seed: int = 0):
    data = linear_task(task, seed)
    strategy = make_strategy("finetune")
    torch.manual_seed(seed)
    return strategy, strategy.prepare(Identity(8), data), data


def test_curve_has_the_lengths_it_claims_and_a_geometric_ramp():
    strategy, model, data = _prepared("classification")
    r = find_lr(strategy, model, data, start=1e-5, end=1e-1, steps=25)
    assert not r.stopped_early
    assert len(r.lrs) == len(r.losses) == len(r.raw_losses) == r.steps == 25
    assert r.lrs[0] == pytest.approx(1e-5) and r.lrs[-1] == pytest.approx(1e-1)
    np.testing.assert_allclose(np.diff(np.log(r.lrs)), np.log(1e4) / 24)
    assert r.suggestion == r.suggestions[r.method] and r.method == "min/10"
    assert r.head_lr == pytest.approx(10 * r.suggestion)  # finetune's default head_lr / lr
    assert json.loads(json.dumps(r.to_dict()))["lrs"] == r.lrs


def test_stops_when_the_loss_diverges():
    strategy, model, data = _prepared("regression")
    r = find_lr(strategy, model, data, start=1e-4, end=1e4, steps=100, diverge=4.0)
    assert r.stopped_early and len(r.lrs) < 100
    assert r.losses[-1] > 4.0 * min(r.losses[:-1])
    assert len(r.lrs) == len(r.losses) == len(r.raw_losses)


def test_ramps_every_group_by_the_same_factor(tiny_images, monkeypatch):
    created = []

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    strategy = make_strategy("finetune", {"lr_decay": 0.5})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    r = find_lr(strategy, model, tiny_images, start=1e-4, end=1e-2, steps=4, batch_size=16)
    groups = created[0].param_groups
    body = [g["lr"] for g in groups if g["name"] != "head"]
    head = [g["lr"] for g in groups if g["name"] == "head"]
    assert max(body) == pytest.approx(r.lrs[-1])  # the top layer group trains at the ramp's lr
    assert min(body) == pytest.approx(r.lrs[-1] * 0.5)  # small-cnn:16 has 2 groups; lr_decay kept
    assert head and all(h == pytest.approx(10 * r.lrs[-1]) for h in head)


def test_leaves_the_model_and_the_random_state_unchanged(tiny_images):
    strategy = make_strategy("finetune", {"train_last": 1, "augment": True, "mixup": 0.2})
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    model.eval()
    model.head.train()  # mixed modes survive too
    state = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    assert not all(flags)
    rng = torch.get_rng_state()
    r = find_lr(strategy, model, tiny_images, start=1e-3, end=10.0, steps=8, batch_size=16)
    assert len(r.lrs) >= 2
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def _train_loss(strategy, model, data, lr: float) -> float:
    """Final training loss of a copy of ``model`` after ~100 steps at a constant ``lr``."""
    m = copy.deepcopy(model)
    cfg = TrainConfig(epochs=13, lr=lr, head_lr=10 * lr, schedule="constant", warmup=0.0, progress=False)
    _, history = Trainer(cfg).fit(strategy, m, data, None)
    return history[-1]["train_loss"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_suggestion_is_within_a_decade_of_the_best_constant_lr(task):
    strategy, model, data = _prepared(task)
    r = find_lr(strategy, model, data)
    grid = 10.0 ** np.arange(-5, 1)
    losses = [_train_loss(strategy, model, data, lr) for lr in grid]
    best = grid[int(np.argmin(losses))]
    assert abs(np.log10(r.suggestion) - np.log10(best)) <= 1.0, (r.suggestions, dict(zip(grid, losses)))
    # ... and training there does learn: far below the loss at the start of the ramp
    assert _train_loss(strategy, model, data, r.suggestion) < 0.5 * r.losses[0]


def test_suggest_on_a_known_curve():
    lrs = np.geomspace(1e-6, 1, 121)
    x = np.log10(lrs)
    losses = 1 - 0.8 / (1 + np.exp(-3 * (x + 3)))  # falls fastest at 1e-3 ...
    losses = np.where(x > -1, losses + 5 * (x + 1) ** 2, losses)  # ... and turns up after 1e-1
    s = suggest(lrs, losses)
    assert s["steepest"] == pytest.approx(1e-3, rel=0.15)
    assert s["min/10"] == pytest.approx(lrs[np.argmin(losses)] / 10)
    assert 1e-3 < s["min/10"] < 2e-2
    with pytest.raises(ConfigError, match="no finite loss"):
        suggest(lrs[:3], [np.nan] * 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"start": 0}, "'start' parameter of find_lr"), ({"end": 1e-8}, "'end' parameter of find_lr"),
    ({"steps": 1}, "'steps' parameter"), ({"smooth": 1.0}, "'smooth' parameter"),
    ({"diverge": 1.0}, "'diverge' parameter"),
])
def test_bad_arguments(kwargs, message):
    strategy, model, data = _prepared("classification")
    with pytest.raises(ConfigError, match=message):
        find_lr(strategy, model, data, **kwargs)


def test_plot_writes_a_png(tmp_path):
    r = LRFinderResult(lrs=list(np.geomspace(1e-5, 1, 30)), losses=list(np.linspace(2, 1, 30)),
                       raw_losses=list(np.linspace(2, 1, 30)), suggestion=0.1,
                       suggestions={"min/10": 0.1, "steepest": None})
    path = r.plot(tmp_path / "sub" / "lr.png")
    assert path.read_bytes().startswith(PNG)


# ----------------------------------------------------------------------------- the API and the CLI


def test_fit_lr_auto_trains_at_the_suggestion_and_records_it(tmp_path):
    import transferkit as tk

    data = linear_task("classification")
    result = tk.fit(Identity(8), data, "finetune", lr="auto", epochs=1, progress=False, out=tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    found = manifest["lr_find"]
    assert found["suggestion"] > 0 and len(found["lrs"]) == len(found["losses"]) > 10
    assert manifest["train"]["lr"] == pytest.approx(found["suggestion"])
    assert manifest["train"]["head_lr"] == pytest.approx(10 * found["suggestion"])
    assert (tmp_path / "b" / "lr_find.png").read_bytes().startswith(PNG)
    assert (tmp_path / "b" / "report.md").exists()
    assert result.manifest["lr_find"]["suggestion"] == found["suggestion"]
    # the same split and seed as the standalone finder
    alone = tk.lr_find(Identity(8), data, "finetune")
    assert alone.suggestion == pytest.approx(found["suggestion"])


def test_fit_lr_auto_keeps_a_given_head_lr_and_refuses_what_it_cannot_do():
    import transferkit as tk

    data = linear_task("classification")
    result = tk.fit(Identity(8), data, "finetune", lr="auto", head_lr=0.05, epochs=1, progress=False)
    assert result.manifest["train"]["head_lr"] == 0.05
    assert result.manifest["train"]["lr"] == result.manifest["lr_find"]["suggestion"]
    with pytest.raises(ConfigError, match="float in \\(0, 10\\] or 'auto'. Got 'fast'"):
        tk.fit(Identity(8), data, "finetune", lr="fast", epochs=1, progress=False)
    with pytest.raises(ConfigError, match="'linear-probe' does not train with the generic loop"):
        tk.fit(Identity(8), data, "linear-probe", lr="auto", progress=False)


def test_cli_lr_find_prints_the_suggestion_and_writes_the_plot(image_folder, tmp_path):
    from transferkit.cli import lr_find

    from transferkit.cli.errors import ErrorHandlingGroup

    app = typer.Typer(cls=ErrorHandlingGroup)  # the real app's error handling
    app.callback()(lambda: None)  # keep "lr-find" a sub-command, as in the real app
    lr_find.register(app)
    plot = tmp_path / "lr.png"
    r = CliRunner().invoke(app, ["lr-find", "--backbone", "small-cnn:16", "--data", str(image_folder), "--steps",
                                 "12", "--start", "1e-4", "--batch-size", "16", "-o", "augment=true", "--out", str(plot)])
    assert r.exit_code == 0, r.output
    assert "suggested learning rate:" in r.output and "--head-lr" in r.output
    assert plot.read_bytes().startswith(PNG)
    r = CliRunner().invoke(app, ["lr-find", "--backbone", "small-cnn:16", "--data", str(image_folder),
                                 "--strategy", "linear-probe", "--out", str(plot)])
    assert r.exit_code == 2 and "does not train with the generic loop" in r.output


def test_cli_fit_lr_must_be_a_number_or_auto(image_folder, tmp_path):
    from transferkit.cli.main import app

    r = CliRunner().invoke(app, ["fit", "--backbone", "small-cnn:16", "--data", str(image_folder), "--strategy",
                                 "finetune", "--out", str(tmp_path / "b"), "--lr", "fast"])
    assert r.exit_code == 2 and "--lr must be a number (e.g. 3e-4) or 'auto'" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "b").exists()
