"""Report figures, each returned as PNG bytes.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas,
never through ``pyplot``, so nothing leaks into a global figure registry and
the module works in threads, servers and headless machines alike.

Colours say what a strategy is: transfer strategies are shades of blue,
from-scratch baselines shades of orange (dashed in line plots), and a strategy
keeps its colour across every figure of one report.
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from transferkit.errors import DataError
from transferkit.evaluation.metrics import is_fraction_metric

DPI = 100
_MAX_ANNOTATED_CLASSES = 15
_MAX_TICKED_CLASSES = 40


def _to_png(fig: Figure) -> bytes:
    """Render ``fig`` with the Agg canvas and return the PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _grid(n_panels: int, panel_w: float = 5.5, panel_h: float = 4.0, max_cols: int = 3) -> tuple[Figure, list]:
    ncols = min(max(n_panels, 1), max_cols)
    nrows = math.ceil(max(n_panels, 1) / ncols)
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(max(n_panels, 1))]
    return fig, axes


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def learning_curve_png(history: Sequence[dict]) -> bytes:
    """Training and validation loss per epoch, and validation metrics when logged.

    Args:
        history: One dict per epoch: ``epoch`` (defaults to the row number),
            ``train_loss``, optional ``val_loss`` and optional ``val_<metric>``
            (or other ``*_loss`` / ``train_<metric>``) values. Missing values
            leave gaps.

    Returns:
        PNG bytes: a loss panel, plus a metrics panel when any metric was logged.

    Raises:
        DataError: If ``history`` is empty.
    """
    if not history:
        raise DataError("Cannot plot a learning curve from an empty history.")
    epochs = [_as_float(row.get("epoch", i + 1)) for i, row in enumerate(history)]
    keys = list(dict.fromkeys(k for row in history for k in row if k != "epoch"))
    keys = [k for k in keys if any(np.isfinite(_as_float(row.get(k))) for row in history)]
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if not k.endswith("loss") and k.startswith(("val_", "train_", "test_"))]
    panels = [("loss", loss_keys)] + ([("metric", metric_keys)] if metric_keys else [])
    fig, axes = _grid(len(panels), panel_w=5.0, panel_h=3.6)
    marker = "o" if len(history) <= 30 else None
    for ax, (ylabel, panel_keys) in zip(axes, panels):
        for key in panel_keys:
            ys = [_as_float(row.get(key)) for row in history]
            style = "--" if key.startswith("train_") and ylabel == "metric" else "-"
            ax.plot(epochs, ys, style, marker=marker, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title("Loss per epoch" if ylabel == "loss" else "Metrics per epoch")
        ax.grid(alpha=0.3)
        if panel_keys:
            ax.legend(fontsize="small")
    fig.suptitle("Learning curve")
    return _to_png(fig)


def _row_normalise(matrix: np.ndarray) -> np.ndarray:
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix, dtype=np.float64), where=sums > 0)


def confusion_png(matrix, label_names: Sequence[str] | None = None) -> bytes:
    """Confusion matrix normalised per row (each true class sums to 100%).

    Args:
        matrix: Counts ``[C, C]``, rows true classes, columns predictions.
        label_names: Class names; defaults to ``0..C-1``.

    Returns:
        PNG bytes; cells are annotated with percentages when ``C <= 15``.

    Raises:
        DataError: If ``matrix`` is not square or names do not match its size.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise DataError(f"A confusion matrix must be square and non-empty; got shape {counts.shape}.")
    n = counts.shape[0]
    names = [str(x) for x in label_names] if label_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise DataError(f"{len(names)} label names for a {n}x{n} confusion matrix.")
    norm = _row_normalise(counts)
    side = min(max(4.5, 0.45 * n + 2.5), 14.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= _MAX_TICKED_CLASSES:
        ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
        ax.set_yticks(range(n), names)
    if n <= _MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{100 * norm[i, j]:.0f}%", ha="center", va="center", fontsize="small",
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (row-normalised)")
    return _to_png(fig)


def projection_png(features, labels, label_names: Sequence[str] | None = None, max_points: int = 2000) -> bytes:
    """The features projected on their first two principal components, one colour per class.

    Args:
        features: ``[N, D]`` features of the evaluated items.
        labels: ``[N]`` integer classes.
        label_names: Class names for the legend.
        max_points: plot at most this many items (an evenly spaced subset).

    Raises:
        DataError: If the shapes do not match or there are fewer than 2 items.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise DataError(f"A projection needs [N, D] features and N labels, N >= 2; got {x.shape} and {y.shape}.")
    keep = np.linspace(0, len(x) - 1, min(len(x), max_points)).astype(int)
    x, y = x[keep] - x[keep].mean(0), y[keep]
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([x @ vt[:1].T, np.zeros(len(x))])
    explained = (sv[:2] ** 2) / max((sv**2).sum(), 1e-300)
    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["tab20" if y.max() >= 10 else "tab10"]
    for c in np.unique(y):
        name = label_names[c] if label_names is not None and c < len(label_names) else str(c)
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=10, alpha=0.7, color=cmap(int(c) % cmap.N), label=str(name))
    if len(np.unique(y)) <= 20:
        ax.legend(fontsize="small", markerscale=1.5, loc="best")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)" if len(explained) > 1 else "PC 2")
    ax.set_title("Features of the evaluated items (PCA)")
    return _to_png(fig)


def prediction_pairs_png(rows: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """Items drawn twice, side by side: the ground truth on the left, the prediction on the right.

    Args:
        rows: ``(name, truth, prediction)`` per item, each picture ``[H, W, 3]`` uint8 (a task's
            ``report_figure``).

    Raises:
        DataError: no rows, or a picture that is not ``[H, W, 3]``.
    """
    if not rows:
        raise DataError("No items to draw.")
    for name, *pictures in rows:
        for picture in pictures:
            if np.ndim(picture) != 3 or np.shape(picture)[2] != 3:
                raise DataError(f"Item {name!r}: a picture must be [H, W, 3]; got shape {np.shape(picture)}.")
    fig = Figure(figsize=(7.0, 3.4 * len(rows)), layout="constrained")
    for i, (name, truth, prediction) in enumerate(rows):
        for j, (picture, side) in enumerate(((truth, "ground truth"), (prediction, "prediction"))):
            ax = fig.add_subplot(len(rows), 2, 2 * i + j + 1)
            ax.imshow(np.asarray(picture, dtype=np.uint8), interpolation="nearest")
            ax.set_title(f"{name}: {side}", fontsize=9)
            ax.set_axis_off()
    return _to_png(fig)


def strategy_colors(summary: pd.DataFrame) -> dict[str, tuple]:
    """A colour per strategy: blues for transfer, oranges for scratch, stable across figures."""
    kinds = _kinds(summary)
    colors = {}
    for kind, cmap in (("transfer", "Blues"), ("scratch", "Oranges")):
        names = [s for s in dict.fromkeys(summary["strategy"].astype(str)) if kinds.get(s, "transfer") == kind]
        shades = np.linspace(0.85, 0.45, max(len(names), 1))
        colors.update({name: colormaps[cmap](shade) for name, shade in zip(names, shades)})
    return colors


def _kinds(summary: pd.DataFrame) -> dict[str, str]:
    if "kind" not in summary.columns:
        return {}
    return dict(zip(summary["strategy"].astype(str), summary["kind"].astype(str)))


def _check_summary(summary: pd.DataFrame) -> None:
    missing = [c for c in ("strategy", "mean", "ci_low", "ci_high") if c not in summary.columns]
    if missing:
        raise DataError(f"The summary table lacks column(s) {missing}; build it with evaluation.summarize().")
    if summary.empty:
        raise DataError("Cannot plot an empty summary table.")


def _experiments(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "experiment" not in summary.columns:
        return [("", summary)]
    return [(str(name), group) for name, group in summary.groupby("experiment", sort=False, dropna=False)]


def lpc_label(value, unit=None) -> str:
    """Display text of a ``labels_per_class`` value: ``"10 / class"``, or ``"all labels"`` when missing.

    ``unit`` is the runs table's ``labels_unit``: ``"class"`` (or missing) for labels per class; another word
    (``"images"``, ``"items"``) where the value counts the training items drawn (detection, segmentation,
    multi-label: an item has no single class), shown as ``"16 images"``.
    """
    number = _as_float(value)
    if not np.isfinite(number) or number <= 0:
        return "all labels"
    return f"{number:g} / class" if not isinstance(unit, str) or unit in ("", "class") else f"{number:g} {unit}"


def _lpc_unit(group: pd.DataFrame, lpc) -> str | None:
    """The ``labels_unit`` of ``group``'s rows at ``lpc`` (``None`` where the table has none)."""
    if "labels_unit" not in group.columns or lpc is None:
        return None
    units = group.loc[group["labels_per_class"].apply(lambda v: _same(v, lpc)), "labels_unit"].dropna()
    return str(units.iloc[0]) if len(units) else None


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"{metric} (%)") if is_fraction_metric(metric) else (1.0, metric)


def _ordered_strategies(group: pd.DataFrame) -> list[str]:
    kinds = _kinds(group)
    names = list(dict.fromkeys(group["strategy"].astype(str)))
    return sorted(names, key=lambda s: kinds.get(s, "transfer") != "scratch")  # scratch first, stable


def _bar_panel(ax, group: pd.DataFrame, metric: str, colors: dict) -> None:
    scale, ylabel = _scale(metric)
    lpcs = _unique_lpcs(group["labels_per_class"]) if "labels_per_class" in group else [None]
    strategies = _ordered_strategies(group)
    width = 0.8 / len(strategies)
    annotate = len(strategies) * len(lpcs) <= 12
    kinds = _kinds(group)
    for k, strategy in enumerate(strategies):
        rows = group[group["strategy"].astype(str) == strategy]
        xs, means, errs = [], [], [[], []]
        for i, lpc in enumerate(lpcs):
            match = rows if lpc is None else rows[rows["labels_per_class"].apply(lambda v: _same(v, lpc))]
            if match.empty:
                continue
            mean, low, high = (scale * _as_float(match.iloc[0][c]) for c in ("mean", "ci_low", "ci_high"))
            xs.append(i - 0.4 + width * (k + 0.5))
            means.append(mean)
            errs[0].append(mean - low)  # NaN (one seed) draws no error bar
            errs[1].append(high - mean)
        label = f"{strategy} ({kinds.get(strategy, 'transfer')})"
        bars = ax.bar(xs, means, width * 0.95, yerr=errs, capsize=3, color=colors[strategy], label=label)
        if annotate:
            ax.bar_label(bars, fmt="%.1f" if scale == 100.0 else "%.3g", fontsize="x-small", padding=2)
    ax.set_xticks(range(len(lpcs)), [lpc_label(v, _lpc_unit(group, v)) if v is not None else "" for v in lpcs])
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(strategies), 3),
              frameon=False)


def _unique_lpcs(values: Iterable) -> list:
    """Distinct ``labels_per_class`` values, ascending, missing ones (full data) last and merged."""
    distinct: dict = {}
    for value in values:
        number = _as_float(value)
        distinct.setdefault("all" if np.isnan(number) else number, value)
    return sorted(distinct.values(), key=lambda v: (np.isnan(_as_float(v)), _as_float(v)))


def _same(a, b) -> bool:
    fa, fb = _as_float(a), _as_float(b)
    return (np.isnan(fa) and np.isnan(fb)) or fa == fb or a == b


def strategy_bars_png(summary: pd.DataFrame, metric: str) -> bytes:
    """Mean ``metric`` per strategy with confidence-interval error bars, one panel per experiment.

    Args:
        summary: Output of :func:`transferkit.evaluation.summarize` (columns
            ``strategy``, ``mean``, ``ci_low``, ``ci_high``; optionally
            ``experiment``, ``labels_per_class`` and ``kind``). Several
            ``labels_per_class`` values give groups of bars.
        metric: The metric summarised (axis label; accuracy-like metrics are
            shown in percent).

    Returns:
        PNG bytes. Strategies with one seed have no error bar.

    Raises:
        DataError: If the table is empty or lacks a column.
    """
    _check_summary(summary)
    colors = strategy_colors(summary)
    experiments = _experiments(summary)
    fig, axes = _grid(len(experiments), panel_w=6.0, panel_h=4.2)
    for ax, (name, group) in zip(axes, experiments):
        _bar_panel(ax, group, metric, colors)
        ax.set_title(name or metric)
    fig.suptitle(f"{metric} by strategy\n(mean over seeds; error bars: confidence interval)", fontsize="medium")
    return _to_png(fig)


def _efficiency_panel(ax, group: pd.DataFrame, metric: str, colors: dict) -> None:
    scale, ylabel = _scale(metric)
    kinds = _kinds(group)
    ticks: set[float] = set()
    for strategy in _ordered_strategies(group):
        rows = group[group["strategy"].astype(str) == strategy].copy()
        rows["_x"] = rows["labels_per_class"].map(_as_float)
        rows = rows[np.isfinite(rows["_x"]) & (rows["_x"] > 0)].sort_values("_x")
        if rows.empty:
            continue
        x = rows["_x"].to_numpy()
        ticks.update(x.tolist())
        kind = kinds.get(strategy, "transfer")
        ax.plot(x, scale * rows["mean"].to_numpy(float), "--" if kind == "scratch" else "-", marker="o",
                color=colors[strategy], label=f"{strategy} ({kind})")
        ax.fill_between(x, scale * rows["ci_low"].to_numpy(float), scale * rows["ci_high"].to_numpy(float),
                        color=colors[strategy], alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in sorted(ticks)])
    ax.set_xlabel("labelled examples per class (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def data_efficiency_png(summary: pd.DataFrame, metric: str) -> bytes:
    """``metric`` against labels per class (log x axis), one line per strategy, one panel per experiment.

    Shaded bands are the confidence intervals; scratch baselines are dashed.
    Rows without a finite, positive ``labels_per_class`` (full data) are left
    out, as they have no place on a log axis.

    Args:
        summary: Output of :func:`transferkit.evaluation.summarize`, with a
            ``labels_per_class`` column.
        metric: The metric summarised.

    Returns:
        PNG bytes.

    Raises:
        DataError: If the table is empty or lacks a column.
    """
    _check_summary(summary)
    if "labels_per_class" not in summary.columns:
        raise DataError("A data-efficiency plot needs a 'labels_per_class' column in the summary table.")
    colors = strategy_colors(summary)
    experiments = _experiments(summary)
    fig, axes = _grid(len(experiments), panel_w=6.0, panel_h=4.2)
    for ax, (name, group) in zip(axes, experiments):
        _efficiency_panel(ax, group, metric, colors)
        ax.set_title(name or metric)
    fig.suptitle(f"Data efficiency: {metric} vs labelled examples per class\n(bands: confidence interval)",
                 fontsize="medium")
    return _to_png(fig)
