"""Declared parameter constraints (:mod:`transferkit.constraints`), and a conformance suite over every config.

The suite is generated from the registries: a new strategy, continual learner,
pre-training method or regularizer is checked the moment it is registered.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from transferkit.constraints import NONE, Interval, Options, declared_constraints, validate_params
from transferkit.errors import ConfigError, check_range
from transferkit.strategies import STRATEGIES
from transferkit.strategies.continual import CONTINUAL
from transferkit.strategies.finetune import FinetuneConfig
from transferkit.strategies.regularizers import REGULARIZERS
from transferkit.strategies.self_supervised import PRETRAINERS
from transferkit.training import TrainConfig


def _message(value, *constraints, name="epochs", owner="TrainConfig") -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(owner, {name: value}, {name: list(constraints)})
    return str(info.value)


# ----------------------------------------------------------------------------- the template


@pytest.mark.parametrize("interval, value, expected", [
    (Interval("int", 1, None), 0, "an int in [1, inf)"),
    (Interval("number", 0, 1), 1.5, "a number in [0, 1]"),
    (Interval("number", 0, 1, closed="right"), 0, "a number in (0, 1]"),
    (Interval("float", 0, 1, closed="left"), 1.0, "a float in [0, 1)"),
    (Interval("number", 0, None, closed="neither"), 0, "a number in (0, inf)"),
    (Interval("number", None, 0), 1, "a number in (-inf, 0]"),
    (Interval("number", 0, 0.9), 0.95, "a number in [0, 0.9]"),
])
def test_interval_message(interval, value, expected):
    assert _message(value, interval) == f"The 'epochs' parameter of TrainConfig must be {expected}. Got {value!r} instead."


@pytest.mark.parametrize("low, high, low_open, kind, value", [
    (1, None, False, "int", 0), (0, None, True, "number", 0), (0, 1, False, "number", -0.5),
    (0, 1, True, "number", 2), (1, 512, False, "int", 513), (0, 0.95, False, "number", 1.0),
])
def test_interval_wording_is_check_ranges(low, high, low_open, kind, value):
    with pytest.raises(ConfigError) as old:
        check_range("LoraConfig", "rank", value, low=low, high=high, low_open=low_open,
                    kind="an int" if kind == "int" else "a number")
    interval = Interval(kind, low, high, closed="right" if low_open else "both")
    assert _message(value, interval, name="rank", owner="LoraConfig") == str(old.value)


def test_the_bounds_themselves():
    closed, open_ = Interval("number", 0, 1), Interval("number", 0, 1, closed="neither")
    assert closed.is_satisfied_by(0) and closed.is_satisfied_by(1)
    assert not open_.is_satisfied_by(0) and not open_.is_satisfied_by(1) and open_.is_satisfied_by(0.5)
    assert Interval("number", 0, None).is_satisfied_by(float("inf"))


def test_options_message():
    options = Options("cosine", "onecycle", "constant")
    assert _message("x", options, name="schedule") == (
        "The 'schedule' parameter of TrainConfig must be one of cosine, onecycle, constant. Got 'x' instead.")
    assert _message("x", Options("tensorboard", "mlflow"), NONE, name="track") == (
        "The 'track' parameter of TrainConfig must be one of tensorboard, mlflow or None. Got 'x' instead.")


def test_none_is_allowed_only_where_declared():
    for marker in (NONE, None):
        validate_params("TrainConfig", {"epochs": None}, {"epochs": [Interval("int", 1, None), marker]})
    # an interval that also allows None keeps check_range's plain wording
    assert _message(0, Interval("int", 1, None), NONE).endswith("must be an int in [1, inf). Got 0 instead.")
    assert _message(None, Interval("int", 1, None)).endswith("must be an int in [1, inf). Got None instead.")


@pytest.mark.parametrize("interval, value", [
    (Interval("int", 0, None), "abc"), (Interval("int", 0, None), 2.0), (Interval("int", 0, None), [1]),
    (Interval("number", 0, None), "1"), (Interval("number", 0, 1), float("nan")),
    (Interval("int", 0, None), True), (Interval("int", 0, None), False), (Interval("number", 0, 1), True),
])
def test_wrong_types_and_bools_get_the_template(interval, value):
    assert _message(value, interval) == f"The 'epochs' parameter of TrainConfig must be {interval}. Got {value!r} instead."


def test_numpy_scalars_are_numbers():
    validate_params("T", {"a": np.int64(3), "b": np.float32(0.5)},
                    {"a": [Interval("int", 1, None)], "b": [Interval("number", 0, 1)]})
    assert not Options(1, 2).is_satisfied_by(True)


def test_configs_raise_the_template_not_a_type_error():
    with pytest.raises(ConfigError, match=re.escape(
            "The 'train_last' parameter of FinetuneConfig must be an int in [0, inf). Got 'abc' instead.")):
        FinetuneConfig(train_last="abc")
    with pytest.raises(ConfigError, match=re.escape(
            "The 'epochs' parameter of TrainConfig must be an int in [1, inf). Got True instead.")):
        TrainConfig(epochs=True)
    with pytest.raises(ConfigError, match="give 'freeze' or 'train_only', not both"):  # still in validate()
        FinetuneConfig(freeze=["a*"], train_only=["b*"])


def test_bad_declarations_are_refused():
    with pytest.raises(TypeError, match="Unknown constraint"):
        validate_params("T", {"a": 1}, {"a": [int]})
    with pytest.raises(TypeError, match="non-empty list"):
        validate_params("T", {"a": 1}, {"a": []})
    with pytest.raises(KeyError, match="'b'"):
        validate_params("T", {"a": 1}, {"b": [NONE]})
    with pytest.raises(ValueError):
        Interval("integer", 0, 1)
    with pytest.raises(ValueError):
        Interval("int", 0, 1, closed="open")


def test_subclasses_merge_their_bases_declarations():
    from transferkit.strategies.finetune import GradualUnfreezeConfig

    merged = declared_constraints(GradualUnfreezeConfig)
    assert {"train_last", "dropout", "head_epochs", "unfreeze_every"} <= set(merged)
    with pytest.raises(ConfigError, match="'dropout' parameter of GradualUnfreezeConfig"):
        GradualUnfreezeConfig(dropout=2)


# ----------------------------------------------------------------------------- conformance over every config


def _configs() -> dict[str, type]:
    out = {f"strategy:{n}": STRATEGIES.get(n).Config for n in STRATEGIES.names()}
    out.update({f"continual:{n}": CONTINUAL.get(n).Config for n in CONTINUAL.names()})
    out.update({f"pretrainer:{n}": PRETRAINERS.get(n).Config for n in PRETRAINERS.names()})
    out.update({f"regularizer:{n}": REGULARIZERS.get(n).Options for n in REGULARIZERS.names()})
    out["TrainConfig"] = TrainConfig
    return out


CONFIGS = _configs()


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _outside(constraint):
    """A value of the right type just outside ``constraint``, or ``None`` if it has no finite bound."""
    if isinstance(constraint, Options):
        return "not-one-of-the-options"
    step = 1 if constraint.kind == "int" else 0.5
    if constraint.low is not None:
        return constraint.low - step
    return None if constraint.high is None else constraint.high + step


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_declared_fields_exist_and_defaults_satisfy_them(key):
    cls = CONFIGS[key]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert "_parameter_constraints" not in fields, f"{cls.__name__}: annotate it as ClassVar or not at all"
    declared = declared_constraints(cls)
    unknown = sorted(set(declared) - set(fields))
    assert not unknown, f"{cls.__name__} declares constraints for {unknown}, which are not fields"
    validate_params(cls.__name__, {name: _default(fields[name]) for name in declared}, declared)
    cls()  # and the whole config, with validate(), accepts its defaults


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_values_outside_the_declarations_raise_the_template(key):
    cls = CONFIGS[key]
    for name, alternatives in declared_constraints(cls).items():
        for constraint in alternatives:
            if not isinstance(constraint, (Interval, Options)) or (bad := _outside(constraint)) is None:
                continue
            if any(isinstance(c, (Interval, Options)) and c.is_satisfied_by(bad) for c in alternatives):
                continue
            with pytest.raises(ConfigError, match=re.escape(f"The '{name}' parameter of {cls.__name__} must be ")):
                cls(**{name: bad})
        if any(isinstance(c, Interval) for c in alternatives):
            with pytest.raises(ConfigError, match=re.escape(f"The '{name}' parameter of {cls.__name__} must be ")):
                cls(**{name: "abc"})
