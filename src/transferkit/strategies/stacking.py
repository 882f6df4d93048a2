"""``stacking``: one classifier per source model, combined by a meta-learner on out-of-fold predictions.

Stacked generalisation (Wolpert 1992, https://doi.org/10.1016/S0893-6080(05)80023-1)
over frozen source models. The backbone is a concat backbone
(``concat:efficientnet-lite:0+efficientnet-lite:1``, see
:mod:`transferkit.backbones.concat`); for each member ``k``:

1. its features ``f_k`` come from the feature cache (the same cache a
   ``linear-probe`` on that model alone reads);
2. a base learner, the linear probe's standardised logistic regression
   (:func:`~transferkit.strategies.linear_probe.fit_linear_head`, C chosen by
   cross-validation unless given), gives class probabilities;
3. its *out-of-fold* probabilities come from stratified K-fold
   (``cross_val_predict``): the probabilities of sample ``i`` come from a
   base learner fitted on the other folds, so they never saw ``y_i``.

The meta-learner, a logistic regression, is fitted on the out-of-fold
probabilities of all members side by side ``[N, K * C]``; fitting it on
in-sample probabilities instead would teach it to trust whichever base
learner memorised the training set best. The final base learners are refit
on all the training data. The model's head computes

    logits = meta(concat_k softmax(W_k f[:, slice_k] + b_k))

and is stored in bundles as ``{"kind": "stacking", "slices": ...}``.

Only the base learners' C is chosen on all training labels (one scalar per
member, by the linear probe's cross-validation); the out-of-fold
probabilities themselves never depend on a sample's own label.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval, Options
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.strategies.base import Strategy, StrategyConfig, TrainDefaults, TransferModel, register_strategy
from transferkit.strategies.linear_probe import fit_linear_head
from transferkit.tasks.heads import register_head

EXAMPLE = "concat:efficientnet-lite:0+efficientnet-lite:1"


@dataclass
class StackingConfig(StrategyConfig):
    folds: int = field(default=5, metadata={"help": "out-of-fold splits (stratified; at most the smallest "
                                                    "class count)"})
    C: float | None = field(default=None, metadata={"help": "base learners' inverse L2 strength; None: chosen per "
                                                            "model by cross-validation from 0.01..10"})
    meta_C: float | None = field(default=None, metadata={"help": "meta-learner's inverse L2 strength; None: chosen "
                                                                 "by cross-validation"})
    max_iter: int = field(default=2000, metadata={"help": "L-BFGS iterations of every logistic regression"})
    batch_size: int = field(default=64, metadata={"help": "feature-extraction batch size"})
    combine: str = field(default="learned", metadata={"help": "learned: the meta-learner on out-of-fold "
                                                               "probabilities; mean: the members' probabilities "
                                                               "averaged (nothing fitted on top: for tiny data)"})

    _parameter_constraints = {
        "combine": [Options("learned", "mean")],
        "folds": [Interval("int", 2, None)],
        "C": [Interval("number", 0, None, closed="neither"), NONE],
        "meta_C": [Interval("number", 0, None, closed="neither"), NONE],
        "max_iter": [Interval("int", 1, None)],
        "batch_size": [Interval("int", 1, None)],
    }


class MemberProbabilities(nn.Module):
    """``[B, D] -> [B, K * C]``: each member's slice of the features through its own linear layer, softmaxed."""

    def __init__(self, slices: Sequence[tuple[int, int]], num_classes: int):
        super().__init__()
        self.slices = [(int(a), int(b)) for a, b in slices]
        self.bases = nn.ModuleList(nn.Linear(b - a, num_classes) for a, b in self.slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([base(x[:, a:b]).softmax(-1) for base, (a, b) in zip(self.bases, self.slices)], dim=-1)


class MeanLogProbability(nn.Module):
    """``[B, K * C] -> [B, C]``: the log of the members' mean probability (the soft vote, as logits)."""

    def __init__(self, members: int, num_classes: int):
        super().__init__()
        self.members, self.out_features = int(members), int(num_classes)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        mean = probs.reshape(len(probs), self.members, self.out_features).mean(1)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


class StackingHead(nn.Sequential):
    """The stacked head: :class:`MemberProbabilities`, then the meta-learner's ``nn.Linear`` (``head[-1]``), or
    with ``combine="mean"`` the log of the members' mean probability (:class:`MeanLogProbability`).

    Registered as the ``stacking`` head, so bundles rebuild it without knowing this strategy.

    Args:
        slices: ``(start, stop)`` of each member's columns in the concatenated features.
        num_classes: C.
        combine: ``learned`` or ``mean``.
    """

    head_kind = "stacking"

    def __init__(self, slices: Sequence[tuple[int, int]], num_classes: int, combine: str = "learned"):
        top = (MeanLogProbability(len(slices), num_classes) if combine == "mean"
               else nn.Linear(len(slices) * num_classes, num_classes))
        super().__init__(MemberProbabilities(slices, num_classes), top)
        self.combine = combine

    def describe(self) -> dict:
        """The bundle manifest's ``head`` entry."""
        slices = self[0].slices
        return {"kind": "stacking", "slices": [list(s) for s in slices], "in_features": slices[-1][1],
                "out_features": self[-1].out_features, "combine": self.combine}

    @classmethod
    def from_manifest(cls, head: dict) -> "StackingHead":
        combine = head.get("combine", "learned")
        if combine not in ("learned", "mean"):
            raise ConfigError(f"The stacking head's combine must be learned or mean. Got {combine!r} instead.")
        return cls([tuple(s) for s in head["slices"]], int(head["out_features"]), combine)


def _build_stacking_head(in_features: int, out_features: int, **options) -> nn.Module:
    raise ConfigError("The stacking head is built by the 'stacking' strategy from its members' slices.")


register_head("stacking", _build_stacking_head, StackingHead.describe, StackingHead.from_manifest,
              help="a probe per stacked model, then a meta-learner (strategy 'stacking')")


def stacking_members(backbone: Backbone, strategy: str = "stacking") -> list[Backbone]:
    """The member backbones of a concat backbone; a clear error for anything else."""
    members = list(getattr(backbone, "members", None) or [])
    if len(members) < 2:
        raise ConfigError(f"Strategy '{strategy}' needs at least two source models; got the single backbone "
                          f"'{backbone.spec}'. Join several with 'concat:A+B', e.g. '{EXAMPLE}'.")
    return members


def out_of_fold_probabilities(X: np.ndarray, y: np.ndarray, *, C: float, folds, seed: int = 0,
                              max_iter: int = 2000) -> np.ndarray:
    """Class probabilities of every sample from a base learner that was not fitted on it.

    Args:
        X: features ``[N, D]``.
        y: class indices ``[N]``.
        C: inverse L2 strength of the logistic regression.
        folds: a scikit-learn splitter (``StratifiedKFold``), a number of folds,
            or a list of ``(train, test)`` index pairs whose test parts cover every sample once.
        seed: the logistic regression's ``random_state``.
        max_iter: L-BFGS iterations.

    Returns:
        ``[N, classes present in y]``, columns in sorted class order.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    learner = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with threadpool_limits(1):  # small problems: BLAS threads cost more than they give (see linear_probe)
        return cross_val_predict(learner, np.asarray(X, np.float64), y, cv=folds, method="predict_proba")


def _check_labels(y: np.ndarray, num_classes: int, folds: int, label_names: Sequence[str] | None) -> int:
    """The number of folds to use; refuses a class with fewer than two examples."""
    counts = np.bincount(y, minlength=num_classes)
    short = [f"'{label_names[c] if label_names else c}' has {n}" for c, n in enumerate(counts) if n < 2]
    if short:
        raise ConfigError(f"Out-of-fold stacking needs at least 2 labelled examples of every class: "
                          f"{', '.join(short)}.")
    return int(min(folds, counts.min()))


def fit_stacking_head(features: Sequence[np.ndarray], y: np.ndarray, num_classes: int, *, folds: int = 5,
                      C: float | Sequence[float] | None = None, meta_C: float | None = None, max_iter: int = 2000,
                      seed: int = 0, label_names: Sequence[str] | None = None,
                      combine: str = "learned") -> tuple[StackingHead, dict]:
    """Fit base learners, their out-of-fold probabilities and the meta-learner; return the head and what was chosen.

    Args:
        features: one ``[N, D_k]`` array per member, rows aligned.
        y: class indices ``[N]`` in ``0..num_classes-1``.
        num_classes: C.
        folds: stratified out-of-fold splits (capped at the smallest class count).
        C: base learners' C, one for all or one per member; ``None`` chooses it per member.
        meta_C: the meta-learner's C; ``None`` chooses it by cross-validation.
        max_iter: L-BFGS iterations.
        seed: fold shuffling and solver seed.
        label_names: class names for error messages.
        combine: ``learned`` (the meta-learner) or ``mean`` (the members' probabilities averaged: no
            out-of-fold probabilities and nothing fitted on top).

    Returns:
        ``(head, info)``: the :class:`StackingHead` for the concatenated features, and
        ``base_C``, ``meta_C``, ``folds``, ``oof_accuracy`` (per member) and ``meta_oof_accuracy``.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(np.int64)
    k = _check_labels(y, num_classes, folds, label_names)
    Cs = list(C) if isinstance(C, (list, tuple)) else [C] * len(features)
    if len(Cs) != len(features):
        raise ConfigError(f"fit_stacking_head got {len(Cs)} values of C for {len(features)} source models.")
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    stops = np.cumsum([f.shape[1] for f in features])
    head = StackingHead([(int(b - f.shape[1]), int(b)) for f, b in zip(features, stops)], num_classes, combine)
    oof, info = [], {"base_C": [], "folds": k, "oof_accuracy": [], "combine": combine}
    for X, c, base in zip(features, Cs, head[0].bases):
        fitted, chosen = fit_linear_head("classification", X, y, C=c, max_iter=max_iter, seed=seed)
        with torch.no_grad():  # the final base learner: fitted on all the training data
            base.load_state_dict(fitted[-1].state_dict())
        if combine == "mean":
            info["base_C"].append(chosen["C"])
            continue
        probs = out_of_fold_probabilities(X, y, C=chosen["C"], folds=splitter, seed=seed, max_iter=max_iter)
        oof.append(probs)
        info["base_C"].append(chosen["C"])
        info["oof_accuracy"].append(float((probs.argmax(1) == y).mean()))
    if combine == "mean":
        del info["oof_accuracy"]
        return head.eval(), info
    Z = np.concatenate(oof, axis=1)
    meta, chosen = fit_linear_head("classification", Z, y, C=meta_C, max_iter=max_iter, seed=seed)
    with torch.no_grad():
        head[-1].load_state_dict(meta[-1].state_dict())
        info["meta_oof_accuracy"] = float((meta(torch.from_numpy(Z).float()).argmax(1).numpy() == y).mean())
    info["meta_C"] = chosen["C"]
    return head.eval(), info


def member_features(backbone: Backbone, data: TaskData, batch_size: int = 64) -> np.ndarray:
    """The concatenated features, read member by member from the cache (shared with single-model probes)."""
    from transferkit.data.cache import extract_features

    return np.concatenate([extract_features(m, data, batch_size=batch_size) for m in stacking_members(backbone)],
                          axis=1)


@register_strategy
class Stacking(Strategy):
    """Frozen source models; per-model linear probes stacked by a meta-learner on out-of-fold probabilities."""

    tasks = ("classification",)

    name = "stacking"
    Config = StackingConfig
    defaults = TrainDefaults(epochs=1)
    #: the conformance tests give it a concat backbone of this many members
    min_backbones = 2

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        from transferkit.data.cache import extract_features

        self.check_data(backbone, train)
        members = stacking_members(backbone, self.name)
        seed = getattr(getattr(trainer, "config", None), "seed", 0) or 0
        cfg = self.config
        features = [extract_features(m, train, batch_size=cfg.batch_size) for m in members]
        for p in backbone.parameters():
            p.requires_grad_(False)
        head, info = fit_stacking_head(features, train.targets, train.num_outputs, folds=cfg.folds, C=cfg.C,
                                       meta_C=cfg.meta_C, max_iter=cfg.max_iter, seed=seed, combine=cfg.combine,
                                       label_names=train.label_names)
        model = TransferModel(backbone, head, train.task, train.label_names).eval()
        row = {"epoch": 1, **info}
        if val is not None and len(val):
            row["val_accuracy"] = float((self.predict(model, val).argmax(1) == np.asarray(val.targets)).mean())
        return model, [row]

    def predict(self, model: TransferModel, data: TaskData) -> np.ndarray:
        X = torch.from_numpy(member_features(model.backbone, data, self.config.batch_size))
        with torch.no_grad():
            return model.outputs_to_numpy(model.head(X))
