"""``compare`` resumes at run granularity: finished runs are recorded as they finish and not trained again."""
from __future__ import annotations

import pytest

from transferkit.errors import ConfigError
from transferkit.workflows import compare as comparing
from transferkit.workflows.compare import compare
from transferkit.workflows.run_journal import journal_path

ARGS = dict(seeds=2, labels_per_class=4, baselines=[], epochs=1, progress=False)
STRATEGIES = ["finetune", "linear-probe"]
REAL_TRAIN_AND_SCORE = comparing.train_and_score


def _counting(monkeypatch, fail_at: int | None = None):
    real, calls = REAL_TRAIN_AND_SCORE, []

    def counted(backbone, strategy, train, *args, **kwargs):
        calls.append((strategy.name, train.fingerprint()))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # a kill in the middle of the third run
        return real(backbone, strategy, train, *args, **kwargs)

    monkeypatch.setattr(comparing, "train_and_score", counted)
    return calls


def test_an_interrupted_compare_resumes_without_training_finished_runs_again(tiny_images, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    calls = _counting(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        compare("small-cnn:16", tiny_images, STRATEGIES, out=out, **ARGS)
    assert not out.exists() and (journal_path(out) / "runs.jsonl").read_text().count("\n") == 2

    with pytest.raises(ConfigError, match="holds 2 finished runs of an interrupted compare. Pass resume=True"):
        compare("small-cnn:16", tiny_images, STRATEGIES, out=out, **ARGS)
    with pytest.raises(ConfigError, match=r"settings differ.*seeds \(2 then, 3 now\)"):
        compare("small-cnn:16", tiny_images, STRATEGIES, out=out, resume=True, **{**ARGS, "seeds": 3})

    _counting(monkeypatch)  # no failure now
    resumed = compare("small-cnn:16", tiny_images, STRATEGIES, out=out, resume=True, **ARGS)
    assert len(resumed.runs) == 4 and set(resumed.runs["seed"]) == {0, 1}
    assert not journal_path(out).exists() and (out / "report.md").exists()

    fresh_calls = _counting(monkeypatch)
    fresh = compare("small-cnn:16", tiny_images, STRATEGIES, **ARGS)
    assert len(fresh_calls) == 4
    # the two recorded runs kept their results, the other two trained as an uninterrupted compare trains them
    cols = ["strategy", "seed", "accuracy"]
    assert resumed.runs[cols].round(6).values.tolist() == fresh.runs[cols].round(6).values.tolist()


def test_resume_trains_only_the_runs_not_recorded(tiny_images, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    _counting(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        compare("small-cnn:16", tiny_images, STRATEGIES, out=out, **ARGS)
    calls = _counting(monkeypatch)
    compare("small-cnn:16", tiny_images, STRATEGIES, out=out, resume=True, **ARGS)
    assert [name for name, _ in calls] == ["finetune", "linear-probe"]  # seed 1's two runs; seed 0's were recorded
