"""Bundle integrity and one writer per output: tampered bundles are refused with one line, locks and unfinished
outputs say what they are (issue 21)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from transferkit.backbones import load_backbone
from transferkit.cli.main import app
from transferkit.errors import BundleError, TransferkitWarning
from transferkit.export.bundle import load, read_manifest, save_bundle
from transferkit.export.output_lock import PARTIAL_MARKER, atomic_dir, check_writable, lock_path
from transferkit.strategies.base import TransferModel
from transferkit.tasks import linear_head

LABELS = ["square", "bar", "noise"]
HEAD_W, HEAD_B = "head.0.weight", "head.0.bias"


def _model() -> TransferModel:
    torch.manual_seed(0)
    backbone = load_backbone("small-cnn:16")
    return TransferModel(backbone, linear_head(backbone.num_features, 3), "classification", LABELS)


def _report(folder: Path) -> None:
    (folder / "report.md").write_text("# report\n", encoding="utf-8")
    (folder / "plots").mkdir()
    (folder / "plots" / "loss.svg").write_text("<svg/>", encoding="utf-8")


@pytest.fixture(scope="module")
def model() -> TransferModel:
    return _model()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model) -> Path:
    """One real bundle (small CNN, weights, manifest, a report and a plot), copied by each test that tampers."""
    return save_bundle(model, tmp_path_factory.mktemp("integrity") / "bundle", {"strategy": {"name": "finetune"}},
                       extra=_report)


# ---------------------------------------------------------------- tampering helpers


def _manifest(p: Path) -> dict:
    return json.loads((p / "manifest.json").read_text(encoding="utf-8"))


def _write_manifest(p: Path, manifest) -> None:
    (p / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _rehash(p: Path) -> None:
    """Record the current files' SHA-256, as a careful forger would: only the content checks can then refuse."""
    m = _manifest(p)
    m["files"] = {f.relative_to(p).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                  for f in sorted(p.rglob("*")) if f.is_file() and f.name != "manifest.json"}
    _write_manifest(p, m)


def edit(fn):
    """A tamper that changes the manifest with ``fn(manifest)`` (which may return a replacement)."""
    def tamper(p: Path) -> None:
        m = _manifest(p)
        _write_manifest(p, fn(m) or m)
    return tamper


def set_field(path: str, value):
    keys = path.split(".")

    def change(m):
        target = m
        for k in keys[:-1]:
            target = target[k]
        if value is DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return edit(change)


DELETE = object()


def weights(fn):
    """A tamper that rewrites the tensors with ``fn(state)`` and re-records the hashes."""
    def tamper(p: Path) -> None:
        state = load_file(str(p / "model.safetensors"))
        fn(state)
        save_file(state, str(p / "model.safetensors"))
        _rehash(p)
    return tamper


def raw_weights(data: bytes):
    def tamper(p: Path) -> None:
        (p / "model.safetensors").write_bytes(data)
        _rehash(p)
    return tamper


def _flip_last_byte(p: Path) -> None:
    data = bytearray((p / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (p / "model.safetensors").write_bytes(bytes(data))


def _symlink_file(p: Path) -> None:
    outside = p.parent / "outside.md"
    outside.write_text("# report\n")
    (p / "report.md").unlink()
    (p / "report.md").symlink_to(outside)


def _symlink_dir(p: Path) -> None:
    shutil.move(str(p / "plots"), str(p.parent / "plots-outside"))
    (p / "plots").symlink_to(p.parent / "plots-outside", target_is_directory=True)


def _pickle_weights(p: Path) -> None:
    torch.save({"head.0.weight": torch.zeros(3, 64)}, p / "model.safetensors")
    _rehash(p)


def _fill(key: str, value: float):
    def fn(state):
        state[key] = torch.full_like(state[key], value)
    return fn


def _first_backbone_weight(state) -> str:
    return next(k for k in sorted(state) if k.startswith("backbone.") and state[k].is_floating_point())


def _inf_backbone(state):
    k = _first_backbone_weight(state)
    state[k] = state[k].clone()
    state[k].view(-1)[0] = float("inf")


TAMPERED = {
    # files against the manifest's SHA-256 list
    "weights-byte-flipped": (_flip_last_byte, r"'model.safetensors' has SHA-256 .* changed after"),
    "report-edited": (lambda p: (p / "report.md").write_text("# forged\n"), r"'report.md' has SHA-256"),
    "unlisted-file": (lambda p: (p / "notes.txt").write_text("hi"), r"'notes.txt' is not listed"),
    "listed-file-missing": (lambda p: (p / "plots" / "loss.svg").unlink(), r"'plots/loss.svg' listed .* is missing"),
    "weights-missing": (lambda p: (p / "model.safetensors").unlink(), r"not a complete transferkit bundle"),
    "symlink-to-outside-file": (_symlink_file, r"'report.md' is a symlink"),
    "symlink-to-outside-folder": (_symlink_dir, r"'plots' is a symlink"),
    "fifo": (lambda p: os.mkfifo(p / "pipe"), r"'pipe' is not a regular file"),
    "files-entry-escapes": (edit(lambda m: m["files"].update({"../secret": "0" * 64})), r"'\.\./secret' is not a plain path"),
    "files-entry-absolute": (edit(lambda m: m["files"].update({"/etc/passwd": "0" * 64})), r"'/etc/passwd' is not a plain"),
    "files-not-an-object": (set_field("files", ["model.safetensors"]), r"field 'files' must be an object"),
    "files-digest-not-hex": (edit(lambda m: m["files"].update({"report.md": "abc"})), r"files\['report.md'\].*SHA-256"),
    "files-entry-removed": (set_field("files", DELETE), r"no 'files' entry.*cannot be verified"),
    # the weights file itself
    "pickle-named-safetensors": (_pickle_weights, r"not a valid safetensors file.*never unpickles"),
    "garbage-weights": (raw_weights(b"\x00" * 7 + b"not safetensors at all"), r"not a valid safetensors file"),
    "tensor-wrong-shape": (weights(lambda s: s.update({HEAD_W: torch.zeros(4, 64)})),
                           r"tensor 'head.0.weight' has shape \[4, 64\], but .* needs \[3, 64\]"),
    "tensor-missing": (weights(lambda s: s.pop(HEAD_B)), r"lacks tensor 'head.0.bias' of shape \[3\]"),
    "tensor-extra": (weights(lambda s: s.update({"backbone.extra": torch.zeros(2)})), r"holds tensor 'backbone.extra'"),
    "tensor-wrong-dtype": (weights(lambda s: s.update({HEAD_W: s[HEAD_W].half()})),
                           r"tensor 'head.0.weight' is F16, but .* needs float32"),
    "weights-nan": (weights(_fill(HEAD_W, float("nan"))), r"tensor 'head.0.weight' holds 192 NaN"),
    "weights-inf": (weights(_inf_backbone), r"tensor 'backbone\..*' holds 0 NaN and 1 infinite"),
    "head-10^6-x-10^6": (edit(lambda m: m["head"].update(in_features=10**6, out_features=10**6)),
                         r"'label_names' names 3 outputs .* out_features=1000000"),
    "head-10^12-inputs": (set_field("head.in_features", 10**12),  # sized on the meta device: nothing allocated
                          r"'head.0.weight' has shape \[3, 64\], but .* needs \[3, 1000000000000\] \(10.9 TB\)"),
    "head-wider-than-backbone": (set_field("head.in_features", 65), r"'head.0.weight' has shape \[3, 64\].*\[3, 65\]"),
    # manifest fields
    "format-version-999": (set_field("format_version", 999), r"format_version 999 .* reads format versions 1, 2"),
    "format-version-str": (set_field("format_version", "2"), r"field 'format_version' must be a positive int"),
    "label-names-not-list": (set_field("label_names", "square,bar,noise"), r"field 'label_names' must be a list"),
    "label-names-not-str": (set_field("label_names", [1, 2, 3]), r"field 'label_names' must be a list of strings"),
    "label-names-too-few": (set_field("label_names", ["square", "bar"]), r"'label_names' names 2 outputs .* out_features=3"),
    "head-out-features-str": (set_field("head.out_features", "3"), r"field 'head.out_features' must be a positive int"),
    "head-kind-unknown": (set_field("head.kind", "mystery"), r"head.*mystery|mystery.*head"),
    "head-input-scale-negative": (set_field("head.input_scale", -2.0),
                                  r"field 'head.input_scale' must be a positive finite number; got -2.0"),
    "head-input-scale-str": (set_field("head.input_scale", "4"), r"field 'head.input_scale' must be a positive finite"),
    "head-not-object": (set_field("head", [64, 3]), r"field 'head' must be an object"),
    "backbone-not-object": (set_field("backbone", "small-cnn:16"), r"field 'backbone' must be an object"),
    "backbone-options-not-object": (set_field("backbone.options", [16]), r"field 'backbone.options' must be an object"),
    "backbone-unknown": (set_field("backbone.spec", "nosuch:thing"), r"cannot rebuild .* 'nosuch:thing'.*Unknown"),
    "task-unknown": (set_field("task", "astrology"), r"task 'astrology' is not a known task"),
    "task-not-str": (set_field("task", 5), r"field 'task' must be a task name"),
    "spec-bundle-ref-outside": (set_field("backbone.spec", "hf:bundle:../../../etc"), r"resolves outside the bundle"),
    "spec-file-outside": (set_field("backbone.spec", "file:/tmp/other-bundle"), r"reads weights from another file"),
    "spec-local-folder": (set_field("backbone.spec", "hf:/opt/models/bert"), r"names the folder /opt/models/bert, outside"),
    "adapter-not-object": (set_field("adapter", "lora"), r"field 'adapter' must be null or an object"),
    "manifest-a-list": (edit(lambda m: [m]), r"expected a JSON object, got list"),
    "manifest-not-json": (lambda p: (p / "manifest.json").write_text("{not json"), r"Corrupt manifest"),
    "marker-of-unfinished-run": (lambda p: (p / PARTIAL_MARKER).write_text("unfinished"), r"unfinished output"),
}


def _tampered(bundle: Path, tmp_path: Path, name: str) -> Path:
    p = tmp_path / "b"
    shutil.copytree(bundle, p, symlinks=True)
    TAMPERED[name][0](p)
    return p


def test_the_untouched_bundle_loads_and_lists_every_file(bundle):
    files = read_manifest(bundle)["files"]
    assert sorted(files) == ["model.safetensors", "plots/loss.svg", "report.md"]
    assert load(bundle).predict([torch.zeros(16, 16, dtype=torch.uint8).numpy()])[0] in LABELS


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampered_bundle_is_refused_with_one_line(bundle, tmp_path, name):
    p = _tampered(bundle, tmp_path, name)
    with pytest.raises(BundleError, match=TAMPERED[name][1]) as info:
        load(p)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["pickle-named-safetensors", "head-10^6-x-10^6", "weights-nan", "format-version-999",
                                  "symlink-to-outside-file", "label-names-not-str", "marker-of-unfinished-run"])
def test_cli_predict_refuses_in_one_line_with_exit_2(bundle, tmp_path, name):
    p = _tampered(bundle, tmp_path, name)
    r = CliRunner().invoke(app, ["predict", str(p), "item.png"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output


def test_a_bundle_without_hashes_loads_with_a_warning(bundle, tmp_path):
    p = tmp_path / "old"
    shutil.copytree(bundle, p)
    m = _manifest(p)
    del m["files"]
    m["format_version"] = 1
    _write_manifest(p, m)
    with pytest.warns(TransferkitWarning, match="not verified"):
        predictor = load(p)
    assert predictor.label_names == LABELS


def test_hashes_cover_what_extra_writes_and_a_resave_refreshes_them(bundle, model, tmp_path):
    again = save_bundle(model, tmp_path / "again", read_manifest(bundle))  # a manifest read back: files recomputed
    assert sorted(read_manifest(again)["files"]) == ["model.safetensors"]
    load(again)


@pytest.mark.parametrize("name, message", [(None, None), ("tensor-wrong-shape", r"\[4, 64\].*needs \[3, 64\]")])
def test_sources_that_cannot_be_built_on_meta_are_checked_after_building(bundle, tmp_path, monkeypatch, name,
                                                                         message):
    """Where a backbone cannot be built on the meta device, the head is sized there and the rest after building."""
    import transferkit.export.bundle as bundle_module

    real, calls = bundle_module._on_meta, []

    def no_full_skeleton(build):
        calls.append(build)
        return None if len(calls) == 1 else real(build)

    monkeypatch.setattr(bundle_module, "_on_meta", no_full_skeleton)
    p = _tampered(bundle, tmp_path, name) if name else bundle
    if message is None:
        assert load(p).label_names == LABELS
    else:
        with pytest.raises(BundleError, match=message):
            load(p)
    assert len(calls) == 2


def test_hugging_face_cache_symlinks_load_but_not_those_leaving_the_repo(bundle, tmp_path):
    """A Hub snapshot's files are symlinks into its repo's blobs/: allowed there, refused elsewhere."""
    repo = tmp_path / "models--me--shapes"
    snapshot = repo / "snapshots" / ("a" * 40)
    for f in sorted(bundle.rglob("*")):
        if f.is_file():
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, blob)
            link = snapshot / f.relative_to(bundle)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (snapshot / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert load(snapshot).label_names == LABELS
    outside = tmp_path / "elsewhere.md"
    outside.write_text("# report\n")
    (snapshot / "report.md").unlink()
    (snapshot / "report.md").symlink_to(outside)
    with pytest.raises(BundleError, match="'report.md' is a symlink"):
        load(snapshot)


# ---------------------------------------------------------------- one writer per output


@pytest.fixture
def live_pid():
    """The PID of a process that is running for the duration of the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out: Path, pid: int, host: str | None = None) -> Path:
    import socket

    lock = lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01T00:00:00"}))
    return lock


def test_a_second_writer_is_refused_naming_the_holder(model, tmp_path, live_pid):
    out = tmp_path / "out"
    lock = _write_lock(out, live_pid)
    with pytest.raises(BundleError, match=rf"being written by another run \(PID {live_pid} on "):
        check_writable(out, overwrite=True)  # the early check of fit, before any training
    with pytest.raises(BundleError, match=rf"PID {live_pid} .*delete {lock}"):
        save_bundle(model, out, {}, overwrite=True)
    assert not out.exists() and lock.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.lock"]  # no partial folder either


def test_a_lock_held_by_this_process_from_another_thread_is_refused(model, tmp_path):
    out = tmp_path / "out"
    _write_lock(out, os.getpid())
    with pytest.raises(BundleError, match=rf"PID {os.getpid()}"):
        save_bundle(model, out, {})


def test_a_lock_on_another_host_is_not_taken_over(model, tmp_path, dead_pid):
    _write_lock(tmp_path / "out", dead_pid, host="some-other-machine")
    with pytest.raises(BundleError, match="on some-other-machine"):
        save_bundle(model, tmp_path / "out", {})


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(model, tmp_path, dead_pid):
    out = tmp_path / "out"
    lock = _write_lock(out, dead_pid)
    with pytest.warns(TransferkitWarning, match=rf"Taking over the lock .* PID {dead_pid} .* no longer running"):
        save_bundle(model, out, {})
    assert not lock.exists()
    load(out)


def test_concurrent_saves_into_one_output_one_wins(model, tmp_path):
    out, start = tmp_path / "out", threading.Barrier(2)
    results: list = []

    def slow_report(folder: Path) -> None:
        time.sleep(0.3)  # a multi-second save, shortened: the other writer arrives meanwhile

    def writer(run: int) -> None:
        start.wait()
        try:
            save_bundle(model, out, {"run": run}, extra=slow_report)
            results.append(("ok", run))
        except BundleError as exc:
            results.append(("refused", str(exc)))

    threads = [threading.Thread(target=writer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(r[0] for r in results)
    assert outcomes == ["ok", "refused"], results
    winner = next(r[1] for r in results if r[0] == "ok")
    refusal = next(r[1] for r in results if r[0] == "refused")
    assert f"PID {os.getpid()}" in refusal or "already exists" in refusal
    assert read_manifest(out)["run"] == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_that_appears_meanwhile_is_not_replaced(model, tmp_path):
    out = tmp_path / "out"

    def lockless_writer(folder: Path) -> None:  # someone writes OUT without taking the lock
        out.mkdir()
        (out / "theirs.txt").write_text("keep me")

    with pytest.raises(BundleError, match="appeared while this run was writing it"):
        save_bundle(model, out, {}, extra=lockless_writer)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_partial_folder_is_visible_and_says_what_it_is(model, tmp_path):
    seen = {}

    def look(folder: Path) -> None:
        seen["name"], seen["marker"] = folder.name, (folder / PARTIAL_MARKER).read_text()
        with pytest.raises(BundleError, match="unfinished output"):
            read_manifest(folder)

    save_bundle(model, tmp_path / "out", {}, extra=look)
    assert seen["name"] == f"out.partial-{os.getpid()}"
    assert "did not finish" in seen["marker"] and "Run the same command again" in seen["marker"]
    assert not (tmp_path / "out" / PARTIAL_MARKER).exists()
    assert "PARTIAL.txt" not in read_manifest(tmp_path / "out")["files"]


def test_atomic_dir_locks_every_writer(tmp_path, live_pid):
    _write_lock(tmp_path / "report", live_pid)
    with pytest.raises(BundleError, match=f"PID {live_pid}"):
        with atomic_dir(tmp_path / "report"):
            pass


def _simulate_kill(out: Path, pid: int) -> Path:
    """What `kill -9` during a save leaves: the lock and the partial folder with its marker."""
    partial = out.with_name(f"{out.name}.partial-{pid}")
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARKER).write_text("This folder is an unfinished transferkit output.")
    (partial / "model.safetensors").write_bytes(b"half written")
    (partial / "manifest.json").write_text(json.dumps({"format": "transferkit-bundle"}))
    _write_lock(out, pid)
    return partial


def test_a_killed_save_is_refused_by_load_and_cleaned_by_the_rerun(model, tmp_path, dead_pid, live_pid):
    out = tmp_path / "out"
    partial = _simulate_kill(out, dead_pid)
    other = out.with_name(f"out.partial-{live_pid}")  # a live writer's folder is left alone
    other.mkdir()
    with pytest.raises(BundleError, match="unfinished output"):
        load(partial)
    with pytest.raises(BundleError, match="No bundle at"):
        load(out)
    with pytest.warns(TransferkitWarning) as record:
        save_bundle(model, out, {})
    messages = " ".join(str(w.message) for w in record)
    assert f"Removed the unfinished output {partial}" in messages and f"PID {dead_pid}" in messages
    assert not partial.exists() and other.exists() and not lock_path(out).exists()
    load(out)


def test_a_legacy_hidden_partial_is_refused_and_cleaned(model, tmp_path):
    legacy = tmp_path / ".out.abc123.partial"
    legacy.mkdir()
    with pytest.raises(BundleError, match="unfinished output"):
        read_manifest(legacy)
    with pytest.warns(TransferkitWarning, match="earlier transferkit version"):
        save_bundle(model, tmp_path / "out", {})
    assert not legacy.exists()


KILLED_SAVE = """
import sys, time
from transferkit.backbones import load_backbone
from transferkit.export.bundle import save_bundle
from transferkit.strategies.base import TransferModel
from transferkit.tasks import linear_head

backbone = load_backbone("small-cnn:16")
model = TransferModel(backbone, linear_head(backbone.num_features, 3), "classification", ["a", "b", "c"])

def hang(folder):
    print("saving", flush=True)
    time.sleep(120)

save_bundle(model, sys.argv[1], {}, extra=hang)
"""


def test_kill_9_during_save(model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        proc.kill()  # SIGKILL: no cleanup runs
    finally:
        proc.wait(timeout=60)
    partial = tmp_path / f"out.partial-{proc.pid}"
    assert (partial / PARTIAL_MARKER).is_file() and lock_path(out).is_file() and not out.exists()
    with pytest.raises(BundleError, match="unfinished output"):
        load(partial)
    with pytest.warns(TransferkitWarning, match="no longer running"):
        save_bundle(model, out, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    load(out)


def test_two_concurrent_fits_into_one_out_leave_one_bundle_and_one_clear_refusal(tmp_path):
    """Two real `transferkit fit` processes started together on the same --out: one bundle, never a silent replace."""
    import os
    import subprocess
    import sys

    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "transferkit.cli.main", "fit", "--data", "penguins", "--backbone", "mlp:16",
           "--strategy", "finetune", "--epochs", "2", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for seed in (0, 1)]
    results = [(p.wait(300), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(text for code, text in results if code == 0)
    loser = next(text for code, text in results if code == 2)
    assert "Traceback" not in loser and ("already exists" in loser or "lock" in loser.lower()), loser
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"bundle: {out}" in winner.replace("\n", "")
    assert manifest["train"]["seed"] == (0 if results[0][0] == 0 else 1)  # the bundle is the winner's
    assert not lock_path(out).exists() and not list(tmp_path.glob("b.partial-*"))
