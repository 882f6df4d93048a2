"""RL transfer benchmark: source policies on physics variants, transfer strategies vs scratch over seeds.

Sections (each writes OUT/<section>/ with compare's tables, curves and plot, and OUT/<section>.json):

Each seed has its own source policy (seed i's target runs start from source i), so the spread of source
quality enters the intervals.

* cartpole: PPO source on CartPole-v1 (pole length 0.5, the default) -> targets length 1.0, length 2.0 and a
  heavier pole (masspole 0.5); finetune, frozen-features, l2-sp vs scratch. A randomised source
  (length 0.3..0.8) is compared with the single-variant source (finetune) on the far targets 1.0 and 2.0.
* acrobot: PPO source on Acrobot-v1 -> heavier links (LINK_MASS_1=1.5, LINK_MASS_2=2.0).
* pendulum: SAC source on Pendulum-v1 -> stronger gravity and a heavier pendulum (g=13, m=1.3).
* report: gathers the section files into OUT/README.md (tables, what was cut, the command).

Budgets are cut to fit a 2-core machine shared with other jobs; CUTS says what was cut and OUT/README.md
repeats it. Wall time per 10,000 steps is measured per run (training plus its evaluations) and, separately,
for training alone; peak memory is the process's maximum resident set size.

Usage:
    nice -n 10 .venv/bin/python benchmarks/rl_transfer.py --section all
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transferkit import rl
from transferkit.rl.compare import markdown_table

OUT = Path(__file__).parent / "results" / "rl_transfer"

SECTIONS = {
    "cartpole": {
        "algorithm": "PPO", "source_env": "CartPole-v1:length=0.5", "source_steps": 30_000,
        "randomised_env": "CartPole-v1:length=0.3..0.8",
        "targets": ["CartPole-v1:length=1.0", "CartPole-v1:length=2.0", "CartPole-v1:masspole=0.5"],
        "nearest": "CartPole-v1:length=1.0",
        "steps": 15_000, "eval_every": 1_500, "eval_episodes": 5, "threshold": 195.0,
        "hp": {}, "policy_kwargs": {},
    },
    "acrobot": {
        "algorithm": "PPO", "source_env": "Acrobot-v1", "source_steps": 30_000,
        "targets": ["Acrobot-v1:LINK_MASS_1=1.5,LINK_MASS_2=2.0"], "nearest": "Acrobot-v1:LINK_MASS_1=1.5,LINK_MASS_2=2.0",
        "steps": 10_000, "eval_every": 1_000, "eval_episodes": 3, "threshold": -150.0,
        "hp": {}, "policy_kwargs": {},
    },
    "pendulum": {
        "algorithm": "SAC", "source_env": "Pendulum-v1", "source_steps": 5_000,
        "targets": ["Pendulum-v1:g=13.0,m=1.3"], "nearest": "Pendulum-v1:g=13.0,m=1.3",
        "steps": 2_500, "eval_every": 500, "eval_episodes": 3, "threshold": -300.0,
        "hp": {"batch_size": 128, "learning_starts": 200}, "policy_kwargs": {"net_arch": [64, 64]},
    },
}
STRATEGIES = ["finetune", "frozen-features", "l2-sp"]

CUTS = {
    "cartpole": "source 30k steps (rl-zoo trains 100k); 15k target steps per run; evaluation every 1.5k steps "
                "over 5 sampled-action episodes; threshold 195 (CartPole-v0's), not v1's 475.",
    "acrobot": "source 30k steps (rl-zoo: 1M); 10k target steps per run; evaluation every 1k steps over 3 "
               "episodes; threshold -150 (the env's is -100).",
    "pendulum": "SAC with net_arch [64, 64] (SB3 default [256, 256]), batch 128 (256); source 5k steps "
                "(rl-zoo: 20k); 2.5k target steps per run (learning_starts 200); evaluation every 500 steps "
                "over 3 episodes; threshold -300.",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def train_only_seconds_per_10k(cfg: dict) -> float:
    """Training alone (no evaluations) of a fresh model for a short budget, scaled to 10,000 steps."""
    from transferkit.rl.algorithms import build_algorithm, recipe
    from transferkit.rl.envs import torch_threads, vec_env

    base = recipe(cfg["algorithm"], cfg["source_env"].split(":")[0])
    n = base.pop("n_envs", 1)
    kwargs = {**base.pop("policy_kwargs", {}), **cfg["policy_kwargs"]}
    steps = 2_000 if cfg["algorithm"] == "SAC" else 10_000
    model = build_algorithm(cfg["algorithm"], vec_env(cfg["source_env"], n_envs=n, seed=0),
                            hyperparameters={**base, **cfg["hp"]}, policy_kwargs=kwargs, seed=0)
    with torch_threads(1):
        start = time.perf_counter()
        model.learn(steps)
        return (time.perf_counter() - start) / steps * 10_000


def censored_ttt(runs, target: str, strategy: str, budget: int) -> tuple[float, bool]:
    """Mean steps to threshold over seeds, a run that never reached it counted at the budget (then a lower bound)."""
    rows = runs[(runs["experiment"] == target) & (runs["strategy"] == strategy)]
    values = rows["time_to_threshold"].astype(float)
    censored = bool(values.isna().any())
    return float(values.fillna(budget).mean()), censored


def run_section(name: str, seeds: int, out: Path) -> dict:
    cfg = SECTIONS[name]
    start = time.perf_counter()
    sources = {}
    src_info = {}
    source_envs = {"single": cfg["source_env"]}
    if cfg.get("randomised_env"):
        source_envs["randomised"] = cfg["randomised_env"]
    for label, env in source_envs.items():  # one source policy per seed: source quality varies a lot by seed
        sources[label] = []
        finals = []
        for seed in range(seeds):
            path = out / "sources" / f"{name}-{label}-seed{seed}"
            res = rl.train(env, cfg["algorithm"], steps=cfg["source_steps"], seed=seed, hyperparameters=cfg["hp"],
                           policy_kwargs=cfg["policy_kwargs"], eval_every=cfg["source_steps"],
                           eval_episodes=cfg["eval_episodes"], threshold=cfg["threshold"], out=path, overwrite=True)
            sources[label].append(path)
            finals.append(res.metrics["asymptotic"])
            print(f"[{name}] source {label} seed {seed} ({env}): final return {finals[-1]:.1f}", flush=True)
        src_info[label] = {"env": env, "steps": cfg["source_steps"], "final_returns": finals}
    strategies = [f"{s}@single" for s in STRATEGIES] if len(sources) > 1 else STRATEGIES
    if len(sources) > 1:
        strategies.append("finetune@randomised")
    res = rl.compare_transfer(sources, cfg["targets"], strategies, seeds=seeds, steps=cfg["steps"],
                              eval_every=cfg["eval_every"], eval_episodes=cfg["eval_episodes"],
                              threshold=cfg["threshold"], out=out / name, overwrite=True,
                              on_run=lambda r: print(f"[{name}] {r['experiment']} {r['strategy']} seed {r['seed']}: "
                                                     f"jumpstart {r['jumpstart']:.1f} AUC {r['auc']:.1f} "
                                                     f"ttt {r['time_to_threshold']} ({r['seconds']:.0f} s)",
                                                     flush=True))
    runs = res.runs
    ratios = []
    for target in cfg["targets"]:
        base, base_cens = censored_ttt(runs, target, "scratch", cfg["steps"])
        for strategy in sorted(set(runs[runs["experiment"] == target]["strategy"]) - {"scratch"}):
            mean, cens = censored_ttt(runs, target, strategy, cfg["steps"])
            ratio = mean / base if base > 0 else float("nan")
            ratios.append({"target": target, "strategy": strategy, "steps_to_threshold": mean,
                           "scratch_steps_to_threshold": base, "ratio": ratio,
                           "bound": "lower" if cens and not base_cens else "upper" if base_cens and not cens else
                           "unknown" if cens and base_cens else "exact"})
    result = {"section": name, "config": cfg, "cut": CUTS[name], "seeds": seeds, "sources": src_info,
              "table": markdown_table(res.summary, cfg["steps"]),
              "summary": json.loads(res.summary.to_json(orient="records")),
              "verdicts": json.loads(res.verdicts.drop(columns=["labels_per_class"]).to_json(orient="records")),
              "time_ratios": ratios, "train_only_s_per_10k_steps": round(train_only_seconds_per_10k(cfg), 2),
              "peak_rss_mb": round(peak_rss_mb(), 1), "wall_s": round(time.perf_counter() - start, 1),
              "torch_threads": 1, "versions": {"torch": torch.__version__, "numpy": np.__version__}}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return result


def _fmt_ratio(r: dict) -> str:
    if not math.isfinite(r["ratio"]):
        return "n/a"
    if r["bound"] == "unknown" and r["steps_to_threshold"] == r["scratch_steps_to_threshold"]:
        return "neither reached it within the budget in any seed"
    sign = {"lower": "≥ ", "upper": "≤ ", "unknown": "? ", "exact": ""}[r["bound"]]
    return f"{sign}{r['ratio']:.2f}×"


def report(out: Path, command: str) -> None:
    parts = ["# RL transfer benchmark", "", f"Command: `{command}`", "",
             "Produced by `benchmarks/rl_transfer.py`. Mean ± 95% CI half-width over seeds (Student t); AUC is the "
             "area under the learning curve divided by the steps (the mean evaluation return over training); "
             "jumpstart is the return before any target training; evaluations sample actions from the policy. "
             "The verdict is `transferkit compare`'s, on AUC, paired by seed against scratch.", ""]
    for name in SECTIONS:
        path = out / f"{name}.json"
        if not path.exists():
            parts += [f"## {name}", "", "Not run.", ""]
            continue
        r = json.loads(path.read_text())
        cfg = r["config"]
        parts += [f"## {name} ({cfg['algorithm']}, {r['seeds']} seeds)", "",
                  "Sources (one per seed, seed i's target runs start from source i): " + "; ".join(
                      f"{k} = `{v['env']}`, {v['steps']} steps, final return on its own variant per seed "
                      f"{', '.join(f'{x:.0f}' for x in v['final_returns'])}" for k, v in r["sources"].items()) + ".",
                  "", r["table"], f"Steps to threshold ({cfg['threshold']}), transfer / scratch (≥: some transfer "
                  f"seeds never reached it, counted at the budget; ≤: some scratch seeds never did):", ""]
        parts += [f"- {t['target']}, {t['strategy']}: {_fmt_ratio(t)}" for t in r["time_ratios"]]
        parts += ["", "Verdicts (AUC):", ""]
        parts += [f"- {v['experiment']}, {v['strategy']}: **{v['verdict']}** (gain {v['gain']:+.1f}, 95% CI "
                  f"{v['gain_low']:+.1f} to {v['gain_high']:+.1f})" for v in r["verdicts"]]
        parts += ["", f"Wall time: {r['wall_s'] / 60:.1f} min for the section; training alone "
                      f"{r['train_only_s_per_10k_steps']:.1f} s per 10,000 steps (1 torch thread); peak memory "
                      f"{r['peak_rss_mb']:.0f} MB (max RSS of the process).", "",
                  f"Cut to fit the machine: {r['cut']}", "", f"![{name}]({name}/learning_curves.png)", ""]
    (out / "README.md").write_text("\n".join(parts), encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", default="all", choices=[*SECTIONS, "all", "report"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true", help="a check of this script: budgets / 20 (not a result)")
    args = p.parse_args()
    if args.quick:
        for cfg in SECTIONS.values():
            for key in ("source_steps", "steps", "eval_every"):
                cfg[key] = max(cfg[key] // 20, 100)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(SECTIONS) if args.section == "all" else [] if args.section == "report" else [args.section]
    for name in names:
        run_section(name, args.seeds, args.out)
    report(args.out, "nice -n 10 .venv/bin/python benchmarks/rl_transfer.py --section all"
           + (f" --seeds {args.seeds}" if args.seeds != 5 else ""))


if __name__ == "__main__":
    sys.exit(main())
