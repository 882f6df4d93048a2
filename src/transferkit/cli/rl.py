"""``transferkit rl``: train a source policy, transfer it to a target variant, evaluate, export, compare.

Needs the ``rl`` extra (gymnasium, stable-baselines3). Environment variants are
specs like ``CartPole-v1:length=1.0,masspole=0.3``; ``length=0.3..0.8`` draws
the value at every reset (domain randomisation).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import console, examples, parse_list, parse_options
from transferkit.cli.errors import ErrorHandlingGroup
from transferkit.errors import ConfigError

ENV_HELP = "Environment variant: ENV_ID[:NAME=VALUE,NAME=LOW..HIGH], e.g. CartPole-v1:length=1.0 or length=0.3..0.8."
HP_HELP = "Hyper-parameter of the stable-baselines3 algorithm, KEY=VALUE (repeatable), e.g. --hp learning_rate=3e-4."

app = typer.Typer(name="rl", cls=ErrorHandlingGroup, no_args_is_help=True, add_completion=False,
                  help="Reinforcement-learning transfer: gymnasium environments, stable-baselines3 policies.")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="rl", epilog=examples(
        "transferkit rl train --env CartPole-v1 --steps 50000 --out runs/src",
        "transferkit rl compare --source runs/src --target CartPole-v1:length=1.0 \\",
        "    --seeds 5 --steps 20000 --out runs/cmp"))


def _rl():
    try:
        from transferkit import rl
    except ImportError as exc:
        raise ConfigError(f"transferkit rl needs gymnasium and stable-baselines3 ({exc}): "
                          "pip install 'transferkit[rl]'.") from None
    return rl


def _hp(pairs: list[str] | None) -> dict:
    """``--hp`` pairs; numbers YAML reads as strings (``3e-4``, without a dot) become floats."""
    out = parse_options(pairs, "--hp")
    for key, value in out.items():
        if isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def _net_arch(text: str | None) -> dict:
    if not text:
        return {}
    try:
        return {"net_arch": [int(x) for x in parse_list(text)]}
    except ValueError:
        raise ConfigError(f"--net-arch must be comma-separated layer widths like 64,64. Got {text!r}.") from None


def _given(**options) -> dict:
    """The options given on the command line: the others keep the library's defaults."""
    return {k: v for k, v in options.items() if v is not None}


def _print_run(res, what: str) -> None:
    m = res.metrics
    ttt = m["time_to_threshold"] if m["time_to_threshold"] is not None else f"not reached in {m['final_step']}"
    console.print(f"{what}: jumpstart {m['jumpstart']:.1f}, steps to threshold {m['threshold']}: {ttt}, "
                  f"AUC {m['auc']:.1f}, final return {m['asymptotic']:.1f} "
                  f"({res.manifest['wall_time_s']:.0f} s)", highlight=False)
    if res.path is not None:
        console.print(f"bundle: {res.path}", highlight=False)


@app.command("train", epilog=examples(
    "transferkit rl train --env CartPole-v1:length=0.5 --algo PPO \\",
    "    --steps 50000 --out runs/cartpole-src",
    "transferkit rl train --env CartPole-v1:length=0.3..0.8 --out runs/dr-src",
    "transferkit rl train --env Pendulum-v1 --algo SAC --steps 20000 \\",
    "    --out runs/pendulum-src"))
def train_command(
    env: str = typer.Option(..., help=ENV_HELP),
    algo: str = typer.Option("PPO", help="PPO, A2C, DQN or SAC (stable-baselines3)."),
    steps: int = typer.Option(50_000, help="Environment steps of training."),
    seed: int = typer.Option(0, help="Seed of the policy and the environments."),
    hp: Optional[list[str]] = typer.Option(None, "--hp", help=HP_HELP),
    net_arch: Optional[str] = typer.Option(None, help="Hidden layer widths, e.g. 64,64 (default: the algorithm's)."),
    n_envs: Optional[int] = typer.Option(None, help="Parallel environments (default: the recipe's, else 1)."),
    eval_every: int = typer.Option(5_000, help="Evaluate the learning curve every this many environment steps."),
    eval_episodes: int = typer.Option(5, help="Episodes per evaluation."),
    threshold: Optional[float] = typer.Option(None, help="Return counted as solved (default: the environment's)."),
    out: Path = typer.Option(..., help="Bundle folder to write (refused if it exists, unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Train a source policy on ENV (or a randomised family of variants) and save it as a bundle."""
    res = _rl().train(env, algo, steps=steps, seed=seed, hyperparameters=_hp(hp),
                      policy_kwargs=_net_arch(net_arch), n_envs=n_envs, eval_every=eval_every,
                      eval_episodes=eval_episodes, threshold=threshold, out=out, overwrite=overwrite)
    _print_run(res, f"trained {res.manifest['algorithm']} on {env}")


@app.command("transfer", epilog=examples(
    "transferkit rl transfer --source runs/cartpole-src \\",
    "    --target CartPole-v1:length=1.0 --strategy finetune \\",
    "    --steps 20000 --out runs/cartpole-long"))
def transfer_command(
    source: Path = typer.Option(..., help="Source policy bundle (from `transferkit rl train`)."),
    target: str = typer.Option(..., help=ENV_HELP),
    strategy: str = typer.Option("finetune", help="finetune, frozen-features, l2-sp or scratch."),
    steps: int = typer.Option(20_000, help="Target environment steps."),
    seed: int = typer.Option(0, help="Seed."),
    hp: Optional[list[str]] = typer.Option(None, "--hp", help=HP_HELP + " Overrides the source's."),
    l2sp_weight: Optional[float] = typer.Option(None, help="l2-sp: weight alpha of the pull toward the source "
                                                "weights (default: the l2sp regularizer's)."),
    eval_every: int = typer.Option(2_000, help="Evaluate every this many environment steps."),
    eval_episodes: int = typer.Option(5, help="Episodes per evaluation."),
    threshold: Optional[float] = typer.Option(None, help="Return counted as solved (default: the environment's)."),
    out: Path = typer.Option(..., help="Bundle folder to write (refused if it exists, unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Adapt the SOURCE policy to the TARGET variant with a strategy; save the target policy as a bundle."""
    res = _rl().transfer(source, target, strategy, steps=steps, seed=seed, hyperparameters=_hp(hp),
                         eval_every=eval_every, eval_episodes=eval_episodes, threshold=threshold, out=out,
                         overwrite=overwrite, **_given(l2sp_weight=l2sp_weight))
    _print_run(res, f"{strategy} on {target}")


@app.command("evaluate", epilog=examples(
    "transferkit rl evaluate runs/cartpole-src --episodes 20",
    "transferkit rl evaluate runs/cartpole-src --env CartPole-v1:length=2.0"))
def evaluate_command(
    bundle: Path = typer.Argument(..., help="Policy bundle."),
    env: Optional[str] = typer.Option(None, help="Variant to roll out on (default: the bundle's own). " + ENV_HELP),
    episodes: int = typer.Option(10, help="Episodes."),
    seed: int = typer.Option(0, help="Seed of the environment."),
    stochastic: bool = typer.Option(False, help="Sample actions instead of taking the most likely one."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Roll the policy of BUNDLE out for N episodes and report the returns (mean ± 95% CI)."""
    returns, manifest = _rl().evaluate(bundle, env, episodes=episodes, seed=seed, deterministic=not stochastic)
    info = returns.to_json()
    if json_out:
        console.print_json(json.dumps({"bundle": str(bundle), "env": env or manifest["env"]["spec"], **info}))
        return
    ci = f" (95% CI {info['ci_low']:.1f} to {info['ci_high']:.1f})" if info["ci_low"] is not None else ""
    console.print(f"{manifest['algorithm']} policy on {env or manifest['env']['spec']}: mean return "
                  f"{info['mean_return']:.1f}{ci} over {info['episodes']} episodes, min {info['min_return']:.1f}, "
                  f"max {info['max_return']:.1f}, mean length {info['mean_length']:.1f}", highlight=False)


@app.command("export", epilog=examples("transferkit rl export runs/cartpole-src --out runs/cartpole-onnx"))
def export_command(
    bundle: Path = typer.Argument(..., help="Policy bundle."),
    out: Path = typer.Option(..., help="Folder for policy.onnx and export.json (refused if it exists)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Export the policy network to ONNX (observation -> action) and check it against the policy."""
    info = _rl().export_onnx(bundle, out, overwrite=overwrite, opset=opset)
    p = info["parity"]
    detail = (f"{100 * p['agreement']:.0f}% same actions" if "agreement" in p
              else f"max |action difference| {p['max_abs_diff']:.2e}")
    console.print(f"exported {bundle} to {out / 'policy.onnx'} (opset {opset}); parity on {p['samples']} "
                  f"observations: {detail}", highlight=False)


@app.command("compare", epilog=examples(
    "transferkit rl compare --source runs/cartpole-src \\",
    "    --target CartPole-v1:length=1.0 --target CartPole-v1:length=2.0 \\",
    "    --seeds 5 --steps 20000 --threshold 195 --out runs/cartpole-cmp"))
def compare_command(
    source: list[str] = typer.Option(..., help="Source bundle, or NAME=BUNDLE to compare several (repeatable)."),
    target: list[str] = typer.Option(..., help="Target variant (repeatable). " + ENV_HELP),
    strategies: str = typer.Option("finetune,frozen-features,l2-sp", help="Transfer strategies; scratch is added."),
    seeds: int = typer.Option(5, help="Seeds per strategy and target."),
    steps: int = typer.Option(20_000, help="Target environment steps per run."),
    eval_every: int = typer.Option(2_000, help="Evaluate every this many environment steps."),
    eval_episodes: int = typer.Option(5, help="Episodes per evaluation."),
    threshold: Optional[float] = typer.Option(None, help="Return counted as solved (default: the environment's)."),
    hp: Optional[list[str]] = typer.Option(None, "--hp", help=HP_HELP + " Applies to every run."),
    l2sp_weight: Optional[float] = typer.Option(None, help="l2-sp: weight alpha (default: the l2sp regularizer's)."),
    out: Optional[Path] = typer.Option(None, help="Folder for runs.csv, summary.csv, verdicts.csv, curves and "
                                                  "report.md with the learning-curve plot."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Run transfer strategies and scratch over seeds on each TARGET; print the transfer metrics and verdicts."""
    rl = _rl()
    from transferkit.rl.compare import markdown_table

    sources = dict(s.split("=", 1) if "=" in s else ("source", s) for s in source)
    if len(sources) != len(source):
        raise ConfigError("Name each source once: --source NAME=BUNDLE.")
    res = rl.compare_transfer(sources, target, parse_list(strategies), seeds=seeds, steps=steps,
                              eval_every=eval_every, eval_episodes=eval_episodes, threshold=threshold,
                              hyperparameters=_hp(hp), out=out, overwrite=overwrite, **_given(l2sp_weight=l2sp_weight),
                              on_run=lambda r: console.print(f"  {r['experiment']} {r['strategy']} seed {r['seed']}: "
                                                             f"jumpstart {r['jumpstart']:.1f}, AUC {r['auc']:.1f} "
                                                             f"({r['seconds']:.0f} s)", highlight=False))
    console.print(markdown_table(res.summary, steps), highlight=False)
    for _, v in res.verdicts.iterrows():
        console.print(f"[bold]{v['strategy']}[/bold] on {v['experiment']}: {v['explanation']}", highlight=False)
    if res.path is not None:
        console.print(f"report: {res.path / 'report.md'}", highlight=False)
