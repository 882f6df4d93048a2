"""One generic loop on Hugging Face Accelerate; the differences live in the strategy.

The same code runs on one CPU, one GPU, or several processes
(``accelerate launch`` / ``torchrun``): Accelerate shards the training batches
and averages gradients. Validation runs on the full validation set in every
process, so early-stopping decisions agree without any gathering.

Training data is either indexed (a :class:`TaskData`: Accelerate's sharded,
shuffled ``DataLoader``) or a stream (a :class:`~transferkit.data.streaming.StreamData`:
the strategy's :class:`~transferkit.strategies.base.StreamDataset` reads each
epoch's batches in the stream's seeded order, in one process). The progress
bar shows epochs and the items trained per second.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from torch import nn

from transferkit.constraints import NONE, Interval, Options, validate_declared
from transferkit.data.batches import drops_last_single, to_device
from transferkit.data.dataset import TaskData
from transferkit.data.streaming import StreamData
from transferkit.errors import ConfigError
from transferkit.evaluation.metrics import higher_is_better
from transferkit.tasks import compute_metrics, get_task, primary_metric
from transferkit.strategies.base import (ItemDataset, StepContext, Strategy, StreamDataset, TransferModel,
                                         predict_outputs)
from transferkit.training.checkpoint import Checkpointer, LoopState

SCHEDULES = ("cosine", "onecycle", "constant")
PRECISIONS = ("no", "bf16", "fp16")
TRACKERS = ("tensorboard", "mlflow")
_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


@dataclass
class TrainConfig:
    """Settings of the loop. ``None`` means "the strategy's default"."""

    epochs: int | None = field(default=None, metadata={"help": "passes over the training data"})
    batch_size: int | None = field(default=None, metadata={
        "help": "examples per optimizer step (per process); default: the task's (32; 8 for detection and "
                "segmentation)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate of pre-trained weights"})
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of new layers (head)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decay of matrices/kernels (not biases, norms)"})
    schedule: str = field(default="cosine", metadata={"help": f"one of {', '.join(SCHEDULES)}"})
    warmup: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    mixed_precision: str = field(default="no", metadata={"help": f"one of {', '.join(PRECISIONS)}"})
    grad_accum: int = field(default=1, metadata={"help": "batches per optimizer step"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping; None for none"})
    patience: int | None = field(default=None, metadata={"help": "early stopping after this many epochs without gain"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    cpu: bool = field(default=False, metadata={"help": "force the CPU even when a GPU is there"})
    track: str | None = field(default=None, metadata={"help": f"experiment tracker: {', '.join(TRACKERS)} or None"})
    track_dir: str | None = field(default=None, metadata={"help": "tracker output folder (default: runs/track)"})
    checkpoint_every: int | None = field(default=None, metadata={
        "help": "with a checkpoint folder: also save a checkpoint every this many optimizer steps (default: at "
                "each epoch end only)"})

    _parameter_constraints: ClassVar[dict] = {
        "epochs": [Interval("int", 1, None), NONE],
        "batch_size": [Interval("int", 1, None), NONE],
        "lr": [Interval("number", 0, 10, closed="right"), NONE],
        "head_lr": [Interval("number", 0, 10, closed="right"), NONE],
        "weight_decay": [Interval("number", 0, None)],
        "schedule": [Options(*SCHEDULES)],
        "warmup": [Interval("number", 0, 0.9)],
        "mixed_precision": [Options(*PRECISIONS)],
        "grad_accum": [Interval("int", 1, None)],
        "patience": [Interval("int", 1, None), NONE],
        "track": [Options(*TRACKERS), NONE],
        "checkpoint_every": [Interval("int", 1, None), NONE],
    }

    def __post_init__(self) -> None:
        validate_declared(self)
        if self.track_dir is not None and not isinstance(self.track_dir, (str, os.PathLike)):
            raise ConfigError(f"The 'track_dir' parameter of TrainConfig must be a path or None. "
                              f"Got {self.track_dir!r} instead.")

    def to_dict(self) -> dict:
        """The settings as a plain dict (what a bundle's manifest records under ``train``)."""
        return asdict(self)

    def batch_for(self, data) -> int:
        """The batch size to train on ``data`` with: the user's, else its task's ``train_batch_size``.

        Data of several tasks (:class:`~transferkit.data.multitask.MultiTaskData`) takes the smallest of theirs.
        """
        if self.batch_size is not None:
            return self.batch_size
        parts = data.tasks.values() if hasattr(data, "tasks") else [data]
        return min(get_task(d.task).train_batch_size for d in parts)


def _decay_split(groups: list[dict], weight_decay: float) -> list[dict]:
    """Split each group: matrices and kernels (dim >= 2) decay; biases and norm scales don't."""
    out = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        for decay, ps in ((weight_decay, [p for p in params if p.dim() >= 2]), (0.0, [p for p in params if p.dim() < 2])):
            if ps:
                out.append({**g, "params": ps, "weight_decay": decay})
    return out


def _lr_lambda(schedule: str, total: int, warmup: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return fn


def _sync_buffers(model: nn.Module, acc) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics drift per process with its own batches)."""
    if acc.num_processes > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def _flat_params(values: dict, prefix: str = "") -> dict:
    """Flatten nested dicts to ``a.b`` keys with tracker-safe scalar values (others become strings)."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)  # None, tuples, paths
    return out


def _require_tracker(track: str) -> None:
    import importlib.util

    if importlib.util.find_spec(_TRACKER_PACKAGES[track]) is None:
        raise ConfigError(f"track={track!r} needs the {_TRACKER_PACKAGES[track]!r} package: "
                          f"pip install 'transferkit[track]'.")


def distributed_state():
    """Accelerate's process state (one process, or a torchrun / accelerate-launch group; gloo on CPU)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class Trainer:
    """Runs a strategy's training on Accelerate.

    Args:
        config: the loop's settings.
        accelerator: an Accelerator to run on (default: one built from ``config``).
        checkpoint: save checkpoints there (at each epoch end, and every ``config.checkpoint_every``
            optimizer steps) and resume from its latest one (:mod:`transferkit.training.checkpoint`).

    Example:
        >>> trainer = Trainer(TrainConfig(epochs=3))               # doctest: +SKIP
        >>> model, history = strategy.fit(backbone, train, val, trainer)  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig | None = None, accelerator=None, checkpoint: Checkpointer | None = None):
        self.config = config or TrainConfig()
        self._accelerator = accelerator
        self.checkpoint = checkpoint
        self._step = 0

    @property
    def track_dir(self) -> str:
        return str(self.config.track_dir or os.path.join("runs", "track"))

    @property
    def accelerator(self):
        if self._accelerator is None:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs

            # Unfreezing schedules change which parameters get gradients mid-run.
            ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
            # Without a GPU, `cpu=True` is what lets Accelerate join a torchrun/launch group over gloo.
            cpu = self.config.cpu or not torch.cuda.is_available()
            tracking = {}
            if self.config.track is not None:
                _require_tracker(self.config.track)
                tracking = {"log_with": self.config.track, "project_dir": self.track_dir}
            self._accelerator = Accelerator(mixed_precision=self.config.mixed_precision, cpu=cpu,
                                            gradient_accumulation_steps=self.config.grad_accum,
                                            kwargs_handlers=[ddp], **tracking)
        return self._accelerator

    def resolved(self, strategy: Strategy) -> tuple[int, float, float]:
        c, d = self.config, strategy.defaults
        return (c.epochs or d.epochs, c.lr if c.lr is not None else d.lr,
                c.head_lr if c.head_lr is not None else d.head_lr)

    def epochs_for(self, epochs: int, steps_per_epoch: int, train: TaskData) -> int:
        """``epochs``, raised until the run takes the task's ``min_train_steps`` optimizer steps and shows its
        ``min_train_examples`` training examples (counting repeats), unless the user gave the epochs.

        A step budget for tiny data: 40 sentences at batch 32 are two optimizer steps an epoch, too few
        for a pre-trained encoder to learn a tagger in the default 20 epochs. Epochs the user set are kept.
        """
        if self.config.epochs is not None:
            return epochs
        spec = train.task_spec
        if spec.min_train_steps and steps_per_epoch:
            epochs = max(epochs, math.ceil(spec.min_train_steps / steps_per_epoch))
        if spec.min_train_examples and len(train):  # an epoch shows every training example once
            epochs = max(epochs, math.ceil(spec.min_train_examples / len(train)))
        return epochs

    def fit(self, strategy: Strategy, model: TransferModel, train: TaskData | StreamData,
            val: TaskData | None) -> tuple[TransferModel, list[dict]]:
        """Train ``model`` with ``strategy``; restore the best validation checkpoint if validating."""
        from accelerate.utils import set_seed

        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)
        epochs, lr, head_lr = self.resolved(strategy)
        batch = cfg.batch_for(train)
        dataset = strategy.train_dataset(model, train)
        g = torch.Generator().manual_seed(cfg.seed)
        if isinstance(dataset, StreamDataset):
            loader = self._stream_loader(dataset, train)
        else:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch, shuffle=True, collate_fn=dataset.collate, generator=g,
                drop_last=drops_last_single(len(dataset), batch))
        groups = _decay_split(strategy.param_groups(model, lr, head_lr), cfg.weight_decay)
        if not groups:
            raise ConfigError(f"Strategy '{strategy.name}' left no parameter to train.")
        optimizer = torch.optim.AdamW(groups)
        per_epoch = math.ceil(len(loader) / max(1, acc.num_processes) / cfg.grad_accum)
        epochs = self.epochs_for(epochs, per_epoch, train)
        steps = epochs * per_epoch
        warm = int(cfg.warmup * steps)
        if cfg.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[gr["lr"] for gr in groups],
                                                        total_steps=max(steps, 1), pct_start=max(cfg.warmup, 0.01))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.schedule, steps, warm))
        if isinstance(loader, StreamDataset):  # read in this process, moved to the device batch by batch
            wrapped, optimizer, sched = acc.prepare(model, optimizer, sched)
        else:
            wrapped, optimizer, loader, sched = acc.prepare(model, optimizer, loader, sched)
        val_ds = ItemDataset(val, model.backbone.preprocess) if val is not None and len(val) else None
        ctx = StepContext(total_steps=max(steps, 1), epochs=epochs, accumulation=cfg.grad_accum,
                          world_size=acc.num_processes)
        self._shuffle = g
        if cfg.track is None:
            return self._run(strategy, model, wrapped, optimizer, loader, sched, ctx, val, val_ds)
        try:
            self._start_tracking(strategy, model, epochs, lr, head_lr, steps, batch)
            return self._run(strategy, model, wrapped, optimizer, loader, sched, ctx, val, val_ds)
        finally:
            acc.end_training()
            acc.trackers = []  # a later fit() on this Trainer starts a fresh run

    def _stream_loader(self, dataset: StreamDataset, train: StreamData) -> StreamDataset:
        """A stream's batches, read in this one process with the loop's batch size and seed."""
        if self.accelerator.num_processes > 1:
            raise ConfigError(f"A streamed training set ('{train.name}') is read by one process; this run has "
                              f"{self.accelerator.num_processes}. Run it without accelerate launch / torchrun, or "
                              f"read the data whole (without --stream).")
        return dataset.batched(self.config.batch_for(train), self.config.seed)

    def _start_tracking(self, strategy, model, epochs, lr, head_lr, steps, batch) -> None:
        cfg, acc = self.config, self.accelerator
        if cfg.track == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI") and acc.is_main_process:
            import mlflow
            from pathlib import Path

            # A local file store under track_dir, unless the user points MLflow elsewhere. MLflow >= 3.x
            # refuses file stores (maintenance mode) unless opted in; a database backend needs full mlflow.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((Path(self.track_dir).resolve() / "mlruns").as_uri())
        backbone = getattr(getattr(model, "backbone", None), "spec", None)
        params = {**cfg.to_dict(), "resolved": {"epochs": epochs, "lr": lr, "head_lr": head_lr, "steps": steps,
                                                 "batch_size": batch},
                  "strategy": {"name": strategy.name, **(strategy.config.to_dict() if strategy.config else {})},
                  "backbone": backbone, "task": model.task}
        self._step = 0
        acc.init_trackers(f"transferkit-{strategy.name}", config=_flat_params(params))

    def _run(self, strategy, model, wrapped, optimizer, loader, sched, ctx, val, val_ds):
        cfg, acc, epochs = self.config, self.accelerator, ctx.epochs
        metric = primary_metric(model.task)
        sign = 1.0 if higher_is_better(metric) else -1.0
        run = self._resume(loader, ctx)
        bar = _progress(cfg.progress and acc.is_main_process, epochs, strategy.name, done=run.epoch)
        for epoch in range(run.epoch, epochs):
            if cfg.patience is not None and run.stale >= cfg.patience:
                break
            wrapped.train()
            strategy.on_epoch_start(model, epoch, epochs)
            ctx.epoch = epoch
            row = self._epoch(strategy, wrapped, optimizer, loader, sched, ctx, run, bar)
            row["epoch"] = epoch + 1
            if val_ds is not None:
                outputs = predict_outputs(model, val, dataset=val_ds)
                scores = compute_metrics(model.task, val.targets, outputs, model.label_names)
                row[f"val_{metric}"] = scores[metric]
                # a tie goes to the later epoch (as good on validation and further along its schedule: a small
                # validation split that saturates must not keep an early model); only a gain resets patience
                score = sign * scores[metric]
                run.stale = 0 if score > run.best_score else run.stale + 1
                if score >= run.best_score:
                    run.best, run.best_state = score, {k: v.detach().clone() for k, v in model.state_dict().items()}
            run.history.append(row)
            run.epoch, run.batch, run.totals, run.shuffle = epoch + 1, 0, {}, self._shuffle.get_state()
            self._save(run)
            if cfg.track is not None:
                acc.log({f"epoch/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, step=self._step)
            bar.update(row)
        bar.close()
        if run.best_state is not None:
            model.load_state_dict(run.best_state)
        _sync_buffers(model, acc)
        model.eval()
        return model, run.history

    def _resume(self, loader, ctx: StepContext) -> LoopState:
        """The loop's state: fresh, or the checkpoint's (Accelerate's state restored with it)."""
        run = None
        if self.checkpoint is not None:
            run = self.checkpoint.load(self.accelerator, len(loader))
        if run is None:
            return LoopState(shuffle=self._shuffle.get_state(), batches_per_epoch=len(loader))
        self._shuffle.set_state(run.shuffle)  # the interrupted epoch's data order
        ctx.global_step = self._step = run.global_step
        return run

    def _save(self, run: LoopState) -> None:
        if self.checkpoint is not None:
            self.checkpoint.save(self.accelerator, run)

    def _batches(self, loader, epoch: int, skip: int):
        """The epoch's batches after the first ``skip`` (a resumed epoch), on the device."""
        if isinstance(loader, StreamDataset):
            device = self.accelerator.device
            return (to_device(batch, device) for batch in loader.epoch(epoch, skip=skip))
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def _epoch(self, strategy, wrapped, optimizer, loader, sched, ctx: StepContext, run: LoopState,
               bar: "_progress | None" = None) -> dict:
        cfg, acc = self.config, self.accelerator
        totals, n = run.totals, run.batch  # a resumed epoch goes on from its checkpoint
        every = cfg.checkpoint_every if self.checkpoint is not None else None
        for batch in self._batches(loader, ctx.epoch, n):
            if bar is not None:
                bar.items(_batch_items(batch))
            with acc.accumulate(wrapped):
                batch["inputs"] = strategy.augment(batch["inputs"])
                with acc.autocast():
                    out = strategy.step(wrapped, batch, ctx)
                acc.backward(out["loss"])
                if cfg.max_grad_norm and acc.sync_gradients:
                    acc.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                lrs = [gr["lr"] for gr in optimizer.param_groups]  # the rates this step uses
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                ctx.global_step += 1
            if cfg.track is not None and acc.sync_gradients:
                self._step += 1
                acc.log({"train/loss": float(out["loss"].detach()), "train/lr": lrs[0],
                         "train/head_lr": lrs[-1]}, step=self._step)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            n += 1
            if acc.sync_gradients:
                run.batch, run.global_step = n, ctx.global_step
                if every and ctx.global_step % every == 0 and n < run.batches_per_epoch:  # the epoch's end saves
                    self._save(run)
        return {("train_" + k if k == "loss" else k): v / max(n, 1) for k, v in totals.items()}


def _batch_items(batch: dict) -> int:
    """How many items a training batch holds (its targets, else its inputs' first dimension)."""
    x = batch.get("targets")
    if x is None:
        x = batch.get("inputs")
    if isinstance(x, dict):
        x = next(iter(x.values()), ())
    try:
        return len(x)
    except TypeError:
        return 0


class _progress:
    """A rich progress bar over epochs with the items trained per second, silent when disabled."""

    def __init__(self, enabled: bool, total: int, label: str, done: int = 0):
        self.p = None
        self.seen, self.start = 0, time.perf_counter()
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rate]}"),
                              TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=True)
            self.p.start()
            self.t = self.p.add_task(label, total=total, completed=done, info="", rate="")

    def items(self, n: int) -> None:
        """Count ``n`` more items trained; the rate is over the whole run so far."""
        self.seen += n
        if self.p is not None:
            rate = self.seen / max(time.perf_counter() - self.start, 1e-9)
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"  # a slow run's 0.4/s is not "0"
            self.p.update(self.t, rate=f"{shown} items/s")

    def update(self, row: dict) -> None:
        if self.p is not None:
            info = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "epoch" and isinstance(v, float))
            self.p.update(self.t, advance=1, info=info)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
