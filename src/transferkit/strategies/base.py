"""The Strategy contract (after PEFT's tuner registry and timm's training task).

A strategy is an object registered by name with a config dataclass that
validates itself. Everything that differs between methods lives in it; the
generic loop (``transferkit.training``) only calls these methods:

* ``prepare(backbone, data) -> TransferModel``: heads (built by the data's task from the
  backbone's :class:`~transferkit.backbones.base.FeatureSpec`), adapters, frozen parts;
* ``param_groups(model, lr, head_lr) -> list[dict]``: what trains, at which lr;
* ``train_dataset(model, data)``: what a batch holds (raw items, cached features);
* ``step(model, batch, ctx) -> dict``: at least ``{"loss": ...}``; extra named terms;
  ``ctx`` (:class:`StepContext`) carries the global step, total steps, epoch,
  accumulation and world size, so per-run schedules need no state on the strategy;
* hooks ``on_epoch_start`` (unfreezing schedules, ramps) and ``on_train_end``.

What a strategy supports is declared as tags (class attributes: ``tasks``,
``modalities``, ``needs_target``, ``needs_sensitive``, ``min_backbones``, listed by
:meth:`Strategy.tags`); :meth:`Strategy.check_data` refuses the rest with one message,
and the conformance tests read the same tags. What depends on the task (loss,
postprocessing, metrics) is asked of :mod:`transferkit.tasks`, never branched on here.

A strategy that does not train with the loop (a closed-form linear probe, a
TF-IDF baseline) overrides :meth:`Strategy.fit`. The loop is passed in, so this
layer never imports it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import check_field_types, declared_constraints, validate_declared
from transferkit.data.adapters_labels import check_two_classes
from transferkit.data.batches import module_device, run_batches
from transferkit.data.dataset import TaskData
from transferkit.data.memory import fits_in_memory_share
from transferkit.data.streaming import StreamData, is_stream
from transferkit.errors import ConfigError
from transferkit.registry import Registry
from transferkit.tasks import Task, get_task
from transferkit.tasks.heads import L2Normalize, is_normalized_head, linear_head  # noqa: F401  (re-exported)

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy")


@dataclass
class StrategyConfig:
    """Base of every strategy config; fields carry ``metadata={"help": ...}``.

    Every value is first checked against its field's annotation
    (:func:`~transferkit.constraints.check_field_types`: ``-o train_last=abc`` is
    refused by name; ``"1e-3"`` for a float field becomes a float). Subclasses
    declare the valid values of their fields in ``_parameter_constraints``
    (:mod:`transferkit.constraints`; merged with their bases' declarations), checked
    before :meth:`validate`. Assign it without an annotation (or as a ``ClassVar``):
    an annotated dict would become a dataclass field.
    """

    _parameter_constraints: ClassVar[dict] = {}

    def __post_init__(self) -> None:
        # each value must have its field's type (a number written as text becomes one); declared ranges next
        check_field_types(self, skip=declared_constraints(type(self)))
        validate_declared(self)
        self.validate()

    def validate(self) -> None:
        """Checks that relate several fields or need logic; plain ranges are declared. Subclasses extend it."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "StrategyConfig":
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"Unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}. "
                              f"Valid options: {', '.join(sorted(names)) or 'none'}.")
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) per field, for ``transferkit list strategies``."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out.append((f.name, default, f.metadata.get("help", "")))
        return out


class TransferModel(nn.Module):
    """What every strategy trains and every bundle stores: a backbone and a head.

    ``forward(batch)`` maps a preprocessed batch to the head's raw outputs: the
    backbone's features of the kind the task reads (pooled ``[B, D]`` or a
    sequence ``[B, T, D]``, see :attr:`transferkit.tasks.Task.feature_kind`), then
    the head. What the outputs mean (logits, values, per-token logits) is the task's
    business: :meth:`outputs_to_numpy` asks it.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, task: str, label_names: Sequence[str] | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.task = task
        self.label_names = list(label_names) if label_names is not None else None
        #: set by parameter-efficient strategies: what was attached (strategy, options, the adapter's
        #: state-dict keys, the base weights' digest); bundles store and replay it.
        self.adapter: dict | None = None
        #: decoding settings of generative tasks (``max_new_tokens``, ``temperature``, ``stop``); bundles keep them.
        self.generation: dict | None = None

    @property
    def task_spec(self) -> Task:
        return get_task(self.task)

    def forward(self, batch) -> torch.Tensor:
        # a head may read other features than its task's: a pre-trained detector's detections (source-detector)
        kind = getattr(self.head, "feature_kind", None) or self.task_spec.feature_kind
        return self.head(self.backbone.features(batch, kind))

    def outputs_to_numpy(self, outputs: torch.Tensor, inputs=None) -> np.ndarray:
        """Per-item probabilities (classification, multi-label) or values (regression): the task's postprocessing."""
        return self.task_spec.postprocess(outputs, inputs)


def task_loss(outputs: torch.Tensor, targets: torch.Tensor, task: str, label_smoothing: float = 0.0,
              class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of ``task`` (cross-entropy, binary cross-entropy per label, MSE, ...); ``class_weight`` (single-label
    classification only: strategies refuse it for other tasks) weights each class's share of the loss."""
    if class_weight is not None:
        return get_task(task).loss(outputs, targets, label_smoothing=label_smoothing, class_weight=class_weight)
    return get_task(task).loss(outputs, targets, label_smoothing=label_smoothing)


#: The share of the available memory a training set's preprocessed images may take to be held whole.
PRECOMPUTE_SHARE = 0.25


def collate_batch(data: TaskData | StreamData, preprocess, items: list | None, targets: np.ndarray,
                  augment: bool, inputs=None, target_options: dict | None = None) -> dict:
    """A training batch of labelled items: the inputs the task trains on (``inputs`` when preprocessed
    already; else ``items`` preprocessed with their targets where the task reads them), the collated
    targets (with the strategy's ``target_options``), and the task's augmentation when ``augment``."""
    task = data.task_spec
    if inputs is None:
        inputs = preprocess(task.training_items(items, targets))
    collated = task.collate_targets(targets, inputs, **(target_options or {}))
    if augment:
        inputs, collated = task.augment(inputs, collated)
    return {"inputs": inputs, "task": data.task, "targets": collated}


class ItemDataset(torch.utils.data.Dataset):
    """Indexes raw items and targets; batches are preprocessed in :meth:`collate`.

    Image items are preprocessed once up front when the tensor takes under a quarter of the available
    memory (small data sets are the point of transfer learning, and resizing every epoch would dominate a
    CPU run); a larger image set (files of an image folder) is decoded a batch at a time instead, so
    training never holds it whole.
    With ``augment=True`` (a training set), :meth:`collate` passes each batch through the task's
    :meth:`~transferkit.tasks.Task.augment` (boxes and masks follow a flip).
    """

    def __init__(self, data: TaskData, preprocess, precompute: bool = True, augment: bool = False):
        self.data = data
        self.preprocess = preprocess
        self.augment = augment
        self.tensor, self.target_options = None, {}
        if precompute and data.modality in ("image", "tabular") and self._fits(data, preprocess):
            chunks = [preprocess(self._items(range(i, min(i + 256, len(data))))) for i in range(0, len(data), 256)]
            self.tensor = torch.cat(chunks) if chunks else None

    @staticmethod
    def _fits(data: TaskData, preprocess) -> bool:
        size = getattr(preprocess, "size", None)
        if data.modality != "image" or not isinstance(size, int):
            return True
        return fits_in_memory_share(len(data) * 3 * size * size * 4, PRECOMPUTE_SHARE)

    def _items(self, idx) -> list:
        items = self.data.items
        return [items[i] for i in idx]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> int:
        return i

    def inputs(self, indices: list[int]):
        """The preprocessed inputs of ``indices``."""
        return self.tensor[indices] if self.tensor is not None else self.preprocess(self._items(indices))

    def collate(self, indices: list[int]) -> dict:
        """A training batch: the inputs the task trains on (with their targets where it reads them) and targets."""
        if self.data.targets is None:
            return {"inputs": self.inputs(indices), "task": self.data.task}
        targets = np.asarray(self.data.targets)[indices]
        inputs = self.inputs(indices) if self.tensor is not None else None  # precomputed: reads no targets
        items = self._items(indices) if inputs is None else None
        return collate_batch(self.data, self.preprocess, items, targets, self.augment, inputs, self.target_options)


class StreamDataset:
    """The training batches of a :class:`~transferkit.data.streaming.StreamData`, read, decoded and
    preprocessed a batch at a time (the streaming counterpart of :class:`ItemDataset`).

    The loop gives it its batch size and seed (:meth:`batched`); then :meth:`epoch` yields one epoch's collated
    batches (the same dicts as :meth:`ItemDataset.collate`) and ``len()`` is the number of batches an epoch has.
    """

    def __init__(self, data: StreamData, preprocess, augment: bool = False):
        self.data = data
        self.preprocess = preprocess
        self.augment = augment
        self.batch_size, self.seed, self.target_options = None, None, {}  # set by batched()

    def batched(self, batch_size: int, seed: int) -> StreamDataset:
        """Read in batches of ``batch_size``, each epoch's order drawn from ``seed`` and the epoch."""
        self.batch_size, self.seed = batch_size, seed
        return self

    def __len__(self) -> int:
        assert self.batch_size is not None, "StreamDataset.batched() sets the batch size first"
        return self.data.batches_per_epoch(self.batch_size)

    def epoch(self, epoch: int, skip: int = 0):
        """The collated batches of ``epoch`` (its order drawn from the seed and the epoch), after ``skip``."""
        assert self.batch_size is not None, "StreamDataset.batched() sets the batch size and seed first"
        for items, targets in self.data.batches(self.batch_size, seed=self.seed, epoch=epoch, skip=skip):
            yield collate_batch(self.data, self.preprocess, items, targets, self.augment,
                                target_options=self.target_options)


def predict_outputs(model: TransferModel, data: TaskData, batch_size: int = 64,
                    dataset: ItemDataset | None = None) -> np.ndarray:
    """The task's postprocessed outputs of ``model`` on every item of ``data``, in order.

    Probabilities ``[N, C]`` for classification and multi-label, values ``[N]`` for
    regression; what another task's :meth:`~transferkit.tasks.Task.postprocess` returns.
    """
    model.eval()
    ds = dataset or ItemDataset(data, model.backbone.preprocess, precompute=False)
    task = model.task_spec
    infer = functools.partial(task.infer, model)
    parts = [model.outputs_to_numpy(out, inputs) for _, inputs, out in run_batches(
        infer, ds.inputs, len(ds), batch_size=batch_size, device=module_device(model))]
    return task.concat(parts, len(model.label_names or []))


@dataclass
class StepContext:
    """What the loop tells a strategy's :meth:`Strategy.step` about where training is.

    Counts are optimizer steps, so they already account for gradient accumulation
    and for the number of processes (each process sees its shard of every step).

    Attributes:
        global_step: optimizer steps done before this batch.
        total_steps: optimizer steps of the whole run.
        epoch: the current epoch (from 0); ``epochs``: how many there are.
        accumulation: batches per optimizer step.
        world_size: processes training together.
    """

    global_step: int = 0
    total_steps: int = 1
    epoch: int = 0
    epochs: int = 1
    accumulation: int = 1
    world_size: int = 1

    @property
    def progress(self) -> float:
        """Training progress p in [0, 1] (what ramps such as DANN's are scheduled on)."""
        return min(1.0, self.global_step / max(self.total_steps, 1))


@dataclass
class TrainDefaults:
    """Per-strategy defaults for the loop, used where the user gave no value."""

    epochs: int = 10
    lr: float = 1e-4
    head_lr: float = 1e-3


class Strategy:
    """Base class; subclasses set ``name``, ``Config`` and override what differs.

    Capabilities are declared as tags (class attributes, listed by :meth:`tags`), never probed:

    Attributes:
        kind: ``"transfer"`` or ``"scratch"`` (a baseline trained without transfer).
        modalities: the data modalities the strategy supports.
        tasks: the task names it supports; ``None`` for any task whose features the backbone gives.
        needs_target: it adapts to an unlabelled target domain (``set_target`` before ``fit``).
        needs_sensitive: it needs the sensitive attribute of every training item.
        min_backbones: how many source models it combines (a ``concat:`` backbone).
        changes_backbone: it trains the user's pre-trained weights.
        resumable: an interrupted run can resume from the loop's checkpoint: all its per-run state is on
            the model or in the loop (a strategy that keeps state of its own across epochs sets ``False``).
        streams: it trains from a stream (:class:`~transferkit.data.streaming.StreamData`): it learns by
            gradient steps in the generic loop and reads the training data only through
            :meth:`train_dataset` (what it needs before training, from the counts or the first items), or,
            like the linear probe, reads the stream's features a batch at a time through the feature cache.
            Strategies that need the whole training set in memory (episodes, CRFs, stacking's folds, target
            domains) keep ``False`` and refuse a stream by this tag.
        learns_from_labels: it learns from the training labels, so single-class training data is refused.
        generative: it trains through the source model's own output layer (a task on ``logits`` features:
            ``text-generation``); strategies that fit a new head on features refuse such tasks.
        dense: it trains a head on the backbone's feature pyramid end to end through the model's forward
            (``detection``, ``segmentation``); strategies that pool features, cache them or mix labels refuse
            such tasks.
        defaults: loop defaults (epochs, body lr, head lr).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    kind: ClassVar[str] = "transfer"
    modalities: ClassVar[tuple[str, ...]] = ("image", "text", "tabular", "audio")
    tasks: ClassVar[tuple[str, ...] | None] = None
    needs_target: ClassVar[bool] = False
    needs_sensitive: ClassVar[bool] = False
    min_backbones: ClassVar[int] = 1
    changes_backbone: ClassVar[bool] = False
    resumable: ClassVar[bool] = True
    streams: ClassVar[bool] = False
    #: whether it learns from the training labels (zero-shot reads only the label names: one class is fine there)
    learns_from_labels: ClassVar[bool] = True
    generative: ClassVar[bool] = False
    dense: ClassVar[bool] = False
    defaults: ClassVar[TrainDefaults] = TrainDefaults()

    @classmethod
    def tags(cls) -> dict:
        """The declared capabilities, for listings and the conformance tests."""
        return {"kind": cls.kind, "modalities": list(cls.modalities),
                "tasks": None if cls.tasks is None else list(cls.tasks), "needs_target": cls.needs_target,
                "needs_sensitive": cls.needs_sensitive, "min_backbones": cls.min_backbones,
                "generative": cls.generative, "dense": cls.dense, "streams": cls.streams}

    @classmethod
    def describe_options(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, help)`` of the options that apply to this strategy (``transferkit list strategies``)."""
        return cls.Config.describe()

    def __init__(self, config: StrategyConfig | dict | None = None, **options: Any):
        if isinstance(config, StrategyConfig):
            if options:
                config = dataclasses.replace(config, **options)
        else:
            config = self.Config.from_dict({**(config or {}), **options})
        self.config = config

    # -- what the loop calls ------------------------------------------------
    def check_data(self, backbone: Backbone | None, data: TaskData | StreamData) -> None:
        """Refuse a task or modality the strategy or backbone cannot handle, naming both; a stream for a
        strategy that does not stream, naming those that do."""
        if is_stream(data) and not self.streams:
            streaming = ", ".join(n for n in STRATEGIES.names() if STRATEGIES.get(n).streams)
            raise ConfigError(f"Strategy '{self.name}' needs its training data in memory, so it does not train on "
                              f"a stream ('{data.name}'). Strategies that stream: {streaming}; or read the data "
                              f"whole (without --stream).")
        dense_task = data.task_spec.feature_kind == "pyramid"
        if self.tasks is not None and data.task not in self.tasks:
            raise ConfigError(f"Strategy '{self.name}' supports {', '.join(self.tasks)} tasks; "
                              f"'{data.name}' is {data.task}." + (_dense_choices(data.task) if dense_task else ""))
        if dense_task and not self.dense:
            raise ConfigError(f"Strategy '{self.name}' does not train a head on a feature pyramid; '{data.name}' is "
                              f"{data.task}." + _dense_choices(data.task))
        if data.task_spec.feature_kind == "logits" and not self.generative and (
                self.tasks is None or data.task not in self.tasks):
            choices = ", ".join(n for n in STRATEGIES.names() if (getattr(STRATEGIES.get(n), "generative", False)
                                                                   and STRATEGIES.get(n).tasks is None)
                                or data.task in (STRATEGIES.get(n).tasks or ()))
            raise ConfigError(f"Strategy '{self.name}' fits a new head on features; {data.task} trains the source "
                              f"model's own output layer. Strategies for {data.task}: {choices}.")
        if data.modality not in self.modalities:
            raise ConfigError(f"Strategy '{self.name}' supports {', '.join(self.modalities)} data; "
                              f"'{data.name}' is {data.modality}.")
        if backbone is not None and backbone.modality != data.modality:
            raise ConfigError(f"Backbone '{backbone.spec}' takes {backbone.modality} input but data "
                              f"'{data.name}' is {data.modality}.")
        if backbone is not None:
            backbone.check_feature_kind(data.task_spec.feature_kind)
        if self.learns_from_labels and not is_stream(data):  # a stream's label pass checked its classes
            check_two_classes(data)  # one class: a model that learnt nothing would score 1.0

    def needs_backbone(self, data: TaskData) -> bool:
        """Whether :meth:`fit` uses the user's backbone (baselines that bring their own model don't)."""
        return True

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        """Build the model to train: by default the backbone with a new head, the task's (:meth:`head_options`)."""
        task = data.task_spec
        head = task.make_head(backbone.feature_spec(task.feature_kind), max(data.num_outputs, 1),
                              dropout=getattr(self.config, "dropout", 0.0), **self.head_options(data))
        return TransferModel(backbone, head, data.task, data.label_names)

    def chosen_head(self) -> str | None:
        """The head chosen among the task's :attr:`~transferkit.tasks.Task.heads` (a detector), or ``None``."""
        return None

    def head_options(self, data: TaskData) -> dict:
        """Keywords of the task's ``make_head`` beyond the feature spec: ``{"head": name}`` for a chosen head."""
        return {}

    def train_dataset(self, model: TransferModel, data: TaskData | StreamData) -> ItemDataset | StreamDataset:
        """The training batches (in-memory items or a stream's), targets collated with :meth:`target_options`."""
        dataset = (StreamDataset if is_stream(data) else ItemDataset)(data, model.backbone.preprocess, augment=True)
        dataset.target_options = self.target_options(data)
        return dataset

    def target_options(self, data: TaskData | StreamData) -> dict:
        """Keywords of the task's ``collate_targets`` for training batches (none by default)."""
        return {}

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        """Everything trainable: the backbone at ``lr``, the head at ``head_lr``."""
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        head = [p for p in model.head.parameters() if p.requires_grad]
        return [g for g in ({"params": body, "lr": lr, "name": "backbone"},
                            {"params": head, "lr": head_lr, "name": "head"}) if g["params"]]

    def augment(self, inputs):
        """Training-time augmentation of a preprocessed batch. Default: none."""
        return inputs

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        """One training step's losses: at least ``{"loss": ...}``; ``ctx`` says where training is."""
        task = batch["task"]
        outputs = model(batch["inputs"])
        loss = task_loss(outputs, batch["targets"], task, getattr(self.config, "label_smoothing", 0.0),
                         getattr(self, "class_weight_", None))
        return {"loss": loss}

    def on_epoch_start(self, model: TransferModel, epoch: int, epochs: int) -> None:
        """Called after ``model.train()`` at the start of every epoch."""

    def predict(self, model: TransferModel, data: TaskData) -> np.ndarray:
        """Outputs of a trained ``model`` on ``data`` (a strategy may read cached features)."""
        return predict_outputs(model, data)

    def on_train_end(self, model: TransferModel, data: TaskData) -> None:
        """Called once after training (and after the best checkpoint is restored)."""

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        """Prepare the model and run the generic loop. Returns the model and its history."""
        self.check_data(backbone, train)
        seed = getattr(getattr(trainer, "config", None), "seed", None)
        if seed is not None:  # new heads and adapters initialise the same way for the same seed
            torch.manual_seed(seed)
        model = self.prepare(backbone, train)
        train.task_spec.configure_model(model, train)
        model, history = trainer.fit(self, model, train, val)
        self.on_train_end(model, train)
        return model, history


def _dense_choices(task: str) -> str:
    """The strategies that train ``task`` (a task on a feature pyramid), for refusal messages."""
    names = [n for n in STRATEGIES.names() if getattr(STRATEGIES.get(n), "dense", False)
             and (STRATEGIES.get(n).tasks is None or task in STRATEGIES.get(n).tasks)]
    return f" Strategies for {task}: {', '.join(names)} (finetune -o train_last=0 trains the head alone)."


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    STRATEGIES.register(cls.name, cls)
    return cls


def make_strategy(name: str, options: dict | None = None) -> Strategy:
    """Build the registered strategy ``name`` with validated ``options``."""
    return STRATEGIES.get(name)(options or {})


def frozen_batchnorm_to_eval(module: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode.

    A frozen layer should be frozen: in train mode its running statistics would still drift toward the
    target batches and change the features under it."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()

