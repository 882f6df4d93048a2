"""Share bundles: push one to the Hugging Face Hub (or a local folder) and fetch one back.

* :func:`push_bundle` uploads a whole bundle directory to a Hub model repo,
  with a ``README.md`` made of the bundle's model card (``report.md``) and the
  Hub's YAML front matter (``library_name: transferkit``, tags, the
  ``pipeline_tag`` of the task, the metrics). The README is written into a
  temporary copy: the bundle itself is never modified. A *local* target (a
  path starting with ``/``, ``./``, ``../``, ``~`` or ``file:``) receives the
  same files by an atomic copy instead; no network is involved, which is what
  the offline tests use.
* :func:`fetch_bundle` downloads (or finds in the Hub cache) a pushed bundle
  and returns its local folder; :func:`load_from_hub` turns it into a
  :class:`~transferkit.export.bundle.Predictor`. ``HF_HUB_OFFLINE=1`` is
  honoured: a filled cache works offline, an empty one gives a clear error.

Nothing is unpickled: a fetched bundle is read by :func:`transferkit.load`
(JSON and safetensors only).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from numbers import Real
from pathlib import Path

from transferkit.errors import BundleError, TransferkitError
from transferkit.export.bundle import Predictor, atomic_dir, load, read_manifest
from transferkit.tasks import TASKS, get_task

README = "README.md"
CARD = "report.md"
HUB_PREFIX = "hf:"
LOCAL_PREFIXES = ("/", "./", "../", "~", "file:")
TAGS = ["transferkit", "transfer-learning"]


class HubError(TransferkitError, OSError):
    """The Hugging Face Hub could not be reached, refused the request, or is disabled (offline mode)."""


def is_local_target(repo: str | os.PathLike) -> bool:
    """Whether ``repo`` names a local folder (``/``, ``./``, ``../``, ``~``, ``file:``) rather than a Hub repo."""
    return isinstance(repo, os.PathLike) or str(repo).startswith(LOCAL_PREFIXES)


def _repo_id(repo: str) -> str:
    repo = str(repo)
    return repo.removeprefix(HUB_PREFIX)


def _local_path(repo: str | os.PathLike) -> Path:
    text = os.fspath(repo)
    return Path(text.removeprefix("file:")).expanduser()


def hub_metadata(manifest: dict) -> dict:
    """The Hub front matter of a bundle: library, tags, pipeline tag, metrics."""
    meta: dict = {"library_name": "transferkit", "tags": list(TAGS)}
    modality = manifest.get("modality")
    task = manifest.get("task")
    tag = get_task(task).pipeline_tag(modality) if task in TASKS else None
    if tag:
        meta["pipeline_tag"] = tag
    metrics = {k: float(v) for k, v in (manifest.get("metrics") or {}).items()
               if isinstance(v, Real) and not isinstance(v, bool)}
    if metrics:
        meta["metrics"] = sorted(metrics)
    backbone = manifest.get("backbone")
    strategy = manifest.get("strategy")
    meta["transferkit"] = {
        "task": manifest.get("task"), "modality": modality,
        "backbone": backbone.get("spec") if isinstance(backbone, dict) else backbone,
        "strategy": strategy.get("name") if isinstance(strategy, dict) else strategy,
        "label_names": manifest.get("label_names"),
        "evaluated_on": (manifest.get("metrics") or {}).get("evaluated_on"),
        "metrics": metrics,
    }
    return meta


def model_card(bundle: str | Path, manifest: dict | None = None) -> str:
    """``README.md`` text for the Hub: YAML front matter + the bundle's ``report.md`` (or a short stub)."""
    import yaml

    bundle = Path(bundle)
    manifest = manifest if manifest is not None else read_manifest(bundle)
    front = yaml.safe_dump(hub_metadata(manifest), sort_keys=False, allow_unicode=True)
    card = bundle / CARD
    body = (card.read_text(encoding="utf-8") if card.is_file() else
            "# transferkit model\n\nThis bundle has no report.md (it was fitted with report=False).\n")
    usage = ("\n## Usage\n\n```python\nfrom transferkit.export.hub import load_from_hub\n\n"
             "predictor = load_from_hub(\"REPO\")\npredictor.predict(items)\n```\n")
    return f"---\n{front}---\n\n{body.rstrip()}\n{usage}"


def _staged_copy(bundle: Path, dest: Path, manifest: dict, repo: str) -> None:
    """Copy ``bundle`` into ``dest`` and write the README there (a file bundles may hold unlisted)."""
    shutil.copytree(bundle, dest, symlinks=False, dirs_exist_ok=True)
    (dest / README).write_text(model_card(bundle, manifest).replace("\"REPO\"", f"\"{repo}\""), encoding="utf-8")


def push_bundle(bundle: str | Path, repo: str | os.PathLike, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None, overwrite: bool = False) -> str:
    """Push ``bundle`` to the Hugging Face Hub model repo ``repo`` (``ORG/NAME`` or ``hf:ORG/NAME``).

    The whole bundle directory is uploaded, plus a ``README.md``: the model
    card ``report.md`` under Hub front matter (``library_name: transferkit``,
    tags, ``pipeline_tag`` image- / text-classification, metrics). It is
    written into a temporary copy; the bundle is never modified.

    If ``repo`` is a local path (starts with ``/``, ``./``, ``../``, ``~`` or
    ``file:``), the same files are copied into that folder instead, without
    any network: atomically (a temporary sibling, renamed into place), and an
    existing non-empty folder is refused unless ``overwrite``. This is how the
    offline tests exercise the push.

    Args:
        bundle: a bundle directory written by ``fit``.
        repo: Hub repo id, or a local folder.
        private: create the Hub repo as private (ignored for local targets).
        token: Hub token (default: ``HF_TOKEN`` / the cached login).
        commit_message: Hub commit message.
        overwrite: local targets only: replace an existing non-empty folder.

    Returns:
        The Hub URL of the repo, or the local folder path.

    Raises:
        BundleError: ``bundle`` is not a complete bundle; a local target exists.
        HubError: offline mode, no network, or the Hub refused the request.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if is_local_target(repo):
        return str(_push_local(bundle, _local_path(repo), manifest, overwrite))
    repo_id = _repo_id(str(repo))
    from transferkit.backbones.hf import hub_offline

    if hub_offline():
        raise HubError(f"Cannot push {bundle} to the Hugging Face Hub repo '{repo_id}': offline mode is on "
                       "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). Unset it, or push to a local folder "
                       "(a path starting with / or ./).")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="transferkit-push-") as tmp:
        staged = Path(tmp) / "bundle"
        _staged_copy(bundle, staged, manifest, repo_id)
        try:
            url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=str(staged), repo_type="model",
                              commit_message=commit_message or f"Upload transferkit bundle {bundle.name}")
        except Exception as exc:  # huggingface_hub / httpx raise many types for auth and network failures
            raise HubError(f"Could not push {bundle} to the Hugging Face Hub repo '{repo_id}' "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the "
                           "network connection and that a token with write access is set (HF_TOKEN, "
                           "`huggingface-cli login`, or token=...).") from exc
    return str(getattr(url, "url", None) or f"https://huggingface.co/{repo_id}")


def _push_local(bundle: Path, target: Path, manifest: dict, overwrite: bool) -> Path:
    if target.resolve() == bundle.resolve():
        raise BundleError(f"Cannot push {bundle} onto itself.")
    if target.exists() and not target.is_dir():
        raise BundleError(f"Push target {target} exists and is not a directory.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise BundleError(f"Push target {target} already exists and is not empty; pass overwrite=True "
                          "(--overwrite) to replace it.")
    empty = target.is_dir() and not any(target.iterdir())
    with atomic_dir(target, overwrite=overwrite or empty) as tmp:
        _staged_copy(bundle, tmp, manifest, str(target))
    return target


def fetch_bundle(repo: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
                 token: str | None = None) -> Path:
    """The local folder of the bundle pushed to the Hub repo ``repo`` (``ORG/NAME`` or ``hf:ORG/NAME``).

    Uses ``huggingface_hub.snapshot_download`` (the Hub cache, ``cache_dir``
    or ``HF_HUB_CACHE``). With ``HF_HUB_OFFLINE=1`` only the cache is read: no
    network request is made.

    Raises:
        MissingWeightsError: the repo could not be downloaded and is not cached.
        BundleError: the repo holds no transferkit bundle.
    """
    from transferkit.backbones.hf import fetch_hub_bundle

    path = fetch_hub_bundle(_repo_id(repo), revision=revision, cache_dir=cache_dir, token=token)
    read_manifest(path)  # BundleError when the repo is not a bundle
    return path


def load_from_hub(repo: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
                  token: str | None = None) -> Predictor:
    """``transferkit.load`` of a bundle on the Hub: :func:`fetch_bundle`, then load the folder."""
    return load(fetch_bundle(repo, revision=revision, cache_dir=cache_dir, token=token))
