"""The public Python facade: ``fit``, ``evaluate``, ``compare``, ``rank``, ``load``.

Example:
    >>> import transferkit as tk                                                  # doctest: +SKIP
    >>> result = tk.fit("efficientnet-lite:0", "fashion-mnist", "linear-probe",  # doctest: +SKIP
    ...                 labels_per_class=10, image_size=64, out="runs/fmnist")
    >>> tk.load("runs/fmnist").predict(["boot.png"])                            # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.data import align_to_label_names, resolve_data, sample_per_class, subsample, train_val_split
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation import PRIMARY_METRIC, compute_metrics, higher_is_better, summarize, transfer_verdicts
from transferkit.export.bundle import Predictor, check_writable, load, read_manifest, rebuild_model, save_bundle
from transferkit.selection import RankResult, rank
from transferkit.strategies import STRATEGIES, Strategy, TransferModel, make_strategy
from transferkit.training import TrainConfig, Trainer
from transferkit.training.loop import distributed_state

__all__ = ["FitResult", "CompareResult", "RankResult", "fit", "evaluate", "compare", "rank", "load", "prepare_data",
           "lr_find"]


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    predictor: Predictor
    metrics: dict
    history: list[dict]
    manifest: dict
    path: Path | None = None


@dataclass
class CompareResult:
    """What :func:`compare` returns: one row per run, the summary and the verdicts."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    metric: str
    path: Path | None = None
    notes: list[str] = field(default_factory=list)


def prepare_data(data, *, test_data=None, val_data=None, labels_per_class: int | None = None,
                 val_fraction: float = 0.2, seed: int = 0, max_test: int | None = None, strict_labels: bool = True,
                 **data_options) -> tuple[TaskData, TaskData | None, TaskData | None]:
    """Resolve ``data`` to (train, validation, test) with a seeded per-class draw and split.

    A given ``val_data`` is used as the validation set (no split is held out).
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"The 'val_fraction' parameter must be a float in [0, 1). Got {val_fraction!r} instead.")
    train, test = resolve_data(data, test_data=test_data, **data_options)
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise ConfigError(f"The 'labels_per_class' parameter must be an int in [1, inf). Got {labels_per_class} instead.")
        train = sample_per_class(train, labels_per_class, seed, strict=strict_labels)
    if val_data is not None:
        columns = {k: v for k, v in data_options.items()
                   if k in ("text_column", "label_column", "feature_columns", "task", "sensitive_column")}
        _, val = resolve_data(train, test_data=val_data, **columns)  # checks and aligns its labels with training
    else:
        train, val = train_val_split(train, val_fraction, seed)
    if test is not None and max_test is not None and len(test) > max_test:
        test = subsample(test, max_test, 0)  # the same test items for every seed
    return train, val, test


def _strategy(strategy: str | Strategy, options: dict | None) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    return make_strategy(strategy, options)


def _backbone(backbone: str | Backbone | None, strategy: Strategy, data: TaskData, **options) -> Backbone | None:
    if isinstance(backbone, Backbone) or backbone is None:
        return backbone
    if not strategy.needs_backbone(data):
        return None  # e.g. the small CNN and TF-IDF baselines
    opts = {k: v for k, v in options.items() if v is not None}
    return load_backbone(backbone, **opts, **table_width(backbone, data))


def table_width(spec: str, data: TaskData) -> dict:
    """``{"in_features": F}`` for a source that takes the table's width (``mlp:``) and tabular data; else ``{}``."""
    from transferkit.backbones import BACKBONE_SOURCES, split_spec

    prefix, name = split_spec(spec)
    if data.modality != "tabular":
        return {}
    if prefix == "concat":  # concat:mlp:64+mlp:32: its options go to every member
        from transferkit.backbones.concat import split_members

        return next((table_width(m, data) for m in split_members(name) if table_width(m, data)), {})
    source = BACKBONE_SOURCES.get(prefix) if prefix in BACKBONE_SOURCES.names() else None
    if "in_features" in getattr(source, "options", ()):
        return {"in_features": int(np.asarray(data.items).shape[1])}
    return {}


@dataclass
class _Run:
    model: TransferModel
    history: list[dict]
    metrics: dict
    seconds: float
    outputs: np.ndarray | None = None  # on the scored split (test, else validation)


def _train_and_score(backbone, strategy: Strategy, train: TaskData, val, test, config: TrainConfig,
                     backbone_options: dict) -> _Run:
    from transferkit.strategies.regularizers import changes_backbone, source_agreement, source_predictions

    start = time.perf_counter()
    bb = _backbone(backbone, strategy, train, **backbone_options)
    if bb is not None:
        strategy.check_data(bb, train)  # a modality mismatch is named before anything runs the backbone
    scored = _scored(val, test)
    tick = time.perf_counter()
    # The source head's classes before adaptation, to measure what fine-tuning preserved.
    before = source_predictions(bb, scored) if changes_backbone(strategy) else None
    start += time.perf_counter() - tick  # not training time
    model, history = strategy.fit(bb, train, val, Trainer(config))
    seconds = time.perf_counter() - start
    metrics, outputs = {}, None
    if scored is not None:
        outputs = strategy.predict(model, scored)
        metrics = compute_metrics(train.task, scored.targets, outputs, train.label_names)
        metrics["evaluated_on"] = "test" if scored is test else "validation"
        fairness = fairness_metrics(scored, outputs, train.label_names)
        if fairness is not None:
            metrics["fairness"] = fairness
        if before is not None and model.backbone is bb:
            metrics["source_agreement"] = source_agreement(before, source_predictions(model.backbone, scored))
    return _Run(model, history, metrics, seconds, outputs)


def fairness_metrics(data: TaskData, outputs: np.ndarray, label_names) -> dict | None:
    """Group metrics of ``outputs`` on ``data`` when it carries a sensitive attribute (classification)."""
    if data.sensitive is None or data.task != "classification":
        return None
    from transferkit.evaluation.fairness import group_metrics

    return group_metrics(data.targets, outputs, data.sensitive, label_names=label_names,
                         sensitive_name=data.sensitive_name)


def _check_fairness_data(sensitive_column: str, train: TaskData, scored: TaskData | None) -> None:
    """Before any training: a classification task, and at least two groups where they are used and measured."""
    from transferkit.evaluation.fairness import check_sensitive

    if train.task != "classification":
        raise ConfigError(f"sensitive_column={sensitive_column!r}: group fairness metrics are for classification; "
                          f"'{train.name}' is {train.task}.")
    for split in (train, scored):
        if split is not None and (split is train or split.sensitive is not None):
            check_sensitive(split.sensitive, len(split), split.sensitive_name or sensitive_column, where=split.name)


def _scored(val, test) -> TaskData | None:
    """The labelled split metrics are computed on: test, else validation."""
    for split in (test, val):
        if split is not None and split.targets is not None and len(split):
            return split
    return None


def fit(backbone: str | Backbone | None, data, strategy: str | Strategy = "linear-probe", *,
        strategy_options: dict | None = None, test_data=None, labels_per_class: int | None = None,
        val_fraction: float = 0.2, val_data=None, out: str | Path | None = None, overwrite: bool = False,
        image_size: int | None = None, max_length: int | None = None, pretrained: bool = True,
        drop_path: float | None = None,
        config: TrainConfig | None = None, report: bool = True, text_column: str | None = None,
        label_column: str = "label", max_test: int | None = None, check_transfer: bool = False,
        baselines="auto", target_data=None, target_labelled_data=None, pretrain: str | None = None,
        unlabelled_data=None, pretrain_options: dict | None = None, pretrain_epochs: int | None = None,
        pretrain_max_items: int | None = None, sensitive_column: str | None = None,
        **train_options: Any) -> FitResult:
    """Adapt ``backbone`` to ``data`` with ``strategy`` and (if ``out``) save a bundle.

    Args:
        backbone: a spec string (``efficientnet-lite:0``, ``sentence:all-MiniLM-L6-v2``) or a Backbone.
        data: a built-in data set name, a folder / table path, a TaskData, ``(X, y)`` or a DataFrame.
        strategy: a registered strategy name (``transferkit list strategies``).
        strategy_options: the strategy's config fields.
        labels_per_class: draw this many labelled training examples per class (seeded).
        val_fraction: stratified validation split held out of the training data.
        val_data: a validation set (same forms as ``data``); no split is held out then.
        out: bundle directory; refused if it exists unless ``overwrite``.
        max_test: evaluate on a fixed stratified subset of this many test items.
        check_transfer: also train the from-scratch baseline(s) on the same draw and
            splits and put the verdict (positive transfer / no clear gain / negative
            transfer, with a paired bootstrap interval over the evaluated items) into
            the manifest's ``verdict`` and the report. See :func:`check_transfer_against_scratch`.
        baselines: scratch variants for ``check_transfer``; ``"auto"`` is the small CNN for
            images and TF-IDF + logistic regression for text.
        drop_path: stochastic-depth rate of ``timm:`` and ``efficientnet-lite:`` backbones in training.
        target_data: domain adaptation (strategies ``dann``, ``cdan``, ``mmd``, ``coral``,
            ``self-training``, ``coral-linear``, ``reweight-linear``, ``source-only``): the target
            domain's inputs, same forms as ``data`` or a flat image folder; labels are not used.
            ``data`` is then the labelled source; evaluate on the target with ``test_data``.
        target_labelled_data: a few labelled target examples (semi-supervised adaptation).
        pretrain: self-supervised pre-training of the backbone on ``unlabelled_data`` before the
            strategy adapts it (``simclr``, ``simsiam`` for images, ``mlm`` for text; see
            :func:`transferkit.strategies.self_supervised.pretrain`). The manifest records it
            (``pretrain``) and the bundle stores the pre-trained weights in full.
        unlabelled_data: the unlabelled inputs for ``pretrain`` (same forms as ``target_data``).
        sensitive_column: a sensitive attribute (group) column of a table or DataFrame (for
            built-in ``penguins``: ``island`` or ``sex``). It is not an input of the model; the
            metrics gain ``"fairness"`` (:func:`transferkit.evaluation.fairness.group_metrics` on
            the evaluated split), and the strategies ``reweighing`` and ``adversarial-debiasing``
            train with it. A single group is refused before training.
        pretrain_options, pretrain_epochs, pretrain_max_items: the method's options, its epochs
            (default: the method's) and a cap on the unlabelled items it sees (seeded draw).
        train_options: :class:`TrainConfig` fields (``epochs``, ``lr``, ``seed``, ...). ``lr="auto"``
            runs the learning-rate finder (:func:`lr_find`) on the training split first and trains
            at its suggestion; ``head_lr``, unless given, keeps the strategy's default ratio to
            ``lr``. The finder's curve goes into the manifest (``lr_find``) and the bundle
            (``lr_find.png``).
    """
    lr_auto = _is_auto_lr(train_options.get("lr"))
    config = replace(config or TrainConfig(), **{**train_options, "lr": None} if lr_auto else train_options)
    strat = _strategy(strategy, strategy_options)
    if out is not None:
        check_writable(out, overwrite)
    train, val, test = prepare_data(data, test_data=test_data, labels_per_class=labels_per_class,
                                    val_fraction=val_fraction, val_data=val_data, seed=config.seed,
                                    text_column=text_column,
                                    label_column=label_column, max_test=max_test, sensitive_column=sensitive_column)
    if sensitive_column is not None or (train.sensitive is not None and train.task == "classification"):
        _check_fairness_data(sensitive_column or train.sensitive_name or "sensitive", train, _scored(val, test))
    if check_transfer and train.task == "multilabel":
        raise ConfigError("check_transfer supports classification and regression; for multi-label data "
                          "run transferkit compare, which judges transfer over seeds.")
    domain = _attach_target(strat, train, target_data, target_labelled_data, text_column, label_column)
    bb_options = {"image_size": image_size, "max_length": max_length, "pretrained": pretrained, "drop_path": drop_path}
    pretrained_by = None
    if pretrain is not None or unlabelled_data is not None:
        backbone, pretrained_by = _pretrain(backbone, strat, train, pretrain, unlabelled_data, pretrain_options,
                                            pretrain_epochs, pretrain_max_items, bb_options, config)
    finder = None
    if lr_auto:
        finder = _find_lr_for(backbone, strat, train, bb_options, batch_size=config.batch_size, seed=config.seed,
                              cpu=config.cpu, progress=config.progress)
        config = replace(config, lr=finder.suggestion,
                         head_lr=config.head_lr if config.head_lr is not None else finder.head_lr)
    run = _train_and_score(backbone, strat, train, val, test, config, bb_options)
    model, history, metrics, seconds = run.model, run.history, run.metrics, run.seconds
    manifest = {
        "backbone_spec": backbone if isinstance(backbone, str) else getattr(backbone, "spec", None),
        "backbone_provenance": _provenance(backbone, strat, train),
        "strategy": {"name": strat.name, "kind": strat.kind, "config": strat.config.to_dict()},
        "train": config.to_dict(), "task": train.task, "modality": train.modality,
        "data": {"name": train.name, "source": train.source, "fingerprint": train.fingerprint(),
                 "n_train": len(train), "n_val": len(val) if val is not None else 0,
                 "n_test": len(test) if test is not None else 0, "labels_per_class": labels_per_class,
                 **({"sensitive_column": train.sensitive_name} if train.sensitive is not None else {})},
        "metrics": metrics, "history": history, "train_seconds": round(seconds, 2),
    }
    if drop_path is not None:  # acts in training only, so it is not part of the rebuilt architecture
        manifest["backbone_training"] = {"drop_path": drop_path}
    if domain is not None:
        manifest["domain_adaptation"] = domain
    if pretrained_by is not None:
        manifest["pretrain"] = pretrained_by
    if finder is not None:
        manifest["lr_find"] = finder.to_dict()
    if check_transfer:
        manifest["verdict"] = check_transfer_against_scratch(run, strat, train, val, test, config, baselines)
    predictor = Predictor(model, manifest)
    path = None
    if out is not None and _is_main_process():
        extra = _fit_report(manifest, history, metrics, train, model, _scored(val, test)) if report else None
        if finder is not None:
            extra = _with_lr_plot(extra, finder)
        path = save_bundle(model, out, manifest, overwrite=overwrite, extra=extra)
        predictor = Predictor(model, read_manifest(path), path)
    _wait_for_everyone()
    return FitResult(predictor, metrics, history, predictor.manifest, Path(out) if out is not None else None)


def _attach_target(strategy: Strategy, train: TaskData, target_data, target_labelled_data, text_column,
                   label_column) -> dict | None:
    """Resolve the target domain like ``data`` and give it to a domain-adaptation strategy (manifest entry)."""
    from transferkit.data.domains import prepare_target_data
    from transferkit.strategies.domain import attach_target

    target, labelled = prepare_target_data(train, target_data, target_labelled_data, text_column=text_column,
                                           label_column=label_column)
    return attach_target(strategy, target, labelled)


def _pretrain(backbone, strategy: Strategy, train: TaskData, method, unlabelled_data, options, epochs, max_items,
              bb_options: dict, config: TrainConfig) -> tuple[Backbone, dict]:
    """Self-supervised pre-training of the backbone on unlabelled data; returns it and the manifest entry."""
    from transferkit.data.domains import check_pairable, resolve_domain_data, unlabelled
    from transferkit.strategies.self_supervised import PRETRAINERS, pretrain

    if method is None or unlabelled_data is None:
        missing = "the method (pretrain=..., CLI --pretrain)" if method is None else \
            "the unlabelled data (unlabelled_data=..., CLI --unlabelled-data)"
        raise ConfigError(f"Self-supervised pre-training needs both a method ({', '.join(PRETRAINERS.names())}) and "
                          f"unlabelled data; {missing} is missing.")
    resolved = PRETRAINERS.get(method)(options or {}).config.to_dict()  # bad names are refused before any data is read
    if not strategy.needs_backbone(train):
        raise ConfigError(f"Strategy '{strategy.name}' trains its own model from scratch; pre-training "
                          f"(--pretrain) applies to a backbone that a transfer strategy then adapts.")
    data = unlabelled(resolve_domain_data(unlabelled_data))
    check_pairable(train, data, what="Unlabelled data", flag="unlabelled-data")
    bb = _backbone(backbone, strategy, train, **bb_options)
    spec = backbone if isinstance(backbone, str) else getattr(backbone, "spec", None)
    start = time.perf_counter()
    bb, history = pretrain(bb, data, method, options=options, epochs=epochs,
                           batch_size=None, seed=config.seed, max_items=max_items, progress=config.progress,
                           cpu=config.cpu)
    entry = {"method": method, "options": resolved, "from": spec, "data": data.name,
             "items": min(len(data), max_items or len(data)), "epochs": len(history), "history": history,
             "seconds": round(time.perf_counter() - start, 2)}
    return bb, entry


def check_transfer_against_scratch(run: _Run, strategy: Strategy, train: TaskData, val, test,
                                   config: TrainConfig, baselines="auto") -> dict:
    """Train the scratch baseline(s) on the same draw and splits, and judge the gain of ``run``.

    One seed gives no seed-to-seed spread, so the interval is a paired
    percentile bootstrap over the evaluated items (both models predict the
    same items): it covers which test items were drawn, not training noise,
    and the verdict says so. ``transferkit compare`` judges over seeds. For
    regression the per-item value is the negative squared error, and the
    gain is expressed in R² (the SSE difference over the total sum of squares).

    Returns:
        The manifest's ``verdict``: ``verdict``, ``explanation``, ``baseline``,
        ``metric``, ``transfer``, ``baseline_value``, ``gain``, ``gain_low``,
        ``gain_high``, ``interval``, ``baseline_seconds``.
    """
    from transferkit.evaluation import bootstrap_difference, judge

    scored = _scored(val, test)
    metric = PRIMARY_METRIC[train.task]
    names = default_baselines(train.modality) if baselines == "auto" else list(baselines or [])
    names = names[:1] if baselines == "auto" else names
    if scored is None or run.outputs is None or not names:
        why = "no labelled split to evaluate on" if scored is None else f"no scratch baseline for {train.modality} data"
        return {"verdict": "no baseline", "explanation": f"Transfer was not checked: {why}."}
    best = None
    for variant in names:
        cfg = TrainConfig(seed=config.seed, progress=False, batch_size=config.batch_size,
                          mixed_precision=config.mixed_precision, cpu=config.cpu)
        base = _train_and_score(None, make_strategy("scratch", {"variant": variant}), train, val, test, cfg, {})
        if best is None or _better(base.metrics.get(metric), best[1].metrics.get(metric), metric):
            best = (variant, base)
    variant, base = best
    item_a, item_b, scale = _per_item(train.task, scored.targets, run.outputs, base.outputs)
    gain, low, high = (v * scale for v in bootstrap_difference(item_a, item_b, seed=config.seed))
    verdict = judge(gain, low, high)
    pts = 100 if metric == "accuracy" else 1
    unit = " points" if pts == 100 else ""
    explanation = (f"'{strategy.name}' {metric} {run.metrics[metric]:.4f} vs scratch:{variant} "
                   f"{base.metrics[metric]:.4f}: gain {pts * gain:+.1f}{unit} (95% paired bootstrap interval "
                   f"{pts * low:+.1f} to {pts * high:+.1f} over the {len(scored)} {run.metrics['evaluated_on']} "
                   f"items; one seed, so training noise is not in the interval: transferkit compare runs seeds). "
                   + {"positive transfer": "Transfer helped.", "negative transfer":
                      "Transfer hurt: the model trained from scratch was better.",
                      "no clear gain": "No significant difference from training from scratch."}[verdict])
    return {"verdict": verdict, "explanation": explanation, "baseline": f"scratch:{variant}", "metric": metric,
            "transfer": run.metrics[metric], "baseline_value": base.metrics[metric], "gain": gain,
            "gain_low": low, "gain_high": high, "interval": "95% paired bootstrap over evaluated items, one seed",
            "baseline_seconds": round(base.seconds, 2)}


def _better(value, current, metric: str) -> bool:
    if value is None or current is None:
        return current is None
    return value > current if higher_is_better(metric) else value < current


def _per_item(task: str, targets, out_a: np.ndarray, out_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-item values whose mean difference is the primary metric's difference (times ``scale``)."""
    targets = np.asarray(targets)
    if task == "classification":
        return (out_a.argmax(1) == targets).astype(float), (out_b.argmax(1) == targets).astype(float), 1.0
    y = targets.reshape(len(targets), -1).astype(float)
    err_a = -((out_a.reshape(y.shape) - y) ** 2).sum(1)
    err_b = -((out_b.reshape(y.shape) - y) ** 2).sum(1)
    total = float(((y - y.mean(0)) ** 2).sum(1).mean()) or 1.0
    return err_a, err_b, 1.0 / total  # mean(SSE_b - SSE_a) / mean(SST) = R²_a - R²_b


def _provenance(backbone, strategy: Strategy, data: TaskData) -> str:
    """What the backbone source says about where its weights come from (``transferkit list backbones``)."""
    from transferkit.backbones import BACKBONE_SOURCES, split_spec

    if not strategy.needs_backbone(data):
        return "none: a model trained from scratch on the target data"
    spec = backbone if isinstance(backbone, str) else getattr(backbone, "spec", "")
    prefix = split_spec(spec)[0] if spec else ""
    return BACKBONE_SOURCES.entry(prefix).help if prefix in BACKBONE_SOURCES else ""


def _fit_report(manifest, history, metrics, train, model=None, scored=None):
    def write(directory: Path) -> None:
        from transferkit.reports import write_fit_report

        write_fit_report(directory, manifest=manifest, history=history, metrics=metrics, label_names=train.label_names,
                         projection=_projection(model, scored))
    return write


def _projection(model, scored) -> tuple | None:
    """Features of (up to 1,000 of) the evaluated items under the trained backbone, for the report's PCA plot."""
    from transferkit.data.cache import compute_features

    if model is None or scored is None or scored.task != "classification" or model.backbone is None:
        return None
    if model.backbone.num_features > 5000:  # e.g. a TF-IDF vocabulary: not worth a dense projection
        return None
    part = subsample(scored, 1000, 0)
    return compute_features(model.backbone, part), np.asarray(part.targets)


def _is_main_process() -> bool:
    return distributed_state().is_main_process


def _wait_for_everyone() -> None:
    distributed_state().wait_for_everyone()


def evaluate(bundle: str | Path | Predictor, data, *, split: str = "test", sensitive_column: str | None = None,
             **data_options) -> dict:
    """Metrics of a saved bundle on ``data`` (a built-in name uses its test split unless ``split="train"``).

    When the evaluated data carries a sensitive attribute (``sensitive_column`` of a table,
    DataFrame or built-in set, or a TaskData with ``sensitive``), the metrics gain
    ``"fairness"``: :func:`transferkit.evaluation.fairness.group_metrics` (classification).
    """
    predictor = bundle if isinstance(bundle, Predictor) else load(bundle)
    if sensitive_column is not None:
        data_options["sensitive_column"] = sensitive_column
    train, test = resolve_data(data, **data_options)
    target = test if (split == "test" and test is not None) else train
    if target.targets is None:
        raise DataError(f"'{target.name}' has no labels to evaluate against.")
    target = align_to_label_names(target, predictor.label_names)
    if sensitive_column is not None:
        _check_fairness_data(sensitive_column, replace(target, task=predictor.task), None)
    outputs = predictor.outputs(target.items)
    metrics = compute_metrics(predictor.task, target.targets, outputs, predictor.label_names)
    fairness = fairness_metrics(target, outputs, predictor.label_names)
    if fairness is not None:
        metrics["fairness"] = fairness
    return metrics


def default_baselines(modality: str) -> list[str]:
    """The no-transfer baselines a practitioner would train for this modality."""
    return {"image": ["small-cnn", "same-arch"], "text": ["tfidf"]}.get(modality, [])


def compare(backbone: str, data, strategies=("linear-probe", "finetune"), *, seeds: int = 3,
            labels_per_class=None, baselines="auto", strategy_options: dict | None = None, test_data=None,
            val_fraction: float = 0.2, max_test: int | None = None, experiment: str | None = None,
            image_size: int | None = None, max_length: int | None = None, out: str | Path | None = None,
            overwrite: bool = False, config: TrainConfig | None = None, progress: bool = True,
            text_column: str | None = None, label_column: str = "label", strict_labels: bool = True,
            data_options: dict | None = None, **train_options: Any) -> CompareResult:
    """Run ``strategies`` and the scratch baselines over ``seeds`` and label budgets, with verdicts.

    Every strategy sees the same labelled draw for a given seed, so gains are
    paired by seed. Baselines use their own recipes (the user's ``epochs``/``lr``
    apply to the transfer strategies only). ``baselines="auto"``: a small CNN and the
    same architecture at random init for images, TF-IDF + logistic regression for text.
    ``strict_labels=False`` lets a class with fewer than ``labels_per_class``
    examples contribute all it has ("up to N per class"). ``data_options`` go to
    the built-in data set's loader (``transferkit list datasets`` shows them).
    """
    config = replace(config or TrainConfig(progress=False), **train_options)
    budgets = labels_per_class if isinstance(labels_per_class, (list, tuple)) else [labels_per_class]
    strategy_options = strategy_options or {}
    for name in strategies:
        make_strategy(name, strategy_options.get(name))  # validate every config before any training
    if out is not None:
        check_writable(out, overwrite)
    bb_opts = {"image_size": image_size, "max_length": max_length}
    rows, notes = [], []
    for lpc in budgets:
        for seed in range(seeds):
            train, val, test = prepare_data(data, test_data=test_data, labels_per_class=lpc,
                                            val_fraction=val_fraction, seed=seed, max_test=max_test,
                                            text_column=text_column, label_column=label_column,
                                            strict_labels=strict_labels, **(data_options or {}))
            exp = experiment or (data if isinstance(data, str) else data_name(train))
            if test is None:
                notes.append("No test split: metrics are on the validation split.")
            runs = [(s, make_strategy(s, strategy_options.get(s)), replace(config, seed=seed)) for s in strategies]
            names = default_baselines(train.modality) if baselines == "auto" else list(baselines or [])
            runs += [(f"scratch:{v}", make_strategy("scratch", {"variant": v}), TrainConfig(seed=seed, progress=False,
                      batch_size=config.batch_size, mixed_precision=config.mixed_precision, cpu=config.cpu))
                     for v in names]
            for label, strat, cfg in runs:
                run = _train_and_score(backbone, strat, train, val, test, cfg, bb_opts)
                metrics, seconds = run.metrics, run.seconds
                rows.append({"experiment": exp, "labels_per_class": lpc if lpc is not None else _per_class(train),
                             "strategy": label, "kind": strat.kind, "seed": seed, "seconds": round(seconds, 2),
                             **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
                if progress:
                    _print_run(rows[-1], PRIMARY_METRIC[train.task])
    runs_df = pd.DataFrame(rows)
    metric = PRIMARY_METRIC[train.task]
    summary = summarize(runs_df, metric)
    verdicts = transfer_verdicts(runs_df, metric, higher_is_better(metric))
    result = CompareResult(runs_df, summary, verdicts, metric, notes=sorted(set(notes)))
    if out is not None and _is_main_process():
        from transferkit.reports import write_compare_report

        Path(out).mkdir(parents=True, exist_ok=True)
        write_compare_report(out, runs=runs_df, summary=summary, verdicts=verdicts, metric=metric,
                             title=f"{backbone} on {exp}", notes=result.notes)
        result.path = Path(out)
    return result


def _per_class(data: TaskData) -> int:
    """Median training examples per class (for runs on all the labelled data)."""
    if data.task != "classification":
        return len(data)
    return int(np.median(np.bincount(data.targets, minlength=len(data.label_names or [])))) if len(data) else 0


def data_name(data: TaskData) -> str:
    """The data set's name without the sampling suffix (``fashion-mnist[10/class]`` -> ``fashion-mnist``)."""
    return data.name.split("[", 1)[0]


def _print_run(row: dict, metric: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"  [dim]{row['experiment']} n/class={row['labels_per_class']} seed={row['seed']} "
                               f"{row['strategy']}: {metric}={row.get(metric, float('nan')):.3f} ({row['seconds']:.1f}s)[/dim]",
                               soft_wrap=True)


def list_strategies() -> list[dict]:
    """Name, kind, one-line help and config fields of every registered strategy."""
    return [{"name": e.name, "kind": e.obj.kind, "help": e.help, "options": e.obj.Config.describe()}
            for e in STRATEGIES]


def rebuild(path: str | Path) -> TransferModel:
    """The trained ``TransferModel`` of a bundle (for further training or export)."""
    return rebuild_model(path)


# --------------------------------------------------------------------------- the learning-rate finder


def _is_auto_lr(lr) -> bool:
    """Whether ``lr`` asks for the finder; a string other than ``"auto"`` is refused."""
    if isinstance(lr, str):
        if lr.strip().lower() != "auto":
            raise ConfigError(f"The 'lr' parameter of fit must be a float in (0, 10] or 'auto'. Got {lr!r} instead.")
        return True
    return False


def _find_lr_for(backbone, strategy: Strategy, train: TaskData, backbone_options: dict, *, batch_size: int = 32,
                 seed: int = 0, cpu: bool = False, progress: bool = False, **finder_options):
    """The range test of ``strategy`` on ``train``, on a copy of the strategy and its own backbone.

    The strategy the caller trains next is left as it was (``prepare`` may
    store state on it, such as a regularizer's snapshot), and so is a
    Backbone object the caller passed. With several processes, every process
    uses process 0's result, so all train at the same learning rate.
    """
    import copy

    import torch

    from transferkit.training.lr_finder import find_lr

    if type(strategy).fit is not Strategy.fit:
        raise ConfigError(f"Strategy '{strategy.name}' does not train with the generic loop (it has its own fit), "
                          "so the learning-rate finder does not apply to it; give lr a number.")
    probe = copy.deepcopy(strategy)
    bb = _backbone(backbone, probe, train, **backbone_options)
    if bb is None:
        raise ConfigError(f"The learning-rate finder needs a backbone for strategy '{strategy.name}'.")
    if bb is backbone:
        bb = copy.deepcopy(bb)
    probe.check_data(bb, train)
    with torch.random.fork_rng(devices=[]):  # the same new head for the same seed, without touching the caller's RNG
        torch.manual_seed(seed)
        model = probe.prepare(bb, train)
    state = distributed_state()
    device = "cpu" if cpu else state.device
    result = find_lr(probe, model, train, batch_size=batch_size, seed=seed, device=device,
                     progress=progress and state.is_main_process, **finder_options)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        result = broadcast_object_list([result], from_process=0)[0]
    return result


def _with_lr_plot(extra, finder):
    """A bundle ``extra`` writer that also writes the finder's curve as ``lr_find.png``."""
    def write(directory: Path) -> None:
        if extra is not None:
            extra(directory)
        finder.plot(Path(directory) / "lr_find.png")
    return write


def lr_find(backbone: str | Backbone, data, strategy: str | Strategy = "finetune", *,
            strategy_options: dict | None = None, labels_per_class: int | None = None, val_fraction: float = 0.2,
            image_size: int | None = None, max_length: int | None = None, drop_path: float | None = None,
            pretrained: bool = True, batch_size: int = 32, seed: int = 0, start: float = 1e-7, end: float = 1.0,
            steps: int = 100, out: str | Path | None = None, text_column: str | None = None,
            label_column: str = "label", cpu: bool = False, progress: bool = False, **data_options):
    """Run the learning-rate range test of ``strategy`` with ``backbone`` on ``data``'s training split.

    The split is the one :func:`fit` trains on with the same ``seed``,
    ``labels_per_class`` and ``val_fraction``. The learning rate on the curve
    is the body's; the head keeps the strategy's default ratio. See
    :func:`transferkit.training.lr_finder.find_lr` for the method and
    :class:`~transferkit.training.lr_finder.LRFinderResult` for the suggestion.

    Args:
        out: also write the curve as a PNG there.
        start, end, steps: the learning-rate range and the number of mini-batches.

    Returns:
        An :class:`~transferkit.training.lr_finder.LRFinderResult`.

    Example:
        >>> r = tk.lr_find("efficientnet-lite:0", "fashion-mnist", labels_per_class=10,  # doctest: +SKIP
        ...                image_size=64, out="lr.png")
        >>> tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", lr=r.suggestion,  # doctest: +SKIP
        ...        head_lr=r.head_lr)
    """
    strat = _strategy(strategy, strategy_options)
    train, _, _ = prepare_data(data, labels_per_class=labels_per_class, val_fraction=val_fraction, seed=seed,
                               text_column=text_column, label_column=label_column, **data_options)
    bb_options = {"image_size": image_size, "max_length": max_length, "pretrained": pretrained, "drop_path": drop_path}
    result = _find_lr_for(backbone, strat, train, bb_options, batch_size=batch_size, seed=seed, cpu=cpu,
                          progress=progress, start=start, end=end, steps=steps)
    if out is not None and _is_main_process():
        result.plot(out)
    return result
