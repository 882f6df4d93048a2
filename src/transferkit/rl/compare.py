"""Transfer strategies against training from scratch over seeds, on one or more target variants.

Every ``(target, strategy, seed)`` trains for the same number of target
environment steps with the same evaluation grid; ``scratch`` is the same
algorithm and network from its initialisation. The runs table has the shape of
:mod:`transferkit.evaluation.stats` (``experiment`` = target,
``labels_per_class`` = the step budget, ``kind`` = transfer / scratch), so
:func:`~transferkit.evaluation.stats.summarize` gives mean ± 95% CI and
:func:`~transferkit.evaluation.stats.transfer_verdicts` the same
negative-transfer verdict as ``transferkit compare``: transfer helped only if
the paired-by-seed interval of its gain over scratch lies above 0.

Example:
    >>> res = compare_transfer("src", ["CartPole-v1:length=1.0"], seeds=5, steps=20_000)  # doctest: +SKIP
    >>> res.verdicts[["experiment", "strategy", "verdict"]]                             # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from transferkit.errors import ConfigError
from transferkit.evaluation.stats import summarize, transfer_verdicts
from transferkit.export.output_lock import atomic_dir, check_writable
from transferkit.rl.metrics import HIGHER_IS_BETTER, METRICS, fmt_ci, learning_curves_png
from transferkit.rl.strategies import L2SP_WEIGHT, check_strategy
from transferkit.rl.training import default_threshold, transfer
from transferkit.rl.variants import check_env

#: The metric the verdict is read from by default: the area under the curve covers jumpstart and speed.
VERDICT_METRIC = "auc"


@dataclass
class CompareResult:
    """Runs (one row per target, strategy and seed), summary (mean ± 95% CI), verdicts, curves."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    curves: dict = field(default_factory=dict)
    path: Path | None = None


def _label(strategy: str, source_name: str, several: bool) -> str:
    return strategy if strategy == "scratch" or not several else f"{strategy}@{source_name}"


def compare_transfer(sources: str | Path | dict[str, str | Path], targets: str | Sequence[str],
                     strategies: Sequence[str] = ("finetune", "frozen-features", "l2-sp"), *, seeds: int = 5,
                     steps: int = 20_000, eval_every: int = 2_000, eval_episodes: int = 5,
                     threshold: float | None = None, hyperparameters: dict | None = None,
                     l2sp_weight: float = L2SP_WEIGHT, deterministic_eval: bool = False,
                     out: str | Path | None = None, overwrite: bool = False, on_run: Callable[[dict], None] | None = None) -> CompareResult:
    """Run each strategy and ``scratch`` for ``seeds`` seeds on each target; summarise and judge.

    Args:
        sources: a source bundle, or ``{name: bundle}`` to compare sources (strategies are then named
            ``finetune@name``); ``scratch`` runs once per target and seed whatever the number of sources.
            A list of bundles instead of one gives each seed its own source policy (seed i uses the i-th), so
            the spread of source quality enters the intervals.
        targets: target variant specs.
        strategies: transfer strategies (``scratch`` is always added); ``finetune@name`` runs a strategy
            from one of several sources only.
        seeds: seeds 0 .. seeds-1; a transfer run and the scratch run of one seed share the seed.
        steps, eval_every, eval_episodes: the target budget and its evaluation grid.
        threshold: the return of time-to-threshold (default: the first target's own reward threshold).
        deterministic_eval: evaluate with the most likely action (default: sampled actions; see
            :func:`~transferkit.rl.envs.learn_with_curve`).
        out: a folder for runs.csv, summary.csv, verdicts.csv, curves.csv, learning_curves.png, report.md.
        on_run: called with each finished run's row (progress).
    """
    sources = sources if isinstance(sources, dict) else {"source": sources}
    targets = [targets] if isinstance(targets, str) else list(targets)
    plan_for = _plan(sources, [s for s in strategies if s != "scratch"])
    if not targets:
        raise ConfigError("Give at least one target variant.")
    if seeds < 1:
        raise ConfigError(f"The 'seeds' parameter must be an int in [1, inf). Got {seeds!r} instead.")
    targets = [str(check_env(t)) for t in targets]  # every target is checked before the first run
    if out is not None:
        check_writable(out, overwrite)
    threshold = default_threshold(targets[0]) if threshold is None else threshold
    rows, curves = [], {}
    several = len(sources) > 1
    first_source = next(iter(sources.values()))
    for target in targets:
        plan = [*plan_for, ("", first_source, "scratch")]
        for seed in range(seeds):
            for name, path, strategy in plan:
                label = _label(strategy, name, several)
                start = time.perf_counter()
                res = transfer(_for_seed(path, seed), target, strategy, steps=steps, seed=seed, hyperparameters=hyperparameters,
                               l2sp_weight=l2sp_weight, eval_every=eval_every, eval_episodes=eval_episodes,
                               threshold=threshold, deterministic_eval=deterministic_eval)
                seconds = time.perf_counter() - start
                row = {"experiment": target, "labels_per_class": steps, "strategy": label,
                       "kind": "scratch" if strategy == "scratch" else "transfer", "seed": seed,
                       **{m: res.metrics[m] for m in METRICS}, "seconds": round(seconds, 2),
                       "s_per_10k_steps": round(seconds / max(steps, 1) * 10_000, 2)}
                rows.append(row)
                curves.setdefault(target, {}).setdefault(label, []).append((res.curve.steps, res.curve.means))
                if on_run is not None:
                    on_run(row)
    runs = pd.DataFrame(rows)
    summary = _summary(runs)
    verdicts = transfer_verdicts(runs, VERDICT_METRIC, HIGHER_IS_BETTER[VERDICT_METRIC])
    result = CompareResult(runs, summary, verdicts, curves)
    if out is not None:
        result.path = write_compare(result, out, threshold=threshold, overwrite=overwrite,
                                    settings={"sources": {k: str(v) if isinstance(v, (str, Path)) else
                                                          [str(x) for x in v] for k, v in sources.items()}, "targets": targets,
                                              "strategies": [_label(s, n, several) for n, _, s in plan_for],
                                              "seeds": seeds, "steps": steps,
                                              "eval_every": eval_every, "eval_episodes": eval_episodes,
                                              "threshold": threshold, "hyperparameters": hyperparameters or {},
                                              "l2sp_weight": l2sp_weight,
                                              "deterministic_eval": deterministic_eval})
    return result


def _for_seed(source, seed: int):
    """The bundle of one seed: a list of bundles holds one source policy per seed (used in turn)."""
    return source[seed % len(source)] if isinstance(source, (list, tuple)) else source


def _plan(sources: dict, strategies: Sequence[str]) -> list[tuple[str, object, str]]:
    """``(source name, bundle, strategy)`` for each transfer run of a seed; ``strategy@name`` picks one source."""
    plan = []
    for item in strategies:
        strategy, _, only = item.partition("@")
        check_strategy(strategy)
        if only and only not in sources:
            raise ConfigError(f"Strategy {item!r} names the source {only!r}, which is not given. Sources: "
                              f"{', '.join(sources)}.")
        plan += [(name, path, strategy) for name, path in sources.items() if not only or name == only]
    return plan


def _summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI per target and strategy for each metric; ``reached`` counts the seeds that hit the threshold."""
    keys = ["experiment", "strategy", "kind"]
    parts = []
    for metric in METRICS:
        s = summarize(runs, metric, keys)
        parts.append(s.rename(columns={c: f"{metric}_{c}" for c in ("n", "mean", "ci_low", "ci_high", "std")}))
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p, on=keys)
    reached = runs.groupby(keys, sort=False)["time_to_threshold"].apply(lambda s: int(s.notna().sum()))
    out = out.merge(reached.rename("reached").reset_index(), on=keys)
    out["seeds"] = runs.groupby(keys, sort=False).size().to_numpy()
    out["s_per_10k_steps"] = runs.groupby(keys, sort=False)["s_per_10k_steps"].mean().to_numpy()
    return out.rename(columns={"experiment": "target"})


def markdown_table(summary: pd.DataFrame, steps: int) -> str:
    """The summary as a markdown table: one row per target and strategy, mean ± 95% CI half-width."""
    lines = ["| target | strategy | jumpstart | steps to threshold (seeds reaching it) | AUC (mean return) | "
             "final return | s / 10k steps |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        ttt = (fmt_ci(r["time_to_threshold_mean"], r["time_to_threshold_ci_low"], r["time_to_threshold_ci_high"], 0)
               if r["reached"] else f"> {steps}")
        lines.append(f"| {r['target']} | {r['strategy']} | "
                     f"{fmt_ci(r['jumpstart_mean'], r['jumpstart_ci_low'], r['jumpstart_ci_high'])} | "
                     f"{ttt} ({r['reached']}/{r['seeds']}) | "
                     f"{fmt_ci(r['auc_mean'], r['auc_ci_low'], r['auc_ci_high'])} | "
                     f"{fmt_ci(r['asymptotic_mean'], r['asymptotic_ci_low'], r['asymptotic_ci_high'])} | "
                     f"{r['s_per_10k_steps']:.1f} |")
    return "\n".join(lines) + "\n"


def write_compare(result: CompareResult, out: str | Path, *, threshold, settings: dict, overwrite: bool = False) -> Path:
    """Write the tables, the curves, the figure and a markdown report into ``out`` (atomically)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        result.runs.to_csv(tmp / "runs.csv", index=False)
        result.summary.to_csv(tmp / "summary.csv", index=False)
        result.verdicts.to_csv(tmp / "verdicts.csv", index=False)
        curve_rows = [{"target": t, "strategy": s, "seed": i, "steps": st, "mean_return": m}
                      for t, by in result.curves.items() for s, cs in by.items()
                      for i, (xs, ys) in enumerate(cs) for st, m in zip(xs, ys)]
        pd.DataFrame(curve_rows).to_csv(tmp / "curves.csv", index=False)
        (tmp / "learning_curves.png").write_bytes(learning_curves_png(result.curves, threshold=threshold))
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(report_markdown(result, settings, threshold), encoding="utf-8")
    return Path(out)


def report_markdown(result: CompareResult, settings: dict, threshold) -> str:
    """The report: settings, the table, the verdicts (on AUC), the figure."""
    lines = ["# RL transfer: strategies vs scratch", "",
             f"Sources: {', '.join(f'{k} = {v}' for k, v in settings['sources'].items())}. "
             f"{settings['seeds']} seeds, {settings['steps']} target environment steps, evaluation every "
             f"{settings['eval_every']} steps over {settings['eval_episodes']} episodes "
             f"({'deterministic' if settings['deterministic_eval'] else 'sampled'} actions). Threshold: {threshold}.",
             "", "Mean ± 95% CI half-width over seeds (Student t).", "",
             markdown_table(result.summary, settings["steps"]), "## Verdicts (area under the learning curve)", ""]
    lines += [f"- {v['experiment']}, **{v['strategy']}**: {v['verdict']}. {v['explanation']}"
              for _, v in result.verdicts.iterrows()]
    lines += ["", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)
