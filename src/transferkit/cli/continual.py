"""``transferkit continual``: train learners on a stream of experiences and measure forgetting."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.common import ADDRESS_OPTION, CONFIG_OPTION, ENGINE_OPTION, console, examples, parse_list, parse_options


def register(app: typer.Typer) -> None:
    app.command("continual", epilog=examples(
        'transferkit continual --split 2 --learners naive,ewc,replay \\',
        '    -o buffer_size=200 --out runs/split'))(continual_command)


def continual_command(
    data: str = typer.Option("fashion-mnist", help="Data with a test split: built-in name, image folder, or table."),
    backbone: str = typer.Option("small-cnn:14", help="Network every learner starts from (small-cnn:14, "
                                                      "efficientnet-lite:0; mlp:256x256 for --permuted)."),
    split: Optional[int] = typer.Option(None, help="Split stream: this many classes per experience."),
    permuted: Optional[int] = typer.Option(None, help="Permuted stream: this many pixel permutations."),
    scenario: Optional[str] = typer.Option(None, help="task (a head per experience) or class (one growing head) for "
                                                      "--split; permuted streams are domain-incremental."),
    learners: str = typer.Option("naive,ewc,lwf,replay,progressive", help="Comma-separated learners."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Learner option KEY=VALUE "
                                                                           "(buffer_size=200, weight=10); repeatable."),
    labels_per_class: Optional[int] = typer.Option(300, help="Training items per class (seeded draw)."),
    test_per_class: Optional[int] = typer.Option(200, help="Test items per class."),
    seeds: int = typer.Option(1, help="Independent runs; the report gives 95% intervals over them."),
    epochs: int = typer.Option(2, help="Epochs per experience."),
    lr: float = typer.Option(2e-3, help="Learning rate."),
    batch_size: int = typer.Option(32, help="Batch size."),
    image_size: Optional[int] = typer.Option(None, help="Backbone input size in pixels."),
    out: Optional[Path] = typer.Option(None, help="Write continual.json, report.md and accuracy_matrices.png here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder; start over when OUT.runs holds "
                                                              "the finished runs of an interrupted continual."),
    resume: bool = typer.Option(False, "--resume", help="Go on from an interrupted continual: the (seed, learner) runs recorded in "
                                                        "OUT.runs are not trained again (same command and settings)."),
    config: Optional[Path] = CONFIG_OPTION,
    engine: str = ENGINE_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Train each learner on the experiences in order and report the accuracy matrix, average accuracy,
    forgetting, backward and forward transfer."""
    from transferkit.workflows.continual import run_continual
    from transferkit.workflows.engine import check_engine

    check_engine(engine, address)
    result = run_continual(data, backbone, split=split, permuted_tasks=permuted, scenario=scenario,
                           learners=parse_list(learners), options=parse_options(option),
                           labels_per_class=labels_per_class, test_per_class=test_per_class, seeds=seeds,
                           epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size, progress=False,
                           out=out, overwrite=overwrite, resume=resume, engine=engine, address=address)
    console.print(metrics_table(result))
    if out is not None:
        console.print(f"written: {out / 'report.md'}, {out / 'accuracy_matrices.png'}, {out / 'continual.json'}")


def metrics_table(result: dict) -> Table:
    from transferkit.evaluation.continual import METRICS

    st = result["stream"]
    t = Table(title=f"{st['name']}: {st['scenario']}-incremental, {st['experiences']} experiences "
                    f"({result['settings']['seeds']} seed(s), %)")
    t.add_column("learner")
    for m in METRICS:
        t.add_column(m.replace("_", " "), justify="right")
    for name, row in result["summary"].items():
        t.add_row(name, *[f"{100 * row[m][0]:.1f}" + (f" [{100 * row[m][1]:.1f}, {100 * row[m][2]:.1f}]"
                                                       if result["settings"]["seeds"] > 1 else "")
                          if row[m][0] == row[m][0] else "n/a" for m in METRICS])
    return t
