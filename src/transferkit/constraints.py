"""Declared parameter constraints, after scikit-learn's ``_parameter_constraints``.

A config class declares the valid values of each field once, instead of
hand-writing a range check per field::

    @dataclass
    class LoraConfig(PeftConfig):
        _parameter_constraints: ClassVar[dict] = {
            "rank": [Interval("int", 1, None)],
            "lora_dropout": [Interval("number", 0, 0.9)],
        }

and :func:`validate_params` checks them with the caller's name, in one error
template: "The 'rank' parameter of LoraConfig must be an int in [1, inf).
Got 0 instead."

Each field maps to a list of alternatives; a value is valid if it satisfies
any one. An alternative is an :class:`Interval`, an :class:`Options`, or
:data:`NONE` (``None`` and the string ``"none"`` mean the same: the value may
be ``None``). ``None`` is named in the message only next to options ("one of
tensorboard, mlflow or None"); an interval that also allows ``None`` keeps
the plain interval wording, ``None`` being the field's "use the default".

Only plain per-field checks belong here; checks that relate several fields,
or that need logic, stay in the class's ``validate()``.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Any

from transferkit.errors import ConfigError

__all__ = ["NONE", "Interval", "Options", "declared_constraints", "validate_declared", "validate_params"]

#: Marker in a constraint list: the value may be ``None`` (a literal ``None`` works too).
NONE = "none"

_KINDS = {"int": "an int", "float": "a float", "number": "a number"}
_CLOSED = ("both", "left", "right", "neither")


class Interval:
    """Numbers of one kind between two bounds.

    Args:
        kind: ``"int"`` (integers: ``numbers.Integral``), ``"float"`` or ``"number"`` (any real number,
            ints included; they differ only in the message's wording). ``bool`` is never accepted.
        low: the lower bound, or ``None`` for -inf.
        high: the upper bound, or ``None`` for inf.
        closed: which finite bounds belong to the interval: ``"both"``, ``"left"``, ``"right"`` or
            ``"neither"``. An infinite bound is always open.

    Example:
        >>> str(Interval("number", 0, 1, closed="right"))
        'a number in (0, 1]'
        >>> Interval("int", 1, None).is_satisfied_by(True)
        False
    """

    def __init__(self, kind: str, low: Real | None, high: Real | None, *, closed: str = "both"):
        if kind not in _KINDS:
            raise ValueError(f"Interval kind must be one of {', '.join(_KINDS)}; got {kind!r}.")
        if closed not in _CLOSED:
            raise ValueError(f"Interval closed must be one of {', '.join(_CLOSED)}; got {closed!r}.")
        if low is not None and high is not None and low > high:
            raise ValueError(f"Interval low ({low}) is above high ({high}).")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def _has_type(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        return isinstance(value, Integral if self.kind == "int" else Real)

    def is_satisfied_by(self, value: Any) -> bool:
        if not self._has_type(value):
            return False
        if value != value:  # NaN satisfies no interval
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        left = "(-inf" if self.low is None else ("[" if self.closed in ("both", "left") else "(") + str(self.low)
        right = "inf)" if self.high is None else str(self.high) + ("]" if self.closed in ("both", "right") else ")")
        return f"{_KINDS[self.kind]} in {left}, {right}"

    def __repr__(self) -> str:
        return f"Interval({self.kind!r}, {self.low!r}, {self.high!r}, closed={self.closed!r})"


class Options:
    """One of a fixed set of values (compared with ``==``; ``True`` is not taken for ``1``).

    Example:
        >>> Options("cosine", "onecycle").is_satisfied_by("linear")
        False
    """

    def __init__(self, *values: Any):
        if not values:
            raise ValueError("Options needs at least one value.")
        self.values = tuple(values)

    def is_satisfied_by(self, value: Any) -> bool:
        return any(isinstance(value, bool) == isinstance(v, bool) and value == v for v in self.values)

    def __str__(self) -> str:
        return f"one of {', '.join(map(str, self.values))}"

    def __repr__(self) -> str:
        return f"Options({', '.join(map(repr, self.values))})"


def _allows_none(constraint: Any) -> bool:
    return constraint is None or (isinstance(constraint, str) and constraint == NONE)


def _describe(constraints: list) -> str:
    """The "must be ..." part: the alternatives joined by "or"; None named only after options."""
    parts = [c for c in constraints if not _allows_none(c)]
    text = " or ".join(map(str, parts))
    if len(parts) < len(constraints) and any(isinstance(c, Options) for c in parts):
        text += " or None"
    return text or "None"


def _check_declaration(owner: str, name: str, constraints: Any) -> list:
    if not isinstance(constraints, (list, tuple)) or not constraints:
        raise TypeError(f"The constraints of '{name}' in {owner} must be a non-empty list; got {constraints!r}.")
    for c in constraints:
        if not isinstance(c, (Interval, Options)) and not _allows_none(c):
            raise TypeError(f"Unknown constraint {c!r} for '{name}' in {owner}: use Interval, Options or NONE.")
    return list(constraints)


def validate_params(owner: str, values: dict, constraints: dict) -> None:
    """Raise :class:`~transferkit.errors.ConfigError` for the first value that satisfies none of its constraints.

    Args:
        owner: the name shown in the message (the config class, or the function).
        values: parameter name -> value; every name in ``constraints`` must be there.
        constraints: parameter name -> list of alternatives (:class:`Interval`, :class:`Options`, :data:`NONE`).
            Names not in ``constraints`` are not checked.

    Example:
        >>> validate_params("TrainConfig", {"epochs": 0}, {"epochs": [Interval("int", 1, None), NONE]})
        Traceback (most recent call last):
        ...
        transferkit.errors.ConfigError: The 'epochs' parameter of TrainConfig must be an int in [1, inf). Got 0 instead.
    """
    for name, declared in constraints.items():
        alternatives = _check_declaration(owner, name, declared)
        if name not in values:
            raise KeyError(f"{owner} declares constraints for '{name}', which is not one of its parameters.")
        value = values[name]
        if value is None and any(_allows_none(c) for c in alternatives):
            continue
        if any(not _allows_none(c) and c.is_satisfied_by(value) for c in alternatives):
            continue
        raise ConfigError(f"The '{name}' parameter of {owner} must be {_describe(alternatives)}. Got {value!r} instead.")


def declared_constraints(cls: type) -> dict:
    """The ``_parameter_constraints`` of ``cls`` merged over its bases (a subclass's entry replaces its base's)."""
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("_parameter_constraints", {}))
    return merged


def validate_declared(obj: Any) -> None:
    """Check ``obj``'s attributes against its class's declared constraints, named after its class.

    What a config's ``__post_init__`` calls before its own ``validate()``.
    """
    constraints = declared_constraints(type(obj))
    validate_params(type(obj).__name__, {name: getattr(obj, name) for name in constraints}, constraints)
