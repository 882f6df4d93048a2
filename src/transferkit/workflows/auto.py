"""``strategy="auto"``: find the best transfer recipe (or say scratch) with the training labels only.

The search space is small and explained. For every backbone given:

* a linear probe on the final features and on every intermediate layer from a third of the
  model's main stack to the one before its last (``SPEC@blockN``: early layers often transfer
  better to targets far from the source, see :mod:`transferkit.backbones.layers`);
* for images given at a size below the model's native one, those probes again at twice and four
  times the size (up to the native size): small images upsampled often probe better, and frozen
  candidates are nearly free;
* full fine-tuning and LoRA on the final model at the given size, with their default recipes;

and the strongest scratch baseline a practitioner would train without transfer
(:func:`~transferkit.workflows.baselines.default_baselines`: a small CNN for images, TF-IDF +
logistic regression for text).

Candidates are scored by k-fold cross-validation on the training labels (stratified for
classification; the test split is never read), with successive halving over the folds: every
candidate runs on the first fold, the better half of the transfer candidates goes on to the
next fold, and so on; the scratch baseline runs on every fold, so the transfer verdict pairs
the best transfer candidate with it item by item (paired bootstrap over the out-of-fold items).
Frozen candidates are nearly free (the feature cache), so the expensive ones are the ones the
halving stops. ``budget`` (seconds) bounds the search after its first rung: once spent, the
candidates still running are judged on the folds they finished. The winner, the best mean
score over its folds, is then trained on all the labelled data by the caller (``fit``).

Example:
    >>> import transferkit as tk                                                       # doctest: +SKIP
    >>> r = tk.fit("efficientnet-lite:0", "fashion-mnist", "auto", labels_per_class=10,  # doctest: +SKIP
    ...            image_size=32, strategy_options={"budget": "10m"}, out="runs/auto")
    >>> r.manifest["auto"]["reason"]                                                   # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.evaluation import bootstrap_difference, higher_is_better, judge, mean_ci
from transferkit.evaluation.metrics import is_fraction_metric
from transferkit.strategies import make_strategy
from transferkit.tasks import get_task, primary_metric
from transferkit.training import TrainConfig
from transferkit.workflows.auto_options import AUTO, AUTO_STRATEGIES, AutoOptions, auto_options, parse_budget
from transferkit.workflows.baselines import baseline_config, default_baselines, per_item_values
from transferkit.workflows.runs import train_and_score

__all__ = ["AUTO", "AUTO_STRATEGIES", "AutoOptions", "AutoSearch", "Candidate", "auto_options", "parse_budget", "search",
           "search_and_train", "candidate_settings"]

_COST = {"linear-probe": 0, "stacking": 1, "lora": 1, "finetune": 2, "scratch": 3}


@dataclass
class Candidate:
    """One recipe the search tries, and what it scored on each fold it ran."""

    backbone: str | None
    strategy: str
    options: dict = field(default_factory=dict)
    backbone_options: dict = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "pending"
    outputs: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.strategy == "scratch":
            return f"scratch:{self.options['variant']}"
        if self.strategy == "stacking":
            return "stacking of " + " + ".join(
                m["spec"] + (f" at {m['options']['image_size']} px" if m["options"].get("image_size") else "")
                for m in self.backbone_options["members"])
        size = self.backbone_options.get("image_size")
        return f"{self.strategy} on {self.backbone}" + (f" at {size} px" if size else "")

    @property
    def is_scratch(self) -> bool:
        return self.strategy == "scratch"

    @property
    def cost(self) -> int:
        return _COST.get(self.strategy, 2)

    def mean(self, keys=None) -> float:
        """Mean score over the folds ``keys`` (all it ran by default)."""
        values = [self.scores[k] for k in (self.scores if keys is None else keys) if k in self.scores]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self, metric: str) -> dict:
        values = [self.scores[k] for k in sorted(self.scores)]
        mean, low, high = mean_ci(values) if len(values) > 1 else (self.mean(), float("nan"), float("nan"))
        return {"candidate": self.label, "backbone": self.backbone, "strategy": self.strategy,
                "options": self.options, "backbone_options": self.backbone_options, "folds": len(values), "fold_scores": values, "metric": metric,
                "mean": mean, "low": low, "high": high, "seconds": round(self.seconds, 2), "status": self.status}


@dataclass
class AutoSearch:
    """The search's record: every candidate, the winner and why, the transfer verdict."""

    candidates: list[Candidate]
    winner: Candidate
    metric: str
    folds: int
    seconds: float
    budget: float | None
    reason: str
    verdict: dict

    def to_dict(self) -> dict:
        """The manifest's ``auto`` entry."""
        return {"winner": self.winner.label, "backbone": self.winner.backbone, "strategy": self.winner.strategy,
                "strategy_options": self.winner.options, "backbone_options": self.winner.backbone_options,
                "metric": self.metric, "folds": self.folds,
                "seconds": round(self.seconds, 2), "budget_seconds": self.budget, "reason": self.reason,
                "verdict": self.verdict, "candidates": [c.to_dict(self.metric) for c in self.candidates],
                "protocol": f"{self.folds}-fold cross-validation on the training labels only, successive halving "
                            "over folds; the winner is then trained on all of them"}


def search(backbones, train: TaskData, config: TrainConfig, backbone_options: dict,
           options: AutoOptions | dict | None = None, *, progress: bool = False) -> AutoSearch:
    """Cross-validate the candidates on ``train`` with successive halving; the winner and the record.

    Args:
        backbones: a spec, a list of specs, or specs joined by commas.
        train: the labelled training data (the only data the search reads).
        config: the training settings of the transfer candidates (the baselines keep their own recipes).
        backbone_options: ``image_size``, ``max_length``, ``pretrained``, ...
        options: :class:`AutoOptions` or its fields as a dict.

    Raises:
        ConfigError: a task the search does not cover, or too few labels per class to cross-validate.
    """
    opts = options if isinstance(options, AutoOptions) else auto_options(options)
    task = get_task(train.task)
    if not (task.single_label or task.target_kind == "value"):
        raise ConfigError(f"strategy 'auto' searches classification and regression; '{train.name}' is {train.task}. "
                          "Pick a strategy (transferkit list strategies), or compare a few with transferkit compare.")
    metric = primary_metric(train.task)
    folds = _folds(train, opts.folds, config.seed)
    candidates = _candidates(_specs(backbones), train, opts, backbone_options)
    start = time.perf_counter()
    alive = list(candidates)
    for rung, (fit_idx, held_idx) in enumerate(folds):
        for cand in sorted(alive, key=lambda c: c.cost):
            if rung > 0 and opts.budget is not None and time.perf_counter() - start > opts.budget:
                cand.status = f"stopped by the budget after {len(cand.scores)} fold(s)"
                continue
            _evaluate(cand, rung, train, fit_idx, held_idx, config, backbone_options, metric, progress)
        alive = [c for c in alive if c.status in ("pending", "evaluated")]
        if rung < len(folds) - 1:
            alive = _halve(alive, metric)
    ran = [c for c in candidates if c.scores]
    if not ran:
        raise ConfigError("strategy 'auto': no candidate could be trained on this data: "
                          + "; ".join(f"{c.label}: {c.status}" for c in candidates))
    # the survivors of the last halving, judged on the folds they all finished
    finalists = [c for c in ran if c.status == "evaluated" or c.status.startswith("stopped by the budget")]
    keys = sorted(set.intersection(*(set(c.scores) for c in finalists)))
    stack = _stacking(finalists, keys, metric, opts.stack, task, backbone_options)
    if stack is not None:
        candidates.append(stack)
        for key in keys:
            _evaluate(stack, key, train, *folds[key], config, backbone_options, metric, progress)
        if set(keys) <= set(stack.scores):
            finalists.append(stack)
    sign = 1 if higher_is_better(metric) else -1
    winner = max(finalists, key=lambda c: (sign * c.mean(keys), -c.cost))
    for c in finalists:
        if c.status == "evaluated":
            c.status = f"finalist: {len(c.scores)} fold(s)"
    winner.status = "winner"
    verdict = _verdict(finalists, train, folds, metric, config.seed, keys)
    reason = _reason(winner, finalists, metric, len(train), len(folds), verdict, keys)
    return AutoSearch(candidates, winner, metric, len(folds), time.perf_counter() - start, opts.budget, reason, verdict)


def _stacking(finalists: list[Candidate], keys: list[int], metric: str, k: int, task,
              backbone_options: dict) -> Candidate | None:
    """The stacking candidate: the ``k`` best linear-probe finalists (each at its own layer and image size) as the
    members of one concat backbone, their probes' probabilities averaged (:mod:`~transferkit.strategies.stacking`
    with ``combine="mean"``: with a few labels per class a meta-learner has too little to learn from); ``None`` with fewer than two such finalists or for a task other than classification.

    An ensemble of the best probes averages away part of the fold noise that picks one of them (the winner's
    curse); its members are chosen on the same folds it is then scored on, as the single winner is.
    """
    if k < 2 or not keys or not task.single_label:
        return None
    sign = 1 if higher_is_better(metric) else -1
    probes = sorted((c for c in finalists if c.strategy == "linear-probe"), key=lambda c: -sign * c.mean(keys))[:k]
    if len(probes) < 2:
        return None
    given = {key: v for key, v in backbone_options.items() if v is not None and key != "pretrained"}
    members = [{"spec": c.backbone, "options": {**given, **c.backbone_options}} for c in probes]
    return Candidate("concat:" + "+".join(c.backbone for c in probes), "stacking", {"combine": "mean"},
                     backbone_options={"members": members})


def _specs(backbones) -> list[str]:
    if backbones is None:
        return []
    if isinstance(backbones, str):
        backbones = backbones.split(",")
    specs = [s.strip() for s in backbones if isinstance(s, str) and s.strip()]
    if any(not isinstance(s, str) for s in backbones):
        raise ConfigError("strategy 'auto' takes backbone specs (strings), so that every candidate starts from the "
                          "same pre-trained weights.")
    return specs


def _folds(train: TaskData, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(train)
    if get_task(train.task).single_label:
        counts = np.bincount(np.asarray(train.targets), minlength=len(train.label_names or []))
        counts = counts[counts > 0]
        smallest = int(counts.min())
        if smallest < 2:
            rare = [train.label_names[i] for i, c in enumerate(np.bincount(np.asarray(train.targets))) if c == 1]
            raise ConfigError(f"strategy 'auto' cross-validates on the training labels and needs at least 2 "
                              f"labelled items per class; {', '.join(map(str, rare[:5]))} "
                              f"{'has' if len(rare) == 1 else 'have'} 1. Label more, or pick a strategy.")
        splitter = StratifiedKFold(n_splits=min(k, smallest), shuffle=True, random_state=seed)
        return [(a, b) for a, b in splitter.split(np.zeros(n), np.asarray(train.targets))]
    if n < 2 * k:
        raise ConfigError(f"strategy 'auto' needs at least {2 * k} labelled items for {k}-fold cross-validation; "
                          f"got {n}.")
    return [(a, b) for a, b in KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n))]


def _candidates(specs: list[str], train: TaskData, opts: AutoOptions, backbone_options: dict) -> list[Candidate]:
    out: list[Candidate] = []
    for spec in specs:
        for name in opts.strategies:
            out.append(Candidate(spec, name))
        if "linear-probe" not in opts.strategies:
            continue
        built = _architecture(spec, backbone_options)
        probes = [spec] + ([f"{spec}@{layer}" for layer in _probe_layers(built)] if opts.layers else [])
        out += [Candidate(p, "linear-probe") for p in probes[1:]]
        for size in _probe_sizes(spec, built, train, opts, backbone_options):
            out += [Candidate(p, "linear-probe", backbone_options={"image_size": size}) for p in probes]
    names = (default_baselines(train.modality, train.task)[:1] if opts.baselines == "auto"
             else list(opts.baselines))
    out += [Candidate(None, "scratch", {"variant": v}) for v in names]
    return out


def _architecture(spec: str, backbone_options: dict):
    """``spec`` built without weights on the meta device (no file read, no memory, no initialisation); a source
    that cannot be built that way is loaded in full; ``None`` for a spec that does not load (its own candidates
    name the error when they run)."""
    import torch

    from transferkit.backbones import load_backbone

    options = {k: v for k, v in backbone_options.items() if v is not None}
    try:
        with torch.device("meta"):
            return load_backbone(spec, **{**options, "pretrained": False})
    except Exception:  # a source that needs real tensors to be built (sentence: loads its weights, concat: sums widths)
        try:
            return load_backbone(spec, **options)
        except Exception:
            return None


def _probe_layers(backbone) -> list[str]:
    """``blockN`` from a third of the model's main stack to the one before its last (none for a layer spec or a
    model with fewer than 4 blocks)."""
    from transferkit.backbones.layers import LayerBackbone, layer_aliases

    if backbone is None or isinstance(backbone, LayerBackbone):
        return []
    n = len(layer_aliases(backbone))
    if n < 4:
        return []
    return [f"block{i}" for i in range(n // 3, n - 1)]


def _middle_layers(spec: str, backbone_options: dict) -> list[str]:
    """The intermediate layers auto probes for ``spec`` (see :func:`_probe_layers`)."""
    return _probe_layers(_architecture(spec, backbone_options))


def _probe_sizes(spec: str, built, train: TaskData, opts: AutoOptions, backbone_options: dict) -> list[int]:
    """Image sizes, other than the given one, at which the probes run again (images only)."""
    if built is None or train.modality != "image" or getattr(built, "modality", None) != "image":
        return []
    given = backbone_options.get("image_size")
    if opts.sizes != "auto":
        return [s for s in opts.sizes if s != given]
    if given is None:  # the source's native size: nothing larger to try
        return []
    native = _architecture(spec, {**backbone_options, "image_size": None})
    limit = getattr(getattr(native, "preprocess", None), "size", None)
    return [s for s in (2 * given, 4 * given) if limit is not None and s <= limit]


def _evaluate(cand: Candidate, fold: int, train: TaskData, fit_idx, held_idx, config: TrainConfig,
              backbone_options: dict, metric: str, progress: bool) -> None:
    """Train ``cand`` on the fold's training part and score it on the held-out part."""
    from transferkit.errors import TransferkitError

    part, held = train.subset(fit_idx), train.subset(held_idx)
    strategy = make_strategy(cand.strategy, cand.options or None)
    cfg, bb_opts = candidate_settings(cand, replace(config, progress=False), backbone_options)
    try:
        run = train_and_score(cand.backbone, strategy, part, None, held, cfg, bb_opts)
    except TransferkitError as err:  # a strategy that does not take this data or backbone: named, not fatal
        cand.status = f"refused: {err}"
        return
    cand.scores[fold] = float(run.metrics[metric])
    cand.outputs[fold] = run.outputs
    cand.seconds += run.seconds
    cand.status = "evaluated"
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"  [dim]auto fold {fold + 1}: {cand.label}: {metric}={cand.scores[fold]:.3f} "
                                   f"({run.seconds:.1f}s)[/dim]", soft_wrap=True)


def candidate_settings(cand: Candidate, config: TrainConfig, backbone_options: dict) -> tuple[TrainConfig, dict]:
    """Training settings and backbone options of ``cand``: the user's for transfer, the baseline's own recipe
    for scratch (as in ``compare`` and ``--check-transfer``)."""
    if cand.is_scratch:
        return baseline_config(config), {}
    return config, {**backbone_options, **cand.backbone_options}


def _halve(alive: list[Candidate], metric: str) -> list[Candidate]:
    """The better half (rounded up) of the transfer candidates by mean score so far; baselines always go on."""
    sign = 1 if higher_is_better(metric) else -1
    transfer = sorted((c for c in alive if not c.is_scratch), key=lambda c: (-sign * c.mean(), c.cost))
    keep = transfer[:math.ceil(len(transfer) / 2)]
    for c in transfer[len(keep):]:
        c.status = f"stopped by halving after {len(c.scores)} fold(s)"
    return keep + [c for c in alive if c.is_scratch]


def _pooled(cand: Candidate, folds, train: TaskData, keys) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold outputs of ``cand`` on the folds ``keys`` and their targets, in one array each."""
    targets = np.concatenate([np.asarray(train.targets)[folds[k][1]] for k in keys])
    return targets, np.concatenate([cand.outputs[k] for k in keys])


def _verdict(finalists: list[Candidate], train: TaskData, folds, metric: str, seed: int, keys: list[int]) -> dict:
    """The best transfer finalist against the scratch baseline, paired over their shared out-of-fold items."""
    sign = 1 if higher_is_better(metric) else -1
    transfer = [c for c in finalists if not c.is_scratch]
    scratch = [c for c in finalists if c.is_scratch]
    if not transfer or not scratch:
        return {"verdict": "no baseline", "explanation": "No scratch baseline was cross-validated beside the transfer "
                                                          "candidates." if transfer else "Only baselines finished."}
    best_t = max(transfer, key=lambda c: sign * c.mean(keys))
    best_s = max(scratch, key=lambda c: sign * c.mean(keys))
    targets, out_t = _pooled(best_t, folds, train, keys)
    _, out_s = _pooled(best_s, folds, train, keys)
    a, b, scale = per_item_values(train.task, targets, out_t, out_s)
    gain, low, high = (v * scale for v in bootstrap_difference(a, b, seed=seed))
    verdict = judge(gain, low, high)
    pts = 100 if is_fraction_metric(metric) else 1
    unit = " points" if pts == 100 else ""
    sentence = {"positive transfer": "Transfer helped.", "no clear gain": "No significant difference from "
                "training from scratch.", "negative transfer": "Transfer hurt: the model trained from scratch "
                "was better."}[verdict]
    return {"verdict": verdict, "transfer": best_t.label, "baseline": best_s.label, "metric": metric,
            "gain": gain, "gain_low": low, "gain_high": high,
            "interval": f"95% paired bootstrap over {len(targets)} out-of-fold training items",
            "explanation": f"{best_t.label} vs {best_s.label} in cross-validation: {metric} gain "
                           f"{pts * gain:+.1f}{unit} (95% paired bootstrap interval {pts * low:+.1f} to "
                           f"{pts * high:+.1f} over {len(targets)} out-of-fold items). {sentence}"}


def _reason(winner: Candidate, finalists: list[Candidate], metric: str, n: int, k: int, verdict: dict,
            keys: list[int]) -> str:
    sign = 1 if higher_is_better(metric) else -1
    others = sorted((c for c in finalists if c is not winner), key=lambda c: -sign * c.mean(keys))
    text = (f"{winner.label} had the best mean {metric} ({winner.mean(keys):.3f}) over {len(keys)} of {k} "
            f"cross-validation folds of the {n} training items")
    if others:
        text += ", ahead of " + ", ".join(f"{c.label} ({c.mean(keys):.3f})" for c in others[:3])
    text += "."
    if winner.is_scratch:
        text += " No transfer candidate beat training from scratch: " + verdict.get("explanation", "")
    elif verdict.get("verdict") not in (None, "no baseline"):
        text += " " + verdict["explanation"]
    return text


def search_and_train(backbones, train: TaskData, val, test, config: TrainConfig, backbone_options: dict,
                     options: AutoOptions | dict | None = None, *, progress: bool = False):
    """The search on ``train``, then its winner trained on all of ``train`` and scored (``compare``'s auto run).

    Returns:
        ``(run, search)``: the winner's :class:`~transferkit.workflows.runs.Run` (its ``seconds`` include the
        search's) and the :class:`AutoSearch`.
    """
    found = search(backbones, train, config, backbone_options, options, progress=progress)
    win = found.winner
    strategy = make_strategy(win.strategy, win.options or None)
    cfg, bb_opts = candidate_settings(win, config, backbone_options)
    run = train_and_score(win.backbone, strategy, train, val, test, cfg, bb_opts)
    run.seconds += found.seconds
    return run, found
