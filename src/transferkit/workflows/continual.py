"""Continual-learning runs for the facade and ``transferkit continual``: build a stream, train learners, report.

:func:`run_continual` draws a seeded labelled subset of a data set, splits it
into a stream (``split``: disjoint class groups; ``permuted``: the same classes
under fixed pixel permutations), trains every requested learner of
:data:`~transferkit.strategies.continual.CONTINUAL` on it for every seed, and
summarises the accuracy matrices (average accuracy, forgetting, backward and
forward transfer, mean and 95% interval over seeds). :func:`save_continual`
writes ``continual.json``, ``report.md`` and ``accuracy_matrices.png``. With
``out``, each (seed, learner) run is recorded as it finishes, and an interrupted
run resumes without training it again (``resume=True``, ``--resume``).

Example:
    >>> r = run_continual("fashion-mnist", "small-cnn:14", split=2, learners=["naive", "replay"],  # doctest: +SKIP
    ...                   labels_per_class=100, epochs=1)
    >>> r["summary"]["replay"]["average_accuracy"]                                                # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.data import resolve_data, sample_per_class
from transferkit.data.streams import SCENARIOS, permuted, split_by_classes
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.continual import METRICS
from transferkit.evaluation.stats import mean_ci
from transferkit.export.bundle import atomic_dir, check_writable
from transferkit.data.streams import Stream
from transferkit.evaluation.continual import continual_metrics
from transferkit.strategies.base import ItemDataset
from transferkit.strategies.continual import (CONTINUAL, ContinualLearner, ContinualResult, experience_accuracy,
                                              stream_backbone)
from transferkit.training import TrainConfig, Trainer
from transferkit.workflows.engine import Engine, make_engine
from transferkit.workflows.run_journal import map_runs, run_journal

__all__ = ["run_continual", "save_continual"]


def _learner_options(learners: list[str], options: dict[str, Any]) -> dict[str, dict]:
    """Give each learner the options its config has; refuse an option that no learner takes."""
    per = {name: {} for name in learners}
    for key, value in options.items():
        takers = [n for n in learners if key in {f.name for f in dataclasses.fields(CONTINUAL.get(n).Config)}]
        if not takers:
            valid = sorted({f.name for n in learners for f in dataclasses.fields(CONTINUAL.get(n).Config)})
            raise ConfigError(f"No learner among {', '.join(learners)} takes the option {key!r}. "
                              f"Their options: {', '.join(valid) or 'none'}.")
        for n in takers:
            per[n][key] = value
    return per


def _stream(train, test, split: int | None, permutations: int | None, scenario: str | None, seed: int, flatten: bool):
    if (split is None) == (permutations is None):
        raise ConfigError("Give exactly one of split (classes per experience) or permuted (number of permutations).")
    if split is not None:
        return split_by_classes(train, split, test=test, scenario=scenario or "task")
    if scenario not in (None, "domain"):
        raise ConfigError(f"A permuted stream has the same classes in every experience: its scenario is 'domain'. "
                          f"Got {scenario!r}.")
    return permuted(train, permutations, seed=seed, test=test, flatten=flatten)


def run_continual(data, backbone: str, *, split: int | None = None, permuted_tasks: int | None = None,
                  scenario: str | None = None, learners=("naive",), options: dict | None = None,
                  labels_per_class: int | None = 300, test_per_class: int | None = 200, seeds: int = 1,
                  epochs: int = 2, lr: float = 2e-3, batch_size: int = 32, image_size: int | None = None,
                  progress: bool = False, out: str | Path | None = None, overwrite: bool = False,
                  resume: bool = False, engine: str | Engine = "local", address: str | None = None) -> dict:
    """Train each learner on the stream for ``seeds`` seeds; return the runs and their summary.

    Args:
        data: a built-in name (``fashion-mnist``), a folder or table, ``(X, y)``: anything :func:`transferkit.fit` takes.
        backbone: the network every learner starts from (``small-cnn:14``, ``efficientnet-lite:0``; with
            ``permuted_tasks``, ``mlp:256x256`` reads the permuted pixels as a table).
        split: classes per experience (Split Fashion-MNIST: 2).
        permuted_tasks: number of pixel permutations (Permuted Fashion-MNIST); exclusive with ``split``.
        scenario: ``task`` or ``class`` for a split stream (default ``task``); permuted streams are ``domain``.
        learners: names in :data:`CONTINUAL`: naive, ewc, lwf, replay, progressive.
        options: learner options (``{"buffer_size": 200}``); each goes to the learners that take it.
        labels_per_class, test_per_class: seeded draws per class from the training and test sets (``None``: all).
        seeds: independent runs (data draw, permutations, initialisation).
        epochs, lr, batch_size: the loop's settings for every experience.
        image_size: the backbone's input size.
        out: write the report there (:func:`save_continual`), and record every finished run in ``OUT.runs/``
            as it finishes (:mod:`transferkit.workflows.run_journal`). A run is one learner on one seed's
            stream: the experiences of a stream train one model in order, so the unit is the whole learner
            run, and a learner stopped in the middle of its stream trains again from the first experience.
        overwrite: replace an existing ``out``; start over from a journal left in ``OUT.runs``.
        resume: go on from an interrupted run: the recorded (seed, learner) runs are not trained again and the
            result is an uninterrupted run's. Other settings (learners, seeds, epochs, ...) are refused, naming them.
        engine, address: ``"ray"`` trains each (seed, learner) run as a Ray task, in parallel, on a local Ray
            or the cluster at ``address`` (:mod:`transferkit.workflows.engine`); the runs are the local engine's.

    Returns:
        ``{"runs": [...], "summary": {learner: {metric: [mean, low, high]}}, "matrices": {learner: mean [T, T]},
        "stream": ..., "settings": ...}``.
    """
    learners = list(learners)
    if not learners:
        raise ConfigError(f"Name at least one learner. Available: {', '.join(CONTINUAL.names())}.")
    for name in learners:
        CONTINUAL.get(name)  # unknown names: the registry's error lists the valid ones
    if scenario is not None and scenario not in SCENARIOS:
        raise ConfigError(f"Unknown scenario {scenario!r}. Available: {', '.join(SCENARIOS)}.")
    if seeds < 1:
        raise ConfigError(f"The 'seeds' parameter must be an int in [1, inf). Got {seeds} instead.")
    per_learner = _learner_options(learners, dict(options or {}))
    engine = make_engine(engine, address)
    if out is not None:
        check_writable(out, overwrite)  # refuse before training, not after
    full_train, full_test = resolve_data(data)
    if full_test is None:
        raise DataError(f"Continual runs test every experience: '{full_train.name}' has no test split. "
                        f"Give test data (a built-in data set has one).")
    flatten = backbone.startswith("mlp:")
    jobs, stream_name = [], None
    for seed in range(seeds):
        train = sample_per_class(full_train, labels_per_class, seed) if labels_per_class else full_train
        test = sample_per_class(full_test, test_per_class, 0, strict=False) if test_per_class else full_test
        stream = _stream(train, test, split, permuted_tasks, scenario, seed, flatten)
        stream_name = stream.name
        for name in learners:
            cfg = TrainConfig(epochs=epochs, lr=lr, head_lr=lr, batch_size=batch_size, seed=seed, progress=progress)
            jobs.append((f"{seed}/{name}", train.fingerprint(), (seed, backbone, stream, name, per_learner[name], cfg,
                                                                 {"image_size": image_size} if image_size else None)))
    settings = {"backbone": backbone, "learners": learners, "options": per_learner, "seeds": seeds, "epochs": epochs,
                "lr": lr, "batch_size": batch_size, "labels_per_class": labels_per_class,
                "test_per_class": test_per_class, "split": split, "permuted": permuted_tasks}
    journaled = {**settings, "data": data if isinstance(data, str) else None, "scenario": scenario,
                 "image_size": image_size}
    with engine, run_journal(out, journaled, command="continual", resume=resume, overwrite=overwrite) as journal:
        result = _summarize(map_runs(engine, _run_learner, jobs, journal), learners, stream_name, settings)
        if out is not None:
            save_continual(result, out, overwrite=overwrite)
    return result


def _summarize(runs: list[dict], learners: list[str], stream_name: str, settings: dict) -> dict:
    """Per learner, each metric's mean and 95% interval over seeds, and the mean accuracy matrix."""
    summary, matrices = {}, {}
    for name in learners:
        mine = [r for r in runs if r["learner"] == name]
        summary[name] = {m: list(mean_ci([r["metrics"][m] for r in mine])) if len(mine) > 1
                         else [mine[0]["metrics"][m]] * 3 for m in METRICS}
        matrices[name] = np.mean([r["accuracy"] for r in mine], axis=0).tolist()
    return {"runs": runs, "summary": summary, "matrices": matrices,
            "stream": {"name": stream_name, "scenario": runs[0]["scenario"], "experiences": len(matrices[learners[0]])},
            "settings": settings}


def _run_learner(seed: int, backbone, stream: Stream, learner: str, options: dict, config: TrainConfig,
                 backbone_options: dict | None) -> dict:
    """One learner on one seed's stream (here or in an engine's worker), as its JSON record."""
    result = train_stream(backbone, stream, learner, options, train_config=config, backbone_options=backbone_options)
    return {"seed": seed, **result.to_dict()}


def _report(result: dict) -> str:
    from transferkit.reports.continual_plots import accuracy_matrix_table

    s, st = result["settings"], result["stream"]
    lines = [f"# Continual learning: {st['name']} ({st['scenario']}-incremental, {st['experiences']} experiences)", "",
             f"Backbone `{s['backbone']}`; {s['seeds']} seed(s); {s['epochs']} epoch(s) per experience, lr {s['lr']}, "
             f"batch {s['batch_size']}; {s['labels_per_class']} training and {s['test_per_class']} test items per class. "
             "Percent; mean [95% interval over seeds] (one seed: no interval).", "",
             "| learner | " + " | ".join(m.replace("_", " ") for m in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for name, row in result["summary"].items():
        cells = [f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" if np.isfinite(v[0]) else "n/a"
                 for v in (row[m] for m in METRICS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy matrices](accuracy_matrices.png)", ""]
    for name, m in result["matrices"].items():
        lines += [f"`{name}` (row: after training experience i; column: tested on experience j; mean over seeds):", "",
                  accuracy_matrix_table(np.asarray(m)), ""]
    return "\n".join(lines)


def save_continual(result: dict, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``continual.json``, ``report.md`` and ``accuracy_matrices.png`` to ``out``, atomically."""
    from transferkit.reports.continual_plots import accuracy_matrix_png

    with atomic_dir(out, overwrite) as tmp:
        (tmp / "continual.json").write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
        (tmp / "report.md").write_text(_report(result), encoding="utf-8")
        (tmp / "accuracy_matrices.png").write_bytes(
            accuracy_matrix_png({k: np.asarray(v) for k, v in result["matrices"].items()}))
    return Path(out)


def train_stream(backbone, stream: Stream, learner: str | ContinualLearner = "naive", options: dict | None = None,
                 train_config=None, eval_stream: Stream | None = None,
                 backbone_options: dict | None = None, on_experience_end=None) -> ContinualResult:
    """Train ``learner`` on the experiences of ``stream`` in order; test on every experience after each.

    Args:
        backbone: a spec (``"small-cnn:28"``, ``"efficientnet-lite:0"``, ``"mlp:256x256"``: ``in_features``
            comes from the data), a :class:`Backbone` (copied) or a factory returning one.
        stream: the training stream (:func:`~transferkit.data.streams.split_by_classes`, ``permuted``, ``make_stream``).
        learner: a name in :data:`CONTINUAL` or a learner instance.
        options: the learner's options (``{"buffer_size": 200}``).
        train_config: a :class:`~transferkit.training.TrainConfig` for every experience (``seed`` seeds the model).
        eval_stream: where to test (default: the test sets of ``stream``); same length and scenario.
        backbone_options: options of :func:`load_backbone` (``{"image_size": 32}``).
        on_experience_end: called as ``f(i, model, accuracy_row)`` after each experience (checkpoints, logging).

    Raises:
        ConfigError: unknown learner or option, a learner that does not support the scenario.
        DataError: no test data to evaluate on, an evaluation stream of another length.
    """
    cfg = train_config or TrainConfig(progress=False)
    algo = learner if isinstance(learner, ContinualLearner) else CONTINUAL.get(learner)(options or {})
    algo.check_stream(stream)
    for key in [k for k in vars(algo) if k.endswith("_")]:  # state of an earlier stream (memory, anchors)
        delattr(algo, key)
    evals = eval_stream or stream
    if len(evals) != len(stream) or evals.scenario != stream.scenario:
        raise DataError(f"eval_stream has {len(evals)} {evals.scenario}-incremental experiences; the training stream "
                        f"has {len(stream)} {stream.scenario}-incremental ones.")
    if not evals.has_test:
        missing = [e.task_id for e in evals if e.test is None]
        raise DataError(f"Stream '{evals.name}' has no test data for experience(s) {missing}; build it with test=... "
                        f"or pass eval_stream.")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    bb = stream_backbone(backbone, stream, backbone_options)
    algo.check_data(bb, stream[0].train)
    model = algo.build_model(bb, stream)
    tests = [ItemDataset(e.test, bb.preprocess) for e in evals]
    t = len(stream)
    random_init = None if stream.scenario == "class" else np.array([experience_accuracy(model, j, tests[j]) for j in range(t)])
    acc, history = np.zeros((t, t)), []
    for i, exp in enumerate(stream):
        algo.begin_experience(model, exp, stream)
        model, rows = Trainer(cfg).fit(algo, model, exp.train, None)  # a fresh optimizer and schedule each time
        algo.end_experience(model, exp)
        history += [{"experience": i, **r} for r in rows]
        acc[i] = [experience_accuracy(model, j, tests[j]) for j in range(t)]
        if on_experience_end is not None:
            on_experience_end(i, model, acc[i].copy())
    model.active = t - 1
    return ContinualResult(algo.name, stream.scenario, acc, random_init, continual_metrics(acc, random_init), history,
                           model, round(time.perf_counter() - start, 2), algo.config.to_dict())
