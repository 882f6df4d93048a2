"""``file:PATH``: a backbone rebuilt from local files, never unpickling anything.

``PATH`` is either

* a transferkit bundle directory: ``manifest.json`` names the architecture in
  ``manifest["backbone"] = {"spec": ..., "options": {...}}``, ``model.safetensors``
  holds the backbone's tensors under the prefix ``backbone.``, and an optional
  ``backbone/`` folder holds the files the rebuild needs (configs, tokenizer); or
* a ``.safetensors`` file written by :func:`save_checkpoint`: the architecture
  is the JSON in its metadata key ``"transferkit.backbone"``, the tensors are
  the backbone's state dict.

The architecture is rebuilt at random init (``pretrained=False``) and the
tensors are loaded strictly. The backbone keeps ``spec == "file:PATH"`` and its
:meth:`~Backbone.architecture` names the inner architecture, so saving it
again does not chain ``file:`` specs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transferkit.backbones import load_backbone, register_source, split_spec
from transferkit.backbones.base import Backbone
from transferkit.errors import BundleError, MissingWeightsError

METADATA_KEY = "transferkit.backbone"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FILES_DIR = "backbone"
PREFIX = "backbone."
BUNDLE_REF = "bundle:"


def save_checkpoint(backbone: Backbone, path: str | Path) -> Path:
    """Save a backbone's weights and architecture as one ``.safetensors`` file, loadable as ``file:PATH``.

    The file rebuilds offline when the architecture's spec does (timm,
    torchvision, EfficientNet-Lite, the packaged MiniLM, a local folder);
    a bundle directory also carries the config and tokenizer files.

    Args:
        backbone: the backbone to save.
        path: the file to write (parent folders are created).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in backbone.state_dict().items():
        t = t.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory (tied weights): store copies
        if t.numel() and t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[key] = t
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(backbone.architecture())})
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Cannot read {path}: {exc}") from None


def _check_architecture(arch: Any, where: str) -> dict:
    if not isinstance(arch, dict) or not isinstance(arch.get("spec"), str):
        raise BundleError(f"{where} does not describe a backbone: expected {{\"spec\": ..., \"options\": {{...}}}}, "
                          f"got {arch!r:.200}.")
    if not isinstance(arch.get("options", {}), dict):
        raise BundleError(f"{where}: the backbone 'options' must be a JSON object, got {arch['options']!r:.200}.")
    return arch


def _read_tensors(path: Path, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors whose key starts with ``prefix`` (prefix removed), and the file's metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            return tensors, f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file ({exc}); file: reads bundles and "
                          "safetensors files only, never pickles (.pt, .pth, .bin).") from None


def read_bundle(path: Path) -> tuple[dict, dict[str, torch.Tensor], Path | None]:
    """Architecture, backbone tensors and rebuild-files folder of a bundle directory."""
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path} is a directory without {MANIFEST}: file: takes a transferkit bundle directory "
                          "or a .safetensors file written by save_checkpoint().")
    manifest = _read_json(path / MANIFEST)
    if "backbone" not in manifest:
        raise BundleError(f"{path / MANIFEST} has no 'backbone' entry naming the architecture.")
    arch = _check_architecture(manifest["backbone"], f"{path / MANIFEST} ['backbone']")
    if not (path / WEIGHTS).is_file():
        raise BundleError(f"Bundle {path} has no {WEIGHTS}.")
    tensors, _ = _read_tensors(path / WEIGHTS, PREFIX)
    if not tensors:
        raise BundleError(f"{path / WEIGHTS} holds no '{PREFIX}*' tensors (an adapter-only bundle?); "
                          "load it with transferkit.load() instead.")
    files = path / FILES_DIR
    return arch, tensors, files if files.is_dir() else None


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Architecture and tensors of a :func:`save_checkpoint` file."""
    tensors, metadata = _read_tensors(path)
    if METADATA_KEY not in metadata:
        raise BundleError(f"{path} has no '{METADATA_KEY}' metadata key naming its architecture; it was not "
                          "written by transferkit.backbones.save_checkpoint(). Write it with save_checkpoint(), "
                          "or load the model through its own source (timm:, hf:, ...) and its state dict.")
    try:
        arch = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: metadata '{METADATA_KEY}' is not JSON ({exc}).") from None
    return _check_architecture(arch, f"{path} metadata '{METADATA_KEY}'"), tensors


def load_tensors_strict(backbone: Backbone, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Load a state dict; any missing, unexpected or mis-shaped tensor raises :class:`BundleError`."""
    try:
        result = backbone.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise BundleError(f"The tensors of {where} do not fit {backbone.spec}: {' '.join(str(exc).split())}") from None
    if result.missing_keys or result.unexpected_keys:
        raise BundleError(f"The tensors of {where} do not fit {backbone.spec}: missing {result.missing_keys[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}.")


def _resolve_bundle_ref(spec: str, files: Path | None) -> str:
    """``hf:bundle:tok`` -> ``hf:/abs/bundle/backbone/tok``: a spec naming files inside the bundle."""
    prefix, _, name = spec.partition(":")
    if not name.startswith(BUNDLE_REF):
        return spec
    if files is None:
        raise BundleError(f"The spec '{spec}' refers to the bundle's '{FILES_DIR}/' folder, which is missing.")
    return f"{prefix}:{files / name[len(BUNDLE_REF):]}"


@register_source("file", help="a transferkit bundle directory, a bundle on the Hub (file:hf:ORG/NAME), or a "
                              ".safetensors file written by save_checkpoint()",
                 examples=("file:runs/my-bundle", "file:checkpoints/backbone.safetensors"),
                 options=("image_size", "max_length", "pooling"), modality="any")
def create_file(name: str, *, pretrained: bool = True, files_dir: Path | None = None, **options: Any) -> Backbone:
    """Rebuild ``file:PATH``.

    Args:
        name: the bundle directory or ``.safetensors`` file.
        pretrained: load the saved tensors; ``False`` gives the architecture at random init.
        files_dir: unused (a bundle's own ``backbone/`` folder is used).
        **options: override the saved options (``image_size``, ``max_length``, ``pooling``).

    Raises:
        MissingWeightsError: the path does not exist.
        BundleError: the bundle or file is incomplete, or its tensors do not fit.
    """
    if name.startswith("hf:"):  # a bundle pushed to the Hub (transferkit push)
        from transferkit.backbones.hf import fetch_hub_bundle

        path = fetch_hub_bundle(name.removeprefix("hf:"))
    else:
        path = Path(name).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"file: backbone not found: {path} (a bundle directory or a .safetensors file).")
    if path.is_dir():
        arch, tensors, files = read_bundle(path)
    else:
        (arch, tensors), files = read_checkpoint(path), None
    if split_spec(arch["spec"])[0] == "file":
        raise BundleError(f"{path} names another file: backbone ({arch['spec']}); save it again with this version.")
    opts = {**arch.get("options", {}), **options}
    backbone = load_backbone(_resolve_bundle_ref(arch["spec"], files), pretrained=False, files_dir=files, **opts)
    if pretrained:
        load_tensors_strict(backbone, tensors, path)
    rebuilt = backbone.architecture()
    backbone.rebuilt_from = {"spec": arch["spec"], "options": rebuilt["options"]}
    backbone.spec, backbone.pretrained = f"file:{name}", pretrained
    return backbone
