"""Domain adaptation: train on a labelled source while the target's inputs differ and its labels are few or absent.

Every strategy here is a :class:`~transferkit.strategies.finetune.Finetune`
(so ``train_last``, ``lr_decay``, ``augment``, ... apply) that also receives
the target domain through :meth:`DomainAdaptation.set_target` before
``fit``: unlabelled target inputs, and optionally a few labelled target
examples (semi-supervised: they join the labelled pool). Batches pair each
source batch with as many target inputs (:class:`~transferkit.data.paired.PairedDataset`).

* ``source-only``: fine-tuning on the source (+ labelled target): the baseline.
* ``dann``: gradient reversal against a domain discriminator, weight ramped up (Ganin et al. 2016).
* ``cdan``: a discriminator conditioned on the classifier's predictions (Long et al. 2018).
* ``mmd``: multi-kernel MMD between source and target features (DAN, Long et al. 2015).
* ``coral``: the deep CORAL loss between feature covariances (Sun & Saenko 2016).
* ``self-training``: confidence-thresholded pseudo labels, FixMatch-style for images (Sohn et al. 2020).

The domain discriminator belongs to the strategy, not to the model: the saved
bundle is the plain backbone + head, and prediction is ``model(inputs)``.
Checkpoints are chosen by the strategy (``select``): the source validation
metric, the last epoch, or a label-free validator
(:mod:`transferkit.evaluation.domain_validation`) recorded every epoch.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.constraints import Interval, Options
from transferkit.data.batches import module_device, run_batches
from transferkit.data.dataset import TaskData
from transferkit.data.domains import merge_task_data, unlabelled
from transferkit.data.paired import PairedDataset
from transferkit.data.splits import subsample
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.metrics import higher_is_better
from transferkit.tasks import compute_metrics, primary_metric
from transferkit.evaluation.domain_validation import VALIDATORS, validator_values
from transferkit.strategies.base import (STRATEGIES, ItemDataset, TrainDefaults, TransferModel, register_strategy,
                                         task_loss)
from transferkit.strategies.finetune import Finetune, FinetuneConfig

SELECT = ("source-val", "last", *VALIDATORS.names())


def domain_strategy_names() -> list[str]:
    """Registered strategies that take a target domain."""
    return [e.name for e in STRATEGIES if hasattr(e.obj, "set_target")]


class TargetDomain:
    """Mixin: holds the target domain given by :meth:`set_target` and checks it against the source."""

    needs_target: ClassVar[bool] = True
    target_: TaskData | None = None
    target_labelled_: TaskData | None = None

    def set_target(self, target: TaskData | None, target_labelled: TaskData | None = None) -> None:
        """Give the unlabelled target inputs and (optionally) a few labelled target examples."""
        for what, d in (("target", target), ("target_labelled", target_labelled)):
            if d is not None and not isinstance(d, TaskData):
                raise ConfigError(f"set_target: {what} must be a TaskData (api.fit resolves other forms); "
                                  f"got {type(d).__name__}.")
        if target_labelled is not None and target_labelled.targets is None:
            raise DataError(f"Labelled target data '{target_labelled.name}' has no labels.")
        self.target_, self.target_labelled_ = target, target_labelled

    def target_pool(self) -> TaskData | None:
        """Every target input (the unlabelled ones and those of the labelled examples), without labels."""
        parts = [unlabelled(d) for d in (self.target_, self.target_labelled_) if d is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else merge_task_data(parts[0], parts[1], name=f"{parts[0].name}+labelled")

    def missing_target(self) -> ConfigError:
        return ConfigError(f"Strategy '{self.name}' adapts to a target domain: give the unlabelled target data "
                           f"(Python: fit(..., target_data=DATA); CLI: --target-data DATA), or set it with "
                           f"strategy.set_target(target).")

    def check_target(self, source: TaskData) -> None:
        """Refuse a missing target (when needed) and a target of another input kind than ``source``."""
        pool = self.target_pool()
        if pool is None:
            if self.needs_target:
                raise self.missing_target()
            return
        if pool.modality != source.modality:
            raise DataError(f"Target data '{pool.name}' is {pool.modality} but the source '{source.name}' is "
                            f"{source.modality}: source and target must be the same kind of input.")
        if source.modality == "tabular" and np.asarray(pool.items).shape[1] != np.asarray(source.items).shape[1]:
            raise DataError(f"Target data '{pool.name}' has {np.asarray(pool.items).shape[1]} feature columns but "
                            f"the source '{source.name}' has {np.asarray(source.items).shape[1]}.")

    def labelled_pool(self, source: TaskData) -> TaskData:
        """The labelled training data: the source, plus the labelled target examples if any."""
        return source if self.target_labelled_ is None else merge_task_data(source, self.target_labelled_)


@dataclass
class DomainSelectConfig(FinetuneConfig):
    select: str = field(default="source-val", metadata={"help": f"checkpoint choice: {', '.join(SELECT)}"})
    track_validators: bool = field(default=True, metadata={"help": "record the label-free validators every epoch"})
    validation_items: int = field(default=512, metadata={"help": "target (and source validation) items the "
                                                                 "validators look at"})

    _parameter_constraints = {"select": [Options(*SELECT)], "validation_items": [Interval("int", 2, None)]}


@dataclass
class DomainConfig(DomainSelectConfig):
    weight: float = field(default=1.0, metadata={"help": "trade-off weight of the adaptation term (0: source-only)"})

    _parameter_constraints = {"weight": [Interval("number", 0, None)]}

    def validate(self) -> None:
        super().validate()
        # Mixing and the knowledge-preserving penalties act on the task step of `finetune`;
        # the adaptation steps here build their own paired forward pass.
        if self.mixup or self.cutmix or self.regularizer is not None:
            raise ConfigError(f"{type(self).__name__}: mixup, cutmix and regularizer are not combined with domain "
                              "adaptation; use them with 'source-only' or 'finetune'.")


def concat_inputs(a: Any, b: Any) -> Any:
    """One batch of ``a`` then ``b``: tensors are concatenated; token dicts right-padded to one length first."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    pad = lambda t: F.pad(t, (0, length - t.shape[1]))  # noqa: E731  (pad id 0, attention mask 0)
    return {k: torch.cat([pad(a[k]), pad(b[k])]) for k in a}


def batch_len(inputs: Any) -> int:
    return len(inputs) if isinstance(inputs, torch.Tensor) else len(inputs["input_ids"])


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def probe(model: TransferModel, dataset: ItemDataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(features, outputs) of ``model`` on every item of ``dataset``; the model is left in eval mode."""
    model.eval()

    def forward(x):
        f = model.backbone.forward_features(x)
        return f, model.head(f)

    feats, outs = [], []
    for _, _, (f, logits) in run_batches(forward, dataset.inputs, len(dataset), batch_size=batch_size,
                                         device=module_device(model)):
        feats.append(f.float().cpu().numpy())
        outs.append(model.outputs_to_numpy(logits))
    return np.concatenate(feats), np.concatenate(outs)


def validator_scores(model: TransferModel, target: TaskData, source_val: TaskData | None = None, *,
                     names=None, max_items: int = 512, seed: int = 0) -> dict[str, float]:
    """The label-free validators of a trained classifier (any strategy's), e.g. to choose among runs.

    Args:
        model: the trained model.
        target: unlabelled target inputs (at most ``max_items``, a seeded subsample, are used).
        source_val: the labelled source validation split (for ``iwv``; NaN without it).
        names: validators (default all of :data:`~transferkit.evaluation.domain_validation.VALIDATORS`).

    Example:
        >>> scores = [validator_scores(r.predictor.model, target, val) for r in runs]  # doctest: +SKIP
        >>> best = select_best([s["snd"] for s in scores], "snd")                      # doctest: +SKIP
    """
    pre = model.backbone.preprocess
    part = subsample(target, max_items, seed) if len(target) > max_items else target
    t_feats, t_out = probe(model, ItemDataset(unlabelled(part), pre))
    v = {}
    if source_val is not None and source_val.targets is not None and len(source_val) >= 2:
        val = subsample(source_val, max_items, seed) if len(source_val) > max_items else source_val
        feats, out = probe(model, ItemDataset(val, pre))
        v = {"source_val_probs": out, "source_val_targets": val.targets, "source_val_features": feats,
             "target_features": t_feats}
    return validator_values(t_out, names=names, seed=seed, **v)


class DomainAdaptation(TargetDomain, Finetune):
    """Base of the deep domain-adaptation strategies (not registered itself)."""

    Config = DomainConfig
    defaults = TrainDefaults(epochs=20, lr=1e-4, head_lr=1e-3)
    paired: ClassVar[bool] = True  # batches carry "target_inputs"
    tasks: ClassVar[tuple[str, ...] | None] = ("classification", "multilabel", "regression")
    dense: ClassVar[bool] = False  # pooled features for the domain losses
    resumable: ClassVar[bool] = False  # the per-epoch records that choose the checkpoint live on the strategy
    streams: ClassVar[bool] = False  # its batches pair the source with target items drawn from memory

    def check_data(self, backbone, data: TaskData) -> None:
        super().check_data(backbone, data)
        self.check_target(data)

    def train_dataset(self, model: TransferModel, data: TaskData):
        source = ItemDataset(self.labelled_pool(data), model.backbone.preprocess)
        pool = self.target_pool()
        if not self.paired or pool is None:
            return source
        return PairedDataset(source, ItemDataset(pool, model.backbone.preprocess), seed=self._seed)

    def on_epoch_start(self, model: TransferModel, epoch: int, epochs: int) -> None:
        if epoch > 0:
            self._record(model, epoch)  # the model after `epoch` epochs
            model.train()
        super().on_epoch_start(model, epoch, epochs)

    # -- fit with checkpoint selection ----------------------------------------
    def fit(self, backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        """Prepare, train with the generic loop, and keep the checkpoint ``select`` chooses."""
        self.check_data(backbone, train)
        cfg = trainer.config
        self._seed = cfg.seed
        torch.manual_seed(cfg.seed)  # the new head and discriminator start the same for a given seed
        model = self.prepare(backbone, train)
        self._begin_selection(model, train, val)
        if cfg.patience is not None:
            warnings.warn(f"Strategy '{self.name}' chooses its checkpoint itself (select={self.config.select!r}); "
                          "patience (early stopping) is not applied.", stacklevel=2)
        # The loop gets no validation set: it would restore the best source-validation
        # checkpoint itself, and the strategy selects by `select` instead.
        model, history = trainer.fit(self, model, train, None)
        self._record(model, len(history))
        history = self._finish_selection(model, history)
        self.on_train_end(model, train)
        return model, history

    def _begin_selection(self, model: TransferModel, train: TaskData, val: TaskData | None) -> None:
        n, pre = self.config.validation_items, model.backbone.preprocess
        pool = self.target_pool()
        self._val = val if val is not None and len(val) and val.targets is not None else None
        self._val_ds = ItemDataset(self._val, pre) if self._val is not None else None
        self._tgt_ds = ItemDataset(subsample(pool, n, self._seed) if len(pool) > n else pool, pre) if pool else None
        self._records: list[dict] = []
        self._best: tuple[float, int, dict] | None = None
        self._metric = primary_metric(train.task)
        sel = self.config.select
        if sel in VALIDATORS and (self._tgt_ds is None or not train.task_spec.single_label):
            raise ConfigError(f"select={sel!r} needs classification with target data; use 'source-val' or 'last'.")
        if sel == "iwv" and self._val is None:
            raise ConfigError("select='iwv' weighs the source validation split: give val_fraction > 0 or val_data.")

    def _validators(self) -> list[str]:
        sel = self.config.select
        if self._tgt_ds is None or self._metric != "accuracy":  # the validators read class probabilities
            return []
        names = VALIDATORS.names() if self.config.track_validators else ([sel] if sel in VALIDATORS else [])
        return [v for v in names if v != "iwv" or self._val_ds is not None]

    def _record(self, model: TransferModel, epoch: int) -> None:
        if len(self._records) >= epoch:
            return
        row: dict = {}
        val_feats = val_out = None
        if self._val_ds is not None:
            val_feats, val_out = probe(model, self._val_ds)
            row[f"val_{self._metric}"] = compute_metrics(self._val.task, self._val.targets, val_out,
                                                         self._val.label_names)[self._metric]
        names = self._validators()
        if names:
            t_feats, t_out = probe(model, self._tgt_ds)
            values = validator_values(t_out, names=names, source_val_probs=val_out,
                                      source_val_targets=None if self._val is None else self._val.targets,
                                      source_val_features=val_feats, target_features=t_feats, seed=self._seed)
            row.update({f"target_{k}": v for k, v in values.items()})
        self._records.append(row)
        score = self._selection_score(row, epoch)
        if score is not None and (self._best is None or score > self._best[0]):
            self._best = (score, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})

    def _selection_score(self, row: dict, epoch: int) -> float | None:
        sel = self.config.select
        if sel == "source-val":
            key = f"val_{self._metric}"
            if key not in row:
                return float(epoch)  # no validation split: the last epoch
            return row[key] if higher_is_better(self._metric) else -row[key]
        if sel == "last":
            return float(epoch)
        value = row.get(f"target_{sel}", float("nan"))
        if not np.isfinite(value):
            return None
        return value if VALIDATORS.get(sel).higher_is_better else -value

    def _finish_selection(self, model: TransferModel, history: list[dict]) -> list[dict]:
        for row, extra in zip(history, self._records):
            row.update(extra)
        if self._best is not None:
            model.load_state_dict(self._best[2])
            for row in history:
                row["selected"] = row.get("epoch") == self._best[1]
        model.eval()
        self._best = None  # release the snapshot
        return history

    # -- the shared forward ---------------------------------------------------
    def forward_pair(self, model: nn.Module, batch: dict):
        """Logits and features of the source and target halves, from one forward pass of ``model``.

        One pass through the (possibly distributed) model keeps Accelerate's
        gradient synchronisation intact; a pre-hook on the head captures the
        features. BatchNorm sees both domains in one batch, as in DANN.
        """
        xs, xt = batch["inputs"], self.augment(batch["target_inputs"])
        captured: list[torch.Tensor] = []
        hook = _unwrap(model).head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        try:
            logits = model(concat_inputs(xs, xt))
        finally:
            hook.remove()
        ns = batch_len(xs)
        return logits[:ns], logits[ns:], captured[0][:ns], captured[0][ns:]

    def source_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return task_loss(logits, batch["targets"], batch["task"], self.config.label_smoothing,
                         getattr(self, "class_weight_", None))


def domain_discriminator(in_features: int, hidden: int) -> nn.Sequential:
    """The domain classifier of DANN/CDAN: two hidden ReLU layers with BatchNorm, one logit (target = 1)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1))


@register_strategy
class SourceOnly(DomainAdaptation):
    """Fine-tune on the labelled source (and labelled target examples) only: the baseline of adaptation."""

    name = "source-only"
    Config = DomainSelectConfig
    needs_target = False  # a target, when given, is only used by the label-free validators
    paired = False


def attach_target(strategy, target: TaskData | None, target_labelled: TaskData | None = None) -> dict | None:
    """Give ``strategy`` its target domain; what to record in the manifest (``None`` for other strategies).

    Raises:
        ConfigError: target data for a strategy that does not adapt (the message names those that
            do), or no target data for one that needs it.
    """
    if not hasattr(strategy, "set_target"):
        if target is not None or target_labelled is not None:
            raise ConfigError(f"Strategy '{strategy.name}' does not use target data. Domain-adaptation strategies "
                              f"do: {', '.join(domain_strategy_names())}.")
        return None
    strategy.set_target(target, target_labelled)
    if target is None and target_labelled is None:
        if strategy.needs_target:
            raise strategy.missing_target()
        return {"setting": "source only"}

    def describe(d: TaskData | None) -> dict | None:
        if d is None:
            return None
        return {"name": d.name, "source": d.source, "fingerprint": d.fingerprint(), "n": len(d)}

    return {"setting": "semi-supervised" if target_labelled is not None else "unsupervised",
            "target": describe(target), "target_labelled": describe(target_labelled)}
