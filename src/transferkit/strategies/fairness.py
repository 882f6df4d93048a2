"""Fairness mitigation while fine-tuning: ``reweighing`` and ``adversarial-debiasing``.

Both are :class:`~transferkit.strategies.finetune.Finetune` (so ``train_last``,
``lr_decay``, regularizers, ... apply; ``train_last=0`` trains the head only)
that read the group of each training item from ``TaskData.sensitive``
(``fit(..., sensitive_column=...)``, CLI ``--sensitive-column``). Batches
carry it as ``batch["sensitive"]`` (group indices) through :class:`GroupItemDataset`.

* ``reweighing``: Kamiran–Calders sample weights ``P(g) P(y) / P(g, y)`` in the
  loss, so that label and group are independent in the weighted training data
  (Kamiran & Calders 2012, https://doi.org/10.1007/s10115-011-0463-8).
* ``adversarial-debiasing``: an adversary predicts the group from the model
  (its features, or its outputs as in Zhang et al. 2018) through a
  gradient-reversal layer, so the model learns to make the group unpredictable
  (Zhang, Lemoine & Mitchell, AIES 2018, https://arxiv.org/abs/1801.07593).

The adversary belongs to the strategy, not to the model: the saved bundle is
the plain backbone + head. Group metrics of the result are in
:func:`transferkit.evaluation.fairness.group_metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.constraints import NONE, Interval, Options
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.losses import dann_ramp, grad_reverse
from transferkit.evaluation.fairness import check_sensitive, kamiran_calders_weights
from transferkit.strategies.base import ItemDataset, StepContext, TransferModel, register_strategy, task_loss
from transferkit.strategies.finetune import Finetune, FinetuneConfig

ADVERSARY_INPUTS = ("features", "outputs", "outputs+label")


class GroupItemDataset(ItemDataset):
    """An :class:`ItemDataset` whose batches also hold ``"sensitive"`` (group indices) and optional ``"weights"``."""

    def __init__(self, data: TaskData, preprocess, groups: np.ndarray, weights: np.ndarray | None = None):
        super().__init__(data, preprocess)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)

    def collate(self, indices: list[int]) -> dict:
        batch = super().collate(indices)
        batch["sensitive"] = torch.as_tensor(self.groups[indices])
        if self.weights is not None:
            batch["weights"] = torch.as_tensor(self.weights[indices])
        return batch


class _GroupAware(Finetune):
    """Shared parts: the data check, the group index of each item, no mixing of examples."""

    tasks = ("classification",)
    dense = False

    needs_sensitive: ClassVar[bool] = True
    streams: ClassVar[bool] = False  # each item's group comes from the in-memory sensitive column
    #: the group names, in index order (set by :meth:`group_index`)
    group_names_: list[str] | None = None

    def check_data(self, backbone, data: TaskData) -> None:
        super().check_data(backbone, data)
        if data.sensitive is None:
            raise ConfigError(f"Strategy '{self.name}' needs the sensitive attribute (the group) of every training "
                              f"item, and '{data.name}' has none. Give the group column: Python "
                              f"fit(..., sensitive_column=COLUMN) or TaskData(sensitive=...); CLI --sensitive-column "
                              f"COLUMN; built-in penguins: sensitive_column='island' or 'sex'.")
        check_sensitive(data.sensitive, len(data), data.sensitive_name, where=data.name)
        if self.config.mixup > 0 or self.config.cutmix > 0:
            raise ConfigError(f"Strategy '{self.name}' weighs or classifies each example by its group; mixup and "
                              f"cutmix mix two examples' groups. Set mixup=0 and cutmix=0.")

    def group_index(self, data: TaskData) -> np.ndarray:
        """Each item's group as an index into :attr:`group_names_` (sorted names)."""
        groups = check_sensitive(data.sensitive, len(data), data.sensitive_name)
        names, index = np.unique(groups, return_inverse=True)
        self.group_names_ = [str(n) for n in names]
        return index


@register_strategy
class Reweighing(_GroupAware):
    """Fine-tuning with Kamiran–Calders sample weights: (group, label) cells weighed to independence.

    Kamiran & Calders, KAIS 2012, https://doi.org/10.1007/s10115-011-0463-8.
    Each item of group ``g`` and label ``y`` weighs ``w = P(g) P(y) / P(g, y)``
    (:func:`~transferkit.evaluation.fairness.kamiran_calders_weights`, mean 1);
    the loss is the batch mean of ``w`` times the cross-entropy. A group where
    a label is rarer than overall gets its examples of that label weighed up.
    ``train_last=0`` reweighs a head on frozen features only.
    """

    name = "reweighing"

    def train_dataset(self, model: TransferModel, data: TaskData) -> ItemDataset:
        groups = self.group_index(data)
        weights = kamiran_calders_weights(data.targets, data.sensitive, sensitive_name=data.sensitive_name)
        return GroupItemDataset(data, model.backbone.preprocess, groups, weights)

    def _task_step(self, model: nn.Module, batch: dict) -> dict:
        if "weights" not in batch:  # e.g. the learning-rate finder's plain batches
            return super()._task_step(model, batch)
        outputs = model(batch["inputs"])
        per_item = F.cross_entropy(outputs.float(), batch["targets"].long(), reduction="none",
                                   label_smoothing=self.config.label_smoothing)
        w = batch["weights"].to(per_item.dtype)
        if getattr(self, "class_weight_", None) is not None:  # class_weight=balanced on top of the group weights
            w = w * self.class_weight_.to(per_item.device, per_item.dtype)[batch["targets"].long()]
        return {"loss": (w * per_item).mean(), "unweighted_loss": per_item.mean().detach()}


@dataclass
class AdversarialDebiasingConfig(FinetuneConfig):
    weight: float = field(default=1.0, metadata={"help": "adversarial weight lambda: how hard the model hides the "
                                                         "group from the adversary (0: plain fine-tuning)"})
    adversary_input: str = field(default="features", metadata={
        "help": "what the adversary sees: features (the representation), outputs (logits: demographic parity, "
                "Zhang et al.) or outputs+label (logits given the true class: equalized odds)"})
    hidden: int = field(default=64, metadata={"help": "width of the adversary's hidden layer (0: a linear adversary)"})
    gamma: float = field(default=10.0, metadata={"help": "steepness of the weight ramp 2/(1+exp(-gamma p))-1 over "
                                                         "training progress p (0: full weight from the start)"})
    adversary_lr: float | None = field(default=None, metadata={"help": "adversary learning rate (None: the head's)"})

    _parameter_constraints = {
        "weight": [Interval("number", 0, None)],
        "hidden": [Interval("int", 0, None)],
        "gamma": [Interval("number", 0, None)],
        "adversary_lr": [Interval("number", 0, 10, closed="right"), NONE],
        "adversary_input": [Options(*ADVERSARY_INPUTS)],
    }


def adversary(in_features: int, groups: int, hidden: int) -> nn.Module:
    """The group classifier: one hidden ReLU layer (or linear with ``hidden=0``), one logit per group."""
    if hidden == 0:
        return nn.Linear(in_features, groups)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, groups))


@register_strategy
class AdversarialDebiasing(_GroupAware):
    """Fine-tuning against an adversary that predicts the sensitive group, through gradient reversal.

    Zhang, Lemoine & Mitchell, "Mitigating Unwanted Biases with Adversarial
    Learning", AIES 2018 (https://arxiv.org/abs/1801.07593). Loss: task loss +
    cross-entropy of the adversary on ``grad_reverse(a, lambda_p)``, with
    ``lambda_p = weight * (2 / (1 + exp(-gamma p)) - 1)`` ramped over training
    progress ``p`` (DANN's schedule, :func:`~transferkit.losses.dann_ramp`).
    The adversary learns to predict the group from ``a``; the model receives the
    reversed gradient and learns to hide it. ``a`` (``adversary_input``) is:

    * ``features``: the head's input ``[B, D]``, a representation that does not reveal the group;
    * ``outputs``: the logits ``[B, C]``: predictions independent of the group (demographic parity);
    * ``outputs+label``: the logits times the one-hot true class, and the class ``[B, C*C + C]``:
      predictions independent of the group given the class (equalized odds).

    Zhang et al. also subtract the projection of the task gradient on the
    adversary's; the gradient-reversal form here (as in Ganin et al.'s DANN and
    Edwards & Storkey 2016) leaves that term out.
    """

    name = "adversarial-debiasing"
    Config = AdversarialDebiasingConfig

    def _input_width(self, model: TransferModel, data: TaskData) -> int:
        c = max(data.num_outputs, 1)
        return {"features": model.backbone.num_features, "outputs": c, "outputs+label": c * c + c}[
            self.config.adversary_input]

    def prepare(self, backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        groups = len(np.unique(check_sensitive(data.sensitive, len(data), data.sensitive_name)))
        self.adversary_ = adversary(self._input_width(model, data), groups, self.config.hidden)
        return model

    def train_dataset(self, model: TransferModel, data: TaskData) -> ItemDataset:
        return GroupItemDataset(data, model.backbone.preprocess, self.group_index(data))

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        adv_lr = self.config.adversary_lr if self.config.adversary_lr is not None else head_lr
        return super().param_groups(model, lr, head_lr) + [
            {"params": list(self.adversary_.parameters()), "lr": adv_lr, "name": "adversary"}]

    def coefficient(self, ctx: StepContext | None) -> float:
        """The adversarial weight now: ``weight`` times the ramp (constant with ``gamma=0``)."""
        if self.config.gamma == 0:
            return self.config.weight
        return self.config.weight * dann_ramp((ctx or StepContext()).progress, self.config.gamma)

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        # the weight rides with the batch into _task_step (which the regularizers wrap)
        return super().step(model, {**batch, "adversary_weight": self.coefficient(ctx)}, ctx)

    def _adversary_input(self, features: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        kind = self.config.adversary_input
        if kind == "features":
            return features
        if kind == "outputs":
            return logits
        onehot = F.one_hot(targets.long(), logits.shape[-1]).to(logits.dtype)
        return torch.cat([(logits.unsqueeze(1) * onehot.unsqueeze(2)).flatten(1), onehot], dim=1)

    def _task_step(self, model: nn.Module, batch: dict) -> dict:
        if "sensitive" not in batch:  # e.g. the learning-rate finder's plain batches
            return super()._task_step(model, batch)
        captured: list[torch.Tensor] = []
        hook = getattr(model, "module", model).head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        try:  # one forward through the (possibly wrapped) model; the hook keeps the head's input
            logits = model(batch["inputs"])
        finally:
            hook.remove()
        cls = task_loss(logits, batch["targets"], batch["task"], self.config.label_smoothing,
                        getattr(self, "class_weight_", None))
        lam = batch.get("adversary_weight", self.config.weight)
        adv = self.adversary_
        if next(adv.parameters()).device != captured[0].device:
            adv.to(captured[0].device)  # in place: the optimizer keeps the same Parameter objects
        a = self._adversary_input(captured[0].float(), logits.float(), batch["targets"])
        group_logits = adv(grad_reverse(a, lam))
        adv_loss = F.cross_entropy(group_logits, batch["sensitive"].long())
        acc = (group_logits.argmax(-1) == batch["sensitive"]).float().mean()
        return {"loss": cls + adv_loss, "classifier_loss": cls.detach(),
                "adversary_loss": adv_loss.detach(), "adversary_acc": acc, "lambda": torch.tensor(lam)}
