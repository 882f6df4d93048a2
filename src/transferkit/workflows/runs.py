"""One training run and its scores, shared by ``fit``, ``compare`` and the transfer check.

:func:`train_and_score` loads the backbone a strategy needs, trains it and scores
the result on the evaluated split (test, else validation) with the task's metrics,
group fairness metrics where the data carries a sensitive attribute, and what
fine-tuning preserved of the source head's predictions.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.data.dataset import TaskData
from transferkit.data.streaming import StreamData
from transferkit.errors import ConfigError
from transferkit.strategies import Strategy, TransferModel, make_strategy
from transferkit.tasks import compute_metrics, get_task
from transferkit.training import TrainConfig, Trainer
from transferkit.training.loop import distributed_state

if TYPE_CHECKING:
    from transferkit.workflows.options import FitOptions

__all__ = ["Run", "check_fairness_data", "check_fit_options", "check_stream_options",
           "fairness_metrics", "is_main_process", "resolve_backbone",
           "resolve_strategy", "scored_split", "table_width", "train_and_score", "wait_for_everyone"]


def resolve_strategy(strategy: str | Strategy, options: dict | None) -> Strategy:
    """A Strategy passes through; a name is built with ``options``."""
    if isinstance(strategy, Strategy):
        return strategy
    return make_strategy(strategy, options)


def resolve_backbone(backbone: str | Backbone | None, strategy: Strategy, data: TaskData, **options) -> Backbone | None:
    """The backbone ``strategy`` needs on ``data``: a Backbone or ``None`` passes through, a spec is loaded."""
    if isinstance(backbone, Backbone) or backbone is None:
        return backbone
    if not strategy.needs_backbone(data):
        strategy_vad(strategy, data, options.get("vad"))
        return None  # e.g. the small CNN and TF-IDF baselines
    opts = {k: v for k, v in options.items() if v is not None}
    return load_backbone(backbone, **{**decoder_option(backbone, data), **opts}, **table_width(backbone, data))


def strategy_vad(strat: Strategy, train: TaskData, vad: bool | str | None) -> None:
    """``vad`` (a backbone option) for a strategy that builds its own model: ``scratch``'s audio variants take it as
    an option; a strategy without one refuses it rather than ignore it."""
    if not vad:
        return
    if "vad" not in {f.name for f in dataclasses.fields(strat.config)}:
        raise ConfigError(f"vad trims silence in an audio backbone's preprocessing; strategy '{strat.name}' builds "
                          f"its own model on this data and has no vad option.")
    strat.config = dataclasses.replace(strat.config, vad=vad)


def decoder_option(spec: str, data: TaskData) -> dict:
    """``{"decoder": True}`` for a source with a ``decoder`` option (``whisper:``) when the task trains the
    source model's own output (``logits`` features: ``speech-recognition``); else ``{}``."""
    from transferkit.backbones import BACKBONE_SOURCES, split_spec

    prefix, _ = split_spec(spec)
    source = BACKBONE_SOURCES.get(prefix) if prefix in BACKBONE_SOURCES.names() else None
    if data.task_spec.feature_kind == "logits" and "decoder" in getattr(source, "options", ()):
        return {"decoder": True}
    return {}


def table_width(spec: str, data: TaskData) -> dict:
    """``{"in_features": F}`` for a source that takes the table's width (``mlp:``) and tabular data; else ``{}``.

    Example:
        >>> from transferkit.api import table_width
        >>> table_width("mlp:64x64", penguins_train)    # doctest: +SKIP
        {'in_features': 4}
    """
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
class Run:
    """A trained model, its history, its metrics on the scored split and the training time."""

    model: TransferModel
    history: list[dict]
    metrics: dict
    seconds: float
    outputs: np.ndarray | None = None  # on the scored split (test, else validation)


def train_and_score(backbone, strategy: Strategy, train: TaskData, val, test, config: TrainConfig,
                    backbone_options: dict, checkpoint=None) -> Run:
    """Train ``strategy`` on ``train`` (validating on ``val``) and score it on test, else validation.

    ``checkpoint``: a :class:`~transferkit.training.checkpoint.Checkpointer` the loop saves to and resumes from.
    """
    import torch

    from transferkit.strategies.regularizers import changes_backbone, source_predictions

    start = time.perf_counter()
    torch.manual_seed(config.seed)  # a backbone at random init (mlp:, small-cnn:) starts the same for the same seed
    bb = resolve_backbone(backbone, strategy, train, **backbone_options)
    if bb is not None:
        strategy.check_data(bb, train)  # a modality mismatch is named before anything runs the backbone
    scored = scored_split(val, test)
    tick = time.perf_counter()
    # The source head's classes before adaptation, to measure what fine-tuning preserved.
    before = source_predictions(bb, scored) if changes_backbone(strategy) else None
    start += time.perf_counter() - tick  # not training time
    model, history = strategy.fit(bb, train, val, Trainer(config, checkpoint=checkpoint))
    seconds = time.perf_counter() - start
    metrics, outputs = {}, None
    if scored is not None:
        outputs = strategy.predict(model, scored)
        evaluated_on = "test" if scored is test else "validation"
        metrics = _score(model, bb, before, train, scored, outputs, evaluated_on=evaluated_on)
    return Run(model, history, metrics, seconds, outputs)


def _score(model: TransferModel, bb, before, train: TaskData, scored: TaskData, outputs: np.ndarray, *,
           evaluated_on: str) -> dict:
    """The task's metrics of ``outputs`` on ``scored``, with fairness and source agreement where they apply."""
    from transferkit.strategies.regularizers import source_agreement, source_predictions

    metrics = compute_metrics(train.task, scored.targets, outputs, train.label_names)
    metrics.update(train.task_spec.model_metrics(model, scored))
    metrics["evaluated_on"] = evaluated_on
    fairness = fairness_metrics(scored, outputs, train.label_names)
    if fairness is not None:
        metrics["fairness"] = fairness
    if before is not None and model.backbone is bb:
        metrics["source_agreement"] = source_agreement(before, source_predictions(model.backbone, scored))
    return metrics


def fairness_metrics(data: TaskData, outputs: np.ndarray, label_names) -> dict | None:
    """Group metrics of ``outputs`` on ``data`` when it carries a sensitive attribute (single-label tasks).

    Example:
        >>> from transferkit.api import fairness_metrics
        >>> m = fairness_metrics(test, outputs, label_names)     # doctest: +SKIP
        >>> m["worst_group"], m["accuracy_gap"]                  # doctest: +SKIP
    """
    if data.sensitive is None or not get_task(data.task).single_label:
        return None
    from transferkit.evaluation.fairness import group_metrics

    return group_metrics(data.targets, outputs, data.sensitive, label_names=label_names,
                         sensitive_name=data.sensitive_name)


def check_fairness_data(sensitive_column: str, train: TaskData, scored: TaskData | None) -> None:
    """Before any training: a classification task, and at least two groups where they are used and measured."""
    from transferkit.evaluation.fairness import check_sensitive

    if not get_task(train.task).single_label:
        raise ConfigError(f"sensitive_column={sensitive_column!r}: group fairness metrics are for classification; "
                          f"'{train.name}' is {train.task}.")
    for split in (train, scored):
        if split is not None and (split is train or split.sensitive is not None):
            check_sensitive(split.sensitive, len(split), split.sensitive_name or sensitive_column, where=split.name)


def check_stream_options(train: StreamData, opts: FitOptions, auto: bool, check_transfer: bool) -> None:
    """Refuse, before any training, what reads the training data whole and so cannot take a stream."""
    wholesale = {"strategy 'auto' (its search cross-validates on the training labels)": auto,
                 "check_transfer (the scratch baselines train in memory)": check_transfer,
                 "lr='auto' (the finder's range test)": opts.lr_auto,
                 "pre-training (--pretrain)": opts.pretraining.active,
                 "domain adaptation (target_data)": (opts.domain.target_data is not None
                                                     or opts.domain.target_labelled_data is not None)}
    named = [k for k, on in wholesale.items() if on]
    if named:
        raise ConfigError(f"'{train.name}' is streamed, and {'; '.join(named)} need{'s' if len(named) == 1 else ''} "
                          f"the training data whole. Drop {'it' if len(named) == 1 else 'them'}, or read the data "
                          f"whole (without --stream).")


def check_fit_options(train: TaskData, scored: TaskData | None, sensitive_column: str | None,
                       check_transfer: bool) -> None:
    """Refuse, before any training, fairness metrics without groups and a transfer check it cannot judge."""
    task = get_task(train.task)
    if sensitive_column is not None or (train.sensitive is not None and task.single_label):
        check_fairness_data(sensitive_column or train.sensitive_name or "sensitive", train, scored)
    if check_transfer and task.has_labels and not task.single_label and task.target_kind != "per-token":
        raise ConfigError(f"check_transfer supports classification, regression and token classification; for "
                          f"{train.task} data run transferkit compare, which judges transfer over seeds.")


def scored_split(val, test) -> TaskData | None:
    """The labelled split metrics are computed on: test, else validation."""
    for split in (test, val):
        if split is not None and split.targets is not None and len(split):
            return split
    return None


def is_main_process() -> bool:
    return distributed_state().is_main_process


def wait_for_everyone() -> None:
    distributed_state().wait_for_everyone()
