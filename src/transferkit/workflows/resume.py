"""Crash and resume for ``fit``: the checkpoint folder beside the bundle, and what a resume must keep.

``fit(out="runs/x")`` trains with its checkpoints in ``runs/x.checkpoint/``
(:mod:`transferkit.training.checkpoint`), under the lock ``runs/x.checkpoint.lock``
so that two runs never write it at once, and removes the folder once the bundle
is written. After a crash or a kill, ``fit(..., resume=True)`` (``--resume``)
continues from its latest checkpoint: with the same settings on the same
hardware the result is the one of an uninterrupted run. A resume with other
settings is refused, naming them; only the epochs (except with the one-cycle
schedule, whose length is part of its state) and what does not change the
training (progress bar, tracker, checkpoint interval) may change.
"""
from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, TransferkitWarning
from transferkit.export.output_lock import output_lock
from transferkit.strategies import Strategy
from transferkit.training.checkpoint import Checkpointer, read_checkpoint, setting_differences
from transferkit.workflows.options import FitOptions
from transferkit.workflows.runs import is_main_process, wait_for_everyone

__all__ = ["checkpoint_path", "checkpointing", "run_settings"]

CHECKPOINT_SUFFIX = ".checkpoint"
#: TrainConfig fields a resume may change: they change how long or how visibly it trains, not what
_FREE_TRAIN_FIELDS = ("epochs", "progress", "track", "track_dir", "checkpoint_every")

_README = """\
This folder is the checkpoint of an unfinished `transferkit fit` run writing {out}. It is not a bundle.

The run saves it at each epoch end (and every --checkpoint-every optimizer steps) so that it can go on
after a crash or a kill. To continue, run the same command again with --resume (Python:
fit(..., resume=True)): it goes on from the latest checkpoint and ends as the uninterrupted run would.
A resume with other settings (data, strategy, options, training settings other than --epochs) is refused.
The folder is removed once the bundle is written. To start over instead, rerun with --overwrite (or
delete this folder).

LATEST names the latest complete checkpoint. In it: Accelerate's saved state (model, optimizer,
scheduler, random number generators) and trainer_state.json / trainer_state.safetensors (epoch, step,
data order, history, early stopping, the settings a resume must match).
"""


def checkpoint_path(out: str | Path) -> Path:
    """The checkpoint folder of the bundle folder ``out``: ``OUT.checkpoint`` beside it."""
    out = Path(out)
    return out.with_name(out.name + CHECKPOINT_SUFFIX)


def run_settings(backbone, strategy: Strategy, opts: FitOptions, train: TaskData, val: TaskData | None,
                 test: TaskData | None, backbone_options: dict, domain: dict | None, processes: int) -> dict:
    """What a resumed ``fit`` must share with the interrupted one (JSON values; data by fingerprint)."""
    config = opts.train.to_dict()
    free = [k for k in _FREE_TRAIN_FIELDS if not (k == "epochs" and config["schedule"] == "onecycle")]
    pre = opts.pretraining
    return {
        "backbone": backbone if isinstance(backbone, str) else getattr(backbone, "spec", None),
        "backbone_options": backbone_options,
        "strategy": {"name": strategy.name, "config": strategy.config.to_dict()},
        "data": {name: split.fingerprint() if split is not None else None
                 for name, split in (("train", train), ("val", val), ("test", test))},
        "data_options": {k: getattr(opts.data, k)
                         for k in ("labels_per_class", "val_fraction", "max_test", "text_column", "label_column")},
        "train": {k: v for k, v in config.items() if k not in free},
        "lr_auto": opts.lr_auto,
        "sensitive_column": opts.fairness.sensitive_column,
        "domain": domain,
        "pretrain": {f.name: getattr(pre, f.name) for f in dataclasses.fields(pre)} if pre.active else None,
        "processes": processes,
    }


@contextmanager
def checkpointing(out: str | Path | None, settings: dict, strategy: Strategy, *, resume: bool,
                  overwrite: bool) -> Iterator[Checkpointer | None]:
    """The :class:`Checkpointer` of a ``fit`` writing ``out``, or None where there is nothing to checkpoint.

    The main process holds ``OUT.checkpoint.lock`` for the block. The folder is
    removed when the block finishes (the bundle is written by then) and kept when
    it raises, for a resume.

    Raises:
        ConfigError: ``resume`` without ``out``; a checkpoint there without ``resume`` or ``overwrite``;
            a resume whose settings differ from the checkpoint's (the message names them).
        BundleError: another live run holds the folder's lock.
    """
    if out is None:
        if resume:
            raise ConfigError("resume=True (--resume) needs out: the checkpoints of a run are kept beside its bundle.")
        yield None
        return
    if not strategy.resumable:
        if resume:
            warnings.warn(f"Strategy '{strategy.name}' cannot resume an interrupted run; training from the start.",
                          TransferkitWarning, stacklevel=4)
        yield None
        return
    folder = checkpoint_path(out)
    with output_lock(folder) if is_main_process() else nullcontext():
        _check_checkpoint(folder, settings, resume=resume, overwrite=overwrite)
        yield Checkpointer(folder, settings, readme=_README.format(out=out))
        if is_main_process():
            shutil.rmtree(folder, ignore_errors=True)


def _check_checkpoint(folder: Path, settings: dict, *, resume: bool, overwrite: bool) -> None:
    """Go on from the checkpoint in ``folder`` if asked and it matches; start over if asked; refuse the rest."""
    meta = read_checkpoint(folder)
    if meta is None:
        if resume:
            warnings.warn(f"No checkpoint at {folder} to resume from; training from the start.", TransferkitWarning,
                          stacklevel=5)
    elif resume:
        differences = setting_differences(meta["settings"], settings)
        if differences:
            raise ConfigError(f"Cannot resume from {folder}: the settings differ from the interrupted run's: "
                              f"{'; '.join(differences)}. Rerun with the same settings, or without resume and with "
                              f"overwrite=True (--overwrite) to start over.")
        return
    elif not overwrite:
        loop = meta["loop"]
        raise ConfigError(f"{folder} holds the checkpoint of an interrupted run (after {loop['epoch']} epochs and "
                          f"{loop['global_step']} steps). Pass resume=True (--resume) to continue it, or "
                          f"overwrite=True (--overwrite) to start over.")
    wait_for_everyone()  # every process has read the folder before it is removed
    if is_main_process() and folder.exists():
        shutil.rmtree(folder)
    wait_for_everyone()
