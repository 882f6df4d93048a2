"""The models and memory of continual learning: per-task heads, progressive columns, the replay buffer.

Used by the learners in :mod:`transferkit.strategies.continual`:

* :class:`ContinualModel`: a backbone with a head per task (task- and
  domain-incremental scenarios) or one growing head (class-incremental);
* :class:`ProgressiveModel`: progressive neural networks (Rusu et al. 2016), a
  column per task with lateral adapters, earlier columns frozen;
* :class:`ReplayBuffer`: a bounded, class-balanced memory of preprocessed items;
* :class:`ExperienceDataset`: batches of one experience with task ids, mixed
  with replayed items.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.strategies.base import ItemDataset, TransferModel, linear_head

# ---------------------------------------------------------------- models


class ContinualModel(TransferModel):
    """A backbone and its heads: one per task (task scenario) or one shared, growing head.

    ``forward(inputs)`` gives the logits of the head of task ``active`` (what
    :func:`predict_outputs` evaluates); :meth:`task_logits` those of a batch
    mixing tasks (padded with -1e9 past each task's width).
    """

    def __init__(self, backbone: Backbone, head_sizes: list[int], scenario: str, per_task_heads: bool | None = None):
        per_task = scenario == "task" if per_task_heads is None else per_task_heads
        sizes = head_sizes if per_task else head_sizes[:1]
        super().__init__(backbone, nn.ModuleList(linear_head(backbone.num_features, n) for n in sizes),
                         "classification", None)
        self.scenario, self.per_task, self.active = scenario, per_task, 0

    def head_index(self, task_id: int) -> int:
        return task_id if self.per_task else 0

    def features(self, inputs, task_id: int | None = None) -> torch.Tensor:
        return self.backbone.forward_features(inputs)

    def forward(self, inputs) -> torch.Tensor:
        return self.head[self.head_index(self.active)](self.features(inputs, self.active))

    def task_logits(self, inputs, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of each row's own head ``[B, max width]`` and the features."""
        ids = sorted(set(task_ids.tolist()))
        feats = self.features(inputs, ids[-1])
        heads = {t: self.head[self.head_index(t)] for t in ids}
        if len({self.head_index(t) for t in ids}) == 1:
            return heads[ids[0]](feats).float(), feats
        width = max(h[-1].out_features for h in heads.values())
        out = feats.new_full((len(feats), width), -1e9, dtype=torch.float32)
        for t, head in heads.items():
            rows = task_ids.to(feats.device) == t
            out[rows, :head[-1].out_features] = head(feats[rows]).float()
        return out, feats

    def grow(self, n: int) -> None:
        """Widen the shared head to ``n`` classes, keeping the rows learnt so far (class scenario)."""
        old = self.head[0][-1]
        if n <= old.out_features:
            return
        new = linear_head(old.in_features, n).to(old.weight.device)
        with torch.no_grad():
            new[-1].weight[:old.out_features] = old.weight
            new[-1].bias[:old.out_features] = old.bias
        self.head[0] = new

    def trainable(self, task_id: int, old_heads: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(body, new layers) trained on ``task_id``: the backbone, and its head (and older heads if asked)."""
        i = self.head_index(task_id)
        heads = [self.head[k] for k in (range(i + 1) if old_heads else [i])]
        return list(self.backbone.parameters()), [p for h in heads for p in h.parameters()]


def _stages(backbone: nn.Module) -> list[nn.Module]:
    """The hidden stages lateral connections read: ``blocks`` (small-cnn) or ``layers`` (mlp); else none."""
    for attr in ("blocks", "layers"):
        m = getattr(backbone, attr, None)
        if isinstance(m, nn.ModuleList) and len(m) > 1:
            return list(m)
    return []


def _adapter(shape: torch.Size) -> nn.Module:
    """A 1x1 convolution (maps) or linear layer (vectors), zero at start: a new column starts independent."""
    layer = nn.Conv2d(shape[1], shape[1], 1) if len(shape) == 4 else nn.Linear(shape[-1], shape[-1])
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ProgressiveModel(ContinualModel):
    """Columns of the backbone architecture, one per task, with lateral adapters (Rusu et al. 2016).

    Column ``k`` adds, to the input of each of its stages ``l >= 1``,
    ``sum_{j<k} U_kjl(h_j,l-1)`` from earlier columns' stage outputs, and to
    its features ``sum_{j<k} V_kj(f_j)``. ``backbone`` is column 0. A task
    without a column yet (evaluated before training) reads the newest column.
    """

    def __init__(self, backbone: Backbone, head_sizes: list[int], scenario: str):
        super().__init__(backbone, head_sizes, scenario, per_task_heads=True)
        self.columns = nn.ModuleList([backbone])
        self.laterals = nn.ModuleList([nn.ModuleList()])  # laterals[k][j]: adapters from column j into column k
        self._initial = {k: v.detach().clone() for k, v in backbone.state_dict().items()}

    def add_column(self, sample) -> None:
        col = copy.deepcopy(self.columns[0])
        col.load_state_dict(self._initial)
        col.requires_grad_(True).train()
        shapes = []
        handles = [s.register_forward_hook(lambda m, a, o: shapes.append(o.shape)) for s in _stages(col)]
        try:
            with torch.no_grad():
                col.eval().forward_features(sample)
        finally:
            for h in handles:
                h.remove()
        col.train()
        k = len(self.columns)
        self.laterals.append(nn.ModuleList(
            nn.ModuleList([*(_adapter(s) for s in shapes[:-1]), _adapter(torch.Size([1, col.num_features]))])
            for _ in range(k)).to(next(self.parameters()).device))
        self.columns.append(col.to(next(self.parameters()).device))

    def freeze_before(self, k: int) -> None:
        """Columns, adapters and heads of tasks before ``k``: no gradient, BatchNorm statistics fixed."""
        for j in range(min(k, len(self.columns))):
            for part in (self.columns[j], self.laterals[j], self.head[j]):
                part.requires_grad_(False).eval()

    def features(self, inputs, task_id: int | None = None) -> torch.Tensor:
        k = min(self.active if task_id is None else task_id, len(self.columns) - 1)
        outs: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        for j in range(k + 1):
            frozen = j < k or not any(p.requires_grad for p in self.columns[j].parameters())
            with torch.no_grad() if frozen else contextlib.nullcontext():
                outs.append(self._column(j, inputs, outs))
        return outs[k][1]

    def _column(self, j: int, inputs, outs) -> tuple[list[torch.Tensor], torch.Tensor]:
        stages, seen = _stages(self.columns[j]), []
        handles = [s.register_forward_hook(lambda m, a, o: seen.append(o)) for s in stages]
        if j > 0:
            for l, stage in enumerate(stages[1:], start=1):
                def lateral(module, args, l=l):
                    return (args[0] + sum(self.laterals[j][i][l - 1](outs[i][0][l - 1]) for i in range(j)),) + args[1:]
                handles.append(stage.register_forward_pre_hook(lateral))
        try:
            f = self.columns[j].forward_features(inputs)
        finally:
            for h in handles:
                h.remove()
        if j > 0:
            f = f + sum(self.laterals[j][i][-1](outs[i][1]) for i in range(j))
        return seen, f

    def task_logits(self, inputs, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = set(task_ids.tolist())
        if len(ids) != 1:
            raise ConfigError("A progressive network trains one task per batch; got tasks " + str(sorted(ids)))
        t = ids.pop()
        feats = self.features(inputs, t)
        return self.head[t](feats).float(), feats

    def trainable(self, task_id: int, old_heads: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        k = min(task_id, len(self.columns) - 1)
        return list(self.columns[k].parameters()), [*self.laterals[k].parameters(), *self.head[task_id].parameters()]


# ---------------------------------------------------------------- data


class ReplayBuffer:
    """A bounded, class-balanced memory of preprocessed items.

    Items are grouped by (task id, class): after every :meth:`add` each group
    keeps ``size // groups`` items (the first ``size % groups`` groups one
    more), a random subset of what it had, so the memory never exceeds
    ``size`` and no class crowds out another.

    Args:
        size: most items held, at least 1.
        seed: seed of the random subsets and draws.
    """

    def __init__(self, size: int, seed: int = 0):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"The 'buffer_size' parameter of replay must be an int in [1, inf): a memory of "
                              f"{size!r} items holds nothing to replay. Got {size!r} instead.")
        self.size, self.groups = int(size), {}
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return sum(len(t) for t, _ in self.groups.values())

    def counts(self) -> dict[tuple[int, int], int]:
        """Items held per (task id, class)."""
        return {g: len(t) for g, (t, _) in self.groups.items()}

    def add(self, inputs: torch.Tensor, targets: torch.Tensor, task_id: int) -> None:
        """Offer the items of one experience, then rebalance every group to its quota."""
        if not isinstance(inputs, torch.Tensor):
            raise ConfigError("replay stores preprocessed tensors (image and tabular streams); got "
                              f"{type(inputs).__name__} inputs.")
        targets = torch.as_tensor(targets)
        for c in sorted(set(targets.tolist())):
            idx = torch.nonzero(targets == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=self.generator)]
            self.groups[(task_id, int(c))] = (inputs[idx].clone(), targets[idx].clone())
        quota, extra = divmod(self.size, len(self.groups))
        for i, g in enumerate(sorted(self.groups)):
            x, y = self.groups[g]
            self.groups[g] = (x[:quota + (i < extra)], y[:quota + (i < extra)])

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` items drawn at random (without replacement while the memory has them): inputs, targets, task ids."""
        xs = torch.cat([x for x, _ in self.groups.values()])
        ys = torch.cat([y for _, y in self.groups.values()])
        ts = torch.cat([torch.full((len(y),), g[0]) for g, (_, y) in self.groups.items()])
        pick = torch.randperm(len(ys), generator=self.generator)[:n]
        if n > len(ys):
            pick = torch.randint(len(ys), (n,), generator=self.generator)
        return xs[pick], ys[pick], ts[pick]


class ExperienceDataset(ItemDataset):
    """Batches of one experience with the task id of every row, mixed with replayed items when a memory is given."""

    def __init__(self, data: TaskData, preprocess, task_id: int, memory: ReplayBuffer | None = None,
                 replay_batch: int | None = None):
        super().__init__(data, preprocess)
        self.task_id, self.memory, self.replay_batch = task_id, memory, replay_batch

    def collate(self, indices: list[int]) -> dict:
        batch = super().collate(indices)
        batch["task_ids"] = torch.full((len(indices),), self.task_id)
        if self.memory is not None and len(self.memory):
            x, y, t = self.memory.sample(self.replay_batch or len(indices))
            batch["inputs"] = torch.cat([batch["inputs"], x])
            batch["targets"] = torch.cat([torch.as_tensor(batch["targets"]), y])
            batch["task_ids"] = torch.cat([batch["task_ids"], t])
        return batch


__all__ = ["ContinualModel", "ExperienceDataset", "ProgressiveModel", "ReplayBuffer"]
