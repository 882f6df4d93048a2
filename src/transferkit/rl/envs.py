"""Vectorised environments of a variant, roll-outs, and the learning curve recorded during training.

Roll-outs are stable-baselines3's ``evaluate_policy``; the learning curve is
its ``EvalCallback`` (evaluations every ``eval_every`` environment steps on a
separate, separately seeded environment), plus one evaluation before any
training: the point that jumpstart is read from.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from transferkit.errors import ConfigError
from transferkit.evaluation.stats import mean_ci
from transferkit.rl.variants import EnvVariant, make_env, parse_variant

#: Offset between a run's seed and the seed of its evaluation environment (so they draw different episodes).
EVAL_SEED_OFFSET = 10_000


def vec_env(spec: str | EnvVariant, *, n_envs: int = 1, seed: int | None = None):
    """A ``DummyVecEnv`` of ``n_envs`` copies of the variant, each wrapped in SB3's ``Monitor``, seeded ``seed + i``."""
    from stable_baselines3.common.env_util import make_vec_env

    variant = parse_variant(spec)
    make_env(variant).close()  # check the spec once, here, so an error is raised before any environment runs
    return make_vec_env(lambda: make_env(variant), n_envs=int(n_envs), seed=seed)


@dataclass
class Returns:
    """Episode returns and lengths of a roll-out, with the mean's 95% interval."""

    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    def to_json(self) -> dict:
        mean, low, high = mean_ci(self.returns)
        return {"episodes": len(self.returns), "mean_return": mean, "ci_low": _finite(low), "ci_high": _finite(high),
                "std_return": float(np.std(self.returns, ddof=1)) if len(self.returns) > 1 else None,
                "min_return": float(np.min(self.returns)), "max_return": float(np.max(self.returns)),
                "mean_length": float(np.mean(self.lengths)), "returns": [float(r) for r in self.returns]}


def _finite(x: float) -> float | None:
    return None if x != x else float(x)


def rollout(model, env, episodes: int, *, deterministic: bool = True) -> Returns:
    """Run ``model`` for ``episodes`` episodes on the VecEnv ``env`` (SB3's ``evaluate_policy``)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    if int(episodes) < 1:
        raise ConfigError(f"The 'episodes' parameter must be an int in [1, inf). Got {episodes!r} instead.")
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=int(episodes), deterministic=deterministic,
                                       return_episode_rewards=True, warn=False)
    return Returns([float(r) for r in returns], [int(n) for n in lengths])


@dataclass
class Curve:
    """Mean evaluation return against environment steps: ``steps[i]`` -> ``means[i]``."""

    steps: list[int] = field(default_factory=list)
    means: list[float] = field(default_factory=list)

    def add(self, step: int, mean_return: float) -> None:
        self.steps.append(int(step))
        self.means.append(float(mean_return))

    def rows(self) -> list[dict]:
        return [{"steps": s, "mean_return": m} for s, m in zip(self.steps, self.means)]

    def to_csv(self) -> str:
        return "steps,mean_return\n" + "".join(f"{s},{m:.6g}\n" for s, m in zip(self.steps, self.means))


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (``None``: leave them). Small policy networks are faster on one:
    10,000 PPO steps on CartPole took 5.4 s with 1 thread and 58 s with 2 on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def learn_with_curve(model, total_steps: int, eval_env, *, eval_every: int, eval_episodes: int,
                     deterministic: bool = False, progress: bool = False) -> Curve:
    """Evaluate ``model`` once, train it ``total_steps`` environment steps with ``EvalCallback``; return the curve.

    The first point (step 0) is the return before any training: jumpstart. ``eval_every`` counts
    environment steps over all parallel environments. Evaluation samples actions from the policy unless
    ``deterministic``: the argmax of an untrained policy is some fixed function of the observation, and on
    CartPole such a function balanced the pole for all 500 steps for an untrained PPO policy (seed 0), which
    would make scratch's jumpstart a matter of luck.
    """
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

    class Record(BaseCallback):  # EvalCallback keeps per-evaluation results only when it also writes an .npz
        def _on_step(self) -> bool:
            curve.add(self.parent.num_timesteps, self.parent.last_mean_reward)
            return True

    curve = Curve()
    curve.add(0, rollout(model, eval_env, eval_episodes, deterministic=deterministic).mean)
    if total_steps <= 0:
        return curve
    n_envs = model.get_env().num_envs
    callback = EvalCallback(eval_env, n_eval_episodes=eval_episodes, eval_freq=max(1, eval_every // n_envs),
                            deterministic=deterministic, verbose=0, warn=False, callback_after_eval=Record())
    model.learn(total_timesteps=int(total_steps), callback=callback, progress_bar=progress,
                reset_num_timesteps=True)
    if curve.steps[-1] < model.num_timesteps:  # the budget rarely ends on an evaluation step: close the curve
        curve.add(model.num_timesteps, rollout(model, eval_env, eval_episodes, deterministic=deterministic).mean)
    return curve
