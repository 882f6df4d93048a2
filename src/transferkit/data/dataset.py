"""The in-memory data contract shared by every layer: :class:`TaskData`."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from transferkit.errors import DataError
from transferkit.tasks import TASKS, Task, get_task

Modality = Literal["image", "text", "tabular", "audio"]
MODALITIES = ("image", "text", "tabular", "audio")


def printable(text: str) -> str:
    """``text`` with the lone surrogates of undecodable file-name bytes (PEP 383) written as ``\\xNN``; non-str as is.

    Example:
        >>> printable("caf\\udce9.csv")
        'caf\\\\xe9.csv'
    """
    if not isinstance(text, str):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file-name byte makes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class TaskOf:
    """What a labelled data set (in memory, :class:`TaskData`, or streamed) answers from its ``task`` and
    ``label_names``."""

    @property
    def task_spec(self) -> Task:
        """The registered :class:`~transferkit.tasks.Task` named by ``task``."""
        return get_task(self.task)

    @property
    def num_outputs(self) -> int:
        """Output width of a head for this task: classes, labels, or 1 for regression."""
        return self.task_spec.num_outputs(self.label_names)


@dataclass
class TaskData(TaskOf):
    """A labelled (or unlabelled) data set for one task.

    Attributes:
        items: the raw inputs. Images: a list of file paths, or a uint8 array
            ``[N, H, W]`` / ``[N, H, W, C]``. Text: a list of ``str``.
            Tabular: a float32 array ``[N, F]``. Audio: a list of file paths (or 1-D
            float arrays at the backbone's sample rate).
        targets: ``None`` when unlabelled. Classification: int64 ``[N]``
            indices into ``label_names``. Multi-label: float32 ``[N, C]`` of
            0/1. Regression: float32 ``[N]``. Detection: an object array of
            :func:`~transferkit.tasks.detection.box_target` dicts (boxes, labels,
            image size); segmentation: an object array of ``[H, W]`` class masks.
        modality: ``"image"``, ``"text"``, ``"tabular"`` or ``"audio"``.
        task: the name of a registered task (:data:`transferkit.tasks.TASKS`):
            ``"classification"``, ``"multilabel"``, ``"regression"``, ...
        label_names: class names (classification and multi-label).
        name: a short display name (``fashion-mnist``, a file name, ...).
        source: where the data came from (provenance), shown in reports.
        feature_names: tabular column names.
        sensitive: optional group of each item for fairness evaluation (a
            sensitive attribute such as sex or island; strings or ints ``[N]``).
            Not an input of the model.
        sensitive_name: the attribute's name (the column it came from).
    """

    items: Sequence | np.ndarray
    targets: np.ndarray | None
    modality: Modality
    task: str = "classification"
    label_names: list[str] | None = None
    name: str = "data"
    source: str = ""
    feature_names: list[str] | None = None
    sensitive: np.ndarray | None = None
    sensitive_name: str | None = None
    _fingerprint: str | None = field(default=None, repr=False, compare=False)
    #: (root data, indices into it) when this is a subset: lets the feature cache
    #: compute a small pool once and index it for every draw.
    origin: tuple["TaskData", np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # display strings reach reports and JSON: a file name's non-UTF-8 bytes are shown as \xNN (items keep them)
        self.name, self.source = printable(self.name), printable(self.source)
        if self.label_names is not None:
            self.label_names = [printable(n) for n in self.label_names]
        if self.modality not in MODALITIES:
            raise DataError(f"Unknown modality '{self.modality}'. Available: {', '.join(MODALITIES)}.")
        if self.task not in TASKS:
            raise DataError(f"Unknown task '{self.task}'. Available: {', '.join(TASKS.names())}.")
        if self.targets is not None and len(self.targets) != len(self.items):
            raise DataError(f"{self.name}: {len(self.items)} items but {len(self.targets)} targets.")
        if self.targets is not None:
            self.targets = self.task_spec.check_targets(self.targets, self.label_names, self.name)
        if self.sensitive is not None:
            self.sensitive = np.asarray(self.sensitive)
            if len(self.sensitive) != len(self.items):
                raise DataError(f"{self.name}: {len(self.items)} items but {len(self.sensitive)} values of the "
                                f"sensitive attribute '{self.sensitive_name or 'sensitive'}'.")

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "TaskData":
        """A new TaskData holding ``indices`` (order kept)."""
        idx = np.asarray(indices, dtype=np.int64)
        items = self.items[idx] if isinstance(self.items, np.ndarray) else [self.items[i] for i in idx]
        targets = None if self.targets is None else self.targets[idx]
        sensitive = None if self.sensitive is None else self.sensitive[idx]
        root, base = self.origin if self.origin is not None else (self, np.arange(len(self)))
        return replace(self, items=items, targets=targets, sensitive=sensitive, name=name or self.name, _fingerprint=None,
                       origin=(root, base[idx]))

    def fingerprint(self) -> str:
        """A sha256 over the items and targets (paths hash by path, size and mtime)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"{self.modality}|{self.task}|{self.label_names}|{len(self)}".encode())
            if isinstance(self.items, np.ndarray):
                h.update(str(self.items.shape).encode() + str(self.items.dtype).encode())
                h.update(np.ascontiguousarray(self.items).tobytes())
            else:
                import os

                for it in self.items:
                    if self.modality in ("image", "audio") and isinstance(it, (str, os.PathLike)):
                        try:
                            st = os.stat(it)
                            # a file name with bytes that are not UTF-8 holds lone surrogates (PEP 383)
                            h.update(f"{it}|{st.st_size}|{st.st_mtime_ns}".encode("utf-8", "surrogatepass"))
                        except OSError:
                            h.update(str(it).encode("utf-8", "surrogatepass"))
                    elif isinstance(it, np.ndarray):
                        h.update(it.tobytes())
                    else:
                        h.update(str(it).encode("utf-8", "surrogatepass") + b"\x00")
            if self.targets is not None:
                h.update(self.task_spec.target_bytes(self.targets))
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
