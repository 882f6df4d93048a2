"""Checkpoints of the training loop, so that a killed run resumes with the same result.

A checkpoint folder holds one complete checkpoint at a time::

    CHECKPOINT/
        README.txt          what the folder is (written by the caller, e.g. ``fit``)
        LATEST              the name of the complete checkpoint below
        epoch-0002-batch-000013/
            model.safetensors, optimizer.bin, scheduler.bin, [scaler.pt,] random_states_<rank>.pkl
            trainer_state.json          where the loop is: epoch, batch, step, history, early stopping,
                                        the running sums of the epoch, the caller's settings
            trainer_state.safetensors   the shuffle generator's state at the epoch's start, the best weights

The first files are Accelerate's :meth:`~accelerate.Accelerator.save_state`
(model, optimizer, scheduler, grad scaler, the Python / NumPy / torch RNG states
of every process); Accelerate reads its ``.bin`` / ``.pkl`` files back with
``torch.load(weights_only=True)`` and an allow-list of NumPy types. What the loop
adds is JSON and safetensors only.

A checkpoint is written into ``NAME.partial``, renamed to ``NAME`` and only then
named in ``LATEST`` (written beside and renamed over it); the previous one is
removed last. A run killed at any moment leaves ``LATEST`` naming a complete
checkpoint, or no ``LATEST`` at all.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transferkit.errors import ConfigError

__all__ = ["Checkpointer", "LoopState", "read_checkpoint", "setting_differences"]

LATEST, README = "LATEST", "README.txt"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
_PARTIAL = ".partial"
_BEST = "best."  # prefix of the best weights in trainer_state.safetensors
_SHUFFLE = "shuffle_generator"


@dataclass
class LoopState:
    """Where the loop is, and what it keeps besides the model, optimizer, scheduler and RNG states.

    Attributes:
        epoch: epochs finished.
        batch: batches of the current epoch done (0 at an epoch's start).
        global_step: optimizer steps done.
        history: one row per finished epoch.
        totals: the running sums of the current epoch's step outputs (its history row is their mean).
        best: the best validation score so far, signed so that higher is better (None: none yet).
        stale: epochs since it improved (early stopping).
        best_state: the weights with the best validation score.
        shuffle: the shuffle generator's state at the start of the current epoch (its data order).
        batches_per_epoch: the length of an epoch (a resume with another is refused).
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)
    best: float | None = None
    stale: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    shuffle: torch.Tensor | None = None
    batches_per_epoch: int = 0

    @property
    def best_score(self) -> float:
        return -math.inf if self.best is None else self.best

    def position(self) -> str:
        """The checkpoint name of this position, e.g. ``epoch-0002-batch-000013``."""
        return f"epoch-{self.epoch:04d}-batch-{self.batch:06d}"


class Checkpointer:
    """Saves the loop's state into ``folder`` and resumes from the latest complete checkpoint there.

    Every process calls :meth:`save` and :meth:`load` (each saves and restores its own RNG states);
    only the main process writes the folder.

    Args:
        folder: the checkpoint folder (created at the first save).
        settings: what must not change between the run and its resume (JSON values); stored with
            every checkpoint, read back with :func:`read_checkpoint`.
        readme: the text of ``README.txt``, written at the first save.

    Example:
        >>> ckpt = Checkpointer("runs/out.checkpoint", settings={"data": fingerprint})  # doctest: +SKIP
        >>> Trainer(TrainConfig(checkpoint_every=50), checkpoint=ckpt).fit(...)         # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, settings: dict | None = None, readme: str | None = None):
        self.folder = Path(folder)
        self.settings = settings or {}
        self.readme = readme

    def latest(self) -> Path | None:
        """The latest complete checkpoint, or None when there is none.

        Raises:
            ConfigError: ``LATEST`` names a checkpoint that is not there (the folder was changed by hand).
        """
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text(encoding="utf-8").strip()
        if not (path / STATE_JSON).is_file():
            raise ConfigError(f"The checkpoint folder {self.folder} is damaged: {pointer} names {path.name}, which "
                              f"is missing or incomplete. Delete {self.folder} to start over.")
        return path

    def save(self, accelerator, state: LoopState) -> Path:
        """Write ``state`` and Accelerate's state as the folder's latest checkpoint (all processes call this)."""
        from safetensors.torch import save_file

        name = state.position()
        tmp, final = self.folder / f"{name}{_PARTIAL}", self.folder / name
        main = accelerator.is_main_process
        if main:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.readme is not None and not (self.folder / README).exists():
                (self.folder / README).write_text(self.readme, encoding="utf-8")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        with _quiet_tied_weights():  # Accelerate logs every save of a model with tied weights (a language model)
            accelerator.save_state(str(tmp))  # the model and optimizer from the main process, RNG states from each
        accelerator.wait_for_everyone()
        if main:
            save_file(_tensors(state), str(tmp / STATE_TENSORS), metadata={"format": "transferkit-trainer-state"})
            (tmp / STATE_JSON).write_text(json.dumps(self._meta(state), indent=1, default=_plain), encoding="utf-8")
            if final.exists():  # left by a run killed before it named this checkpoint in LATEST
                shutil.rmtree(final)
            os.rename(tmp, final)
            pointer = self.folder / f"{LATEST}{_PARTIAL}"
            pointer.write_text(name, encoding="utf-8")
            os.replace(pointer, self.folder / LATEST)
            for old in self.folder.iterdir():
                if old.is_dir() and old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, accelerator, batches_per_epoch: int) -> LoopState | None:
        """Restore Accelerate's state from the latest checkpoint and return the loop's, or None without one.

        Raises:
            ConfigError: the checkpoint's epochs have another number of batches (other data or processes).
        """
        from safetensors.torch import load_file

        path = self.latest()
        if path is None:
            return None
        meta = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        loop = meta["loop"]
        if loop["batches_per_epoch"] != batches_per_epoch:
            raise ConfigError(f"Cannot resume from {path}: its epochs have {loop['batches_per_epoch']} batches, "
                              f"this run's {batches_per_epoch} (other data, batch size or number of processes).")
        accelerator.load_state(str(path))
        tensors = load_file(str(path / STATE_TENSORS))
        best_state = {k[len(_BEST):]: v for k, v in tensors.items() if k.startswith(_BEST)}
        return LoopState(**{**loop, "best_state": best_state or None, "shuffle": tensors.get(_SHUFFLE)})

    def _meta(self, state: LoopState) -> dict:
        loop = {k: v for k, v in vars(state).items() if k not in ("best_state", "shuffle")}
        return {"format": "transferkit-trainer-state", "format_version": 1, "loop": loop, "settings": self.settings}


def read_checkpoint(folder: str | Path) -> dict | None:
    """The metadata of the latest checkpoint in ``folder`` (``settings``, ``loop``), or None when it holds none."""
    path = Checkpointer(folder).latest()
    if path is None:
        return None
    return json.loads((path / STATE_JSON).read_text(encoding="utf-8"))


def setting_differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two settings dicts, compared as JSON.

    Example:
        >>> setting_differences({"train": {"lr": 0.1, "seed": 0}}, {"train": {"lr": 0.2, "seed": 0}})
        ['train.lr (0.1 then, 0.2 now)']
    """
    stored, current = json.loads(json.dumps(stored, default=_plain)), json.loads(json.dumps(current, default=_plain))
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({_short(a)} then, {_short(b)} now)")
    return out


def _tensors(state: LoopState) -> dict[str, torch.Tensor]:
    out = {_SHUFFLE: state.shuffle} if state.shuffle is not None else {}
    for k, v in (state.best_state or {}).items():
        out[_BEST + k] = v.detach().cpu().contiguous()
    return out


def _plain(value):
    """JSON for what ``json`` does not know: NumPy scalars and arrays, data (by fingerprint), paths and the rest."""
    if hasattr(value, "fingerprint"):
        return value.fingerprint()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _TiedWeightsNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tied_weights():
    """Drop Accelerate's "Removed shared tensor ... while saving" note: tied weights are expected and reload tied."""
    log = logging.getLogger("accelerate.utils.other")
    note = _TiedWeightsNote()
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)
