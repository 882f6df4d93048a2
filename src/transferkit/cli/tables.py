"""Rich tables for metrics, comparisons and listings."""
from __future__ import annotations

import math

from rich.table import Table

SCALAR_ORDER = ("accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall",
                "micro_f1", "mAP", "r2", "mse", "mae", "n")


def metrics_table(metrics: dict, title: str) -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    keys = [k for k in SCALAR_ORDER if k in metrics] + sorted(
        k for k, v in metrics.items() if k not in SCALAR_ORDER and isinstance(v, (int, float)))
    for k in keys:
        v = metrics[k]
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    if "evaluated_on" in metrics:
        t.caption = f"evaluated on the {metrics['evaluated_on']} split"
    return t


def _pct(mean: float, low: float, high: float, percent: bool) -> str:
    f = 100.0 if percent else 1.0
    if math.isnan(low):
        return f"{mean * f:.1f}"
    return f"{mean * f:.1f} ± {(high - low) / 2 * f:.1f}"


def compare_table(result) -> Table:
    """Summary (mean ± 95% CI half-width) with the gain over the strongest scratch baseline and the verdict."""
    percent = result.metric in ("accuracy", "balanced_accuracy", "macro_f1", "micro_f1", "mAP")
    t = Table(title=f"{result.metric} ({'%, ' if percent else ''}mean ± 95% CI over seeds; "
                    f"gain vs the strongest scratch baseline)")
    from transferkit.reports.plots import lpc_label

    for col in ("experiment", "labels", "strategy", result.metric, "gain", "verdict"):
        t.add_column(col, justify="right" if col in (result.metric, "gain", "labels") else "left",
                     no_wrap=col in ("strategy", result.metric, "gain"))
    v = result.verdicts.set_index(["experiment", "labels_per_class", "strategy"]) if len(result.verdicts) else None
    for _, r in result.summary.sort_values(["experiment", "labels_per_class", "kind", "mean"],
                                           ascending=[True, True, False, False]).iterrows():
        key = (r["experiment"], r["labels_per_class"], r["strategy"])
        gain, verdict = "", "baseline" if r["kind"] == "scratch" else ""
        if v is not None and key in v.index:
            row = v.loc[key]
            gain = _pct(row["gain"], row["gain_low"], row["gain_high"], percent)
            gain = ("+" if row["gain"] >= 0 else "") + gain
            verdict = row["verdict"]
        t.add_row(str(r["experiment"]), lpc_label(r["labels_per_class"], r.get("labels_unit")), r["strategy"],
                  _pct(r["mean"], r["ci_low"], r["ci_high"], percent), gain, verdict)
    return t
