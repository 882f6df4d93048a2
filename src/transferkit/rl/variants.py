"""Environment variants as data: ``CartPole-v1:length=1.0,masspole=0.3`` and ranges for domain randomisation.

A variant spec is a Gymnasium environment id, optionally followed by ``:`` and
comma-separated ``NAME=VALUE`` pairs that set physics attributes of the
unwrapped environment. ``NAME=LOW..HIGH`` draws the value uniformly at every
reset (domain randomisation, Tobin et al. 2017, https://arxiv.org/abs/1703.06907),
through the :class:`DomainRandomization` wrapper.

The classic-control environments have a declared table of attributes with
physical ranges (:data:`PHYSICS`); attributes that other attributes are
derived from (CartPole's ``total_mass`` and ``polemass_length``) are kept
consistent. Any other environment accepts its public float attributes.

Example:
    >>> v = parse_variant("CartPole-v1:length=1.0,masspole=0.3..0.5")
    >>> v.env_id, v.fixed, v.ranges
    ('CartPole-v1', {'length': 1.0}, {'masspole': (0.3, 0.5)})
    >>> str(v)
    'CartPole-v1:length=1.0,masspole=0.3..0.5'
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from transferkit.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Physics:
    """The settable attributes of one environment class, with their valid ranges, and what derives from them."""

    ranges: dict[str, tuple[float, float]]
    derive: Callable[[object], None] = lambda env: None
    note: str = ""


def _cartpole_derived(env) -> None:
    # CartPole's step() reads these two, computed once in __init__ from the attributes they derive from
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


_POSITIVE = (1e-3, 100.0)
#: Declared physics of the classic-control environments (class name of ``env.unwrapped`` -> attributes).
#: Attributes that size the observation or action space (Pendulum's max_speed/max_torque, Acrobot's
#: MAX_VEL_*) are left out: changing them would change the spaces' bounds without updating them.
PHYSICS: dict[str, Physics] = {
    "CartPoleEnv": Physics({"gravity": (0.1, 100.0), "masscart": _POSITIVE, "masspole": _POSITIVE,
                            "length": (0.01, 100.0), "force_mag": (0.01, 1000.0), "tau": (1e-4, 0.2)},
                           _cartpole_derived),
    "AcrobotEnv": Physics({"LINK_LENGTH_1": _POSITIVE, "LINK_LENGTH_2": _POSITIVE, "LINK_MASS_1": _POSITIVE,
                           "LINK_MASS_2": _POSITIVE, "LINK_COM_POS_1": _POSITIVE, "LINK_COM_POS_2": _POSITIVE,
                           "LINK_MOI": _POSITIVE, "dt": (0.01, 1.0)}),
    "PendulumEnv": Physics({"g": (0.0, 100.0), "m": _POSITIVE, "l": _POSITIVE, "dt": (1e-3, 0.5)}),
    "MountainCarEnv": Physics({"force": (1e-5, 0.1), "gravity": (1e-5, 0.1)}),
    "Continuous_MountainCarEnv": Physics({"power": (1e-5, 0.1)}),
}

_ENV_ID = re.compile(r"[\w./-]+-v\d+")
_SYNTAX = "Write ENV_ID[:NAME=VALUE,NAME=LOW..HIGH,...], e.g. CartPole-v1:length=1.0,masspole=0.3"


@dataclass(frozen=True)
class EnvVariant:
    """One environment variant: a Gymnasium id, fixed physics values and randomised ranges."""

    env_id: str
    fixed: dict[str, float] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"{k}={_num(v)}" for k, v in self.fixed.items()]
        parts += [f"{k}={_num(lo)}..{_num(hi)}" for k, (lo, hi) in self.ranges.items()]
        return self.env_id + (":" + ",".join(parts) if parts else "")

    @property
    def randomised(self) -> bool:
        return bool(self.ranges)

    def to_json(self) -> dict:
        """What a manifest records: ``{"id", "spec", "params": {name: value or [low, high]}}``."""
        params = {**self.fixed, **{k: [lo, hi] for k, (lo, hi) in self.ranges.items()}}
        return {"id": self.env_id, "spec": str(self), "params": params}


def _num(v: float) -> str:
    return repr(float(v))


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"Cannot read the environment variant {spec!r}: {text!r} is not a number or a range "
                          f"LOW..HIGH. {_SYNTAX}.") from None
    if not math.isfinite(value):
        raise ConfigError(f"Cannot read the environment variant {spec!r}: {text!r} is not a finite number.")
    return value


def parse_variant(spec: str | EnvVariant) -> EnvVariant:
    """Read a variant spec (syntax only; :func:`check_variant` checks the names against the environment).

    Raises:
        ConfigError: the spec is empty, a pair is not ``NAME=VALUE``, a value is not a number, a range has
            LOW > HIGH, or a name repeats.
    """
    if isinstance(spec, EnvVariant):
        return spec
    text = str(spec).strip()
    head, sep, tail = text.rpartition(":")
    if not sep or _ENV_ID.fullmatch(tail.strip()):  # 'module:Env-v0' is gymnasium's import syntax, not parameters
        head, tail = text, ""
    env_id = head.strip()
    if not env_id:
        raise ConfigError(f"Cannot read the environment variant {spec!r}: no environment id. {_SYNTAX}.")
    fixed, ranges = {}, {}
    for pair in filter(None, (p.strip() for p in tail.split(","))):
        name, eq, value = (s.strip() for s in pair.partition("="))
        if not eq or not name or not value:
            raise ConfigError(f"Cannot read the environment variant {spec!r}: {pair!r} is not NAME=VALUE. "
                              f"{_SYNTAX}.")
        if name in fixed or name in ranges:
            raise ConfigError(f"Cannot read the environment variant {spec!r}: {name!r} is set twice.")
        if ".." in value:
            lo, _, hi = value.partition("..")
            lo, hi = _number(lo.strip(), spec), _number(hi.strip(), spec)
            if lo > hi:
                raise ConfigError(f"Cannot read the environment variant {spec!r}: the range {value!r} of "
                                  f"{name!r} has LOW > HIGH.")
            ranges[name] = (lo, hi)
        else:
            fixed[name] = _number(value, spec)
    return EnvVariant(env_id, fixed, ranges)


def _make_base(env_id: str, **kwargs) -> gym.Env:
    try:
        return gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError) as exc:  # NameNotFound, VersionNotFound, DependencyNotInstalled, ...
        if isinstance(exc, gym.error.DependencyNotInstalled):
            raise ConfigError(f"Environment {env_id!r} needs a package that is not installed: {exc}") from None
        ids = sorted(gym.registry)
        close = difflib.get_close_matches(env_id, ids, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"Unknown environment id {env_id!r} ({exc}).{hint} Registered: "
                               f"{len(ids)} ids, e.g. CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1; "
                               "see gymnasium.pprint_registry().") from None


def valid_attributes(env: gym.Env) -> dict[str, tuple[float, float]]:
    """The settable physics attributes of ``env`` with their ranges (declared, or any finite value)."""
    physics = PHYSICS.get(type(env.unwrapped).__name__)
    if physics is not None:
        return dict(physics.ranges)
    base = env.unwrapped
    return {k: (-math.inf, math.inf) for k, v in sorted(vars(base).items())
            if not k.startswith("_") and isinstance(v, float)}


def _describe(attrs: dict[str, tuple[float, float]]) -> str:
    if not attrs:
        return "none (this environment has no settable float attributes)"
    return ", ".join(f"{k} in [{lo:g}, {hi:g}]" if math.isfinite(lo) else k for k, (lo, hi) in attrs.items())


def check_variant(variant: EnvVariant, env: gym.Env) -> None:
    """Check each name of ``variant`` against ``env``'s attributes and each value (both range ends) against its range.

    Raises:
        UnknownNameError: a name is not a settable attribute (the message lists the valid ones).
        ConfigError: a value is out of its range (the message gives the range and the valid attributes).
    """
    attrs = valid_attributes(env)
    values = [(k, v) for k, v in variant.fixed.items()]
    values += [(k, v) for k, pair in variant.ranges.items() for v in pair]
    for name, value in values:
        if name not in attrs:
            close = difflib.get_close_matches(name, list(attrs), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownNameError(f"Unknown physics attribute '{name}' of {variant.env_id}.{hint} "
                                   f"Valid attributes: {_describe(attrs)}.")
        lo, hi = attrs[name]
        if not lo <= value <= hi:
            raise ConfigError(f"The '{name}' attribute of {variant.env_id} must be a number in [{lo:g}, {hi:g}]. "
                              f"Got {value!r} instead. Valid attributes: {_describe(attrs)}.")


def set_physics(env: gym.Env, values: dict[str, float]) -> None:
    """Set ``values`` on ``env.unwrapped`` and recompute the attributes derived from them."""
    base = env.unwrapped
    for name, value in values.items():
        setattr(base, name, float(value))
    physics = PHYSICS.get(type(base).__name__)
    if physics is not None:
        physics.derive(base)


class DomainRandomization(gym.Wrapper):
    """Draw each randomised physics attribute uniformly from its range at every reset.

    The wrapper keeps its own random generator, seeded from the ``seed`` of the
    first seeded ``reset`` (as a vectorised environment passes ``seed + rank``),
    so the environment's own random stream is left as it is.

    Args:
        env: the environment (its physics attributes are set on ``env.unwrapped``).
        ranges: attribute -> ``(low, high)``.
        seed: seed of the generator before any seeded reset.
    """

    def __init__(self, env: gym.Env, ranges: dict[str, tuple[float, float]], seed: int | None = None):
        super().__init__(env)
        self.ranges = dict(ranges)
        self._rng = np.random.default_rng(seed)
        self.current: dict[str, float] = {}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.current = {k: float(self._rng.uniform(lo, hi)) for k, (lo, hi) in self.ranges.items()}
        set_physics(self.env, self.current)
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "physics": dict(self.current)}


def check_env(spec: str | EnvVariant) -> EnvVariant:
    """Parse and check a variant against its environment (built once and closed); return it."""
    variant = parse_variant(spec)
    make_env(variant).close()
    return variant


def make_env(spec: str | EnvVariant, *, seed: int | None = None, **make_kwargs) -> gym.Env:
    """Build the environment of a variant spec: fixed values set, ranges drawn at every reset.

    Raises:
        UnknownNameError: unknown environment id or attribute.
        ConfigError: unreadable spec or a value out of range.
    """
    variant = parse_variant(spec)
    env = _make_base(variant.env_id, **make_kwargs)
    try:
        check_variant(variant, env)
    except Exception:
        env.close()
        raise
    set_physics(env, variant.fixed)
    return DomainRandomization(env, variant.ranges, seed) if variant.randomised else env
