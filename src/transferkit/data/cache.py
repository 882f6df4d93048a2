"""The on-disk feature cache: features of a frozen backbone are computed once per data set.

The key is a sha256 over everything that changes the features: the backbone
spec, a digest of its current weights, its preprocessing config and the data
fingerprint. Files are safetensors (no pickle), written a batch at a time to a
temporary file and renamed into place, so a process reading the cache never
sees half a file, and the features of a data set larger than the memory are
never held whole; :func:`feature_file` reads them back by rows. A file that
does not read back as the expected array is recomputed.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from transferkit.data.batches import module_device, run_batches, to_device
from transferkit.data.dataset import TaskData
from transferkit.data.streaming import is_stream
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
    if getattr(data, "origin", None) is None or len(data) >= len(data.origin[0]):  # streams have no pool
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


class FeatureFile:
    """Features ``[N, D]`` float32 in a cache file, read by rows: the file is never loaded or mapped whole.

    ``np.asarray(ff)`` reads everything; ``ff[a:b]``, ``ff[rows]`` and :meth:`chunks` read only those rows,
    so a data set whose features exceed the memory can be probed a minibatch at a time. A view of a pool's
    file (a draw from it) reads the draw's rows.
    """

    def __init__(self, path: Path, offset: int, rows: int, dim: int, index: np.ndarray | None = None):
        self.path, self.offset, self.dim, self._rows, self.index = Path(path), offset, dim, rows, index

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index) if self.index is not None else self._rows, self.dim)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, index) -> FeatureFile:
        """The rows ``index`` of this file, as a view (nothing is read)."""
        index = np.asarray(index, dtype=np.int64)
        return FeatureFile(self.path, self.offset, self._rows, self.dim,
                           index if self.index is None else self.index[index])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            return self._read(np.arange(start, stop)) if self.index is not None else self._span(start, stop)
        rows = np.arange(len(self))[key]
        return self._read(np.atleast_1d(rows))[0 if np.ndim(rows) == 0 else slice(None)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, features[start:start + rows])`` over the file, in order; default: chunks of about 8 MB."""
        rows = rows or max(1, (8 << 20) // (4 * self.dim))
        for start in range(0, len(self), rows):
            yield start, self[start:start + rows]

    def _span(self, start: int, stop: int) -> np.ndarray:
        count = max(0, stop - start) * self.dim
        return np.fromfile(self.path, dtype=np.float32, count=count,
                           offset=self.offset + start * self.dim * 4).reshape(-1, self.dim)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Rows of this view, read as runs of consecutive file rows."""
        file_rows = self.index[rows] if self.index is not None else rows
        order = np.argsort(file_rows, kind="stable")
        ordered = file_rows[order]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for run in np.split(np.arange(len(ordered)), np.flatnonzero(np.diff(ordered) != 1) + 1):
            if len(run):
                out[order[run]] = self._span(int(ordered[run[0]]), int(ordered[run[-1]]) + 1)
        return out


def _open_cached(path: Path, key: str, rows: int) -> FeatureFile | None:
    """The cached file as a :class:`FeatureFile`, or ``None`` when missing, unreadable or not what the key promises."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 1 << 20:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(fh.read(size))
        entry, meta = header[FEATURES_KEY], header.get("__metadata__") or {}
        (n, dim), (begin, end) = entry["shape"], entry["data_offsets"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"Ignoring unreadable feature cache file {path} ({exc}); recomputing.", stacklevel=3)
        return None
    whole = path.stat().st_size == 8 + size + end and end - begin == n * dim * 4
    if meta.get("key") != key or entry.get("dtype") != "F32" or n != rows or not whole:
        warnings.warn(f"Ignoring feature cache file {path}: it does not match its key; recomputing.", stacklevel=3)
        return None
    return FeatureFile(path, 8 + size + begin, n, dim)


class _FeatureWriter:
    """A safetensors file of ``[N, D]`` float32 written a batch at a time (rows in any order), then renamed.

    The header is written once the first batch gives ``D``; each batch goes straight to its rows on disk, so
    the features never sit in memory whole. Readers see the file only once it is complete.
    """

    def __init__(self, path: Path, rows: int, meta: dict[str, str]):
        self.path, self.rows, self.meta = path, rows, meta
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}-", suffix=".tmp")
        self.fd, self.tmp, self.data_at, self.dim = fd, Path(tmp), 0, 0

    def write(self, idx: np.ndarray, feats: np.ndarray) -> None:
        if not self.data_at:
            self.dim = feats.shape[1]
            nbytes = self.rows * self.dim * 4
            header = json.dumps({FEATURES_KEY: {"dtype": "F32", "shape": [self.rows, self.dim],
                                                "data_offsets": [0, nbytes]}, "__metadata__": self.meta}).encode()
            header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
            os.write(self.fd, len(header).to_bytes(8, "little") + header)
            self.data_at = 8 + len(header)
            os.ftruncate(self.fd, self.data_at + nbytes)
        order = np.argsort(idx, kind="stable")
        idx, feats = np.asarray(idx)[order], np.ascontiguousarray(feats[order], dtype=np.float32)
        for run in np.split(np.arange(len(idx)), np.flatnonzero(np.diff(idx) != 1) + 1):
            if len(run):
                os.pwrite(self.fd, feats[run[0]:run[-1] + 1].tobytes(), self.data_at + int(idx[run[0]]) * self.dim * 4)

    def commit(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.chmod(self.tmp, 0o644)  # mkstemp makes 0600; a shared cache folder should stay readable
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.tmp.unlink(missing_ok=True)


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
def _embed(backbone: Any, data: TaskData, batch_size: int, progress: bool, write: Callable[[np.ndarray, np.ndarray], None]):
    """Run ``backbone`` over ``data``, calling ``write(rows, features)`` per batch (eval mode, restored after)."""
    was_training = backbone.training
    backbone.eval()
    load = lambda idx: backbone.preprocess(_items(data, idx))  # noqa: E731
    try:
        with _progress_bar(len(data), progress, f"features {backbone.spec} / {data.name}") as advance:
            for idx, _, feats in _feature_batches(backbone, data, load, batch_size):
                write(np.asarray(idx), feats.detach().float().cpu().numpy())
                advance(len(idx))
    finally:
        backbone.train(was_training)


def _feature_batches(backbone: Any, data, load, batch_size: int):
    """``(rows, inputs, features)`` per batch: by index for in-memory data, in the source's order for a stream."""
    if not is_stream(data):
        yield from run_batches(backbone.forward_features, load, len(data), batch_size=batch_size,
                               device=module_device(backbone), order=_batch_order(data))
        return
    device, start = module_device(backbone), 0
    for items, _ in data.in_order(batch_size):
        inputs = to_device(backbone.preprocess(items), device)
        yield list(range(start, start + len(items))), inputs, backbone.forward_features(inputs)
        start += len(items)


def compute_features(backbone: Any, data: TaskData, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Features of every item, float32 ``[N, D]``, in the data's order (no cache).

    The backbone is put in eval mode for the pass and restored afterwards.
    """
    out: list[np.ndarray] = []

    def write(idx, feats):
        if not out:
            out.append(np.empty((len(data), feats.shape[1]), dtype=np.float32))
        out[0][idx] = feats

    _embed(backbone, data, batch_size, progress, write)
    assert out  # len(data) > 0 was checked by the caller
    return out[0]


def feature_file(backbone: Any, data: TaskData, *, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False) -> FeatureFile | None:
    """The cached features of ``data`` as a :class:`FeatureFile`, computed and written a batch at a time if missing.

    Neither computing nor reading holds the whole ``[N, D]`` array in memory. Processes sharing the cache
    folder (the workers of the Ray engine) compute a given file once: the first takes a lock beside it and
    the others read what it wrote. ``None`` where the cache folder cannot be written (with a warning).
    """
    if len(data) == 0:
        raise DataError(f"{data.name}: no items to extract features from.")
    check_range("extract_features", "batch_size", batch_size, low=1, kind="an int")
    if _serve_from_pool(backbone, data, cache_dir):
        # A large draw from a small pool (or any draw from a cached pool): embed the
        # pool once, and every later draw from it is a cache read.
        root, idx = data.origin
        pool = feature_file(backbone, root, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        return pool.take(idx) if pool is not None else None
    key = feature_cache_key(backbone, data)
    path = default_cache_dir(cache_dir) / f"{key}.safetensors"
    found = _open_cached(path, key, len(data))
    if found is not None:
        return found
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as exc:
        warnings.warn(f"Cannot write the feature cache in {path.parent} ({exc}); features not cached.", stacklevel=2)
        return None
    try:
        found = _open_cached(path, key, len(data)) if path.is_file() else None  # another process wrote it meanwhile
        if found is not None:
            return found
        writer = _FeatureWriter(path, len(data), {"key": key, "spec": backbone.spec, "data": data.name,
                                                  "fingerprint": data.fingerprint()})
        try:
            _embed(backbone, data, batch_size, progress, writer.write)
            writer.commit()
        finally:
            writer.discard()
    finally:
        lock.release()
    return _open_cached(path, key, len(data))


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
        float32 ``[N, D]`` in the order of ``data.items``, in memory (:func:`feature_file` reads them by rows).

    Raises:
        DataError: ``data`` is empty, or an item cannot be preprocessed (the
            backbone's preprocessing names it).
    """
    if len(data) == 0:
        raise DataError(f"{data.name}: no items to extract features from.")
    check_range("extract_features", "batch_size", batch_size, low=1, kind="an int")
    cached = feature_file(backbone, data, batch_size=batch_size, cache_dir=cache_dir, progress=progress) \
        if use_cache else None
    if cached is not None:
        return np.asarray(cached)
    return compute_features(backbone, data, batch_size=batch_size, progress=progress)
