"""MkDocs hook: the command-line reference is generated from the Typer app at build time.

``{{ cli_reference() }}`` on a page becomes, for every command of
``transferkit`` in the order the app registers them: its help, its usage line,
a table of its arguments and options per help panel (names, type, default,
help), and the example of its ``epilog``. The reference is therefore the
``--help`` of the installed code, never a copy of it.
"""
from __future__ import annotations

import re
import textwrap

DIRECTIVE = re.compile(r"\{\{\s*cli_reference\(\s*\)\s*\}\}")


def on_page_markdown(markdown, page, config, files):
    """Replace the directive with the reference of every command."""
    if not DIRECTIVE.search(markdown):
        return markdown
    return DIRECTIVE.sub(lambda _: render(), markdown)


def render() -> str:
    """Markdown for the whole ``transferkit`` command group."""
    import typer.main

    from transferkit.cli.main import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="transferkit")
    parts = [f"```text\nUsage: transferkit [OPTIONS] COMMAND [ARGS]...\n```\n\n{_clean(group.help or '')}\n",
             _table([p for p in group.params if not getattr(p, "hidden", False)], root, "Global options")]
    parts.append("| command | what it does |\n| --- | --- |\n" + "\n".join(
        f"| [`{name}`](#{_anchor(name)}) | {_cell(_first_line(cmd.help or ''))} |"
        for name, cmd in group.commands.items() if not cmd.hidden) + "\n")
    for name, cmd in group.commands.items():
        if not cmd.hidden:
            parts.append(_command(name, cmd, root))
            parts += _subcommands(name, cmd, root)
    return "\n".join(parts)


def _subcommands(name: str, cmd, root) -> list[str]:
    """The commands of a sub-group (``transferkit rl train``), each under its full name."""
    inner = getattr(cmd, "commands", None) or {}
    if not inner:
        return []
    ctx = cmd.context_class(cmd, info_name=name, parent=root)
    return [_command(f"{name} {sub}", c, ctx) for sub, c in inner.items() if not c.hidden]


def _command(name: str, cmd, root) -> str:
    ctx = cmd.context_class(cmd, info_name=name, parent=root)
    usage = " ".join(["transferkit", name, *cmd.collect_usage_pieces(ctx)])
    out = [f"## transferkit {name} {{#{_anchor(name)}}}\n", f"```text\n{usage}\n```\n", _clean(cmd.help or "") + "\n"]
    panels: dict[str, list] = {}
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        default_panel = "Arguments" if _is_argument(param) else "Options"
        panels.setdefault(getattr(param, "rich_help_panel", None) or default_panel, []).append(param)
    for panel, params in sorted(panels.items(), key=lambda kv: (kv[0] not in ("Arguments", "Options"),
                                                               kv[0] != "Arguments")):
        out.append(_table(params, ctx, panel))
    if cmd.epilog:
        out.append("**Examples**\n\n```bash\n" + _epilog_text(cmd.epilog) + "\n```\n")
    return "\n".join(out)


def _is_argument(param) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _table(params: list, ctx, title: str) -> str:
    if not params:
        return ""
    rows = [f"**{title}**\n", "| name | type | default | description |", "| --- | --- | --- | --- |"]
    for p in params:
        names = ", ".join(f"`{n}`" for n in [*p.opts, *getattr(p, "secondary_opts", [])])
        if _is_argument(p):
            names = f"`{(p.metavar or p.name).upper()}`"
        rows.append(f"| {names} | {_cell(_type(p, ctx))} | {_cell(_default(p))} | {_cell(_clean(getattr(p, 'help', '') or ''))} |")
    return "\n".join(rows) + "\n"


def _type(p, ctx) -> str:
    if getattr(p, "is_flag", False):
        return "flag"
    shown = p.display_type(ctx) if callable(getattr(p, "display_type", None)) else ""
    shown = shown.strip("<>").replace("|", " | ")
    names = {"str": "TEXT", "list[str]": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}
    text = shown if " | " in shown else names.get(shown.lower(), shown.upper())
    return text + (" (repeatable)" if getattr(p, "multiple", False) else "")


def _default(p) -> str:
    if p.required:
        return "required"
    d = p.default
    if d is None or d == [] or d == ():
        return ""
    if hasattr(d, "value"):  # an Enum
        d = d.value
    if isinstance(d, bool):
        return "on" if d else "off"
    return f"`{d}`"


def _epilog_text(epilog: str) -> str:
    """An epilog's example lines, without its "Examples:" heading and common indentation."""
    lines = [ln for ln in epilog.replace("\b", "").splitlines() if ln.strip()]
    if lines and re.match(r"^\s*(?:Examples?|e\.g\.):?\s*$", lines[0]):
        lines = lines[1:]
    return textwrap.dedent("\n".join(lines))


def _clean(text: str) -> str:
    return re.sub(r"\[/?(?:bold|dim|italic|b|i)\]", "", text.replace("\b", "")).strip()


def _first_line(text: str) -> str:
    return _clean(text).split("\n\n")[0].replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(name: str) -> str:
    return "transferkit-" + name.replace(" ", "-")
