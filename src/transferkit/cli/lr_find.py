"""``transferkit lr-find``: the learning-rate range test of a strategy on the training data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import CONFIG_OPTION, console, examples, parse_options


def register(app: typer.Typer) -> None:
    app.command("lr-find", epilog=examples(
        'transferkit lr-find --backbone efficientnet-lite:0 --data digits \\',
        '    --labels-per-class 10 --image-size 32 --strategy finetune \\',
        '    --out lr_find.png'))(lr_find_command)


def lr_find_command(
    backbone: str = typer.Option(..., help="Backbone spec, e.g. efficientnet-lite:0, timm:resnet18."),
    data: str = typer.Option(..., help="Built-in data set name, image folder, or CSV/TSV/JSONL file."),
    strategy: str = typer.Option("finetune", help="Strategy name (see `transferkit list strategies`)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Strategy option KEY=VALUE (repeatable)."),
    labels_per_class: Optional[int] = typer.Option(None, help="Draw N labelled training examples per class (seeded)."),
    val_fraction: float = typer.Option(0.2, help="Validation split held out, as `fit` does (the test runs on the rest)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default: the backbone's)."),
    max_length: Optional[int] = typer.Option(None, help="Text: maximum tokens (default: 128)."),
    drop_path: Optional[float] = typer.Option(None, help="Stochastic-depth rate (timm: and efficientnet-lite:)."),
    batch_size: int = typer.Option(32, help="Batch size."),
    seed: int = typer.Option(0, help="Random seed (data draw, split, batch order)."),
    start: float = typer.Option(1e-7, help="First learning rate of the ramp."),
    end: float = typer.Option(1.0, help="Last learning rate of the ramp."),
    steps: int = typer.Option(100, help="Mini-batches (at most: the test stops when the loss diverges)."),
    out: Path = typer.Option(Path("lr_find.png"), "--out", help="PNG of loss against learning rate to write."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Ramp the learning rate over mini-batches of DATA, plot the loss, and suggest a learning rate for `fit --lr`."""
    from transferkit.api import lr_find

    result = lr_find(backbone, data, strategy, strategy_options=parse_options(option),
                     labels_per_class=labels_per_class, val_fraction=val_fraction, image_size=image_size,
                     max_length=max_length, drop_path=drop_path, batch_size=batch_size, seed=seed, start=start,
                     end=end, steps=steps, out=out, text_column=text_column, label_column=label_column,
                     progress=True)
    others = ", ".join(f"{k} {v:.3g}" for k, v in result.suggestions.items() if k != result.method and v is not None)
    stop = "stopped at divergence" if result.stopped_early else "reached the end of the range"
    console.print(f"suggested learning rate: [bold]{result.suggestion:.3g}[/bold] ({result.method}"
                  f"{'; ' + others if others else ''}; {len(result.lrs)} steps, {stop})", highlight=False)
    console.print(f"plot: {out}", highlight=False)
    console.print(f"train with: transferkit fit ... --strategy {strategy} --lr {result.suggestion:.2g} "
                  f"--head-lr {result.head_lr:.2g} (or --lr auto)", highlight=False)
