"""``transferkit``: the command line. One module per command."""
from __future__ import annotations

import os

import typer

from transferkit.cli import compare, demo, evaluate, fit, listing, predict

app = typer.Typer(name="transferkit", no_args_is_help=True, add_completion=False,
                  help="Transfer learning from pre-trained models to small labelled data sets: adapt, "
                       "measure against from-scratch baselines, and ship the result.")
for module in (fit, evaluate, predict, compare, listing, demo):
    module.register(app)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
