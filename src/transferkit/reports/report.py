"""Markdown and self-contained HTML reports: the model card of one fit, and a comparison of strategies.

A report is first built as a list of blocks (headings, paragraphs, tables,
lists, images) and then rendered twice: ``report.md`` refers to PNG files
written beside it under ``plots/``, while ``report.html`` embeds the same PNGs
as base64 data URIs so that it can be mailed or archived as one file.

Every file is written to a temporary name and renamed into place, and the
reports are renamed last: a crash leaves either no report or a complete one,
never a truncated one.
"""
from __future__ import annotations

import base64
import html
import importlib.metadata
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferkit.evaluation.metrics import higher_is_better, is_fraction_metric
from transferkit.reports.plots import (
    confusion_png,
    data_efficiency_png,
    learning_curve_png,
    lpc_label,
    projection_png,
    strategy_bars_png,
)

_MAX_LIST = 12


@dataclass(frozen=True)
class Block:
    """One piece of a report: ``kind`` is ``h1``/``h2``/``p``/``ul``/``table``/``img``."""

    kind: str
    text: str = ""
    items: tuple = ()
    headers: tuple = ()
    png: bytes = b""


def _h(level: int, text: str) -> Block:
    return Block(f"h{level}", text)


def _p(text: str) -> Block:
    return Block("p", text)


def _ul(items: Iterable[str]) -> Block:
    return Block("ul", items=tuple(items))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Block:
    return Block("table", headers=tuple(headers), items=tuple(tuple(_cell(v) for v in r) for r in rows))


def _img(file_name: str, png: bytes, alt: str) -> Block:
    return Block("img", text=alt, items=(file_name,), png=png)


def _cell(value: Any) -> str:
    """Readable text of a table value: 4 significant digits, short lists, ``—`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_cell(v) for v in value[:_MAX_LIST])
        return shown + (f", … ({len(value) - _MAX_LIST} more)" if len(value) > _MAX_LIST else "")
    return str(value)


# --------------------------------------------------------------------------- rendering


def _md_escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table from header and row strings."""
    lines = ["| " + " | ".join(_md_escape_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_md(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind.startswith("h"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            out.append(markdown_table(b.headers, b.items))
        elif b.kind == "img":
            out.append(f"![{b.text}](plots/{b.items[0]})")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escape ``text`` and turn markdown ``code`` and **bold** into HTML."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%;height:auto;border:1px solid #eee}code{background:#f5f5f5;padding:0 .2em}"""


def _render_html_block(b: Block) -> str:
    if b.kind.startswith("h"):
        return f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline_html(b.text)}</p>"
    if b.kind == "ul":
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>"
    if b.kind == "table":
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.headers)
        body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in b.items)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if b.kind == "img":
        data = base64.b64encode(b.png).decode("ascii")
        return f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}"></figure>'
    raise AssertionError(f"unknown block kind {b.kind!r}")


def _render_html(blocks: Sequence[Block], title: str) -> str:
    body = "\n".join(_render_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_report(out_dir: Path, blocks: list[Block], title: str, extra: dict[str, str | bytes]) -> list[Path]:
    """Write ``extra`` files and plots first, then ``report.md``, then ``report.html``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_atomic_write(out_dir / name, data) for name, data in extra.items()]
    images = [b for b in blocks if b.kind == "img"]
    if images:
        (out_dir / "plots").mkdir(exist_ok=True)
    written += [_atomic_write(out_dir / "plots" / b.items[0], b.png) for b in images]
    md = _atomic_write(out_dir / "report.md", _render_md(blocks))
    page = _atomic_write(out_dir / "report.html", _render_html(blocks, title))
    return [md, page, *written]


# --------------------------------------------------------------------------- the fit report (model card)


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
    if _get(manifest, "strategy.kind") == "scratch":
        return blocks + [_p("Not applicable: this model was trained from scratch, without a pre-trained source.")]
    return blocks + [_p("Not measured for this model: no from-scratch baseline was trained on the same data. "
                        "The metrics above do not show that the pre-trained source helped; compare against "
                        "scratch baselines over several seeds (`transferkit.compare`) to find out.")]


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

    Returns:
        The paths written: ``report.md``, ``report.html``, then the PNGs.
    """
    metrics = metrics if metrics is not None else manifest.get("metrics")
    label_names = label_names if label_names is not None else manifest.get("label_names")
    title = f"Model card: {_get(manifest, 'name', 'data.name', default='transferkit model')}"
    created = _get(manifest, "created", "created_at")
    blocks = [_h(1, title)] + ([_p(f"Created: {created}.")] if created else [])
    blocks += _source_section(manifest) + _data_section(manifest, label_names) + _training_section(manifest)
    blocks += _metrics_section(metrics, manifest) + _verdict_section(manifest)
    blocks += _fit_figures(history, metrics, label_names, projection)
    blocks += _limits_section(manifest) + _versions_section(manifest)
    return _write_report(Path(out_dir), blocks, title, extra={})


# --------------------------------------------------------------------------- the comparison report


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
        rows.append([str(r.get("experiment", "")), lpc_label(r.get("labels_per_class")), str(r.get("strategy", "")),
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
    rows = [(r.experiment, lpc_label(r.labels_per_class), r.strategy, r.baseline,
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
