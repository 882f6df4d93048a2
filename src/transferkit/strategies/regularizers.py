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

The parts live in :mod:`~transferkit.strategies.regularizer_base` (the
contract, the registry, config checks and :func:`regularized_step`),
:mod:`~transferkit.strategies.regularizer_methods` (the four penalties) and
:mod:`~transferkit.strategies.source_preservation` (:func:`source_agreement`);
this module gathers their public names, and importing it registers the penalties.

Example:
    >>> import transferkit as tk                                                   # doctest: +SKIP
    >>> tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", labels_per_class=10,  # doctest: +SKIP
    ...        strategy_options={"regularizer": "lwf", "regularizer_options": {"temperature": 2}})
"""
from __future__ import annotations

from transferkit.strategies.regularizer_base import (REGULARIZERS, SOURCE_HEAD_BACKBONES, Regularizer,
                                                     RegularizerOptions, build_regularizer, check_allowed,
                                                     register_regularizer, regularized_step, validate_fields)
from transferkit.strategies.regularizer_methods import (BSS, EWC, L2SP, BSSOptions, EWCOptions, L2SPOptions, LwF,
                                                        LwFOptions, bss_penalty, diagonal_fisher)
from transferkit.strategies.source_preservation import changes_backbone, source_agreement, source_predictions

__all__ = ["REGULARIZERS", "Regularizer", "RegularizerOptions", "L2SP", "EWC", "LwF", "BSS", "bss_penalty",
           "build_regularizer", "changes_backbone", "check_allowed", "diagonal_fisher", "register_regularizer",
           "regularized_step", "source_agreement", "source_predictions", "validate_fields",
           "SOURCE_HEAD_BACKBONES", "L2SPOptions", "EWCOptions", "LwFOptions", "BSSOptions"]
