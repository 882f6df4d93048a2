"""``compare``: transfer strategies against scratch baselines over seeds and label budgets, with verdicts.

Example:
    >>> import transferkit as tk                                                         # doctest: +SKIP
    >>> r = tk.compare("efficientnet-lite:0", "fashion-mnist", ["linear-probe", "finetune"],  # doctest: +SKIP
    ...                seeds=3, labels_per_class=[10, 100], image_size=64, out="runs/compare")
    >>> r.verdicts[["strategy", "labels_per_class", "verdict"]]                         # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferkit.data.dataset import TaskData
from transferkit.evaluation import higher_is_better, summarize, transfer_verdicts
from transferkit.export.bundle import check_writable
from transferkit.strategies import Strategy, make_strategy
from transferkit.tasks import get_task, primary_metric
from transferkit.training import TrainConfig
from transferkit.workflows.auto import AUTO, AutoOptions, auto_options, search_and_train
from transferkit.workflows.baselines import baseline_config, default_baselines, scratch_head_options
from transferkit.workflows.engine import Engine, make_engine
from transferkit.workflows.fit import prepare_data
from transferkit.workflows.run_journal import run_journal
from transferkit.workflows.runs import Run, is_main_process, train_and_score

__all__ = ["CompareResult", "compare", "data_name"]


@dataclass
class CompareResult:
    """What :func:`compare` returns: one row per run, the summary and the verdicts."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    metric: str
    path: Path | None = None
    notes: list[str] = field(default_factory=list)


def compare(backbone: str, data, strategies=("linear-probe", "finetune"), *, seeds: int = 3,
            labels_per_class=None, baselines="auto", strategy_options: dict | None = None, test_data=None,
            val_fraction: float | None = None, max_test: int | None = None, experiment: str | None = None,
            image_size: int | None = None, max_length: int | None = None, out: str | Path | None = None,
            overwrite: bool = False, resume: bool = False, config: TrainConfig | None = None,
            progress: bool = True, text_column: str | None = None, label_column: str = "label",
            strict_labels: bool = True, data_options: dict | None = None, engine: str | Engine = "local",
            address: str | None = None, **train_options: Any) -> CompareResult:
    """Run ``strategies`` and the scratch baselines over ``seeds`` and label budgets, with verdicts.

    Every strategy sees the same labelled draw for a given seed, so gains are
    paired by seed. Baselines use their own recipes (the user's ``epochs``/``lr``
    apply to the transfer strategies only). ``baselines="auto"``: a small CNN and the
    same architecture at random init for images, TF-IDF + logistic regression for text.
    ``strict_labels=False`` lets a class with fewer than ``labels_per_class``
    examples contribute all it has ("up to N per class"). ``data_options`` go to
    the built-in data set's loader (``transferkit list datasets`` shows them).

    With ``out``, every finished run is recorded in ``OUT.runs/`` as it finishes; after a crash or a kill,
    ``resume=True`` (``--resume``) trains only the runs not recorded there
    (:mod:`transferkit.workflows.run_journal`). Adding seeds or strategies to a resumed comparison is
    refused: the settings must be the same.

    ``engine="ray"`` (``--engine ray``) trains the runs as Ray tasks, in parallel, on a local Ray or the
    cluster at ``address`` (:mod:`transferkit.workflows.engine`); the runs, their seeds and the report are
    the ones of the local engine, and a comparison interrupted on one engine resumes on either.

    Example:
        >>> import transferkit as tk
        >>> cmp = tk.compare("sentence:all-MiniLM-L6-v2", "debian-packages", ["linear-probe"],   # doctest: +SKIP
        ...                  labels_per_class=[8, 32], seeds=3, out="runs/debian-compare")
        >>> cmp.verdicts[["labels_per_class", "strategy", "gain", "verdict"]]     # doctest: +SKIP
    """
    config = replace(config or TrainConfig(progress=False), **train_options)
    engine = make_engine(engine, address)
    budgets = labels_per_class if isinstance(labels_per_class, (list, tuple)) else [labels_per_class]
    strategy_options = strategy_options or {}
    for name in strategies:  # validate every config before any training
        auto_options(strategy_options.get(name)) if name == AUTO else make_strategy(name, strategy_options.get(name))
    if out is not None:
        check_writable(out, overwrite)
    bb_opts = {"image_size": image_size, "max_length": max_length}
    settings = {"backbone": backbone if isinstance(backbone, str) else getattr(backbone, "spec", None),
                "data": data if isinstance(data, str) else None, "test_data": test_data if isinstance(
                    test_data, (str, type(None))) else None, "strategies": list(strategies), "seeds": seeds,
                "labels_per_class": budgets, "baselines": baselines, "strategy_options": strategy_options,
                "val_fraction": val_fraction, "max_test": max_test, "backbone_options": bb_opts,
                "train": config.to_dict() | {"progress": None}, "columns": [text_column, label_column],
                "strict_labels": strict_labels, "data_options": data_options or {}}
    with engine, run_journal(out, settings, command="compare", resume=resume, overwrite=overwrite) as journal:
        rows, notes, exp, train = _run_all(backbone, data, strategies, seeds, budgets, baselines, strategy_options,
                                           test_data, val_fraction, max_test, experiment, bb_opts, config, progress,
                                           text_column, label_column, strict_labels, data_options, journal, engine)
        return _summarize(rows, primary_metric(train.task), notes, out, title=f"{backbone} on {exp}")


def _run_all(backbone, data, strategies, seeds, budgets, baselines, strategy_options, test_data, val_fraction,
             max_test, experiment, bb_opts, config, progress, text_column, label_column, strict_labels,
             data_options, journal, engine: Engine) -> tuple[list[dict], list[str], str, TaskData]:
    """Every (budget, seed, strategy) run, those recorded in ``journal`` read back, the others trained by ``engine``."""
    rows, notes, todo = [], [], []
    for lpc in budgets:
        for seed in range(seeds):
            train, val, test = prepare_data(data, test_data=test_data, labels_per_class=lpc,
                                            val_fraction=val_fraction, seed=seed, max_test=max_test,
                                            text_column=text_column, label_column=label_column,
                                            strict_labels=strict_labels, **(data_options or {}))
            exp = experiment or (data if isinstance(data, str) else data_name(train))
            if test is None:
                notes.append("No test split: metrics are on the validation split.")
            if not get_task(train.task).single_label:
                notes.append(f"The labels column counts the training {labels_unit(train)} drawn ({_per_class(train)}), "
                             f"not labels per class: a {train.task} item has no single class.")
            notes.append(f"{lpc or 'all'} labels per class: " + (
                f"{len(val)} of {len(train) + len(val)} labelled items held out for validation (early stopping, "
                "checkpoint choice); every run trains on the rest." if val is not None else
                "no validation split: every strategy and baseline trains on all labels with its fixed schedule."))
            planned = _planned_runs(strategies, strategy_options, baselines, config, seed, train.modality, train.task)
            heads = {s.chosen_head() for _, s, _ in planned if isinstance(s, Strategy)} - {None}
            if heads:
                notes.append(f"Every {train.task} model here, the scratch baselines included, is the "
                             f"{', '.join(sorted(heads))} head (strategy option detector).")
            for label, strat, cfg in planned:
                key, fingerprint = f"{lpc}/{seed}/{label}", train.fingerprint()
                rows.append(journal.get(key, fingerprint))
                if rows[-1] is None:
                    todo.append((len(rows) - 1, key, fingerprint,
                                 (exp, lpc, label, seed, backbone, strat, train, val, test, cfg, bb_opts)))
                elif progress:
                    _print_run(rows[-1], primary_metric(train.task))

    def finished(j: int, row: dict) -> None:  # in this process, as each run finishes: journal it first
        i, key, fingerprint, _ = todo[j]
        journal.record(key, fingerprint, row)
        rows[i] = row
        if progress:
            _print_run(row, primary_metric(train.task))

    engine.map(_train_row, [job for *_, job in todo], on_result=finished)
    return rows, notes, exp, train


def _train_row(experiment: str, lpc, label: str, seed: int, backbone, strategy: Strategy | AutoOptions,
               train: TaskData, val, test, config: TrainConfig, bb_opts: dict) -> dict:
    """One run, trained and scored (here or in an engine's worker), as its row of the runs table.

    ``auto`` (its options in place of a strategy) searches on this draw's training labels, then trains its winner.
    """
    if isinstance(strategy, AutoOptions):
        run, found = search_and_train(backbone, train, val, test, config, bb_opts, strategy)
        return _row(experiment, lpc, train, label, None, seed, run) | {"choice": found.winner.label}
    run = train_and_score(backbone, strategy, train, val, test, config, bb_opts)
    return _row(experiment, lpc, train, label, strategy, seed, run)


def _planned_runs(strategies, strategy_options: dict, baselines, config: TrainConfig, seed: int,
                  modality: str, task: str | None = None) -> list[tuple[str, Strategy | AutoOptions, TrainConfig]]:
    """(label, strategy, config) of one seed's runs: the strategies, then the scratch baselines on their own recipes."""
    runs = [(s, auto_options(strategy_options.get(s)) if s == AUTO else make_strategy(s, strategy_options.get(s)),
             replace(config, seed=seed)) for s in strategies]  # auto's strategy: its search's winner, found in the run
    names = default_baselines(modality, task) if baselines == "auto" else list(baselines or [])
    head = scratch_head_options([strategy for _, strategy, _ in runs], task)  # same-arch: the same detector
    runs += [(f"scratch:{v}", make_strategy("scratch", {"variant": v, **head}),
              baseline_config(replace(config, seed=seed))) for v in names]
    return runs


def _row(experiment: str, lpc, train: TaskData, label: str, strategy: Strategy | None, seed: int, run: Run) -> dict:
    """One row of the runs table: the run's keys, its training time and its scalar metrics."""
    return {"experiment": experiment, "labels_per_class": lpc if lpc is not None else _per_class(train),
            "labels_unit": labels_unit(train), "strategy": label,
            "kind": strategy.kind if strategy is not None else "transfer", "seed": seed,
            "seconds": round(run.seconds, 2),
            **{k: v for k, v in run.metrics.items() if isinstance(v, (int, float))}}


def _summarize(rows: list[dict], metric: str, notes: list[str], out, *, title: str) -> CompareResult:
    """Summary and verdicts over seeds on ``metric``; with ``out``, the compare report written there."""
    runs_df = pd.DataFrame(rows)
    summary = _with_labels_unit(summarize(runs_df, metric), runs_df)
    verdicts = _with_labels_unit(transfer_verdicts(runs_df, metric, higher_is_better(metric)), runs_df)
    result = CompareResult(runs_df, summary, verdicts, metric, notes=sorted(set(notes)))
    if out is not None and is_main_process():
        from transferkit.reports import write_compare_report

        Path(out).mkdir(parents=True, exist_ok=True)
        write_compare_report(out, runs=runs_df, summary=summary, verdicts=verdicts, metric=metric,
                             title=title, notes=result.notes)
        result.path = Path(out)
    return result


def labels_unit(data: TaskData) -> str:
    """What the ``labels_per_class`` column counts for ``data``: ``"class"`` (labels per class) for single-label
    tasks; else the training items drawn, named after the modality (``"images"``: detection, segmentation)."""
    if get_task(data.task).single_label:
        return "class"
    return {"image": "images", "text": "texts", "audio": "clips"}.get(data.modality, "items")


def _with_labels_unit(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (summary or verdicts) with the runs' ``labels_unit`` of its (experiment, labels_per_class), after
    ``labels_per_class``; runs recorded before the column existed count labels per class."""
    if frame.empty or "labels_unit" not in runs.columns or "labels_per_class" not in frame.columns:
        return frame
    units = {(e, lpc): u for e, lpc, u in zip(runs["experiment"], runs["labels_per_class"], runs["labels_unit"])
             if isinstance(u, str)}
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("labels_per_class") + 1, "labels_unit",
                 [units.get((e, lpc), "class") for e, lpc in zip(frame["experiment"], frame["labels_per_class"])])
    return frame


def _per_class(data: TaskData) -> int:
    """Median training examples per class (for runs on all the labelled data)."""
    if not get_task(data.task).single_label:
        return len(data)
    return int(np.median(np.bincount(data.targets, minlength=len(data.label_names or [])))) if len(data) else 0


def data_name(data: TaskData) -> str:
    """The data set's name without the sampling suffix (``fashion-mnist[10/class]`` -> ``fashion-mnist``).

    Example:
        >>> from transferkit.data import sample_per_class
        >>> from transferkit.api import data_name
        >>> data_name(sample_per_class(train, 10, seed=0))    # doctest: +SKIP
        'fashion-mnist'
    """
    return data.name.split("[", 1)[0]


def _print_run(row: dict, metric: str) -> None:
    from rich.console import Console

    from transferkit.reports.plots import lpc_label

    budget = lpc_label(row["labels_per_class"], row.get("labels_unit")).replace(" / ", "/")
    Console(stderr=True).print(f"  [dim]{row['experiment']} {budget} seed={row['seed']} "
                               f"{row['strategy']}: {metric}={row.get(metric, float('nan')):.3f} ({row['seconds']:.1f}s)[/dim]",
                               soft_wrap=True)
