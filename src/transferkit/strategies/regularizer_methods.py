"""The built-in knowledge-preserving penalties: L2-SP, EWC (with its diagonal Fisher), LwF and BSS.

Each registers itself in :data:`~transferkit.strategies.regularizer_base.REGULARIZERS`
on import, with its options dataclass beside it.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.constraints import Interval
from transferkit.data.batches import to_device
from transferkit.data.dataset import TaskData
from transferkit.data.streaming import is_stream
from transferkit.errors import ConfigError
from transferkit.strategies.base import ItemDataset, TransferModel
from transferkit.strategies.regularizer_base import Regularizer, RegularizerOptions, register_regularizer
from transferkit.tasks import get_task


def _zero(model: nn.Module) -> torch.Tensor:
    return torch.zeros((), device=next(model.parameters()).device)


def _trainable_backbone(model: TransferModel) -> dict[str, nn.Parameter]:
    """Pre-trained parameters that may train (after ``prepare``); the source head never does."""
    return {n: p for n, p in model.backbone.named_parameters() if p.requires_grad and not n.startswith("source_head.")}


@dataclass
class L2SPOptions(RegularizerOptions):
    head_weight: float = field(default=0.01, metadata={"help": "beta: L2 weight on the new head's matrices"})

    _parameter_constraints = {"head_weight": [Interval("number", 0, None)]}


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

    _parameter_constraints = {"fisher_samples": [Interval("int", 1, None)]}

    def validate(self) -> None:
        if self.fisher_data is not None and not isinstance(self.fisher_data, (str, os.PathLike)):
            raise ConfigError(f"The 'fisher_data' parameter of EWCOptions must be a path or a built-in data set "
                              f"name. Got {self.fisher_data!r} instead.")


def _sampled_nll(outputs: torch.Tensor, task: str, generator: torch.Generator) -> torch.Tensor:
    """-log p(y | x) with y drawn from the model's own predictive distribution (the true Fisher)."""
    outputs = outputs.float()
    kind = get_task(task).target_kind
    if kind == "class":
        y = torch.multinomial(outputs.softmax(-1).detach().cpu(), 1, generator=generator).squeeze(-1)
        return F.cross_entropy(outputs, y.to(outputs.device), reduction="sum")
    if kind == "multi-hot":
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
    # the source head is an ImageNet-style classifier: one class per item
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
                nll = _sampled_nll(head(bb.forward_features(to_device(one, device))), task, gen)
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
            if is_stream(train):
                raise ConfigError(f"ewc estimates the Fisher on {self.options.fisher_samples} training items drawn "
                                  f"from memory; '{train.name}' is a stream. Give fisher_data (a path or built-in "
                                  f"data set) in regularizer_options, or use l2sp.")
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

    _parameter_constraints = {"temperature": [Interval("number", 0, None, closed="neither")]}


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
            inputs = to_device(batch["inputs"], features.device)
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

    _parameter_constraints = {"k": [Interval("int", 1, None)]}


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
