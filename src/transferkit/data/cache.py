"""The on-disk feature cache: features of a frozen backbone are computed once per data set.

The key is a sha256 over everything that changes the features: the backbone
spec, a digest of its current weights, its preprocessing config and the data
fingerprint. Files are safetensors (no pickle), written to a temporary file
and renamed into place, so a process reading the cache never sees half a file;
a file that does not read back as the expected array is recomputed.

Example:
    >>> feats = extract_features(backbone, train)          # doctest: +SKIP
    >>> cached_path(backbone, train).exists()               # doctest: +SKIP
    True
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data.batches import module_device, run_batches
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError, check_range

CACHE_ENV = "TRANSFERKIT_CACHE"
FEATURES_KEY = "features"


#: Subsets of pools up to this size are served from the whole pool's features.
POOL_LIMIT = 5000


def _serve_from_pool(backbone: Any, data: TaskData, cache_dir) -> bool:
    """Whether ``data`` (a subset) should be cut from its whole pool's features.

    Yes when the pool's features are cached already, or when the pool is small
    (<= :data:`POOL_LIMIT`) and the draw is at least a quarter of it; a small
    draw from a big pool is embedded on its own.
    """
    if data.origin is None or len(data) >= len(data.origin[0]):
        return False
    root = data.origin[0]
    if cached_path(backbone, root, cache_dir).is_file():
        return True
    return len(root) <= POOL_LIMIT and 4 * len(data) >= len(root)


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$TRANSFERKIT_CACHE``, else ``~/.cache/transferkit/features``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "transferkit" / "features"


def feature_cache_key(backbone: Any, data: TaskData) -> str:
    """sha256 of (spec, weights digest, preprocessing config, data fingerprint), hex."""
    preprocess = json.dumps(backbone.preprocess.config(), sort_keys=True)
    parts = [backbone.spec, backbone.weights_digest(), preprocess, data.fingerprint()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cached_path(backbone: Any, data: TaskData, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the features of ``data`` under ``backbone`` are (or would be) stored."""
    return default_cache_dir(cache_dir) / f"{feature_cache_key(backbone, data)}.safetensors"


def _read_cached(path: Path, key: str, rows: int) -> np.ndarray | None:
    """The cached array, or ``None`` when missing, unreadable or not what the key promises."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            feats = fh.get_tensor(FEATURES_KEY)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        warnings.warn(f"Ignoring unreadable feature cache file {path} ({exc}); recomputing.", stacklevel=3)
        return None
    if meta.get("key") != key or feats.dtype != np.float32 or feats.ndim != 2 or len(feats) != rows:
        warnings.warn(f"Ignoring feature cache file {path}: it does not match its key; recomputing.", stacklevel=3)
        return None
    return feats


def _write_atomic(path: Path, feats: np.ndarray, meta: dict[str, str]) -> None:
    """Write to a temporary file in the same folder, then rename: readers see all or nothing."""
    from safetensors.numpy import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}-", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        warnings.warn(f"Cannot write the feature cache in {path.parent} ({exc}); features not cached.", stacklevel=3)
        return
    try:
        save_file({FEATURES_KEY: np.ascontiguousarray(feats)}, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache folder should stay readable
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"Cannot write the feature cache file {path} ({exc}); features not cached.", stacklevel=3)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _batch_order(data: TaskData) -> np.ndarray:
    """Item order for batching: text sorted by length (similar lengths pad little), else as is."""
    if data.modality == "text":
        return np.argsort(np.array([len(t) for t in data.items]), kind="stable")
    return np.arange(len(data))


@contextmanager
def _progress_bar(total: int, enabled: bool, label: str) -> Iterator[Any]:
    """Yields ``advance(n)``; a rich progress bar when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def _items(data: TaskData, idx: np.ndarray) -> Any:
    return data.items[idx] if isinstance(data.items, np.ndarray) else [data.items[i] for i in idx]


@torch.inference_mode()
def compute_features(backbone: Any, data: TaskData, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Features of every item, float32 ``[N, D]``, in the data's order (no cache).

    The backbone is put in eval mode for the pass and restored afterwards.
    """
    out: np.ndarray | None = None
    was_training = backbone.training
    backbone.eval()
    load = lambda idx: backbone.preprocess(_items(data, idx))  # noqa: E731
    try:
        with _progress_bar(len(data), progress, f"features {backbone.spec} / {data.name}") as advance:
            for idx, _, feats in run_batches(backbone.forward_features, load, len(data), batch_size=batch_size,
                                             device=module_device(backbone), order=_batch_order(data)):
                feats = feats.detach().float().cpu().numpy()
                if out is None:
                    out = np.empty((len(data), feats.shape[1]), dtype=np.float32)
                out[idx] = feats
                advance(len(idx))
    finally:
        backbone.train(was_training)
    assert out is not None  # len(data) > 0 was checked by the caller
    return out


def extract_features(backbone: Any, data: TaskData, *, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                     use_cache: bool = True, progress: bool = False) -> np.ndarray:
    """Features of ``data`` under a frozen ``backbone``, read from or written to the cache.

    Args:
        backbone: a :class:`~transferkit.backbones.base.Backbone`.
        data: the items to embed (labels are not used, but are part of the fingerprint).
        batch_size: items per forward pass.
        cache_dir: cache folder (default ``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit/features``).
        use_cache: ``False`` neither reads nor writes the cache.
        progress: show a progress bar.

    Returns:
        float32 ``[N, D]`` in the order of ``data.items``.

    Raises:
        DataError: ``data`` is empty, or an item cannot be preprocessed (the
            backbone's preprocessing names it).
    """
    if len(data) == 0:
        raise DataError(f"{data.name}: no items to extract features from.")
    check_range("extract_features", "batch_size", batch_size, low=1, kind="an int")
    if not use_cache:
        return compute_features(backbone, data, batch_size=batch_size, progress=progress)
    if _serve_from_pool(backbone, data, cache_dir):
        # A large draw from a small pool (or any draw from a cached pool): embed the
        # pool once, and every later draw from it is a cache read.
        root, idx = data.origin
        return extract_features(backbone, root, batch_size=batch_size, cache_dir=cache_dir, progress=progress)[idx]
    key = feature_cache_key(backbone, data)
    path = default_cache_dir(cache_dir) / f"{key}.safetensors"
    cached = _read_cached(path, key, len(data))
    if cached is not None:
        return cached
    feats = compute_features(backbone, data, batch_size=batch_size, progress=progress)
    meta = {"key": key, "spec": backbone.spec, "data": data.name, "fingerprint": data.fingerprint()}
    _write_atomic(path, feats, meta)
    return feats
