"""Layer 5: figures (PNG bytes), the model card of a fit, and the strategy comparison report."""
from transferkit.reports.plots import (
    confusion_png,
    data_efficiency_png,
    learning_curve_png,
    strategy_bars_png,
)
from transferkit.reports.report import format_table, write_compare_report, write_fit_report

__all__ = [
    "confusion_png",
    "data_efficiency_png",
    "format_table",
    "learning_curve_png",
    "strategy_bars_png",
    "write_compare_report",
    "write_fit_report",
]
