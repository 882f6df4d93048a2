"""The stable-baselines3 algorithms, their hyper-parameters as JSON data, and the spaces a policy was built for.

A policy is rebuilt from its manifest: the algorithm's name, its
hyper-parameters (JSON scalars only: a bundle never holds code), the
``policy_kwargs`` (``net_arch`` and an activation named by string) and the
number of parallel environments. :data:`RECIPES` holds tuned settings for the
classic-control environments (after rl-baselines3-zoo's ``hyperparams/*.yml``,
with constant learning rates), used where the caller sets nothing.
"""
from __future__ import annotations

import inspect
import json
import math

import numpy as np
from gymnasium import spaces

from transferkit.errors import ConfigError, unknown_name


def algorithms() -> dict[str, type]:
    """Name -> stable-baselines3 class, for the algorithms transferkit supports."""
    from stable_baselines3 import A2C, DQN, PPO, SAC

    return {"PPO": PPO, "A2C": A2C, "DQN": DQN, "SAC": SAC}


ALGORITHMS = ("PPO", "A2C", "DQN", "SAC")
#: Activation functions a manifest may name (``policy_kwargs.activation_fn``).
ACTIVATIONS = ("tanh", "relu", "elu", "leaky_relu", "gelu")
#: Arguments of the algorithm's constructor that transferkit sets itself.
_RESERVED = {"policy", "env", "policy_kwargs", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model",
             "replay_buffer_class", "replay_buffer_kwargs", "action_noise", "rollout_buffer_class",
             "rollout_buffer_kwargs", "stats_window_size"}

# (algorithm, environment id without version) -> settings; n_envs is not an algorithm argument.
RECIPES: dict[tuple[str, str], dict] = {
    ("PPO", "CartPole"): {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98,
                          "n_epochs": 20, "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2},
    ("PPO", "Acrobot"): {"n_envs": 8, "n_steps": 64, "batch_size": 256, "gae_lambda": 0.94, "gamma": 0.99,
                         "n_epochs": 4, "ent_coef": 0.0, "learning_rate": 1e-3},
    ("A2C", "CartPole"): {"n_envs": 8, "ent_coef": 0.0},
    ("A2C", "Acrobot"): {"n_envs": 8, "ent_coef": 0.0},
    ("DQN", "CartPole"): {"n_envs": 1, "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000,
                          "learning_starts": 1000, "gamma": 0.99, "target_update_interval": 10, "train_freq": 256,
                          "gradient_steps": 128, "exploration_fraction": 0.16, "exploration_final_eps": 0.04,
                          "policy_kwargs": {"net_arch": [256, 256]}},
    ("DQN", "Acrobot"): {"n_envs": 1, "learning_rate": 6.3e-4, "batch_size": 128, "buffer_size": 50_000,
                         "learning_starts": 0, "gamma": 0.99, "target_update_interval": 250, "train_freq": 4,
                         "gradient_steps": -1, "exploration_fraction": 0.12, "exploration_final_eps": 0.1,
                         "policy_kwargs": {"net_arch": [256, 256]}},
    ("SAC", "Pendulum"): {"n_envs": 1, "learning_rate": 1e-3, "learning_starts": 200, "buffer_size": 50_000},
}


def algorithm_class(name: str) -> type:
    """The stable-baselines3 class of ``name`` (any case).

    Raises:
        UnknownNameError: not one of :data:`ALGORITHMS`.
    """
    key = str(name).upper()
    if key not in ALGORITHMS:
        raise unknown_name("algorithm", str(name), ALGORITHMS)
    return algorithms()[key]


def recipe(algorithm: str, env_id: str) -> dict:
    """Tuned settings for ``algorithm`` on ``env_id`` (``{}`` when there are none)."""
    return json.loads(json.dumps(RECIPES.get((algorithm.upper(), env_id.split("-v")[0].split("/")[-1]), {})))


def _json_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def check_hyperparameters(algorithm: str, hp: dict) -> dict:
    """Check that each key is an argument of the algorithm and each value a JSON scalar; return a copy.

    Raises:
        ConfigError: an unknown key (the valid ones are listed), a key transferkit sets itself, or a value that
            is not a number, string, bool or null (schedules and classes cannot be stored in a manifest).
    """
    cls = algorithm_class(algorithm)
    valid = sorted(set(inspect.signature(cls.__init__).parameters) - {"self"} - _RESERVED)
    out = {}
    for key, value in hp.items():
        if key in _RESERVED:
            raise ConfigError(f"The hyper-parameter '{key}' of {cls.__name__} is set by transferkit and cannot be "
                              f"given. Valid hyper-parameters: {', '.join(valid)}.")
        if key not in valid:
            raise ConfigError(f"Unknown hyper-parameter '{key}' of {cls.__name__}. Valid hyper-parameters: "
                              f"{', '.join(valid)}.")
        if not _json_scalar(value):
            raise ConfigError(f"The hyper-parameter '{key}' of {cls.__name__} must be a number, string, bool or "
                              f"null (a manifest holds data, not code). Got {value!r} instead.")
        out[key] = value
    return out


def check_policy_kwargs(kwargs: dict | None) -> dict:
    """Allow ``net_arch`` (a list of ints, or ``{"pi": [...], "vf": [...]}`` / ``{"qf": ...}``) and ``activation_fn``.

    Raises:
        ConfigError: another key, or a value of the wrong shape.
    """
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - {"net_arch", "activation_fn"})
    if unknown:
        raise ConfigError(f"Unknown policy option(s) {unknown}. Valid: net_arch, activation_fn.")
    arch = kwargs.get("net_arch")
    layers = arch.values() if isinstance(arch, dict) else [arch]
    if arch is not None and not all(isinstance(v, list) and all(isinstance(n, int) and n > 0 for n in v)
                                    for v in layers):
        raise ConfigError(f"The 'net_arch' policy option must be a list of positive ints (e.g. [64, 64]) or a "
                          f"mapping of such lists (pi, vf, qf). Got {arch!r} instead.")
    act = kwargs.get("activation_fn")
    if act is not None and act not in ACTIVATIONS:
        raise ConfigError(f"Unknown activation_fn {act!r}. Available: {', '.join(ACTIVATIONS)}.")
    return kwargs


def torch_policy_kwargs(kwargs: dict) -> dict:
    """The manifest's policy options as stable-baselines3 takes them (an activation name becomes its class)."""
    from torch import nn

    classes = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
    out = dict(kwargs)
    if "activation_fn" in out:
        out["activation_fn"] = classes[out["activation_fn"]]
    return out


def build_algorithm(algorithm: str, env, *, hyperparameters: dict, policy_kwargs: dict, seed: int | None,
                    policy: str = "MlpPolicy"):
    """A new stable-baselines3 model on ``env`` (a VecEnv) from manifest data, on the CPU."""
    cls = algorithm_class(algorithm)
    return cls(policy, env, seed=seed, device="cpu", verbose=0, policy_kwargs=torch_policy_kwargs(policy_kwargs),
               **hyperparameters)


def describe_space(space: spaces.Space) -> dict:
    """A JSON description of a Gymnasium space: type, shape, dtype, and ``n`` or bounds."""
    out: dict = {"type": type(space).__name__, "shape": list(space.shape or ()),
                 "dtype": str(space.dtype) if space.dtype is not None else None}
    if isinstance(space, spaces.Discrete):
        out["n"] = int(space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        out["nvec"] = np.asarray(space.nvec).tolist()
    elif isinstance(space, spaces.Box):
        big = np.finfo(np.float64).max  # JSON has no infinity: unbounded dimensions are stored as +-max float
        out["low"] = np.nan_to_num(space.low.astype(np.float64), posinf=big, neginf=-big).tolist()
        out["high"] = np.nan_to_num(space.high.astype(np.float64), posinf=big, neginf=-big).tolist()
    return out


def space_differences(source: dict, target: dict, what: str) -> list[str]:
    """What differs between two described spaces in what a policy depends on (type, shape, ``n``, action bounds)."""
    diffs = []
    for key in ("type", "shape", "n", "nvec"):
        if source.get(key) != target.get(key):
            diffs.append(f"{what} {key}: source {source.get(key)} vs target {target.get(key)}")
    if what == "action space" and not diffs and source.get("type") == "Box":
        for key in ("low", "high"):
            if not np.allclose(source.get(key, []), target.get(key, [])):
                diffs.append(f"action space {key}: source {source.get(key)} vs target {target.get(key)}")
    return diffs


def check_same_spaces(source: dict, target_obs: spaces.Space, target_act: spaces.Space, source_name: str,
                      target_name: str) -> None:
    """Refuse a transfer between environments whose observation or action spaces differ.

    Args:
        source: the source manifest's ``{"observation_space": ..., "action_space": ...}``.

    Raises:
        ConfigError: says which space differs and how.
    """
    diffs = space_differences(source["observation_space"], describe_space(target_obs), "observation space")
    diffs += space_differences(source["action_space"], describe_space(target_act), "action space")
    if diffs:
        raise ConfigError(f"Cannot transfer the policy of {source_name} to {target_name}: the spaces differ "
                          f"({'; '.join(diffs)}). A policy transfers only between environments with the same "
                          "observation and action spaces.")
