"""Crash and resume: ``fit`` checkpoints as it trains, and a killed run resumes to the uninterrupted result."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import transferkit as tk
from transferkit.errors import ConfigError
from transferkit.training import TrainConfig
from transferkit.training.checkpoint import LATEST, Checkpointer, setting_differences

FIT = dict(epochs=3, batch_size=8, lr=1e-2, head_lr=1e-2, progress=False, report=False, checkpoint_every=1)


class Killed(BaseException):
    """Stands for a kill right after a checkpoint was written."""


@pytest.fixture
def table(tmp_path) -> Path:
    """96 rows, 4 numeric columns, 3 classes: 10 optimizer steps an epoch at batch 8 (20% validation)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 32)
    x = rng.normal(size=(96, 4)) + 0.8 * y[:, None]
    path = tmp_path / "table.csv"
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.4f}" for v in xi) + f",{'xyz'[yi]}" for xi, yi in zip(x, y)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def weights(bundle: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(bundle / "model.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["metrics"]["accuracy"] == mb["metrics"]["accuracy"]
    assert ma["metrics"]["log_loss"] == pytest.approx(mb["metrics"]["log_loss"], rel=1e-5)
    assert [r["epoch"] for r in ma["history"]] == [r["epoch"] for r in mb["history"]]
    for ra, rb in zip(ma["history"], mb["history"]):
        assert ra == pytest.approx(rb, rel=1e-5)


def test_checkpoint_every_is_validated():
    with pytest.raises(ConfigError, match="'checkpoint_every' parameter of TrainConfig"):
        TrainConfig(checkpoint_every=0)


def test_setting_differences_name_the_keys():
    assert setting_differences({"a": {"b": 1, "c": (1, 2)}}, {"a": {"b": 2, "c": [1, 2]}}) == ["a.b (1 then, 2 now)"]


def test_interrupted_fit_resumes_to_the_same_result(table, tmp_path, monkeypatch):
    whole = tk.fit("mlp:16", str(table), "finetune", out=tmp_path / "whole", **FIT)
    assert not (tmp_path / "whole.checkpoint").exists()  # removed once the bundle is written

    save, saves = Checkpointer.save, []

    def save_then_die(self, accelerator, state):
        path = save(self, accelerator, state)
        saves.append(state.position())
        if len(saves) == 13:  # mid-epoch 2: epoch 1's end, then 3 of epoch 2's 10 steps
            raise Killed
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    out, folder = tmp_path / "cut", tmp_path / "cut.checkpoint"
    with pytest.raises(Killed):
        tk.fit("mlp:16", str(table), "finetune", out=out, **FIT)
    monkeypatch.setattr(Checkpointer, "save", save)
    assert not out.exists()
    assert (folder / LATEST).read_text() == "epoch-0001-batch-000003"
    assert "--resume" in (folder / "README.txt").read_text()

    with pytest.raises(ConfigError, match="holds the checkpoint of an interrupted run"):
        tk.fit("mlp:16", str(table), "finetune", out=out, **FIT)
    with pytest.raises(ConfigError, match=r"settings differ.*train\.lr \(0\.01 then, 0\.02 now\)"):
        tk.fit("mlp:16", str(table), "finetune", out=out, resume=True, **{**FIT, "lr": 2e-2})

    resumed = tk.fit("mlp:16", str(table), "finetune", out=out, resume=True, **FIT)
    assert not folder.exists()
    assert [pytest.approx(r) for r in whole.history] == resumed.history
    assert_same_run(tmp_path / "whole", out)


def test_resume_without_a_checkpoint_trains_from_the_start(table, tmp_path):
    folder = tmp_path / "out.checkpoint"
    folder.mkdir()
    (folder / "epoch-0001-batch-000000.partial").mkdir()  # a run killed during its first save
    with pytest.warns(UserWarning, match="No checkpoint"):
        tk.fit("mlp:16", str(table), "finetune", out=tmp_path / "out", resume=True, **{**FIT, "epochs": 1})
    assert not folder.exists() and (tmp_path / "out").is_dir()


def cli(out: Path, table: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "transferkit.cli.main", "fit", "--backbone", "mlp:16", "--data", str(table),
            "--strategy", "finetune", "--epochs", "3", "--batch-size", "8", "--lr", "1e-2", "--head-lr", "1e-2",
            "--out", str(out), *extra]


def step(latest: Path) -> int:
    """The optimizer step of the checkpoint ``latest`` names (10 an epoch); -1 before the first."""
    try:
        epoch, batch = map(int, re.findall(r"\d+", latest.read_text()))
    except FileNotFoundError:
        return -1
    return 10 * epoch + batch


def test_sigkilled_fit_resumes_to_the_same_result(table, tmp_path):
    """A real `transferkit fit` process, killed with SIGKILL at a random step and rerun with --resume."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFERKIT_LOG_DIR": str(tmp_path / "logs")}
    # the reference saves a checkpoint at each epoch end only: the interval does not change the result
    whole = subprocess.run(cli(tmp_path / "whole", table), env=env, capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr[-2000:]

    out, latest = tmp_path / "cut", tmp_path / "cut.checkpoint" / LATEST
    target = random.randint(1, 27)  # of 30 optimizer steps: 3 epochs of 10
    proc = subprocess.Popen(cli(out, table, "--checkpoint-every", "1"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while step(latest) < target:
            assert proc.poll() is None and time.monotonic() < deadline, "fit ended before the step to kill it at"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()
    killed_at = latest.read_text()

    resumed = subprocess.run(cli(out, table, "--checkpoint-every", "1", "--resume"), env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "cut.checkpoint").exists()
    try:
        assert_same_run(tmp_path / "whole", out)
    except AssertionError as exc:
        raise AssertionError(f"killed after checkpoint {killed_at}: {exc}") from None
