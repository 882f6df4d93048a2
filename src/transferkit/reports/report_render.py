"""The report's building blocks and their two renderings: markdown beside ``plots/``, and one self-contained HTML page.

A report is a list of :class:`Block` (headings, paragraphs, lists, tables,
images), made with the small constructors ``_h``, ``_p``, ``_ul``, ``_table``
and ``_img``. :func:`_write_report` writes the extra files and PNGs first,
then ``report.md`` (images as ``plots/*.png`` links), then ``report.html``
(the same PNGs as base64 data URIs), each to a temporary name renamed into place.
"""
from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAX_LIST = 12


@dataclass(frozen=True)
class Block:
    """One piece of a report: ``kind`` is ``h1``/``h2``/``p``/``ul``/``table``/``img``."""

    kind: str
    text: str = ""
    items: tuple = ()
    headers: tuple = ()
    png: bytes = b""


def _h(level: int, text: str) -> Block:
    return Block(f"h{level}", text)


def _p(text: str) -> Block:
    return Block("p", text)


def _ul(items: Iterable[str]) -> Block:
    return Block("ul", items=tuple(items))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Block:
    return Block("table", headers=tuple(headers), items=tuple(tuple(_cell(v) for v in r) for r in rows))


def _img(file_name: str, png: bytes, alt: str) -> Block:
    return Block("img", text=alt, items=(file_name,), png=png)


def _cell(value: Any) -> str:
    """Readable text of a table value: 4 significant digits, short lists, ``—`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_cell(v) for v in value[:_MAX_LIST])
        return shown + (f", … ({len(value) - _MAX_LIST} more)" if len(value) > _MAX_LIST else "")
    return str(value)


# --------------------------------------------------------------------------- markdown


def _md_escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table from header and row strings."""
    lines = ["| " + " | ".join(_md_escape_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_md(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind.startswith("h"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            out.append(markdown_table(b.headers, b.items))
        elif b.kind == "img":
            out.append(f"![{b.text}](plots/{b.items[0]})")
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------- HTML


def _inline_html(text: str) -> str:
    """Escape ``text`` and turn markdown ``code`` and **bold** into HTML."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%;height:auto;border:1px solid #eee}code{background:#f5f5f5;padding:0 .2em}"""


def _render_html_block(b: Block) -> str:
    if b.kind.startswith("h"):
        return f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline_html(b.text)}</p>"
    if b.kind == "ul":
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>"
    if b.kind == "table":
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.headers)
        body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in b.items)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if b.kind == "img":
        data = base64.b64encode(b.png).decode("ascii")
        return f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}"></figure>'
    raise AssertionError(f"unknown block kind {b.kind!r}")


def _render_html(blocks: Sequence[Block], title: str) -> str:
    body = "\n".join(_render_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_report(out_dir: Path, blocks: list[Block], title: str, extra: dict[str, str | bytes]) -> list[Path]:
    """Write ``extra`` files and plots first, then ``report.md``, then ``report.html``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_atomic_write(out_dir / name, data) for name, data in extra.items()]
    images = [b for b in blocks if b.kind == "img"]
    if images:
        (out_dir / "plots").mkdir(exist_ok=True)
    written += [_atomic_write(out_dir / "plots" / b.items[0], b.png) for b in images]
    md = _atomic_write(out_dir / "report.md", _render_md(blocks))
    page = _atomic_write(out_dir / "report.html", _render_html(blocks, title))
    return [md, page, *written]
