"""Few-shot strategies: ``protonet`` (prototypical networks) and ``maml`` (MAML, first-order MAML, ANIL).

* ``protonet`` (Snell et al. 2017, https://arxiv.org/abs/1703.05175): each
  class is the mean of its training features (its prototype); an item goes to
  the nearest prototype. By default the backbone stays frozen and nothing is
  trained: prototypes come from the cached features. ``episodic=True`` first
  fine-tunes the backbone on N-way K-shot episodes of the training data
  (query cross-entropy against the episode's own prototypes), then recomputes
  the prototypes from all the training data. The bundle head is a plain
  :func:`linear_head`: the squared Euclidean distance folds exactly into a
  linear layer (``-|x - c|^2 = 2c.x - |c|^2 - |x|^2``, and ``|x|^2`` is the
  same for every class, so ``W = 2c``, ``b = -|c|^2`` give the same softmax);
  cosine is ``linear_head(normalize=True)`` with ``W = scale * c / |c|``.
* ``maml`` (Finn et al. 2017, https://arxiv.org/abs/1703.03400): meta-trains
  the backbone so that a few gradient steps on an episode's support set fit
  its query set. Second-order by default (the inner steps are differentiated
  through, with ``torch.func.functional_call`` and ``create_graph=True``);
  ``first_order=True`` drops the second derivatives (FOMAML); ``anil=True``
  adapts only the head in the inner loop (ANIL, Raghu et al. 2020,
  https://arxiv.org/abs/1909.09157). The head starts every episode at zero
  (the "zeroing trick", Kao et al. 2022, https://arxiv.org/abs/2106.15367):
  episode-local labels are arbitrary, so a learned head initialisation would
  only learn a label-permutation bias. A consequence: the first inner step
  moves only the head (the backbone's gradient is zero through a zero head),
  so full MAML differs from ANIL from the second step on. After meta-training the head (and the
  backbone unless ``anil``) is adapted to the whole training set by
  ``adapt_steps`` full-batch gradient steps at ``inner_lr``.

Episodic training runs its own small loop rather than the generic
:class:`~transferkit.training.Trainer`: the loop batches items by index, while
an episode is a structured draw (N classes x K+Q items with episode-local
labels) and MAML's inner loop needs functional parameters. The loop takes
the trainer's seed, learning rate, epochs, weight decay and gradient clipping.
BatchNorm keeps its pre-trained statistics throughout (the model is in eval
mode): episodes are small and class-balanced, not i.i.d. batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval, Options
from transferkit.data.batches import to_device
from transferkit.data.dataset import TaskData
from transferkit.data.episodes import episode_sampler, smallest_class
from transferkit.errors import ConfigError
from transferkit.evaluation.few_shot import DISTANCES, prototypes
from transferkit.strategies.base import (ItemDataset, Strategy, StrategyConfig, TrainDefaults, TransferModel,
                                         linear_head, register_strategy)


@dataclass
class EpisodeConfig(StrategyConfig):
    """The shape of training episodes, shared by ``protonet`` (episodic) and ``maml``."""

    n_way: int | None = field(default=None, metadata={"help": "classes per training episode (None: min(5, classes))"})
    k_shot: int = field(default=5, metadata={"help": "support items per class in a training episode"})
    n_query: int | None = field(default=None, metadata={
        "help": "query items per class in a training episode (None: min(5, smallest class - k_shot))"})
    episodes_per_epoch: int | None = field(default=None, metadata={
        "help": "training episodes per epoch, x the loop's epochs (None: about one pass over the training data)"})
    batch_size: int = field(default=64, metadata={"help": "feature-extraction batch size"})

    _parameter_constraints = {
        "n_way": [Interval("int", 2, None), NONE],
        "k_shot": [Interval("int", 1, None)],
        "n_query": [Interval("int", 1, None), NONE],
        "episodes_per_epoch": [Interval("int", 1, None), NONE],
        "batch_size": [Interval("int", 1, None)],
    }


@dataclass
class ProtoNetConfig(EpisodeConfig):
    distance: str = field(default="cosine", metadata={"help": f"one of {', '.join(DISTANCES)}"})
    scale: float = field(default=10.0, metadata={"help": "cosine only: logits are scale * cos(x, prototype)"})
    episodic: bool = field(default=False, metadata={
        "help": "fine-tune the backbone on training episodes first (false: frozen, nothing trained)"})

    _parameter_constraints = {
        "distance": [Options(*DISTANCES)],
        "scale": [Interval("number", 0, None, closed="neither")],
    }


@dataclass
class MAMLConfig(EpisodeConfig):
    first_order: bool = field(default=False, metadata={"help": "drop second derivatives (FOMAML)"})
    anil: bool = field(default=False, metadata={"help": "adapt only the head in the inner loop and at the end (ANIL)"})
    inner_steps: int = field(default=2, metadata={
        "help": "gradient steps on the support set per episode (from a zero head, step 1 moves only the head)"})
    inner_lr: float = field(default=0.01, metadata={"help": "learning rate of the inner (adaptation) steps"})
    meta_batch: int = field(default=2, metadata={"help": "episodes averaged per meta-update"})
    adapt_steps: int = field(default=10, metadata={"help": "full-batch steps adapting to the whole training set"})

    _parameter_constraints = {
        "inner_steps": [Interval("int", 1, None)],
        "inner_lr": [Interval("number", 0, None, closed="neither")],
        "meta_batch": [Interval("int", 1, None)],
        "adapt_steps": [Interval("int", 1, None)],
    }


# ---------------------------------------------------------------- prototypes


def prototype_logits(x: torch.Tensor, protos: torch.Tensor, distance: str, scale: float = 1.0) -> torch.Tensor:
    """``-|x - c|^2`` (euclidean) or ``scale * cos(x, c)`` (cosine), ``[B, C]``; differentiable."""
    if distance == "euclidean":
        return -torch.cdist(x, protos).pow(2)
    return scale * F.normalize(x, dim=-1) @ F.normalize(protos, dim=-1).T


def prototype_head(protos: np.ndarray | torch.Tensor, distance: str, scale: float = 10.0) -> nn.Sequential:
    """A :func:`linear_head` whose logits rank classes as :func:`prototype_logits` does.

    Euclidean: ``W = 2c``, ``b = -|c|^2`` (the logits differ from ``-|x - c|^2``
    only by ``|x|^2``, the same for every class, so the softmax is equal).
    Cosine: ``normalize=True``, ``W = scale * c / |c|``, ``b = 0`` (exact).
    """
    c = torch.as_tensor(np.asarray(protos), dtype=torch.float32)
    head = linear_head(c.shape[1], c.shape[0], normalize=distance == "cosine")
    with torch.no_grad():
        if distance == "euclidean":
            head[-1].weight.copy_(2 * c)
            head[-1].bias.copy_(-(c ** 2).sum(1))
        else:
            head[-1].weight.copy_(scale * F.normalize(c, dim=-1))
            head[-1].bias.zero_()
    return head


# ---------------------------------------------------------------- MAML


def zero_head_params(head: nn.Module, n_out: int, device=None) -> dict[str, torch.Tensor]:
    """Zero tensors shaped like ``head``'s parameters with ``n_out`` outputs (the zeroing trick)."""
    return {n: torch.zeros((n_out, *p.shape[1:]), dtype=p.dtype, device=device or p.device, requires_grad=True)
            for n, p in head.named_parameters()}


def adapt(module: nn.Module, params: dict[str, torch.Tensor], x, y: torch.Tensor, steps: int, lr: float,
          first_order: bool = True) -> dict[str, torch.Tensor]:
    """The inner loop: ``steps`` gradient steps on ``cross_entropy(module(x), y)``, functionally.

    Args:
        module: called through :func:`torch.func.functional_call` with ``params``
            (names as in ``module.named_parameters()``; shapes may differ, e.g. an N-way head).
        params: the starting values; the result is differentiable with respect to them.
        first_order: ``False`` keeps the graph of each gradient (``create_graph=True``), so a loss
            on the result differentiates through the steps (second-order MAML).
    """
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(module, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order, retain_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    return params


def maml_episode_loss(model: TransferModel, support: tuple, query: tuple, n_way: int, *, inner_steps: int,
                      inner_lr: float, first_order: bool = False, anil: bool = False) -> tuple[torch.Tensor, float]:
    """Query loss after adapting to the support set from a zero head; and the query accuracy.

    Its gradient with respect to the backbone's parameters is the meta-gradient:
    exact MAML when ``first_order=False``, FOMAML's approximation otherwise.
    ``anil=True`` adapts only the head (on the support features).
    """
    (xs, ys), (xq, yq) = support, query
    head0 = zero_head_params(model.head, n_way, ys.device)
    if anil:
        fast = adapt(model.head, head0, model.backbone(xs), ys, inner_steps, inner_lr, first_order)
        logits = functional_call(model.head, fast, (model.backbone(xq),))
    else:
        body = {f"backbone.{n}": p for n, p in model.backbone.named_parameters() if p.requires_grad}
        start = {**body, **{f"head.{n}": v for n, v in head0.items()}}
        fast = adapt(model, start, xs, ys, inner_steps, inner_lr, first_order)
        logits = functional_call(model, fast, (xq,))
    return F.cross_entropy(logits, yq), float((logits.argmax(1) == yq).float().mean())


# ---------------------------------------------------------------- the episodic loop


def _device(trainer) -> torch.device:
    cpu = getattr(getattr(trainer, "config", None), "cpu", False)
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


class EpisodicStrategy(Strategy):
    """Shared by ``protonet`` and ``maml``: classification only; the episodic training loop."""

    tasks = ("classification",)

    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        super().check_data(backbone, data)

    def episode_shape(self, data: TaskData) -> tuple[int, int, int]:
        """``(n_way, k_shot, n_query)`` of training episodes, defaults resolved against ``data``."""
        c = self.config
        n_classes, smallest = smallest_class(data)
        n_way = c.n_way if c.n_way is not None else min(5, n_classes)
        n_query = c.n_query if c.n_query is not None else max(1, min(5, smallest - c.k_shot))
        return n_way, c.k_shot, n_query

    def episode_loss(self, model: TransferModel, support: tuple, query: tuple, n_way: int):
        raise NotImplementedError

    def meta_train(self, model: TransferModel, train: TaskData, trainer, meta_batch: int = 1) -> list[dict]:
        """Train the backbone on episodes of ``train`` (AdamW at the loop's ``lr``); one history row per epoch."""
        cfg = trainer.config
        epochs, lr, _ = trainer.resolved(self)
        n_way, k_shot, n_query = self.episode_shape(train)
        # An epoch: as many episodes as it takes to draw about as many items as the training data holds.
        per_epoch = self.config.episodes_per_epoch or math.ceil(len(train) / (n_way * (k_shot + n_query)))
        steps = math.ceil(per_epoch / meta_batch)
        sampler = iter(episode_sampler(train, n_way, k_shot, n_query, epochs * steps * meta_batch, cfg.seed))
        device = _device(trainer)
        model.to(device).eval()  # BatchNorm keeps its statistics (see the module docstring)
        params = [p for p in model.backbone.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"Strategy '{self.name}' found no trainable backbone parameter to train on episodes.")
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
        ds = ItemDataset(train, model.backbone.preprocess)

        def part(idx, labels):
            return to_device(ds.collate(idx.tolist())["inputs"], device), torch.as_tensor(labels, device=device)

        history = []
        for epoch in range(epochs):
            losses, accs = [], []
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                for _ in range(meta_batch):
                    ep = next(sampler)
                    loss, acc = self.episode_loss(model, part(ep.support, ep.support_labels),
                                                  part(ep.query, ep.query_labels), n_way)
                    (loss / meta_batch).backward()
                    losses.append(float(loss.detach()))
                    accs.append(acc)
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                            "episode_accuracy": float(np.mean(accs)), "episode_shape": f"{n_way}x{k_shot}+{n_query}"})
        model.eval()
        return history


@register_strategy
class ProtoNet(EpisodicStrategy):
    """Prototypical networks: nearest class mean of (optionally episodically fine-tuned) features."""

    name = "protonet"
    Config = ProtoNetConfig
    defaults = TrainDefaults(epochs=10, lr=1e-4, head_lr=1e-3)

    @property
    def changes_backbone(self) -> bool:
        """Episodic fine-tuning trains the pre-trained backbone (``fit`` then measures ``source_agreement``)."""
        return bool(self.config.episodic)

    def episode_loss(self, model, support, query, n_way):
        (xs, ys), (xq, yq) = support, query
        fs = model.backbone.forward_features(xs)
        protos = torch.zeros(n_way, fs.shape[1], device=fs.device, dtype=fs.dtype).index_add_(0, ys, fs)
        protos = protos / torch.bincount(ys, minlength=n_way).clamp(min=1)[:, None]
        logits = prototype_logits(model.backbone.forward_features(xq), protos, self.config.distance, self.config.scale)
        return F.cross_entropy(logits, yq), float((logits.argmax(1) == yq).float().mean())

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        from transferkit.data.cache import extract_features

        self.check_data(backbone, train)
        c = self.config
        torch.manual_seed(trainer.config.seed)
        model = TransferModel(backbone, linear_head(backbone.num_features, train.num_outputs), train.task,
                              train.label_names)
        history = self.meta_train(model, train, trainer) if c.episodic else []
        for p in backbone.parameters():
            p.requires_grad_(False)
        # Fine-tuned weights are this run's own: their features are not worth a cache file.
        X = extract_features(backbone, train, batch_size=c.batch_size, use_cache=not c.episodic)
        protos = prototypes(X, np.asarray(train.targets), train.num_outputs)
        model.head = prototype_head(protos, c.distance, c.scale).to(next(backbone.parameters()).device)
        history.append({"epoch": len(history) + 1, "prototypes": len(protos), "distance": c.distance})
        return model.eval(), history

    def predict(self, model: TransferModel, data: TaskData) -> np.ndarray:
        """Frozen backbone: the head on cached features (as ``linear-probe``); else a forward pass."""
        if self.config.episodic:
            return super().predict(model, data)
        from transferkit.data.cache import extract_features

        X = torch.from_numpy(extract_features(model.backbone, data, batch_size=self.config.batch_size))
        with torch.no_grad():
            return model.outputs_to_numpy(model.head(X.to(next(model.head.parameters()).device)))


@register_strategy
class MAML(EpisodicStrategy):
    """MAML / FOMAML / ANIL: meta-learned initialisation, adapted to the training set by gradient steps."""

    name = "maml"
    Config = MAMLConfig
    defaults = TrainDefaults(epochs=10, lr=1e-4, head_lr=1e-3)
    changes_backbone = True  # meta-training trains the pre-trained backbone

    def episode_loss(self, model, support, query, n_way):
        c = self.config
        return maml_episode_loss(model, support, query, n_way, inner_steps=c.inner_steps, inner_lr=c.inner_lr,
                                 first_order=c.first_order, anil=c.anil)

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        self.check_data(backbone, train)
        torch.manual_seed(trainer.config.seed)
        model = TransferModel(backbone, linear_head(backbone.num_features, train.num_outputs), train.task,
                              train.label_names)
        history = self.meta_train(model, train, trainer, self.config.meta_batch)
        self.adapt_to(model, train)
        history.append({"epoch": len(history) + 1, "adapt_steps": self.config.adapt_steps})
        return model.eval(), history

    def adapt_to(self, model: TransferModel, data: TaskData) -> None:
        """From a zero head, ``adapt_steps`` full-batch gradient steps at ``inner_lr`` on all of ``data``.

        ANIL adapts the head on the backbone's features; otherwise head and backbone
        adapt together (the gradient of the mean loss, accumulated over chunks).
        """
        from transferkit.data.cache import extract_features

        c = self.config
        device = next(model.backbone.parameters()).device
        y = torch.as_tensor(np.asarray(data.targets), device=device)
        for p in model.head.parameters():
            p.data.zero_()
        if c.anil:
            model.backbone.requires_grad_(False)
            X = torch.from_numpy(extract_features(model.backbone, data, batch_size=c.batch_size, use_cache=False))
            start = {n: p.detach().clone().requires_grad_(True) for n, p in model.head.named_parameters()}
            fast = adapt(model.head, start, X.to(device), y, c.adapt_steps, c.inner_lr, first_order=True)
            model.head.load_state_dict({n: v.detach() for n, v in fast.items()})
            return
        ds = ItemDataset(data, model.backbone.preprocess)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=c.inner_lr)
        model.eval()
        for _ in range(c.adapt_steps):
            opt.zero_grad(set_to_none=True)
            for start in range(0, len(data), c.batch_size):
                idx = list(range(start, min(start + c.batch_size, len(data))))
                logits = model(to_device(ds.collate(idx)["inputs"], device))
                (F.cross_entropy(logits, y[idx], reduction="sum") / len(data)).backward()
            opt.step()
