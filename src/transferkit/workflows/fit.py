"""``fit``, ``evaluate``, ``prepare_data`` and ``lr_find``: adapt a backbone to a task, score it, ship it.

Example:
    >>> import transferkit as tk                                                  # doctest: +SKIP
    >>> result = tk.fit("efficientnet-lite:0", "fashion-mnist", "linear-probe",  # doctest: +SKIP
    ...                 labels_per_class=10, image_size=64, out="runs/fmnist")
    >>> tk.load("runs/fmnist").predict(["boot.png"])                            # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.backbones.base import Backbone
from transferkit.data import (align_to_label_names, auto_val_fraction, check_two_classes, resolve_data,
                              sample_per_class, subsample, train_val_split)
from transferkit.data.dataset import TaskData
from transferkit.data.resolve import is_streamed, prepare_stream
from transferkit.data.splits import cap_test
from transferkit.data.streaming import StreamData, is_stream
from transferkit.errors import ConfigError, DataError
from transferkit.export.bundle import Predictor, check_writable, load, read_manifest, rebuild_model, save_bundle
from transferkit.strategies import Strategy, TransferModel
from transferkit.tasks import compute_metrics, get_task
from transferkit.training import TrainConfig
from transferkit.training.loop import distributed_state
from transferkit.workflows.baselines import check_transfer_against_scratch
from transferkit.workflows.options import (DataOptions, DomainOptions, FairnessOptions, FitOptions, PretrainOptions,
                                           fold_options)
from transferkit.workflows.resume import checkpointing, run_settings
from transferkit.workflows.runs import (Run, check_fairness_data, check_fit_options, check_stream_options,
                                        fairness_metrics, is_main_process, resolve_backbone, resolve_strategy,
                                        scored_split, train_and_score, wait_for_everyone)

__all__ = ["DataOptions", "DomainOptions", "FairnessOptions", "FitResult", "PretrainOptions", "evaluate", "fit",
           "lr_find", "prepare_data", "rebuild"]


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    predictor: Predictor
    metrics: dict
    history: list[dict]
    manifest: dict
    path: Path | None = None


def prepare_data(data, *, test_data=None, val_data=None, labels_per_class: int | None = None,
                 val_fraction: float | None = None, seed: int = 0, max_test: int | None = None,
                 strict_labels: bool = True, stream: bool = False,
                 **data_options) -> tuple[TaskData | StreamData, TaskData | None, TaskData | None]:
    """Resolve ``data`` to (train, validation, test) with a seeded per-class draw and split.

    A given ``val_data`` is used as the validation set (no split is held out). ``val_fraction=None``
    is the tiny-data protocol (:func:`~transferkit.data.auto_val_fraction`): a 20% split only where
    every class keeps 10 validation items or there is no test split, else all labels train.

    Streamed training data (``stream=True``: tar shards, a ``datasets.IterableDataset``, ...) comes back as a
    :class:`~transferkit.data.streaming.StreamData`, neither drawn from nor split (:func:`~transferkit.data.resolve.prepare_stream`).

    Raises:
        DataError: bad data (named by file and row), or classification training data with a single class
            (:func:`~transferkit.data.check_two_classes`).

    Example:
        >>> from transferkit.api import prepare_data
        >>> train, val, test = prepare_data("fashion-mnist", labels_per_class=10, seed=0)   # doctest: +SKIP
        >>> len(train), val                                                                 # doctest: +SKIP
        (100, None)
    """
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ConfigError(f"The 'val_fraction' parameter must be a float in [0, 1). Got {val_fraction!r} instead.")
    train, test = resolve_data(data, test_data=test_data, stream=stream, **data_options)
    if is_stream(train):
        return prepare_stream(train, test, val_data, labels_per_class, val_fraction, max_test, data_options)
    check_two_classes(train)
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise ConfigError(f"The 'labels_per_class' parameter must be an int in [1, inf). Got {labels_per_class} instead.")
        train = sample_per_class(train, labels_per_class, seed, strict=strict_labels)
    if val_data is not None:
        columns = {k: v for k, v in data_options.items()
                   if k in ("text_column", "label_column", "feature_columns", "task", "sensitive_column")}
        _, val = resolve_data(train, test_data=val_data, **columns)  # checks and aligns its labels with training
    else:
        if val_fraction is None:
            val_fraction = auto_val_fraction(train, has_test=test is not None)
        train, val = train_val_split(train, val_fraction, seed)
    return train, val, cap_test(test, max_test)  # the same test items for every seed


def fit(backbone: str | Backbone | None, data, strategy: str | Strategy = "linear-probe", *,
        strategy_options: dict | None = None, data_options: DataOptions | None = None,
        train: TrainConfig | None = None, domain: DomainOptions | None = None,
        fairness: FairnessOptions | None = None, pretraining: PretrainOptions | None = None,
        out: str | Path | None = None, overwrite: bool = False, resume: bool = False, pretrained: bool = True,
        drop_path: float | None = None, report: bool = True, check_transfer: bool = False, baselines="auto",
        config: TrainConfig | None = None, **options: Any) -> FitResult:
    """Adapt ``backbone`` to ``data`` with ``strategy`` and (if ``out``) save a bundle.

    The settings come in typed groups (:mod:`transferkit.workflows.options`), each
    validated when built. Every field may also be given as a flat keyword
    (``labels_per_class=10, epochs=3``), which goes into its group; a keyword and
    its group both given are refused, as is an unknown keyword.

    Args:
        backbone: a spec string (``efficientnet-lite:0``, ``sentence:all-MiniLM-L6-v2``) or a Backbone.
        data: a built-in data set name, a folder / table path, a TaskData, ``(X, y)`` or a DataFrame.
        strategy: a registered strategy name (``transferkit list strategies``).
        strategy_options: the strategy's config fields.
        data_options: :class:`DataOptions`: test and validation data, ``labels_per_class`` (a seeded
            per-class draw), ``val_fraction``, columns, ``max_test``, ``image_size``, ``max_length``.
        train: :class:`TrainConfig`: ``epochs``, ``lr``, ``seed``, ... ``lr="auto"`` (a flat keyword, with
            ``train.lr`` unset) runs the learning-rate finder (:func:`lr_find`) on the training split first
            and trains at its suggestion; ``head_lr``, unless given, keeps the strategy's default ratio to
            ``lr``. The finder's curve goes into the manifest (``lr_find``) and the bundle (``lr_find.png``).
        domain: :class:`DomainOptions`, for domain adaptation (strategies ``dann``, ``cdan``, ``mmd``,
            ``coral``, ``self-training``, ``coral-linear``, ``reweight-linear``, ``source-only``):
            ``target_data``, the target domain's inputs (same forms as ``data`` or a flat image folder;
            labels are not used), and ``target_labelled_data``, a few labelled target examples. ``data``
            is then the labelled source; evaluate on the target with ``test_data``.
        fairness: :class:`FairnessOptions`: ``sensitive_column``, a group column of a table or DataFrame
            (built-in ``penguins``: ``island`` or ``sex``). It is not an input of the model; the metrics
            gain ``"fairness"`` (:func:`transferkit.evaluation.fairness.group_metrics` on the evaluated
            split), and the strategies ``reweighing`` and ``adversarial-debiasing`` train with it. A single
            group is refused before training.
        pretraining: :class:`PretrainOptions`: self-supervised pre-training of the backbone on
            ``unlabelled_data`` with ``method`` (``simclr``, ``simsiam`` for images, ``mlm`` for text; see
            :func:`transferkit.workflows.pretrain.pretrain`) before the strategy adapts it; flat keywords
            ``pretrain``, ``unlabelled_data``, ``pretrain_options``, ``pretrain_epochs``,
            ``pretrain_max_items``. The manifest records it (``pretrain``) and the bundle stores the
            pre-trained weights in full.
        out: bundle directory; refused if it exists unless ``overwrite``. Training checkpoints go to
            ``OUT.checkpoint/`` beside it (at each epoch end, and every ``checkpoint_every`` optimizer steps),
            which is removed once the bundle is written (:mod:`transferkit.workflows.resume`).
        overwrite: replace an existing bundle at ``out``, and start over instead of refusing when
            ``OUT.checkpoint/`` holds the checkpoint of an interrupted run.
        resume: continue the interrupted run from the latest checkpoint in ``OUT.checkpoint/`` (with the
            same settings, except ``epochs``); without one, train from the start (with a warning).
        pretrained: load the backbone's pre-trained weights (``False``: the same architecture, random).
        drop_path: stochastic-depth rate of ``timm:`` and ``efficientnet-lite:`` backbones in training.
        report: write the HTML / Markdown report into the bundle.
        check_transfer: also train the from-scratch baseline(s) on the same draw and splits and put the
            verdict (positive transfer / no clear gain / negative transfer, with a paired bootstrap
            interval over the evaluated items) into the manifest's ``verdict`` and the report. See
            :func:`check_transfer_against_scratch`.
        baselines: scratch variants for ``check_transfer``; ``"auto"`` is the small CNN for images and
            TF-IDF + logistic regression for text.
        config: the old name of ``train`` (flat training keywords override its fields).
        **options: flat keywords of the groups (:func:`~transferkit.workflows.options.flat_keywords`).

    Returns:
        A :class:`FitResult`: the predictor, metrics, history, manifest and bundle path.

    Raises:
        ConfigError: an invalid or unknown option, or a keyword given with its group; a checkpoint at
            ``OUT.checkpoint`` without ``resume`` or ``overwrite``, or a resume with other settings.

    Example:
        >>> import transferkit as tk                                                  # doctest: +SKIP
        >>> r = tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", labels_per_class=10,  # doctest: +SKIP
        ...            image_size=64, epochs=30, out="runs/fmnist")
        >>> r = tk.fit("efficientnet-lite:0", "fashion-mnist", "finetune", out="runs/fmnist",  # doctest: +SKIP
        ...            data_options=tk.DataOptions(labels_per_class=10, image_size=64),
        ...            train=tk.TrainConfig(epochs=30, seed=1))
    """
    opts = fold_options(options, config=config, data_options=data_options, train=train, domain=domain,
                        fairness=fairness, pretraining=pretraining)
    auto = _auto_options(strategy, strategy_options, opts)
    strat = resolve_strategy(strategy, strategy_options) if auto is None else None
    if out is not None:
        check_writable(out, overwrite)
    train_set, val, test = _prepare(data, opts)
    if is_stream(train_set):
        check_stream_options(train_set, opts, auto is not None, check_transfer)
    check_fit_options(train_set, scored_split(val, test), opts.fairness.sensitive_column, check_transfer)
    bb_options = {"image_size": opts.data.image_size, "max_length": opts.data.max_length, "pretrained": pretrained,
                  "drop_path": drop_path, "vad": opts.data.vad or None}
    searched = None
    if auto is not None:  # the search reads the training split only; its winner is trained below like any strategy
        backbone, strat, opts, bb_options, searched = _auto_search(backbone, train_set, opts, bb_options, auto)
    domain_entry = _attach_target(strat, train_set, opts.domain, opts.data)
    settings = run_settings(backbone, strat, opts, train_set, val, test, bb_options, domain_entry,
                            distributed_state().num_processes)
    with checkpointing(out, settings, strat, resume=resume, overwrite=overwrite) as checkpoint:
        backbone, pretrained_by = _pretrain(backbone, strat, train_set, opts.pretraining, bb_options, opts.train)
        finder, cfg = (_auto_lr(backbone, strat, train_set, bb_options, opts.train) if opts.lr_auto
                       else (None, opts.train))
        run = train_and_score(backbone, strat, train_set, val, test, cfg, bb_options, checkpoint=checkpoint)
        manifest = _manifest(backbone, strat, cfg, train_set, val, test, opts.data.labels_per_class, run)
        # drop_path acts in training only, so it is not part of the rebuilt architecture
        extras = {"backbone_training": {"drop_path": drop_path} if drop_path is not None else None,
                  "domain_adaptation": domain_entry, "pretrain": pretrained_by,
                  "lr_find": finder.to_dict() if finder is not None else None,
                  "auto": searched.to_dict() if searched is not None else None}
        manifest.update({k: v for k, v in extras.items() if v is not None})
        if check_transfer:
            manifest["verdict"] = check_transfer_against_scratch(run, strat, train_set, val, test, cfg, baselines)
        predictor = _save_fit(run, manifest, train_set, scored_split(val, test), out, overwrite=overwrite,
                              report=report, finder=finder)
        wait_for_everyone()
    return FitResult(predictor, run.metrics, run.history, predictor.manifest, Path(out) if out is not None else None)


def _auto_options(strategy, strategy_options: dict | None, opts: FitOptions):
    """``strategy="auto"``: its validated options, refusing what the search does not combine with; else ``None``."""
    from transferkit.workflows.auto import AUTO, auto_options

    if not (isinstance(strategy, str) and strategy == AUTO):
        return None
    if opts.domain.target_data is not None or opts.domain.target_labelled_data is not None:
        raise ConfigError("strategy 'auto' searches supervised recipes; for domain adaptation pick one of the domain "
                          "strategies (transferkit list strategies) or compare them with transferkit compare.")
    if opts.pretraining.active:
        raise ConfigError("strategy 'auto' does not combine with pre-training (--pretrain); pre-train, then run auto "
                          "on the pre-trained backbone, or pick a strategy.")
    return auto_options(strategy_options)


def _auto_search(backbone, train: TaskData, opts: FitOptions, bb_options: dict, auto):
    """Run the search; the winner's backbone spec, strategy, options (its training recipe), backbone options (its
    image size) and the record."""
    from transferkit.workflows.auto import candidate_settings, search

    found = search(backbone, train, opts.train, bb_options, auto, progress=opts.train.progress)
    win = found.winner
    cfg, win_options = candidate_settings(win, opts.train, bb_options)
    opts = replace(opts, train=cfg, lr_auto=opts.lr_auto and not win.is_scratch)  # the finder tunes transfer only
    if not win.is_scratch:
        bb_options = win_options
    return win.backbone, resolve_strategy(win.strategy, win.options or None), opts, bb_options, found


def _prepare(data, opts: FitOptions) -> tuple[TaskData, TaskData | None, TaskData | None]:
    """:func:`prepare_data` with a fit's data options, seed and sensitive column."""
    d = opts.data
    return prepare_data(data, test_data=d.test_data, labels_per_class=d.labels_per_class,
                        val_fraction=d.val_fraction, val_data=d.val_data, seed=opts.train.seed,
                        text_column=d.text_column, label_column=d.label_column, max_test=d.max_test,
                        sensitive_column=opts.fairness.sensitive_column, stream=d.stream or is_streamed(data),
                        **({"task": d.task} if d.task is not None else {}))


def _manifest(backbone, strategy: Strategy, config: TrainConfig, train: TaskData, val, test, labels_per_class,
              run: Run) -> dict:
    """The bundle manifest of a fit: backbone, strategy, training config, data, metrics and history."""
    return {
        "backbone_spec": backbone if isinstance(backbone, str) else getattr(backbone, "spec", None),
        "backbone_provenance": _provenance(backbone, strategy, train),
        "strategy": {"name": strategy.name, "kind": strategy.kind, "config": strategy.config.to_dict()},
        "train": config.to_dict() | {"batch_size": config.batch_for(train)},  # the task's when not given
        "task": train.task, "modality": train.modality,
        "data": {"name": train.name, "source": train.source, "fingerprint": train.fingerprint(),
                 "n_train": len(train), "n_val": len(val) if val is not None else 0,
                 "n_test": len(test) if test is not None else 0, "labels_per_class": labels_per_class,
                 **({"streamed": True} if is_stream(train) else {}),
                 **({"sensitive_column": train.sensitive_name} if train.sensitive is not None else {})},
        "metrics": run.metrics, "history": run.history, "train_seconds": round(run.seconds, 2)}


def _save_fit(run: Run, manifest: dict, train: TaskData, scored: TaskData | None, out, *, overwrite: bool,
              report: bool, finder) -> Predictor:
    """The predictor of ``run``; with ``out``, the bundle (report and finder plot included) written there first."""
    predictor = Predictor(run.model, manifest)
    if out is not None and is_main_process():
        extra = _fit_report(manifest, run.history, run.metrics, train, run.model, scored, run.outputs) if report else None
        if finder is not None:
            extra = _with_lr_plot(extra, finder)
        path = save_bundle(run.model, out, manifest, overwrite=overwrite, extra=extra)
        predictor = Predictor(run.model, read_manifest(path), path)
    return predictor


def _attach_target(strategy: Strategy, train: TaskData, domain: DomainOptions, data: DataOptions) -> dict | None:
    """Resolve the target domain like ``data`` and give it to a domain-adaptation strategy (manifest entry)."""
    from transferkit.data.domains import prepare_target_data
    from transferkit.strategies.domain import attach_target

    target, labelled = prepare_target_data(train, domain.target_data, domain.target_labelled_data,
                                           text_column=data.text_column, label_column=data.label_column)
    return attach_target(strategy, target, labelled)


def _pretrain(backbone, strategy: Strategy, train: TaskData, options: PretrainOptions, bb_options: dict,
              config: TrainConfig) -> tuple[Backbone | str | None, dict | None]:
    """Self-supervised pre-training of the backbone on unlabelled data, if asked: the backbone and manifest entry.

    Without pre-training, ``backbone`` comes back as it was, with no entry.
    """
    from transferkit.data.domains import check_pairable, resolve_domain_data, unlabelled
    from transferkit.strategies.self_supervised import PRETRAINERS
    from transferkit.workflows.pretrain import pretrain

    if not options.active:
        return backbone, None
    method, max_items = options.method, options.max_items
    resolved = PRETRAINERS.get(method)(options.options or {}).config.to_dict()  # bad names: refused before reading
    if not strategy.needs_backbone(train):
        raise ConfigError(f"Strategy '{strategy.name}' trains its own model from scratch; pre-training "
                          f"(--pretrain) applies to a backbone that a transfer strategy then adapts.")
    data = unlabelled(resolve_domain_data(options.unlabelled_data))
    check_pairable(train, data, what="Unlabelled data", flag="unlabelled-data")
    bb = resolve_backbone(backbone, strategy, train, **bb_options)
    spec = backbone if isinstance(backbone, str) else getattr(backbone, "spec", None)
    start = time.perf_counter()
    bb, history = pretrain(bb, data, method, options=options.options, epochs=options.epochs, batch_size=None,
                           seed=config.seed, max_items=max_items, progress=config.progress, cpu=config.cpu)
    entry = {"method": method, "options": resolved, "from": spec, "data": data.name,
             "items": min(len(data), max_items or len(data)), "epochs": len(history), "history": history,
             "seconds": round(time.perf_counter() - start, 2)}
    return bb, entry


def _provenance(backbone, strategy: Strategy, data: TaskData) -> str:
    """What the backbone source says about where its weights come from (``transferkit list backbones``)."""
    from transferkit.backbones import BACKBONE_SOURCES, split_spec

    if not strategy.needs_backbone(data):
        return "none: a model trained from scratch on the target data"
    spec = backbone if isinstance(backbone, str) else getattr(backbone, "spec", "")
    prefix = split_spec(spec)[0] if spec else ""
    return BACKBONE_SOURCES.entry(prefix).help if prefix in BACKBONE_SOURCES else ""


def _fit_report(manifest, history, metrics, train, model=None, scored=None, outputs=None):
    def write(directory: Path) -> None:
        from transferkit.reports import write_fit_report

        examples = figure = None
        if scored is not None and outputs is not None and scored.targets is not None:
            task, shown = get_task(train.task), (scored.items, scored.targets, outputs, train.label_names)
            examples, figure = task.report_examples(*shown), task.report_figure(*shown)
        write_fit_report(directory, manifest=manifest, history=history, metrics=metrics, label_names=train.label_names,
                         projection=_projection(model, scored), examples=examples, figure=figure)
    return write


def _projection(model, scored) -> tuple | None:
    """Features of (up to 1,000 of) the evaluated items under the trained backbone, for the report's PCA plot."""
    from transferkit.data.cache import compute_features

    if model is None or scored is None or not get_task(scored.task).single_label or model.backbone is None:
        return None
    if len(scored) < 2:  # a tiny data set's one validation item: nothing to project
        return None
    if model.backbone.num_features > 5000:  # e.g. a TF-IDF vocabulary: not worth a dense projection
        return None
    part = subsample(scored, 1000, 0)
    return compute_features(model.backbone, part), np.asarray(part.targets)


def evaluate(bundle: str | Path | Predictor, data, *, split: str = "test", sensitive_column: str | None = None,
             **data_options) -> dict:
    """Metrics of a saved bundle on ``data`` (a built-in name uses its test split unless ``split="train"``).

    When the evaluated data carries a sensitive attribute (``sensitive_column`` of a table,
    DataFrame or built-in set, or a TaskData with ``sensitive``), the metrics gain
    ``"fairness"``: :func:`transferkit.evaluation.fairness.group_metrics` (classification).

    Example:
        >>> import transferkit as tk
        >>> tk.evaluate("runs/fmnist", "fashion-mnist")["accuracy"]    # doctest: +SKIP
        0.7132
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
        check_fairness_data(sensitive_column, replace(target, task=predictor.task), None)
    outputs = predictor.outputs(target.items)
    metrics = compute_metrics(predictor.task, target.targets, outputs, predictor.label_names)
    metrics.update(get_task(predictor.task).model_metrics(predictor.model, target))
    fairness = fairness_metrics(target, outputs, predictor.label_names)
    if fairness is not None:
        metrics["fairness"] = fairness
    return metrics


# --------------------------------------------------------------------------- the learning-rate finder


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
    bb = resolve_backbone(backbone, probe, train, **backbone_options)
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


def _auto_lr(backbone, strategy: Strategy, train: TaskData, bb_options: dict, config: TrainConfig):
    """``lr="auto"``: the finder's result, and ``config`` at its suggestion (``head_lr`` too unless given)."""
    finder = _find_lr_for(backbone, strategy, train, bb_options, batch_size=config.batch_for(train),
                          seed=config.seed, cpu=config.cpu, progress=config.progress)
    config = replace(config, lr=finder.suggestion,
                     head_lr=config.head_lr if config.head_lr is not None else finder.head_lr)
    return finder, config


def _with_lr_plot(extra, finder):
    """A bundle ``extra`` writer that also writes the finder's curve as ``lr_find.png``."""
    def write(directory: Path) -> None:
        if extra is not None:
            extra(directory)
        finder.plot(Path(directory) / "lr_find.png")
    return write


def lr_find(backbone: str | Backbone, data, strategy: str | Strategy = "finetune", *,
            strategy_options: dict | None = None, labels_per_class: int | None = None, val_fraction: float | None = None,
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
    strat = resolve_strategy(strategy, strategy_options)
    train, _, _ = prepare_data(data, labels_per_class=labels_per_class, val_fraction=val_fraction, seed=seed,
                               text_column=text_column, label_column=label_column, **data_options)
    bb_options = {"image_size": image_size, "max_length": max_length, "pretrained": pretrained, "drop_path": drop_path}
    result = _find_lr_for(backbone, strat, train, bb_options, batch_size=batch_size, seed=seed, cpu=cpu,
                          progress=progress, start=start, end=end, steps=steps)
    if out is not None and is_main_process():
        result.plot(out)
    return result


# --------------------------------------------------------------------------- what fit takes and makes


def rebuild(path: str | Path) -> TransferModel:
    """The trained ``TransferModel`` of a bundle (for further training or export).

    Example:
        >>> from transferkit.api import rebuild
        >>> model = rebuild("runs/fmnist")      # doctest: +SKIP
        >>> model.backbone.spec                 # doctest: +SKIP
        'efficientnet-lite:0'
    """
    return rebuild_model(path)
