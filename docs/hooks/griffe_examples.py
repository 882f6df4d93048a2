"""Griffe extension for the API reference: the project's docstrings as mkdocstrings renders them best.

* ``Example:`` sections render as code. The docstrings write ``Example:``
  (singular, see ``shared/STYLE.md``); griffe's Google parser knows only
  ``Examples:`` as the section whose ``>>>`` lines become code blocks, and would
  render ``Example:`` as an admonition of plain Markdown.
* Sphinx roles (``:class:`~transferkit.x.Y```, ``:func:`f```) become inline code
  (``Y``, ``f``): Markdown has no roles, and they would show verbatim.

Only the loaded copy of each docstring changes; the source keeps its style.
"""
from __future__ import annotations

import re

import griffe

HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|paramref):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` headings to ``Examples:`` and turn Sphinx roles into code, in every loaded docstring."""

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_role, HEADING.sub(r"\1Examples:", obj.docstring.value))
