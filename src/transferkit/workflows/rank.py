"""Choosing what to transfer: rank candidate backbones by transferability scores before training.

:func:`rank` embeds the labelled target data with every candidate (through
the feature cache, so a second call is a cache read), computes the scores of
:mod:`transferkit.evaluation.transferability` on the frozen features, and
compares each candidate with the same architecture at random initialisation:
a pre-trained model that scores no better than random weights has nothing to
transfer. A candidate that fails to load or to score gets an error row; the
others are still ranked. With ``out``, each candidate is recorded as it is
scored, and an interrupted rank resumes without scoring it again
(``resume=True``, ``--resume``; :mod:`transferkit.workflows.run_journal`).

Example:
    >>> from transferkit import rank                                               # doctest: +SKIP
    >>> result = rank(["efficientnet-lite:0", "efficientnet-lite:0@block5"],       # doctest: +SKIP
    ...               "fashion-mnist", labels_per_class=10, image_size=64)
    >>> result.table[["candidate", "rank", "logme", "flag"]]                      # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.backbones import BACKBONE_SOURCES, BackboneSource, load_backbone, split_spec
from transferkit.backbones.base import Backbone
from transferkit.data import resolve_data, sample_per_class, subsample
from transferkit.data.cache import extract_features
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, TransferkitError, unknown_name
from transferkit.evaluation.transferability import DEFAULT_SCORES, REGRESSION_SCORES, SCORES, compute_score
from transferkit.export.output_lock import atomic_dir, check_writable
from transferkit.tasks import get_task
from transferkit.workflows.engine import Engine, make_engine
from transferkit.workflows.run_journal import RunJournal, map_runs, run_journal

__all__ = ["RankResult", "rank", "recommend"]

#: The score that sorts ``rank``'s table and picks the backbone, unless the caller says otherwise.
#: Leave-one-out kNN accuracy: in ``benchmarks/model_selection.py`` (9 candidates, 3 targets, 3 seeds,
#: scores on the labelled draw only) it had the highest rank correlation with fine-tuned accuracy
#: (weighted tau +0.57 vs +0.14 for LogME) and the smallest regret of the recommendation
#: (2.5 vs 7.5 points). LogME and the covariance scores were built for thousands of target examples.
PRIMARY_SCORE = "knn"
#: Cross-validated linear-probe accuracy from which the frozen features "already separate the classes".
SEPARABLE_AT = 0.9
#: Labels per class below which fine-tuning rarely beats a linear probe (ASSETS.md: Lite0 on
#: Fashion-MNIST, 10/class: probe 67.6 vs fine-tune 65.7; 100/class: 81.0 vs 84.6).
FEW_LABELS = 25


@dataclass
class RankResult:
    """What :func:`rank` returns.

    Attributes:
        table: one row per candidate, best first: ``candidate``, ``rank``,
            ``features`` (width), one column per score, ``random_<score>``
            (each score of the same architecture at random init), ``flag``
            (from the primary score),
            ``extract_seconds``, ``score_seconds``, ``error``.
        primary: the score the table is sorted by.
        recommendation: ``backbone``, ``strategy`` and ``reason``.
        notes: warnings (every candidate near random, skipped candidates).
        path: the folder ``rank.csv`` and ``rank.md`` were written to (``out``), else ``None``.
    """

    table: pd.DataFrame
    primary: str
    recommendation: dict
    data: str
    notes: list[str] = field(default_factory=list)
    path: Path | None = None


def _check_scores(scores) -> list[str]:
    names = list(DEFAULT_SCORES if scores is None else ([scores] if isinstance(scores, str) else scores))
    if not names:
        raise ConfigError(f"Give at least one score. Available: {', '.join(SCORES.names())}.")
    for name in names:
        if name not in SCORES:
            raise unknown_name("transferability score", name, SCORES.names())
    return names


def _target_data(data, labels_per_class, max_items, seed, data_options) -> TaskData:
    train, _ = resolve_data(data, **data_options)
    task = get_task(train.task)
    if task.has_labels and not task.single_label:  # e.g. multi-label
        raise ConfigError("Transferability scores need single-label classification or regression targets; "
                          f"'{train.name}' is multi-label.")
    if labels_per_class is not None:
        train = sample_per_class(train, labels_per_class, seed)
    if max_items is not None and len(train) > max_items:
        train = subsample(train, max_items, seed)
    return train


def _score_all(backbone: Backbone, data: TaskData, names: list[str], batch_size: int) -> dict:
    """Features, then every score; a score that cannot apply gets NaN and a note."""
    import torch

    row: dict = {"features": backbone.num_features}
    start = time.perf_counter()
    feats = extract_features(backbone, data, batch_size=batch_size)
    row["extract_seconds"] = round(time.perf_counter() - start, 2)
    probs = None
    if backbone.source_head is not None and any(SCORES.get(n).needs == "source_probs" for n in names):
        with torch.inference_mode():
            probs = backbone.source_head(torch.from_numpy(feats)).softmax(-1).double().numpy()
    regression = not get_task(data.task).has_labels  # continuous targets
    errors, spent = [], 0.0
    for name in names:
        info = SCORES.get(name)
        if (info.needs == "source_probs" and probs is None) or (regression and name not in REGRESSION_SCORES):
            row[name] = np.nan
            continue
        t0 = time.perf_counter()
        try:
            row[name] = compute_score(name, features=feats, labels=np.asarray(data.targets), source_probs=probs,
                                      regression=regression)
        except TransferkitError as exc:
            row[name] = np.nan
            errors.append(f"{name}: {exc}")
        spent += time.perf_counter() - t0
        row[f"seconds:{name}"] = round(time.perf_counter() - t0, 3)
    row["score_seconds"] = round(spent, 2)
    row["error"] = "; ".join(errors)
    return row


def rank(candidates, data, *, scores=None, primary: str | None = None, labels_per_class: int | None = None,
         max_items: int | None = 2000,
         budget_minutes: float | None = None, random_reference: bool = True, image_size: int | None = None,
         max_length: int | None = None, batch_size: int = 64, seed: int = 0, progress: bool = False,
         data_options: dict | None = None, out: str | Path | None = None, overwrite: bool = False,
         resume: bool = False, engine: str | Engine = "local", address: str | None = None) -> RankResult:
    """Rank backbone candidates for ``data`` by transferability scores of their frozen features.

    Args:
        candidates: backbone specs (``efficientnet-lite:0``, ``efficientnet-lite:0@block5``,
            ``file:runs/source-bundle``, ``sentence:all-MiniLM-L6-v2``).
        data: the labelled target data (any form :func:`transferkit.fit` takes).
        scores: score names (``transferkit list scores``); default
            :data:`~transferkit.evaluation.transferability.DEFAULT_SCORES`. The
            table is sorted by the first that every candidate could compute
            LEEP and NCE need a source head (EfficientNet-Lite's ImageNet
            classifier); other candidates get NaN there.
        primary: the score that sorts the table and picks the recommended backbone;
            default :data:`PRIMARY_SCORE` when ``scores`` is not given, else the first of ``scores``.
        labels_per_class: score on a seeded draw of this many labels per class
            (what you will train with).
        max_items: score on a stratified subset of at most this many items.
        budget_minutes: stop loading new candidates once this much time has passed
            (the first is always scored); the rest get a "skipped" row.
        random_reference: also score each candidate's architecture at random
            initialisation, and flag candidates that do no better.
        image_size, max_length: backbone input size.
        out: write ``rank.csv`` and ``rank.md`` here (:func:`save_rank`), and record every finished run in
            ``OUT.runs/`` as it finishes (:mod:`transferkit.workflows.run_journal`). A run is one candidate's
            scores, or the random-init reference of one architecture (scored once for the candidates that
            share it). Candidates skipped for time or that failed to load are not recorded.
        overwrite: replace an existing ``out``; start over from a journal left in ``OUT.runs``.
        resume: go on from an interrupted rank: the recorded runs are not scored again and the table is the
            one an uninterrupted rank gives. Other settings (candidates, scores, data draw, ...) are refused,
            naming them; ``budget_minutes`` and the engine may change.
        engine, address: ``"ray"`` scores the candidates as Ray tasks in parallel, on a local Ray or the
            cluster at ``address`` (:mod:`transferkit.workflows.engine`); the table is the local engine's.

    Returns:
        A :class:`RankResult`.

    Example:
        >>> import transferkit as tk
        >>> r = tk.rank(["efficientnet-lite:0", "efficientnet-lite:0@block5"], "fashion-mnist",
        ...             labels_per_class=10, image_size=64)          # doctest: +SKIP
        >>> r.recommendation["backbone"], r.recommendation["strategy"]   # doctest: +SKIP
    """
    names = _check_scores(scores)
    primary = primary or (PRIMARY_SCORE if scores is None else names[0])
    if primary not in names:
        raise ConfigError(f"The primary score '{primary}' must be one of the scores computed: {', '.join(names)}.")
    if not candidates:
        raise ConfigError("Give at least one candidate backbone spec.")
    engine = make_engine(engine, address)
    if out is not None:
        check_writable(out, overwrite)
    target = _target_data(data, labels_per_class, max_items, seed, data_options or {})
    bb_opts = {k: v for k, v in {"image_size": image_size, "max_length": max_length}.items() if v is not None}
    settings = {"candidates": list(candidates), "data": data if isinstance(data, str) else None, "scores": names,
                "primary": primary, "labels_per_class": labels_per_class, "max_items": max_items,
                "random_reference": random_reference, "backbone_options": bb_opts, "batch_size": batch_size,
                "seed": seed, "data_options": data_options or {}}
    with engine, run_journal(out, settings, command="rank", resume=resume, overwrite=overwrite) as journal:
        rows = _score_runs(engine, journal, candidates, target, names, bb_opts, batch_size, random_reference, seed,
                           budget_minutes, progress)
        result = _result(rows, target, names, primary, random_reference)
        if out is not None:
            result.path = save_rank(result, out, overwrite=overwrite)
    return result


def _score_runs(engine: Engine, journal: RunJournal, candidates, target: TaskData, names: list[str], bb_opts: dict,
                batch_size: int, random_reference: bool, seed: int, budget_minutes: float | None,
                progress: bool) -> list[dict]:
    """Every candidate's row with its random-init reference: the runs in ``journal`` read back, the others scored."""
    start, fingerprint = time.time(), target.fingerprint()
    jobs = [(f"candidate/{i}/{spec}", fingerprint,
             (spec, i, start, budget_minutes, target, names, bb_opts, batch_size, random_reference, seed))
            for i, spec in enumerate(candidates)]
    rows = map_runs(engine, _score_candidate, jobs, journal, on_row=_say if progress else None, done=_scored)
    # The random-init reference of each architecture, once however many candidates share it.
    archs = {json.dumps(r["arch"], sort_keys=True): r["arch"] for r in rows if "arch" in r}
    refs = map_runs(engine, _score_reference, [(f"reference/{key}", fingerprint,
                                                (arch, target, names, bb_opts, batch_size, seed))
                                               for key, arch in archs.items()], journal, done=_scored)
    references = dict(zip(archs, refs))
    for i, row in enumerate(rows):
        if "arch" in row:
            ref = references[json.dumps(row.pop("arch"), sort_keys=True)]
            rows[i] = {"candidate": row["candidate"], "error": ref["error"]} if "failed" in ref else {
                **row, "reference": ref}
    return rows


def _scored(row: dict) -> bool:
    """Whether a candidate's or a reference's row holds scores (a skipped or failed load is tried again on resume)."""
    return "features" in row


def _result(rows: list[dict], target: TaskData, names: list[str], primary: str, random_reference: bool) -> RankResult:
    """The table sorted by ``primary``, with its flags, notes and recommendation."""
    notes: list[str] = []
    table = _finish_table(pd.DataFrame(rows), names, primary, random_reference)
    if random_reference and table["flag"].str.contains("random").all() and len(table):
        notes.append(f"Every candidate scores near a randomly initialised network's {primary}: none of them "
                     "is likely to transfer; compare against a from-scratch baseline (transferkit compare).")
    notes += [f"{r.candidate}: {r.error}" for r in table.itertuples() if r.error]
    rec = recommend(table, primary, labels_per_class=_labels_per_class(target), task=target.task)
    return RankResult(table, primary, rec, target.name, notes)


def _score_candidate(spec: str, index: int, start: float, budget_minutes: float | None, target: TaskData,
                     names: list[str], bb_opts: dict, batch_size: int, random_reference: bool, seed: int) -> dict:
    """One candidate's row (with its ``arch`` when the random-init reference is wanted), or its error row.

    Once ``budget_minutes`` have passed since ``start`` (wall-clock time), no candidate but the first is loaded.
    """
    if budget_minutes is not None and index > 0 and time.time() - start > 60 * budget_minutes:
        return {"candidate": spec, "error": f"skipped: over the {budget_minutes:g}-minute budget"}
    import torch

    torch.manual_seed(seed)  # a source with randomly initialised parts starts the same on any engine
    try:
        backbone = _load(spec, target, bb_opts, pretrained=True)
        row = {"candidate": spec, **_score_all(backbone, target, names, batch_size)}
        if random_reference:
            row["arch"] = backbone.architecture()
        return row
    except TransferkitError as exc:
        return {"candidate": spec, "error": str(exc)}


def _score_reference(arch: dict, target: TaskData, names: list[str], bb_opts: dict, batch_size: int,
                     seed: int) -> dict:
    """Every score of the architecture ``arch`` at a seeded random initialisation."""
    import torch

    torch.manual_seed(seed)  # the same reference on any engine and in any order
    try:
        rand = _load(arch["spec"], target, {**arch.get("options", {}), **bb_opts}, pretrained=False)
        return _score_all(rand, target, names, batch_size)
    except TransferkitError as exc:
        return {"failed": True, "error": str(exc)}


def _load(spec: str, target: TaskData, options: dict, *, pretrained: bool) -> Backbone:
    """Load a candidate with the size options its source takes (``image_size`` means nothing to a text model)."""
    source = BACKBONE_SOURCES.get(split_spec(spec)[0])
    if isinstance(source, BackboneSource):
        options = {k: v for k, v in options.items() if k in source.options}
    backbone = load_backbone(spec, pretrained=pretrained, **options)
    if backbone.modality != target.modality:
        raise ConfigError(f"{spec} is a {backbone.modality} backbone; '{target.name}' holds {target.modality} data.")
    return backbone


def _finish_table(table: pd.DataFrame, names: list[str], primary: str, random_reference: bool) -> pd.DataFrame:
    for col in ("error", "features", "extract_seconds", "score_seconds", *names):
        if col not in table:
            table[col] = np.nan if col != "error" else ""
    table["error"] = table["error"].fillna("")
    ref_col = f"random_{primary}"
    if random_reference and "reference" in table:
        for name in names:  # every score of the random-init reference, so any of them can be compared
            table[f"random_{name}"] = [r.get(name, np.nan) if isinstance(r, dict) else np.nan
                                       for r in table["reference"]]
        table = table.drop(columns="reference")
    flags = []
    for _, r in table.iterrows():
        if r["error"] and pd.isna(r[primary]):
            flags.append("failed" if not str(r["error"]).startswith("skipped") else "skipped")
        elif random_reference and ref_col in table and not pd.isna(r[ref_col]) and r[primary] <= r[ref_col]:
            flags.append("no better than random init")
        else:
            flags.append("")
    table["flag"] = flags
    table = table.sort_values(primary, ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    table.insert(1, "rank", [i + 1 if not pd.isna(v) else None for i, v in enumerate(table[primary])])
    return table


def recommend(table: pd.DataFrame, primary: str, *, labels_per_class: int, task: str = "classification") -> dict:
    """The backbone to start from and the strategy to adapt it with, with the reason.

    Rule (checked by ``benchmarks/model_selection.py``): the candidate with the
    highest ``primary`` score that is not flagged; then ``linear-probe`` when
    its cross-validated linear-probe accuracy reaches :data:`SEPARABLE_AT` (the
    frozen features already separate the classes) or when there are fewer
    than :data:`FEW_LABELS` labels per class (too few for fine-tuning to pay
    off reliably); otherwise ``finetune``.

    Args:
        table: one row per candidate with ``candidate``, ``flag`` ("" when usable),
            the ``primary`` score and, if computed, ``linear-probe``.
        primary: the score that picks the backbone.
        labels_per_class: median labelled examples per class of the target.
        task: ``classification`` or ``regression``.
    """
    usable = table[(table["flag"].fillna("") == "") & table[primary].notna()]
    usable = usable.sort_values(primary, ascending=False, kind="stable")
    if usable.empty:
        return {"backbone": None, "strategy": "scratch",
                "reason": "No candidate scores above its randomly initialised architecture: train from scratch "
                          "or find a closer source model."}
    best = usable.iloc[0]
    lp = best.get("linear-probe", np.nan)
    per_class = labels_per_class
    if not get_task(task).has_labels:  # a regression target
        strategy, why = "finetune", "regression target: fine-tune, and compare with a linear probe"
    elif not pd.isna(lp) and lp >= SEPARABLE_AT:
        strategy, why = "linear-probe", f"its frozen features already separate the classes (cross-validated " \
                                        f"linear-probe accuracy {lp:.2f} >= {SEPARABLE_AT})"
    elif per_class < FEW_LABELS:
        strategy, why = "linear-probe", f"with {per_class} labels per class fine-tuning rarely beats a linear " \
                                        f"probe on frozen features; check with transferkit compare"
    else:
        acc = f" (cross-validated linear-probe accuracy {lp:.2f})" if not pd.isna(lp) else ""
        strategy, why = "finetune", f"the frozen features do not separate the classes{acc} and there are " \
                                    f"{per_class} labels per class to adapt the backbone with"
    return {"backbone": best["candidate"], "strategy": strategy,
            "reason": f"{best['candidate']} has the highest {primary}; {strategy}: {why}."}


def _labels_per_class(data: TaskData) -> int:
    if not get_task(data.task).single_label:
        return len(data)
    counts = np.bincount(np.asarray(data.targets))
    return int(np.median(counts[counts > 0]))


def _say(row: dict) -> None:
    from rich.console import Console

    msg = row.get("error") or f"{row.get('extract_seconds', 0):.1f}s features, {row.get('score_seconds', 0):.1f}s scores"
    Console(stderr=True).print(f"  [dim]{row['candidate']}: {msg}[/dim]", soft_wrap=True)


def save_rank(result: RankResult, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``rank.csv`` and ``rank.md`` (table, recommendation, notes) to the folder ``out``, atomically.

    Raises:
        BundleError: ``out`` exists without ``overwrite``, or another run is writing it.
    """
    with atomic_dir(out, overwrite) as tmp:
        result.table.to_csv(tmp / "rank.csv", index=False)
        shown = result.table[[c for c in result.table if not c.startswith("seconds:")]]
        lines = [f"# Candidate ranking on {result.data}", "", _markdown(shown), "",
                 f"**Recommendation:** {result.recommendation['reason']}", ""]
        lines += [f"- {n}" for n in result.notes]
        (tmp / "rank.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(out)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])
