"""Scaling out: the Ray engine gives the local engine's results, journals and resumes the same way.

One local Ray with two CPUs is started for the module (Ray's start-up takes seconds) and shut down after it.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transferkit.errors import ConfigError
from transferkit.workflows import run_journal as journaling
from transferkit.workflows.compare import compare
from transferkit.workflows.engine import import_ray, make_engine
from transferkit.workflows.run_journal import journal_path

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(seeds=2, labels_per_class=4, baselines=[], epochs=1, progress=False)
STRATEGIES = ["finetune", "linear-probe"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the Ray engine needs the scale extra: pip install 'transferkit[scale]'")
    import os

    from transferkit.export.ray_cluster import runtime_env

    cache = tmp_path_factory.mktemp("features")
    old = os.environ.get("TRANSFERKIT_CACHE")
    os.environ["TRANSFERKIT_CACHE"] = str(cache)  # the workers share this process's feature cache
    ray.init(address="local", num_cpus=2, runtime_env=runtime_env(None), include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("TRANSFERKIT_CACHE")
    else:
        os.environ["TRANSFERKIT_CACHE"] = old


def _rows(result):
    return result.runs.drop(columns="seconds").round(6).to_dict("records")


def test_an_unknown_engine_or_a_stray_address_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"'engine' parameter \(--engine\) must be one of local, ray. Got 'spark'"):
        make_engine("spark")
    with pytest.raises(ConfigError, match=r"needs engine='ray' \(--engine ray\)"):
        make_engine("local", "auto")
    with pytest.raises(ConfigError, match=r"'address' parameter \(--address\) must be 'auto', ray://HOST:PORT"):
        make_engine("ray", "somewhere")
    assert make_engine("local").map(pow, [(2, 3), (3, 2)]) == [8, 9]


_CLI_CHECK = """
import sys
from typer.testing import CliRunner
from transferkit.cli.main import app
r = CliRunner().invoke(app, ["compare", "--backbone", "small-cnn:16", "--data", "digits", "--strategies",
                             "linear-probe", "--engine", "spark", "--out", sys.argv[1]])
print(r.exit_code, "ray" in sys.modules)
print(r.output)
"""


def test_a_bad_engine_is_one_error_line_with_exit_2_and_ray_is_not_imported(tmp_path):
    out = tmp_path / "cmp"
    result = subprocess.run([sys.executable, "-c", _CLI_CHECK, str(out)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    status, *lines = result.stdout.strip().splitlines()
    assert status == "2 False", result.stdout + result.stderr  # exit code 2; importing the CLI did not import ray
    assert len(lines) == 1 and "--engine" in lines[0] and "local, ray" in lines[0] and "'spark'" in lines[0]
    assert not out.exists() and not journal_path(out).exists()


def test_an_unreachable_address_is_one_error_line_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    pytest.importorskip("ray")
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", "--backbone", "small-cnn:16", "--data", "digits", "--strategies",
                                 "linear-probe", "--engine", "ray", "--address", "127.0.0.1:9", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "--address" in r.output and "127.0.0.1:9" in r.output and "ray start --head" in r.output
    assert not out.exists() and not journal_path(out).exists()


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'transferkit\[scale\]'"):
        import_ray()


def test_workers_import_this_transferkit_and_share_the_feature_cache(ray_cluster):
    import os

    import transferkit

    @ray_cluster.remote(num_cpus=1)
    def where():
        import os

        import transferkit

        return transferkit.__file__, os.environ.get("TRANSFERKIT_CACHE")

    assert ray_cluster.get(where.remote()) == (transferkit.__file__, os.environ["TRANSFERKIT_CACHE"])


@pytest.fixture(scope="module")
def local_compare():
    from conftest import shapes_images
    from transferkit.data import from_arrays

    X, y = shapes_images()
    data = from_arrays(X, y, label_names=["square", "bar", "noise"])
    return data, compare("small-cnn:16", data, STRATEGIES, **ARGS)


def test_compare_on_ray_gives_the_local_runs_and_report(ray_cluster, local_compare, tmp_path):
    tiny_images, local = local_compare
    remote = compare("small-cnn:16", tiny_images, STRATEGIES, engine="ray", out=tmp_path / "ray", **ARGS)
    assert len(remote.runs) == 4 and _rows(remote) == _rows(local)
    assert remote.verdicts.equals(local.verdicts)
    assert (tmp_path / "ray" / "report.md").exists() and not journal_path(tmp_path / "ray").exists()


def test_a_compare_interrupted_on_ray_resumes_on_ray_without_training_recorded_runs(ray_cluster, local_compare,
                                                                                    tmp_path, monkeypatch):
    tiny_images, fresh = local_compare
    out = tmp_path / "cmp"
    real_record, recorded = journaling.RunJournal.record, []

    def record_then_die(self, key, fingerprint, row):
        real_record(self, key, fingerprint, row)
        recorded.append((key, row))
        if len(recorded) == 2:
            raise KeyboardInterrupt  # the driver killed after two runs finished; the others are cancelled

    monkeypatch.setattr(journaling.RunJournal, "record", record_then_die)
    with pytest.raises(KeyboardInterrupt):
        compare("small-cnn:16", tiny_images, STRATEGIES, engine="ray", out=out, **ARGS)
    assert not out.exists() and (journal_path(out) / "runs.jsonl").read_text().count("\n") == 2

    monkeypatch.setattr(journaling.RunJournal, "record", real_record)
    resumed = compare("small-cnn:16", tiny_images, STRATEGIES, engine="ray", out=out, resume=True, **ARGS)
    assert _rows(resumed) == _rows(fresh) and not journal_path(out).exists()
    for key, row in recorded:  # recorded runs are read back, not trained again: even their times are the same
        lpc, seed, label = key.split("/")
        again = resumed.runs[(resumed.runs["seed"] == int(seed)) & (resumed.runs["strategy"] == label)]
        assert again["seconds"].item() == row["seconds"]


def test_rank_on_ray_gives_the_local_table(ray_cluster, tiny_images):
    from transferkit.workflows.rank import rank

    args = dict(scores=["knn", "linear-probe"], max_items=None)
    local = rank(["small-cnn:16", "small-cnn:8"], tiny_images, **args)
    remote = rank(["small-cnn:16", "small-cnn:8"], tiny_images, engine="ray", **args)
    cols = ["candidate", "rank", "knn", "linear-probe", "random_knn", "flag"]
    assert local.table[cols].round(6).equals(remote.table[cols].round(6))
    assert remote.recommendation == local.recommendation


def test_continual_on_ray_gives_the_local_runs(ray_cluster):
    from transferkit.workflows.continual import run_continual

    args = dict(split=5, learners=["naive", "replay"], labels_per_class=10, test_per_class=10, epochs=1, seeds=2)
    local = run_continual("digits", "small-cnn:8", **args)
    remote = run_continual("digits", "small-cnn:8", engine="ray", **args)
    strip = lambda r: [{k: v for k, v in run.items() if k != "seconds"} for run in r["runs"]]  # noqa: E731
    assert strip(remote) == strip(local) and remote["summary"] == local["summary"]


def test_tune_on_ray_runs_trials_in_parallel_workers_on_one_study_and_resumes(ray_cluster, tiny_images, tmp_path):
    from transferkit.workflows.tune import tune

    storage = tmp_path / "study.db"
    args = dict(space={"C": ["log", 1e-3, 1e2]}, labels_per_class=8, val_fraction=0.4, storage=storage,
                study_name="s")
    first = tune("small-cnn:16", tiny_images, "linear-probe", trials=4, engine="ray", **args)
    complete = first.trials[first.trials["state"] == "COMPLETE"]
    assert 4 <= len(complete) <= 5  # two workers: one may start a last trial as the other completes the fourth
    assert len(set(complete["C"].round(12))) == len(complete)  # the workers' samplers did not propose the same C
    assert first.best_value == complete["value"].max()
    resumed = tune("small-cnn:16", tiny_images, "linear-probe", trials=len(complete) + 2, **args)  # locally
    assert (resumed.trials["state"] == "COMPLETE").sum() == len(complete) + 2
    assert resumed.trials["number"].tolist()[:len(first.trials)] == first.trials["number"].tolist()


def _separable(n: int, seed: int):
    from transferkit.data import from_arrays

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return from_arrays(X, (X[:, 0] + X[:, 1] > 0).astype(int), label_names=["a", "b"])


def test_feature_files_are_read_by_rows_and_match_the_computed_features(tmp_path):
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.data.cache import compute_features, feature_file

    data = _separable(300, 0)
    torch.manual_seed(0)
    bb = load_backbone("mlp:32", in_features=4)
    ff = feature_file(bb, data, batch_size=64, cache_dir=tmp_path)
    whole = compute_features(bb, data, batch_size=64)
    assert ff.shape == whole.shape and np.array_equal(np.asarray(ff), whole)
    rows = np.array([299, 3, 4, 5, 0, 3])
    assert np.array_equal(ff[rows], whole[rows]) and np.array_equal(ff[10:20], whole[10:20])
    assert np.array_equal(np.concatenate([c for _, c in ff.chunks(70)]), whole)
    view = ff.take([7, 2, 9])
    assert np.array_equal(np.asarray(view), whole[[7, 2, 9]]) and np.array_equal(view[1:], whole[[2, 9]])


def test_the_streaming_probe_learns_what_the_closed_form_probe_learns(tmp_path, monkeypatch):
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    train, val, test = _separable(400, 0), _separable(100, 1), _separable(300, 2)
    accuracy = {}
    for streaming in (False, True):
        torch.manual_seed(0)
        bb = load_backbone("mlp:64", in_features=4)
        strategy = make_strategy("linear-probe", {"streaming": streaming})
        model, history = strategy.fit(bb, train, val, Trainer(TrainConfig(progress=False)))
        assert history[0].get("streamed", False) is streaming
        accuracy[streaming] = (strategy.predict(model, test).argmax(1) == test.targets).mean()
    assert accuracy[False] > 0.9 and abs(accuracy[True] - accuracy[False]) < 0.05, accuracy


_UNDER_A_CAP = """
import json, os, resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from transferkit.backbones import load_backbone
from transferkit.data import from_arrays
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer

WIDTH, HEADROOM = 16384, 256 << 20
rows = 2 * HEADROOM // (4 * WIDTH)  # float32 features of twice the memory left under the cap


def data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return from_arrays(X, (X[:, 0] + X[:, 1] > 0).astype(int), label_names=["a", "b"])


def probe(d, options):
    torch.manual_seed(0)
    bb = load_backbone(f"mlp:{WIDTH}", in_features=4)
    strategy = make_strategy("linear-probe", options)
    model, history = strategy.fit(bb, d, None, Trainer(TrainConfig(progress=False)))
    return history[0], float((strategy.predict(model, d).argmax(1) == d.targets).mean())


probe(data(300, 1), {"streaming": True})  # warm-up: imports, threads and allocator arenas exist before the cap
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    np.ones((rows, WIDTH), dtype=np.float32)
    held = True
except MemoryError:
    held = False
info, accuracy = probe(data(rows, 0), {})  # the default: the probe sees the features would not fit
print(json.dumps({"features_bytes": rows * WIDTH * 4, "cap_above_baseline": HEADROOM, "whole_array_fits": held,
                  "streamed": info.get("streamed", False), "accuracy": accuracy}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_features_larger_than_the_memory_cap_are_extracted_and_probed(tmp_path):
    import json
    import os

    env = {**os.environ, "TRANSFERKIT_CACHE": str(tmp_path), "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _UNDER_A_CAP], capture_output=True, text=True, timeout=600,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["features_bytes"] > report["cap_above_baseline"] and not report["whole_array_fits"]
    assert report["streamed"] and report["accuracy"] > 0.9, report


@pytest.mark.slow
def test_serve_on_ray_with_two_replicas_answers_as_the_local_service(ray_cluster, tmp_path):
    import base64
    import io
    import socket
    from concurrent.futures import ThreadPoolExecutor

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from conftest import shapes_images
    from fastapi.testclient import TestClient
    from PIL import Image
    from ray import serve

    from transferkit.api import fit
    from transferkit.data import from_arrays
    from transferkit.export.bundle import load
    from transferkit.export.serve import create_app
    from transferkit.export.serve_ray import serve_on_ray, stop_serving

    X, y = shapes_images(n_per_class=8)
    bundle = tmp_path / "shapes"
    fit("small-cnn:16", from_arrays(X, y, label_names=["square", "bar", "noise"]), "finetune", epochs=1, out=bundle,
        progress=False, report=False)

    def b64(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    images = [b64(x) for x in X[[0, 9, 20]]]
    requests = {"ok": {"inputs": images}, "too many": {"inputs": images * 2}, "not an image": {"inputs": ["eA=="]},
                "unknown field": {"inputs": images, "extra": 1}}
    local = TestClient(create_app(load(bundle), max_items=4))
    want = {name: local.post("/predict", json=body) for name, body in requests.items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = serve_on_ray(bundle, replicas=2, port=port, max_items=4)
    try:
        assert serve.status().applications["transferkit"].deployments["transferkit"].replica_states == {"RUNNING": 2}
        with httpx.Client(base_url=url, timeout=60) as client:
            for name, body in requests.items():
                got = client.post("/predict", json=body)
                assert got.status_code == want[name].status_code, (name, got.text)
                if got.status_code == 200:
                    for g, w in zip(got.json()["predictions"], want[name].json()["predictions"]):
                        assert g["label"] == w["label"]
                        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
                else:
                    assert got.json() == want[name].json(), name
            with ThreadPoolExecutor(8) as pool:  # concurrent requests: batched, spread over the replicas
                answers = list(pool.map(lambda _: client.post("/predict", json=requests["ok"]), range(16)))
            assert all(a.status_code == 200 for a in answers)
            assert {tuple(p["label"] for p in a.json()["predictions"]) for a in answers} == {
                tuple(p["label"] for p in want["ok"].json()["predictions"])}
            assert client.get("/health").json() == {"status": "ok"}
    finally:
        stop_serving(shutdown_ray=False)
