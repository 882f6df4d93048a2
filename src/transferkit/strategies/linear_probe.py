"""``linear-probe``: the backbone stays frozen; a linear head is fitted on cached features.

The head is scikit-learn's L-BFGS logistic regression (ridge regression for
regression targets, one logistic regression per label for multi-label), its
regularisation strength chosen by stratified cross-validation on the training
features (or on the validation split when one is given), then copied into an
``nn.Linear`` so the bundle is a plain PyTorch model. Features come from the
on-disk cache, so a second run (another seed, another strategy) does not run
the backbone again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval
from transferkit.data.dataset import TaskData
from transferkit.data.streaming import StreamData, is_stream
from transferkit.errors import ConfigError
from transferkit.tasks import get_task
from transferkit.strategies.base import (Strategy, StrategyConfig, TrainDefaults, TransferModel, linear_head,
                                         register_strategy)

C_GRID = (0.01, 0.1, 1.0, 10.0)


def _kind(task: str) -> str:
    """How the task encodes targets (``class``, ``multi-hot``, ``value``): what the closed-form fit depends on."""
    return get_task(task).target_kind


@dataclass
class LinearProbeConfig(StrategyConfig):
    C: float | None = field(default=None, metadata={"help": "inverse L2 strength; None: chosen by validation from 0.01..10"})
    max_iter: int = field(default=2000, metadata={"help": "L-BFGS iterations"})
    batch_size: int = field(default=64, metadata={"help": "feature-extraction batch size"})
    streaming: bool | None = field(default=None, metadata={
        "help": "fit a minibatch at a time on features read from the cache file, never all in memory; "
                "None: when the closed-form fit would not fit in memory"})

    _parameter_constraints = {
        "C": [Interval("number", 0, None, closed="neither"), NONE],
        "max_iter": [Interval("int", 1, None)],
        "batch_size": [Interval("int", 1, None)],
    }


def _model(task: str, C: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression, Ridge

    if _kind(task) == "value":
        return Ridge(alpha=1.0 / C)
    return LogisticRegression(C=C, max_iter=max_iter, random_state=seed)


def _fit(task: str, X, y, C: float, max_iter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit one linear model; returns (weight [out, in], bias [out])."""
    if _kind(task) == "multi-hot":
        ws, bs = [], []
        for j in range(y.shape[1]):
            col = y[:, j].astype(int)
            if col.min() == col.max():  # a label never (or always) on: constant logit
                ws.append(np.zeros(X.shape[1]))
                bs.append(np.array([10.0 if col[0] else -10.0]))
                continue
            m = _model("classification", C, max_iter, seed).fit(X, col)
            ws.append(m.coef_[0])
            bs.append(m.intercept_)
        return np.stack(ws), np.concatenate(bs)
    m = _model(task, C, max_iter, seed).fit(X, y)
    if _kind(task) == "value":
        return np.atleast_2d(m.coef_), np.atleast_1d(m.intercept_)
    return m.coef_, m.intercept_


def _score(task: str, w, b, X, y) -> float:
    z = X @ w.T + b
    if _kind(task) == "class":
        return float((z.argmax(1) == y).mean())
    if _kind(task) == "multi-hot":
        return float(((z > 0) == (y > 0.5)).mean())
    return -float(((z[:, 0] - y) ** 2).mean())


def _path_scores(task: str, X, y, Xv, yv, max_iter: int, seed: int) -> dict[float, float]:
    """Validation score of every C of :data:`C_GRID`.

    Single-label classification walks the grid from strong to weak
    regularisation, each fit warm-started from the previous solution (the
    regularisation path), which cuts L-BFGS iterations several-fold.
    """
    if _kind(task) != "class":
        return {C: _score(task, *_fit(task, X, y, C, max_iter, seed), Xv, yv) for C in C_GRID}
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=max_iter, random_state=seed, warm_start=True)
    scores = {}
    for C in sorted(C_GRID):
        model.set_params(C=C).fit(X, y)
        scores[C] = float((model.predict(Xv) == yv).mean())
    return scores


def _choose_C(task: str, X, y, val: tuple | None, max_iter: int, seed: int) -> tuple[float, float]:
    """The C of :data:`C_GRID` with the best validation (or cross-validated) score."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if val is not None:
        scores = _path_scores(task, X, y, val[0], val[1], max_iter, seed)
    else:
        folds_wanted = 5 if len(y) <= 1000 else 3
        if _kind(task) == "class":
            k = int(min(folds_wanted, np.bincount(y).min()))
            splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if k >= 2 else None
        else:
            splitter = KFold(min(folds_wanted, len(y)), shuffle=True, random_state=seed) if len(y) >= 4 else None
        if splitter is None:
            return 1.0, float("nan")
        per_fold = [_path_scores(task, X[tr], y[tr], X[te], y[te], max_iter, seed) for tr, te in splitter.split(X, y)]
        scores = {C: float(np.mean([f[C] for f in per_fold])) for C in C_GRID}
    best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    return best, scores[best]


def fit_linear_head(task: str, X: np.ndarray, y: np.ndarray, *, val: tuple | None = None, C: float | None = None,
                    max_iter: int = 2000, seed: int = 0, standardize: bool = True) -> tuple[nn.Sequential, dict]:
    """Fit a linear head on features ``X``; return it as the standard head (``linear_head``) plus what was chosen.

    Standardisation is folded into the returned layer: ``w' = w / s`` and
    ``b' = b - w' . m``, so the head applies to raw features.
    """
    import scipy.sparse as sp

    if sp.issparse(X):  # TF-IDF: keep it sparse, no standardisation
        standardize = False
    else:
        X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X.data if sp.issparse(X) else X).all():
        raise ConfigError("Backbone features contain NaN or inf; check the backbone and its input.")
    mean = X.mean(0) if standardize else np.zeros(X.shape[1])
    scale = X.std(0) + 1e-6 if standardize else np.ones(X.shape[1])
    Xs = (X - mean) / scale if standardize else X
    vs = None if val is None else ((np.asarray(val[0], np.float64) - mean) / scale, val[1])
    info = {}
    # Small problems: BLAS threads cost more than they give, and fight the
    # spinning OpenMP threads torch leaves behind (measured 10-30x slower).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        if C is None:
            C, info["selection_score"] = _choose_C(task, Xs, y, vs, max_iter, seed)
        w, b = _fit(task, Xs, y, C, max_iter, seed)
    if _kind(task) == "class" and w.shape[0] == 1:  # binary: sklearn returns one row
        w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    w = w / scale
    b = b - w @ mean
    head = linear_head(X.shape[1], w.shape[0])
    with torch.no_grad():
        head[-1].weight.copy_(torch.from_numpy(w).float())
        head[-1].bias.copy_(torch.from_numpy(np.asarray(b)).float())
    info["C"] = C
    return head, info


def fit_token_head(X: np.ndarray, y: np.ndarray, num_tags: int, *, val: tuple | None, C: float | None, max_iter: int,
                   seed: int) -> tuple[nn.Sequential, dict]:
    """A linear head over all ``num_tags`` tags; a tag absent from the training words gets a -1e4 bias."""
    present = np.unique(y)
    remap = np.full(num_tags, -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    vdata = None
    if val is not None:
        keep = remap[val[1]] >= 0
        vdata = (val[0][keep], remap[val[1][keep]])
    small, info = fit_linear_head("classification", X, remap[y], val=vdata, C=C, max_iter=max_iter, seed=seed)
    head = linear_head(X.shape[1], num_tags)
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.fill_(-1e4)
        head[-1].weight[torch.from_numpy(present)] = small[-1].weight
        head[-1].bias[torch.from_numpy(present)] = small[-1].bias
    info["tags_seen"] = int(len(present))
    return head, info


@register_strategy
class LinearProbe(Strategy):
    """Frozen backbone; linear head fitted on cached features (feature extraction)."""

    name = "linear-probe"
    Config = LinearProbeConfig
    streams = True  # a stream's features go to the cache file a batch at a time; the minibatch fit reads them
    # the closed-form fits of fit_linear_head; per-token tasks fit it on every word's features (token_probe.py)
    tasks = ("classification", "multilabel", "regression", "token-classification")
    defaults = TrainDefaults(epochs=1)

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer) -> tuple[TransferModel, list[dict]]:
        from transferkit.data.cache import extract_features

        self.check_data(backbone, train)
        if train.task_spec.feature_kind == "sequence":
            return self._fit_tokens(backbone, train, val, trainer)
        bs = self.config.batch_size
        if is_stream(train) or self._streams(backbone, train):
            return self._fit_streaming(backbone, train, val, trainer)
        X = extract_features(backbone, train, batch_size=bs)
        vdata = None
        if val is not None and len(val):
            vdata = (extract_features(backbone, val, batch_size=bs), val.targets)
        for p in backbone.parameters():
            p.requires_grad_(False)
        head, info = fit_linear_head(train.task, X, train.targets, val=vdata, C=self.config.C,
                                     max_iter=self.config.max_iter, seed=trainer.config.seed)
        model = TransferModel(backbone, head, train.task, train.label_names).eval()
        return model, [{"epoch": 1, **info}]

    def _streams(self, backbone: Backbone, data: TaskData) -> bool:
        from transferkit.strategies.linear_probe_stream import fits_in_memory

        if self.config.streaming is not None:
            return self.config.streaming
        return not fits_in_memory(len(data), backbone.num_features)

    def _fit_streaming(self, backbone: Backbone, train: TaskData | StreamData, val: TaskData | None,
                       trainer) -> tuple[TransferModel, list[dict]]:
        """Features written to and read from the cache file a batch at a time (larger than the memory); a stream's
        features in its source's order, with its targets kept from its label pass."""
        from transferkit.data.cache import feature_file
        from transferkit.strategies.linear_probe_stream import fit_streaming_head

        for p in backbone.parameters():
            p.requires_grad_(False)
        bs = self.config.batch_size
        X = feature_file(backbone, train, batch_size=bs)
        if X is None:
            raise ConfigError("Fitting a linear probe on features larger than the memory needs a writable feature "
                              "cache folder: set TRANSFERKIT_CACHE to one.")
        vdata = (feature_file(backbone, val, batch_size=bs), val.targets) if val is not None and len(val) else None
        targets = train.targets() if is_stream(train) else train.targets
        head, info = fit_streaming_head(train.task, X, targets, train.num_outputs, val=vdata,
                                        C=self.config.C, grid=C_GRID, seed=trainer.config.seed)
        return TransferModel(backbone, head, train.task, train.label_names).eval(), [{"epoch": 1, **info}]

    def _fit_tokens(self, backbone: Backbone, train: TaskData, val: TaskData | None,
                    trainer) -> tuple[TransferModel, list[dict]]:
        from transferkit.strategies.token_probe import word_features

        for p in backbone.parameters():
            p.requires_grad_(False)
        bs = self.config.batch_size
        X, y = word_features(backbone, train, bs)
        vdata = word_features(backbone, val, bs) if val is not None and len(val) else None
        head, info = fit_token_head(X, y, train.num_outputs, val=vdata, C=self.config.C,
                                    max_iter=self.config.max_iter, seed=trainer.config.seed)
        return TransferModel(backbone, head, train.task, train.label_names).eval(), [{"epoch": 1, **info}]

    def predict(self, model: TransferModel, data: TaskData) -> np.ndarray:
        from transferkit.data.cache import extract_features

        if data.task_spec.feature_kind == "sequence":
            return super().predict(model, data)
        if self._streams(model.backbone, data):
            from transferkit.data.cache import feature_file
            from transferkit.strategies.linear_probe_stream import predict_in_chunks

            features = feature_file(model.backbone, data, batch_size=self.config.batch_size)
            if features is not None:
                return predict_in_chunks(model, features)
        X = torch.from_numpy(extract_features(model.backbone, data, batch_size=self.config.batch_size))
        with torch.no_grad():
            return model.outputs_to_numpy(model.head(X))
