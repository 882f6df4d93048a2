"""``multitask`` resumes by run: each model trained (a seed's multi-task model, one task alone) is recorded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit as tk
from transferkit.data.multitask import MultiTaskData
from transferkit.errors import ConfigError
from transferkit.workflows import multitask as multitasking
from transferkit.workflows.multitask import KEPT_MODEL, run_multitask, save_multitask
from transferkit.workflows.run_journal import journal_path

REAL_FIT = multitasking.fit_multitask


def _toy(n: int, seed: int) -> MultiTaskData:
    """Two tasks on the same 4 columns: the sign of column 0 and a 3-way bin of column 1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return MultiTaskData.from_targets(X, {"a": (X[:, 0] > 0).astype(int), "b": np.digitize(X[:, 1], [-0.5, 0.5])},
                                      modality="tabular", label_names={"a": ["neg", "pos"], "b": ["lo", "mid", "hi"]})


TRAIN, TEST = _toy(40, 0), _toy(30, 1)
ARGS = dict(test_data=TEST, labels_per_class=8, seeds=2, epochs=3, lr=1e-2)


def _counting(monkeypatch, fail_at: int | None = None) -> list[tuple[int, str]]:
    """Count the models trained as (seed, tasks); raise as the ``fail_at``-th starts (a kill)."""
    calls = []

    def counted(backbone, data, **kwargs):
        calls.append((kwargs["train_config"].seed, ",".join(data.names)))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return REAL_FIT(backbone, data, **kwargs)

    monkeypatch.setattr(multitasking, "fit_multitask", counted)
    return calls


def test_an_interrupted_multitask_resumes_without_training_recorded_models_again(tmp_path, monkeypatch):
    out = tmp_path / "mt"
    _counting(monkeypatch, fail_at=2)  # killed while task "a" trains alone on seed 0
    with pytest.raises(KeyboardInterrupt):
        run_multitask(TRAIN, "mlp:8", out=out, **ARGS)
    assert not out.exists() and (journal_path(out) / "runs.jsonl").read_text().count("\n") == 1
    assert (journal_path(out) / KEPT_MODEL).exists()  # the first seed's model: the bundles are made from it

    with pytest.raises(ConfigError, match="holds 1 finished runs of an interrupted multitask. Pass resume=True"):
        run_multitask(TRAIN, "mlp:8", out=out, **ARGS)
    with pytest.raises(ConfigError, match=r"settings differ.*epochs \(3 then, 4 now\)"):
        run_multitask(TRAIN, "mlp:8", out=out, resume=True, **{**ARGS, "epochs": 4})
    with pytest.raises(ConfigError, match=r'settings differ.*weighting \("fixed" then, "pcgrad" now\)'):
        run_multitask(TRAIN, "mlp:8", out=out, resume=True, weighting="pcgrad", **ARGS)

    calls = _counting(monkeypatch)
    resumed = run_multitask(TRAIN, "mlp:8", out=out, resume=True, **ARGS)
    assert calls == [(0, "a"), (0, "b"), (1, "a,b"), (1, "a"), (1, "b")]  # seed 0's multi-task model is not
    assert not journal_path(out).exists() and (out / "report.md").exists()

    fresh_calls = _counting(monkeypatch)
    fresh = run_multitask(TRAIN, "mlp:8", **ARGS)
    assert len(fresh_calls) == 6
    assert resumed["runs"] == fresh["runs"] and resumed["summary"] == fresh["summary"]
    assert resumed["runs"][0] != resumed["runs"][4]  # the seeds differ: a run read back under the wrong key would show
    mine, theirs = resumed["models"][0].state_dict(), fresh["models"][0].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    save_multitask(fresh, tmp_path / "fresh")
    for task in ("a", "b"):  # the bundles of the resumed run are the uninterrupted run's
        outputs = [tk.load(folder / "bundles" / task).outputs(TEST[task].items) for folder in (out, tmp_path / "fresh")]
        assert np.array_equal(*outputs)


def test_a_recorded_multitask_run_without_its_model_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "mt"
    _counting(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_multitask(TRAIN, "mlp:8", out=out, **ARGS)
    (journal_path(out) / KEPT_MODEL).unlink()
    with pytest.raises(ConfigError, match=f"run 0/hard/fixed is recorded but its model {KEPT_MODEL} is missing"):
        run_multitask(TRAIN, "mlp:8", out=out, resume=True, **ARGS)


def test_cli_multitask_resume_needs_out(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    r = CliRunner().invoke(app, ["multitask", "--data", "penguins", "--epochs", "1", "--resume"])
    assert r.exit_code == 2 and "resume=True (--resume) needs out: multitask records its finished runs" in r.output
