"""``transferkit evaluate``: metrics of a saved bundle on labelled data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)


@friendly_errors
def evaluate_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `transferkit fit`."),
    data: str = typer.Option(..., help="Built-in data set (its test split) or a labelled folder/table file."),
    split: str = typer.Option("test", help="For built-in data: test or train."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
) -> None:
    """Evaluate the bundle at BUNDLE on DATA and print its metrics."""
    from transferkit.api import evaluate
    from transferkit.cli.tables import metrics_table

    metrics = evaluate(bundle, data, split=split, text_column=text_column, label_column=label_column)
    console.print(metrics_table(metrics, f"{bundle} on {data}"))
