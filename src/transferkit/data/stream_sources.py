"""Where a :class:`~transferkit.data.streaming.StreamData` reads its items: tar shards, ``datasets`` streams,
image folders.

Each source is a list of shards read in order. :meth:`StreamSource.labels` is the cheap pass (labels
only, no item decoded, each with its shard); :meth:`StreamSource.records` yields ``(encoded item, raw label, where)``, and
:meth:`StreamSource.decode` turns an encoded item into what the backbone's preprocessing reads (a PIL
image or a string), naming ``where`` when it cannot.

**Tar shards** follow WebDataset's layout (the files of one sample are consecutive members sharing a
key: the member's path up to the first dot of its name; ``0001.png`` + ``0001.cls``), read with the
standard library's :mod:`tarfile` as a stream (``r|*``: gzip too, no seeking back, members dropped as
they are read). The ``webdataset`` package reads tars the same way (its reader is ``tarfile`` in stream
mode plus this grouping); reading them here keeps the shard and member in every error, gives a label
pass that reads the ``.cls`` members only, and adds no dependency.
"""
from __future__ import annotations

import glob
import io
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferkit.data.adapters_images import IMAGE_EXTENSIONS
from transferkit.data.dataset import printable
from transferkit.errors import ConfigError, DataError
from transferkit.tasks import get_task

__all__ = ["FolderStream", "HFStream", "StreamSource", "TarShards", "expand_pattern", "is_tar_pattern",
           "open_source"]

_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: the label member of a tar sample (WebDataset's class index: an integer, or here also a class name)
LABEL_EXT = "cls"
#: ``datasets`` builders for files read with ``streaming=True``
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}


class StreamSource:
    """A list of shards read in order. Subclasses set the attributes and the three readers.

    Attributes:
        name: a short display name; ``origin``: where the data is (shown in errors and reports).
        modality: ``"image"`` or ``"text"``.
        declared_labels: the class names the source declares (their order indexes the targets), or ``None``.
        labels_are_indices: every label is an index into ``declared_labels`` (a ``ClassLabel``, class folders),
            never a class name (a tar's ``.cls`` may be either: a name first).
        num_shards: how many shards (units whose order an epoch shuffles).
    """

    name: str = "stream"
    origin: str = ""
    modality: str = "image"
    declared_labels: list[str] | None = None
    labels_are_indices: bool = False
    num_shards: int = 1

    def labels(self) -> Iterator[tuple[int, Any, str]]:
        """``(shard, raw label, where)`` of every item in shard order, reading labels only."""
        raise NotImplementedError

    def records(self, shard: int) -> Iterator[tuple[Any, Any, str]]:
        """``(encoded item, raw label, where)`` of shard ``shard``'s items, in order."""
        raise NotImplementedError

    def decode(self, item: Any, where: str) -> Any:
        """What the backbone's preprocessing reads: encoded image bytes become a loaded PIL image."""
        if isinstance(item, (bytes, bytearray)):
            return decode_image(item, where)
        return item

    def fingerprint_parts(self) -> list[str]:
        raise NotImplementedError


def decode_image(data: bytes, where: str):
    """A loaded PIL image from encoded bytes; a :class:`DataError` naming ``where`` when they are not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: cannot read image: {exc}") from None


def path_parts(paths: list[str]) -> list[str]:
    """``path|size|mtime`` of each file (what a stream's fingerprint hashes)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            out.append(str(p))
    return out


# --------------------------------------------------------------------------- tar shards

def expand_pattern(pattern: str) -> list[str]:
    """Shard paths from a pattern: ``{000..009}`` ranges (zero padding kept), ``{a,b}`` lists, then globs.

    Example:
        >>> expand_pattern("s/{00..02}.tar")
        ['s/00.tar', 's/01.tar', 's/02.tar']
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is not None:
        body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
        span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if span:
            a, b = span.groups()
            width = len(a) if a.startswith("0") or len(a) == len(b) else 0
            step = 1 if int(b) >= int(a) else -1
            parts = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
        else:
            parts = body.split(",")
        return [p for part in parts for p in expand_pattern(head + part + tail)]
    if glob.has_magic(pattern):
        return sorted(glob.glob(pattern))
    return [pattern]


def is_tar_pattern(data: Any) -> bool:
    """Whether ``data`` names tar shards (a path or pattern ending in .tar, .tar.gz or .tgz)."""
    return isinstance(data, (str, os.PathLike)) and str(data).lower().endswith(_TAR_SUFFIXES)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's key and extension: ``a/b/0001.seg.png`` -> ``("a/b/0001", "seg.png")``."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


class TarShards(StreamSource):
    """Tar shards of ``KEY.<image ext>`` (or ``KEY.txt``) and ``KEY.cls`` samples; ``classes.txt`` beside the
    first shard, when there, declares the class names (one a line; a ``.cls`` integer indexes them)."""

    def __init__(self, pattern: str | os.PathLike):
        pattern = os.fspath(pattern)
        self.shards = expand_pattern(pattern)
        missing = [s for s in self.shards if not os.path.isfile(s)]
        if not self.shards or missing:
            raise DataError(f"Tar shard(s) not found: {', '.join(missing) or pattern}"
                            + (f" (from {pattern})" if missing and missing != [pattern] else "") + ".")
        self.num_shards = len(self.shards)
        self.origin = printable(pattern)
        self.name = Path(self.shards[0]).parent.name or Path(self.shards[0]).stem
        classes = Path(self.shards[0]).parent / "classes.txt"
        if classes.is_file():
            names = [n.strip() for n in classes.read_text(encoding="utf-8").splitlines() if n.strip()]
            if len(set(names)) != len(names):
                raise DataError(f"{classes}: a class name is listed twice.")
            self.declared_labels = names
        self.modality = ""  # set by the label pass from the first sample's item member

    def _samples(self, shard: int, read_items: bool) -> Iterator[tuple[str, dict[str, Any], str]]:
        """``(key, {ext: bytes or member name}, shard)`` per sample; the item's bytes only with ``read_items``."""
        path = self.shards[shard]
        key, members, last = None, {}, None
        try:
            with tarfile.open(path, "r|*") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    k, ext = _split_key(info.name)
                    if k != key:
                        if key is not None:
                            yield key, members, path
                        key, members = k, {}
                    if ext in members:
                        raise DataError(f"{path}: member {info.name}: sample {k!r} has two .{ext} members.")
                    wanted = ext == LABEL_EXT or (read_items and (ext in _IMAGE_EXTS or ext == "txt"))
                    members[ext] = tar.extractfile(info).read() if wanted else info.name
                    last = info.name
                    tar.members = []  # a stream keeps no list of what it has read
                if path.lower().endswith(".tar") and os.path.getsize(path) - tar.offset < 2 * tarfile.BLOCKSIZE:
                    # tarfile ends a stream quietly at a cut header; a whole archive ends in two zero blocks
                    raise tarfile.ReadError("it ends without the end-of-archive blocks (truncated?)")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            after = f" after member {last}" if last else ""
            raise DataError(f"{path}: not a readable tar archive{after}: {exc}") from None
        if key is not None:
            yield key, members, path

    def _item_and_label(self, key: str, members: dict, path: str) -> tuple[str, str]:
        item_ext = next((e for e in members if e in _IMAGE_EXTS), "txt" if "txt" in members else None)
        found = ", ".join(f"{key}.{e}" for e in members)
        if item_ext is None:
            raise DataError(f"{path}: sample {key!r} has no image or text member (members: {found}); each sample "
                            f"needs KEY.jpg/.png/... or KEY.txt beside KEY.{LABEL_EXT}.")
        if LABEL_EXT not in members:
            raise DataError(f"{path}: sample {key!r} has no label member {key}.{LABEL_EXT} (members: {found}).")
        modality = "text" if item_ext == "txt" else "image"
        if self.modality and modality != self.modality:
            raise DataError(f"{path}: member {key}.{item_ext} is {modality}, but earlier samples are "
                            f"{self.modality}; a stream holds one modality.")
        self.modality = modality
        return item_ext, _label_text(members[LABEL_EXT], f"{path}: member {key}.{LABEL_EXT}")

    def labels(self) -> Iterator[tuple[int, Any, str]]:
        for shard in range(self.num_shards):
            for key, members, path in self._samples(shard, read_items=False):
                _, label = self._item_and_label(key, members, path)
                yield shard, label, f"{path}: member {key}.{LABEL_EXT}"

    def records(self, shard: int) -> Iterator[tuple[Any, Any, str]]:
        for key, members, path in self._samples(shard, read_items=True):
            ext, label = self._item_and_label(key, members, path)
            where = f"{path}: member {key}.{ext}"
            item = members[ext]
            if ext == "txt":
                item = _label_text(item, where, what="text")
            yield item, label, where

    def fingerprint_parts(self) -> list[str]:
        return ["tar", *path_parts(self.shards), str(self.declared_labels)]


def _label_text(data: bytes, where: str, what: str = "label") -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None


# --------------------------------------------------------------------------- Hugging Face datasets

class HFStream(StreamSource):
    """A ``datasets.IterableDataset``: one shard per file it reads. Image columns are read undecoded
    (``Image(decode=False)``) and decoded in the batch, so a bad image is named by its row and file."""

    def __init__(self, ds: Any, *, text_column: str | None, image_column: str | None, label_column: str | None,
                 origin: str | None = None, files: list[str] | None = None):
        from transferkit.data.adapters_hf import _hf_input_column, _hf_label_kind

        if label_column is None:
            raise ConfigError("Streaming fit trains on labels: give the label column (label_column=...).")
        features = ds.features
        if features is None:  # JSON/CSV without a schema: one row tells the columns
            ds = ds._resolve_features()
            features = ds.features
        column, self.modality = _hf_input_column(ds, text_column, image_column)
        for col in (column, label_column):
            if col not in features:
                raise DataError(f"{origin or 'Hugging Face dataset'}: no column {col!r}. "
                                f"Columns: {', '.join(features)}.")
        if type(features[column]).__name__ == "Image":
            from datasets import Image

            ds = ds.cast_column(column, Image(decode=False))
        kind, names = _hf_label_kind(features[label_column])
        if kind is not None and not get_task(kind).single_label:
            raise DataError(f"{origin or 'Hugging Face dataset'}: column {label_column!r} holds {kind} targets; "
                            f"streaming fit trains classification.")
        self.declared_labels = names
        self.labels_are_indices = names is not None  # a ClassLabel's values are indices into its names
        self.ds, self.column, self.label_column = ds, column, label_column
        self.num_shards = max(1, int(getattr(ds, "num_shards", 1) or 1))
        info_name = getattr(getattr(ds, "info", None), "dataset_name", None)
        self.name = info_name or (Path(files[0]).stem if files else "hf-stream")
        self.origin = origin or f"Hugging Face dataset '{self.name}'"
        self.files = files or []

    def _shard(self, shard: int):
        return self.ds.shard(self.num_shards, shard) if self.num_shards > 1 else self.ds

    def labels(self) -> Iterator[tuple[int, Any, str]]:
        row = 0
        for shard in range(self.num_shards):
            for example in self._shard(shard).select_columns([self.label_column]):
                yield shard, example[self.label_column], f"{self.origin}, row {row}"
                row += 1

    def records(self, shard: int) -> Iterator[tuple[Any, Any, str]]:
        for row, example in enumerate(self._shard(shard)):
            item = example[self.column]
            where = f"{self.origin}, shard {shard}, row {row}"
            if isinstance(item, dict):  # an undecoded image: its bytes, else its file
                where += f" ({item['path']})" if item.get("path") else ""
                item = item.get("bytes") or item.get("path")
                if item is None:
                    raise DataError(f"{where}: the image has neither bytes nor a path.")
            elif self.modality == "text" and not isinstance(item, str):
                raise DataError(f"{where}: text column {self.column!r} holds {type(item).__name__}, not str.")
            yield item, example[self.label_column], where

    def fingerprint_parts(self) -> list[str]:
        return ["hf", self.origin, self.column, self.label_column, str(self.ds.features), *path_parts(self.files)]


def _data_files(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in _BUILDERS)
        if not files:
            raise DataError(f"{path} holds no Parquet, JSON(L) or CSV/TSV files to stream.")
        return files
    return [str(path)]


def _open_hf_files(path: Path, columns: dict) -> HFStream:
    import datasets

    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():  # Dataset.save_to_disk
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        shards = max(1, len(ds.cache_files))
        return HFStream(ds.to_iterable_dataset(num_shards=shards), origin=str(path), **columns)
    files = _data_files(path)
    kinds = {_BUILDERS[Path(f).suffix.lower()] for f in files}
    if len(kinds) != 1:
        raise DataError(f"{path}: files of several formats ({', '.join(sorted(kinds))}); stream one format.")
    builder = kinds.pop()
    options = {"delimiter": "\t"} if builder == "csv" and files[0].lower().endswith(".tsv") else {}
    ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
    return HFStream(ds, origin=str(path), files=files, **columns)


# --------------------------------------------------------------------------- image folders

class FolderStream(StreamSource):
    """An image folder (one sub-folder per class) read as a stream: the listing is its label pass (the
    class folders declare the classes); one shard, the files in listing order, each decoded in its batch."""

    modality = "image"
    labels_are_indices = True  # a class folder's index (a folder named "2" need not be class 2)

    def __init__(self, path: str | os.PathLike):
        from transferkit.data.class_folders import read_class_folders

        root, self.items, self.targets, names = read_class_folders(path, IMAGE_EXTENSIONS, kind="Image",
                                                                   contents="images", example="cat/1.jpg")
        self.declared_labels = names
        self.name, self.origin = root.name, str(root.resolve())

    def labels(self) -> Iterator[tuple[int, Any, str]]:
        for path, k in zip(self.items, self.targets):
            yield 0, int(k), path

    def records(self, shard: int) -> Iterator[tuple[Any, Any, str]]:
        for path, k in zip(self.items, self.targets):
            yield path, int(k), path

    def fingerprint_parts(self) -> list[str]:
        return ["folder", *path_parts(self.items)]


def is_iterable_dataset(data: Any) -> bool:
    """Whether ``data`` is a ``datasets.IterableDataset`` (without importing datasets)."""
    return type(data).__module__.startswith("datasets.") and type(data).__name__ == "IterableDataset"


def open_source(data: Any, *, text_column: str | None = None, image_column: str | None = None,
                label_column: str | None = "label") -> StreamSource:
    """The stream source of ``data`` (see :func:`~transferkit.data.streaming.open_stream`)."""
    columns = {"text_column": text_column, "image_column": image_column, "label_column": label_column}
    if is_iterable_dataset(data):
        return HFStream(data, **columns)
    if is_tar_pattern(data):
        return TarShards(data)
    if not isinstance(data, (str, os.PathLike)):
        raise DataError(f"Cannot stream a {type(data).__name__}. Stream tar shards (shards/{{000..009}}.tar), a "
                        f"datasets.IterableDataset, Parquet/JSONL/CSV files, a save_to_disk folder or an image folder.")
    path = Path(data)
    if not path.exists():
        raise DataError(f"Nothing to stream at {path}: no such file or folder.")
    if path.is_dir() and not _has_data_files(path):  # class folders, not data files or a save_to_disk folder
        return FolderStream(path)
    return _open_hf_files(path, columns)


def _has_data_files(path: Path) -> bool:
    return any(f.suffix.lower() in _BUILDERS for f in path.iterdir() if f.is_file())
