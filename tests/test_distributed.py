"""The same ``fit`` runs unchanged under ``torchrun --nproc_per_node 2`` on CPU (gloo)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys, numpy as np, torch.distributed as dist
sys.path.insert(0, {tests!r})
from conftest import shapes_images
import transferkit as tk
from transferkit.data import from_arrays
X, y = shapes_images(n_per_class=16)
data = from_arrays(X, y, label_names=["square", "bar", "noise"])
r = tk.fit("small-cnn:16", data, "finetune", test_data=data, epochs=3, batch_size=8, lr=3e-3, head_lr=3e-3,
           out={out!r}, progress=False, val_fraction=0.0)
from accelerate import PartialState
s = PartialState()
print(f"rank={{s.process_index}} world={{s.num_processes}} acc={{r.metrics['accuracy']:.3f}}", flush=True)
"""


def test_fit_under_torchrun_two_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "bundle")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    out = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(script)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    found = sorted(re.findall(r"rank=(\d) world=(\d) (acc=[\d.]+)", out.stdout))
    assert [f[:2] for f in found] == [("0", "2"), ("1", "2")], out.stdout
    # both processes end with the same (synchronised) model
    assert found[0][2] == found[1][2]
    import transferkit as tk

    predictor = tk.load(tmp_path / "bundle")
    assert predictor.label_names == ["square", "bar", "noise"]
