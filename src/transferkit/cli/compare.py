"""``transferkit compare``: strategies and scratch baselines over seeds, with a transfer verdict."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import ADDRESS_OPTION, CONFIG_OPTION, ENGINE_OPTION, console, examples, parse_list, parse_options


def register(app: typer.Typer) -> None:
    app.command("compare", epilog=examples(
        'transferkit compare --backbone sentence:all-MiniLM-L6-v2 \\',
        '    --data debian-packages --strategies linear-probe \\',
        '    --labels-per-class 8,32 --seeds 3 --out runs/debian-compare'))(compare_command)


def compare_command(
    backbone: str = typer.Option(..., help="Backbone spec."),
    data: str = typer.Option(..., help="Built-in data set name, image folder, or CSV/TSV/JSONL file."),
    strategies: str = typer.Option("linear-probe,finetune", help="Comma-separated strategy names."),
    seeds: int = typer.Option(3, help="Seeds (data draws) per strategy."),
    labels_per_class: Optional[str] = typer.Option(None, help="N or N1,N2,... labelled examples per class."),
    baselines: str = typer.Option("auto", help="Scratch baselines: auto, none, or variants (small-cnn,same-arch,tfidf,crf)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="STRATEGY.KEY=VALUE option for one strategy (repeatable), e.g. "
                                                                          "finetune.detector=retinanet (the scratch baseline "
                                                                          "then trains the same detector)."),
    test_data: Optional[str] = typer.Option(None, help="Evaluation data (default: the built-in test split)."),
    max_test: Optional[int] = typer.Option(None, help="Evaluate on a fixed stratified subset of this many test items."),
    val_fraction: Optional[float] = typer.Option(
        None, help="Validation split held out of each labelled draw. Default: 20% where every class keeps at least 10 "
                   "validation items (or there is no test split), else none: every run trains on all labels."),
    epochs: Optional[int] = typer.Option(None, help="Epochs of the transfer strategies (baselines keep their recipes)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of pre-trained weights."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per optimizer step. Default: the task's (32; 8 for detection and segmentation)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels for the backbone."),
    max_length: Optional[int] = typer.Option(None, help="Text: maximum tokens."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
    out: Optional[Path] = typer.Option(None, help="Write report.md/html, runs.csv and summary.csv here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory; start over when OUT.runs holds "
                                                              "the finished runs of an interrupted compare."),
    resume: bool = typer.Option(False, "--resume", help="Go on from an interrupted compare: the runs recorded in OUT.runs are not "
                                                        "trained again (same command and settings)."),
    config: Optional[Path] = CONFIG_OPTION,
    engine: str = ENGINE_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Compare STRATEGIES against from-scratch baselines over SEEDS; print mean ± 95% CI and verdicts."""
    from transferkit.api import compare
    from transferkit.cli.tables import compare_table
    from transferkit.reports.plots import lpc_label

    per_strategy: dict[str, dict] = {}
    for key, value in parse_options(option).items():
        name, _, field = key.partition(".")
        if not field:
            raise typer.BadParameter(f"--option {key}=...: name the strategy, like finetune.train_last=2")
        per_strategy.setdefault(name.replace("_", "-"), {})[field] = value
    budgets = parse_list(labels_per_class, int) or None
    result = compare(backbone, data, parse_list(strategies), seeds=seeds,
                     labels_per_class=budgets if budgets and len(budgets) > 1 else (budgets[0] if budgets else None),
                     baselines="auto" if baselines == "auto" else ([] if baselines == "none" else parse_list(baselines)),
                     strategy_options=per_strategy, test_data=test_data, max_test=max_test, val_fraction=val_fraction,
                     image_size=image_size, max_length=max_length, out=out, overwrite=overwrite, resume=resume,
                     epochs=epochs, lr=lr,
                     batch_size=batch_size, text_column=text_column, label_column=label_column, engine=engine, address=address)
    console.print(compare_table(result))
    for _, v in result.verdicts.iterrows():
        console.print(f"[bold]{v['strategy']}[/bold] @ {lpc_label(v['labels_per_class'], v.get('labels_unit'))}: "
                      f"{v['explanation']}")
    if result.path:
        console.print(f"report: {result.path / 'report.html'}")
