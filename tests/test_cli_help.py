"""``--help`` reads well in an 80-column terminal: every option name whole, an example per command; ``--version``."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

import transferkit
from transferkit.cli.main import app

COMMANDS = typer.main.get_command(app).commands
runner = CliRunner()


def help_text(*args: str) -> str:
    r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    return r.output


def unreadable(text: str, command) -> list[str]:
    """The option names of ``command`` that ``text`` does not show whole (cut by an ellipsis, or missing)."""
    names = [o for p in command.params for o in [*p.opts, *getattr(p, "secondary_opts", [])] if o.startswith("-")]
    return [n for n in names if not re.search(re.escape(n) + r"(?![\w-]|…)", text)]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_name_is_whole_at_80_columns(name):
    text = help_text(name)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not unreadable(text, COMMANDS[name]), unreadable(text, COMMANDS[name])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_an_example(name):
    assert COMMANDS[name].epilog, f"`transferkit {name}` has no epilog with an example"
    assert f"transferkit {name}" in COMMANDS[name].epilog
    assert f"transferkit {name}" in help_text(name).split("Usage:", 1)[1].split("\n", 2)[2]


def _leaves(command, path=()):
    """``(path, command)`` for every command that runs, inside groups (``rl train``) too."""
    subs = getattr(command, "commands", None)
    if subs is None:
        return [(" ".join(path), command)]
    return [leaf for name, sub in sorted(subs.items()) for leaf in _leaves(sub, (*path, name))]


def test_overwrite_is_one_plain_flag_everywhere():
    """``--overwrite`` and no ``--no-overwrite``, in every command that writes an output."""
    found = {name: p for name, c in _leaves(typer.main.get_command(app)) for p in c.params if p.name == "overwrite"}
    assert {"fit", "rl train", "rl transfer", "rl export", "rl compare"} <= set(found)
    assert {name: (p.opts, p.secondary_opts) for name, p in found.items()} == {
        name: (["--overwrite"], []) for name in found}


def test_the_check_can_fail():
    """A name cut by Rich's ellipsis is caught."""
    assert "--check-transfer" in unreadable("│ --resume  --check-trans…  <bool> │", COMMANDS["fit"])
    assert "--resume" not in unreadable("│ --resume  --check-trans…  <bool> │", COMMANDS["fit"])


def test_fit_help_piped_through_cat_in_80_columns():
    """What the issue asked for, as a user runs it: ``COLUMNS=80 transferkit fit --help | cat``."""
    out = subprocess.run([sys.executable, "-c", "from transferkit.cli.main import main; main()", "fit", "--help"],
                         env={**os.environ, "COLUMNS": "80"}, capture_output=True, text=True, timeout=120).stdout
    assert not unreadable(out, COMMANDS["fit"])
    assert "Examples:" in out and "--check-transfer" in out


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"transferkit {transferkit.__version__}"
