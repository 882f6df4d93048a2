"""transferkit: choose a pre-trained model, adapt it to a small target task, know whether
the transfer helped, and ship the result.

Importing this package loads nothing from a hub and no heavy model code; the
public calls import what they need.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "fit": "transferkit.workflows.fit", "evaluate": "transferkit.workflows.fit",
    "prepare_data": "transferkit.workflows.fit", "FitResult": "transferkit.workflows.fit",
    "lr_find": "transferkit.workflows.fit",
    "DataOptions": "transferkit.workflows.options", "DomainOptions": "transferkit.workflows.options",
    "FairnessOptions": "transferkit.workflows.options", "PretrainOptions": "transferkit.workflows.options",
    "compare": "transferkit.workflows.compare", "CompareResult": "transferkit.workflows.compare",
    "merge_bundle": "transferkit.export.peft_interop",
    "measure_shift": "transferkit.workflows.shift", "ShiftResult": "transferkit.workflows.shift",
    "load": "transferkit.export.bundle", "Predictor": "transferkit.export.bundle",
    "load_backbone": "transferkit.backbones", "Backbone": "transferkit.backbones.base",
    "TaskData": "transferkit.data.dataset", "TrainConfig": "transferkit.training",
    "STRATEGIES": "transferkit.strategies",
    "rank": "transferkit.workflows.rank", "RankResult": "transferkit.workflows.rank",
    "TransferClassifier": "transferkit.sklearn", "TransferRegressor": "transferkit.sklearn",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
