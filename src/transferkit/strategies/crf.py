"""``crf``: a linear-chain CRF on hand-written word features, the no-transfer baseline of token classification.

Before a pre-trained encoder is worth its cost on a tagging task it has to beat
what a practitioner would train without one, and for named entities that is not
a per-word classifier but a CRF on the classic CoNLL feature set (Lafferty et
al. 2001; the feature set of sklearn-crfsuite's CoNLL tutorial). It gets a fair
recipe, not a strawman:

* features of each word (:func:`word_features`): the lower-cased word, its
  lower-cased prefixes and suffixes of 2 and 3 characters, flags (title case,
  upper case, all digits, has a digit, has ``@``, has punctuation), its shape
  (``Xxxxx``, ``dd.dd``: runs of one character class capped at 4) and a length
  bucket; the same for the words at -1 and +1, the lower-cased word and shape of
  the words at -2 and +2, and ``BOS``/``EOS`` at the sentence's edges. Case,
  shape and context are what lets it tag names it never saw, which is what the
  held-out test of a NER baseline measures;
* L-BFGS with L1 (``c1``) and L2 (``c2``) penalties, ``max_iterations`` 100,
  every transition between tags a parameter (``all_possible_transitions``);
* ``c1``/``c2`` chosen on a small grid by entity F1 (the task's own metric, on the
  model's own outputs): on the validation split when there is one, else by
  ``cv_folds``-fold cross-validation on the training split when it holds at most
  ``cv_max_words`` words (8,000 by default: a fit costs about 1.5 s per 10,000
  words on one core, and 3 folds x 6 grid points then stay under 20 s), else the
  common default ``c1 = c2 = 0.1``. A validation search keeps the chosen grid
  point's model (6 fits in all); a cross-validation search refits on all of it.

Outputs are what the task expects of any model: per sentence, the CRF's
per-word tag marginals ``[words, tags]`` in ``label_names`` order (tags the CRF
never saw in training get 0), computed by forward-backward.

The trained model is a :class:`TransferModel` like any other, so ``predict``,
``evaluate`` and bundles need nothing special: its "backbone" (``crf:``, :mod:`transferkit.backbones.crf_model`) holds
the CRF and turns word lists into marginals, and its head (``crf-marginals``,
no parameters) turns marginals into logits ``log p`` whose softmax is ``p``.
A bundle stores the CRF without pickles, through the backbone's
:meth:`~transferkit.backbones.base.Backbone.save_files` (:func:`save_crf`):
``backbone/model.crfsuite``, crfsuite's own binary format (read by crfsuite's C
reader after :func:`check_crfsuite_model` has checked its header against the
file), and ``backbone/crf.json`` (the tag order, the feature set and how the
model was trained); :func:`load_crf` reads them back.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.backbones.crf_model import CRF_FILE, CrfBackbone, _pycrfsuite, _sequences
from transferkit.constraints import NONE, Interval, Options
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, DataError
from transferkit.strategies.base import Strategy, StrategyConfig, TrainDefaults, TransferModel, register_strategy
from transferkit.tasks import get_task, register_head

__all__ = ["Crf", "CrfConfig", "MarginalsHead"]

#: the c1 x c2 grid searched when neither is given; the common default (0.1, 0.1) first, so it wins ties
C1_GRID = (0.1, 0.01, 0.5)
C2_GRID = (0.1, 0.01)
SEARCHES = ("auto", "validation", "cv", "fixed")
_DEFAULT_C = 0.1


class MarginalsHead(nn.Module):
    """Marginals ``p`` -> logits ``log p`` (``-inf`` where ``p`` is 0, so a softmax gives back ``p`` and its zeros);
    a position with no probability at all (padding) gets logits 0. No parameters."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = int(num_tags)
        self.head_kind = "crf-marginals"

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        empty = p.sum(-1, keepdim=True) <= 0
        return torch.log(p.clamp_min(0)).masked_fill(empty, 0.0)


register_head("crf-marginals", lambda i, o, **_: MarginalsHead(o),
              lambda h: {"in_features": h.num_tags, "out_features": h.num_tags},
              lambda d: MarginalsHead(int(d["out_features"])),
              help="the crf strategy's: tag marginals to logits (log p), no parameters")


# ---------------------------------------------------------------------------------------------- training


def _train_crf(X: list, y: list[list[str]], c1: float, c2: float, cfg: "CrfConfig") -> bytes:
    """Train with L-BFGS through sklearn-crfsuite; crfsuite's model bytes."""
    _pycrfsuite()
    import sklearn_crfsuite

    with tempfile.TemporaryDirectory(prefix="transferkit-crf-") as tmp:
        path = Path(tmp) / CRF_FILE
        crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c1, c2=c2, max_iterations=cfg.max_iterations,
                                   all_possible_transitions=cfg.all_possible_transitions, model_filename=str(path))
        crf.fit(X, y)
        if crf._tagger is not None:
            crf._tagger.close()
        return path.read_bytes()


def _score(model: bytes, tags: list[str], X: list, y_true: list[np.ndarray], names: list[str]) -> tuple[float, float]:
    """(entity F1, word accuracy) of the model's marginals, by the task's metrics; ``names`` may extend ``tags``."""
    backbone = CrfBackbone(model, tags)
    extra = len(names) - len(tags)
    outputs = np.empty(len(X), dtype=object)
    outputs[:] = [np.pad(p, ((0, 0), (0, extra))).astype(np.float32) for p in backbone.marginals(X)]
    m = get_task("token-classification").metrics(y_true, outputs, names)
    return m["f1"], m["word_accuracy"]


@dataclass
class CrfConfig(StrategyConfig):
    c1: float | None = field(default=None, metadata={
        "help": "L1 penalty (default: chosen on the grid 0.01, 0.1, 0.5; 0.1 where there is no search)"})
    c2: float | None = field(default=None, metadata={
        "help": "L2 penalty (default: chosen on the grid 0.01, 0.1; 0.1 where there is no search)"})
    max_iterations: int = field(default=100, metadata={"help": "L-BFGS iterations"})
    all_possible_transitions: bool = field(default=True, metadata={
        "help": "learn a weight for every pair of tags, also those never adjacent in training (negative ones)"})
    search: str = field(default="auto", metadata={
        "help": "how c1/c2 are chosen: auto (validation split, else cross-validation up to cv_max_words training "
                "words, else 0.1/0.1), validation, cv, fixed (0.1 for a penalty not given)"})
    cv_folds: int = field(default=3, metadata={"help": "folds of the cross-validation search"})
    cv_max_words: int = field(default=8000, metadata={
        "help": "auto searches by cross-validation only up to this many training words (it costs folds x 6 fits)"})

    _parameter_constraints = {"c1": [Interval("number", 0, None), NONE], "c2": [Interval("number", 0, None), NONE],
                              "max_iterations": [Interval("int", 1, None)], "search": [Options(*SEARCHES)],
                              "cv_folds": [Interval("int", 2, 10)], "cv_max_words": [Interval("int", 0, None)]}


@register_strategy
class Crf(Strategy):
    """Linear-chain CRF on hand-written word features: the no-transfer baseline of token classification."""

    name = "crf"
    Config = CrfConfig
    kind = "scratch"
    modalities = ("text",)
    tasks = ("token-classification",)
    resumable = False
    defaults = TrainDefaults(epochs=1)

    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        if data.task not in self.tasks and data.task_spec.feature_kind == "pyramid":
            super().check_data(None, data)  # refuses, naming the strategies that train detection or segmentation
        if data.task not in self.tasks:
            raise ConfigError(f"Strategy '{self.name}' supports {', '.join(self.tasks)} tasks; '{data.name}' is "
                              f"{data.task}. A CRF tags words; for {data.task} the no-transfer baseline is "
                              "'scratch' (TF-IDF for text, a small CNN for images).")
        super().check_data(None, data)

    def needs_backbone(self, data: TaskData) -> bool:
        return False  # it trains its own model on hand-written features; a given backbone is not used

    def fit(self, backbone: Backbone | None, train: TaskData, val: TaskData | None, trainer):
        self.check_data(None, train)
        if train.targets is None:
            raise DataError(f"The CRF trains on tagged sentences; '{train.name}' has no tags.")
        start = time.perf_counter()
        names = list(train.label_names or [])
        X = _sequences(train.items)
        y = [[names[int(j)] for j in row] for row in train.targets]
        seed = getattr(getattr(trainer, "config", None), "seed", None) or 0
        c1, c2, info, model = self._choose(X, y, train, val, names, seed)
        if model is None:  # chosen by cross-validation, or fixed: train on the whole training split
            model = _train_crf(X, y, c1, c2, self.config)
        info = {"c1": c1, "c2": c2, **info, "fit_seconds": round(time.perf_counter() - start, 3)}
        crf = CrfBackbone(model, names, {k: v for k, v in info.items() if k != "grid"})
        history = [{"epoch": 1, **info, "model_bytes": len(model), "words": sum(len(s) for s in X)}]
        return TransferModel(crf, MarginalsHead(len(names)), train.task, names).eval(), history

    def _grid(self) -> list[tuple[float, float]]:
        c1s = C1_GRID if self.config.c1 is None else (self.config.c1,)
        c2s = C2_GRID if self.config.c2 is None else (self.config.c2,)
        return [(a, b) for a in c1s for b in c2s]

    def _search(self, val: TaskData | None, n_words: int) -> str:
        s = self.config.search
        if s == "validation" and (val is None or not len(val) or val.targets is None):
            raise ConfigError("CRF search='validation' needs a labelled validation split (val_fraction, or data "
                              "with one); use search='cv' or 'auto'.")
        if len(self._grid()) == 1:
            return "fixed"
        if s != "auto":
            return s
        if val is not None and len(val) and val.targets is not None:
            return "validation"
        return "cv" if n_words <= self.config.cv_max_words else "fixed"

    def _choose(self, X: list, y: list[list[str]], train: TaskData, val: TaskData | None, names: list[str],
                seed: int) -> tuple[float, float, dict, bytes | None]:
        """``(c1, c2, info, model)``; ``model`` is the chosen grid point's, trained on the whole training split
        (a validation search), else ``None``."""
        search = self._search(val, sum(len(s) for s in X))
        grid = self._grid()
        if search == "fixed":
            return (self.config.c1 if self.config.c1 is not None else _DEFAULT_C,
                    self.config.c2 if self.config.c2 is not None else _DEFAULT_C, {"selected_by": "fixed"}, None)
        rows, models = [], []
        if search == "validation":
            vnames = list(val.label_names or [])
            all_names = names + [t for t in vnames if t not in names]
            Xv = _sequences(val.items)
            yv = [np.array([all_names.index(vnames[int(j)]) for j in row], np.int64) for row in val.targets]
            for c1, c2 in grid:
                models.append(_train_crf(X, y, c1, c2, self.config))
                f1, acc = _score(models[-1], names, Xv, yv, all_names)
                rows.append({"c1": c1, "c2": c2, "f1": f1, "word_accuracy": acc})
            how = "validation"
        else:
            k = min(self.config.cv_folds, len(X))
            if k < 2:
                return _DEFAULT_C, _DEFAULT_C, {"selected_by": "fixed (too few sentences to cross-validate)"}, None
            folds = np.array_split(np.random.default_rng(seed).permutation(len(X)), k)
            targets = [np.asarray(t, np.int64) for t in train.targets]
            for c1, c2 in grid:
                f1s, accs = [], []
                for held in folds:
                    keep = np.setdiff1d(np.arange(len(X)), held)
                    m = _train_crf([X[i] for i in keep], [y[i] for i in keep], c1, c2, self.config)
                    f1, acc = _score(m, names, [X[i] for i in held], [targets[i] for i in held], names)
                    f1s.append(f1)
                    accs.append(acc)
                rows.append({"c1": c1, "c2": c2, "f1": float(np.mean(f1s)), "word_accuracy": float(np.mean(accs))})
            how = f"cv-{k}"
        i = max(range(len(rows)), key=lambda k: (round(rows[k]["f1"], 6), round(rows[k]["word_accuracy"], 6)))
        best = rows[i]  # the first of equals: the default (0.1, 0.1) where it ties
        return (best["c1"], best["c2"], {"selected_by": how, "selection_score": best["f1"], "grid": rows},
                models[i] if models else None)
