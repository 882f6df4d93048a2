"""``continual`` resumes by run: one learner over one seed's whole stream, recorded as it finishes."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.errors import ConfigError
from transferkit.workflows import continual as continuing
from transferkit.workflows.continual import run_continual
from transferkit.workflows.run_journal import journal_path

ARGS = dict(split=5, learners=["naive", "replay"], labels_per_class=10, test_per_class=10, epochs=1, seeds=2)
REAL_RUN_LEARNER = continuing._run_learner


def _counting(monkeypatch, fail_at: int | None = None) -> list[tuple[int, str]]:
    """Count the (seed, learner) runs trained; raise as the ``fail_at``-th starts (a kill)."""
    calls = []

    def counted(seed, backbone, stream, learner, *args):
        calls.append((seed, learner))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return REAL_RUN_LEARNER(seed, backbone, stream, learner, *args)

    monkeypatch.setattr(continuing, "_run_learner", counted)
    return calls


def _without_seconds(result: dict) -> list[dict]:
    return [{k: v for k, v in run.items() if k != "seconds"} for run in result["runs"]]


def test_an_interrupted_continual_resumes_without_training_recorded_learners_again(tmp_path, monkeypatch):
    out = tmp_path / "cl"
    _counting(monkeypatch, fail_at=2)  # killed while replay trains on seed 0's stream
    with pytest.raises(KeyboardInterrupt):
        run_continual("digits", "small-cnn:8", out=out, **ARGS)
    assert not out.exists() and (journal_path(out) / "runs.jsonl").read_text().count("\n") == 1

    with pytest.raises(ConfigError, match="holds 1 finished runs of an interrupted continual. Pass resume=True"):
        run_continual("digits", "small-cnn:8", out=out, **ARGS)
    with pytest.raises(ConfigError, match=r"settings differ.*epochs \(1 then, 2 now\)"):
        run_continual("digits", "small-cnn:8", out=out, resume=True, **{**ARGS, "epochs": 2})
    with pytest.raises(ConfigError, match=r'settings differ.*learners \(\["naive", "replay"\] then, \["naive"\] now\)'):
        run_continual("digits", "small-cnn:8", out=out, resume=True, **{**ARGS, "learners": ["naive"]})

    calls = _counting(monkeypatch)
    resumed = run_continual("digits", "small-cnn:8", out=out, resume=True, **ARGS)
    assert calls == [(0, "replay"), (1, "naive"), (1, "replay")]
    assert not journal_path(out).exists() and (out / "report.md").exists()

    fresh_calls = _counting(monkeypatch)
    fresh = run_continual("digits", "small-cnn:8", **ARGS)
    assert len(fresh_calls) == 4
    assert _without_seconds(resumed) == _without_seconds(fresh)
    assert resumed["summary"] == fresh["summary"] and resumed["matrices"] == fresh["matrices"]
    assert json.loads((out / "continual.json").read_text())["summary"] == fresh["summary"]
    runs = {(r["seed"], r["learner"]): r["accuracy"] for r in fresh["runs"]}
    assert runs[0, "naive"] != runs[1, "naive"]  # the seeds differ: a run read back under the wrong key would show


def test_cli_continual_resume(tmp_path, monkeypatch):
    runner, out = CliRunner(), tmp_path / "cl"
    args = ["continual", "--data", "digits", "--backbone", "small-cnn:8", "--split", "5", "--learners", "naive,replay",
            "--labels-per-class", "10", "--test-per-class", "10", "--epochs", "1", "--out", str(out)]
    _counting(monkeypatch, fail_at=2)
    assert runner.invoke(app, args).exit_code != 0
    r = runner.invoke(app, [*args, "--resume", "--seeds", "2"])
    assert r.exit_code == 2 and "seeds (1 then, 2 now)" in r.output
    calls = _counting(monkeypatch)
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert calls == [(0, "replay")] and (out / "continual.json").exists()
