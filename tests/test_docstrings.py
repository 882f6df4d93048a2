"""Docstrings of the public API are complete.

The public API is what ``import transferkit as tk`` offers (``transferkit.__all__``)
plus the facade module ``transferkit.api`` (``transferkit.api.__all__``): every
public function there has a Google-style docstring with an ``Example:`` section;
every public class has a docstring, and so does each public method and property
that transferkit defines on it (inherited library methods, such as
scikit-learn's, are theirs). Everything else the API reference shows
(``::: dotted.path`` in ``docs/reference/``) has a docstring too.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import transferkit
import transferkit.api

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"


def public_api() -> dict[str, object]:
    names = sorted(set(transferkit.__all__) | set(transferkit.api.__all__))
    return {n: getattr(transferkit, n) if n in transferkit.__all__ else getattr(transferkit.api, n) for n in names}


def _own_members(cls: type):
    """Public methods and properties that transferkit classes in ``cls``'s MRO define."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("transferkit"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, property):
                yield name, value.fget
            elif isinstance(value, (classmethod, staticmethod)):
                yield name, value.__func__
            elif inspect.isfunction(value):
                yield name, value


def test_the_public_api_is_what_the_package_exports():
    api = public_api()
    assert {"fit", "evaluate", "compare", "rank", "load", "lr_find", "measure_shift", "Predictor",
            "TransferClassifier", "TrainConfig"} <= set(api)


def function_problem(name: str, fn) -> str | None:
    """Why ``fn``'s docstring is incomplete, or None: it needs text and a Google ``Example:`` section."""
    doc = inspect.getdoc(fn) or ""
    if not doc.strip():
        return f"{name}: no docstring"
    if not re.search(r"^Examples?:\s*$", doc, re.MULTILINE):
        return f"{name}: no 'Example:' section"
    return None


def test_every_public_function_has_a_docstring_with_an_example():
    missing = [problem for name, obj in public_api().items()
               if not inspect.isclass(obj) and callable(obj) and (problem := function_problem(name, obj))]
    assert not missing, "public functions without a complete docstring:\n" + "\n".join(missing)


def test_every_public_class_method_and_property_has_a_docstring():
    missing = []
    for name, obj in public_api().items():
        if not inspect.isclass(obj):
            if not callable(obj) and not (type(obj).__doc__ or "").strip():
                missing.append(f"{name} ({type(obj).__name__})")
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        for member, fn in _own_members(obj):
            if not (inspect.getdoc(fn) or "").strip():
                missing.append(f"{name}.{member}")
    assert not missing, "public classes and members without a docstring:\n" + "\n".join(missing)


def test_everything_the_api_reference_shows_has_a_docstring():
    paths = sorted({m for page in REFERENCE.glob("*.md")
                    for m in re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.MULTILINE)})
    assert len(paths) > 20
    missing = []
    for path in paths:
        try:
            obj = importlib.import_module(path)
        except ImportError:
            module, _, attr = path.rpartition(".")
            obj = getattr(importlib.import_module(module), attr)
        if not (obj.__doc__ or "").strip():
            missing.append(path)
    assert not missing, "documented in docs/reference but without a docstring:\n" + "\n".join(missing)


def test_the_check_can_fail():
    """A function without a docstring, or without an example, is caught by the same rule."""
    def bare():
        pass

    def no_example():
        """Does something."""

    def complete():
        """Does something.

        Example:
            >>> complete()
        """

    assert function_problem("bare", bare) == "bare: no docstring"
    assert function_problem("no_example", no_example) == "no_example: no 'Example:' section"
    assert function_problem("complete", complete) is None
