"""Transfer metrics of a learning curve, after Taylor & Stone, and the learning-curve figure.

Taylor & Stone, "Transfer Learning for Reinforcement Learning Domains: A
Survey", JMLR 10, 2009, section 2.1 (https://jmlr.org/papers/v10/taylor09a.html).
On one curve of mean evaluation return against target environment steps:

* ``jumpstart``: the return before any target training (step 0); a strategy's
  jumpstart *gain* is its value minus scratch's;
* ``time_to_threshold``: the first evaluated step whose mean return reaches
  the threshold (``None`` when it never does within the budget);
* ``auc``: the area under the curve by the trapezoid rule, divided by the
  steps it spans, so it reads as the mean return over training (Taylor &
  Stone's "total reward"; normalising keeps it in the return's units);
* ``asymptotic``: the mean of the last ``tail`` evaluations (the budget's end,
  not a true asymptote when the budget is short).
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from transferkit.evaluation.stats import mean_ci

METRICS = ("jumpstart", "time_to_threshold", "auc", "asymptotic")
#: Direction of each metric (the verdicts need it).
HIGHER_IS_BETTER = {"jumpstart": True, "time_to_threshold": False, "auc": True, "asymptotic": True}


def curve_metrics(steps: Sequence[int], means: Sequence[float], *, threshold: float | None = None,
                  tail: int = 3) -> dict:
    """Jumpstart, time to ``threshold``, normalised area under the curve and final return of one curve.

    Example:
        >>> m = curve_metrics([0, 100, 200], [10.0, 50.0, 90.0], threshold=40)
        >>> m["jumpstart"], m["time_to_threshold"], m["auc"], m["asymptotic"]
        (10.0, 100, 50.0, 50.0)
    """
    steps = np.asarray(steps, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    if steps.size == 0:
        return {k: None for k in METRICS}
    reached = np.flatnonzero(means >= threshold) if threshold is not None else np.array([], dtype=int)
    span = float(steps[-1] - steps[0])
    auc = float(np.sum((means[1:] + means[:-1]) / 2 * np.diff(steps)) / span) if span > 0 else float(means[0])
    return {"jumpstart": float(means[0]),
            "time_to_threshold": int(steps[reached[0]]) if reached.size else None,
            "auc": auc,
            "asymptotic": float(means[-min(tail, means.size):].mean()),
            "final_step": int(steps[-1]), "threshold": threshold}


def mean_curve(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% interval over seeds of curves, on the evaluation steps they share (the shortest grid)."""
    n = min(len(s) for s, _ in curves)
    steps = np.asarray(curves[0][0][:n], dtype=np.float64)
    values = np.array([np.asarray(m[:n], dtype=np.float64) for _, m in curves])
    stats = [mean_ci(values[:, i]) for i in range(n)]
    mean, low, high = (np.array(x) for x in zip(*stats))
    return steps, mean, np.vstack([low, high])


def learning_curves_png(panels: dict[str, dict[str, list]], *, threshold: float | None = None,
                        title: str = "") -> bytes:
    """One panel per target; in each, mean return ± 95% CI over seeds against target environment steps.

    Args:
        panels: target -> strategy -> list of ``(steps, mean returns)`` curves (one per seed).
        threshold: drawn as a dotted line.

    Transfer strategies are solid lines, ``scratch`` a dashed orange line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(len(panels), 3) or 1
    nrows = math.ceil(max(len(panels), 1) / ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.0 * nrows), layout="constrained")
    blues = ["#08519c", "#3182bd", "#6baed6", "#2ca25f", "#756bb1", "#41b6c4"]
    for i, (target, by_strategy) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        k = 0
        for strategy, curves in by_strategy.items():
            steps, mean, band = mean_curve(curves)
            scratch = strategy.startswith("scratch")
            color = "#e6550d" if scratch else blues[k % len(blues)]
            k += 0 if scratch else 1
            ax.plot(steps, mean, color=color, linestyle="--" if scratch else "-",
                    label=f"{strategy} (n={len(curves)})")
            if np.isfinite(band).all():
                ax.fill_between(steps, band[0], band[1], color=color, alpha=0.15, linewidth=0)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=1, label=f"threshold {threshold:g}")
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("target environment steps")
        ax.set_ylabel("mean evaluation return")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def fmt_ci(mean: float, low: float, high: float, digits: int = 1) -> str:
    """``12.3 ± 4.5`` (half the interval), or the mean alone when the interval is unknown."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"
