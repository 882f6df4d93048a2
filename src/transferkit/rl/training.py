"""Train a source policy, transfer it to a target variant, evaluate a bundle.

Example:
    >>> from transferkit import rl                                           # doctest: +SKIP
    >>> rl.train("CartPole-v1:length=0.5", "PPO", steps=50_000, out="src")   # doctest: +SKIP
    >>> r = rl.transfer("src", "CartPole-v1:length=1.0", "finetune", steps=20_000, out="tgt")  # doctest: +SKIP
    >>> r.metrics["jumpstart"]                                               # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transferkit.errors import ConfigError, check_range
from transferkit.rl.algorithms import (build_algorithm, check_hyperparameters, check_policy_kwargs, check_same_spaces,
                                       describe_space, recipe)
from transferkit.rl.bundle import check_writable, load_policy, load_state, read_manifest, save_policy
from transferkit.rl.envs import EVAL_SEED_OFFSET, Curve, Returns, learn_with_curve, rollout, torch_threads, vec_env
from transferkit.rl.metrics import curve_metrics
from transferkit.rl.strategies import L2SP_WEIGHT, apply_strategy, check_strategy
from transferkit.rl.variants import check_env


@dataclass
class RunResult:
    """A trained policy: the SB3 model, its manifest, its learning curve and curve metrics."""

    model: object
    manifest: dict
    curve: Curve
    metrics: dict = field(default_factory=dict)
    path: Path | None = None


def _check_budget(steps: int, eval_every: int, eval_episodes: int) -> None:
    check_range("rl", "steps", steps, low=0, kind="an int")
    check_range("rl", "eval_every", eval_every, low=1, kind="an int")
    check_range("rl", "eval_episodes", eval_episodes, low=1, kind="an int")


def _settings(algorithm: str, env_id: str, hyperparameters: dict | None, policy_kwargs: dict | None,
              n_envs: int | None) -> tuple[dict, dict, int]:
    """The recipe's settings for this algorithm and environment, overridden by the caller's."""
    base = recipe(algorithm, env_id)
    n = int(n_envs if n_envs is not None else base.pop("n_envs", 1))
    base.pop("n_envs", None)
    kwargs = check_policy_kwargs({**base.pop("policy_kwargs", {}), **(policy_kwargs or {})})
    hp = check_hyperparameters(algorithm, {**base, **(hyperparameters or {})})
    check_range("rl", "n_envs", n, low=1, kind="an int")
    return hp, kwargs, n


def _manifest(variant, algorithm: str, hp: dict, kwargs: dict, n_envs: int, env, seed, steps: int) -> dict:
    return {"env": variant.to_json(), "algorithm": algorithm.upper(), "policy": "MlpPolicy",
            "hyperparameters": hp, "policy_kwargs": kwargs, "n_envs": n_envs, "seed": seed,
            "total_timesteps": int(steps),
            "observation_space": describe_space(env.observation_space),
            "action_space": describe_space(env.action_space)}


def _finish(model, manifest: dict, curve: Curve, seconds: float, out, overwrite: bool, threshold) -> RunResult:
    metrics = curve_metrics(curve.steps, curve.means, threshold=threshold)
    manifest = {**manifest, "metrics": metrics, "wall_time_s": round(seconds, 2), "threshold": threshold,
                "curve": curve.rows()}
    path = None
    if out is not None:
        path = save_policy(model, out, manifest, overwrite=overwrite,
                           extra=lambda tmp: (tmp / "curve.csv").write_text(curve.to_csv(), encoding="utf-8"))
    return RunResult(model, manifest, curve, metrics, path)


def default_threshold(spec) -> float | None:
    """The environment's own ``reward_threshold`` (475 for CartPole-v1, -100 for Acrobot-v1), if it has one."""
    import gymnasium as gym

    env_spec = gym.spec(check_env(spec).env_id)
    return env_spec.reward_threshold


def train(env: str, algorithm: str = "PPO", *, steps: int = 50_000, seed: int = 0, hyperparameters: dict | None = None,
          policy_kwargs: dict | None = None, n_envs: int | None = None, eval_every: int = 5_000,
          eval_episodes: int = 5, threshold: float | None = None, deterministic_eval: bool = False,
          threads: int | None = 1, out: str | Path | None = None, overwrite: bool = False,
          progress: bool = False) -> RunResult:
    """Train a source policy on a variant (or a randomised family, ``length=0.3..0.8``) and save it as a bundle.

    Args:
        env: the variant spec (see :mod:`transferkit.rl.variants`).
        algorithm: PPO, A2C, DQN or SAC.
        steps: environment steps of training.
        hyperparameters: arguments of the SB3 algorithm (JSON scalars); override the recipe for this environment.
        policy_kwargs: ``net_arch`` and ``activation_fn``.
        n_envs: parallel environments (default: the recipe's, else 1).
        eval_every, eval_episodes: the learning curve's evaluation grid.
        threshold: the return that counts as solved for time-to-threshold (default: the environment's own).
        deterministic_eval: evaluate the curve with the policy's most likely action instead of sampled ones.
        threads: torch threads while training (``None``: leave torch's setting); one is fastest for small MLPs.
        out: the bundle folder (nothing is saved when None); it must not exist unless ``overwrite``.
    """
    _check_budget(steps, eval_every, eval_episodes)
    variant = check_env(env)
    if out is not None:
        check_writable(out, overwrite)  # refuse before training, not after
    hp, kwargs, n = _settings(algorithm, variant.env_id, hyperparameters, policy_kwargs, n_envs)
    threshold = default_threshold(variant) if threshold is None else threshold
    train_env = vec_env(variant, n_envs=n, seed=seed)
    eval_env = vec_env(variant, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    model = build_algorithm(algorithm, train_env, hyperparameters=hp, policy_kwargs=kwargs, seed=seed)
    start = time.perf_counter()
    with torch_threads(threads):
        curve = learn_with_curve(model, steps, eval_env, eval_every=eval_every, eval_episodes=eval_episodes,
                                 deterministic=deterministic_eval, progress=progress)
    manifest = _manifest(variant, algorithm, hp, kwargs, n, train_env, seed, steps)
    manifest["evaluation"] = {"every": eval_every, "episodes": eval_episodes, "deterministic": deterministic_eval}
    return _finish(model, manifest, curve, time.perf_counter() - start, out, overwrite, threshold)


def transfer(source: str | Path, target: str, strategy: str = "finetune", *, steps: int = 20_000, seed: int = 0,
             hyperparameters: dict | None = None, l2sp_weight: float = L2SP_WEIGHT, eval_every: int = 2_000,
             eval_episodes: int = 5, threshold: float | None = None, deterministic_eval: bool = False,
             threads: int | None = 1, out: str | Path | None = None, overwrite: bool = False,
             progress: bool = False) -> RunResult:
    """Adapt a source bundle's policy to a target variant with a strategy, recording the target learning curve.

    The target model has the source's algorithm, policy options and hyper-parameters (``hyperparameters``
    overrides some, e.g. a lower learning rate); ``scratch`` trains the same model from its initialisation.

    Raises:
        ConfigError: the target's observation or action space differs from the source's (the message says how),
            or an unknown strategy.
        BundleError: the source is not a readable policy bundle.
    """
    check_strategy(strategy)
    _check_budget(steps, eval_every, eval_episodes)
    check_range("rl transfer", "l2sp_weight", l2sp_weight, low=0)
    variant = check_env(target)
    if out is not None:
        check_writable(out, overwrite)
    src = read_manifest(source)
    hp = check_hyperparameters(src["algorithm"], {**src["hyperparameters"], **(hyperparameters or {})})
    n = int(src["n_envs"])
    train_env = vec_env(variant, n_envs=n, seed=seed)
    check_same_spaces(src, train_env.observation_space, train_env.action_space, src["env"]["spec"], str(variant))
    eval_env = vec_env(variant, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    torch.manual_seed(seed)
    model = build_algorithm(src["algorithm"], train_env, hyperparameters=hp, policy_kwargs=src["policy_kwargs"],
                            seed=seed, policy=src["policy"])
    applied = apply_strategy(model, strategy, load_state(source, src), l2sp_weight=l2sp_weight)
    threshold = default_threshold(variant) if threshold is None else threshold
    start = time.perf_counter()
    try:
        with torch_threads(threads):
            curve = learn_with_curve(model, steps, eval_env, eval_every=eval_every, eval_episodes=eval_episodes,
                                     deterministic=deterministic_eval, progress=progress)
    finally:
        for hook in applied.hooks:
            hook.remove()
    manifest = _manifest(variant, src["algorithm"], hp, src["policy_kwargs"], n, train_env, seed, steps)
    manifest["evaluation"] = {"every": eval_every, "episodes": eval_episodes, "deterministic": deterministic_eval}
    manifest["transfer"] = {**applied.to_json(), "source": {"path": str(source), "env": src["env"],
                                                            "metrics": src.get("metrics")}}
    if strategy == "l2-sp":
        manifest["transfer"]["l2sp_weight"] = l2sp_weight
    return _finish(model, manifest, curve, time.perf_counter() - start, out, overwrite, threshold)


def evaluate(bundle: str | Path, env: str | None = None, *, episodes: int = 10, seed: int = 0,
             deterministic: bool = True) -> tuple[Returns, dict]:
    """Roll a bundle's policy out for ``episodes`` episodes on its own variant or on ``env``; return the returns.

    Raises:
        ConfigError: ``env``'s spaces differ from the policy's.
    """
    manifest = read_manifest(bundle)
    spec = env if env is not None else manifest["env"]["spec"]
    venv = vec_env(spec, n_envs=1, seed=seed)
    check_same_spaces(manifest, venv.observation_space, venv.action_space, manifest["env"]["spec"], str(spec))
    model, _ = load_policy(bundle, env=venv, seed=seed)
    if int(episodes) < 1:
        raise ConfigError(f"The 'episodes' parameter must be an int in [1, inf). Got {episodes!r} instead.")
    with torch_threads(1):
        return rollout(model, venv, episodes, deterministic=deterministic), manifest
