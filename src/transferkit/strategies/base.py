"""The Strategy contract (after PEFT's tuner registry and timm's training task).

A strategy is an object registered by name with a config dataclass that
validates itself. Everything that differs between methods lives in it; the
generic loop (``transferkit.training``) only calls these methods:

* ``prepare(backbone, data) -> TransferModel``: heads, adapters, frozen parts;
* ``param_groups(model, train_config) -> list[dict]``: what trains, at which lr;
* ``train_dataset(model, data)``: what a batch holds (raw items, cached features);
* ``step(model, batch) -> dict``: at least ``{"loss": ...}``; extra named terms;
* hooks ``on_epoch_start`` (unfreezing schedules, ramps) and ``on_train_end``.

A strategy that does not train with the loop (a closed-form linear probe, a
TF-IDF baseline) overrides :meth:`Strategy.fit`. The loop is passed in, so this
layer never imports it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.registry import Registry

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy")


@dataclass
class StrategyConfig:
    """Base of every strategy config; fields carry ``metadata={"help": ...}``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range values. Subclasses extend it."""

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

    ``forward(batch)`` maps a preprocessed batch to logits (classification,
    multi-label) or predictions ``[B, 1]`` (regression).
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

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.backbone.forward_features(batch))

    def outputs_to_numpy(self, logits: torch.Tensor) -> np.ndarray:
        """Probabilities for classification / multi-label, values for regression."""
        logits = logits.float()
        if self.task == "classification":
            return logits.softmax(-1).cpu().numpy()
        if self.task == "multilabel":
            return logits.sigmoid().cpu().numpy()
        return logits.squeeze(-1).cpu().numpy()


class L2Normalize(nn.Module):
    """Scale each feature vector to unit length: what turns the linear head into a cosine classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


def linear_head(in_features: int, out_features: int, dropout: float = 0.0, normalize: bool = False) -> nn.Module:
    """The head every bundle stores: optional dropout, optional L2 normalisation, then one linear layer.

    ``normalize=True`` makes logits ``W @ (x / |x|) + b``: with unit-length rows of ``W``
    (prototypes, label-description embeddings) scaled by a temperature, a cosine classifier.
    """
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    if normalize:
        layers.append(L2Normalize())
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def is_normalized_head(head: nn.Module) -> bool:
    """Whether ``head`` (a :func:`linear_head`) normalises its input."""
    return any(isinstance(m, L2Normalize) for m in head)


def task_loss(outputs: torch.Tensor, targets: torch.Tensor, task: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy, binary cross-entropy per label, or MSE, by task."""
    if task == "classification":
        return F.cross_entropy(outputs, targets.long(), label_smoothing=label_smoothing)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(outputs, targets.float())
    return F.mse_loss(outputs.squeeze(-1), targets.float())


class ItemDataset(torch.utils.data.Dataset):
    """Indexes raw items and targets; batches are preprocessed in :meth:`collate`.

    Image items are preprocessed once up front (small data sets are the point
    of transfer learning, and resizing every epoch would dominate a CPU run).
    """

    def __init__(self, data: TaskData, preprocess, precompute: bool = True):
        self.data = data
        self.preprocess = preprocess
        self.tensor = None
        if precompute and data.modality in ("image", "tabular"):
            chunks = [preprocess(self._items(range(i, min(i + 256, len(data))))) for i in range(0, len(data), 256)]
            self.tensor = torch.cat(chunks) if chunks else None

    def _items(self, idx) -> list:
        items = self.data.items
        return [items[i] for i in idx]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        inputs = self.tensor[indices] if self.tensor is not None else self.preprocess(self._items(indices))
        batch = {"inputs": inputs, "task": self.data.task}
        if self.data.targets is not None:
            batch["targets"] = torch.as_tensor(np.asarray(self.data.targets)[indices])
        return batch


@torch.no_grad()
def predict_outputs(model: TransferModel, data: TaskData, batch_size: int = 64,
                    dataset: ItemDataset | None = None) -> np.ndarray:
    """Probabilities (or regression values) of ``model`` on every item of ``data``, in order."""
    model.eval()
    ds = dataset or ItemDataset(data, model.backbone.preprocess, precompute=False)
    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(ds), batch_size):
        batch = ds.collate(list(range(i, min(i + batch_size, len(ds)))))
        outs.append(model.outputs_to_numpy(model(_to_device(batch["inputs"], device))))
    return np.concatenate(outs) if outs else np.zeros((0, max(1, len(model.label_names or []))))


def _to_device(inputs, device):
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


@dataclass
class TrainDefaults:
    """Per-strategy defaults for the loop, used where the user gave no value."""

    epochs: int = 10
    lr: float = 1e-4
    head_lr: float = 1e-3


class Strategy:
    """Base class; subclasses set ``name``, ``Config`` and override what differs.

    Attributes:
        kind: ``"transfer"`` or ``"scratch"`` (a baseline trained without transfer).
        modalities: the data modalities the strategy supports.
        defaults: loop defaults (epochs, body lr, head lr).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    kind: ClassVar[str] = "transfer"
    modalities: ClassVar[tuple[str, ...]] = ("image", "text", "tabular")
    defaults: ClassVar[TrainDefaults] = TrainDefaults()

    def __init__(self, config: StrategyConfig | dict | None = None, **options: Any):
        if isinstance(config, StrategyConfig):
            if options:
                config = dataclasses.replace(config, **options)
        else:
            config = self.Config.from_dict({**(config or {}), **options})
        self.config = config

    # -- what the loop calls ------------------------------------------------
    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        """Refuse a modality the strategy or backbone cannot handle, naming both."""
        if data.modality not in self.modalities:
            raise ConfigError(f"Strategy '{self.name}' supports {', '.join(self.modalities)} data; "
                              f"'{data.name}' is {data.modality}.")
        if backbone is not None and backbone.modality != data.modality:
            raise ConfigError(f"Backbone '{backbone.spec}' takes {backbone.modality} input but data "
                              f"'{data.name}' is {data.modality}.")

    def needs_backbone(self, data: TaskData) -> bool:
        """Whether :meth:`fit` uses the user's backbone (baselines that bring their own model don't)."""
        return True

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        """Build the model to train: by default the backbone with a new linear head."""
        head = linear_head(backbone.num_features, max(data.num_outputs, 1), getattr(self.config, "dropout", 0.0))
        return TransferModel(backbone, head, data.task, data.label_names)

    def train_dataset(self, model: TransferModel, data: TaskData) -> ItemDataset:
        return ItemDataset(data, model.backbone.preprocess)

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        """Everything trainable: the backbone at ``lr``, the head at ``head_lr``."""
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        head = [p for p in model.head.parameters() if p.requires_grad]
        return [g for g in ({"params": body, "lr": lr, "name": "backbone"},
                            {"params": head, "lr": head_lr, "name": "head"}) if g["params"]]

    def augment(self, inputs):
        """Training-time augmentation of a preprocessed batch. Default: none."""
        return inputs

    def step(self, model: nn.Module, batch: dict) -> dict:
        task = batch["task"]
        outputs = model(batch["inputs"])
        loss = task_loss(outputs, batch["targets"], task, getattr(self.config, "label_smoothing", 0.0))
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
        model, history = trainer.fit(self, model, train, val)
        self.on_train_end(model, train)
        return model, history


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    STRATEGIES.register(cls.name, cls)
    return cls


def make_strategy(name: str, options: dict | None = None) -> Strategy:
    """Build the registered strategy ``name`` with validated ``options``."""
    return STRATEGIES.get(name)(options or {})


def frozen_batchnorm_to_eval(module: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode.

    A frozen layer should be frozen: in train mode its running statistics would
    still drift toward the target batches and change the features under it.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()

