"""Pushing bundles to the Hub (or a local folder) and fetching them back, all without network."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from conftest import shapes_images

from transferkit.errors import BundleError, MissingWeightsError
from transferkit.export import hub
from transferkit.export.hub import fetch_bundle, load_from_hub, push_bundle


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _front_matter(readme: Path) -> tuple[dict, str]:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from transferkit.api import fit
    from transferkit.data import from_arrays

    X, y = shapes_images()
    out = tmp_path_factory.mktemp("fit") / "bundle"
    fit("small-cnn:16", from_arrays(X, y, label_names=["square", "bar", "noise"]), "finetune", epochs=1,
        out=out, progress=False)
    return out


@pytest.fixture
def images():
    return list(shapes_images(n_per_class=2, seed=1)[0])


def test_push_to_local_folder_writes_card_and_loads_identically(bundle, tmp_path, images):
    import transferkit

    before = _tree(bundle)
    where = push_bundle(bundle, str(tmp_path / "pushed"))
    target = Path(where)
    assert target == tmp_path / "pushed"
    assert _tree(bundle) == before and not (bundle / "README.md").exists()  # bundle untouched
    meta, body = _front_matter(target / "README.md")
    assert meta["library_name"] == "transferkit"
    assert meta["tags"] == ["transferkit", "transfer-learning"]
    assert meta["pipeline_tag"] == "image-classification"
    assert "accuracy" in meta["metrics"]
    assert meta["transferkit"]["metrics"]["accuracy"] == pytest.approx(
        transferkit.load(bundle).manifest["metrics"]["accuracy"])
    assert meta["transferkit"]["label_names"] == ["square", "bar", "noise"]
    assert (bundle / "report.md").read_text(encoding="utf-8").strip() in body
    for name in before:  # every bundle file was copied, byte for byte
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == before[name]
    original, pushed = transferkit.load(bundle), transferkit.load(target)
    np.testing.assert_array_equal(original.outputs(images), pushed.outputs(images))
    assert original.predict(images) == pushed.predict(images)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftover temp dirs


def test_second_local_push_is_refused_unless_overwrite(bundle, tmp_path):
    target = tmp_path / "pushed"
    push_bundle(bundle, f"file:{target}")
    (target / "marker.txt").write_text("keep me")
    snapshot = _tree(target)
    with pytest.raises(BundleError, match="overwrite"):
        push_bundle(bundle, str(target))
    assert _tree(target) == snapshot
    push_bundle(bundle, str(target), overwrite=True)
    assert not (target / "marker.txt").exists() and (target / "README.md").exists()


def test_push_refuses_something_that_is_not_a_bundle(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="bundle"):
        push_bundle(tmp_path / "empty", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


class _FakeApi:
    calls: ClassVar[list] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return type("RepoUrl", (), {"url": f"https://huggingface.co/{repo_id}"})()

    def upload_folder(self, *, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        self.calls.append(("upload_folder", repo_id, {**kw, "files": _tree(folder),
                                                      "readme": (folder / "README.md").read_text(encoding="utf-8")}))


def test_push_to_hub_uploads_bundle_with_readme(bundle, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    _FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    before = _tree(bundle)
    url = push_bundle(bundle, "hf:me/shapes", private=True, token="t0k", commit_message="hello")
    assert url == "https://huggingface.co/me/shapes"
    (c_name, c_repo, c_kw), (u_name, u_repo, u_kw) = _FakeApi.calls
    assert (c_name, c_repo, c_kw["exist_ok"], c_kw["private"]) == ("create_repo", "me/shapes", True, True)
    assert (u_name, u_repo, u_kw["commit_message"]) == ("upload_folder", "me/shapes", "hello")
    assert {"README.md", "model.safetensors", "manifest.json", "report.md"} <= set(u_kw["files"])
    assert u_kw["files"]["model.safetensors"] == before["model.safetensors"]
    assert u_kw["readme"].startswith("---\nlibrary_name: transferkit\n") and 'load_from_hub("me/shapes")' in u_kw["readme"]
    assert _tree(bundle) == before


def test_push_to_hub_in_offline_mode_or_without_network_is_a_clear_error(bundle, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="me/shapes.*offline"):
        push_bundle(bundle, "me/shapes")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    class NoNetwork(_FakeApi):
        def create_repo(self, repo_id, **kw):
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    with pytest.raises(hub.HubError, match=r"me/shapes.*HF_TOKEN"):
        push_bundle(bundle, "me/shapes")


def test_fetch_offline_with_empty_cache_names_the_repo(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    with pytest.raises(MissingWeightsError, match=r"'me/shapes'.*HF_HUB_OFFLINE"):
        fetch_bundle("hf:me/shapes", cache_dir=tmp_path / "cache")
    assert calls and calls[0]["local_files_only"] is True  # no network attempt


def _fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> Path:
    """The huggingface_hub cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)
    return root / "snapshots" / commit


def test_fetch_and_load_offline_from_a_filled_cache(bundle, tmp_path, monkeypatch, images):
    import transferkit

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pushed = Path(push_bundle(bundle, str(tmp_path / "pushed")))
    snap = _fill_hub_cache(tmp_path / "cache", "me/shapes", pushed)
    path = fetch_bundle("me/shapes", cache_dir=tmp_path / "cache")
    assert path.resolve() == snap.resolve()
    predictor = load_from_hub("hf:me/shapes", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(predictor.outputs(images), transferkit.load(bundle).outputs(images))


def test_load_and_file_backbone_accept_hf_specs(bundle, tmp_path, monkeypatch, images):
    """``transferkit.load("hf:ORG/NAME")`` and the ``file:hf:ORG/NAME`` backbone read a pushed bundle."""
    import huggingface_hub.constants

    import transferkit
    from transferkit.backbones import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pushed = Path(push_bundle(bundle, str(tmp_path / "pushed")))
    _fill_hub_cache(tmp_path / "cache", "me/shapes", pushed)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    np.testing.assert_array_equal(transferkit.load("hf:me/shapes").outputs(images),
                                  transferkit.load(bundle).outputs(images))
    backbone = load_backbone("file:hf:me/shapes")
    assert backbone.spec == "file:hf:me/shapes" and backbone.architecture()["spec"].startswith("small-cnn:")


def test_fetch_of_a_repo_that_is_not_a_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    _fill_hub_cache(tmp_path / "cache", "me/not-a-bundle", other)
    with pytest.raises(BundleError, match="not a complete transferkit bundle"):
        fetch_bundle("me/not-a-bundle", cache_dir=tmp_path / "cache")


def test_cli_push_to_folder_and_refusal(bundle, tmp_path):
    import typer
    from typer.testing import CliRunner

    from transferkit.cli import push
    from transferkit.cli.errors import ErrorHandlingGroup

    app = typer.Typer(cls=ErrorHandlingGroup)  # the real app's error handling
    push.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `push` a subcommand
    runner = CliRunner()
    target = tmp_path / "cli-pushed"
    result = runner.invoke(app, ["push", str(bundle), str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "README.md").exists() and "pushed" in result.output
    result = runner.invoke(app, ["push", str(bundle), str(target)])
    assert result.exit_code == 2 and "overwrite" in result.output
    assert runner.invoke(app, ["push", str(bundle), str(target), "--overwrite"]).exit_code == 0
