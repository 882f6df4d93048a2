"""Multi-task learning: several tasks at once, each with its own head, loss and metrics.

Sharing:

* ``hard``: one shared backbone, one :func:`linear_head` per task
  (Caruana 1997).
* ``soft``: a copy of the backbone per task, tied by an L2 penalty
  ``soft_penalty * sum_{a<b} sum_k ||theta_a,k - theta_b,k||^2`` over
  corresponding parameters (Duong et al. 2015, https://aclanthology.org/P15-2139).

Task loss weighting (``L_t`` the loss of task ``t``):

* ``fixed``: ``sum_t w_t L_t`` (``weights``, default 1 each).
* ``uncertainty``: ``sum_t exp(-s_t) L_t + s_t`` with learned log-variances
  ``s_t`` (halved for regression), Kendall et al. 2018, https://arxiv.org/abs/1705.07115.
* ``pcgrad``: per-task gradients of ``w_t L_t`` over the shared parameters;
  where two conflict (negative dot product) one is projected onto the normal
  plane of the other, in random order, and the projections are summed
  (Yu et al. 2020, https://arxiv.org/abs/2001.06782). The step returns a
  surrogate loss whose gradient is the projected one and whose value is the
  real weighted loss, so the generic loop applies it unchanged.
* ``gradnorm``: learned weights ``w_t`` (renormalised to sum to T) trained so
  that the gradient norms ``G_t = ||grad_W w_t L_t||`` on the last shared layer
  group ``W`` move toward ``mean(G) * r_t^alpha``, ``r_t`` the task's relative
  inverse training rate ``(L_t / L_t(0)) / mean``: a task that lags gets more
  weight (Chen et al. 2018, https://arxiv.org/abs/1711.02257).

Training runs in :class:`transferkit.training.Trainer`; the batches of shared
inputs hold one input tensor and a target per task, batches of separate data
one input and target per task (smaller tasks cycle through their items, so an
epoch is the largest task's length). Handed a plain :class:`TaskData`, the
strategy trains one task and returns a :class:`TransferModel`, like any other.

Example:
    >>> from transferkit.data.multitask import load_penguins_multitask
    >>> train, test = load_penguins_multitask(seed=0)                                 # doctest: +SKIP
    >>> from transferkit.workflows.multitask import fit_multitask
    >>> model, history = fit_multitask("mlp:64x64", train, weighting="uncertainty")    # doctest: +SKIP
    >>> evaluate_multitask(model, test)["sex"]["accuracy"]                            # doctest: +SKIP
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import Interval, Options, validate_params
from transferkit.data.batches import run_batches
from transferkit.data.dataset import TaskData
from transferkit.data.multitask import MultiTaskData
from transferkit.tasks import get_task
from transferkit.errors import ConfigError, DataError, unknown_name
from transferkit.strategies.base import (ItemDataset, StepContext, Strategy, StrategyConfig, TrainDefaults, TransferModel,
                                         frozen_batchnorm_to_eval, linear_head, predict_outputs, register_strategy,
                                         task_loss)

SHARING = ("hard", "soft")
WEIGHTING = ("fixed", "uncertainty", "pcgrad", "gradnorm")


@dataclass
class MultiTaskConfig(StrategyConfig):
    sharing: str = field(default="hard",
                         metadata={"help": f"one of {', '.join(SHARING)}: one backbone, or one per task"})
    weighting: str = field(default="fixed", metadata={"help": f"task loss weighting: {', '.join(WEIGHTING)}"})
    weights: dict | None = field(default=None, metadata={"help": "fixed weight per task name (default 1 each)"})
    soft_penalty: float = field(default=1e-3, metadata={"help": "L2 tie between corresponding weights (soft sharing)"})
    gradnorm_alpha: float = field(default=1.5,
                                  metadata={"help": "GradNorm's asymmetry alpha (0: equal gradient norms)"})
    finetune: bool = field(default=True, metadata={"help": "train the backbone(s); False trains the heads only"})
    dropout: float = field(default=0.0, metadata={"help": "dropout before each task head"})

    _parameter_constraints = {
        "sharing": [Options(*SHARING)],
        "weighting": [Options(*WEIGHTING)],
        "soft_penalty": [Interval("number", 0, None)],
        "gradnorm_alpha": [Interval("number", 0, None)],
        "dropout": [Interval("number", 0, 0.99)],
    }

    def validate(self) -> None:
        if self.weights is not None:
            if not isinstance(self.weights, dict):
                raise ConfigError(f"The 'weights' parameter of MultiTaskConfig must be a dict task -> weight. "
                                  f"Got {self.weights!r} instead.")
            per_task = {f"weights[{task!r}]": w for task, w in self.weights.items()}
            validate_params("MultiTaskConfig", per_task, dict.fromkeys(per_task, [Interval("number", 0, None)]))
            if self.weighting in ("uncertainty", "gradnorm"):
                raise ConfigError(f"weighting={self.weighting!r} learns the task weights; do not also give 'weights'.")
        if self.sharing == "soft" and self.weighting in ("pcgrad", "gradnorm"):
            raise ConfigError(f"weighting={self.weighting!r} works on gradients of shared parameters, and soft "
                              f"sharing shares none: use sharing='hard'.")


class MultiTaskModel(nn.Module):
    """Backbone(s) and one head per task; ``forward`` returns ``{task: outputs}``.

    Args:
        backbone: the pre-trained backbone (soft sharing deep-copies it per task).
        tasks: task name -> ``(kind, label_names, num_outputs)``.
        sharing: ``"hard"`` or ``"soft"``.
        dropout: dropout before each head.
        uncertainty: add a learned log-variance per task (``log_vars``).
        gradnorm: add a learned weight per task (``task_weights``, GradNorm).
    """

    def __init__(self, backbone: Backbone, tasks: dict[str, tuple[str, list | None, int]], sharing: str = "hard",
                 dropout: float = 0.0, uncertainty: bool = False, gradnorm: bool = False):
        super().__init__()
        self.sharing = sharing
        self.task_kinds = {t: spec[0] for t, spec in tasks.items()}
        self.label_names = {t: spec[1] for t, spec in tasks.items()}
        #: what the generic loop reads (its primary metric); per-task kinds are in ``task_kinds``
        self.task = next(iter(self.task_kinds.values()))
        if sharing == "hard":
            self.backbone = backbone
        else:
            self.backbones = nn.ModuleDict({t: copy.deepcopy(backbone) for t in tasks})
        self.heads = nn.ModuleDict({t: linear_head(backbone.num_features, max(n, 1), dropout)
                                    for t, (_, _, n) in tasks.items()})
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if uncertainty else None
        self.task_weights = nn.Parameter(torch.ones(len(tasks))) if gradnorm else None

    @property
    def task_names(self) -> list[str]:
        return list(self.heads)

    def backbone_for(self, task: str) -> Backbone:
        self._check_task(task)
        return self.backbone if self.sharing == "hard" else self.backbones[task]

    def backbone_list(self) -> list[Backbone]:
        return [self.backbone] if self.sharing == "hard" else list(self.backbones.values())

    def _check_task(self, task: str) -> None:
        if task not in self.heads:
            raise unknown_name("task", str(task), self.heads)

    def forward(self, inputs, separate: bool = False) -> dict[str, torch.Tensor]:
        """Shared inputs feed every head (hard sharing: one backbone pass); ``separate``: ``inputs[task]`` each."""
        if separate:
            return {t: self.heads[t](self.backbone_for(t).forward_features(x)) for t, x in inputs.items()}
        if self.sharing == "hard":
            feats = self.backbone.forward_features(inputs)
            return {t: head(feats) for t, head in self.heads.items()}
        return {t: self.heads[t](self.backbones[t].forward_features(inputs)) for t in self.heads}

    def soft_penalty(self) -> torch.Tensor:
        """``sum_{a<b} sum_k ||theta_a,k - theta_b,k||^2`` over the backbones' trainable parameters (0 for hard)."""
        bbs = self.backbone_list()
        device = next(self.parameters()).device
        total = torch.zeros((), device=device)
        params = [dict(bb.named_parameters()) for bb in bbs]
        for a in range(len(bbs)):
            for b in range(a + 1, len(bbs)):
                for name, p in params[a].items():
                    q = params[b][name]
                    if p.requires_grad or q.requires_grad:
                        total = total + (p - q).pow(2).sum()
        return total

    def task_model(self, task: str) -> TransferModel:
        """That task's backbone and head as a :class:`TransferModel` (shares their weights): bundle, serve, export."""
        self._check_task(task)
        return TransferModel(self.backbone_for(task), self.heads[task], self.task_kinds[task], self.label_names[task])

    def outputs_to_numpy(self, task: str, logits: torch.Tensor) -> np.ndarray:
        return self.task_model(task).outputs_to_numpy(logits)


def pcgrad_project(grads: torch.Tensor, order: list[list[int]] | None = None, eps: float = 1e-12) -> torch.Tensor:
    """PCGrad: remove from each task gradient its component along every task gradient it conflicts with.

    Args:
        grads: ``[T, P]`` one flattened gradient per task.
        order: per task ``i``, the order of the other tasks to project against (default: random).

    Returns:
        ``[T, P]`` the projected gradients (their sum is the update direction).
    """
    n = grads.shape[0]
    out = grads.clone()
    for i in range(n):
        others = order[i] if order is not None else [j for j in torch.randperm(n).tolist() if j != i]
        for j in others:
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] = out[i] - dot / (grads[j] @ grads[j] + eps) * grads[j]
    return out


class MultiTaskDataset:
    """Batches for :class:`transferkit.training.Trainer`: one preprocessed input per batch (shared) or per task."""

    def __init__(self, data: MultiTaskData, preprocess):
        self.data = data
        self.shared = data.shared
        first = next(iter(data.tasks.values()))
        if self.shared:
            self.inputs = ItemDataset(first, preprocess)
        else:
            self.inputs = {t: ItemDataset(d, preprocess) for t, d in data.tasks.items()}
        self.targets = {t: np.asarray(d.targets) for t, d in data.tasks.items()}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        if self.shared:
            return {"inputs": self.inputs.collate(indices)["inputs"], "separate": False,
                    "targets": {t: torch.as_tensor(y[indices]) for t, y in self.targets.items()}}
        idx = {t: [i % len(y) for i in indices] for t, y in self.targets.items()}
        return {"inputs": {t: ds.collate(idx[t])["inputs"] for t, ds in self.inputs.items()}, "separate": True,
                "targets": {t: torch.as_tensor(self.targets[t][idx[t]]) for t in self.targets}}


def _unwrap(model: nn.Module) -> MultiTaskModel:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


@register_strategy
class MultiTask(Strategy):
    """Hard or soft parameter sharing over several tasks, with fixed, uncertainty, PCGrad or GradNorm weighting."""

    name = "multi-task"
    Config = MultiTaskConfig
    tasks = ("classification", "multilabel", "regression")  # its task heads read one pooled vector per item
    defaults = TrainDefaults(epochs=10, lr=1e-4, head_lr=1e-3)

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self._initial_losses = None  # GradNorm's L_t(0), taken at the first step

    def check_data(self, backbone: Backbone | None, data) -> None:
        tasks = data.tasks.values() if isinstance(data, MultiTaskData) else [data]
        for d in tasks:
            super().check_data(backbone, d)
        names = data.names if isinstance(data, MultiTaskData) else ["task"]
        unknown = sorted(set(self.config.weights or {}) - set(names))
        if unknown:
            raise ConfigError(f"'weights' names unknown task(s) {', '.join(map(repr, unknown))}. "
                              f"Tasks: {', '.join(names)}.")

    def prepare(self, backbone: Backbone, data) -> MultiTaskModel:
        data = data if isinstance(data, MultiTaskData) else MultiTaskData.single(data)
        c = self.config
        if getattr(backbone, "source_head", None) is not None:
            backbone.source_head.requires_grad_(False)
        if not c.finetune:
            backbone.requires_grad_(False)
        tasks = {t: (d.task, d.label_names, d.num_outputs) for t, d in data.tasks.items()}
        if c.weighting == "gradnorm" and not any(p.requires_grad for g in backbone.layer_groups() for p in g):
            raise ConfigError("weighting='gradnorm' balances gradient norms on the shared backbone, which is frozen "
                              "(finetune=False): use 'fixed' or 'uncertainty'.")
        self._initial_losses = None
        return MultiTaskModel(backbone, tasks, c.sharing, c.dropout, uncertainty=c.weighting == "uncertainty",
                              gradnorm=c.weighting == "gradnorm")

    def train_dataset(self, model: MultiTaskModel, data) -> MultiTaskDataset:
        data = data if isinstance(data, MultiTaskData) else MultiTaskData.single(data, model.task_names[0])
        return MultiTaskDataset(data, model.backbone_list()[0].preprocess)

    def param_groups(self, model: MultiTaskModel, lr: float, head_lr: float) -> list[dict]:
        body = [p for bb in model.backbone_list() for p in bb.parameters() if p.requires_grad]
        head = [p for p in model.heads.parameters() if p.requires_grad]
        head += [p for p in (model.log_vars, model.task_weights) if p is not None]
        return [g for g in ({"params": body, "lr": lr, "name": "backbone"},
                            {"params": head, "lr": head_lr, "name": "heads"}) if g["params"]]

    def on_epoch_start(self, model: MultiTaskModel, epoch: int, epochs: int) -> None:
        for bb in model.backbone_list():
            frozen_batchnorm_to_eval(bb)

    def task_losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The unweighted loss of every task on ``batch``."""
        m = _unwrap(model)
        outputs = model(batch["inputs"], separate=batch["separate"])
        return {t: task_loss(outputs[t], batch["targets"][t], m.task_kinds[t]) for t in outputs}

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        c, m = self.config, _unwrap(model)
        losses = self.task_losses(model, batch)
        weights = c.weights or {}
        if c.weighting == "uncertainty":
            terms = {}
            for k, (t, loss) in enumerate(losses.items()):
                # Kendall et al.: 1/(2 sigma^2) for a Gaussian likelihood (values), 1/sigma^2 for a softmax.
                half = 0.5 if get_task(m.task_kinds[t]).target_kind == "value" else 1.0
                terms[t] = half * (torch.exp(-m.log_vars[k]) * loss + m.log_vars[k])
        elif c.weighting == "gradnorm":
            with torch.no_grad():  # GradNorm keeps the weights positive and summing to the number of tasks
                m.task_weights.clamp_(min=1e-3).mul_(len(losses) / m.task_weights.sum())
            terms = {t: m.task_weights[k].detach() * loss for k, (t, loss) in enumerate(losses.items())}
        else:
            terms = {t: float(weights.get(t, 1.0)) * loss for t, loss in losses.items()}
        total = sum(terms.values())
        out = {f"loss_{t}": loss.detach() for t, loss in losses.items()}
        if c.sharing == "soft" and len(losses) > 1 and c.soft_penalty > 0:
            penalty = m.soft_penalty()
            total = total + c.soft_penalty * penalty
            out["soft_penalty"] = penalty.detach()
        if c.weighting == "pcgrad" and len(terms) > 1:
            total = self._pcgrad_surrogate(m, terms, total)
        if c.weighting == "gradnorm":
            total = total + self._gradnorm_surrogate(m, losses)
            out.update({f"weight_{t}": w.detach() for t, w in zip(losses, m.task_weights)})
        return {"loss": total, **out}

    def _pcgrad_surrogate(self, m: MultiTaskModel, terms: dict, total: torch.Tensor) -> torch.Tensor:
        """A loss whose gradient is PCGrad's on the shared parameters and the plain one elsewhere; value = ``total``."""
        shared = [p for p in m.backbone.parameters() if p.requires_grad]
        if not shared:
            return total
        others = [p for p in m.parameters() if p.requires_grad and all(p is not q for q in shared)]
        per_task = []
        for term in terms.values():
            gs = torch.autograd.grad(term, shared, retain_graph=True, allow_unused=True)
            per_task.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                       for g, p in zip(gs, shared)]))
        projected = pcgrad_project(torch.stack(per_task)).sum(0)
        rest = torch.autograd.grad(total, others, retain_graph=False, allow_unused=True) if others else []
        surrogate, offset = total.new_zeros(()), 0
        for p in shared:
            surrogate = surrogate + (p * projected[offset:offset + p.numel()].view_as(p).detach()).sum()
            offset += p.numel()
        for p, g in zip(others, rest):
            if g is not None:
                surrogate = surrogate + (p * g.detach()).sum()
        return surrogate + (total.detach() - surrogate.detach())

    def _gradnorm_surrogate(self, m: MultiTaskModel, losses: dict) -> torch.Tensor:
        """A zero-valued term whose gradient w.r.t. ``task_weights`` is GradNorm's (and nothing else's)."""
        shared = [p for p in m.backbone.layer_groups()[-1] if p.requires_grad]
        if not shared:  # the top group is frozen: the highest group that trains
            shared = next([p for p in g if p.requires_grad] for g in reversed(m.backbone.layer_groups())
                          if any(p.requires_grad for p in g))
        norms = []
        for loss in losses.values():  # G_t = w_t * ||grad_W L_t||: linear in w_t, no second-order graph needed
            gs = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.detach() ** 2).sum() for g in gs if g is not None) + 1e-12))
        current = torch.stack([loss.detach() for loss in losses.values()])
        if self._initial_losses is None:
            self._initial_losses = current.clamp(min=1e-8)
        g = m.task_weights * torch.stack(norms)
        ratio = current / self._initial_losses
        target = (g.mean() * (ratio / ratio.mean()) ** self.config.gradnorm_alpha).detach()
        gn_loss = (g - target).abs().sum()
        return gn_loss - gn_loss.detach()

    def predict(self, model, data: TaskData) -> np.ndarray:
        if isinstance(model, MultiTaskModel):
            raise DataError("A MultiTaskModel predicts per task: use evaluate_multitask or model.task_model(name).")
        return predict_outputs(model, data)

    def fit(self, backbone: Backbone, train, val, trainer):
        """Train on ``train`` (MultiTaskData, or one TaskData -> a one-task :class:`TransferModel`).

        The loop runs without validation (its early stopping reads one metric); with ``val`` given,
        the final epoch's per-task validation metrics are added to the last history row.
        """
        single = isinstance(train, TaskData)
        data = MultiTaskData.single(train) if single else train
        if not isinstance(data, MultiTaskData):
            raise DataError(f"multi-task trains on a MultiTaskData or a TaskData. Got {type(train).__name__}.")
        self.check_data(backbone, data)
        seed = getattr(getattr(trainer, "config", None), "seed", None)
        if seed is not None:
            torch.manual_seed(seed)
        model = self.prepare(backbone, data)
        model, history = trainer.fit(self, model, data, None)
        if val is not None:
            val = MultiTaskData.single(val, data.names[0]) if isinstance(val, TaskData) else val
            scores = evaluate_multitask(model, val)
            history[-1].update({f"val_{t}_{k}": v for t, s in scores.items() for k, v in s.items()
                                if isinstance(v, float)})
        return (model.task_model(data.names[0]) if single else model), history


# ---------------------------------------------------------------- public functions


def evaluate_multitask(model: MultiTaskModel, test: MultiTaskData, batch_size: int = 64) -> dict[str, dict]:
    """Per-task metrics (:func:`transferkit.evaluation.compute_metrics`) of ``model`` on the tasks of ``test``.

    Raises:
        UnknownNameError: ``test`` holds a task the model has no head for.
    """
    from transferkit.tasks import compute_metrics

    if not isinstance(test, MultiTaskData):
        raise DataError(f"evaluate_multitask needs a MultiTaskData. Got {type(test).__name__}.")
    for task in test.names:
        model._check_task(task)
    outputs = _predict_all(model, test, batch_size)
    out = {}
    for task, data in test.tasks.items():
        out[task] = compute_metrics(model.task_kinds[task], data.targets, outputs[task], model.label_names[task])
    return out


def _predict_all(model: MultiTaskModel, test: MultiTaskData, batch_size: int) -> dict[str, np.ndarray]:
    """Outputs per task; with shared inputs one pass over the items feeds every head."""
    if not test.shared or len(test.names) == 1:
        return {t: predict_outputs(model.task_model(t), d, batch_size) for t, d in test.tasks.items()}
    model.eval()
    first = next(iter(test.tasks.values()))
    ds = ItemDataset(first, model.backbone_list()[0].preprocess, precompute=False)
    outs: dict[str, list] = {t: [] for t in test.names}
    for _, _, logits in run_batches(model, ds.inputs, len(ds), batch_size=batch_size):
        for t in test.names:
            outs[t].append(model.task_model(t).outputs_to_numpy(logits[t]))
    return {t: np.concatenate(v) for t, v in outs.items()}
