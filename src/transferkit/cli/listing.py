"""``transferkit list``: backbone sources, strategies (with the other method registries), tasks, data sets, scores."""
from __future__ import annotations

from enum import Enum

import typer
from rich.table import Table

from transferkit.cli.common import console, examples


class What(str, Enum):
    backbones = "backbones"
    strategies = "strategies"
    tasks = "tasks"
    datasets = "datasets"
    scores = "scores"


def register(app: typer.Typer) -> None:
    app.command("list", epilog=examples(
        'transferkit list strategies',
        'transferkit list backbones'))(list_command)


def list_command(what: What = typer.Argument(What.strategies,
                                             help="backbones, strategies, tasks, datasets or scores.")) -> None:
    """List the registered backbone sources, strategies (with continual learners, pre-training methods and
    regularizers, and their options), tasks (with their metrics), built-in data sets or scores."""
    if what is What.backbones:
        from transferkit.backbones import list_backbones

        t = Table("prefix", "what", "examples",
                  title="backbone sources (spec = PREFIX:NAME; PREFIX:NAME@LAYER pools an intermediate layer)")
        for b in list_backbones():
            t.add_row(b["prefix"], b.get("help", ""), ", ".join(b.get("examples", [])))
    elif what is What.strategies:
        from transferkit.api import list_strategies

        t = Table("name", "kind", "what", "options (default)",
                  title="strategies, continual learners, pre-training methods and regularizers")
        for s in list_strategies():
            opts = "\n".join(f"{n}={d!r}: {h}" for n, d, h in s["options"])
            t.add_row(s["name"], s["kind"], s["help"], opts)
    elif what is What.tasks:
        from transferkit.api import list_tasks

        t = Table("task", "what", "primary metric", "metrics", "features", "head", title="tasks")
        for task in list_tasks():
            heads = task["head"] + (f" (or {', '.join(h for h in task['heads'] if h != task['head'])}: "
                                    "-o detector=...)" if len(task["heads"]) > 1 else "")
            t.add_row(task["name"], task["help"], task["primary_metric"], ", ".join(task["metrics"]),
                      task["features"], heads)
    elif what is What.scores:
        from transferkit.evaluation.transferability import SCORES

        t = Table("score", "needs", "what", "reference", title="transferability scores (transferkit rank)")
        for e in SCORES:
            t.add_row(e.name, e.obj.needs, e.obj.help, e.obj.reference)
    else:
        from transferkit.data import list_datasets

        t = Table("name", "modality / task", "size", "provenance", title="built-in data sets")
        for d in list_datasets():
            t.add_row(d["name"], f"{d.get('modality', '')} / {d.get('task', '')}", str(d.get("size", "")),
                      d.get("source", d.get("provenance", "")))
    console.print(t)
