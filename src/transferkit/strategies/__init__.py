"""Strategies: one registered object per method. Importing this package registers them all."""
from transferkit.strategies.base import (STRATEGIES, Strategy, StrategyConfig, TrainDefaults, TransferModel,
                                         make_strategy, register_strategy)
from transferkit.strategies import finetune, linear_probe, parameter_efficient, regularizers, scratch  # noqa: F401
from transferkit.strategies import domain, domain_methods, domain_shallow  # noqa: F401  (registration)
from transferkit.strategies import contrastive_text, few_shot, self_supervised, zero_shot  # noqa: F401  (registration)
from transferkit.strategies import continual, fairness, multi_task, stacking  # noqa: F401  (registration)
from transferkit.strategies import crf  # noqa: F401  (registration: the token-classification baseline)

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "TrainDefaults", "TransferModel", "make_strategy",
           "register_strategy"]
