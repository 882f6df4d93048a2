"""Continual learning: experiences trained one after another, and what is remembered of the earlier ones.

Learners, in the :data:`CONTINUAL` registry (not in ``STRATEGIES``: they train
a stream, not one data set). Each is a :class:`~transferkit.strategies.base.Strategy`
run by the generic loop once per experience, with hooks before and after:

* ``naive``: plain sequential fine-tuning, the baseline that forgets.
* ``ewc``: online EWC (Schwarz et al., "Progress & Compress", ICML 2018,
  https://arxiv.org/abs/1805.06370): after each experience a running Fisher
  ``F* <- gamma F* + F_i`` and the anchor ``w*`` are updated; the loss adds
  ``lambda/2 sum F* (w - w*)^2``. ``F_i`` is the true diagonal Fisher of
  :func:`~transferkit.strategies.regularizers.diagonal_fisher` on the
  experience's data (labels sampled from the model), scaled to mean 1 as the
  ``ewc`` regularizer does.
* ``lwf``: Learning without Forgetting (Li & Hoiem 2016, https://arxiv.org/abs/1606.09282):
  on the new data, keep the old heads' outputs of the model frozen at the end
  of the previous experience, ``lambda T^2 KL(softmax(z0/T) || softmax(z/T))``
  averaged over the old heads (class-incremental: the old classes' logits).
* ``replay``: experience replay from a bounded, class-balanced memory
  (:class:`ReplayBuffer`); every batch is mixed with as many memory items.
* ``progressive``: progressive neural networks (Rusu et al. 2016,
  https://arxiv.org/abs/1606.04671): a new column per experience (a fresh copy
  of the backbone at its initial weights) with lateral adapters from every
  earlier column's hidden layers; earlier columns, adapters and heads are
  frozen (``requires_grad=False``, BatchNorm in eval) and stay bit-identical.
  Needs the task id at test (task and domain scenarios).

:func:`transferkit.workflows.continual.train_stream` runs a learner over a :class:`~transferkit.data.streams.Stream`
and returns the accuracy matrix and its metrics
(:func:`~transferkit.evaluation.continual.continual_metrics`).

Example:
    >>> stream = split_by_classes(train, 2, test=test, scenario="task")       # doctest: +SKIP
    >>> r = train_stream("small-cnn:28", stream, "replay", {"buffer_size": 200},  # doctest: +SKIP
    ...                  TrainConfig(epochs=2, lr=1e-3, head_lr=1e-3))
    >>> r.metrics["forgetting"]                                                  # doctest: +SKIP
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval
from transferkit.data.dataset import TaskData
from transferkit.data.streams import SCENARIOS, Experience, Stream
from transferkit.errors import ConfigError
from transferkit.registry import Registry
from transferkit.strategies.base import (ItemDataset, StepContext, Strategy, StrategyConfig, TrainDefaults,
                                         predict_outputs)
from transferkit.strategies.continual_models import ContinualModel, ExperienceDataset, ProgressiveModel, ReplayBuffer
from transferkit.strategies.regularizers import diagonal_fisher

CONTINUAL: Registry[type["ContinualLearner"]] = Registry("continual strategy")


def register_continual(cls: type["ContinualLearner"]) -> type["ContinualLearner"]:
    """Class decorator: register ``cls`` in :data:`CONTINUAL` under ``cls.name``."""
    CONTINUAL.register(cls.name, cls)
    return cls


# ---------------------------------------------------------------- learners


@dataclass
class ContinualConfig(StrategyConfig):
    """Options of a continual learner (none for ``naive``)."""


class ContinualLearner(Strategy):
    """Base of the learners: sequential fine-tuning per experience; subclasses add hooks and a penalty."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrategyConfig]] = ContinualConfig
    defaults: ClassVar[TrainDefaults] = TrainDefaults(epochs=1, lr=1e-3, head_lr=1e-3)
    scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    trains_old_heads: ClassVar[bool] = False  # whether heads of earlier tasks get gradients (replay, lwf)

    def check_stream(self, stream: Stream) -> None:
        if stream.scenario not in self.scenarios:
            raise ConfigError(f"Continual strategy '{self.name}' supports the {', '.join(self.scenarios)} scenario(s); "
                              f"stream '{stream.name}' is {stream.scenario}-incremental.")

    def build_model(self, backbone: Backbone, stream: Stream) -> ContinualModel:
        return ContinualModel(backbone, stream.head_sizes(), stream.scenario)

    def begin_experience(self, model: ContinualModel, exp: Experience, stream: Stream) -> None:
        """Before training ``exp``: the active task, the grown head."""
        self.task_, model.active = exp.task_id, exp.task_id
        if stream.scenario == "class":
            model.grow(stream.head_sizes()[exp.task_id])

    def end_experience(self, model: ContinualModel, exp: Experience) -> None:
        """After training ``exp`` (anchors, teachers, memory). Default: nothing."""

    def train_dataset(self, model: ContinualModel, data: TaskData) -> ExperienceDataset:
        self.dataset_ = ExperienceDataset(data, model.backbone.preprocess, self.task_)
        return self.dataset_

    def param_groups(self, model: ContinualModel, lr: float, head_lr: float) -> list[dict]:
        body, new = model.trainable(self.task_, self.trains_old_heads)
        groups = ({"params": [p for p in body if p.requires_grad], "lr": lr, "name": "backbone"},
                  {"params": [p for p in new if p.requires_grad], "lr": head_lr, "name": "head"})
        return [g for g in groups if g["params"]]

    def penalty(self, model: ContinualModel, batch: dict, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted extra loss terms by name. Default: none."""
        return {}

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        inner = getattr(model, "module", model)
        logits, features = inner.task_logits(batch["inputs"], batch["task_ids"])
        loss = F.cross_entropy(logits, batch["targets"].long().to(logits.device))
        terms = self.penalty(inner, batch, features)
        if not terms:
            return {"loss": loss}
        return {"loss": loss + sum(terms.values()), "task_loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


@register_continual
class Naive(ContinualLearner):
    """Naive: plain sequential fine-tuning, the baseline that forgets."""

    name = "naive"


@dataclass
class EWCConfig(ContinualConfig):
    weight: float = field(default=1.0, metadata={"help": "lambda: strength of the pull toward the anchor (the Fisher has mean 1)"})
    gamma: float = field(default=1.0, metadata={"help": "decay of the running Fisher per experience (online EWC)"})
    fisher_samples: int = field(default=256, metadata={"help": "items of each experience the Fisher is estimated on"})

    _parameter_constraints = {
        "weight": [Interval("number", 0, None)],
        "gamma": [Interval("number", 0, 1)],
        "fisher_samples": [Interval("int", 1, None)],
    }


class _Features(nn.Module):
    """The view of a continual model that :func:`diagonal_fisher` reads as a backbone (no source head)."""

    def __init__(self, model: ContinualModel, task_id: int):
        super().__init__()
        self.model, self.task_id, self.source_head, self.preprocess = model, task_id, None, model.backbone.preprocess

    def forward_features(self, inputs) -> torch.Tensor:
        return self.model.features(inputs, self.task_id)


class _FisherView(nn.Module):
    def __init__(self, model: ContinualModel, task_id: int):
        super().__init__()
        self.backbone, self.head, self.task = _Features(model, task_id), model.head[model.head_index(task_id)], "classification"
        self.train(model.training)


@register_continual
class OnlineEWC(ContinualLearner):
    """Online EWC: a running diagonal Fisher pulls the weights toward their value after the last experience."""

    name = "ewc"
    Config = EWCConfig

    def end_experience(self, model, exp) -> None:
        body, head = model.trainable(exp.task_id, False)
        ids = {id(p) for p in body + head}
        params = {n: p for n, p in model.named_parameters() if id(p) in ids}
        fisher = diagonal_fisher(_FisherView(model, exp.task_id), exp.train, params, self.config.fisher_samples,
                                 seed=exp.task_id)
        mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
        fisher = {n: f / mean for n, f in fisher.items()} if mean > 0 else fisher
        old = getattr(self, "fisher_", {})
        for n, f in fisher.items():  # a head that grew since: its earlier rows keep their Fisher
            if n in old:
                prev = torch.zeros_like(f)
                prev[tuple(slice(0, s) for s in old[n].shape)] = old[n]
                fisher[n] = self.config.gamma * prev + f
        self.fisher_ = {**{n: self.config.gamma * f for n, f in old.items() if n not in fisher}, **fisher}
        self.anchor_ = {**getattr(self, "anchor_", {}), **{n: p.detach().clone() for n, p in params.items()}}

    def penalty(self, model, batch, features):
        if not getattr(self, "fisher_", None):
            return {}
        params, total = dict(model.named_parameters()), features.new_zeros((), dtype=torch.float32)
        for n, f in self.fisher_.items():
            w0 = self.anchor_[n]
            w = params[n][tuple(slice(0, s) for s in w0.shape)]  # the rows that existed at the anchor
            total = total + (f * (w - w0).pow(2)).sum()
        return {"ewc": 0.5 * self.config.weight * total}


@dataclass
class LwFConfig(ContinualConfig):
    weight: float = field(default=1.0, metadata={"help": "lambda: weight of the distillation term"})
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature T"})

    _parameter_constraints = {
        "weight": [Interval("number", 0, None)],
        "temperature": [Interval("number", 0, None, closed="neither")],
    }


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``, batch mean: the ``lwf`` regularizer's term."""
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                            reduction="batchmean", log_target=True)


@register_continual
class LwFLearner(ContinualLearner):
    """LwF: keep the previous model's outputs for the old tasks on the new data (distillation)."""

    name = "lwf"
    Config = LwFConfig
    trains_old_heads = True

    def begin_experience(self, model, exp, stream) -> None:
        # the teacher is the model as it ended the previous experience, before its head grows
        self.teacher_ = copy.deepcopy(model).requires_grad_(False).eval() if exp.task_id > 0 else None
        super().begin_experience(model, exp, stream)

    def penalty(self, model, batch, features):
        if self.teacher_ is None:
            return {}
        with torch.no_grad():
            old = self.teacher_.features(batch["inputs"], self.task_)
        if model.per_task:
            pairs = [(model.head[t](features), self.teacher_.head[t](old)) for t in range(self.task_)]
        else:
            target = self.teacher_.head[0](old)
            pairs = [(model.head[0](features)[:, :target.shape[1]], target)]
        kl = sum(distillation(s, t, self.config.temperature) for s, t in pairs) / len(pairs)
        return {"lwf": self.config.weight * kl}

    def end_experience(self, model, exp) -> None:
        self.teacher_ = None


@dataclass
class ReplayConfig(ContinualConfig):
    buffer_size: int = field(default=200, metadata={"help": "items the memory holds at most (class-balanced)"})
    replay_batch: int | None = field(default=None, metadata={"help": "memory items per batch (default: the batch size)"})

    _parameter_constraints = {"replay_batch": [Interval("int", 1, None), NONE]}

    def validate(self) -> None:
        ReplayBuffer(self.buffer_size)  # refuses 0, negatives and non-integers


@register_continual
class Replay(ContinualLearner):
    """Experience replay: every batch mixed with items of a bounded class-balanced memory of earlier experiences."""

    name = "replay"
    Config = ReplayConfig
    trains_old_heads = True
    modalities = ("image", "tabular")

    def train_dataset(self, model, data):
        if not hasattr(self, "memory_"):
            self.memory_ = ReplayBuffer(self.config.buffer_size, seed=self.task_)
        self.dataset_ = ExperienceDataset(data, model.backbone.preprocess, self.task_, self.memory_,
                                          self.config.replay_batch)
        return self.dataset_

    def end_experience(self, model, exp) -> None:
        ds = self.dataset_
        self.memory_.add(ds.tensor, torch.as_tensor(np.asarray(exp.train.targets)), exp.task_id)


@dataclass
class ProgressiveConfig(ContinualConfig):
    """No options: the lateral adapters follow the backbone's stages."""


@register_continual
class Progressive(ContinualLearner):
    """Progressive networks: a new column per task, lateral adapters, earlier columns frozen."""

    name = "progressive"
    Config = ProgressiveConfig
    scenarios = ("task", "domain")

    def build_model(self, backbone, stream) -> ProgressiveModel:
        return ProgressiveModel(backbone, stream.head_sizes(), stream.scenario)

    def begin_experience(self, model, exp, stream) -> None:
        super().begin_experience(model, exp, stream)
        while len(model.columns) <= exp.task_id:
            model.add_column(model.backbone.preprocess(list(exp.train.items[:2])))
        model.freeze_before(exp.task_id)

    def on_epoch_start(self, model, epoch, epochs) -> None:
        getattr(model, "module", model).freeze_before(self.task_)  # the loop put every column in train mode


# ---------------------------------------------------------------- the stream loop


@dataclass
class ContinualResult:
    """What :func:`~transferkit.workflows.continual.train_stream` measured.

    Attributes:
        accuracy: ``[T, T]``: row ``i`` after training experience ``i``, column ``j`` test accuracy on experience ``j``.
        random_init: ``[T]`` accuracy of the freshly initialised model (``None`` in the class scenario, where
            a model cannot predict classes it has not met, so forward transfer is undefined).
        metrics: :func:`continual_metrics` of the two.
        history: one row per epoch, with its ``experience``.
        model: the final model.
    """

    learner: str
    scenario: str
    accuracy: np.ndarray
    random_init: np.ndarray | None
    metrics: dict[str, float]
    history: list[dict]
    model: ContinualModel
    seconds: float
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"learner": self.learner, "scenario": self.scenario, "accuracy": self.accuracy.tolist(),
                "random_init": None if self.random_init is None else self.random_init.tolist(),
                "metrics": self.metrics, "options": self.options, "seconds": self.seconds}


def stream_backbone(spec, stream: Stream, options: dict | None) -> Backbone:
    if isinstance(spec, Backbone):
        return copy.deepcopy(spec)
    if callable(spec) and not isinstance(spec, str):
        return spec()
    from transferkit.backbones import load_backbone, split_spec

    options = dict(options or {})
    data = stream[0].train
    if split_spec(spec)[0] == "mlp" and data.modality == "tabular":
        options.setdefault("in_features", int(np.asarray(data.items).shape[1]))
    return load_backbone(spec, **options)


@torch.no_grad()
def experience_accuracy(model: ContinualModel, task_id: int, dataset: ItemDataset) -> float:
    model.active = task_id
    probs = predict_outputs(model, dataset.data, dataset=dataset)
    return float((probs.argmax(1) == np.asarray(dataset.data.targets)).mean())


__all__ = ["CONTINUAL", "ContinualConfig", "ContinualLearner", "ContinualModel", "ContinualResult", "EWCConfig",
           "ExperienceDataset", "LwFConfig", "LwFLearner", "Naive", "OnlineEWC", "Progressive", "ProgressiveModel",
           "Replay", "ReplayBuffer", "ReplayConfig", "distillation", "register_continual", "stream_backbone", "experience_accuracy"]
