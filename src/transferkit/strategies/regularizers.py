"""Knowledge-preserving regularizers that compose with any fine-tuning strategy.

A regularizer is chosen by name in a strategy's config
(``regularizer="l2sp"``, ``regularizer_weight``, ``regularizer_options``) and
adds named terms to the task loss; the step reports each term by name, so the
loop averages it into the history next to ``train_loss`` (the total).

* ``l2sp``: pull the pre-trained weights toward their starting point (L2-SP).
* ``ewc``: the same, weighted by a diagonal Fisher information (EWC).
* ``lwf``: keep the source head's predictions on the target inputs (LwF).
* ``bss``: shrink the smallest singular values of the batch features (BSS).

Each regularizer has ``check(strategy, model)`` (refuse what it cannot apply
to), ``setup(model, train_data)`` (called once after ``prepare``: snapshots,
Fisher) and ``penalty(model, batch, outputs, features) -> dict[str, Tensor]``
(already weighted: ``loss = task_loss + sum(terms)``). A strategy narrows the
choice with its ``allowed_regularizers`` class attribute (``None``: all).

:func:`source_agreement` measures what was preserved: the share of items on
which the source head (EfficientNet-Lite's ImageNet classifier) predicts the
same class before and after adaptation. ``fit`` and ``compare`` report it as
the metric ``source_agreement`` for strategies that train the backbone
(``changes_backbone``), on up to 1,000 items of the evaluated split.

Example:
    >>> import transferkit as tk                                                   # doctest: +SKIP
    >>> tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", labels_per_class=10,  # doctest: +SKIP
    ...        strategy_options={"regularizer": "lwf", "regularizer_options": {"temperature": 2}})
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, check_range, unknown_name
from transferkit.registry import Registry
from transferkit.strategies.base import ItemDataset, StrategyConfig, TransferModel, _to_device

REGULARIZERS: Registry[type["Regularizer"]] = Registry("regularizer")

#: Backbones with a ``source_head`` (what ``lwf`` and ``source_agreement`` need).
SOURCE_HEAD_BACKBONES = "EfficientNet-Lite (efficientnet-lite:0, efficientnet-lite:1, efficientnet-lite:2)"


@dataclass
class RegularizerOptions(StrategyConfig):
    """Options of a regularizer: fields with ``metadata={"help": ...}``, checked in ``validate``."""


class Regularizer:
    """Base class; subclasses set ``name``, ``Options``, ``default_weight`` and override ``penalty``.

    Args:
        weight: the main weight of the penalty; ``None`` is ``default_weight``.
        options: the regularizer's options (a dict or its ``Options``).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[RegularizerOptions]] = RegularizerOptions
    default_weight: ClassVar[float] = 1.0
    needs_source_head: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False  # penalty() reads the batch features (head input)

    def __init__(self, weight: float | None = None, options: dict | RegularizerOptions | None = None):
        self.weight = float(self.default_weight if weight is None else weight)
        check_range(type(self).__name__, "weight", self.weight, low=0)
        self.options = options if isinstance(options, RegularizerOptions) else self.Options.from_dict(options)
        self._device: torch.device | None = None

    def check(self, strategy, model: TransferModel) -> None:
        """Raise :class:`ConfigError` when this regularizer cannot apply to ``strategy`` and ``model``."""
        check_allowed(strategy, self.name)
        if self.needs_source_head and model.backbone.source_head is None:
            raise ConfigError(f"Regularizer '{self.name}' needs a backbone with a source head (its pre-trained "
                              f"classifier); '{model.backbone.spec}' has none. Backbones with one: "
                              f"{SOURCE_HEAD_BACKBONES}.")

    def setup(self, model: TransferModel, train: TaskData) -> None:
        """Called once after ``prepare``, before training (snapshots, Fisher). Default: nothing."""

    def penalty(self, model: TransferModel, batch: dict, outputs: torch.Tensor,
                features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms by name, added to the task loss."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop what :meth:`setup` kept (snapshots, frozen copies) once training is over."""

    def _on(self, device: torch.device) -> None:
        """Move the state kept by :meth:`setup` to ``device`` once (the loop moves the model after setup)."""
        if self._device != device:
            for key, value in vars(self).items():
                if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                    setattr(self, key, {k: v.to(device) for k, v in value.items()})
                elif isinstance(value, nn.Module):
                    value.to(device)
            self._device = device


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: register ``cls`` under ``cls.name`` (help: the docstring's first line)."""
    REGULARIZERS.register(cls.name, cls)
    return cls


def check_allowed(strategy, name: str) -> None:
    """Refuse a regularizer the strategy's ``allowed_regularizers`` excludes, naming the allowed ones."""
    allowed = getattr(strategy, "allowed_regularizers", None)
    if allowed is not None and name not in allowed:
        raise ConfigError(f"Strategy '{strategy.name}' does not allow regularizer '{name}'. "
                          f"Allowed: {', '.join(allowed) or 'none'}.")


def validate_fields(owner: str, name: str | None, weight: float | None, options: dict | None) -> None:
    """Check a config's ``regularizer``, ``regularizer_weight`` and ``regularizer_options``."""
    if name is None:
        if weight is not None or options:
            raise ConfigError(f"{owner}: 'regularizer_weight' and 'regularizer_options' need a 'regularizer' "
                              f"(one of {', '.join(REGULARIZERS.names())}).")
        return
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", str(name), REGULARIZERS.names())
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"The 'regularizer_weight' parameter of {owner} must be a number or None. "
                              f"Got {weight!r} instead.")
        check_range(owner, "regularizer_weight", weight, low=0)
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"The 'regularizer_options' parameter of {owner} must be a dict. Got {options!r} instead.")
    REGULARIZERS.get(name).Options.from_dict(options)


def build_regularizer(strategy, model: TransferModel, train: TaskData) -> Regularizer | None:
    """The configured regularizer of ``strategy``, checked against ``model`` and set up; ``None`` if none."""
    c = strategy.config
    if getattr(c, "regularizer", None) is None:
        return None
    reg = REGULARIZERS.get(c.regularizer)(c.regularizer_weight, c.regularizer_options)
    reg.check(strategy, model)
    reg.setup(model, train)
    return reg


class _HeadInput:
    """Records the input (features) and output (logits) of ``head`` while active."""

    def __init__(self, head: nn.Module):
        self.head, self.features, self.outputs = head, None, None

    def __enter__(self) -> "_HeadInput":
        def hook(_module, args, output):
            self.features, self.outputs = args[0], output
        self._handle = self.head.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def regularized_step(step, reg: Regularizer, model: nn.Module, batch: dict) -> dict:
    """Run the strategy's ``step`` and add ``reg``'s terms to its loss.

    The features are taken from the head's input during the strategy's own
    forward pass (one forward per step, and through the Accelerate/DDP wrapper
    so gradients still synchronise).
    """
    inner = getattr(model, "module", model)
    with _HeadInput(inner.head) if reg.needs_features else contextlib.nullcontext() as seen:
        out = dict(step(model, batch))
    features = seen.features if seen is not None else None
    outputs = seen.outputs if seen is not None else None
    if reg.needs_features and features is None:
        raise ConfigError(f"Regularizer '{reg.name}' reads the features the model's head receives, but this "
                          f"strategy's step did not call the head.")
    reg._on(next(inner.parameters()).device)
    terms = reg.penalty(inner, batch, outputs, features)
    out["task_loss"] = out["loss"].detach()
    out["loss"] = out["loss"] + sum(terms.values())
    return {**out, **{k: v.detach() for k, v in terms.items()}}


def _zero(model: nn.Module) -> torch.Tensor:
    return torch.zeros((), device=next(model.parameters()).device)


def _trainable_backbone(model: TransferModel) -> dict[str, nn.Parameter]:
    """Pre-trained parameters that may train (after ``prepare``); the source head never does."""
    return {n: p for n, p in model.backbone.named_parameters() if p.requires_grad and not n.startswith("source_head.")}


@dataclass
class L2SPOptions(RegularizerOptions):
    head_weight: float = field(default=0.01, metadata={"help": "beta: L2 weight on the new head's matrices"})

    def validate(self) -> None:
        check_range("L2SPOptions", "head_weight", self.head_weight, low=0)


@register_regularizer
class L2SP(Regularizer):
    """L2-SP: pull the pre-trained weights toward their starting point, plain L2 on the new head.

    Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks", ICML 2018, https://arxiv.org/abs/1802.01483::

        Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2

    over the pre-trained backbone weights ``w_S`` (snapshot ``w0_S`` at setup,
    one copy of the trainable weights in memory; frozen ones contribute 0)
    and the new head's matrices ``w_new`` (biases are left alone, as the
    loop's weight decay does). ``alpha`` is the weight (default 0.1),
    ``beta`` the option ``head_weight`` (default 0.01). Reported as ``l2sp``
    (zero before the first update) and ``l2sp_head``.

    The loop's AdamW ``weight_decay`` (decoupled decay toward zero, default
    0.01) still applies on top of this; for the paper's setting, where L2-SP
    replaces it, pass ``weight_decay=0`` (``tk.fit(..., weight_decay=0)`` or
    ``TrainConfig(weight_decay=0)``).
    """

    name = "l2sp"
    Options = L2SPOptions
    default_weight = 0.1

    def setup(self, model: TransferModel, train: TaskData) -> None:
        self.start_ = {n: p.detach().clone() for n, p in _trainable_backbone(model).items()}

    def penalty(self, model, batch, outputs, features=None):
        params, zero = dict(model.backbone.named_parameters()), _zero(model)
        drift = sum(((params[n] - w0).pow(2).sum() for n, w0 in self.start_.items()), zero)
        head = sum((p.pow(2).sum() for p in model.head.parameters() if p.requires_grad and p.dim() >= 2), zero)
        return {"l2sp": 0.5 * self.weight * drift, "l2sp_head": 0.5 * self.options.head_weight * head}

    def release(self) -> None:
        self.start_ = {}


@dataclass
class EWCOptions(RegularizerOptions):
    fisher_samples: int = field(default=256, metadata={"help": "items the diagonal Fisher is estimated on"})
    fisher_data: str | None = field(default=None, metadata={
        "help": "data set (path or built-in name) for the Fisher; None: the training data"})

    def validate(self) -> None:
        check_range("EWCOptions", "fisher_samples", self.fisher_samples, low=1, kind="an int")
        if self.fisher_data is not None and not isinstance(self.fisher_data, (str, os.PathLike)):
            raise ConfigError(f"The 'fisher_data' parameter of EWCOptions must be a path or a built-in data set "
                              f"name. Got {self.fisher_data!r} instead.")


def _sampled_nll(outputs: torch.Tensor, task: str, generator: torch.Generator) -> torch.Tensor:
    """-log p(y | x) with y drawn from the model's own predictive distribution (the true Fisher)."""
    outputs = outputs.float()
    if task == "classification":
        y = torch.multinomial(outputs.softmax(-1).detach().cpu(), 1, generator=generator).squeeze(-1)
        return F.cross_entropy(outputs, y.to(outputs.device), reduction="sum")
    if task == "multilabel":
        y = torch.bernoulli(outputs.sigmoid().detach().cpu(), generator=generator).to(outputs.device)
        return F.binary_cross_entropy_with_logits(outputs, y, reduction="sum")
    noise = torch.randn(outputs.shape, generator=generator).to(outputs.device)  # unit-variance Gaussian
    return 0.5 * (outputs - (outputs.detach() + noise)).pow(2).sum()


def diagonal_fisher(model: TransferModel, data: TaskData, params: dict[str, nn.Parameter],
                    samples: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean squared per-item gradient of ``-log p(y|x)`` for ``params``, y sampled from the model.

    The distribution is the backbone's source head where it has one (the
    source task's own predictive distribution on these inputs), else the
    model's (new) head. The model runs in eval mode (BatchNorm statistics
    fixed), one item at a time, on at most ``samples`` items (a seeded subset).
    """
    from transferkit.data.splits import subsample

    data = subsample(data, samples, seed)
    bb = model.backbone
    head, task = (bb.source_head, "classification") if bb.source_head is not None else (model.head, model.task)
    names, tensors = list(params), list(params.values())
    fisher = [torch.zeros_like(p) for p in tensors]
    gen = torch.Generator().manual_seed(seed)
    device, was_training = tensors[0].device, model.training
    ds = ItemDataset(data, bb.preprocess, precompute=False)
    model.eval()
    try:
        for start in range(0, len(ds), 32):
            chunk = list(range(start, min(start + 32, len(ds))))
            inputs = ds.collate(chunk)["inputs"]
            for i in range(len(chunk)):
                one = {k: v[i:i + 1] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[i:i + 1]
                nll = _sampled_nll(head(bb.forward_features(_to_device(one, device))), task, gen)
                grads = torch.autograd.grad(nll, tensors, allow_unused=True)
                for f, g in zip(fisher, grads):
                    if g is not None:
                        f.add_(g.detach().pow(2))
    finally:
        model.train(was_training)
    return {n: f / max(len(ds), 1) for n, f in zip(names, fisher)}


@register_regularizer
class EWC(Regularizer):
    """EWC: pull the pre-trained weights toward their start, weighted by a diagonal Fisher information.

    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural
    networks", PNAS 2017, https://arxiv.org/abs/1612.00796::

        Omega(w) = lambda/2 * sum_i F_i (w_i - w0_i)^2,   F_i = E_x E_{y~p(y|x)} [(d log p(y|x) / d w_i)^2]

    The Fisher is estimated once at setup on ``fisher_samples`` items (default
    256) of the training data, or of ``fisher_data`` (a path or built-in name).
    Labels are sampled from a predictive distribution, never taken from the
    data: the source head's where the backbone has one (EfficientNet-Lite: how
    much each weight matters to the source task, on these inputs), else the
    model's freshly initialised head (how much each weight moves the model's
    outputs). It is divided by its mean over all entries, so F has mean 1 and
    ``lambda`` (the weight, default 0.1) is on the scale of L2-SP's alpha (an
    all-zero Fisher is left as it is). Costs one forward and backward pass
    per sample, once, on the device the model is on at ``prepare`` (the CPU
    under ``fit``), and two copies of the trainable weights in memory (the
    Fisher and the snapshot). The loop's ``weight_decay`` applies on top, as
    for ``l2sp``.
    """

    name = "ewc"
    Options = EWCOptions
    default_weight = 0.1

    def setup(self, model: TransferModel, train: TaskData) -> None:
        params = _trainable_backbone(model)
        data = self._fisher_data(model, train)
        fisher = diagonal_fisher(model, data, params, self.options.fisher_samples) if params else {}
        mean = torch.cat([f.flatten() for f in fisher.values()]).mean() if fisher else torch.tensor(0.0)
        self.fisher_ = {n: f / mean for n, f in fisher.items()} if mean > 0 else fisher
        self.start_ = {n: p.detach().clone() for n, p in params.items()}

    def _fisher_data(self, model: TransferModel, train: TaskData) -> TaskData:
        if self.options.fisher_data is None:
            return train
        from transferkit.data import resolve_data

        data, _ = resolve_data(self.options.fisher_data)
        if data.modality != model.backbone.modality:
            raise ConfigError(f"fisher_data '{data.name}' is {data.modality} data; backbone "
                              f"'{model.backbone.spec}' takes {model.backbone.modality}.")
        return data

    def penalty(self, model, batch, outputs, features=None):
        params = dict(model.backbone.named_parameters())
        total = sum(((self.fisher_[n] * (params[n] - w0).pow(2)).sum() for n, w0 in self.start_.items()), _zero(model))
        return {"ewc": 0.5 * self.weight * total}

    def release(self) -> None:
        self.start_, self.fisher_ = {}, {}


@dataclass
class LwFOptions(RegularizerOptions):
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature T"})

    def validate(self) -> None:
        check_range("LwFOptions", "temperature", self.temperature, low=0, low_open=True)


@register_regularizer
class LwF(Regularizer):
    """LwF: keep the source head's predictions of the original backbone on the target inputs.

    Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017,
    https://arxiv.org/abs/1606.09282::

        Omega = lambda * T^2 * KL(softmax(z0 / T) || softmax(z / T)),   averaged over the batch

    with ``z0 = source_head(f0(x))`` from a frozen copy of the original
    backbone ``f0`` and ``z = source_head(f(x))`` from the current one, on the
    same (augmented) batch, so augmentation needs no stored targets. The copy
    runs in eval mode: its outputs are the original model's predictions, as
    in the paper (responses recorded from the original network), while the
    current backbone trains with batch statistics in its BatchNorm layers.
    So the penalty is not zero at the first step where those layers train on
    data unlike the source's; in exchange it also holds the adapted model's
    eval-mode predictions, whose running statistics drift toward the target
    batches. Defaults: lambda 1, T 2; the T^2 factor keeps the gradient scale
    independent of T (Hinton et al. 2015). Needs a backbone with a source
    head (EfficientNet-Lite). Costs one more copy of the backbone (weights
    and buffers) in memory, on the training device, and one more forward
    pass without gradients per step.
    """

    name = "lwf"
    Options = LwFOptions
    default_weight = 1.0
    needs_source_head = True
    needs_features = True

    def setup(self, model: TransferModel, train: TaskData) -> None:
        self.teacher_ = copy.deepcopy(model.backbone).requires_grad_(False).eval()

    def penalty(self, model, batch, outputs, features=None):
        t = self.options.temperature
        with torch.no_grad():
            inputs = _to_device(batch["inputs"], features.device)
            target = self.teacher_.source_head(self.teacher_.forward_features(inputs)).float()
        current = model.backbone.source_head(features).float()
        kl = F.kl_div(F.log_softmax(current / t, -1), F.log_softmax(target / t, -1), reduction="batchmean",
                      log_target=True)
        return {"lwf": self.weight * t * t * kl}

    def release(self) -> None:
        self.teacher_ = None


@dataclass
class BSSOptions(RegularizerOptions):
    k: int = field(default=1, metadata={"help": "number of smallest singular values penalised"})

    def validate(self) -> None:
        check_range("BSSOptions", "k", self.k, low=1, kind="an int")


def bss_penalty(features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Sum of the ``k`` smallest squared singular values of ``features`` ``[B, D]`` (all if fewer)."""
    sigma = torch.linalg.svdvals(features.float())  # descending
    return sigma[-min(k, sigma.numel()):].pow(2).sum()


@register_regularizer
class BSS(Regularizer):
    """BSS: suppress the smallest singular values of the batch features (against negative transfer).

    Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative
    Transfer: Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS
    2019 (NeurIPS proceedings; no arXiv version)::

        Omega(F) = eta * sum_{i=1..k} sigma_{-i}(F)^2

    over the singular values of the batch feature matrix ``F`` ``[B, D]``
    (the head's input), smallest first. Defaults: eta (the weight) 0.001,
    k 1. The features come from the step's own forward pass (the head's
    input), so the model runs once per step.
    """

    name = "bss"
    Options = BSSOptions
    default_weight = 0.001
    needs_features = True

    def penalty(self, model, batch, outputs, features=None):
        return {"bss": self.weight * bss_penalty(features, self.options.k)}


def changes_backbone(strategy) -> bool:
    """Whether ``strategy`` trains the user's pre-trained backbone (its ``changes_backbone`` attribute)."""
    return getattr(strategy, "kind", "transfer") == "transfer" and bool(getattr(strategy, "changes_backbone", False))


@torch.no_grad()
def source_predictions(backbone, data: TaskData, batch_size: int = 64,
                       max_items: int | None = 1000) -> np.ndarray | None:
    """Argmax of the backbone's source head on the items of ``data``; ``None`` without a source head.

    At most ``max_items`` items are used: a fixed stratified subset (seed 0),
    the same on every call, so before/after predictions line up while the
    cost stays bounded on a large test split (``None``: every item).
    """
    from transferkit.data.splits import subsample

    if backbone is None or getattr(backbone, "source_head", None) is None or data is None:
        return None
    if max_items is not None and len(data):
        data = subsample(data, max_items, 0)
    ds = ItemDataset(data, backbone.preprocess, precompute=False)
    device, was_training = next(backbone.parameters()).device, backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, len(ds), batch_size):
            inputs = _to_device(ds.collate(list(range(start, min(start + batch_size, len(ds)))))["inputs"], device)
            out.append(backbone.source_head(backbone.forward_features(inputs)).argmax(-1).cpu().numpy())
    finally:
        backbone.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def source_agreement(before: np.ndarray, after: np.ndarray) -> float:
    """Share of items whose source-head class is the same before and after adaptation (NaN if none)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"source predictions differ in shape: {before.shape} vs {after.shape}")
    return float((before == after).mean()) if before.size else float("nan")


__all__ = ["REGULARIZERS", "Regularizer", "RegularizerOptions", "L2SP", "EWC", "LwF", "BSS", "bss_penalty",
           "build_regularizer", "changes_backbone", "check_allowed", "diagonal_fisher", "register_regularizer",
           "regularized_step", "source_agreement", "source_predictions", "validate_fields"]

