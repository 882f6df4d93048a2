"""Fixtures of the hostile-input tests: a CLI runner with a private log folder, tiny files."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    """``$TRANSFERKIT_LOG_DIR`` for the test: where an internal error's traceback would go."""
    folder = tmp_path / "logs"
    monkeypatch.setenv("TRANSFERKIT_LOG_DIR", str(folder))
    return folder


@pytest.fixture
def cli(log_dir):
    """``cli(*args)``: run ``transferkit ARGS`` in-process; the result has ``exit_code``, ``stdout``, ``stderr``."""
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [a if isinstance(a, (str, bytes)) else str(a) for a in args])

    return invoke


def write_images(root, classes=("a", "b"), n: int = 4, size: int = 8, seed: int = 0):
    """``root/CLASS/i.png``: ``n`` random grey PNGs per class; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def text_rows(n: int = 8, labels=("x", "y")) -> str:
    """A small text CSV body (no header) with labels cycling through ``labels``."""
    return "".join(f"item number {i},{labels[i % len(labels)]}\n" for i in range(n))
