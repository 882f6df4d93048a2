"""The options of ``strategy="auto"`` (``strategy_options`` in Python, ``-o KEY=VALUE`` at the CLI)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from transferkit.errors import ConfigError
from transferkit.strategies import make_strategy

__all__ = ["AUTO", "AUTO_STRATEGIES", "AutoOptions", "auto_options", "parse_budget"]

#: The strategy name that runs the search.
AUTO = "auto"
#: Transfer strategies tried on each backbone's final features, cheapest first.
AUTO_STRATEGIES = ("linear-probe", "lora", "finetune")
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)


def parse_budget(value) -> float | None:
    """Seconds from ``600``, ``"90s"``, ``"10m"`` or ``"1.5h"``; ``None`` or ``"none"`` for no limit.

    Raises:
        ConfigError: anything else, naming the value and the forms accepted.

    Example:
        >>> parse_budget("10m"), parse_budget(90), parse_budget("none")
        (600.0, 90.0, None)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _BUDGET.match(str(value))
        if not match:
            raise ConfigError(f"budget must be seconds or a duration like 90s, 10m or 1h (or none). "
                              f"Got {value!r} instead.")
        unit = (match.group(2) or "s").lower()[0]
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[unit]
    if not seconds > 0:
        raise ConfigError(f"budget must be positive. Got {value!r} instead.")
    return seconds


@dataclass(frozen=True)
class AutoOptions:
    """The search's settings (``strategy_options`` of ``auto``; ``-o KEY=VALUE`` at the CLI).

    Attributes:
        budget: time for the search (``10m``, ``90s``; ``none`` for no limit). The first rung always runs.
        folds: cross-validation folds (fewer when a class has fewer labelled items).
        layers: also probe the intermediate layers of each backbone (from a third of the stack to the one
            before its last).
        sizes: image sizes of the probes (``auto``: the given size, twice and four times it up to the model's
            native size; or sizes in pixels).
        strategies: the transfer strategies tried on the final features.
        baselines: scratch variants (``auto``: the modality's strongest, as in ``--check-transfer``; ``none``).
        stack: members of the stacking candidate, built after the halving from the best linear-probe finalists
            (classification; ``0`` leaves it out).
    """

    budget: float | None = 600.0
    folds: int = 3
    layers: bool = True
    sizes: tuple[int, ...] | str = "auto"
    strategies: tuple[str, ...] = AUTO_STRATEGIES
    baselines: tuple[str, ...] | str = "auto"
    stack: int = 3


def auto_options(options: dict | None) -> AutoOptions:
    """Validate ``auto``'s options; an unknown key is refused, naming the valid ones."""
    options = dict(options or {})
    valid = ("budget", "folds", "layers", "sizes", "strategies", "baselines", "stack")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"Unknown option(s) of strategy 'auto': {', '.join(unknown)}. Valid: {', '.join(valid)}.")
    out = AutoOptions()
    if "budget" in options:
        out = replace(out, budget=parse_budget(options["budget"]))
    if "folds" in options:
        out = replace(out, folds=_whole(options["folds"], "folds", 2))
    if "stack" in options:
        stack = _whole(options["stack"], "stack", 0)
        if stack == 1:
            raise ConfigError("stack must be 0 (no stacking candidate) or at least 2 members. Got 1 instead.")
        out = replace(out, stack=stack)
    if "layers" in options:
        value = options["layers"]
        if isinstance(value, str):
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(value.lower())
        if not isinstance(value, bool):
            raise ConfigError(f"layers must be true or false. Got {options['layers']!r} instead.")
        out = replace(out, layers=value)
    if "sizes" in options:
        out = replace(out, sizes=_sizes_option(options["sizes"]))
    for key in ("strategies", "baselines"):
        if key in options:
            value = options[key]
            names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
            names = [n for n in names if n]
            if key == "baselines" and names in (["auto"], ["none"]):
                out = replace(out, baselines="auto" if names == ["auto"] else ())
                continue
            if key == "strategies":
                for name in names:
                    if name == AUTO:
                        raise ConfigError("strategies of 'auto' cannot include 'auto'.")
                    make_strategy(name)  # unknown names refused with the list
            out = replace(out, **{key: tuple(names)})
    return out


def _whole(value, name: str, least: int) -> int:
    """``value`` as an int of at least ``least``; anything else refused, naming the option."""
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < least:
        raise ConfigError(f"{name} must be an int in [{least}, inf). Got {value!r} instead.")
    return number


def _sizes_option(value) -> tuple[int, ...] | str:
    """``auto``, or image sizes in pixels (``32,64`` or a list)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    names = value.split(",") if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else [value])
    sizes = []
    for name in names:
        try:
            size = int(str(name).strip())
        except ValueError:
            size = 0
        if size < 8:
            raise ConfigError(f"sizes must be auto or image sizes in pixels (8 or more), like 32,64. Got {value!r} instead.")
        sizes.append(size)
    return tuple(dict.fromkeys(sizes))
