"""The strategy comparison report: mean ± CI per strategy, gain over the best scratch baseline, verdicts, figures.

:func:`format_table` gives the summary as a markdown table; :func:`write_compare_report`
writes the full report (markdown, HTML, CSV files, PNGs) through
:mod:`~transferkit.reports.report_render`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferkit.evaluation.metrics import higher_is_better, is_fraction_metric
from transferkit.reports.plots import data_efficiency_png, lpc_label, strategy_bars_png
from transferkit.reports.report_render import Block, _h, _img, _p, _table, _ul, _write_report, markdown_table


# --------------------------------------------------------------------------- number formatting


def _percent(metric: str, summary: pd.DataFrame) -> bool:
    """Show ``metric`` in percent: an accuracy-like metric whose values lie in [0, 1]."""
    means = pd.to_numeric(summary["mean"], errors="coerce").dropna() if "mean" in summary else pd.Series(dtype=float)
    return is_fraction_metric(metric) and bool(((means >= 0) & (means <= 1)).all())


def _num(value: float, percent: bool, sign: bool = False) -> str:
    spec = ("+" if sign else "") + (".1f" if percent else ".4g")
    return format(100 * value if percent else value, spec)


def format_mean_ci(mean: float, low: float, high: float, percent: bool) -> str:
    """``"75.0 ± 1.9"`` (percent) or ``"0.1234 ± 0.0056"``; ``"± n/a"`` without an interval."""
    if not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{_num(mean, percent)} ± n/a"
    return f"{_num(mean, percent)} ± {_num((high - low) / 2, percent)}"


def format_gain(gain: float, low: float, high: float, percent: bool) -> str:
    """``"+3.2 [+1.1, +5.3]"``, or ``"+3.2 [interval unknown]"`` with one seed."""
    if not np.isfinite(gain):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{_num(gain, percent, True)} [interval unknown]"
    return f"{_num(gain, percent, True)} [{_num(low, percent, True)}, {_num(high, percent, True)}]"


# --------------------------------------------------------------------------- tables


def _key(experiment: Any, lpc: Any, strategy: Any) -> tuple:
    lpc_f = pd.to_numeric(pd.Series([lpc]), errors="coerce").iloc[0]
    return str(experiment), "nan" if pd.isna(lpc_f) else float(lpc_f), str(strategy)


def _verdict_lookup(verdicts: pd.DataFrame | None) -> tuple[dict, set]:
    """Verdict rows by ``(experiment, labels_per_class, strategy)`` and the set of baselines used."""
    if verdicts is None or verdicts.empty:
        return {}, set()
    rows = {_key(r.experiment, r.labels_per_class, r.strategy): r for r in verdicts.itertuples(index=False)}
    baselines = {_key(r.experiment, r.labels_per_class, r.baseline) for r in verdicts.itertuples(index=False)}
    return rows, baselines


def _summary_rows(summary: pd.DataFrame, verdicts: pd.DataFrame | None, percent: bool) -> list[list[str]]:
    found, baselines = _verdict_lookup(verdicts)
    rows = []
    for r in summary.to_dict("records"):
        key = _key(r.get("experiment", ""), r.get("labels_per_class"), r.get("strategy", ""))
        v = found.get(key)
        gain = format_gain(v.gain, v.gain_low, v.gain_high, percent) if v is not None else (
            "baseline" if key in baselines else "—")
        rows.append([str(r.get("experiment", "")), lpc_label(r.get("labels_per_class"), r.get("labels_unit")),
                     str(r.get("strategy", "")),
                     str(r.get("kind", "")), str(r.get("n", "")),
                     format_mean_ci(r["mean"], r["ci_low"], r["ci_high"], percent), gain,
                     v.verdict if v is not None else ""])
    return rows


def _table_headers(metric: str, percent: bool) -> list[str]:
    unit = " (%)" if percent else ""
    return ["experiment", "labels", "strategy", "kind", "seeds", f"{metric}{unit} mean ± CI",
            f"gain vs best scratch{' (points)' if percent else ''}", "verdict"]


def format_table(summary: pd.DataFrame, verdicts: pd.DataFrame | None, metric: str) -> str:
    """A markdown table of every strategy: mean ± CI half-width, gain over the strongest scratch baseline, verdict.

    Accuracy-like metrics whose values lie in [0, 1] are shown in percent
    (``75.0 ± 1.9``) and gains in percentage points. The scratch strategy used
    as a baseline shows ``baseline`` in the gain column.

    Args:
        summary: Output of :func:`transferkit.evaluation.summarize`.
        verdicts: Output of :func:`transferkit.evaluation.transfer_verdicts` (or ``None``).
        metric: The metric summarised.

    Returns:
        The table as text, readable both as plain text and as markdown.
    """
    percent = _percent(metric, summary)
    return markdown_table(_table_headers(metric, percent), _summary_rows(summary, verdicts, percent))


def _verdict_block(verdicts: pd.DataFrame, percent: bool) -> Block:
    headers = ("experiment", "labels", "strategy", "baseline", "gain [CI]", "verdict", "explanation")
    rows = [(r.experiment, lpc_label(r.labels_per_class, getattr(r, "labels_unit", None)), r.strategy, r.baseline,
             format_gain(r.gain, r.gain_low, r.gain_high, percent), f"**{r.verdict}**", r.explanation)
            for r in verdicts.itertuples(index=False)]
    return _table(headers, rows)


def _has_curve(summary: pd.DataFrame) -> bool:
    """Whether some experiment has more than one finite ``labels_per_class`` value."""
    if "labels_per_class" not in summary.columns:
        return False
    lpc = pd.to_numeric(summary["labels_per_class"], errors="coerce")
    keys = summary["experiment"] if "experiment" in summary.columns else pd.Series(0, index=summary.index)
    return bool((lpc.groupby(keys).nunique() > 1).any())


# --------------------------------------------------------------------------- the report


def _compare_blocks(summary, verdicts, metric, title, notes, confidence) -> list[Block]:
    percent = _percent(metric, summary)
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    unit = " in percent (gains in percentage points)" if percent else ""
    blocks = [_h(1, title), _p(
        f"Metric: `{metric}` ({direction}), shown{unit} as mean ± half-width of the {round(100 * confidence)}% "
        "Student-t confidence interval over seeds. Each transfer strategy is compared with the strongest "
        "scratch baseline of its experiment and label budget: a verdict of positive or negative transfer "
        "needs the whole interval of the gain on one side of 0; otherwise it is \"no clear gain\": "
        "transfer is not shown to be better than training from scratch.")]
    if notes:
        blocks += [_h(2, "Notes"), _ul(notes)]
    blocks += [_h(2, "Verdicts")]
    blocks += [_verdict_block(verdicts, percent)] if verdicts is not None and not verdicts.empty else [
        _p("No transfer strategy was compared with a scratch baseline.")]
    blocks += [_h(2, "Summary"), _table(_table_headers(metric, percent), _summary_rows(summary, verdicts, percent))]
    blocks += [_h(2, "Figures"), _img("strategy_bars.png", strategy_bars_png(summary, metric), f"{metric} by strategy")]
    if _has_curve(summary):
        blocks.append(_img("data_efficiency.png", data_efficiency_png(summary, metric), "Data efficiency"))
    blocks += [_p("Raw numbers: `runs.csv` (one row per run), `summary.csv`, `verdicts.csv`.")]
    return blocks


def write_compare_report(
    out_dir: str | os.PathLike,
    *,
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    verdicts: pd.DataFrame,
    metric: str,
    title: str,
    notes: list[str] | None = None,
    confidence: float = 0.95,
) -> list[Path]:
    """Write a strategy comparison as ``report.md`` (+ ``plots/``), ``report.html`` and CSV files.

    Args:
        out_dir: Directory to write into (created if needed).
        runs: One row per run (written to ``runs.csv``).
        summary: Output of :func:`transferkit.evaluation.summarize` (``summary.csv``).
        verdicts: Output of :func:`transferkit.evaluation.transfer_verdicts` (``verdicts.csv``).
        metric: The metric compared.
        title: Report title.
        notes: Optional remarks listed under the title (data set caveats, budget...).
        confidence: Coverage the intervals were computed with (for the text only).

    Returns:
        The paths written: ``report.md``, ``report.html``, the CSV files, then the PNGs.
    """
    blocks = _compare_blocks(summary, verdicts, metric, title, notes, confidence)
    extra: dict[str, str | bytes] = {"runs.csv": runs.to_csv(index=False), "summary.csv": summary.to_csv(index=False)}
    if verdicts is not None:
        extra["verdicts.csv"] = verdicts.to_csv(index=False)
    return _write_report(Path(out_dir), blocks, title, extra)
