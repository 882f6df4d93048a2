"""The result bundle: what ``fit`` returns and saves.

A directory holding

* ``model.safetensors``: the :class:`TransferModel` state dict (``backbone.*``, ``head.*``);
* ``manifest.json``: backbone architecture, strategy and config, task, label
  names, preprocessing, metrics, library versions, data fingerprint, history,
  and ``files``: the SHA-256 of every other file;
* ``backbone/``: files an offline rebuild needs (configs, tokenizer, vocabulary);
* ``report.md`` / ``report.html``.

It is written under a lock into a visible ``OUT.partial-PID`` folder and renamed
into place as the last step (:mod:`transferkit.export.output_lock`), so a failed
run never leaves a bundle that looks complete, a second writer is refused, and
an existing bundle is only replaced when ``overwrite=True``. :func:`load` never
unpickles anything (JSON and safetensors only) and refuses a folder that does
not match its manifest (:mod:`transferkit.export.bundle_checks`).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path

import numpy as np
import torch

from transferkit.backbones import load_backbone
from transferkit.data.batches import module_device
from transferkit.errors import BundleError, ConfigError, MissingWeightsError, TransferkitError
from transferkit.export.bundle_checks import (BUNDLE_FORMAT, FILES_DIR, FORMAT_VERSION, MANIFEST, WEIGHTS,
                                              check_manifest, check_outputs, check_tensors, hash_files, load_weights,
                                              one_line, read_header, verify_files)
from transferkit.export.output_lock import PARTIAL_MARKER, atomic_dir, check_not_partial, check_writable
from transferkit.strategies.base import TransferModel
from transferkit.tasks import TASKS, describe_head, get_task, rebuild_head

__all__ = ["BUNDLE_FORMAT", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "Predictor", "atomic_dir", "check_writable",
           "load", "outputs_to_predictions", "read_manifest", "rebuild_model", "save_bundle"]
#: manifest keys save_bundle sets itself (a manifest copied from another bundle does not carry them over).
_OWN_KEYS = ("format", "format_version", "files")


#: The packages whose versions a bundle records by default.
BUNDLE_LIBRARIES = ("transferkit", "torch", "timm", "transformers", "sentence-transformers", "accelerate",
                    "safetensors", "scikit-learn", "numpy")


def library_versions(names: tuple[str, ...] = BUNDLE_LIBRARIES) -> dict[str, str]:
    """The installed version of each package in ``names`` (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def save_bundle(model: TransferModel, out: str | Path, manifest: dict, *, overwrite: bool = False,
                extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` and ``manifest`` as a bundle at ``out``, atomically and under ``OUT.lock``.

    Args:
        extra: called with the temporary directory before it is renamed into
            place (the report is written there); the files it writes are hashed too.

    Raises:
        BundleError: another run is writing ``out``, or it exists without ``overwrite``.
    """
    from safetensors.torch import save_file

    with atomic_dir(out, overwrite) as tmp:
        tied = tied_aliases(model)  # one copy of a tied tensor (a language model's embeddings and output layer)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
        manifest = {k: v for k, v in manifest.items() if k not in _OWN_KEYS}
        adapter = getattr(model, "adapter", None)
        if adapter is not None:
            manifest = {**manifest, "adapter": {k: v for k, v in adapter.items() if k != "keys"}}
            if adapter["adapter_only"]:
                from transferkit.strategies.parameter_efficient import adapter_state

                state = adapter_state(model, state)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT})
        model.backbone.save_files(tmp / FILES_DIR)
        manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, **manifest,
                    "backbone": model.backbone.architecture(),
                    "head": describe_head(model.head),
                    "task": manifest.get("task", model.task), "label_names": model.label_names,
                    "modality": manifest.get("modality", model.backbone.modality),
                    "preprocess": model.backbone.preprocess.config(), "versions": library_versions()}
        if getattr(model, "generation", None):
            manifest["generation"] = model.generation
        _write_manifest(tmp, manifest)
        if extra is not None:
            extra(tmp)
        # last: the SHA-256 of everything written above, the report included
        _write_manifest(tmp, {**manifest, "files": hash_files(tmp, skip={MANIFEST, PARTIAL_MARKER})})
    return Path(out)


def _write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default), encoding="utf-8")


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(path: str | Path) -> dict:
    """The manifest of the bundle at ``path``, its fields checked (:func:`~.bundle_checks.check_manifest`).

    Raises:
        BundleError: no complete bundle there, an unfinished one (``PARTIAL.txt``), or a manifest this
            version cannot read.
    """
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"No bundle at {path}: not a directory.")
    check_not_partial(path)
    if not mf.is_file() or not (path / WEIGHTS).is_file():
        raise BundleError(f"{path} is not a complete transferkit bundle: expected {MANIFEST} and {WEIGHTS}.")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Corrupt manifest {mf}: {exc}") from None
    return check_manifest(path, manifest)


def rebuild_model(path: str | Path, manifest: dict | None = None) -> TransferModel:
    """Rebuild the trained model from a bundle directory (no training data, no pickles).

    The files are checked against the manifest's hashes first, and the tensors
    against the architecture on the meta device, before anything is allocated.

    Raises:
        BundleError: the folder does not match its manifest (the message names the file, field or tensor).
    """
    import transferkit.strategies  # noqa: F401  (registers the heads and tasks strategies define)

    path = Path(path)
    manifest = manifest or read_manifest(path)
    verify_files(path, manifest)
    if manifest["task"] not in TASKS:
        raise BundleError(f"{path / MANIFEST}: task {manifest['task']!r} is not a known task; known: "
                          f"{', '.join(TASKS.names())}.")
    task, labels = get_task(manifest["task"]), manifest.get("label_names")
    check_outputs(path, manifest, task.num_outputs(labels) if task.has_labels and labels is not None else None)
    weights = path / WEIGHTS
    adapter = manifest.get("adapter")
    adapter_only = bool(adapter and adapter.get("adapter_only"))
    model = _build_checked(path, manifest, read_header(weights), adapter_only)
    state = load_weights(weights)
    if adapter_only:
        missing, unexpected = model.load_state_dict(state, strict=False)
        not_base = [k for k in missing if k.startswith("head.") or k not in _base_keys(model.backbone)]
        if unexpected or not_base:
            raise BundleError(f"{weights} does not fit the adapter its manifest describes: "
                              f"unexpected {unexpected[:3]}, missing {not_base[:3]}.")
        model.adapter = {**adapter, "keys": sorted(state)}
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        untied = sorted(set(missing) - tied_aliases(model))
        if unexpected or untied:  # check_tensors compared the names already: an invariant, kept as a guard
            raise BundleError(f"{weights} does not fit its model: unexpected {unexpected[:3]}, missing {untied[:3]}.")
        if adapter:
            model.adapter = {**adapter, "keys": sorted(k for k in state if k.startswith("backbone.") and
                                                       _is_adapter_key(model, k))}
    model.generation = manifest.get("generation")
    return model.eval()


def _build_checked(path: Path, manifest: dict, header: dict, adapter_only: bool) -> TransferModel:
    """Build the model once the file's tensors are known to fit it: compared on the meta device first (nothing
    allocated), or, for a source that cannot be built there, the head on meta and the rest after building."""
    weights = path / WEIGHTS
    skeleton = _on_meta(lambda: _assemble(path, manifest, skeleton=True))
    if skeleton is None:
        head = _on_meta(lambda: rebuild_head(manifest["head"]))
        if head is None:
            raise BundleError(f"{path / MANIFEST}: the 'head' entry {manifest['head']} does not describe a head "
                              "this version can build.")
        check_tensors(weights, header, {f"head.{k}": v for k, v in head.state_dict().items()}, prefix="head.")
    else:
        check_tensors(weights, header, skeleton.state_dict(),
                      optional=(_base_keys(skeleton.backbone) if adapter_only else set()) | tied_aliases(skeleton))
    model = _assemble(path, manifest, skeleton=False)
    if skeleton is None:
        check_tensors(weights, header, model.state_dict(),
                      optional=(_base_keys(model.backbone) if adapter_only else set()) | tied_aliases(model))
    return model


def _on_meta(build: Callable):
    """``build()`` on the meta device (shapes, no memory), or None where a source cannot be built there."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # noqa: BLE001 - the real build below reports what is wrong
        return None


def _assemble(path: Path, manifest: dict, *, skeleton: bool) -> TransferModel:
    """The model a manifest describes, at random init (``skeleton``: the adapter's base too, for the meta device)."""
    arch, adapter = manifest["backbone"], manifest.get("adapter")
    files = path / FILES_DIR
    try:
        if adapter and adapter.get("adapter_only") and not skeleton:
            backbone = _base_for_adapter(path, arch, adapter)
        else:
            backbone = load_backbone(arch["spec"], pretrained=False, files_dir=files if files.is_dir() else None,
                                     **arch.get("options", {}))
        if adapter:
            from transferkit.strategies.parameter_efficient import attach_from_manifest

            attach_from_manifest(backbone, adapter)
        head = rebuild_head(manifest["head"])
    except (BundleError, MissingWeightsError):
        raise
    except (TransferkitError, TypeError, ValueError, KeyError) as exc:
        raise BundleError(f"{path / MANIFEST}: cannot rebuild the model it describes (backbone '{arch['spec']}', "
                          f"head {manifest['head'].get('kind', 'linear')!r}): {one_line(exc)}") from None
    return TransferModel(backbone, head, manifest["task"], manifest.get("label_names"))


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


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """State-dict keys naming a tensor that an earlier key already names (tied weights, such as a language
    model's output layer sharing its input embeddings): bundles store it once and the model ties it back."""
    seen: set[int] = set()
    aliases = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            aliases.add(key)
        seen.add(id(value))
    return aliases


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
        """The class (or tag) names the model predicts, in output order; ``None`` for regression."""
        return self.model.label_names

    @property
    def task(self) -> str:
        """The registered task name of the model (``classification``, ``token-classification``, ...)."""
        return self.model.task

    def outputs(self, items: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] (classification, multi-label) or values [N] (regression)."""
        from transferkit.training import predict_outputs
        from transferkit.data.dataset import TaskData

        items = get_task(self.task).prepare_items(list(items) if not isinstance(items, np.ndarray) else items)
        data = TaskData(items, None, self.model.backbone.modality, self.task, self.label_names)
        with torch.inference_mode():
            return predict_outputs(self.model, data, batch_size=batch_size)

    predict_proba = outputs

    def stream(self, item: Any, on_text: Callable[[str], None], cancel: threading.Event | None = None) -> str:
        """Text generation: the answer to one prompt, handed to ``on_text`` piece by piece as it is generated
        (what ``serve``'s ``POST /predict/stream`` sends); returns the whole answer, as :meth:`predict` gives it.
        Setting ``cancel`` ends the generation at its next token.

        Raises:
            ConfigError: the model's task answers whole predictions only.
            DataError: the prompt is empty or longer than the model's context.

        Example:
            >>> tk.load("runs/synopsis").stream("Summarise: ...", lambda piece: print(piece, end=""))  # doctest: +SKIP
        """
        task = get_task(self.task)
        if not task.streams:
            raise ConfigError(f"{self.task} models answer whole predictions: use predict. Streaming is for tasks "
                              f"that make theirs piece by piece ({', '.join(n for n in TASKS.names() if TASKS.get(n).streams)}).")
        inputs = self.model.backbone.preprocess(task.prepare_items([item]))
        device = module_device(self.model)
        with torch.inference_mode():
            return task.stream(self.model, {k: v.to(device) for k, v in inputs.items()}, on_text, cancel)

    def predict(self, items: Sequence, batch_size: int = 64) -> list:
        """Label names (classification), lists of label names (multi-label) or floats (regression)."""
        return outputs_to_predictions(self.outputs(items, batch_size), self.task, self.label_names, items)


def outputs_to_predictions(out: np.ndarray, task: str, label_names: Sequence[str] | None,
                           items: Sequence | None = None) -> list:
    """What ``predict`` returns: the task's decoding (label names, lists of label names, floats, entities, ...)."""
    return get_task(task).decode(out, label_names, items)


def load(path: str | Path) -> Predictor:
    """Load a bundle written by ``fit`` (a directory, or ``hf:ORG/NAME`` pushed to the Hub) into a :class:`Predictor`.

    Raises:
        BundleError: the folder is unfinished, tampered with or damaged; the message names the file, field or
            tensor and what was expected.

    Example:
        >>> import transferkit as tk
        >>> predictor = tk.load("runs/fmnist")                  # doctest: +SKIP
        >>> predictor.predict(["boot.png", "shirt.png"])        # doctest: +SKIP
    """
    if str(path).startswith("hf:"):  # pushed with `transferkit push`: the Hub cache holds the folder
        from transferkit.backbones.hf import fetch_hub_bundle

        path = fetch_hub_bundle(str(path).removeprefix("hf:"))
    manifest = read_manifest(path)
    return Predictor(rebuild_model(path, manifest), manifest, Path(path))
