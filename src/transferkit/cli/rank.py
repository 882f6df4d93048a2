"""``transferkit rank``: score candidate backbones on the target data before training."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.common import ADDRESS_OPTION, CONFIG_OPTION, ENGINE_OPTION, console, examples, parse_list


def register(app: typer.Typer) -> None:
    app.command("rank", epilog=examples(
        'transferkit rank --data fashion-mnist --labels-per-class 10 \\',
        '    --candidates efficientnet-lite:0,efficientnet-lite:0@block5 \\',
        '    --image-size 64 --out runs/rank'))(rank_command)


def rank_command(
    candidates: str = typer.Option(..., help="Comma-separated backbone specs; SPEC@LAYER for an intermediate "
                                             "layer (efficientnet-lite:0@block5)."),
    data: str = typer.Option(..., help="Built-in data set name, image folder, or CSV/TSV/JSONL file (labelled)."),
    scores: Optional[str] = typer.Option(None, help="Comma-separated scores (transferkit list scores); "
                                                    "default: all.", rich_help_panel="Scoring"),
    primary: Optional[str] = typer.Option(None, help="The score that sorts the table and picks the backbone "
                                                     "(default: the first of --scores, or the library default).",
                                         rich_help_panel="Scoring"),
    labels_per_class: Optional[int] = typer.Option(None, help="Score a seeded draw of N labels per class."),
    max_items: int = typer.Option(2000, help="Score a stratified subset of at most this many items."),
    budget: Optional[float] = typer.Option(None, help="MINUTES: load no new candidate after this much time.",
                                           rich_help_panel="Scoring"),
    random_reference: bool = typer.Option(True, " /--no-random-reference", show_default=False,
                                          help="Skip the reference: by default each architecture is also scored at "
                                               "random init, and candidates that do no better are flagged.",
                                          rich_help_panel="Scoring"),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels for the backbones."),
    max_length: Optional[int] = typer.Option(None, help="Text: maximum tokens."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
    seed: int = typer.Option(0, help="Seed of the label draw."),
    out: Optional[Path] = typer.Option(None, help="Also write rank.csv and rank.md here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory; start over when OUT.runs holds "
                                                              "the finished runs of an interrupted rank."),
    resume: bool = typer.Option(False, "--resume", help="Go on from an interrupted rank: the candidates recorded in OUT.runs are "
                                                        "not scored again (same command and settings)."),
    config: Optional[Path] = CONFIG_OPTION,
    engine: str = ENGINE_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Rank CANDIDATES for DATA by transferability scores of their frozen features, and recommend a strategy."""
    from transferkit.workflows.engine import check_engine
    from transferkit.workflows.rank import rank

    check_engine(engine, address)
    options = {k: v for k, v in {"text_column": text_column, "label_column": label_column}.items() if v}
    result = rank(parse_list(candidates), data, scores=parse_list(scores) or None, primary=primary,
                  labels_per_class=labels_per_class, max_items=max_items, budget_minutes=budget,
                  random_reference=random_reference, image_size=image_size, max_length=max_length,
                  seed=seed, progress=True, data_options=options, out=out, overwrite=overwrite, resume=resume,
                  engine=engine, address=address)
    console.print(rank_table(result))
    console.print(f"[bold]recommendation:[/bold] {result.recommendation['reason']}")
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if result.path is not None:
        console.print(f"written: {result.path / 'rank.md'}")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def rank_table(result) -> Table:
    """Rank, candidate, every score, the random-init reference, the time taken and the flag."""
    table = result.table
    scores = [c for c in table if c.startswith("seconds:")]
    names = [c.split(":", 1)[1] for c in scores] or [result.primary]
    ref = f"random_{result.primary}"
    t = Table(title=f"candidates on {result.data}, sorted by {result.primary} (higher is better)")
    for col in ("rank", "candidate", "dim", *names, *([ref] if ref in table else []), "seconds", "flag"):
        t.add_column(col, justify="left" if col in ("candidate", "flag") else "right")
    for _, r in table.iterrows():
        seconds = (r.get("extract_seconds") or 0) + (r.get("score_seconds") or 0)
        flag = r["flag"] if r["flag"] not in ("failed", "skipped") else f"{r['flag']}: {r['error']}"
        t.add_row(_fmt(r["rank"] if r["rank"] == r["rank"] else None), r["candidate"], _fmt(r.get("features")),
                  *[_fmt(r.get(n)) for n in names], *([_fmt(r.get(ref))] if ref in table else []),
                  _fmt(float(seconds)), flag)
    return t
