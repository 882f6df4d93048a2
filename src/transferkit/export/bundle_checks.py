"""Bundle integrity: what :func:`transferkit.load` checks before it trusts a folder.

* the manifest's fields have the types the loader reads (:func:`check_manifest`),
  and its ``format_version`` is one this code reads;
* every file is listed in the manifest's ``files`` entry with its SHA-256, and
  nothing else is there (but the model card ``README.md`` and ``.gitattributes``
  of a shared copy): no unlisted or missing file, no symlink (but those of the
  Hugging Face cache, within it), no special file, no path or spec reaching
  outside the folder (:func:`verify_files`);
* ``model.safetensors`` is parsed by safetensors itself (never unpickled), its
  tensor names, shapes and dtypes are those of the rebuilt architecture, compared
  on the ``meta`` device before anything is allocated (:func:`check_tensors`),
  and its values are finite (:func:`load_weights`).

Every refusal is a :class:`~transferkit.errors.BundleError` of one line naming
the bundle, the file, field or tensor, and what was expected.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import torch

from transferkit.errors import BundleError, ConfigError, TransferkitWarning
from transferkit.tasks.generation import check_generation

BUNDLE_FORMAT = "transferkit-bundle"
#: 1: no file hashes; 2: a SHA-256 per file in ``files``.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MANIFEST, WEIGHTS, FILES_DIR = "manifest.json", "model.safetensors", "backbone"
#: files a shared bundle may hold unlisted: the model card ``push`` writes into its copy (so the copy's files stay
#: byte for byte the bundle's) and the Hub repo's own ``.gitattributes``. ``load`` reads neither.
HUB_EXTRAS = {"README.md", ".gitattributes"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------- the manifest


def _field(mf: Path, name: str, value, kind: str) -> BundleError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return BundleError(f"{mf}: field '{name}' must be {kind}; got {shown} ({type(value).__name__}).")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(path: Path, manifest) -> dict:
    """Refuse a manifest whose fields do not have the types the loader reads, or a format this code cannot read."""
    mf = path / MANIFEST
    if not isinstance(manifest, dict):
        raise BundleError(f"{mf} is not a transferkit manifest: expected a JSON object, got {type(manifest).__name__}.")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mf} is not a transferkit manifest (format={manifest.get('format')!r}).")
    version = manifest.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise _field(mf, "format_version", version, "a positive int")
    if version not in SUPPORTED_VERSIONS:
        raise BundleError(f"{mf}: format_version {version} was written by a newer transferkit; this version reads "
                          f"format versions {', '.join(map(str, SUPPORTED_VERSIONS))}. Upgrade transferkit.")
    backbone = manifest.get("backbone")
    if not isinstance(backbone, dict):
        raise _field(mf, "backbone", backbone, 'an object {"spec": ..., "options": {...}}')
    if not isinstance(backbone.get("spec"), str) or not backbone["spec"]:
        raise _field(mf, "backbone.spec", backbone.get("spec"), "a backbone spec string such as 'small-cnn:16'")
    options = backbone.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise _field(mf, "backbone.options", options, "an object of option names to values")
    if {"pretrained", "files_dir"} & set(options):
        raise _field(mf, "backbone.options", sorted(options), "free of 'pretrained' and 'files_dir' (set by load)")
    head = manifest.get("head")
    if not isinstance(head, dict) or not isinstance(head.get("kind", "linear"), str):
        raise _field(mf, "head", head, 'an object {"kind": ..., ...}')
    for key, value in head.items():
        if key.endswith("_features") and not (_is_int(value) and value >= 1):
            raise _field(mf, f"head.{key}", value, "a positive int")
    scale = head.get("input_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < float("inf")):
        raise _field(mf, "head.input_scale", scale, "a positive finite number")
    if not isinstance(manifest.get("task"), str):
        raise _field(mf, "task", manifest.get("task"), "a task name (string)")
    labels = manifest.get("label_names")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _field(mf, "label_names", labels, "a list of strings or null")
    _check_adapter(mf, manifest.get("adapter"))
    generation = manifest.get("generation")
    if generation is not None:
        try:
            check_generation(generation if isinstance(generation, dict) else {"?": generation})
        except ConfigError as exc:
            raise _field(mf, "generation", generation, f"decoding settings ({exc})") from None
    if not isinstance(manifest.get("preprocess", {}), dict):
        raise _field(mf, "preprocess", manifest.get("preprocess"), "an object")
    _check_files_entry(mf, manifest, version)
    return manifest


def _check_adapter(mf: Path, adapter) -> None:
    if adapter is None:
        return
    if not isinstance(adapter, dict) or not isinstance(adapter.get("strategy"), str):
        raise _field(mf, "adapter", adapter, 'null or an object {"strategy": ..., "options": {...}}')
    for key, ok, kind in (("options", lambda v: v is None or isinstance(v, dict), "an object or null"),
                          ("adapter_only", lambda v: isinstance(v, bool), "true or false"),
                          ("base_digest", lambda v: v is None or isinstance(v, str), "a string or null")):
        if not ok(adapter.get(key)):
            raise _field(mf, f"adapter.{key}", adapter.get(key), kind)


def _check_files_entry(mf: Path, manifest: dict, version: int) -> None:
    files = manifest.get("files")
    if files is None:
        if version >= 2:
            raise BundleError(f"{mf} has no 'files' entry: a format_version {version} bundle lists the SHA-256 of "
                              "every file, so it cannot be verified.")
        return
    if not isinstance(files, dict):
        raise _field(mf, "files", files, "an object of relative paths to SHA-256 hex digests")
    for rel, digest in files.items():
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or rel in ("", ".", MANIFEST) or str(pure) != rel:
            raise BundleError(f"{mf}: files entry {rel!r} is not a plain path inside the bundle (relative, "
                              "normalised, no '..', not the manifest itself).")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _field(mf, f"files[{rel!r}]", digest, "a SHA-256 digest (64 lowercase hex digits)")


def check_outputs(path: Path, manifest: dict, num_outputs: int | None) -> None:
    """Refuse label names that do not name the head's outputs (``num_outputs``: the task's width for them)."""
    out = manifest["head"].get("out_features")
    if num_outputs is not None and _is_int(out) and out != num_outputs:
        raise BundleError(f"{path / MANIFEST}: 'label_names' names {len(manifest['label_names'])} outputs for task "
                          f"{manifest['task']!r}, but the head has out_features={out}; they must agree.")


# ---------------------------------------------------------------- the files


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path, skip: set[str]) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``root`` but ``skip`` (what :func:`save_bundle` records)."""
    return {rel: sha256(p) for rel, p in sorted(_walk(root, None).items()) if rel not in skip}


def _hub_cache_root(path: Path) -> Path | None:
    """The repo folder when ``path`` is a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/REV``).

    Its files are symlinks into ``../../blobs``: allowed there, and only pointing inside that repo folder.
    """
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith(("models--", "datasets--", "spaces--")):
        return path.parent.parent.resolve()
    return None


def _walk(root: Path, link_root: Path | None) -> dict[str, Path]:
    """Every file under ``root`` by relative posix path; refuses symlinks (but inside ``link_root``), special files."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = full.resolve()
                if link_root is None or not target.is_relative_to(link_root):
                    raise BundleError(f"Bundle {root}: '{rel}' is a symlink (to {os.readlink(full)}); a bundle holds "
                                      "plain files only, nothing that points elsewhere.")
                st = os.stat(full)
                if stat.S_ISDIR(st.st_mode):
                    raise BundleError(f"Bundle {root}: '{rel}' is a symlink to a folder; a bundle holds plain files.")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"Bundle {root}: '{rel}' is not a regular file (a pipe, socket or device); a bundle "
                                  "holds plain files only.")
            found[rel] = full
    return found


def verify_files(path: Path, manifest: dict) -> None:
    """Check every file against the manifest's ``files`` (SHA-256), and every path the manifest names.

    A format 1 bundle has no ``files``: it loads with a warning that it is unverified.
    """
    root = path.resolve()
    link_root = _hub_cache_root(root)
    present = _walk(root, link_root)
    check_spec_paths(path, manifest)
    listed = manifest.get("files")
    if listed is None:
        warnings.warn(f"Bundle {path} was written before bundles recorded file hashes (format_version "
                      f"{manifest.get('format_version', 1)}): its files are not verified. Save it again to add them.",
                      TransferkitWarning, stacklevel=4)
        return
    for rel in sorted(set(listed) - set(present)):
        raise BundleError(f"Bundle {path}: file '{rel}' listed in {MANIFEST} is missing.")
    extras = set(present) - set(listed) - {MANIFEST} - HUB_EXTRAS
    for rel in sorted(extras):
        raise BundleError(f"Bundle {path}: file '{rel}' is not listed in {MANIFEST}'s 'files'; a bundle holds only "
                          "the files it was saved with.")
    for rel, digest in sorted(listed.items()):
        actual = sha256(present[rel])
        if actual != digest:
            raise BundleError(f"Bundle {path}: file '{rel}' has SHA-256 {actual[:16]}..., {MANIFEST} records "
                              f"{digest[:16]}...: it was changed after the bundle was saved.")


def check_spec_paths(path: Path, manifest: dict) -> None:
    """Refuse a backbone spec that would make ``load`` read files outside the bundle.

    ``bundle:REL`` references must stay inside the bundle; ``file:`` specs (another bundle's weights) are refused;
    a full (not adapter-only) bundle may name a local folder only when it carries its own ``backbone/`` files.
    """
    spec = manifest["backbone"]["spec"]
    where = f"Bundle {path}: backbone.spec '{spec}'"
    root = path.resolve()
    for rel in re.findall(r"bundle:([^+@]*)", spec):
        if not (root / FILES_DIR / rel).resolve().is_relative_to(root):
            raise BundleError(f"{where} refers to 'bundle:{rel}', which resolves outside the bundle folder.")
    if re.search(r"(^|[:+])file:", spec):
        raise BundleError(f"{where} reads weights from another file or bundle, outside this one; a bundle stores its "
                          "own backbone weights.")
    adapter_only = bool((manifest.get("adapter") or {}).get("adapter_only"))
    name = spec.split(":", 1)[1] if ":" in spec else spec
    if not adapter_only and name.startswith(("/", "~", "./", "../")) and not (path / FILES_DIR).is_dir():
        raise BundleError(f"{where} names the folder {name}, outside the bundle, and the bundle has no "
                          f"'{FILES_DIR}/' folder to rebuild from.")


# ---------------------------------------------------------------- the tensors


def read_header(weights: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from the safetensors header, parsed by safetensors (no data is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{weights} is not a valid safetensors file ({one_line(exc)}); transferkit reads weights "
                          "as safetensors only and never unpickles them.") from None


def _size(shape, itemsize: int) -> str:
    n = itemsize
    for d in shape:
        n *= d
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def check_tensors(weights: Path, header: Mapping, expected: Mapping[str, torch.Tensor], *,
                  optional: set[str] = frozenset(), prefix: str = "") -> None:
    """Compare the file's tensors (``header``) with the model's (``expected``, usually on the meta device).

    Args:
        weights: the file, for messages.
        header: :func:`read_header` of it.
        expected: the rebuilt model's state dict.
        optional: expected keys the file may lack (the frozen base of an adapter-only bundle).
        prefix: compare only the keys starting with it (the head, when only the head could be built on meta).
    """
    names = {k for k in header if k.startswith(prefix)}
    wanted = {k for k in expected if k.startswith(prefix)}
    for k in sorted(names - wanted):
        raise BundleError(f"{weights} holds tensor '{k}', which the model its manifest describes does not have "
                          f"(expected only its {len(wanted)} tensors).")
    for k in sorted(wanted - names - set(optional)):
        raise BundleError(f"{weights} lacks tensor '{k}' of shape {list(expected[k].shape)}, which the model its "
                          "manifest describes needs.")
    for k in sorted(names & wanted, key=lambda k: (-expected[k].numel(), k)):  # the largest misfit first
        shape, dtype = header[k]
        want = expected[k]
        if tuple(want.shape) != tuple(shape):
            raise BundleError(f"{weights}: tensor '{k}' has shape {list(shape)}, but the model its manifest describes "
                              f"needs {list(want.shape)} ({_size(want.shape, want.element_size())}).")
        if _DTYPES.get(dtype) != want.dtype:
            raise BundleError(f"{weights}: tensor '{k}' is {dtype}, but the model its manifest describes needs "
                              f"{str(want.dtype).removeprefix('torch.')}.")


def load_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The file's tensors (safetensors only), refusing NaN or infinite values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{weights} is not a valid safetensors file ({one_line(exc)}).") from None
    for k, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise BundleError(f"{weights}: tensor '{k}' holds {nan} NaN and {inf} infinite values of {t.numel()}; "
                              "a usable model's weights are finite (training diverged, or the file was damaged).")
    return state
