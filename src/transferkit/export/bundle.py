"""The result bundle: what ``fit`` returns and saves.

A directory holding

* ``model.safetensors``: the :class:`TransferModel` state dict (``backbone.*``, ``head.*``);
* ``manifest.json``: backbone architecture, strategy and config, task, label
  names, preprocessing, metrics, library versions, data fingerprint, history;
* ``backbone/``: files an offline rebuild needs (configs, tokenizer, vocabulary);
* ``report.md`` / ``report.html``.

It is written into a temporary sibling directory and renamed into place as the
last step, so a failed run never leaves a bundle that looks complete, and an
existing bundle is only replaced when ``overwrite=True``. :func:`load` never
unpickles anything: JSON and safetensors only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from transferkit.backbones import load_backbone
from transferkit.errors import BundleError
from transferkit.strategies.base import TransferModel
from transferkit.tasks import describe_head, get_task, rebuild_head

BUNDLE_FORMAT = "transferkit-bundle"
FORMAT_VERSION = 1
MANIFEST, WEIGHTS = "manifest.json", "model.safetensors"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("transferkit", "torch", "timm", "transformers", "sentence-transformers", "accelerate",
                 "safetensors", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def check_writable(out: str | Path, overwrite: bool) -> Path:
    """Refuse early (before any training) to replace an existing bundle without ``overwrite``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"Output {out} already exists; pass overwrite=True (--overwrite) to replace it.")
    if out.exists() and not out.is_dir():
        raise BundleError(f"Output {out} exists and is not a directory.")
    return out


def save_bundle(model: TransferModel, out: str | Path, manifest: dict, *, overwrite: bool = False,
                extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` and ``manifest`` as a bundle at ``out``, atomically.

    Args:
        extra: called with the temporary directory before it is renamed into
            place (the report is written there).
    """
    from safetensors.torch import save_file

    with atomic_dir(out, overwrite) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        adapter = getattr(model, "adapter", None)
        if adapter is not None:
            manifest = {**manifest, "adapter": {k: v for k, v in adapter.items() if k != "keys"}}
            if adapter["adapter_only"]:
                from transferkit.strategies.parameter_efficient import adapter_state

                state = adapter_state(model, state)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT})
        model.backbone.save_files(tmp / "backbone")
        manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **manifest,
                    "backbone": model.backbone.architecture(),
                    "head": describe_head(model.head),
                    "task": manifest.get("task", model.task), "label_names": model.label_names,
                    "preprocess": model.backbone.preprocess.config(), "versions": library_versions()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default), encoding="utf-8")
        if extra is not None:
            extra(tmp)
    return Path(out)


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` only if the block finishes.

    ``out`` is checked first (:func:`check_writable`); on any error the
    temporary folder is removed and whatever was at ``out`` is left as it was.
    """
    out = check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"No bundle at {path}: not a directory.")
    if not mf.exists() or not (path / WEIGHTS).exists():
        raise BundleError(f"{path} is not a complete transferkit bundle: expected {MANIFEST} and {WEIGHTS}.")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Corrupt manifest {mf}: {exc}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mf} is not a transferkit manifest (format={manifest.get('format')!r}).")
    return manifest


def rebuild_model(path: str | Path, manifest: dict | None = None) -> TransferModel:
    """Rebuild the trained model from a bundle directory (no training data, no pickles)."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = manifest or read_manifest(path)
    arch, h = manifest["backbone"], manifest["head"]
    files = path / "backbone"
    adapter = manifest.get("adapter")
    if adapter and adapter.get("adapter_only"):
        backbone = _base_for_adapter(path, arch, adapter)
    else:
        backbone = load_backbone(arch["spec"], pretrained=False, files_dir=files if files.exists() else None,
                                 **arch.get("options", {}))
    if adapter:
        from transferkit.strategies.parameter_efficient import attach_from_manifest

        attach_from_manifest(backbone, adapter)
    import transferkit.strategies  # noqa: F401  (registers the heads strategies define)

    model = TransferModel(backbone, rebuild_head(h), manifest["task"], manifest.get("label_names"))
    state = load_file(str(path / WEIGHTS))
    if adapter and adapter.get("adapter_only"):
        missing, unexpected = model.load_state_dict(state, strict=False)
        not_base = [k for k in missing if k.startswith("head.") or k not in _base_keys(backbone)]
        if unexpected or not_base:
            raise BundleError(f"{path / WEIGHTS} does not fit the adapter its manifest describes: "
                              f"unexpected {unexpected[:3]}, missing {not_base[:3]}.")
        model.adapter = {**adapter, "keys": sorted(state)}
    else:
        model.load_state_dict(state, strict=True)
        if adapter:
            model.adapter = {**adapter, "keys": sorted(k for k in state if k.startswith("backbone.") and
                                                       _is_adapter_key(model, k))}
    return model.eval()


def _base_for_adapter(path: Path, arch: dict, adapter: dict):
    """The pre-trained base an adapter-only bundle was trained on, checked against its recorded digest."""
    from transferkit.strategies.parameter_efficient import check_base_digest

    try:
        backbone = load_backbone(arch["spec"], pretrained=True, **arch.get("options", {}))
    except Exception as exc:  # noqa: BLE001 - re-raised with what the bundle needs
        raise BundleError(f"{path} stores only an adapter: it needs the pre-trained base '{arch['spec']}', which "
                          f"could not be loaded ({exc}).") from exc
    check_base_digest(backbone, adapter, str(path))
    return backbone


def _base_keys(backbone) -> set[str]:
    """State-dict keys of the frozen base (every key of the backbone but the trainable adapter's)."""
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    return {f"backbone.{k}" for k in backbone.state_dict() if k not in trainable}


def _is_adapter_key(model: TransferModel, key: str) -> bool:
    name = key[len("backbone."):]
    return any(n == name and p.requires_grad for n, p in model.backbone.named_parameters())


class Predictor:
    """A trained model with its preprocessing and label names: ``predict`` raw items.

    Example:
        >>> p = transferkit.load("runs/fmnist")           # doctest: +SKIP
        >>> p.predict(["shoe.png"])                       # doctest: +SKIP
        ['Sneaker']
    """

    def __init__(self, model: TransferModel, manifest: dict, path: Path | None = None):
        self.model, self.manifest, self.path = model.eval(), manifest, path

    @property
    def label_names(self) -> list[str] | None:
        return self.model.label_names

    @property
    def task(self) -> str:
        return self.model.task

    def outputs(self, items: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] (classification, multi-label) or values [N] (regression)."""
        from transferkit.training import predict_outputs
        from transferkit.data.dataset import TaskData

        data = TaskData(list(items) if not isinstance(items, np.ndarray) else items, None,
                        self.model.backbone.modality, self.task, self.label_names)
        with torch.inference_mode():
            return predict_outputs(self.model, data, batch_size=batch_size)

    predict_proba = outputs

    def predict(self, items: Sequence, batch_size: int = 64) -> list:
        """Label names (classification), lists of label names (multi-label) or floats (regression)."""
        return outputs_to_predictions(self.outputs(items, batch_size), self.task, self.label_names)


def outputs_to_predictions(out: np.ndarray, task: str, label_names: Sequence[str] | None) -> list:
    """What ``predict`` returns: the task's decoding (label names, lists of label names, floats, ...)."""
    return get_task(task).decode(out, label_names)


def load(path: str | Path) -> Predictor:
    """Load a bundle written by ``fit`` (a directory, or ``hf:ORG/NAME`` pushed to the Hub) into a :class:`Predictor`."""
    if str(path).startswith("hf:"):  # pushed with `transferkit push`: the Hub cache holds the folder
        from transferkit.backbones.hf import fetch_hub_bundle

        path = fetch_hub_bundle(str(path).removeprefix("hf:"))
    manifest = read_manifest(path)
    return Predictor(rebuild_model(path, manifest), manifest, Path(path))
