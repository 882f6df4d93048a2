"""``transferkit continual`` and ``transferkit multitask`` on small real data (Fashion-MNIST, penguins)."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from transferkit.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_continual_command_writes_matrices_and_progressive_never_forgets(tmp_path):
    out = tmp_path / "cl"
    r = invoke("continual", "--split", 2, "--learners", "naive,progressive", "--labels-per-class", 12,
               "--test-per-class", 10, "--epochs", 1, "--image-size", 12, "--out", out)
    assert r.exit_code == 0, r.output
    result = json.loads((out / "continual.json").read_text())
    assert result["stream"] == {"name": result["stream"]["name"], "scenario": "task", "experiences": 5}
    runs = {run["learner"]: run for run in result["runs"]}
    acc = np.array(runs["progressive"]["accuracy"])
    assert acc.shape == (5, 5) and ((acc >= 0) & (acc <= 1)).all()
    # earlier columns are frozen: every task keeps the accuracy it had once learnt
    for j in range(5):
        assert np.all(acc[j:, j] == acc[j, j])
    assert runs["progressive"]["metrics"]["forgetting"] == 0.0
    assert (out / "accuracy_matrices.png").stat().st_size > 1000
    assert "| progressive |" in (out / "report.md").read_text()
    # an existing folder is refused before any training
    again = invoke("continual", "--split", 2, "--learners", "naive", "--out", out)
    assert again.exit_code == 2 and "already exists" in again.output


def test_continual_command_rejects_bad_choices(tmp_path):
    r = invoke("continual", "--split", 2, "--learners", "naive", "-o", "buffer_size=10")
    assert r.exit_code == 2 and "buffer_size" in r.output and "Their options" in r.output
    r = invoke("continual", "--split", 2, "--learners", "replay", "-o", "buffer_size=0", "--labels-per-class", 5)
    assert r.exit_code == 2 and "buffer_size" in r.output
    r = invoke("continual", "--split", 2, "--permuted", 3)
    assert r.exit_code == 2 and "exactly one of split" in r.output
    r = invoke("continual", "--split", 2, "--learners", "nave")
    assert r.exit_code == 2 and "naive" in r.output


def test_multitask_command_compares_with_single_task_and_ships_a_bundle_per_task(tmp_path):
    import transferkit as tk
    from transferkit.data.multitask import load_penguins_multitask

    out = tmp_path / "mt"
    r = invoke("multitask", "--data", "penguins", "--epochs", 15, "--lr", 3e-3, "--out", out)
    assert r.exit_code == 0, r.output
    result = json.loads((out / "multitask.json").read_text())
    assert set(result["summary"]) == {"species", "sex"}
    methods = {(run["task"], run["method"]) for run in result["runs"]}
    assert methods == {(t, m) for t in ("species", "sex") for m in ("hard/fixed", "single")}
    _, test = load_penguins_multitask(0)
    for task in ("species", "sex"):
        predictor = tk.load(out / "bundles" / task)
        accuracy = float(np.mean(predictor.outputs(test[task].items).argmax(1) == test[task].targets))
        mine = next(x for x in result["runs"] if x["task"] == task and x["method"] == "hard/fixed")
        assert accuracy == mine["accuracy"]  # the bundle is the model that was scored
        assert accuracy > 0.7  # majority class: 0.44 (species), 0.5 (sex)


def test_multitask_command_rejects_bad_choices(tmp_path):
    r = invoke("multitask", "--weighting", "pcgrd", "--epochs", 1)
    assert r.exit_code == 2 and "pcgrad" in r.output
    r = invoke("multitask", "--data", tmp_path / "missing.csv", "--epochs", 1)
    assert r.exit_code == 2 and "label-columns" in r.output
