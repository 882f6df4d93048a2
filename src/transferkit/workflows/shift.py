"""Measuring domain shift: how far the target's inputs are from the source in a model's feature space.

:func:`measure_shift` embeds a sample of both domains with a backbone (before
adaptation) and/or the backbone of an adapted bundle, and reports for each
model the multi-kernel MMD², the proxy A-distance and the CORAL distance
(:mod:`transferkit.evaluation.domain_shift`), with a 2-D projection (t-SNE,
UMAP or PCA) coloured by domain and by class. Features go through the feature
cache, so a second call on the same data and model reads them from disk.

Example:
    >>> from transferkit.workflows.shift import measure_shift, save_shift           # doctest: +SKIP
    >>> r = measure_shift("fashion-mnist", "runs/fmnist-m/", backbone="efficientnet-lite:0",
    ...                   bundle="runs/dann", image_size=64)                          # doctest: +SKIP
    >>> r.measures                                                                   # doctest: +SKIP
    {'backbone efficientnet-lite:0': {'mmd': ..., 'proxy_a_distance': ..., 'coral': ...}, 'bundle runs/dann': {...}}
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data import subsample
from transferkit.data.adapters import align_labels, check_eval_labels
from transferkit.data.dataset import TaskData
from transferkit.data.domains import check_pairable, resolve_domain_data
from transferkit.errors import ConfigError, DataError, TransferkitError
from transferkit.evaluation.domain_shift import shift_measures
from transferkit.tasks import get_task

__all__ = ["ShiftResult", "measure_shift", "save_shift"]


@dataclass
class ShiftResult:
    """What :func:`measure_shift` returns.

    Attributes:
        measures: per model (``"backbone SPEC"``, ``"bundle DIR"``): ``mmd``, ``proxy_a_distance``, ``coral``.
        figure: the projection PNG (one row per model).
        source, target: names and sizes of the two samples.
        seconds: per model, feature extraction and measures.
        notes: what was left out (e.g. target classes unknown).
    """

    measures: dict[str, dict[str, float]]
    figure: bytes = field(repr=False)
    source: dict
    target: dict
    projection: str
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The result as JSON-ready data (what ``shift.json`` holds), with a reading of each measure."""
        return {"source": self.source, "target": self.target, "measures": self.measures,
                "projection": self.projection, "seconds": self.seconds, "notes": self.notes,
                "reading": {"mmd": "multi-kernel MMD^2, 0 when the samples coincide",
                            "proxy_a_distance": "2(1-2 err) of a linear domain classifier: 0 indistinguishable, "
                                                "2 separable",
                            "coral": "||C_s - C_t||_F^2 / (4 d^2) between the feature covariances"}}


def _sample(data: TaskData, n: int, seed: int) -> TaskData:
    return subsample(data, n, seed) if len(data) > n else data


def _classes(data: TaskData, rows: np.ndarray) -> np.ndarray:
    """The class of each of ``rows`` for the by-class panel; -1 (grey) without single-label targets."""
    if data.targets is not None and get_task(data.task).single_label:
        return np.asarray(data.targets)[rows]
    return np.full(len(rows), -1)


def _models(backbone, bundle, image_size, max_length) -> list[tuple[str, Any]]:
    from transferkit.backbones import load_backbone
    from transferkit.backbones.base import Backbone
    from transferkit.export.bundle import rebuild_model

    out = []
    if backbone is not None:
        if isinstance(backbone, Backbone):
            out.append((f"backbone {backbone.spec}", backbone))
        else:
            opts = {k: v for k, v in {"image_size": image_size, "max_length": max_length}.items() if v is not None}
            out.append((f"backbone {backbone}", load_backbone(backbone, **opts)))
    if bundle is not None:
        out.append((f"bundle {bundle}", rebuild_model(bundle).backbone))
    if not out:
        raise ConfigError("Give a backbone (--backbone SPEC), an adapted bundle (--bundle DIR), or both.")
    return out


def measure_shift(source, target, *, backbone=None, bundle=None, max_items: int = 1000, plot_items: int = 500,
                  projection: str = "tsne", image_size: int | None = None, max_length: int | None = None,
                  text_column: str | None = None, label_column: str | None = "label", seed: int = 0,
                  batch_size: int = 64, progress: bool = False) -> ShiftResult:
    """Shift measures between ``source`` and ``target`` in the feature space of each model given.

    Args:
        source: the labelled source data (any form ``fit`` takes; a built-in name uses its train split).
        target: the target data, the same forms or a flat image folder; labels, if any, colour the plot.
        backbone: a backbone spec or Backbone (the shift before adaptation).
        bundle: an adapted bundle directory (the shift after adaptation).
        max_items: at most this many items per domain (seeded subsample) for the measures.
        plot_items: at most this many per domain in the projection.
        projection: ``tsne``, ``umap`` (needs umap-learn) or ``pca``.

    Raises:
        ConfigError: no model given, unknown projection.
        DataError: source and target of another input kind.

    Example:
        >>> import transferkit as tk
        >>> from transferkit.data.domains import load_fashion_mnist_m
        >>> target, target_test = load_fashion_mnist_m()                                # doctest: +SKIP
        >>> before = tk.measure_shift("fashion-mnist", target_test, backbone="efficientnet-lite:0",
        ...                           image_size=32, max_items=300)                     # doctest: +SKIP
        >>> before.measures["mmd"]                                                      # doctest: +SKIP
    """
    from transferkit.data.cache import extract_features
    from transferkit.reports.shift_plots import ProjectionPanel, embed_2d, shift_projection_png

    if max_items < 10:
        raise ConfigError(f"The 'max_items' parameter must be an int in [10, inf). Got {max_items!r} instead.")
    columns = {"text_column": text_column, "label_column": label_column}
    src = resolve_domain_data(source, columns)
    tgt = resolve_domain_data(target, columns)
    check_pairable(src, tgt, "Target data", "--target")
    notes = []
    if src.targets is None:
        raise DataError(f"The source '{src.name}' has no labels; give the labelled source data.")
    if tgt.targets is not None and get_task(src.task).single_label:
        try:
            check_eval_labels(src, tgt)
            tgt = align_labels(src, tgt)
        except TransferkitError as exc:
            notes.append(f"Target classes not shown: {exc}")
            tgt = TaskData(tgt.items, None, tgt.modality, name=tgt.name, source=tgt.source)
    elif tgt.targets is None:
        notes.append("The target is unlabelled: its points are grey in the by-class panel.")
    src, tgt = _sample(src, max_items, seed), _sample(tgt, max_items, seed)
    measures, seconds, panels = {}, {}, []
    k = min(plot_items, len(src), len(tgt))
    ps = np.sort(np.random.default_rng(seed).choice(len(src), k, replace=False))
    pt = np.sort(np.random.default_rng(seed + 1).choice(len(tgt), k, replace=False))
    labels = np.concatenate([_classes(src, ps), _classes(tgt, pt)]).astype(int)
    for name, model in _models(backbone, bundle, image_size, max_length):
        start = time.perf_counter()
        fs = extract_features(model, src, batch_size=batch_size, progress=progress)
        ft = extract_features(model, tgt, batch_size=batch_size, progress=progress)
        measures[name] = shift_measures(fs, ft, max_items=max_items, seed=seed)
        seconds[name] = round(time.perf_counter() - start, 2)
        xy = embed_2d(np.concatenate([fs[ps], ft[pt]]), projection, seed)
        panels.append(ProjectionPanel(name, xy, k, labels))
    figure = shift_projection_png(panels, src.label_names, projection)
    return ShiftResult(measures, figure, {"name": src.name, "n": len(src)}, {"name": tgt.name, "n": len(tgt)},
                       projection, seconds, notes)


def save_shift(result: ShiftResult, out: str | Path) -> Path:
    """Write ``shift.json`` (the figures) and ``shift_projection.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shift_projection.png").write_bytes(result.figure)
    (out / "shift.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return out
