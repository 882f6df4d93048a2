"""Multi-task runs for ``transferkit multitask``: one model for several tasks, against each task alone.

:func:`run_multitask` trains the multi-task model and, with the same budget
(the same epochs over the same items), a single-task model per task, for each
seed; it reports per-task metrics and the paired difference (multi-task minus
single-task, 95% interval over seeds). :func:`save_multitask` writes
``multitask.json``, ``report.md`` and one bundle per task (``bundles/TASK``,
from the first seed's multi-task model), each loadable with
:func:`transferkit.load` and servable like any other bundle.

Data: ``penguins`` (species and sex), ``fashion-mnist`` (class and a 3-way
super-category), or a table file with several label columns
(``label_columns=["species", "sex"]``; every other numeric column is a feature
unless ``feature_columns`` says which).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.data.multitask import MultiTaskData, load_fashion_mnist_multitask, load_penguins_multitask
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.stats import mean_ci, paired_difference
from transferkit.export.bundle import atomic_dir, check_writable, save_bundle
from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.strategies.multi_task import MultiTask, MultiTaskModel, evaluate_multitask
from transferkit.tasks import primary_metric
from transferkit.training import TrainConfig, Trainer
from transferkit.workflows.run_journal import RunJournal, run_journal

__all__ = ["BUILTIN_MULTITASK", "load_multitask", "run_multitask", "save_multitask"]

#: built-in multi-task data: name -> loader(seed) -> (train, test)
BUILTIN_MULTITASK = {"penguins": lambda seed: load_penguins_multitask(seed),
                     "fashion-mnist": lambda seed: load_fashion_mnist_multitask()}


def load_multitask(data, *, label_columns=None, test_data=None, feature_columns=None,
                   seed: int = 0) -> tuple[MultiTaskData, MultiTaskData | None]:
    """A built-in multi-task data set, or a table (and its test table) with one task per label column."""
    if isinstance(data, MultiTaskData):
        return data, test_data
    if label_columns is None:
        if str(data) in BUILTIN_MULTITASK:
            return BUILTIN_MULTITASK[str(data)](seed)
        raise ConfigError(f"Multi-task data {data!r} is not built in ({', '.join(BUILTIN_MULTITASK)}); for a table, "
                          f"name its label columns (label_columns=['a', 'b'] / --label-columns a,b).")
    from transferkit.data import resolve_data

    columns = list(label_columns)
    if len(columns) < 2:
        raise ConfigError(f"Multi-task learning needs at least two label columns; got {columns}.")
    if feature_columns is None and isinstance(data, (str, Path)) and Path(data).is_file():
        from transferkit.data.adapters import _looks_numeric, read_table

        frame, _ = read_table(data)  # every numeric column that is no task's label
        feature_columns = [c for c in frame.columns if c not in columns and _looks_numeric(frame[c])] or None
    train, test = {}, {}
    for c in columns:
        others = [o for o in columns if o != c]
        tr, te = resolve_data(data, test_data=test_data, label_column=c, feature_columns=feature_columns or None)
        if tr.modality == "tabular" and tr.feature_names and set(others) & set(tr.feature_names):
            keep = [i for i, f in enumerate(tr.feature_names) if f not in others]  # another task's label is no input
            tr = _columns(tr, keep)
            te = _columns(te, keep) if te is not None else None
        train[c], test[c] = tr, te
    same = all(len(d) == len(train[columns[0]]) for d in train.values())
    name = Path(str(data)).stem
    out = MultiTaskData(train, shared=same and all(np.array_equal(np.asarray(d.items), np.asarray(train[columns[0]].items))
                                                   for d in train.values()), name=name)
    if any(t is None for t in test.values()):
        return out, None
    return out, MultiTaskData.from_tasks(test, name=f"{name}-test")


def _columns(data, keep):
    from dataclasses import replace

    return replace(data, items=np.asarray(data.items)[:, keep], feature_names=[data.feature_names[i] for i in keep],
                   _fingerprint=None, origin=None)


def run_multitask(data, backbone: str, *, sharing: str = "hard", weighting: str = "fixed", weights: dict | None = None,
                  soft_penalty: float = 1e-3, label_columns=None, test_data=None, feature_columns=None,
                  labels_per_class: int | None = None, per_class_task: str | None = None, max_test: int | None = None,
                  seeds: int = 1, epochs: int = 10, lr: float = 1e-3, head_lr: float | None = None, batch_size: int = 32,
                  single: bool = True, image_size: int | None = None, progress: bool = False,
                  out: str | Path | None = None, overwrite: bool = False, resume: bool = False) -> dict:
    """Multi-task training and (``single=True``) each task alone with the same budget, over ``seeds`` seeds.

    With ``out``, the report and bundles are written there (:func:`save_multitask`) and every finished run is
    recorded in ``OUT.runs/`` as it finishes (:mod:`transferkit.workflows.run_journal`). A run is one model
    trained: a seed's multi-task model, or one task alone on a seed. The first seed's multi-task model, which
    the bundles come from, is kept beside its record. After a crash or a kill, ``resume=True`` (``--resume``)
    trains only the runs not recorded, and the result is an uninterrupted run's; other settings are refused,
    naming them. ``overwrite`` replaces an existing ``out`` and starts over from a journal left there.

    Returns:
        ``{"runs": [...], "summary": {task: {...}}, "settings": ..., "models": [first seed's MultiTaskModel]}``.
    """
    if seeds < 1:
        raise ConfigError(f"The 'seeds' parameter must be an int in [1, inf). Got {seeds} instead.")
    if out is not None:
        check_writable(out, overwrite)  # refuse before training, not after
    settings = {"data": str(data), "backbone": backbone, "sharing": sharing, "weighting": weighting,
                "weights": weights, "soft_penalty": soft_penalty, "seeds": seeds, "epochs": epochs, "lr": lr,
                "head_lr": head_lr or lr, "batch_size": batch_size, "labels_per_class": labels_per_class,
                "max_test": max_test}
    journaled = {**settings, "data": str(data) if isinstance(data, (str, Path)) else None,
                 "test_data": str(test_data) if isinstance(test_data, (str, Path)) else None,
                 "label_columns": label_columns, "feature_columns": feature_columns, "per_class_task": per_class_task,
                 "single": single, "image_size": image_size}
    draw = dict(label_columns=label_columns, test_data=test_data, feature_columns=feature_columns,
                labels_per_class=labels_per_class, per_class_task=per_class_task, max_test=max_test)
    method = _Method(backbone, sharing, weighting, weights, soft_penalty, {"image_size": image_size} if image_size else {})
    with run_journal(out, journaled, command="multitask", resume=resume, overwrite=overwrite) as journal:
        runs, first_model = [], None
        for seed in range(seeds):
            train, test = _draw(data, seed, **draw)
            cfg = TrainConfig(epochs=epochs, lr=lr, head_lr=head_lr or lr, batch_size=batch_size, seed=seed,
                              progress=progress)
            rows, model = _multi_task_run(method, journal, train, test, seed, cfg)
            if seed == 0:
                first_model = model
            runs += rows
            if single:
                runs += _single_task_runs(method, journal, train, test, seed, cfg)
        result = {"runs": runs, "summary": _summary(runs, first_model.task_kinds, single=single, seeds=seeds),
                  "models": [first_model], "settings": settings}
        if out is not None:
            save_multitask(result, out, overwrite=overwrite)
    return result


@dataclass
class _Method:
    """What every model of :func:`run_multitask` is built from: the backbone and the multi-task settings."""

    backbone: str
    sharing: str
    weighting: str
    weights: dict | None
    soft_penalty: float
    backbone_options: dict

    @property
    def name(self) -> str:
        return f"{self.sharing}/{self.weighting}"

    def fit(self, data: MultiTaskData, cfg: TrainConfig) -> MultiTaskModel:
        """The multi-task model trained on every task of ``data``."""
        model, _ = fit_multitask(self.backbone, data, sharing=self.sharing, weighting=self.weighting,
                                 weights=self.weights, soft_penalty=self.soft_penalty, train_config=cfg,
                                 **self.backbone_options)
        return model

    def rebuild(self, data: MultiTaskData, cfg: TrainConfig, weights: Path) -> MultiTaskModel:
        """The model :meth:`fit` trains, untrained, with the trained weights saved at ``weights`` loaded."""
        from safetensors.torch import load_model

        backbone = _backbone(self.backbone, data, cfg.seed, True, dict(self.backbone_options))
        model = MultiTask(sharing=self.sharing, weighting=self.weighting, weights=self.weights,
                          soft_penalty=self.soft_penalty).prepare(backbone, data)
        load_model(model, weights)
        return model


#: The first seed's multi-task model in the journal: the bundles of a resumed run are made from it.
KEPT_MODEL = "multitask-model.safetensors"


def _multi_task_run(method: _Method, journal: RunJournal, train: MultiTaskData, test: MultiTaskData,
                    seed: int, cfg: TrainConfig) -> tuple[list[dict], MultiTaskModel | None]:
    """One seed's multi-task run: its rows (one per task) and, for the first seed, its model; recorded or trained."""
    key, fingerprint = f"{seed}/{method.name}", _fingerprint(train)
    recorded = journal.get(key, fingerprint)
    kept = journal.folder / KEPT_MODEL if journal.folder is not None else None
    if recorded is not None:
        if seed > 0:
            return recorded["runs"], None
        if not kept.exists():
            raise ConfigError(f"Cannot resume from {journal.folder}: run {key} is recorded but its model {kept.name} "
                              "is missing. Rerun with overwrite=True (--overwrite) to start over.")
        return recorded["runs"], method.rebuild(train, cfg, kept)
    model = method.fit(train, cfg)
    rows = [{"seed": seed, "task": task, "method": method.name, **_scalars(m)}
            for task, m in evaluate_multitask(model, test).items()]
    if seed == 0 and kept is not None:  # the model first, then its record: a recorded run always has its model
        from safetensors.torch import save_model

        save_model(model, str(kept.with_suffix(".tmp")))
        os.replace(kept.with_suffix(".tmp"), kept)
    journal.record(key, fingerprint, {"runs": rows})
    return rows, model


def _fingerprint(data: MultiTaskData) -> str:
    """One fingerprint over the training data of every task."""
    return hashlib.sha256("|".join(f"{t}:{d.fingerprint()}" for t, d in data.tasks.items()).encode()).hexdigest()[:16]


def _draw(data, seed: int, *, label_columns, test_data, feature_columns, labels_per_class, per_class_task,
          max_test) -> tuple[MultiTaskData, MultiTaskData]:
    """One seed's training draw (per class of ``per_class_task``) and test set (the same items every seed)."""
    train, test = load_multitask(data, label_columns=label_columns, test_data=test_data,
                                 feature_columns=feature_columns, seed=seed)
    if test is None:
        raise DataError(f"'{train.name}' has no test data: give test_data (--test-data) to score the tasks.")
    if labels_per_class:
        train = train.sample_per_class(per_class_task or train.names[0], labels_per_class, seed)
    if max_test and test.shared and len(test) > max_test:
        test = test.subset(np.linspace(0, len(test) - 1, max_test).astype(int))  # the same items every seed
    return train, test


def _single_task_runs(method: _Method, journal: RunJournal, train: MultiTaskData, test: MultiTaskData,
                      seed: int, cfg: TrainConfig) -> list[dict]:
    """Each task alone with the multi-task model's budget: one run row per task, recorded or trained."""
    runs = []
    for task in train.names:
        alone = train.select([task])
        key, fingerprint = f"{seed}/single/{task}", _fingerprint(alone)
        recorded = journal.get(key, fingerprint)
        if recorded is None:
            model, _ = fit_multitask(method.backbone, alone, train_config=cfg, **method.backbone_options)
            m = evaluate_multitask(model, test.select([task]))[task]
            recorded = {"runs": [{"seed": seed, "task": task, "method": "single", **_scalars(m)}]}
            journal.record(key, fingerprint, recorded)
        runs += recorded["runs"]
    return runs


def _summary(runs: list[dict], kinds: dict[str, str], *, single: bool, seeds: int) -> dict:
    """Per task: its primary metric per method (mean and 95% interval over seeds) and multi minus single."""
    summary = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        mine = [r for r in runs if r["task"] == task]
        metric = primary_metric(kinds[task])
        row = {"metric": metric}
        for method in dict.fromkeys(r["method"] for r in mine):
            values = [r[metric] for r in mine if r["method"] == method]
            row[method] = list(mean_ci(values)) if len(values) > 1 else [values[0], float("nan"), float("nan")]
        if single:
            multi = [r[metric] for r in mine if r["method"] != "single"]
            alone = [r[metric] for r in mine if r["method"] == "single"]
            row["difference"] = (list(paired_difference(multi, alone)) if seeds > 1
                                 else [multi[0] - alone[0], float("nan"), float("nan")])
        summary[task] = row
    return summary


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n"}


def _fmt(v) -> str:
    mean, low, high = v
    return f"{100 * mean:.1f}" + (f" [{100 * low:.1f}, {100 * high:.1f}]" if np.isfinite(low) else "")


def report_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(task, metric, multi-task, single-task, difference) per task, formatted in percent."""
    method = f"{result['settings']['sharing']}/{result['settings']['weighting']}"
    rows = []
    for task, row in result["summary"].items():
        diff = row.get("difference")
        rows.append((task, row["metric"], _fmt(row[method]), _fmt(row["single"]) if "single" in row else "-",
                     (f"{100 * diff[0]:+.1f}" + (f" [{100 * diff[1]:+.1f}, {100 * diff[2]:+.1f}]"
                                                  if np.isfinite(diff[1]) else "")) if diff else "-"))
    return rows


def save_multitask(result: dict, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``multitask.json``, ``report.md`` and ``bundles/TASK`` (one bundle per task) to ``out``, atomically."""
    with atomic_dir(out, overwrite) as tmp:
        s = result["settings"]
        public = {k: v for k, v in result.items() if k != "models"}
        (tmp / "multitask.json").write_text(json.dumps(public, indent=2, default=float), encoding="utf-8")
        lines = [f"# Multi-task learning: {s['data']} with `{s['backbone']}`", "",
                 f"{s['sharing']} sharing, {s['weighting']} weighting; {s['seeds']} seed(s), {s['epochs']} epochs, "
                 f"lr {s['lr']} (heads {s['head_lr']}). Single-task models: each task alone, the same epochs over the "
                 "same items. Percent, mean [95% interval over seeds]; difference paired by seed.", "",
                 "| task | metric | multi-task | single-task | difference |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in report_rows(result)]
        (tmp / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        model = result["models"][0]
        for task in model.heads:
            save_bundle(model.task_model(task), tmp / "bundles" / task,
                        {"strategy": {"name": "multi-task", "task": task, "sharing": s["sharing"],
                                      "weighting": s["weighting"]}, "task": model.task_kinds[task]})
    return Path(out)


def fit_multitask(backbone: str | Backbone, data: MultiTaskData, *, sharing: str = "hard", weighting: str = "fixed",
                  weights: dict | None = None, soft_penalty: float = 1e-3, gradnorm_alpha: float = 1.5,
                  finetune: bool = True, train_config=None, val: MultiTaskData | None = None, pretrained: bool = True,
                  **backbone_options) -> tuple[MultiTaskModel, list[dict]]:
    """Train one model on every task of ``data``.

    Args:
        backbone: a spec (``"mlp:64x64"``, ``"efficientnet-lite:0"``) or a :class:`Backbone`.
        data: the tasks (shared inputs or separate data).
        sharing, weighting, weights, soft_penalty, gradnorm_alpha, finetune: see :class:`MultiTaskConfig`.
        train_config: a :class:`transferkit.training.TrainConfig`.
        val: optional validation tasks, scored after the final epoch.
        **backbone_options: passed to ``load_backbone`` (tabular ``in_features`` is filled in from the data).

    Returns:
        ``(model, history)``; ``model.task_model(name)`` is one task's :class:`TransferModel`.
    """
    if not isinstance(data, MultiTaskData):
        raise DataError(f"fit_multitask needs a MultiTaskData. Got {type(data).__name__}.")
    train_config = train_config or TrainConfig()
    if isinstance(backbone, str):
        backbone = _backbone(backbone, data, train_config.seed, pretrained, backbone_options)
    strategy = MultiTask(sharing=sharing, weighting=weighting, weights=weights, soft_penalty=soft_penalty,
                         gradnorm_alpha=gradnorm_alpha, finetune=finetune)
    return strategy.fit(backbone, data, val, Trainer(train_config))


def _backbone(spec: str, data: MultiTaskData, seed: int, pretrained: bool, options: dict) -> Backbone:
    """Load ``spec`` seeded (a backbone trained from scratch starts the same for the same seed), sized for ``data``."""
    torch.manual_seed(seed)
    if data.modality == "tabular" and "in_features" not in options:
        options["in_features"] = int(np.asarray(next(iter(data.tasks.values())).items).shape[1])
    return load_backbone(spec, pretrained=pretrained, **options)
