"""Initialise a fine-tuned model's head from a linear probe on the frozen features (LP-FT).

A freshly initialised head on pre-trained features starts with logits near zero
and, for a few hundred optimizer steps, sends gradients of little use into the
backbone; where the features are L2-normalised (sentence encoders) the head
barely moves at all in a short schedule. Fitting the head first on the frozen
features (the linear probe's logistic or ridge regression, its strength chosen
by cross-validation on the training labels) and fine-tuning from there is
LP-FT (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022).

It is an option (``head_init=probe``), not the default: on EfficientNet-Lite0 at
32 px on Fashion-MNIST it lost 6 points at 10 labels per class and 3 at 100
(``python benchmarks/recipes.py``, benchmarks/results/recipes), where the ImageNet
features must change a lot and starting from the probe's head keeps them close.
It helps where a short schedule leaves a fresh head on normalised features
learning only the prior (MiniLM on the imbalanced drug reviews).

Example:
    >>> from transferkit.strategies.head_init import HEAD_INITS
    >>> HEAD_INITS
    ('random', 'probe')
"""
from __future__ import annotations

import torch
from torch import nn

from transferkit.data.dataset import TaskData
from transferkit.strategies.base import TransferModel, is_normalized_head
from transferkit.tasks.heads import head_input_scale
from transferkit.tasks import get_task

HEAD_INITS = ("random", "probe")
#: How a task encodes targets, for the target kinds the linear probe fits in closed form.
PROBE_KINDS = ("class", "multi-hot", "value")


def wants_probe_head(mode: str, model: TransferModel, data: TaskData) -> bool:
    """Whether ``mode`` is ``probe`` and the probe can fit this head: a task it fits in closed form
    (classification, multi-label, regression) and a head whose last layer is one linear layer on raw features."""
    return (mode == "probe" and get_task(data.task).target_kind in PROBE_KINDS
            and _last_linear(model.head) is not None and not is_normalized_head(model.head) and len(data) >= 2)


def _last_linear(head: nn.Module) -> nn.Linear | None:
    last = head[-1] if isinstance(head, nn.Sequential) and len(head) else head
    return last if isinstance(last, nn.Linear) else None


def init_head_from_probe(model: TransferModel, data: TaskData, *, seed: int = 0, batch_size: int = 64) -> dict:
    """Fit the linear probe on ``data``'s frozen features and copy it into ``model.head``'s linear layer.

    Returns what the probe chose (``C`` and its cross-validated score).
    """
    from transferkit.data.cache import extract_features
    from transferkit.strategies.linear_probe import fit_linear_head

    was_training = model.backbone.training
    X = extract_features(model.backbone, data, batch_size=batch_size) * head_input_scale(model.head)
    model.backbone.train(was_training)
    fitted, info = fit_linear_head(data.task, X, data.targets, seed=seed)
    target = _last_linear(model.head)
    with torch.no_grad():
        target.weight.copy_(fitted[-1].weight)
        target.bias.copy_(fitted[-1].bias)
    return info
