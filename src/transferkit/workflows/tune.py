"""``tune``: an Optuna search over a strategy's hyperparameters, scored on validation.

Every trial is one :func:`transferkit.workflows.fit.fit` on the same labelled draw and the
same stratified validation split (both fixed by ``seed``); no test data reaches
the trials, so the objective is the validation metric and the test split stays
untouched for the final evaluation. The sampler is Optuna's TPE (Bergstra et al.
2011, https://papers.nips.cc/paper/4443-algorithms-for-hyper-parameter-optimization).

A search space maps TrainConfig or strategy Config fields to a spec:

* ``["log", low, high]``: a float drawn log-uniformly (learning rates, ``C``);
* ``["float", low, high]``: a float drawn uniformly;
* ``["int", low, high]``: an int in ``[low, high]``;
* ``["choice", a, b, ...]``: one of the values.

With ``storage`` (a SQLite file) the study persists: calling again with the
same storage and study name continues until ``trials`` trials have completed,
so an interrupted search resumes where it stopped. A running trial sends a
heartbeat every :data:`HEARTBEAT_S` seconds (Optuna's heartbeat); a trial whose
process was killed (``kill -9``, a lost machine) stops beating and is marked
``FAIL`` once :data:`GRACE_S` seconds have passed, at the start of the next trial
of any search on that storage, instead of staying ``RUNNING`` forever.

With ``engine="ray"`` (``--engine ray``) the trials run in parallel: one Ray task per available CPU
(per GPU on a GPU cluster) runs this same search on the shared study, each worker with its own sampler
seed, until the study holds ``trials`` completed trials (a worker that starts one as the last is
finishing may add one more). The study needs a storage every worker reads: ``storage`` (on a cluster,
a SQLite file on a filesystem every node mounts), else a temporary SQLite file on this machine.
Parallel TPE proposes from fewer finished trials than a sequential search, so its trials differ from
the local engine's.

Example:
    >>> from transferkit.workflows.tune import tune                            # doctest: +SKIP
    >>> r = tune("efficientnet-lite:0", "fashion-mnist", "finetune", trials=20,  # doctest: +SKIP
    ...          labels_per_class=10, image_size=64, storage="study.db",
    ...          space={"lr": ["log", 1e-5, 1e-2], "epochs": ["int", 2, 30]}, out="runs/tuned")
    >>> r.best_params, r.best_value                                              # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from transferkit.errors import ConfigError
from transferkit.workflows.engine import Engine, LocalEngine, make_engine

#: Seconds between a running trial's heartbeats, and silence after which it counts as dead (SQLite studies).
HEARTBEAT_S = 10
GRACE_S = 30

__all__ = ["KINDS", "TuneResult", "check_space", "default_space", "tune"]

KINDS = ("log", "float", "int", "choice")

_FINETUNE_SPACE = {
    "lr": ["log", 1e-5, 1e-2],
    "head_lr": ["log", 1e-4, 1e-1],
    "epochs": ["int", 3, 30],
    "dropout": ["float", 0.0, 0.5],
    "label_smoothing": ["float", 0.0, 0.2],
    "lr_decay": ["float", 0.5, 1.0],
}
DEFAULT_SPACES: dict[str, dict[str, list]] = {
    "finetune": _FINETUNE_SPACE,
    "gradual-unfreeze": {**_FINETUNE_SPACE, "head_epochs": ["int", 0, 3]},
    # Closed-form head on frozen features: no loop settings matter. Its C is
    # otherwise picked from a 4-point grid on validation; tuning searches it finely.
    "linear-probe": {"C": ["log", 1e-3, 1e2]},
    "scratch": {"lr": ["log", 1e-4, 1e-2], "epochs": ["int", 20, 150], "weight_decay": ["log", 1e-4, 1e-1]},
}


@dataclass
class TuneResult:
    """What :func:`tune` returns.

    Attributes:
        best_params: the best completed trial's parameters.
        best_value: its validation ``metric``.
        metric: the objective (a validation metric); ``direction`` says which way is better.
        trials: one row per trial: ``number``, ``state``, ``value``, ``seconds``, then one column per parameter.
        study_name: the Optuna study's name (give it again to resume).
        storage: the SQLite file the study lives in, or ``None`` (in memory).
        path: the bundle of the best parameters, refitted, when ``out`` was given.
    """

    best_params: dict
    best_value: float
    metric: str
    direction: str
    trials: pd.DataFrame
    study_name: str
    storage: Path | None = None
    path: Path | None = None


def default_space(strategy: str) -> dict[str, list]:
    """The default search space of ``strategy`` (a copy); ConfigError where it has none."""
    if strategy not in DEFAULT_SPACES:
        raise ConfigError(f"No default search space for strategy '{strategy}'; pass space= (--space KEY=SPEC). "
                          f"Strategies with a default: {', '.join(sorted(DEFAULT_SPACES))}.")
    return {k: list(v) for k, v in DEFAULT_SPACES[strategy].items()}


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def check_space(space: dict, strategy: str, *, fixed_train: dict | None = None,
                fixed_strategy: dict | None = None) -> dict[str, list]:
    """Validate ``space`` for ``strategy``: known keys, well-formed specs, bounds the configs accept.

    Returns:
        The space with every spec as a list (``["log", 1e-5, 1e-2]``).

    Raises:
        ConfigError: an unknown key (the message names the valid ones), a bad
            spec or range, or a key that is also fixed.
    """
    from transferkit.strategies import STRATEGIES
    from transferkit.training import TrainConfig

    config_cls = STRATEGIES.get(strategy).Config
    train_fields, strat_fields = _fields(TrainConfig), _fields(config_cls)
    fixed_train, fixed_strategy = fixed_train or {}, fixed_strategy or {}
    if not space:
        raise ConfigError("The search space is empty: give at least one KEY=SPEC.")
    unknown = sorted(set(space) - set(train_fields) - set(strat_fields))
    if unknown:
        raise ConfigError(f"Unknown search-space key(s) {', '.join(map(repr, unknown))} for strategy '{strategy}'. "
                          f"Valid keys: training {', '.join(sorted(train_fields))}; "
                          f"strategy {', '.join(sorted(strat_fields)) or 'none'}.")
    out = {}
    for key, spec in space.items():
        if key in fixed_train or key in fixed_strategy:
            raise ConfigError(f"'{key}' is both fixed and in the search space; give it once.")
        spec = _check_spec(key, spec, (train_fields.get(key) or strat_fields[key]).type)
        values = spec[1:] if spec[0] == "choice" else spec[1:3]
        for value in values:  # the configs' own validation checks every bound (and every choice)
            if key in train_fields:
                _config(TrainConfig, {**fixed_train, key: value})
            else:
                _config(config_cls.from_dict, {**fixed_strategy, key: value})
        out[key] = spec
    return out


def _config(build, values: dict):
    try:
        return build(**values) if isinstance(build, type) else build(values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _check_spec(key: str, spec, annotation) -> list:
    if isinstance(spec, str) or not isinstance(spec, (list, tuple)) or not spec or spec[0] not in KINDS:
        raise ConfigError(f"Search-space spec of '{key}' must be a list [KIND, ...] with KIND one of "
                          f"{', '.join(KINDS)}, e.g. ['log', 1e-5, 1e-2]. Got {spec!r} instead.")
    kind, args = spec[0], list(spec[1:])
    if kind == "choice":
        if not args:
            raise ConfigError(f"Search-space spec of '{key}': 'choice' needs at least one value.")
        return [kind, *args]
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"Search-space spec of '{key}' must be ['{kind}', LOW, HIGH] with numbers. Got {spec!r} instead.")
    low, high = args
    if not low < high:
        raise ConfigError(f"Search-space range of '{key}' must have LOW < HIGH. Got [{low}, {high}] instead.")
    if kind == "log" and low <= 0:
        raise ConfigError(f"Search-space range of '{key}' is log-uniform, so LOW must be > 0. Got {low} instead.")
    if kind == "int" and not all(float(a).is_integer() for a in args):
        raise ConfigError(f"Search-space range of '{key}' is 'int', so LOW and HIGH must be whole. Got {spec!r} instead.")
    if kind in ("log", "float") and str(annotation).startswith("int"):
        raise ConfigError(f"'{key}' is an int field: use ['int', LOW, HIGH] (or 'choice'), not '{kind}'.")
    return [kind, int(low), int(high)] if kind == "int" else [kind, float(low), float(high)]


def _suggest(trial, key: str, spec: list):
    kind = spec[0]
    if kind == "log":
        return trial.suggest_float(key, spec[1], spec[2], log=True)
    if kind == "float":
        return trial.suggest_float(key, spec[1], spec[2])
    if kind == "int":
        return trial.suggest_int(key, spec[1], spec[2])
    return trial.suggest_categorical(key, spec[1:])


def _split_params(params: dict) -> tuple[dict, dict]:
    """(TrainConfig fields, strategy options) of a trial's parameters."""
    from transferkit.training import TrainConfig

    train_fields = _fields(TrainConfig)
    return ({k: v for k, v in params.items() if k in train_fields},
            {k: v for k, v in params.items() if k not in train_fields})


def tune(backbone: str, data, strategy: str = "finetune", *, space: dict | None = None, trials: int = 20,
         storage: str | Path | None = None, study_name: str | None = None, labels_per_class: int | None = None,
         val_fraction: float = 0.2, metric: str | None = None, seed: int = 0, out: str | Path | None = None,
         overwrite: bool = False, timeout_minutes: float | None = None, image_size: int | None = None,
         max_length: int | None = None, strategy_options: dict | None = None, engine: str | Engine = "local",
         address: str | None = None, **fixed_train_options: Any) -> TuneResult:
    """Search ``strategy``'s hyperparameters on ``backbone`` and ``data`` with Optuna (TPE).

    Args:
        backbone: a backbone spec, as for :func:`transferkit.fit`.
        data: training data, as for :func:`transferkit.fit`; a built-in test split is never used.
        strategy: a registered strategy name.
        space: ``{key: spec}`` over TrainConfig and strategy Config fields (see the
            module docstring); default: :data:`DEFAULT_SPACES` of the strategy.
        trials: completed trials wanted in the study (failed ones do not count).
        storage: a SQLite file; the study persists there and a later call resumes it.
        study_name: default: derived from strategy, backbone and the data fingerprint.
        labels_per_class: draw this many labelled examples per class (seeded), once for all trials.
        val_fraction: the stratified validation split every trial is scored on.
        metric: the validation metric to optimise (default: the task's primary metric).
        seed: the draw, the split, the training seed and the sampler's seed.
        out: refit the best parameters on the same draw and save that bundle here; its
            manifest records the study under ``"tuning"``.
        timeout_minutes: stop starting new trials after this long.
        image_size, max_length: backbone options, as for :func:`transferkit.fit`.
        strategy_options: strategy options held fixed in every trial.
        engine, address: ``"ray"`` runs trials in parallel Ray tasks on a local Ray or the cluster at
            ``address`` (see the module docstring).
        fixed_train_options: TrainConfig fields held fixed in every trial (``batch_size=16``).

    Raises:
        ConfigError: a bad space, metric, number of trials, or no validation split.
    """
    from transferkit.evaluation import higher_is_better
    from transferkit.export.bundle import check_writable
    from transferkit.tasks import primary_metric
    from transferkit.workflows.fit import prepare_data

    strategy_options, fixed, space = _check_request(strategy, strategy_options, space, trials, seed,
                                                    fixed_train_options)
    engine = make_engine(engine, address)
    if out is not None:
        check_writable(out, overwrite)
    train, val, _ = prepare_data(data, labels_per_class=labels_per_class, val_fraction=val_fraction, seed=seed)
    if val is None or not len(val):
        raise ConfigError(f"Tuning needs a validation split; val_fraction={val_fraction} held out nothing "
                          f"of {len(train)} examples.")
    metric = metric or primary_metric(train.task)
    direction = "maximize" if higher_is_better(metric) else "minimize"
    study_name = study_name or f"{strategy}-{backbone}-{train.fingerprint()[:10]}"
    run = {"strategy": strategy, "strategy_options": strategy_options, "image_size": image_size,
           "max_length": max_length, "fixed": fixed}
    attrs = {"strategy": strategy, "backbone": str(backbone), "metric": metric,
             "data_fingerprint": train.fingerprint(), "space": json.dumps(space, sort_keys=True)}
    with engine, _shared_storage(storage, engine) as store:
        study = _quietly(_open_study, store, study_name, direction, seed, attrs)
        objective = (backbone, train, val, space, metric, run)
        if isinstance(engine, LocalEngine):
            jobs = [(study, study_name, seed, 0, trials, timeout_minutes, objective)]
        else:  # every worker loads the study from the storage and runs the same search on it
            jobs = [(str(store), study_name, seed, w, trials, timeout_minutes, objective)
                    for w in range(max(1, min(engine.workers, trials - _n_complete(study))))]
        engine.map(_search_worker, jobs)
        study = study if isinstance(engine, LocalEngine) else _quietly(_open_study, store, study_name, direction,
                                                                        seed, attrs)
        if _n_complete(study) == 0:
            raise ConfigError(f"Study '{study_name}' has no completed trial (timeout too short?).")
        result = TuneResult(dict(study.best_params), float(study.best_value), metric, direction, trials_frame(study),
                            study_name, Path(storage) if storage is not None else None)
    if out is not None:
        result.path = _refit(backbone, train, val, result, run, out, overwrite)
    return result


def _quietly(fn, *args):
    """``fn(*args)`` with Optuna's per-trial log lines off (the trials table replaces them)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return fn(*args)
    finally:
        optuna.logging.set_verbosity(verbosity)


@contextmanager
def _shared_storage(storage, engine: Engine) -> Iterator[Path | None]:
    """The study's SQLite file: ``storage``; for parallel workers without one, a temporary file on this machine."""
    if storage is not None or isinstance(engine, LocalEngine):
        yield Path(storage) if storage is not None else None
        return
    if getattr(engine, "address", None) not in (None, "auto"):
        raise ConfigError("tune with engine='ray' on a remote cluster (--address) needs storage= (--storage): a "
                          "SQLite file on a filesystem every node mounts, which holds the study its workers share.")
    with tempfile.TemporaryDirectory(prefix="transferkit-tune-") as tmp:
        yield Path(tmp) / "study.db"


def _search_worker(study, study_name: str, seed: int, worker: int, trials: int, timeout_minutes: float | None,
                   objective: tuple) -> None:
    """One worker of a search: ``study``, or the study loaded from the SQLite file ``study``, searched to ``trials``."""
    import optuna

    if not isinstance(study, optuna.Study):
        study = optuna.load_study(study_name=study_name, storage=_rdb(study))
        # Each worker its own sampler stream: the same seed would propose the same first trials in every worker.
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials) + 7919 * worker)
    _quietly(_search, study, _objective(*objective), trials, timeout_minutes)


def _rdb(path):
    """Optuna's storage on the SQLite file ``path``, with the heartbeat that fails the trials of killed workers."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(path)}", heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def _check_request(strategy: str, strategy_options: dict | None, space: dict | None, trials: int, seed: int,
                   fixed_train_options: dict) -> tuple[dict, dict, dict[str, list]]:
    """Before any work: the strategy options, the fixed TrainConfig fields and the search space, checked."""
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig

    if trials < 1:
        raise ConfigError(f"The 'trials' parameter of tune must be an int in [1, inf). Got {trials!r} instead.")
    strategy_options = dict(strategy_options or {})
    make_strategy(strategy, strategy_options)  # unknown strategy / bad fixed options: fail before any work
    fixed = {"progress": False, **fixed_train_options, "seed": seed}
    _config(TrainConfig, fixed)
    space = check_space(space if space is not None else default_space(strategy), strategy,
                        fixed_train=fixed, fixed_strategy=strategy_options)
    return strategy_options, fixed, space


def _search(study, objective, trials: int, timeout_minutes: float | None) -> None:
    """Run trials until ``trials`` have completed in the study (earlier runs' included)."""
    import optuna

    remaining = trials - _n_complete(study)
    if remaining <= 0:
        return
    # MaxTrialsCallback also stops this worker when others sharing the storage complete the rest.
    study.optimize(objective, n_trials=remaining, timeout=timeout_minutes * 60 if timeout_minutes is not None else None,
                   callbacks=[optuna.study.MaxTrialsCallback(trials, states=(_complete(),))])


def _complete():
    from optuna.trial import TrialState

    return TrialState.COMPLETE


def _n_complete(study) -> int:
    return len(study.get_trials(deepcopy=False, states=(_complete(),)))


def _open_study(storage, name: str, direction: str, seed: int, attrs: dict):
    """Create or load the study; refuse to resume one made for another task, space or metric."""
    import optuna

    store = None
    if storage is not None:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        store = _rdb(storage)
    study = optuna.create_study(storage=store, study_name=name, direction=direction, load_if_exists=True)
    old = study.user_attrs
    for key, value in attrs.items():
        if key in old and old[key] != value:
            raise ConfigError(f"Study '{name}' in {storage} was made with a different {key} "
                              f"({old[key]!r}, now {value!r}); pick another study name or storage.")
        if key not in old:
            study.set_user_attr(key, value)
    # Reseeding with the trial count: a resumed search continues the sequence
    # instead of replaying the first trials' random draws.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def _objective(backbone, train, val, space: dict, metric: str, run: dict):
    from transferkit.workflows import fit as fitting  # looked up per call, so a test can patch fitting.fit

    def objective(trial) -> float:
        params = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        train_params, strat_params = _split_params(params)
        result = fitting.fit(backbone, train, run["strategy"],
                             strategy_options={**run["strategy_options"], **strat_params},
                             val_data=val, image_size=run["image_size"], max_length=run["max_length"], report=False,
                             **run["fixed"], **train_params)
        metrics = result.metrics
        # No test data is passed, so fit scores the validation split; never optimise on test.
        assert metrics.get("evaluated_on") == "validation", metrics.get("evaluated_on")
        if metric not in metrics:
            names = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise ConfigError(f"Unknown metric '{metric}' for {train.task} data. Available: {', '.join(names)}.")
        trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return float(metrics[metric])

    return objective


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, value, seconds, then the parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else math.nan
        rows.append({"number": t.number, "state": t.state.name, "value": t.value if t.value is not None else math.nan,
                     "seconds": round(seconds, 2), **t.params})
    return pd.DataFrame(rows, columns=None if rows else ["number", "state", "value", "seconds"])


def _refit(backbone, train, val, result: TuneResult, run: dict, out, overwrite: bool) -> Path:
    """Refit the best parameters on the same draw, save the bundle, and record the study in its manifest."""
    from transferkit.workflows import fit as fitting

    train_params, strat_params = _split_params(result.best_params)
    fitted = fitting.fit(backbone, train, run["strategy"],
                         strategy_options={**run["strategy_options"], **strat_params},
                         val_data=val, out=out, overwrite=overwrite, image_size=run["image_size"],
                         max_length=run["max_length"], **run["fixed"], **train_params)
    complete = result.trials[result.trials["state"] == "COMPLETE"]
    info = {"study_name": result.study_name, "storage": str(result.storage) if result.storage else None,
            "metric": result.metric, "direction": result.direction, "evaluated_on": "validation",
            "n_trials": len(result.trials), "n_complete": len(complete),
            "best_value": result.best_value, "best_params": result.best_params,
            "refit_value": fitted.metrics.get(result.metric)}
    _add_to_manifest(Path(out), "tuning", info)
    return Path(out)


def _add_to_manifest(path: Path, key: str, value: dict) -> None:
    """Add ``key`` to a saved bundle's manifest, atomically (temporary file, then rename)."""
    from transferkit.export.bundle import MANIFEST, read_manifest

    manifest = {**read_manifest(path), key: value}
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".partial", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
        os.replace(tmp, path / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
