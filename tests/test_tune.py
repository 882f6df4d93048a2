"""``tune``: Optuna search scored on validation, SQLite resume, best-trial bundle, space checks, CLI."""
from __future__ import annotations

import sys

import pytest
import typer
from conftest import shapes_images
from PIL import Image
from typer.testing import CliRunner

import transferkit
from transferkit.errors import ConfigError
from transferkit.workflows import fit as fitting
from transferkit.workflows.fit import prepare_data
from transferkit.workflows.tune import tune

SPACE = {"lr": ["log", 1e-4, 1e-2], "epochs": ["int", 1, 2], "dropout": ["float", 0.0, 0.5]}
FAST = {"batch_size": 16}


def _optuna_trials(storage, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage}").trials


def test_importing_transferkit_does_not_import_optuna():
    import subprocess

    code = "import transferkit, transferkit.workflows.tune, transferkit.cli.tune, sys; print('optuna' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_best_trial_is_the_best_validation_score_within_the_space(tiny_images, monkeypatch):
    calls = []
    real_fit = fitting.fit

    def spy(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        calls.append((kwargs, result.metrics))
        return result

    monkeypatch.setattr(fitting, "fit", spy)
    r = tune("small-cnn:16", tiny_images, "finetune", space=SPACE, trials=3, seed=0, **FAST)
    assert len(r.trials) == 3 and set(r.trials["state"]) == {"COMPLETE"}
    assert r.metric == "accuracy" and r.direction == "maximize"
    assert r.best_value == max(r.trials["value"])
    assert 1e-4 <= r.best_params["lr"] <= 1e-2 and r.best_params["epochs"] in (1, 2)
    assert 0.0 <= r.best_params["dropout"] <= 0.5
    # Every trial trained on the same draw and was scored on the same validation split, never on test.
    _, val, _ = prepare_data(tiny_images, val_fraction=0.2, seed=0)
    assert len(calls) == 3
    for kwargs, metrics in calls:
        assert kwargs.get("test_data") is None and kwargs["val_data"].fingerprint() == val.fingerprint()
        assert metrics["evaluated_on"] == "validation" and metrics["n"] == len(val)
    assert sorted(m["accuracy"] for _, m in calls) == sorted(r.trials["value"])


def test_sqlite_study_resumes_to_the_total(tiny_images, tmp_path):
    db = tmp_path / "study.db"
    first = tune("small-cnn:16", tiny_images, space=SPACE, trials=2, storage=db, **FAST)
    assert len(first.trials) == 2
    second = tune("small-cnn:16", tiny_images, space=SPACE, trials=3, storage=db, **FAST)
    assert second.study_name == first.study_name  # the default name is stable
    assert list(second.trials["number"]) == [0, 1, 2]
    assert list(second.trials["value"][:2]) == list(first.trials["value"])  # the old trials were not rerun
    assert tune("small-cnn:16", tiny_images, space=SPACE, trials=3, storage=db, **FAST).trials.shape[0] == 3
    assert len(_optuna_trials(db, first.study_name)) == 3


def test_interrupted_study_stays_usable_and_resumes(tiny_images, tmp_path, monkeypatch):
    db = tmp_path / "study.db"
    real_fit, calls = fitting.fit, []

    def interrupted_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fitting, "fit", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        tune("small-cnn:16", tiny_images, space=SPACE, trials=3, storage=db, study_name="s", **FAST)
    states = [t.state.name for t in _optuna_trials(db, "s")]
    assert states == ["COMPLETE", "FAIL"]
    monkeypatch.setattr(fitting, "fit", real_fit)
    r = tune("small-cnn:16", tiny_images, space=SPACE, trials=2, storage=db, study_name="s", **FAST)
    assert list(r.trials["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]  # the failed trial does not count
    assert r.best_value == r.trials.loc[r.trials["state"] == "COMPLETE", "value"].max()


def test_best_trial_becomes_a_bundle_that_records_the_study(tiny_images, tmp_path):
    out = tmp_path / "best"
    r = tune("small-cnn:16", tiny_images, space=SPACE, trials=2, storage=tmp_path / "s.db", out=out, **FAST)
    assert r.path == out
    predictor = transferkit.load(out)
    m = predictor.manifest
    assert m["tuning"]["best_params"] == r.best_params and m["tuning"]["best_value"] == r.best_value
    assert m["tuning"]["study_name"] == r.study_name and m["tuning"]["n_complete"] == 2
    assert m["strategy"]["config"]["dropout"] == pytest.approx(r.best_params["dropout"])
    assert m["train"]["lr"] == pytest.approx(r.best_params["lr"]) and m["train"]["epochs"] == r.best_params["epochs"]
    assert m["tuning"]["refit_value"] == pytest.approx(r.best_value)  # the same draw and seed reproduce the trial
    X, _ = shapes_images(n_per_class=1)
    assert len(predictor.predict(list(X))) == 3
    with pytest.raises(transferkit.errors.BundleError):  # refused before any trial runs
        tune("small-cnn:16", tiny_images, space=SPACE, trials=1, out=out)


@pytest.mark.parametrize("space, message", [
    ({"lrr": ["log", 1e-4, 1e-2]}, "Valid keys"),
    ({"lr": ["log", 0, 1e-2]}, "LOW must be > 0"),
    ({"lr": ["float", 1e-2, 1e-4]}, "LOW < HIGH"),
    ({"dropout": ["float", 0.0, 0.99]}, "'dropout' parameter of FinetuneConfig"),
    ({"epochs": ["int", 0, 3]}, "'epochs' parameter of TrainConfig"),
    ({"epochs": ["float", 1, 3]}, "int field"),
    ({"epochs": ["int", 1.5, 3]}, "must be whole"),
    ({"lr": ["uniform", 1e-4, 1e-2]}, "KIND one of"),
    ({"lr": "log:1e-4:1e-2"}, "KIND one of"),
    ({"schedule": ["choice", "cosine", "linear"]}, "'schedule' parameter of TrainConfig"),
    ({"batch_size": ["int", 8, 32]}, "both fixed"),
    ({}, "empty"),
])
def test_bad_space_is_a_config_error_before_training(tiny_images, monkeypatch, space, message):
    monkeypatch.setattr(fitting, "fit", lambda *a, **k: pytest.fail("trained despite a bad space"))
    with pytest.raises(ConfigError, match=message) as info:
        tune("small-cnn:16", tiny_images, space=space, trials=1, **FAST)
    if message == "Valid keys":
        assert all(k in str(info.value) for k in ("lr", "epochs", "dropout", "train_last", "schedule"))


def test_default_spaces_are_valid_and_linear_probe_tunes_C():
    from transferkit.workflows.tune import DEFAULT_SPACES, check_space, default_space

    for name, space in DEFAULT_SPACES.items():
        assert check_space(space, name)
    assert set(default_space("linear-probe")) == {"C"}
    with pytest.raises(ConfigError, match="Unknown search-space key.*strategy C, batch_size, max_iter"):
        check_space({"dropout": ["float", 0.0, 0.5]}, "linear-probe")


# -- the command line ---------------------------------------------------------

def _app() -> typer.Typer:
    from transferkit.cli import tune as tune_cli

    from transferkit.cli.errors import ErrorHandlingGroup

    app = typer.Typer(cls=ErrorHandlingGroup)  # the real app's error handling
    app.callback()(lambda: None)  # a group, so the command is invoked by name as in the real CLI
    tune_cli.register(app)
    return app


def test_parse_space():
    from transferkit.cli.tune import parse_space

    assert parse_space(["lr=log:1e-5:1e-2", "epochs=int:2:30", "schedule=choice:cosine:onecycle",
                        "train-last=choice:1:2:null"]) == {
        "lr": ["log", 1e-5, 1e-2], "epochs": ["int", 2, 30], "schedule": ["choice", "cosine", "onecycle"],
        "train_last": ["choice", 1, 2, None]}
    assert parse_space(None) is None
    for bad in ("lr", "lr=log", "=log:1:2"):
        with pytest.raises(ConfigError, match="KEY=KIND:LOW:HIGH"):
            parse_space([bad])


def test_cli_tune_prints_trials_and_writes_the_bundle(tmp_path):
    X, y = shapes_images(n_per_class=8)
    for i, (img, label) in enumerate(zip(X, y)):
        d = tmp_path / "imgs" / ["square", "bar", "noise"][label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    runner, app = CliRunner(), _app()
    args = ["tune", "--backbone", "small-cnn:16", "--data", str(tmp_path / "imgs"), "--trials", "2",
            "--space", "lr=log:1e-4:1e-2", "--space", "epochs=int:1:2", "--space", "schedule=choice:cosine:onecycle",
            "--batch-size", "16", "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "best")]
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "best validation accuracy" in r.output and ("onecycle" in r.output or "cosine" in r.output)
    assert transferkit.load(tmp_path / "best").manifest["tuning"]["best_params"]["schedule"] in ("cosine", "onecycle")
    bad = runner.invoke(app, ["tune", "--backbone", "small-cnn:16", "--data", str(tmp_path / "imgs"),
                              "--space", "lrr=log:1e-4:1e-2"])
    assert bad.exit_code == 2 and "Valid keys" in bad.output
    help_text = runner.invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).output
    assert "lr=log:1e-5:1e-2" in help_text and "choice" in help_text


KILLED_TUNE = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import shapes_images
from transferkit.data import from_arrays
from transferkit.workflows import fit as fitting, tune as tuning
tuning.HEARTBEAT_S, tuning.GRACE_S = 1, 2
real_fit, calls = fitting.fit, []
def hang_on_second(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        open({marker!r}, "w").close()
        time.sleep(120)
    return real_fit(*args, **kwargs)
fitting.fit = hang_on_second
images, labels = shapes_images()
tuning.tune("small-cnn:16", from_arrays(images, labels, label_names=["square", "bar", "noise"]), space={space!r},
            trials=3, storage={db!r},
            study_name="s", batch_size=16)
"""


def test_a_trial_killed_with_sigkill_is_failed_by_its_missing_heartbeat_and_the_search_resumes(tiny_images, tmp_path,
                                                                                               monkeypatch):
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    from transferkit.workflows import tune as tuning

    db, marker = tmp_path / "study.db", tmp_path / "second-trial-started"
    script = KILLED_TUNE.format(tests=str(Path(__file__).parent), marker=str(marker), space=SPACE, db=str(db))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 240
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the second trial never started (exit {proc.poll()})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [t.state.name for t in _optuna_trials(db, "s")] == ["COMPLETE", "RUNNING"]  # what kill -9 leaves
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 2)
    time.sleep(3)  # past the grace period: the killed trial's heartbeat has stopped
    r = tune("small-cnn:16", tiny_images, space=SPACE, trials=2, storage=db, study_name="s", **FAST)
    assert list(r.trials["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]  # failed, not RUNNING forever
