"""``transferkit``: the command line. One module per command; errors are shown by :mod:`transferkit.cli.errors`."""
from __future__ import annotations

import os

import typer

from transferkit.cli import (compare, continual, demo, evaluate, export, fit, listing, lr_find, merge, multitask, predict,
                             push, rank, rl, serve, shift, tune)
from transferkit.cli.errors import ErrorHandlingGroup

# ErrorHandlingGroup runs every command: a user error is one line and exit code 2, a bug one line naming a log.
app = typer.Typer(name="transferkit", cls=ErrorHandlingGroup, no_args_is_help=True, add_completion=False,
                  help="Transfer learning from pre-trained models to small labelled data sets: adapt, "
                       "measure against from-scratch baselines, and ship the result.")
for module in (fit, lr_find, evaluate, predict, compare, rank, shift, multitask, continual, export, merge, serve, push, tune,
               rl, listing, demo):
    module.register(app)


def _print_version(value: bool) -> None:
    if value:
        from transferkit import __version__

        typer.echo(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    # The global options; the group's help is the one given to typer.Typer above.
    pass


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # the CLI shows its own progress; transformers' per-load weight bars are noise here
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    app()


if __name__ == "__main__":
    main()
