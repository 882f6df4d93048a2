"""Training data read as it goes: :class:`StreamData`, the streaming counterpart of :class:`TaskData`.

``fit`` trains on a stream without holding its items: each epoch reads the items from their source
(tar shards, a Hugging Face ``datasets`` stream, an image folder; :mod:`transferkit.data.stream_sources`)
a batch at a time, decodes them then, and forgets them after the step.

**The label set is discovered in one cheap pass.** Opening a stream reads its labels only (a tar shard's
``.cls`` members, a dataset's label column; no image is decoded): the pass counts the items (the
learning-rate schedule needs the steps of an epoch), counts each class (two are needed, as for in-memory
data; ``class_weight=balanced`` reads the counts) and checks every label, so a bad label is named before
training starts. It keeps each item's class number, in the source's order: :meth:`StreamData.targets` and
the targets of every batch are read from them by the item's position, so no label is read or checked again
(a source reads its items in the same order every time; a shard whose item count changed since is refused). Where the source declares its classes (a ``ClassLabel`` feature, ``classes.txt`` beside
tar shards, class folders), those names in that order index the targets and integer labels are indices
into them; otherwise the classes are the labels found, sorted as :func:`~transferkit.data.encode_labels`
sorts them.

**Order.** An epoch visits the shards in an order drawn from ``(seed, epoch)`` and passes the items
through a shuffle buffer of ``shuffle_buffer`` items (seeded the same way); ``shuffle_buffer=0`` with one
shard reads the items in file order, which makes a streamed fit repeat an in-memory one that visits the
items in that order. The buffer holds encoded items (bytes or paths), decoded only in the batch.

Example:
    >>> stream = open_stream("shards/{000..009}.tar")        # doctest: +SKIP
    >>> len(stream), stream.label_names[:3]                   # doctest: +SKIP
    (50000, ['airplane', 'automobile', 'bird'])
"""
from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.data.adapters_labels import _check_class_label, _class_index, _label_key, _sort_names
from transferkit.data.batches import drops_last_single
from transferkit.data.dataset import TaskOf
from transferkit.data.stream_sources import StreamSource, open_source
from transferkit.errors import DataError

__all__ = ["DEFAULT_SHUFFLE_BUFFER", "StreamData", "is_stream", "open_stream"]

#: Items the shuffle buffer holds by default (encoded: bytes or paths).
DEFAULT_SHUFFLE_BUFFER = 1024


def is_stream(data: Any) -> bool:
    """Whether ``data`` is a :class:`StreamData` (training data read as it goes)."""
    return isinstance(data, StreamData)


@dataclass
class StreamData(TaskOf):
    """Labelled training data for one classification task, read from its source a batch at a time.

    Built by :func:`open_stream`, which makes the label pass. It answers what :class:`TaskData` answers
    about the data (modality, task, label names, name, source, length, fingerprint) but holds no
    ``items``: :meth:`batches` reads them; :meth:`targets` gives the label pass's class indices.

    Attributes:
        reader: where the items come from (:class:`~transferkit.data.stream_sources.StreamSource`).
        label_names: the classes; targets index them.
        classes: the class index of every item in the source's order (from the label pass).
        shard_sizes: the items of each shard (from the label pass).
        shuffle_buffer: items the shuffle buffer holds (0: the source's order, shards still shuffled).
        label_counts: items per class (counted from ``classes``).
    """

    reader: StreamSource
    label_names: list[str]
    classes: np.ndarray = field(repr=False)
    shard_sizes: list[int] = field(repr=False)
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    task: str = "classification"
    label_counts: np.ndarray = field(init=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.label_counts = np.bincount(self.classes, minlength=len(self.label_names)).astype(np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self.shard_sizes, dtype=np.int64)])

    @property
    def modality(self) -> str:
        return self.reader.modality

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def source(self) -> str:
        return self.reader.origin

    @property
    def sensitive(self) -> None:
        """Streams carry no sensitive attribute (fairness strategies read it from in-memory data)."""
        return None

    def __len__(self) -> int:
        return int(self.label_counts.sum())

    def fingerprint(self) -> str:
        """A sha256 over the source (files by path, size and mtime), the classes and their counts."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"stream|{self.modality}|{self.task}|{self.label_names}|{self.label_counts.tolist()}".encode())
            for part in self.reader.fingerprint_parts():
                h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def records(self, seed: int = 0, epoch: int = 0) -> Iterator[tuple[Any, Any, str]]:
        """``(encoded item, class index, where)`` of every item, in the epoch's order (see the module docstring)."""
        rng = random.Random(f"{seed}:{epoch}")
        shards = list(range(self.reader.num_shards))
        if len(shards) > 1:
            rng.shuffle(shards)
        records = (r for s in shards for r in self._shard_records(s))
        if self.shuffle_buffer <= 1:
            yield from records
            return
        buffer: list = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            k = rng.randrange(len(buffer))
            yield buffer[k]
            buffer[k] = record
        rng.shuffle(buffer)
        yield from buffer

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0,
                skip: int = 0) -> Iterator[tuple[list, np.ndarray]]:
        """``(decoded items, int64 targets)`` per batch of the epoch, after the first ``skip`` batches.

        A last batch of one item is dropped when there are more items than ``batch_size``
        (:func:`~transferkit.data.batches.drops_last_single`), as the in-memory loop does. Skipped batches are
        read but not decoded.
        """
        chunks = _chunks(self.records(seed, epoch), batch_size, drop_single=drops_last_single(len(self), batch_size))
        for k, chunk in enumerate(chunks):
            if k >= skip:
                yield self._decode(chunk)

    def in_order(self, batch_size: int) -> Iterator[tuple[list, np.ndarray]]:
        """``(decoded items, int64 targets)`` of every item in the source's order (what feature extraction reads)."""
        return (self._decode(chunk) for chunk in _chunks(self._source_order(), batch_size))

    def targets(self) -> np.ndarray:
        """The class index of every item in the source's order (int64; kept from the label pass, nothing read)."""
        return self.classes.astype(np.int64)

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-len(self) // batch_size) - drops_last_single(len(self), batch_size)

    def head(self, n: int) -> list:
        """The first ``n`` items in the source's order, decoded (what a strategy measures features on)."""
        first = next(_chunks(self._source_order(), n), []) if n > 0 else []
        return self._decode(first)[0] if first else []

    def _source_order(self) -> Iterator[tuple[Any, int, str]]:
        return (r for s in range(self.reader.num_shards) for r in self._shard_records(s))

    def _shard_records(self, shard: int) -> Iterator[tuple[Any, int, str]]:
        """Shard ``shard``'s ``(encoded item, class index, where)``; the class is the label pass's for the item's
        position (its raw label is not read again)."""
        start, size, n = int(self._starts[shard]), self.shard_sizes[shard], 0
        for item, _, where in self.reader.records(shard):
            if n == size:
                raise DataError(f"{where}: shard {shard} of {self.reader.origin} has more items than the {size} it "
                                f"had when the stream was opened; the data changed since. Open the stream again.")
            yield item, int(self.classes[start + n]), where
            n += 1
        if n != size:
            raise DataError(f"Shard {shard} of {self.reader.origin} has {n} items, {size} when the stream was opened; "
                            f"the data changed since. Open the stream again.")

    def _decode(self, chunk: list) -> tuple[list, np.ndarray]:
        items = [self.reader.decode(item, where) for item, _, where in chunk]
        return items, np.fromiter((k for _, k, _ in chunk), dtype=np.int64, count=len(chunk))


def _chunks(records: Iterator, size: int, drop_single: bool = False) -> Iterator[list]:
    """``records`` in lists of ``size`` (the last one shorter), without a last list of one when ``drop_single``."""
    chunk: list = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk and not (drop_single and len(chunk) == 1):
        yield chunk


def open_stream(data: Any, *, text_column: str | None = None, image_column: str | None = None,
                label_column: str | None = "label", shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> StreamData:
    """Open ``data`` as a stream and make the label pass.

    Args:
        data: tar shards (a path, a glob, or a brace pattern such as ``shards/{000..009}.tar``; WebDataset's
            layout: ``KEY.jpg``/``KEY.png``/... or ``KEY.txt`` with ``KEY.cls``), a Hugging Face
            ``datasets.IterableDataset``, a folder written by ``Dataset.save_to_disk``, Parquet / JSONL /
            CSV files (or a folder of them) read with ``datasets``' ``streaming=True``, or an image folder.
        text_column, image_column, label_column: the columns of a ``datasets`` source.
        shuffle_buffer: items in the shuffle buffer (0: the source's order).

    Raises:
        DataError: no such files, a bad shard or label (named by shard and member, or row), a sample without
            its item or label, fewer than two classes.
    """
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
        raise DataError(f"The 'shuffle_buffer' parameter must be an int in [0, inf). Got {shuffle_buffer!r} instead.")
    reader = open_source(data, text_column=text_column, image_column=image_column, label_column=label_column)
    names, classes, shard_sizes = _label_pass(reader)
    stream = StreamData(reader, names, classes, shard_sizes, shuffle_buffer=shuffle_buffer)
    _check_two_classes(reader, names, stream.label_counts)
    return stream


def _label_pass(reader: StreamSource) -> tuple[list[str], np.ndarray, list[int]]:
    """``(class names, each item's class index in the source's order, items per shard)``, every label checked.

    Declared classes index the targets (an integer label is an index into them; a label that is not a class
    name, or any label where the source's labels are indices); otherwise the classes are
    the labels found, sorted, and each item's first-seen code is mapped to its sorted index at the end.
    """
    declared = reader.declared_labels
    # indices are never looked up as names: with classes "1", "2", index 1 is "2"
    lookup = {} if reader.labels_are_indices else {n: k for k, n in enumerate(declared or [])}
    seen: dict[str, int] = {}  # no declared classes: class name -> its code in order of first sight
    codes, shard_sizes = array("q"), [0] * reader.num_shards
    for shard, label, where in reader.labels():
        _check_class_label(label, where)
        if declared is not None:
            codes.append(_class_index(label, declared, lookup, True, where))
        else:
            codes.append(seen.setdefault(_label_key(label), len(seen)))
        shard_sizes[shard] += 1
    classes = np.frombuffer(codes, dtype=np.int64) if codes else np.zeros(0, dtype=np.int64)
    if declared is not None:
        names = list(declared)
    else:
        names = _sort_names(set(seen))
        sorted_index = {n: k for k, n in enumerate(names)}
        classes = np.array([sorted_index[n] for n in seen], dtype=np.int64)[classes]
    return names, classes.astype(np.min_scalar_type(max(len(names) - 1, 0))), shard_sizes


def _check_two_classes(reader: StreamSource, names: list[str], counts: np.ndarray) -> None:
    used = [(n, int(c)) for n, c in zip(names, counts) if c > 0]
    if len(used) >= 2:
        return
    if not used:
        raise DataError(f"{reader.origin}: no labelled items; classification needs at least 2 classes.")
    raise DataError(f"{reader.origin}: classification needs at least 2 classes; found only {used[0][0]!r} "
                    f"({used[0][1]} items).")

