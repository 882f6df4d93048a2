"""``transferkit tune``: an Optuna search over a strategy's hyperparameters, scored on validation."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from transferkit.cli.common import ADDRESS_OPTION, ENGINE_OPTION, console, err_console, examples, parse_options
from transferkit.errors import ConfigError

SPACE_HELP = ("Search-space entry KEY=KIND:LOW:HIGH or KEY=choice:A:B:... (repeatable); KIND is log "
              "(log-uniform float), float or int. KEY is a training setting (lr, head_lr, epochs, "
              "weight_decay, schedule, ...) or a strategy option (dropout, train_last, ...). Example: "
              "--space lr=log:1e-5:1e-2 --space epochs=int:2:30 --space schedule=choice:cosine:onecycle. "
              "Giving any --space replaces the strategy's default space.")


def register(app: typer.Typer) -> None:
    app.command("tune", epilog=examples(
        'transferkit tune --backbone efficientnet-lite:0 --data fashion-mnist \\',
        '    --strategy finetune --labels-per-class 10 --image-size 64 \\',
        '    --trials 20 --storage study.db --space lr=log:1e-5:1e-2 \\',
        '    --out runs/tuned'))(tune_command)


def parse_space(entries: list[str] | None) -> dict[str, list] | None:
    """``["lr=log:1e-5:1e-2", "schedule=choice:cosine:onecycle"]`` -> ``{"lr": ["log", 1e-5, 1e-2], ...}``.

    Bounds and choices are read as YAML (``1e-5`` is a float, ``null`` is None).
    """
    if not entries:
        return None
    space: dict[str, list] = {}
    for entry in entries:
        key, sep, spec = entry.partition("=")
        parts = spec.split(":")
        if not sep or not key.strip() or len(parts) < 2:
            raise ConfigError(f"Search-space entry {entry!r} must look like KEY=KIND:LOW:HIGH or "
                              f"KEY=choice:A:B, e.g. lr=log:1e-5:1e-2.")
        space[key.strip().replace("-", "_")] = [parts[0].strip(), *(_scalar(p) for p in parts[1:])]
    return space


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string (no dot in the mantissa)
        try:
            return float(value)
        except ValueError:
            return value
    return value


def tune_command(
    backbone: str = typer.Option(..., help="Backbone spec, e.g. efficientnet-lite:0, timm:resnet18."),
    data: str = typer.Option(..., help="Built-in data set name, image folder, or CSV/TSV/JSONL file (its test split is never used)."),
    strategy: str = typer.Option("finetune", help="Strategy name (see `transferkit list strategies`)."),
    trials: int = typer.Option(20, help="Completed trials wanted in the study (a resumed study counts its earlier ones)."),
    storage: Optional[Path] = typer.Option(None, help="SQLite file holding the study; rerun the same command to resume it."),
    study_name: Optional[str] = typer.Option(None, help="Study name (default: from strategy, backbone and data)."),
    space: Optional[list[str]] = typer.Option(None, "--space", help=SPACE_HELP),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Fixed strategy option KEY=VALUE (repeatable)."),
    labels_per_class: Optional[int] = typer.Option(None, help="Draw N labelled training examples per class (seeded), once for all trials."),
    val_fraction: float = typer.Option(0.2, help="Stratified validation split every trial is scored on."),
    metric: Optional[str] = typer.Option(None, help="Validation metric to optimise (default: accuracy, or r2 for regression)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process (fixed). Default: the task's (32; 8 for detection and segmentation)."),
    seed: int = typer.Option(0, help="Seed of the draw, the split, training and the sampler."),
    out: Optional[Path] = typer.Option(None, help="Refit the best parameters and save that bundle here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle at --out."),
    timeout: Optional[float] = typer.Option(None, help="Stop starting new trials after this many minutes."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default: the backbone's)."),
    max_length: Optional[int] = typer.Option(None, help="Text: maximum tokens (default: 128)."),
    engine: str = ENGINE_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Search STRATEGY's hyperparameters for BACKBONE on DATA; every trial is scored on the validation split."""
    from transferkit.workflows.tune import tune

    try:
        result = tune(backbone, data, strategy, space=parse_space(space), trials=trials, storage=storage,
                      study_name=study_name, labels_per_class=labels_per_class, val_fraction=val_fraction,
                      metric=metric, seed=seed, out=out, overwrite=overwrite, timeout_minutes=timeout,
                      image_size=image_size, max_length=max_length, strategy_options=parse_options(option),
                      batch_size=batch_size, engine=engine, address=address)
    except KeyboardInterrupt:
        hint = "rerun the same command to resume" if storage else "pass --storage FILE to make a search resumable"
        err_console.print(f"[bold yellow]interrupted[/bold yellow]: {hint}.", highlight=False)
        raise typer.Exit(130) from None
    console.print(trials_table(result))
    best = ", ".join(f"{k}={_fmt(v)}" for k, v in result.best_params.items())
    console.print(f"best validation {result.metric}: [bold]{result.best_value:.4f}[/bold] with {best}", highlight=False)
    if result.storage:
        console.print(f"study '{result.study_name}' in {result.storage}")
    if result.path:
        console.print(f"bundle: [bold]{result.path}[/bold]")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_table(result):
    from rich.table import Table

    frame = result.trials
    params = [c for c in frame.columns if c not in ("number", "state", "value", "seconds")]
    t = Table(title=f"trials (validation {result.metric}, {result.direction})")
    for col in ("#", "state", result.metric, *params, "seconds"):
        t.add_column(col, justify="left" if col == "state" else "right")
    best = result.best_value
    for _, r in frame.iterrows():
        value = "" if math.isnan(r["value"]) else f"{r['value']:.4f}"
        style = "bold green" if r["state"] == "COMPLETE" and r["value"] == best else None
        cells = ["" if isinstance(r[p], float) and math.isnan(r[p]) else _fmt(r[p]) for p in params]
        t.add_row(str(r["number"]), r["state"], value, *cells, _fmt(r["seconds"]), style=style)
    return t
