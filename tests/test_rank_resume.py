"""``rank`` resumes by run: each candidate's scores and each architecture's random-init reference are recorded."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.errors import ConfigError
from transferkit.workflows import rank as ranking
from transferkit.workflows.rank import rank
from transferkit.workflows.run_journal import journal_path

CANDIDATES = ["small-cnn:16", "small-cnn:8"]
ARGS = dict(labels_per_class=10, scores=["knn", "linear-probe"])
REAL = {"_score_candidate": ranking._score_candidate, "_score_reference": ranking._score_reference}
SAME = ["candidate", "rank", "features", "knn", "linear-probe", "random_knn", "random_linear-probe", "flag", "error"]


def _counting(monkeypatch, fail_at: int | None = None) -> list[tuple[str, str]]:
    """Count the candidates and references scored; raise as the ``fail_at``-th starts (a kill)."""
    calls = []

    def counted(name):
        def run(first, *args):
            calls.append((name.split("_")[-1], first if isinstance(first, str) else first["spec"]))
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            return REAL[name](first, *args)
        return run

    for name in REAL:
        monkeypatch.setattr(ranking, name, counted(name))
    return calls


def _lines(out) -> int:
    return (journal_path(out) / "runs.jsonl").read_text().count("\n")


def test_an_interrupted_rank_resumes_without_scoring_recorded_candidates_again(tmp_path, monkeypatch):
    out = tmp_path / "rank"
    _counting(monkeypatch, fail_at=2)  # killed while scoring the second candidate
    with pytest.raises(KeyboardInterrupt):
        rank(CANDIDATES, "digits", out=out, **ARGS)
    assert not out.exists() and _lines(out) == 1

    with pytest.raises(ConfigError, match="holds 1 finished runs of an interrupted rank. Pass resume=True"):
        rank(CANDIDATES, "digits", out=out, **ARGS)
    with pytest.raises(ConfigError, match=r'settings differ.*scores \(\["knn", "linear-probe"\] then, \["knn"\] now\)'):
        rank(CANDIDATES, "digits", out=out, resume=True, **{**ARGS, "scores": ["knn"]})
    with pytest.raises(ConfigError, match=r"settings differ.*labels_per_class \(10 then, 5 now\)"):
        rank(CANDIDATES, "digits", out=out, resume=True, **{**ARGS, "labels_per_class": 5})

    calls = _counting(monkeypatch)
    resumed = rank(CANDIDATES, "digits", out=out, resume=True, **ARGS)
    assert calls == [("candidate", "small-cnn:8"), ("reference", "small-cnn:16"), ("reference", "small-cnn:8")]
    assert not journal_path(out).exists() and (out / "rank.csv").exists() and resumed.path == out

    fresh_calls = _counting(monkeypatch)
    fresh = rank(CANDIDATES, "digits", **ARGS)
    assert len(fresh_calls) == 4
    assert resumed.table[SAME].round(6).equals(fresh.table[SAME].round(6))
    assert resumed.recommendation == fresh.recommendation and resumed.notes == fresh.notes
    assert fresh.table["knn"].nunique() == 2  # the candidates differ: a mixed-up row would show


def test_references_are_runs_and_failed_loads_are_not_recorded(tmp_path, monkeypatch):
    out = tmp_path / "rank"
    _counting(monkeypatch, fail_at=5)  # 3 candidates (one fails to load), the first reference, then killed
    with pytest.raises(KeyboardInterrupt):
        rank([*CANDIDATES, "no-such-source:1"], "digits", out=out, **ARGS)
    assert _lines(out) == 3  # two candidates and one reference; the failed load is tried again

    calls = _counting(monkeypatch)
    resumed = rank([*CANDIDATES, "no-such-source:1"], "digits", out=out, resume=True, **ARGS)
    assert calls == [("candidate", "no-such-source:1"), ("reference", "small-cnn:8")]
    assert resumed.table.set_index("candidate").loc["no-such-source:1", "flag"] == "failed"


def test_cli_rank_resume_and_its_refusals(tmp_path, monkeypatch):
    runner, out = CliRunner(), tmp_path / "rank"
    args = ["rank", "--candidates", ",".join(CANDIDATES), "--data", "digits", "--labels-per-class", "10",
            "--scores", "knn,linear-probe"]
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 2 and "resume=True (--resume) needs out" in r.output
    _counting(monkeypatch, fail_at=2)
    assert runner.invoke(app, [*args, "--out", str(out)]).exit_code != 0 and _lines(out) == 1
    calls = _counting(monkeypatch)
    r = runner.invoke(app, [*args[:-1], "knn", "--out", str(out), "--resume"])
    assert r.exit_code == 2 and 'scores (["knn", "linear-probe"] then, ["knn"] now)' in r.output and not calls
    r = runner.invoke(app, [*args, "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert ("candidate", "small-cnn:16") not in calls and (out / "rank.md").exists()
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
