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

import dataclasses
import re
import sys
import types
import typing
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from transferkit.errors import ConfigError

__all__ = ["MAX_IMAGE_SIZE", "NONE", "Interval", "Options", "check_field_types", "declared_constraints",
           "validate_declared", "validate_params"]

#: Marker in a constraint list: the value may be ``None`` (a literal ``None`` works too).
NONE = "none"

#: The largest image side an option accepts: a bound against typos such as 100000, which would exhaust
#: memory in the first resize (a batch of 32 RGB images of 4096 px is already 6 GB of floats).
MAX_IMAGE_SIZE = 4096

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


# -- field types: a config's annotations checked against the values a user gave ---------------------------------

class _Mismatch(Exception):
    """A value does not have an annotated type (internal to :func:`check_field_types`)."""


#: A decimal number written as text; YAML reads ``1e-3`` (no dot) as a string.
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` if it has type ``tp``, or the same value in that type where that loses nothing; else ``_Mismatch``.

    Lossless forms: a number written as text (``"1e-3"``) for a float, and a single string for a list of strings.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, (str, typing.TypeVar)) or origin is typing.ClassVar:
        return value
    if origin in (typing.Union, types.UnionType):
        for strict in (True, False):  # an exact match first: "true" stays a str in a bool | str field
            for arg in args:
                try:
                    result = _coerce(value, arg)
                except _Mismatch:
                    continue
                if not strict or result is value:
                    return result
        raise _Mismatch
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, Integral) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, Real) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if origin is list and args and args[0] is str and isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        items = [_coerce(v, args[0]) for v in value] if origin is list and args else list(value)
        return items if (origin or tp) is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        if args:
            return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
        return value
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # a typing construct not checked here


def _describe_type(tp: Any) -> str:
    """``int | None`` -> ``"an int or None"``, in the wording of the error template."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if origin is list or tp is list:
        return f"a list of {_describe_type(args[0]).split(' ', 1)[-1]}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping ({key: value})"
    names = {type(None): "None", bool: "a bool (true or false)", int: "an int", float: "a number", str: "a str"}
    return names.get(tp, f"a {getattr(tp, '__name__', tp)}")


def _field_types(cls: type) -> dict[str, Any]:
    """Each dataclass field's annotation, evaluated in the module of the class that declares it.

    An annotation that cannot be evaluated at run time (a name imported for type checking only) is left out.
    """
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = vars(sys.modules.get(klass.__module__, object()))
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, namespace, {}) if isinstance(annotation, str) else annotation
            except Exception:  # noqa: BLE001  (a forward reference; the field is then not checked)
                hints.pop(name, None)
    return hints


def check_field_types(obj: Any, skip: Any = ()) -> None:
    """Check each field of dataclass ``obj`` against its annotation, converting the lossless forms in place.

    What a config calls before its declared constraints, so that a wrong-typed
    value from the command line (``-o train_last=abc``) or a recipe is refused
    in the same template as a value out of range. Fields in ``skip`` (those with
    declared constraints, which name the valid values better) are converted but
    not refused here.

    Example:
        >>> @dataclasses.dataclass
        ... class Toy:
        ...     rate: float = 0.1
        ...     names: list[str] = dataclasses.field(default_factory=list)
        >>> toy = Toy(rate="1e-3", names="a")
        >>> check_field_types(toy); (toy.rate, toy.names)
        (0.001, ['a'])
        >>> check_field_types(Toy(rate="fast"))
        Traceback (most recent call last):
        ...
        transferkit.errors.ConfigError: The 'rate' parameter of Toy must be a number. Got 'fast' instead.

    Raises:
        ConfigError: a value whose type does not match its field.
    """
    types_ = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        if f.name not in types_:
            continue
        value = getattr(obj, f.name)
        try:
            converted = _coerce(value, types_[f.name])
        except _Mismatch:
            if f.name in skip:
                continue
            raise ConfigError(f"The '{f.name}' parameter of {type(obj).__name__} must be "
                              f"{_describe_type(types_[f.name])}. Got {value!r} instead.") from None
        if converted is not value:
            object.__setattr__(obj, f.name, converted)
