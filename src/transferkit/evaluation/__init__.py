"""Layer 1: pure functions on arrays: task metrics and statistics over seeds."""
from transferkit.evaluation.metrics import (
    PRIMARY_METRIC,
    classification_metrics,
    compute_metrics,
    higher_is_better,
    is_fraction_metric,
    multilabel_metrics,
    regression_metrics,
)
from transferkit.evaluation.stats import (
    mean_ci,
    paired_difference,
    summarize,
    transfer_verdicts,
    welch_difference,
)

__all__ = [
    "PRIMARY_METRIC",
    "classification_metrics",
    "compute_metrics",
    "higher_is_better",
    "is_fraction_metric",
    "mean_ci",
    "multilabel_metrics",
    "paired_difference",
    "regression_metrics",
    "summarize",
    "transfer_verdicts",
    "welch_difference",
]
