"""The generic loop: config validation, learning, early stopping, schedules."""
from __future__ import annotations

import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.errors import ConfigError
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.training import TrainConfig, Trainer
from transferkit.training.loop import _decay_split, _lr_lambda


@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr"),
    ({"schedule": "linear"}, "schedule"), ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"warmup": 1.5}, "warmup"), ({"patience": 0}, "patience"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}' parameter of TrainConfig"):
        TrainConfig(**kwargs)


def test_finetune_learns_the_tiny_task(tiny_images):
    strategy = make_strategy("finetune")
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    model, history = Trainer(TrainConfig(epochs=15, lr=3e-3, head_lr=3e-3, progress=False)).fit(
        strategy, model, tiny_images, None)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    acc = (predict_outputs(model, tiny_images).argmax(1) == tiny_images.targets).mean()
    assert acc > 0.8


def test_early_stopping_restores_the_best_checkpoint(tiny_images):
    strategy = make_strategy("finetune")
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    # A huge learning rate makes validation accuracy erratic; patience stops the run early.
    model, history = Trainer(TrainConfig(epochs=30, lr=0.5, head_lr=0.5, patience=2, progress=False)).fit(
        strategy, model, tiny_images, tiny_images)
    scores = [h["val_accuracy"] for h in history]
    assert len(history) < 30
    final = (predict_outputs(model, tiny_images).argmax(1) == tiny_images.targets).mean()
    assert final == pytest.approx(max(scores))


def test_a_validation_tie_keeps_the_later_epoch_and_does_not_reset_patience(tiny_images, monkeypatch):
    """A small validation split saturates (NER reached F1 100 by epoch 18 of 60): a tie must not keep the early
    model, and patience counts a tie as no gain."""
    import transferkit.training.loop as loop

    scripted, states = iter([0.5, 0.9, 0.9, 0.9, 0.7, 0.7]), []
    real = loop.predict_outputs

    def recording(model, data, **kw):  # the weights each epoch is validated with
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, data, **kw)

    monkeypatch.setattr(loop, "predict_outputs", recording)
    monkeypatch.setattr(loop, "compute_metrics", lambda *a, **k: {"accuracy": next(scripted)})
    strategy = make_strategy("finetune")
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    model, history = Trainer(TrainConfig(epochs=6, patience=3, progress=False)).fit(
        strategy, model, tiny_images, tiny_images)
    assert [h["val_accuracy"] for h in history] == [0.5, 0.9, 0.9, 0.9, 0.7]  # stopped: 3 epochs without a gain
    restored = model.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in states[3].items())  # the last of the tied epochs
    assert not all(torch.equal(restored[k], v) for k, v in states[1].items())


def test_weight_decay_skips_biases_and_norms():
    layer = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    groups = _decay_split([{"params": list(layer.parameters()), "lr": 1.0}], 0.1)
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0].dim() == 2


def test_warmup_then_cosine():
    fn = _lr_lambda("cosine", total=100, warmup=10)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(55) == pytest.approx(0.5, abs=0.02) and fn(100) == pytest.approx(0.0, abs=1e-6)
    assert _lr_lambda("constant", 100, 0)(50) == 1.0
