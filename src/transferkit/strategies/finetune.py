"""Fine-tuning strategies: ``finetune`` (full, partial, layer-specific, discriminative
learning rates) and ``gradual-unfreeze`` (ULMFiT / fastai ``fine_tune`` style).

Layer groups come from the backbone's ``layer_groups()`` (input -> output), so
the same options work on CNNs, vision transformers and BERT-style encoders.

* ``train_last=k`` trains only the top k layer groups (partial fine-tuning).
* ``freeze=["blocks.0*", ...]`` / ``train_only=[...]``: fnmatch patterns over
  the backbone's parameter names (layer-specific fine-tuning).
* ``lr_decay=d``: group i from the top trains at ``lr * d**i``
  (discriminative learning rates, Howard & Ruder 2018,
  https://arxiv.org/abs/1801.06146).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, check_range
from transferkit.strategies.base import (Strategy, StrategyConfig, TrainDefaults, TransferModel,
                                         frozen_batchnorm_to_eval, register_strategy)


@dataclass
class FinetuneConfig(StrategyConfig):
    train_last: int | None = field(default=None, metadata={"help": "train only the last k layer groups (None: all)"})
    freeze: list[str] = field(default_factory=list, metadata={"help": "fnmatch patterns of backbone parameters to freeze"})
    train_only: list[str] = field(default_factory=list, metadata={"help": "fnmatch patterns: train only these backbone parameters"})
    lr_decay: float = field(default=1.0, metadata={"help": "per-group learning-rate factor from the top (1: uniform)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout before the head"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the classification loss"})
    augment: bool = field(default=False, metadata={"help": "images: random shifts and horizontal flips"})
    recalibrate_bn: bool = field(default=False, metadata={"help": "re-estimate BatchNorm statistics after training"})

    def validate(self) -> None:
        owner = type(self).__name__
        if self.train_last is not None:
            check_range(owner, "train_last", self.train_last, low=0, kind="an int")
        check_range(owner, "lr_decay", self.lr_decay, low=0, low_open=True, high=1)
        check_range(owner, "dropout", self.dropout, low=0, high=0.95)
        check_range(owner, "label_smoothing", self.label_smoothing, low=0, high=0.5)
        if self.freeze and self.train_only:
            raise ConfigError(f"{owner}: give 'freeze' or 'train_only', not both.")


def random_shift_flip(x: torch.Tensor, max_shift: int | None = None) -> torch.Tensor:
    """Per-sample random translation (reflect padding, up to ~1/8 of the side) and horizontal flip."""
    if x.dim() != 4:
        return x
    b, _, h, w = x.shape
    s = max_shift if max_shift is not None else max(1, h // 8)
    padded = nn.functional.pad(x, (s, s, s, s), mode="reflect")
    dx, dy = torch.randint(0, 2 * s + 1, (b,)), torch.randint(0, 2 * s + 1, (b,))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    flip = torch.rand(b) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: TransferModel, data: TaskData, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics with a cumulative average over ``data``.

    A randomly initialised EfficientNet-Lite (BN momentum 0.01) barely moves its
    statistics in a short run and collapses to chance at evaluation (ASSETS.md).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    pre = model.backbone.preprocess
    for i in range(0, len(data), batch_size):
        model.backbone.forward_features(pre([data.items[j] for j in range(i, min(i + batch_size, len(data)))]))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@register_strategy
class Finetune(Strategy):
    """Fine-tune the backbone and a new head (full, partial, layer-specific, discriminative lrs)."""

    name = "finetune"
    Config = FinetuneConfig
    defaults = TrainDefaults(epochs=20, lr=1e-4, head_lr=1e-3)

    def _frozen_names(self, model: TransferModel) -> set[str]:
        c, bb = self.config, model.backbone
        names = {n for n, p in bb.named_parameters()}
        frozen: set[str] = set()
        if c.train_last is not None:
            groups = bb.layer_groups()
            keep = {id(p) for g in groups[len(groups) - c.train_last:] for p in g} if c.train_last else set()
            frozen |= {n for n, p in bb.named_parameters() if id(p) not in keep}
        if c.freeze:
            frozen |= {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in c.freeze)}
        if c.train_only:
            frozen |= {n for n in names if not any(fnmatch.fnmatch(n, pat) for pat in c.train_only)}
        for pat in [*c.freeze, *c.train_only]:
            if not any(fnmatch.fnmatch(n, pat) for n in names):
                raise ConfigError(f"Pattern {pat!r} matches no parameter of backbone '{bb.spec}'. "
                                  f"Examples of names: {', '.join(sorted(names)[:6])}.")
        return frozen

    def prepare(self, backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        if backbone.source_head is not None:
            backbone.source_head.requires_grad_(False)
        frozen = self._frozen_names(model)
        for n, p in backbone.named_parameters():
            if backbone.source_head is None or not n.startswith("source_head."):
                p.requires_grad_(n not in frozen)
        return model

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        groups = model.backbone.layer_groups()
        out = []
        for i, g in enumerate(groups):
            params = [p for p in g if p.requires_grad]
            if params:
                out.append({"params": params, "lr": lr * self.config.lr_decay ** (len(groups) - 1 - i), "name": f"group{i}"})
        head = [p for p in model.head.parameters() if p.requires_grad]
        return out + [{"params": head, "lr": head_lr, "name": "head"}]

    def augment(self, inputs):
        return random_shift_flip(inputs) if self.config.augment and isinstance(inputs, torch.Tensor) else inputs

    def on_epoch_start(self, model: TransferModel, epoch: int, epochs: int) -> None:
        frozen_batchnorm_to_eval(model.backbone)

    def on_train_end(self, model: TransferModel, data: TaskData) -> None:
        if self.config.recalibrate_bn:
            recalibrate_batchnorm(model, data)


@dataclass
class GradualUnfreezeConfig(FinetuneConfig):
    head_epochs: int = field(default=1, metadata={"help": "epochs training only the head"})
    unfreeze_every: int = field(default=1, metadata={"help": "epochs between unfreezing the next group (top-down)"})

    def validate(self) -> None:
        super().validate()
        check_range("GradualUnfreezeConfig", "head_epochs", self.head_epochs, low=0, kind="an int")
        check_range("GradualUnfreezeConfig", "unfreeze_every", self.unfreeze_every, low=1, kind="an int")


@register_strategy
class GradualUnfreeze(Finetune):
    """Train the head first, then unfreeze layer groups top-down on a schedule (ULMFiT)."""

    name = "gradual-unfreeze"
    Config = GradualUnfreezeConfig
    defaults = TrainDefaults(epochs=20, lr=1e-4, head_lr=1e-3)

    def prepare(self, backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        # What the freeze options let train at all; the schedule opens groups within it.
        self._allowed = {id(p) for p in model.backbone.parameters() if p.requires_grad}
        return model

    def on_epoch_start(self, model: TransferModel, epoch: int, epochs: int) -> None:
        c = self.config
        groups = model.backbone.layer_groups()
        n_open = 0 if epoch < c.head_epochs else 1 + (epoch - c.head_epochs) // c.unfreeze_every
        open_ids = {id(p) for g in groups[len(groups) - n_open:] for p in g} if n_open else set()
        for p in model.backbone.parameters():
            if id(p) in self._allowed:
                p.requires_grad_(id(p) in open_ids)
        frozen_batchnorm_to_eval(model.backbone)
