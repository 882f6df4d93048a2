"""The transferkit exception hierarchy.

Every library error subclasses both :class:`TransferkitError` and the matching
built-in exception, so callers can catch either (``except KeyError`` still
catches an unknown strategy name).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class TransferkitError(Exception):
    """Base class of every error raised by transferkit on bad input or state."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(TransferkitError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DataError(TransferkitError, ValueError):
    """Input data is missing, corrupt or inconsistent; the message names the file, row or value."""


class UnknownNameError(TransferkitError, KeyError):
    """A name (backbone prefix, strategy, dataset, ...) is not registered."""


class MissingWeightsError(TransferkitError, FileNotFoundError):
    """Offline weights were not found; the message names the file looked for and the package that provides it."""


class BundleError(TransferkitError, ValueError):
    """A result bundle is missing, incomplete, or would be overwritten."""


class TransferkitWarning(UserWarning):
    """Base class of the warnings transferkit gives about the user's input; the CLI shows them as one line."""


class DataWarning(TransferkitWarning):
    """The data loads but is suspect (duplicates across splits, ...); the message names the data and a count."""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the standard "Unknown X 'y'. Did you mean 'z'? Available: ..." error."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UnknownNameError(f"Unknown {kind} '{name}'.{hint} Available: {', '.join(choices)}.")


def check_range(owner: str, field: str, value, *, low=None, high=None, low_open=False, kind="a number"):
    """Raise :class:`ConfigError` in scikit-learn's template unless ``low <= value <= high``.

    Example:
        >>> check_range("TrainConfig", "epochs", 0, low=1, kind="an int")
        Traceback (most recent call last):
        ...
        transferkit.errors.ConfigError: The 'epochs' parameter of TrainConfig must be an int in [1, inf). Got 0 instead.
    """
    bad = (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
    if bad:
        lo = "(" if low_open else "["
        interval = f"{lo}{'-inf' if low is None else low}, {'inf)' if high is None else str(high) + ']'}"
        raise ConfigError(f"The '{field}' parameter of {owner} must be {kind} in {interval}. Got {value!r} instead.")
    return value
