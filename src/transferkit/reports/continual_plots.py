"""Continual-learning report pieces: the accuracy-matrix heat-map (PNG bytes) and markdown tables.

Figures use :class:`matplotlib.figure.Figure` with the Agg canvas, like
:mod:`transferkit.reports.plots`. Row ``i`` of a matrix is the model after
training experience ``i``, column ``j`` its test accuracy on experience ``j``:
the diagonal is learning, what lies below it is remembering, above it is
what a model knows of experiences it has not met.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from transferkit.evaluation.continual import METRICS, check_accuracy_matrix
from transferkit.reports.plots import _grid, _to_png
from transferkit.reports.report import markdown_table

_MAX_ANNOTATED = 12


def accuracy_matrix_png(matrices: np.ndarray | Mapping[str, np.ndarray], task_names: Sequence[str] | None = None,
                        title: str | None = None) -> bytes:
    """Heat-map(s) of accuracy matrices, one panel per learner, cells annotated in percent.

    Args:
        matrices: one ``[T, T]`` matrix, or ``{learner: matrix}`` (same T) for side-by-side panels.
        task_names: names of the experiences (default ``0..T-1``).
        title: figure title.

    Returns:
        PNG bytes.

    Raises:
        DataError: a matrix that is not square or holds values outside [0, 1], or names of the wrong length.
    """
    panels = dict(matrices) if isinstance(matrices, Mapping) else {"": matrices}
    panels = {k: check_accuracy_matrix(v) for k, v in panels.items()}
    t = next(iter(panels.values())).shape[0]
    names = [str(n) for n in task_names] if task_names is not None else [str(i) for i in range(t)]
    if len(names) != t or any(m.shape[0] != t for m in panels.values()):
        from transferkit.errors import DataError

        raise DataError(f"Every matrix must be {t}x{t} with {t} task names; got shapes "
                        f"{[m.shape for m in panels.values()]} and {len(names)} names.")
    side = min(max(3.2, 0.5 * t + 2.0), 9.0)
    fig, axes = _grid(len(panels), panel_w=side + 0.6, panel_h=side, max_cols=3)
    image = None
    for ax, (label, m) in zip(axes, panels.items()):
        image = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(t), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
        ax.set_yticks(range(t), names)
        ax.set_xlabel("tested on experience")
        ax.set_ylabel("after training experience")
        ax.set_title(f"{label}: average {100 * m[-1].mean():.1f}%" if label else f"average {100 * m[-1].mean():.1f}%")
        if t <= _MAX_ANNOTATED:
            for i in range(t):
                for j in range(t):
                    ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize="small",
                            color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(image, ax=axes, fraction=0.046 / max(1, len(panels)) ** 0.5, label="test accuracy")
    if title:
        fig.suptitle(title)
    return _to_png(fig)


def accuracy_matrix_table(matrix: np.ndarray, task_names: Sequence[str] | None = None) -> str:
    """The accuracy matrix as a markdown table in percent (rows: after training; columns: tested on)."""
    m = check_accuracy_matrix(matrix)
    names = [str(n) for n in task_names] if task_names is not None else [str(i) for i in range(m.shape[0])]
    headers = ["after \\ on", *names]
    return markdown_table(headers, [[names[i], *(f"{100 * v:.1f}" for v in row)] for i, row in enumerate(m)])


def _cell(value: float, low: float | None = None, high: float | None = None) -> str:
    if not np.isfinite(value):
        return "n/a"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{100 * value:+.1f}" if value < 0 else f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def metrics_table(rows: Mapping[str, Mapping[str, float | tuple[float, float, float]]]) -> str:
    """A markdown table of continual metrics per learner, in percent (points).

    Args:
        rows: ``{learner: {metric: value or (mean, ci_low, ci_high)}}`` for the metrics of
            :func:`~transferkit.evaluation.continual.continual_metrics`.
    """
    headers = ["learner", *(m.replace("_", " ") for m in METRICS)]
    out = []
    for learner, values in rows.items():
        cells = []
        for metric in METRICS:
            v = values.get(metric, float("nan"))
            cells.append(_cell(*v) if isinstance(v, tuple) else _cell(float(v)))
        out.append([learner, *cells])
    return markdown_table(headers, out)


__all__ = ["accuracy_matrix_png", "accuracy_matrix_table", "metrics_table"]
