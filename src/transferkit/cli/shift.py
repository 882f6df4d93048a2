"""``transferkit shift``: how far the target domain is from the source, before and after adaptation."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.common import CONFIG_OPTION, console, examples


def register(app: typer.Typer) -> None:
    app.command("shift", epilog=examples(
        'transferkit shift --source fashion-mnist --target photos/ \\',
        '    --backbone efficientnet-lite:0 --image-size 32 --out runs/shift'))(shift_command)


def shift_command(
    source: str = typer.Option(..., help="Labelled source data: built-in name, image folder, or CSV/TSV/JSONL file."),
    target: str = typer.Option(..., help="Target data: the same forms, or a flat folder of unlabelled images."),
    backbone: Optional[str] = typer.Option(None, help="Backbone spec: the shift in its feature space (before "
                                                      "adaptation)."),
    bundle: Optional[Path] = typer.Option(None, help="An adapted bundle (fit --target-data): the shift after "
                                                     "adaptation. With --backbone, both are shown."),
    out: Optional[Path] = typer.Option(None, help="Write shift.json and shift_projection.png here."),
    projection: str = typer.Option("tsne", help="2-D projection of the plot: tsne, umap (needs umap-learn) or pca."),
    max_items: int = typer.Option(1000, help="At most this many items per domain (seeded subsample)."),
    plot_items: int = typer.Option(500, help="At most this many items per domain in the plot."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels for --backbone."),
    max_length: Optional[int] = typer.Option(None, help="Text: maximum tokens for --backbone."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
    seed: int = typer.Option(0, help="Seed of the subsamples and the projection."),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """MMD, proxy A-distance and CORAL distance between SOURCE and TARGET features, and a projection plot."""
    from transferkit.workflows.shift import measure_shift, save_shift

    result = measure_shift(source, target, backbone=backbone, bundle=str(bundle) if bundle else None,
                           max_items=max_items, plot_items=plot_items, projection=projection,
                           image_size=image_size, max_length=max_length, text_column=text_column,
                           label_column=label_column, seed=seed, progress=True)
    console.print(shift_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if out is not None:
        path = save_shift(result, out)
        console.print(f"written: {path / 'shift.json'}, {path / 'shift_projection.png'}")


def shift_table(result) -> Table:
    t = Table(title=f"shift {result.source['name']} (n={result.source['n']}) -> {result.target['name']} "
                    f"(n={result.target['n']}), lower is closer")
    for col in ("model", "MMD²", "proxy A-distance", "CORAL", "seconds"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, m in result.measures.items():
        t.add_row(name, f"{m['mmd']:.4f}", f"{m['proxy_a_distance']:.3f}", f"{m['coral']:.3g}",
                  f"{result.seconds.get(name, 0):.1f}")
    return t
