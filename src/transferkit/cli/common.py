"""Shared pieces of the command line: recipe files, option parsing, consoles.

Errors are shown by :mod:`transferkit.cli.errors`, around every command.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from transferkit.errors import ConfigError

# Tables are wide: use the terminal's width, or 120 columns when writing to a file or pipe ($COLUMNS wins).
console = Console(width=shutil.get_terminal_size((120, 24)).columns)
err_console = Console(stderr=True, soft_wrap=True)


def load_recipe(ctx: typer.Context, param, value: Path | None) -> Path | None:
    """Eager ``--config`` callback: the YAML's keys become the defaults of the other flags.

    Keys are the flag names with dashes or underscores (``labels-per-class: 10``);
    ``options:`` may be a mapping of strategy options (so may any repeatable
    flag such as ``pretrain-option:``). Flags given on the command line still
    win. Each value is checked against its flag's type here, so an error names
    the recipe and the key.

    Raises:
        ConfigError: the file cannot be read or parsed, is not a mapping, has an
            unknown key (the valid keys are listed) or a value of the wrong type.
    """
    if value is None:
        return None
    try:
        raw = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Recipe {value}: byte {exc.start} is not valid UTF-8. Save the file as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read recipe {value}: {exc.strerror or exc}.") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"Recipe {value} is not valid YAML: {_yaml_problem(exc)}.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Recipe {value} must be a mapping of option names to values (e.g. 'epochs: 3'); "
                          f"got a YAML {type(raw).__name__}.")
    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    defaults = {}
    for key, v in raw.items():
        name = str(key).replace("-", "_")
        name = "option" if name == "options" else name
        if name not in params:
            raise ConfigError(f"Recipe {value}: unknown key {key!r}. Valid keys: "
                              f"{', '.join(sorted(k.replace('_', '-') for k in params))}.")
        defaults[name] = _recipe_value(ctx, params[name], v, f"Recipe {value}: key {key!r}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _recipe_value(ctx: typer.Context, param, v: Any, where: str) -> Any:
    """A recipe's value for ``param``: a mapping or a str becomes a repeatable flag's KEY=VALUE list; type-checked."""
    if getattr(param, "multiple", False):
        if isinstance(v, dict):
            v = [f"{k}={yaml.safe_dump(x, default_flow_style=True).strip()}" for k, x in v.items()]
        elif isinstance(v, str):
            v = [v]
        elif not isinstance(v, list):
            raise ConfigError(f"{where} must be a mapping (KEY: VALUE) or a list of KEY=VALUE; got {v!r}.")
        v = [str(x) for x in v]
    if v is None:
        return v
    try:  # the flag's own conversion, as for a command-line value
        param.process_value(ctx, v)
    except Exception as exc:  # noqa: BLE001  (click/typer raise several kinds; each has a message for the user)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise ConfigError(f"{where}: {message} Got {v!r}.") from None
    return v


CONFIG_OPTION = typer.Option(None, "--config", help="YAML recipe whose keys are the same as these flags.",
                             is_eager=True, callback=load_recipe, exists=True, dir_okay=False)


ENGINE_OPTION = typer.Option("local", help="Where the runs execute: local (one after another in this process) or "
                                           "ray (Ray tasks in parallel; see --address).", rich_help_panel="Scaling out")
ADDRESS_OPTION = typer.Option(None, help="With --engine ray: the Ray cluster, 'auto' (the one started on this machine "
                                         "with `ray start --head`) or ray://HOST:PORT. Default: start a local Ray.",
                              rich_help_panel="Scaling out")


def _yaml_problem(exc: BaseException) -> str:
    """A YAML parse error in a few words: the problem and where (line and column)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def parse_options(pairs: list[str] | None, flag: str = "-o") -> dict[str, Any]:
    """``["rank=8", "freeze=[blocks.0*]"]`` -> ``{"rank": 8, "freeze": ["blocks.0*"]}`` (values read as YAML).

    The values' types are checked by the config they go to (a strategy's
    config checks each against its field, see
    :func:`transferkit.constraints.check_field_types`).

    Raises:
        ConfigError: a pair is not ``KEY=VALUE``, or the value is not valid YAML
            (the message names the pair and how to write lists and quotes).
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        pair = str(pair)
        key, sep, val = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"Option {flag} {pair!r} must look like KEY=VALUE, e.g. {flag} train_last=2.")
        try:
            out[key] = yaml.safe_load(val) if val.strip() else None
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"Option {flag} {pair!r}: the value is not valid YAML ({_yaml_problem(exc)}). "
                              f"Write a list as [a, b] and a mapping as {{k: v}}; quote a value with a ':' or "
                              f"that starts with '[', '{{' or a quote.") from None
    return out


def examples(*lines: str) -> str:
    """A command's ``epilog``: example shell lines under an "Examples:" heading.

    Each line stays under 78 columns, so ``--help`` in an 80-column terminal
    never wraps one; a long command continues on the next line after ``\\``.
    The documentation's command-line reference shows the same lines.

    Example:
        >>> print(examples("transferkit list backbones"))
        Examples:
          transferkit list backbones
    """
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def parse_list(text: str | None, cast=str) -> list:
    return [cast(x.strip()) for x in (text or "").split(",") if x.strip()]

