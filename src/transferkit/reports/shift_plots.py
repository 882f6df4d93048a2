"""The figure of ``transferkit shift``: a 2-D projection of source and target features.

One row per model (the backbone before adaptation, the adapted bundle), two
panels per row: points coloured by domain, and by class (circles: source,
crosses: target; grey crosses where the target is unlabelled). Built on
:class:`matplotlib.figure.Figure` with the Agg canvas, like :mod:`transferkit.reports.plots`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from transferkit.errors import ConfigError, DataError
from transferkit.reports.plots import _to_png

PROJECTIONS = ("tsne", "umap", "pca")
_DOMAIN_COLORS = {"source": "#1f77b4", "target": "#ff7f0e"}


def embed_2d(x: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``[N, D]`` -> ``[N, 2]``: t-SNE (scikit-learn, after PCA to 50 dims), UMAP (if installed) or PCA."""
    if method not in PROJECTIONS:
        raise ConfigError(f"Unknown projection {method!r}. Available: {', '.join(PROJECTIONS)}.")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise DataError(f"A 2-D projection needs [N, D] features with N >= 3; got {x.shape}.")
    from sklearn.decomposition import PCA

    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    if method == "pca" or x.shape[1] <= 2:
        out = PCA(n_components=min(2, x.shape[1]), random_state=seed).fit_transform(x)
        return out if out.shape[1] == 2 else np.column_stack([out, np.zeros(len(out))])
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x) - 1), random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("projection='umap' needs the umap-learn package (pip install umap-learn); "
                              "or use tsne or pca.") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30, (len(x) - 1) / 3))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)


@dataclass
class ProjectionPanel:
    """One model's projection: ``xy [Ns + Nt, 2]`` (source rows first) and the class of each point (-1: unknown)."""

    title: str
    xy: np.ndarray
    n_source: int
    labels: np.ndarray


def shift_projection_png(panels: Sequence[ProjectionPanel], label_names: Sequence[str] | None = None,
                         method: str = "tsne") -> bytes:
    """One row per panel: points by domain (left) and by class (right)."""
    if not panels:
        raise DataError("shift_projection_png needs at least one panel.")
    fig = Figure(figsize=(11.0, 4.6 * len(panels)), layout="constrained")
    names = list(label_names or [])
    n_classes = max([len(names)] + [int(p.labels.max()) + 1 for p in panels if len(p.labels)])
    cmap = colormaps["tab20" if n_classes > 10 else "tab10"]
    for row, p in enumerate(panels):
        ns = p.n_source
        ax_d, ax_c = fig.add_subplot(len(panels), 2, 2 * row + 1), fig.add_subplot(len(panels), 2, 2 * row + 2)
        for dom, sl in (("source", slice(0, ns)), ("target", slice(ns, None))):
            ax_d.scatter(p.xy[sl, 0], p.xy[sl, 1], s=8, alpha=0.6, color=_DOMAIN_COLORS[dom], label=dom)
        ax_d.legend(loc="best", fontsize="small")
        ax_d.set_title(f"{p.title}: by domain")
        for dom, sl, marker in (("source", slice(0, ns), "o"), ("target", slice(ns, None), "x")):
            xy, lab = p.xy[sl], p.labels[sl]
            unknown = lab < 0
            if unknown.any():
                ax_c.scatter(xy[unknown, 0], xy[unknown, 1], s=10, marker=marker, color="0.7", alpha=0.5,
                             label=f"{dom} (unlabelled)")
            for c in np.unique(lab[~unknown]):
                name = names[c] if c < len(names) else str(c)
                first = dom == "source" or not (p.labels[:ns] == c).any()  # one legend entry per class
                ax_c.scatter(xy[lab == c, 0], xy[lab == c, 1], s=10, marker=marker, alpha=0.7,
                             color=cmap(int(c) % cmap.N), label=name if first else None)
        if n_classes <= 20:
            ax_c.legend(loc="best", fontsize="x-small", markerscale=1.5)
        ax_c.set_title(f"{p.title}: by class (o source, x target)")
        for ax in (ax_d, ax_c):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{method} 1")
            ax.set_ylabel(f"{method} 2")
    return _to_png(fig)
