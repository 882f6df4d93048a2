"""``contrastive-text``: few-shot text classification the SetFit way.

SetFit (Tunstall et al. 2022, https://arxiv.org/abs/2209.11055) fine-tunes a
sentence encoder on pairs of the few labelled texts, then fits a linear head
on the fine-tuned embeddings:

1. pairs: same class -> target cosine 1, different classes -> target 0
   (multi-label: ``pair_rule="any"`` -> 1 when the label sets share a label,
   SetFit's rule; ``"jaccard"`` -> |A & B| / |A | B|, two empty sets -> 1);
2. the encoder (``sentence:``/``hf:``, pooled as it was trained, via
   ``forward_features``) trains with the generic loop on
   ``loss="cosine-mse"`` ((cos - t)^2, SetFit's default ``CosineSimilarityLoss``)
   or ``"contrastive"`` (Hadsell, Chopra & LeCun 2006,
   http://yann.lecun.com/exdb/publis/pdf/hadsell-chopra-lecun-06.pdf:
   t d^2 + (1 - t) max(0, margin - d)^2 with d = 1 - cos);
3. the head is :func:`fit_linear_head` (logistic regression, one per label
   for multi-label) on the fine-tuned embeddings, so the result is the
   standard backbone + linear head and bundles work unchanged.

Two ways to form a step's pairs (``pairing``):

* ``"in-batch"`` (default): a step draws ``batch_size`` texts, encodes each
  once and uses all B(B-1)/2 pairs among them, positives and negatives
  weighted equally (``balance``). Per step it encodes half the texts SetFit
  does (B instead of 2B) and sees ~B/2 times the pairs.
* ``"pairs"``: SetFit's recipe: a seeded list of pairs, half positive, half
  negative (each side cycled to its count, SetFit's oversampling), ``batch_size``
  pairs per step; a text that appears in two pairs of a step is encoded once.

A class with a single example has no positive pair: it appears in negative
pairs only (SetFit's self-pairs have zero loss and are left out). Data with no
positive pair at all, or fewer than two classes, is refused.

Texts are tokenised once (at the backbone's ``max_length``); each batch is
cut to its longest text; the token-embedding table is frozen unless
``train_token_embeddings`` (SetFit trains it). Embedding for the head and
prediction batch texts by length. ``batch_size``, ``lr`` (default 2e-5, SetFit's),
schedule, seed and epochs (default 1) are the loop's (``TrainConfig``); the
step budget is ``max_steps``, spread over the epochs.

Example:
    >>> s = make_strategy("contrastive-text", {"max_steps": 150})                  # doctest: +SKIP
    >>> model, history = s.fit(backbone, draw, None, Trainer(TrainConfig(batch_size=16)))  # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval, Options
from transferkit.data.batches import module_device, run_batches
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.strategies.base import (StepContext, Strategy, StrategyConfig, TrainDefaults, TransferModel,
                                         register_strategy)
from transferkit.strategies.linear_probe import fit_linear_head
from transferkit.tasks import get_task

PAIRINGS = ("in-batch", "pairs")
LOSSES = ("cosine-mse", "contrastive")
PAIR_RULES = ("any", "jaccard")


@dataclass
class ContrastiveTextConfig(StrategyConfig):
    pairing: str = field(default="in-batch", metadata={
        "help": f"one of {', '.join(PAIRINGS)}: all pairs among a step's texts, or SetFit's list of pairs"})
    num_iterations: int = field(default=20, metadata={
        "help": "steps when max_steps is None: in-batch, each text drawn this many times; "
                "pairs, 2 * num_iterations * N pairs (SetFit's num_iterations)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps in all, rounded up to a multiple of the epochs (None: from num_iterations)"})
    loss: str = field(default="cosine-mse", metadata={"help": f"one of {', '.join(LOSSES)}"})
    margin: float = field(default=0.5, metadata={"help": "contrastive loss: cosine distance beyond which negatives cost 0"})
    balance: bool = field(default=True, metadata={"help": "weight positive and negative pairs equally in each step"})
    pair_rule: str = field(default="any", metadata={
        "help": f"multi-label pair target: {', '.join(PAIR_RULES)} (any shared label -> 1, or Jaccard overlap)"})
    train_token_embeddings: bool = field(default=False, metadata={
        "help": "train the token-embedding table too (SetFit does); off: it stays frozen, ~20% faster steps on CPU"})
    head_C: float | None = field(default=None, metadata={
        "help": "inverse L2 strength of the logistic-regression head; None: chosen by cross-validation"})
    embed_batch_size: int = field(default=64, metadata={"help": "texts per batch when embedding for the head"})

    _parameter_constraints = {
        "pairing": [Options(*PAIRINGS)],
        "loss": [Options(*LOSSES)],
        "pair_rule": [Options(*PAIR_RULES)],
        "num_iterations": [Interval("int", 1, None)],
        "max_steps": [Interval("int", 1, None), NONE],
        "margin": [Interval("number", 0, 2, closed="right")],
        "head_C": [Interval("number", 0, None, closed="neither"), NONE],
        "embed_batch_size": [Interval("int", 1, None)],
    }


def pair_targets(targets: np.ndarray, task: str, rule: str = "any") -> np.ndarray:
    """Target cosine of every pair ``[N, N]``: 1 same class, 0 different (multi-label: ``rule``)."""
    if get_task(task).single_label:
        y = np.asarray(targets)
        return (y[:, None] == y[None, :]).astype(np.float32)
    Y = np.asarray(targets, dtype=np.float32) > 0.5
    inter = Y.astype(np.float32) @ Y.T.astype(np.float32)
    if rule == "any":
        return (inter > 0).astype(np.float32)
    union = Y.sum(1)[:, None] + Y.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def check_pairs(data: TaskData, rule: str = "any") -> None:
    """Refuse data that gives no positive or no negative pair, naming what is missing."""
    if data.task not in ContrastiveText.tasks:
        raise ConfigError(f"Strategy 'contrastive-text' needs classification or multilabel data; "
                          f"'{data.name}' is {data.task}.")
    if data.targets is None:
        raise DataError(f"Strategy 'contrastive-text' needs labelled data; '{data.name}' has no targets.")
    if data.task_spec.single_label:
        counts = np.bincount(np.asarray(data.targets, dtype=np.int64))
        if (counts > 0).sum() < 2:
            raise DataError(f"Contrastive pairs need at least 2 classes; '{data.name}' has "
                            f"{int((counts > 0).sum())}.")
        if counts.max() < 2:
            raise DataError(f"'{data.name}' gives no positive pair: every class has a single example. "
                            f"Give at least 2 examples of some class.")
        return
    T = pair_targets(data.targets, data.task, rule)
    off = ~np.eye(len(T), dtype=bool)
    if not (T[off] > 0).any():
        raise DataError(f"'{data.name}' gives no positive pair: every class has a single example. "
                        f"Give at least 2 examples of some class.")
    if not (T[off] == 0).any():
        raise DataError(f"'{data.name}' gives no negative pair: every two examples share a label.")


def build_pairs(targets: np.ndarray, task: str, n_pairs: int, seed: int, rule: str = "any"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit's pair list: ``n_pairs`` pairs ``i < j``, alternately positive (target > 0) and negative.

    Each side is a seeded permutation of its pairs, cycled to its count
    (SetFit's oversampling). Returns ``(left, right, target)`` arrays.
    """
    T = pair_targets(targets, task, rule)
    i, j = np.triu_indices(len(T), k=1)
    t = T[i, j]
    rng = np.random.default_rng(seed)
    sides = [np.flatnonzero(t > 0), np.flatnonzero(t == 0)]
    if not all(len(s) for s in sides):
        raise DataError("Contrastive pairs need positive and negative pairs; check_pairs() says which is missing.")
    counts = (n_pairs - n_pairs // 2, n_pairs // 2)
    picked = [np.resize(rng.permutation(s), c) for s, c in zip(sides, counts)]
    order = np.empty(n_pairs, dtype=np.int64)
    order[0::2], order[1::2] = picked[0], picked[1]
    return i[order], j[order], t[order]


def _pair_weights(t: torch.Tensor, balance: bool) -> torch.Tensor:
    """Per-pair weights summing to 1: positives and negatives half each when ``balance`` and both occur."""
    pos = t > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not balance or n_pos == 0 or n_neg == 0:
        return torch.full_like(t, 1.0 / max(len(t), 1))
    return torch.where(pos, 0.5 / n_pos, 0.5 / n_neg).to(t.dtype)


def _cut(tokens: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """Rows of the pre-tokenised tensors, cut to the longest of them."""
    out = {k: v[rows] for k, v in tokens.items()}
    width = int(out["attention_mask"].sum(1).max()) if "attention_mask" in out else out["input_ids"].shape[1]
    return {k: v[:, :max(width, 1)] for k, v in out.items()}


class PairBatches(torch.utils.data.Dataset):
    """What the loop iterates: text slots (``in-batch``) or pairs (``pairs``), collated to unique texts + pairs.

    A batch is ``{"inputs": tokens of the unique texts, "left"/"right": pair
    positions into them, "target": target cosines, "weight": pair weights}``.
    """

    def __init__(self, tokens: dict, targets: np.ndarray, task: str, length: int, *, rule: str, balance: bool,
                 pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        self.tokens, self.targets, self.task, self.length = tokens, np.asarray(targets), task, int(length)
        self.rule, self.balance, self.pairs = rule, balance, pairs
        self.n = len(self.targets)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> int:
        return k

    def collate(self, slots: list[int]) -> dict:
        if self.pairs is None:  # in-batch: every pair of distinct texts drawn
            items = np.unique(np.asarray(slots) % self.n)
            left, right = np.triu_indices(len(items), k=1)
            target = pair_targets(self.targets[items], self.task, self.rule)[left, right]
        else:
            pi, pj, target = (a[np.asarray(slots) % len(a)] for a in self.pairs)
            items, inverse = np.unique(np.concatenate([pi, pj]), return_inverse=True)
            left, right = inverse[:len(pi)], inverse[len(pi):]
        t = torch.as_tensor(target, dtype=torch.float32)
        return {"inputs": _cut(self.tokens, torch.as_tensor(items)), "task": self.task,
                "left": torch.as_tensor(left), "right": torch.as_tensor(right),
                "target": t, "weight": _pair_weights(t, self.balance)}


def embed(backbone: Backbone, items, batch_size: int = 64) -> np.ndarray:
    """Pooled features of ``items`` (eval mode), batched by length so short texts are not padded to long ones."""
    tokens = backbone.preprocess(list(items))
    lengths = tokens["attention_mask"].sum(1) if "attention_mask" in tokens else torch.full((len(items),), 1)
    order = torch.argsort(lengths, descending=True)
    was_training = backbone.training
    backbone.eval()
    out = torch.empty(len(items), backbone.num_features)
    load = lambda rows: _cut(tokens, torch.as_tensor(rows))  # noqa: E731
    for rows, _, feats in run_batches(backbone.forward_features, load, len(items), batch_size=batch_size,
                                      device=module_device(backbone), order=order):
        out[rows] = feats.float().cpu()
    backbone.train(was_training)
    return out.numpy()


@register_strategy
class ContrastiveText(Strategy):
    """SetFit-style few-shot text classification: contrastive pair fine-tuning, then a linear head."""

    tasks = ("classification", "multilabel")

    name = "contrastive-text"
    Config = ContrastiveTextConfig
    modalities = ("text",)
    defaults = TrainDefaults(epochs=1, lr=2e-5, head_lr=1e-3)  # SetFit's body learning rate

    def total_steps(self, n: int, batch_size: int) -> int:
        """Optimizer steps: ``max_steps``, else from ``num_iterations`` (see the config)."""
        c = self.config
        if c.max_steps is not None:
            return c.max_steps
        per_step = batch_size if c.pairing == "in-batch" else batch_size / 2
        return max(1, math.ceil(c.num_iterations * n / per_step))

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        """The backbone with an identity head while training (the loop's forward gives features).

        Unless ``train_token_embeddings``, the token-embedding table stays
        frozen: in MiniLM it is half the weights (30,522 x 384), a few dozen
        texts touch few of its rows, and on one CPU thread AdamW's update took
        0.55 s with it and 0.15 s without (of a 3-5 s step at 16 texts x 64 tokens).
        """
        if not self.config.train_token_embeddings:
            slot = backbone.transformer_slot()
            get = getattr(getattr(*slot), "get_input_embeddings", None) if slot else None
            table = get() if callable(get) else None
            if table is not None:
                table.weight.requires_grad_(False)
        return TransferModel(backbone, nn.Identity(), data.task, data.label_names)

    def train_dataset(self, model: TransferModel, data: TaskData) -> PairBatches:
        c = self.config
        batch_size, epochs, seed = getattr(self, "_loop", None) or (32, 1, 0)  # set by fit() from the loop
        steps = self.total_steps(len(data), batch_size)
        length = math.ceil(steps / epochs) * batch_size  # the loop runs `epochs` passes over it
        tokens = model.backbone.preprocess(list(data.items))
        pairs = None
        if c.pairing == "pairs":
            pairs = build_pairs(data.targets, data.task, length, seed, c.pair_rule)
        return PairBatches(tokens, data.targets, data.task, length, rule=c.pair_rule, balance=c.balance, pairs=pairs)

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        z = F.normalize(model(batch["inputs"]).float(), dim=-1)
        cos = (z[batch["left"]] * z[batch["right"]]).sum(-1)
        t, w = batch["target"], batch["weight"]
        if self.config.loss == "cosine-mse":
            per_pair = (cos - t) ** 2
        else:
            d = 1.0 - cos
            per_pair = t * d ** 2 + (1.0 - t) * F.relu(self.config.margin - d) ** 2
        return {"loss": (w * per_pair).sum(), "pairs": torch.tensor(float(len(t)))}

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        """Fine-tune on pairs with the loop, then fit the linear head on the fine-tuned embeddings."""
        self.check_data(backbone, train)
        check_pairs(train, self.config.pair_rule)
        cfg = trainer.config
        self._loop = (cfg.batch_for(train), trainer.resolved(self)[0], cfg.seed)
        torch.manual_seed(cfg.seed)
        model = self.prepare(backbone, train)
        # No validation inside the loop: the identity head has no metric; val picks the head's C instead.
        model, history = trainer.fit(self, model, train, None)
        bs = self.config.embed_batch_size
        X = embed(backbone, train.items, bs)
        vdata = (embed(backbone, val.items, bs), val.targets) if val is not None and len(val) else None
        head, info = fit_linear_head(train.task, X, train.targets, val=vdata, C=self.config.head_C, seed=cfg.seed)
        model.head = head.to(next(backbone.parameters()).device)
        model.eval()
        if history:  # the steps run: max_steps rounded up to a multiple of the loop's epochs
            epochs = self._loop[1]
            steps = math.ceil(self.total_steps(len(train), self._loop[0]) / epochs) * epochs
            history[-1].update({"steps": steps, **info})
        return model, history

    def predict(self, model: TransferModel, data: TaskData) -> np.ndarray:
        X = torch.from_numpy(embed(model.backbone, data.items, self.config.embed_batch_size))
        with torch.no_grad():
            return model.outputs_to_numpy(model.head(X.to(next(model.head.parameters()).device)))
