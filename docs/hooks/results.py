"""MkDocs hook: the measured numbers in the guides come from ``benchmarks/results/`` at build time.

A page writes a directive where a table, a figure or a single value belongs;
this hook replaces it with what the benchmark wrote, so the documentation can
never drift from the measured numbers. Directives (arguments are Python
literals; paths are relative to ``benchmarks/results/``):

``{{ results("ner/summary.md") }}``
    The body of a benchmark's markdown report, without its ``#`` title.
``{{ results("ner/summary.md", section="1000 training sentences") }}``
    One section: from the heading that starts with that text to the next
    heading of the same or a higher level.
``{{ results("peft/summary.md", section="debian-packages", table=1) }}``
    Only the first (second, ...) markdown table of that file or section.
``{{ results("continual/report.md", section="Split", stop_at="Accuracy matrices") }}``
    A section up to (not including) the first line that starts with ``stop_at``.
``{{ figure("ner/f1_vs_sentences.png", "Entity F1 against training sentences") }}``
    A benchmark plot, with its caption and source.
``{{ value("data_efficiency/throughput.json", "ratio", ".2f") }}``
    One value of a JSON result (a dotted key), formatted.

Every inclusion ends with a "Source:" line naming the file. A missing file,
section, table or key fails the build (``mkdocs build --strict`` runs in the
test suite). Every PNG under ``benchmarks/results/`` is added to the site at
``benchmarks/results/...`` so that figures (and images inside included
reports) resolve, and MkDocs checks those links like any other.
"""
from __future__ import annotations

import ast
import json
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SITE_PREFIX = "benchmarks/results"
DIRECTIVE = re.compile(r"\{\{\s*(results|figure|value)\((.*?)\)\s*\}\}", re.DOTALL)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
USED: set[str] = set()


def on_files(files, config):
    """Add every benchmark PNG to the site, under ``benchmarks/results/``."""
    for png in sorted(RESULTS.rglob("*.png")):
        uri = f"{SITE_PREFIX}/{png.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace each directive of the page with the benchmark's table, figure or value."""
    def replace(match: re.Match) -> str:
        kind, args, kwargs = match.group(1), *_arguments(match.group(2), page)
        try:
            return {"results": _results, "figure": _figure, "value": _value}[kind](page, *args, **kwargs)
        except TypeError as exc:
            raise PluginError(f"{page.file.src_uri}: bad arguments to {kind}(): {exc}") from None
    return DIRECTIVE.sub(replace, markdown)


def _arguments(text: str, page) -> tuple[list, dict]:
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        return ([ast.literal_eval(a) for a in call.args],
                {k.arg: ast.literal_eval(k.value) for k in call.keywords})
    except (SyntaxError, ValueError) as exc:
        raise PluginError(f"{page.file.src_uri}: cannot read the directive arguments ({text!r}): {exc}") from None


def _source(path: str, page, what: str = "Source") -> str:
    return f"<small>{what}: `benchmarks/results/{path}` (read when this page was built).</small>"


def _result_file(path: str, page) -> Path:
    file = (RESULTS / path).resolve()
    if RESULTS.resolve() not in file.parents or not file.is_file():
        raise PluginError(f"{page.file.src_uri}: no benchmark result {path!r} under {RESULTS}.")
    USED.add(path)
    return file


def _site_link(page, target: str) -> str:
    """A link from ``page`` to ``target`` (a site path such as ``benchmarks/results/x.png``)."""
    return posixpath.relpath(target, posixpath.dirname(page.file.src_uri) or ".")


def _results(page, path: str, section: str | None = None, table: int | None = None, stop_at: str | None = None,
             level: int = 3) -> str:
    lines = _result_file(path, page).read_text(encoding="utf-8").splitlines()
    if lines and HEADING.match(lines[0]) and len(HEADING.match(lines[0]).group(1)) == 1:
        lines = lines[1:]  # the report's own title: the page has one
    if section is not None:
        lines = _section(lines, section, path, page)
    if stop_at is not None:
        cut = next((i for i, line in enumerate(lines) if line.startswith(stop_at)), None)
        if cut is None:
            raise PluginError(f"{page.file.src_uri}: {path} has no line starting with {stop_at!r} there.")
        lines = lines[:cut]
    if table is not None:
        lines = _table(lines, table, path, page)
    # the included headings nest under the page's: the highest one becomes `level`
    levels = [len(m.group(1)) for m in map(HEADING.match, lines) if m]
    shift = level - min(levels) if levels else 0
    out = []
    in_code = False
    for line in lines:
        in_code ^= line.lstrip().startswith("```")
        m = None if in_code else HEADING.match(line)
        if m:
            line = "#" * min(6, len(m.group(1)) + shift) + " " + m.group(2)
        out.append(IMAGE.sub(lambda im: _image(page, path, im), line))
    return "\n".join(out).strip() + "\n\n" + _source(path, page) + "\n"


def _section(lines: list[str], section: str, path: str, page) -> list[str]:
    for i, line in enumerate(lines):
        m = HEADING.match(line)
        if m and m.group(2).strip().strip("`").startswith(section):
            depth = len(m.group(1))
            end = next((j for j in range(i + 1, len(lines))
                        if (h := HEADING.match(lines[j])) and len(h.group(1)) <= depth), len(lines))
            return lines[i + 1:end]
    headings = [m.group(2) for m in map(HEADING.match, lines) if m]
    raise PluginError(f"{page.file.src_uri}: {path} has no section starting with {section!r}. "
                      f"Sections: {headings}.")


def _table(lines: list[str], number: int, path: str, page) -> list[str]:
    tables: list[list[str]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.lstrip().startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if not 1 <= number <= len(tables):
        raise PluginError(f"{page.file.src_uri}: {path} has {len(tables)} table(s) there, not a table {number}.")
    return tables[number - 1]


def _image(page, path: str, match: re.Match) -> str:
    target = match.group(2)
    if "://" in target:
        return match.group(0)
    rel = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if not (RESULTS / rel).is_file():
        raise PluginError(f"{page.file.src_uri}: {path} shows {target!r}, which is not in benchmarks/results.")
    return f"![{match.group(1)}]({_site_link(page, f'{SITE_PREFIX}/{rel}')})"


def _figure(page, path: str, caption: str) -> str:
    _result_file(path, page)
    link = _site_link(page, f"{SITE_PREFIX}/{path}")
    return f"![{caption}]({link})\n\n*{caption}.* {_source(path, page, 'Plot')}\n"


def _value(page, path: str, key: str, fmt: str = "") -> str:
    value = json.loads(_result_file(path, page).read_text(encoding="utf-8"))
    for part in key.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise PluginError(f"{page.file.src_uri}: {path} has no value at {key!r}.") from None
    return format(value, fmt)
