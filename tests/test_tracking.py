"""Experiment tracking through Accelerate's trackers (TensorBoard, MLflow)."""
from __future__ import annotations

from pathlib import Path

import pytest

from transferkit.backbones import load_backbone
from transferkit.errors import ConfigError
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer

EPOCHS, BATCH = 2, 8  # 36 tiny images -> 5 optimisation steps per epoch, 10 in all
STEPS = 10


def _fit(data, strategy=None, **config):
    strategy = strategy or make_strategy("finetune")
    model = strategy.prepare(load_backbone("small-cnn:16"), data)
    trainer = Trainer(TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=1e-3, head_lr=1e-3, progress=False, **config))
    model, history = trainer.fit(strategy, model, data, data)
    return trainer, history


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for run in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _hparams(folder: Path) -> dict:
    """The hyper-parameters of the TensorBoard HParams plugin's session-start record."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for f in folder.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.tag == "_hparams_/session_start_info":
                    info = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    return {k: getattr(x, x.WhichOneof("kind")) for k, x in info.session_start_info.hparams.items()}
    return {}


def test_tensorboard_logs_steps_epochs_and_config(tiny_images, tmp_path):
    pytest.importorskip("tensorboard")
    trainer, history = _fit(tiny_images, track="tensorboard", track_dir=str(tmp_path / "tb"))
    scalars = _scalars(tmp_path / "tb")
    # One point per optimisation step: the batch loss and the learning rate it used.
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, STEPS + 1))
    assert all(v > 0 for _, v in scalars["train/loss"])
    lrs = [v for _, v in scalars["train/lr"]]
    assert len(lrs) == STEPS and lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0] / 10  # cosine decay
    # One point per epoch (at the epoch's last step): the history row.
    assert [s for s, _ in scalars["epoch/val_accuracy"]] == [STEPS // 2, STEPS]
    assert [v for _, v in scalars["epoch/val_accuracy"]] == pytest.approx([h["val_accuracy"] for h in history])
    assert [v for _, v in scalars["epoch/train_loss"]] == pytest.approx([h["train_loss"] for h in history])
    # The run's configuration: TrainConfig, resolved values and the strategy.
    hp = _hparams(tmp_path / "tb")
    assert hp["strategy.name"] == "finetune" and hp["backbone"] == "small-cnn:16"
    assert hp["batch_size"] == BATCH and hp["resolved.steps"] == STEPS and hp["track"] == "tensorboard"
    assert list((tmp_path / "tb").rglob("hparams.yml"))
    assert trainer.accelerator.trackers == []  # ended and released


def test_trackers_end_even_when_training_fails(tiny_images, tmp_path):
    pytest.importorskip("tensorboard")
    strategy = make_strategy("finetune")
    original = strategy.on_epoch_start

    def boom(model, epoch, epochs):
        if epoch == 1:
            raise RuntimeError("boom")
        original(model, epoch, epochs)

    strategy.on_epoch_start = boom
    model = strategy.prepare(load_backbone("small-cnn:16"), tiny_images)
    trainer = Trainer(TrainConfig(epochs=EPOCHS, batch_size=BATCH, progress=False, track="tensorboard",
                                  track_dir=str(tmp_path / "tb")))
    acc, ended = trainer.accelerator, []
    end = acc.end_training
    acc.end_training = lambda: (ended.append(True), end())[1]
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(strategy, model, tiny_images, tiny_images)
    assert ended == [True] and acc.trackers == []  # end_training ran in the finally
    # end_training closed (flushed) the writer: the first epoch is on disk.
    scalars = _scalars(tmp_path / "tb")
    assert len(scalars["train/loss"]) == STEPS // 2 and len(scalars["epoch/val_accuracy"]) == 1


def test_mlflow_run_has_params_and_metrics(tiny_images, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the Trainer opts in; undone after the test
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    _, history = _fit(tiny_images, track="mlflow", track_dir=str(tmp_path / "ml"))
    client = MlflowClient((tmp_path / "ml" / "mlruns").as_uri())
    exp = client.get_experiment_by_name("transferkit-finetune")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "finetune" and run.data.params["batch_size"] == str(BATCH)
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))
    val = sorted(client.get_metric_history(run.info.run_id, "epoch/val_accuracy"), key=lambda m: m.step)
    assert [m.value for m in val] == pytest.approx([h["val_accuracy"] for h in history])


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="'track' parameter of TrainConfig must be one of tensorboard, mlflow"):
        TrainConfig(track="wandb")


def test_no_tracking_writes_nothing(tiny_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer, history = _fit(tiny_images)
    assert len(history) == EPOCHS
    assert trainer.accelerator.log_with == [] and trainer.accelerator.trackers == []
    assert list(tmp_path.iterdir()) == []  # no runs/track, no mlruns


def test_cli_fit_track_flags(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from typer.testing import CliRunner

    from conftest import shapes_images
    from transferkit.cli.main import app

    X, y = shapes_images(n_per_class=6)
    for i, (img, label) in enumerate(zip(X, y)):
        d = tmp_path / "imgs" / str(label)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    args = ["fit", "--backbone", "small-cnn:16", "--data", tmp_path / "imgs", "--strategy", "finetune",
            "--epochs", "1", "--out", tmp_path / "bundle"]
    r = CliRunner().invoke(app, [str(a) for a in args + ["--track", "tensorboard", "--track-dir", tmp_path / "tb"]])
    assert r.exit_code == 0, r.output
    assert "train/loss" in _scalars(tmp_path / "tb")
    bad = CliRunner().invoke(app, [str(a) for a in args + ["--track", "neptune", "--overwrite"]])
    assert bad.exit_code == 2 and "track" in bad.output
