"""``transferkit multitask``: one model for several tasks, measured against each task trained alone."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.common import CONFIG_OPTION, console, examples, parse_list, parse_options


def register(app: typer.Typer) -> None:
    app.command("multitask", epilog=examples(
        'transferkit multitask --data penguins --backbone mlp:64x64 \\',
        '    --weighting pcgrad --seeds 3 --out runs/penguins-mt'))(multitask_command)


def multitask_command(
    data: str = typer.Option("penguins", help="penguins (species + sex), fashion-mnist (class + super-category), "
                                              "or a table file with --label-columns."),
    backbone: str = typer.Option("mlp:64x64", help="Shared backbone spec (mlp:64x64 for tables, "
                                                   "efficientnet-lite:0 for images)."),
    label_columns: Optional[str] = typer.Option(None, help="Table files: comma-separated label columns, one task each."),
    test_data: Optional[str] = typer.Option(None, help="Table files: the test table (same columns)."),
    feature_columns: Optional[str] = typer.Option(None, help="Table files: comma-separated input columns "
                                                             "(default: every numeric column that is no label)."),
    sharing: str = typer.Option("hard", help="hard (one backbone, a head per task) or soft (a backbone per task, "
                                             "L2-tied)."),
    weighting: str = typer.Option("fixed", help="fixed, uncertainty, pcgrad or gradnorm."),
    weights: Optional[list[str]] = typer.Option(None, "--weight", help="Fixed task weight TASK=W; repeatable."),
    soft_penalty: float = typer.Option(1e-3, help="soft sharing: weight of the L2 tie between the backbones."),
    labels_per_class: Optional[int] = typer.Option(None, help="Draw this many items per class of the first task."),
    max_test: Optional[int] = typer.Option(None, help="Score on at most this many test items (the same each seed)."),
    seeds: int = typer.Option(1, help="Independent runs; the report gives 95% intervals over them."),
    epochs: int = typer.Option(40, help="Epochs (the same for the single-task models)."),
    lr: float = typer.Option(1e-3, help="Learning rate of the backbone."),
    head_lr: Optional[float] = typer.Option(None, help="Learning rate of the heads (default: --lr)."),
    batch_size: int = typer.Option(32, help="Batch size."),
    single: bool = typer.Option(True, help="Also train each task alone with the same budget, to compare."),
    image_size: Optional[int] = typer.Option(None, help="Image backbones: input size in pixels."),
    out: Optional[Path] = typer.Option(None, help="Write multitask.json, report.md and bundles/TASK here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder; start over when OUT.runs holds "
                                                              "the finished runs of an interrupted multitask."),
    resume: bool = typer.Option(False, "--resume", help="Go on from an interrupted multitask: the runs recorded in OUT.runs are not "
                                                        "trained again (same command and settings)."),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Train one model on every task (hard or soft sharing, fixed / uncertainty / PCGrad / GradNorm weighting)
    and each task alone; per-task metrics side by side, and one bundle per task."""
    from transferkit.workflows.multitask import report_rows, run_multitask

    result = run_multitask(data, backbone, sharing=sharing, weighting=weighting,
                           weights=parse_options(weights) or None, soft_penalty=soft_penalty,
                           label_columns=parse_list(label_columns) or None, test_data=test_data,
                           feature_columns=parse_list(feature_columns) or None,
                           labels_per_class=labels_per_class, max_test=max_test, seeds=seeds, epochs=epochs, lr=lr,
                           head_lr=head_lr, batch_size=batch_size, single=single, image_size=image_size, out=out,
                           overwrite=overwrite, resume=resume)
    t = Table(title=f"{data}: {sharing}/{weighting} vs each task alone ({seeds} seed(s), %)")
    for col in ("task", "metric", "multi-task", "single-task", "difference"):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for row in report_rows(result):
        t.add_row(*row)
    console.print(t)
    if out is not None:
        console.print(f"written: {out / 'report.md'}, {out / 'multitask.json'}, bundles in {out / 'bundles'}")
