"""The public Python facade: ``fit``, ``evaluate``, ``compare``, ``rank``, ``load``.

Re-exports only; the workflows live in :mod:`transferkit.workflows`.

Example:
    >>> import transferkit as tk                                                  # doctest: +SKIP
    >>> result = tk.fit("efficientnet-lite:0", "fashion-mnist", "linear-probe",  # doctest: +SKIP
    ...                 labels_per_class=10, image_size=64, out="runs/fmnist")
    >>> tk.load("runs/fmnist").predict(["boot.png"])                            # doctest: +SKIP
"""
from __future__ import annotations

from transferkit.export.bundle import load
from transferkit.training import TrainConfig
from transferkit.workflows.baselines import check_transfer_against_scratch, default_baselines
from transferkit.workflows.compare import CompareResult, compare, data_name
from transferkit.workflows.catalog import list_strategies, list_tasks
from transferkit.workflows.fit import FitResult, evaluate, fit, lr_find, prepare_data, rebuild
from transferkit.workflows.options import DataOptions, DomainOptions, FairnessOptions, PretrainOptions
from transferkit.workflows.rank import RankResult, rank
from transferkit.workflows.runs import fairness_metrics, table_width

__all__ = ["FitResult", "CompareResult", "RankResult", "fit", "evaluate", "compare", "rank", "load", "prepare_data",
           "lr_find", "check_transfer_against_scratch", "data_name", "default_baselines", "fairness_metrics",
           "list_strategies", "list_tasks", "rebuild", "table_width", "DataOptions", "DomainOptions",
           "FairnessOptions", "PretrainOptions", "TrainConfig"]
