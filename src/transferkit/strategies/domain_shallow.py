"""Shallow domain adaptation on cached features: ``coral-linear`` and ``reweight-linear``.

The backbone stays frozen and its features come from the on-disk cache (as in
``linear-probe``), so these run in seconds and make the fast baseline of the
deep methods. The fitted head is copied into the standard ``nn.Linear`` head,
so the bundle is a plain model that applies to raw target features.

* ``coral-linear``: closed-form CORAL (Sun, Feng & Saenko, AAAI 2016,
  https://arxiv.org/abs/1511.05547): source features whitened and re-coloured
  with the target covariance, then logistic regression.
* ``reweight-linear``: instance reweighting (Bickel et al., ICML 2007;
  Sugiyama et al., JMLR 2007): a domain classifier on the features gives
  ``w = p(target|x) / p(source|x)`` per source example, clipped, used as the
  sample weights of the logistic regression; C is chosen by importance-weighted
  validation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from transferkit.backbones.base import Backbone
from transferkit.constraints import Interval
from transferkit.data.dataset import TaskData

from transferkit.evaluation.domain_shift import coral_map
from transferkit.evaluation.domain_validation import domain_importance_weights
from transferkit.strategies.base import TrainDefaults, TransferModel, linear_head, register_strategy
from transferkit.strategies.domain import TargetDomain
from transferkit.strategies.linear_probe import C_GRID, LinearProbe, LinearProbeConfig, fit_linear_head


class _ShallowDomain(TargetDomain, LinearProbe):
    """A frozen backbone, cached source and target features, a linear head fitted in closed form."""

    tasks = ("classification",)
    streams = False  # source features are re-weighted or aligned with the target's, held in memory

    defaults = TrainDefaults(epochs=1)

    def check_data(self, backbone, data: TaskData) -> None:
        super().check_data(backbone, data)
        self.check_target(data)

    def _features(self, backbone: Backbone, train: TaskData, val: TaskData | None):
        from transferkit.data.cache import extract_features

        bs = self.config.batch_size
        xs = extract_features(backbone, train, batch_size=bs)
        xt = extract_features(backbone, self.target_pool(), batch_size=bs)
        xl = yl = None
        if self.target_labelled_ is not None:
            xl, yl = extract_features(backbone, self.target_labelled_, batch_size=bs), self.target_labelled_.targets
        xv = extract_features(backbone, val, batch_size=bs) if val is not None and len(val) else None
        for p in backbone.parameters():
            p.requires_grad_(False)
        return xs, xt, (xl, yl), xv


@dataclass
class CoralLinearConfig(LinearProbeConfig):
    reg: float = field(default=1.0, metadata={"help": "ridge added to both covariances, relative to the mean variance"})

    _parameter_constraints = {"reg": [Interval("number", 0, None, closed="neither")]}


@register_strategy
class CoralLinear(_ShallowDomain):
    """Closed-form CORAL on cached features, then a linear head (a fast shallow baseline)."""

    name = "coral-linear"
    Config = CoralLinearConfig

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        self.check_data(backbone, train)
        xs, xt, (xl, yl), xv = self._features(backbone, train, val)
        ms, a, mt = coral_map(xs, xt, reg=self.config.reg)
        x, y = (xs - ms) @ a + mt, np.asarray(train.targets)
        if xl is not None:  # labelled target examples are already in the target's space
            x, y = np.concatenate([x, xl]), np.concatenate([y, yl])
        vdata = None if xv is None else ((xv - ms) @ a + mt, val.targets)
        head, info = fit_linear_head(train.task, x, y, val=vdata, C=self.config.C, max_iter=self.config.max_iter,
                                     seed=trainer.config.seed)
        return TransferModel(backbone, head, train.task, train.label_names).eval(), [{"epoch": 1, **info}]


@dataclass
class ReweightLinearConfig(LinearProbeConfig):
    clip: float = field(default=10.0, metadata={"help": "largest importance weight, relative to the mean weight"})
    folds: int = field(default=5, metadata={"help": "cross-fitting folds of the domain classifier and of the C choice"})

    _parameter_constraints = {"clip": [Interval("number", 1, None)], "folds": [Interval("int", 2, None)]}


def weighted_logistic_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, C: float, max_iter: int, seed: int,
                           n_classes: int):
    """A standardised, sample-weighted logistic regression copied into the standard linear head."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    mean, scale = x.mean(0), x.std(0) + 1e-6
    with threadpool_limits(1):
        m = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit((x - mean) / scale, y, sample_weight=w)
    coef, bias = np.zeros((n_classes, x.shape[1])), np.full(n_classes, -1e4)  # a class never seen: never predicted
    if len(m.classes_) == 2:
        coef[m.classes_] = np.stack([-m.coef_[0] / 2, m.coef_[0] / 2])
        bias[m.classes_] = [-m.intercept_[0] / 2, m.intercept_[0] / 2]
    else:
        coef[m.classes_], bias[m.classes_] = m.coef_, m.intercept_
    coef = coef / scale
    bias = bias - coef @ mean
    head = linear_head(x.shape[1], n_classes)
    with torch.no_grad():
        head[-1].weight.copy_(torch.from_numpy(coef).float())
        head[-1].bias.copy_(torch.from_numpy(bias).float())
    return head


def _weighted_accuracy(head, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    with torch.no_grad():
        pred = head(torch.from_numpy(np.asarray(x, dtype=np.float32))).argmax(-1).numpy()
    return float((w * (pred == y)).sum() / max(w.sum(), 1e-12))


@register_strategy
class ReweightLinear(_ShallowDomain):
    """Source examples reweighted by a domain classifier's importance weights, then a linear head."""

    name = "reweight-linear"
    Config = ReweightLinearConfig

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        from sklearn.model_selection import StratifiedKFold

        self.check_data(backbone, train)
        c, seed, k = self.config, trainer.config.seed, max(train.num_outputs, 1)
        xs, xt, (xl, yl), xv = self._features(backbone, train, val)
        w = domain_importance_weights(xs, xt, clip=c.clip, folds=c.folds, seed=seed)
        x, y = xs, np.asarray(train.targets)
        if xl is not None:  # labelled target examples count as target: weight 1 (the mean source weight)
            x, y, w = np.concatenate([x, xl]), np.concatenate([y, yl]), np.concatenate([w, np.ones(len(xl))])
        scores: dict[float, float] = {}
        if c.C is None:
            if xv is not None:  # importance-weighted validation on the source validation split
                wv = domain_importance_weights(xv, xt, clip=c.clip, folds=c.folds, seed=seed)
                for C in C_GRID:
                    scores[C] = _weighted_accuracy(weighted_logistic_head(x, y, w, C, c.max_iter, seed, k), xv,
                                                   np.asarray(val.targets), wv)
            else:  # importance-weighted cross-validation (Sugiyama et al. 2007)
                folds = int(min(c.folds, np.bincount(y).min()))
                splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)) if folds >= 2 else []
                for C in C_GRID:
                    scores[C] = float(np.mean([_weighted_accuracy(
                        weighted_logistic_head(x[tr], y[tr], w[tr], C, c.max_iter, seed, k), x[te], y[te], w[te])
                        for tr, te in splits])) if splits else float("nan")
        C = c.C if c.C is not None else max(C_GRID, key=lambda v: (np.nan_to_num(scores[v], nan=-1), -abs(np.log10(v))))
        head = weighted_logistic_head(x, y, w, C, c.max_iter, seed, k)
        ess = float(w.sum() ** 2 / (w ** 2).sum())
        info = {"epoch": 1, "C": C, "selection_score": scores.get(C, float("nan")), "max_weight": float(w.max()),
                "effective_sample_size": ess}
        return TransferModel(backbone, head, train.task, train.label_names).eval(), [info]
