"""``transferkit evaluate``: metrics of a saved bundle on labelled data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import console, examples


def register(app: typer.Typer) -> None:
    app.command("evaluate", epilog=examples(
        'transferkit evaluate runs/fmnist --data fashion-mnist',
        'transferkit evaluate runs/penguins-fair --data penguins \\',
        '    --label-column sex --sensitive-column island'))(evaluate_command)


def evaluate_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `transferkit fit`."),
    data: str = typer.Option(..., help="Built-in data set (its test split) or a labelled folder/table file."),
    split: str = typer.Option("test", help="For built-in data: test or train."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
    sensitive_column: Optional[str] = typer.Option(None, help="A sensitive-attribute (group) column, e.g. sex: adds "
                                                              "per-group accuracy, demographic parity and equalized "
                                                              "odds differences (built-in penguins: island or sex)."),
) -> None:
    """Evaluate the bundle at BUNDLE on DATA and print its metrics."""
    from transferkit.api import evaluate
    from transferkit.cli.tables import metrics_table

    metrics = evaluate(bundle, data, split=split, text_column=text_column, label_column=label_column,
                       sensitive_column=sensitive_column)
    console.print(metrics_table(metrics, f"{bundle} on {data}"))
    if "fairness" in metrics:
        console.print(fairness_table(metrics["fairness"]))


def fairness_table(fairness: dict):
    """Per-group count and accuracy, then the gaps, of :func:`transferkit.evaluation.fairness.group_metrics`."""
    from rich.table import Table

    t = Table(title=f"groups of '{fairness['attribute']}'")
    for col in ("group", "count", "accuracy"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for name, g in fairness["groups"].items():
        t.add_row(str(name), str(g["count"]), f"{g['accuracy']:.4f}")
    t.add_section()
    for name, key in ((f"worst group ({fairness['worst_group']})", "accuracy_worst_group"),
                      ("accuracy gap", "accuracy_gap"), ("demographic parity diff.", "demographic_parity_difference"),
                      ("equalized odds diff.", "equalized_odds_difference")):
        t.add_row(name, "", f"{fairness[key]:.4f}")
    return t
