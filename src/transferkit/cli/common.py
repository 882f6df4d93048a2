"""Shared pieces of the command line: recipe files, option parsing, error display."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from transferkit.errors import ConfigError, TransferkitError

# Tables are wide: use the terminal's width, or 120 columns when writing to a file or pipe ($COLUMNS wins).
console = Console(width=shutil.get_terminal_size((120, 24)).columns)
err_console = Console(stderr=True)


def load_recipe(ctx: typer.Context, param, value: Path | None) -> Path | None:
    """Eager ``--config`` callback: the YAML's keys become the defaults of the other flags.

    Keys are the flag names with dashes or underscores (``labels-per-class: 10``);
    ``options:`` may be a mapping of strategy options. Flags given on the command
    line still win.
    """
    if value is None:
        return None
    try:
        raw = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read recipe {value}: {exc}") from None
    if not isinstance(raw, dict):
        raise typer.BadParameter(f"recipe {value} must be a mapping of option names to values")
    known = {p.name for p in ctx.command.params}
    defaults = {}
    for key, v in raw.items():
        name = str(key).replace("-", "_")
        name = "option" if name == "options" else name
        if name not in known:
            raise typer.BadParameter(f"recipe {value}: unknown key {key!r}. Valid keys: "
                                     f"{', '.join(sorted(k.replace('_', '-') for k in known if k != 'config'))}")
        if name == "option" and isinstance(v, dict):
            v = [f"{k}={yaml.safe_dump(x, default_flow_style=True).strip()}" for k, x in v.items()]
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


CONFIG_OPTION = typer.Option(None, "--config", help="YAML recipe whose keys are the same as these flags.",
                             is_eager=True, callback=load_recipe, exists=True, dir_okay=False)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["rank=8", "freeze=[blocks.0*]"]`` -> ``{"rank": 8, "freeze": ["blocks.0*"]}`` (values read as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"Strategy option {pair!r} must look like KEY=VALUE.")
        key, val = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(val) if val.strip() else None
    return out


def parse_list(text: str | None, cast=str) -> list:
    return [cast(x.strip()) for x in (text or "").split(",") if x.strip()]


def friendly_errors(fn):
    """Show library errors as one red line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TransferkitError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper
