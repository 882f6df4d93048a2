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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.backbones import load_backbone
from transferkit.errors import BundleError
from transferkit.strategies.base import TransferModel

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

    out = check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT})
        model.backbone.save_files(tmp / "backbone")
        manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **manifest,
                    "backbone": model.backbone.architecture(),
                    "head": {"in_features": model.head[-1].in_features, "out_features": model.head[-1].out_features,
                             "dropout": _dropout(model.head)},
                    "task": manifest.get("task", model.task), "label_names": model.label_names,
                    "preprocess": model.backbone.preprocess.config(), "versions": library_versions()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default), encoding="utf-8")
        if extra is not None:
            extra(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _dropout(head: nn.Module) -> float:
    return next((float(m.p) for m in head if isinstance(m, nn.Dropout)), 0.0)


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
    backbone = load_backbone(arch["spec"], pretrained=False, files_dir=files if files.exists() else None,
                             **arch.get("options", {}))
    layers: list[nn.Module] = [nn.Dropout(h["dropout"])] if h.get("dropout") else []
    head = nn.Sequential(*layers, nn.Linear(h["in_features"], h["out_features"]))
    model = TransferModel(backbone, head, manifest["task"], manifest.get("label_names"))
    model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    return model.eval()


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
    """Label names (classification), lists of label names (multi-label, p > 0.5) or floats (regression)."""
    names = list(label_names or [])
    if task == "classification":
        return [names[i] if names else int(i) for i in out.argmax(1)]
    if task == "multilabel":
        return [[names[j] for j in np.flatnonzero(row > 0.5)] for row in out]
    return [float(v) for v in out]


def load(path: str | Path) -> Predictor:
    """Load a bundle written by ``fit`` (a directory, or ``hf:ORG/NAME`` pushed to the Hub) into a :class:`Predictor`."""
    if str(path).startswith("hf:"):
        from transferkit.export.hub import fetch_bundle

        path = fetch_bundle(str(path))
    manifest = read_manifest(path)
    return Predictor(rebuild_model(path, manifest), manifest, Path(path))
