"""The regularizer contract and registry, config checks, and the step that adds a regularizer's terms to the loss.

:class:`Regularizer` is the contract every penalty follows (``check``,
``setup``, ``penalty``, ``release``); :func:`register_regularizer` adds one to
:data:`REGULARIZERS`. :func:`validate_fields` checks a strategy config's
``regularizer`` fields, :func:`build_regularizer` makes the configured one,
and :func:`regularized_step` wraps a strategy's step. The built-in penalties
are in :mod:`~transferkit.strategies.regularizer_methods`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, check_range, unknown_name
from transferkit.registry import Registry
from transferkit.strategies.base import StrategyConfig, TransferModel


REGULARIZERS: Registry[type["Regularizer"]] = Registry("regularizer")

#: Backbones with a ``source_head`` (what ``lwf`` and ``source_agreement`` need).
SOURCE_HEAD_BACKBONES = "EfficientNet-Lite (efficientnet-lite:0, efficientnet-lite:1, efficientnet-lite:2)"


@dataclass
class RegularizerOptions(StrategyConfig):
    """Options of a regularizer: fields with ``metadata={"help": ...}``, ranges declared in ``_parameter_constraints``."""


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
