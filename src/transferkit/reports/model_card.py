"""The model card of one fit: source model, data, strategy, metrics, verdict, figures, limits and versions.

:func:`write_fit_report` assembles one section per topic from the bundle
manifest (every key optional) and writes it through
:mod:`~transferkit.reports.report_render`.
"""
from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.reports.plots import confusion_png, learning_curve_png, prediction_pairs_png, projection_png
from transferkit.reports.report_render import Block, _cell, _h, _img, _p, _table, _ul, _write_report


# --------------------------------------------------------------------------- manifest access


def _get(mapping: Any, *paths: str, default: Any = None) -> Any:
    """The first non-empty value among dotted ``paths`` (``"backbone.spec"``) of a nested dict."""
    for path in paths:
        value: Any = mapping
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value not in (None, "", {}, []):
            return value
    return default


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value)]


def _kv_table(mapping: Any, skip: Sequence[str] = ()) -> list[Block]:
    if not isinstance(mapping, dict):
        return []
    rows = [(k, v) for k, v in _flatten(mapping) if k and k.split(".")[0] not in skip]
    return [_table(("field", "value"), rows)] if rows else []


# --------------------------------------------------------------------------- sections


def _source_section(manifest: dict) -> list[Block]:
    backbone = manifest.get("backbone")
    spec = _get(manifest, "backbone.spec", "backbone.name", "backbone_spec", "source_model")
    spec = spec or (backbone if isinstance(backbone, str) else None)
    blocks = [_h(2, "Source model"), _p(f"Backbone: `{spec}`." if spec else "The backbone was not recorded.")]
    provenance = _get(manifest, "backbone.provenance", "backbone_provenance", "provenance", "backbone.source")
    if isinstance(provenance, dict):
        blocks += _kv_table(provenance)
    elif provenance:
        blocks.append(_p(f"Provenance: {provenance}"))
    else:
        blocks.append(_p("Provenance (where the pre-trained weights come from, their licence and training "
                         "data) was not recorded; check it before relying on this model."))
    if isinstance(backbone, dict):
        blocks += _kv_table(backbone, skip=("spec", "provenance", "source", "architecture"))
    return blocks


def _data_section(manifest: dict, label_names: Sequence[str] | None) -> list[Block]:
    data = manifest.get("data")
    blocks = [_h(2, "Data")]
    rows = [("task", manifest.get("task")), ("modality", manifest.get("modality")),
            ("fingerprint", manifest.get("data_fingerprint"))]
    rows = [(k, v) for k, v in rows if v is not None]
    rows += [(k, v) for k, v in _flatten(data) if k] if isinstance(data, dict) else []
    if label_names:
        rows.append((f"labels ({len(label_names)})", list(label_names)))
    blocks += [_table(("field", "value"), rows)] if rows else [_p("The data was not recorded.")]
    return blocks


def _training_section(manifest: dict) -> list[Block]:
    strategy = manifest.get("strategy")
    name = _get(manifest, "strategy.name") or (strategy if isinstance(strategy, str) else None)
    blocks = [_h(2, "Strategy and hyperparameters"),
              _p(f"Strategy: `{name}`." if name else "The strategy was not recorded.")]
    if isinstance(strategy, dict):
        blocks += _kv_table(strategy, skip=("name",))
    for key in ("strategy_config", "config", "train", "train_config", "training", "hyperparameters"):
        blocks += _kv_table(manifest.get(key))
    if manifest.get("train_seconds") is not None:
        blocks.append(_p(f"Training time: {_cell(manifest['train_seconds'])} s."))
    return blocks


def _metrics_section(metrics: dict | None, manifest: dict) -> list[Block]:
    blocks = [_h(2, "Metrics")]
    if not metrics:
        return blocks + [_p("No evaluation metrics were recorded for this model.")]
    split = _get(manifest, "eval_split", "evaluation.split", "metrics_split") or metrics.get("evaluated_on")
    if split:
        blocks.append(_p(f"Measured on: {split}."))
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float, str, np.number)) and k != "labels"]
    if scalars:
        blocks.append(_table(("metric", "value"), scalars))
    for key, title in (("per_class_recall", "recall"), ("per_label_ap", "average precision")):
        if isinstance(metrics.get(key), dict):
            blocks.append(_table(("label", title), metrics[key].items()))
    return blocks + _fairness_blocks(metrics.get("fairness"))


def _fairness_blocks(fairness: Any) -> list[Block]:
    """Per-group accuracy and the gaps of :func:`transferkit.evaluation.fairness.group_metrics`."""
    if not isinstance(fairness, dict) or not isinstance(fairness.get("groups"), dict):
        return []
    rows = [(g, v.get("count"), v.get("accuracy")) for g, v in fairness["groups"].items()]
    gaps = [(k, fairness.get(k)) for k in ("accuracy_worst_group", "worst_group", "accuracy_gap",
                                           "demographic_parity_difference", "equalized_odds_difference")]
    return [_h(3, f"Groups of the sensitive attribute '{fairness.get('attribute')}'"),
            _table(("group", "count", "accuracy"), rows), _table(("measure", "value"), gaps),
            _p(f"Differences: {fairness.get('definition', '')}.")]


def _verdict_section(manifest: dict) -> list[Block]:
    verdict = manifest.get("verdict")
    blocks = [_h(2, "Did transfer help?")]
    if isinstance(verdict, dict):
        head = verdict.get("verdict")
        blocks += [_p(f"**{head}**. {verdict.get('explanation', '')}".strip())] if head else []
        return blocks + _kv_table(verdict, skip=("verdict", "explanation"))
    if verdict:
        return blocks + [_p(str(verdict))]
    searched = (manifest.get("auto") or {}).get("verdict") or {}
    if searched.get("verdict") not in (None, "no baseline"):
        return blocks + [_p(f"**{searched['verdict']}** (in the auto search's cross-validation on the training "
                            f"labels). {searched.get('explanation', '')}")]
    if _get(manifest, "strategy.kind") == "scratch":
        return blocks + [_p("Not applicable: this model was trained from scratch, without a pre-trained source.")]
    return blocks + [_p("Not measured for this model: no from-scratch baseline was trained on the same data. "
                        "The metrics above do not show that the pre-trained source helped; compare against "
                        "scratch baselines over several seeds (`transferkit.compare`) to find out.")]


def _auto_section(auto: dict | None) -> list[Block]:
    """How ``strategy="auto"`` chose the recipe: every candidate's cross-validated score, time and fate."""
    if not isinstance(auto, dict) or not auto.get("candidates"):
        return []
    rows = []
    for c in auto["candidates"]:
        interval = (f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" if c.get("folds", 0) > 1 and c.get("low") == c.get("low")
                    else (f"{c['mean']:.3f}" if c.get("folds") else "-"))
        rows.append([c["candidate"], str(c.get("folds", 0)), interval, f"{c.get('seconds', 0):.1f}", c.get("status", "")])
    budget = auto.get("budget_seconds")
    return [_h(2, "How auto chose this recipe"),
            _p(f"{auto.get('protocol', '')}; {auto.get('seconds', 0):.0f} s"
               + (f" of a {budget:.0f} s budget." if budget else ".") + f" {auto.get('reason', '')}"),
            _table(["candidate", "folds", f"{auto.get('metric', 'score')} mean [95% CI over folds]", "seconds",
                    "status"], rows)]


def _limits_section(manifest: dict) -> list[Block]:
    items = [
        "Intended use: predictions on data like the training data described above (same kind of inputs, "
        "same label set, similar collection process).",
        "The metrics estimate performance only on data from the same distribution as the evaluation split; "
        "expect them to drop under distribution shift. A small evaluation split gives uncertain estimates.",
        ("Group fairness was measured for one sensitive attribute only (see Metrics); the model has not been "
         "evaluated here for other groups, " if isinstance((manifest.get("metrics") or {}).get("fairness"), dict)
         else "The model has not been evaluated here for fairness across groups, ")
        + "robustness to adversarial or corrupted inputs, calibration beyond the reported metrics, or safety-critical use.",
        "It inherits the biases and the licence terms of the pre-trained source model and its training data.",
    ]
    intended = _get(manifest, "intended_use")
    blocks = [_h(2, "Intended use and limitations")]
    return blocks + ([_p(str(intended))] if intended else []) + [_ul(items)]


_VERSIONED = ("transferkit", "torch", "torchvision", "timm", "transformers", "sentence-transformers",
              "accelerate", "scikit-learn", "numpy", "pandas")


def _installed_versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _versions_section(manifest: dict) -> list[Block]:
    versions = _get(manifest, "versions", "library_versions", "environment")
    if isinstance(versions, dict):
        return [_h(2, "Software"), *_kv_table(versions)]
    return [_h(2, "Software"), _p("The manifest records no library versions; these were installed when the "
                                  "report was written:"), *_kv_table(_installed_versions())]


def _fit_figures(history: Sequence[dict], metrics: dict | None, label_names: Sequence[str] | None,
                 projection: tuple | None = None) -> list[Block]:
    blocks = [_h(2, "Learning curve")]
    if history:
        blocks.append(_img("learning_curve.png", learning_curve_png(history), "Learning curve"))
    else:
        blocks.append(_p("No training history was recorded (e.g. a closed-form fit)."))
    matrix = (metrics or {}).get("confusion_matrix")
    if matrix:
        names = (metrics or {}).get("labels") or label_names
        names = names if names is not None and len(names) == len(matrix) else None
        blocks += [_h(2, "Confusion matrix"), _img("confusion.png", confusion_png(matrix, names), "Confusion matrix")]
    if projection is not None:
        feats, labels = projection
        blocks += [_h(2, "Features by class"),
                   _p("The trained backbone's features of the evaluated items on their first two principal "
                      "components: classes that overlap here are the ones the head confuses."),
                   _img("features_pca.png", projection_png(feats, labels, label_names), "Features by class (PCA)")]
    return blocks


def write_fit_report(
    out_dir: str | os.PathLike,
    *,
    manifest: dict,
    history: list[dict],
    metrics: dict | None,
    label_names: Sequence[str] | None = None,
    projection: tuple | None = None,
    examples: tuple | None = None,
    figure: tuple[str, str, list] | None = None,
) -> list[Path]:
    """Write the model card of one fit as ``report.md`` (+ ``plots/``) and a self-contained ``report.html``.

    Every manifest key is optional. Keys read: ``name``, ``created``,
    ``task``, ``modality``, ``backbone`` (a spec string, or a dict with
    ``spec``, ``provenance``...), ``backbone_spec``, ``provenance`` /
    ``backbone_provenance``, ``data`` (dict: name, fingerprint, sizes...),
    ``data_fingerprint``, ``strategy`` (a name, or a dict with ``name`` and
    its config), ``strategy_config`` / ``config`` / ``train`` /
    ``train_config`` / ``training`` / ``hyperparameters``, ``train_seconds``,
    ``metrics``, ``eval_split``, ``verdict`` (a string or a dict with
    ``verdict`` and ``explanation``), ``label_names``, ``intended_use``,
    ``versions`` / ``library_versions`` (else the installed versions are listed).

    Args:
        out_dir: Directory to write into (created if needed).
        manifest: The bundle manifest.
        history: Per-epoch rows for the learning curve (may be empty).
        metrics: Evaluation metrics (from :func:`transferkit.evaluation.compute_metrics`);
            ``None`` falls back to ``manifest["metrics"]``.
        label_names: Class names; default ``manifest["label_names"]``.
        projection: ``(features [N, D], labels [N])`` of the evaluated items, drawn as a 2-D PCA plot.
        examples: ``(headers, rows)`` of a few evaluated items (the task's ``report_examples``).
        figure: ``(title, caption, rows)`` of a few evaluated items drawn (the task's ``report_figure``): each
            row's ground truth beside its prediction, in ``plots/predictions.png``.

    Returns:
        The paths written: ``report.md``, ``report.html``, then the PNGs.
    """
    metrics = metrics if metrics is not None else manifest.get("metrics")
    label_names = label_names if label_names is not None else manifest.get("label_names")
    title = f"Model card: {_get(manifest, 'name', 'data.name', default='transferkit model')}"
    created = _get(manifest, "created", "created_at")
    blocks = [_h(1, title)] + ([_p(f"Created: {created}.")] if created else [])
    blocks += _source_section(manifest) + _data_section(manifest, label_names) + _training_section(manifest)
    blocks += _auto_section(manifest.get("auto"))
    blocks += _metrics_section(metrics, manifest) + _verdict_section(manifest)
    blocks += _fit_figures(history, metrics, label_names, projection)
    if examples is not None and examples[1]:
        blocks += [_h(2, "Examples"), _p("A few evaluated items, those the model got wrong first."),
                   _table(examples[0], examples[1])]
    if figure is not None and figure[2]:
        blocks += [_h(2, figure[0]), _p(figure[1]), _img("predictions.png", prediction_pairs_png(figure[2]), figure[0])]
    blocks += _limits_section(manifest) + _versions_section(manifest)
    return _write_report(Path(out_dir), blocks, title, extra={})
