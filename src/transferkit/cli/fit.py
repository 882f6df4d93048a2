"""``transferkit fit``: adapt a backbone to data with one strategy and save a bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import CONFIG_OPTION, console, friendly_errors, parse_options
from transferkit.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_command)


@friendly_errors
def fit_command(
    backbone: str = typer.Option(..., help="Backbone spec, e.g. efficientnet-lite:0, sentence:all-MiniLM-L6-v2, timm:resnet18."),
    data: str = typer.Option(..., help="Built-in data set name, image folder, or CSV/TSV/JSONL file."),
    out: Path = typer.Option(..., help="Bundle directory to write (refused if it exists, unless --overwrite)."),
    strategy: str = typer.Option("linear-probe", help="Strategy name (see `transferkit list strategies`)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Strategy option KEY=VALUE (repeatable), e.g. -o train_last=2."),
    labels_per_class: Optional[int] = typer.Option(None, help="Draw N labelled training examples per class (seeded)."),
    test_data: Optional[str] = typer.Option(None, help="Evaluation data (default: the built-in test split, if any)."),
    target_data: Optional[str] = typer.Option(None, help="Domain adaptation: the target domain's inputs (data set, "
                                                         "folder, flat image folder or table); labels unused."),
    target_labelled_data: Optional[str] = typer.Option(None, help="Domain adaptation: a few labelled target "
                                                                  "examples (semi-supervised)."),
    pretrain: Optional[str] = typer.Option(None, help="Self-supervised pre-training of the backbone on "
                                                       "--unlabelled-data first: simclr, simsiam (images) or mlm (text)."),
    unlabelled_data: Optional[str] = typer.Option(None, help="Unlabelled inputs for --pretrain (data set, folder, "
                                                             "flat image folder or table); labels unused."),
    pretrain_option: Optional[list[str]] = typer.Option(None, "--pretrain-option", help="Pre-training option "
                                                        "KEY=VALUE (repeatable), e.g. --pretrain-option temperature=0.2."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="Pre-training epochs (default: the method's)."),
    pretrain_max_items: Optional[int] = typer.Option(None, help="Pre-train on a seeded draw of at most N unlabelled items."),
    val_fraction: float = typer.Option(0.2, help="Stratified validation split held out of the training data."),
    val_data: Optional[str] = typer.Option(None, help="Validation data (then no split is held out of --data)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: the strategy's)."),
    lr: Optional[str] = typer.Option(None, help="Learning rate of pre-trained weights: a number, or 'auto' to run "
                                                "the learning-rate finder first (default: the strategy's)."),
    head_lr: Optional[float] = typer.Option(None, help="Learning rate of new layers (default: the strategy's)."),
    batch_size: int = typer.Option(32, help="Batch size per process."),
    schedule: str = typer.Option("cosine", help="Learning-rate schedule: cosine, onecycle or constant (with warm-up)."),
    patience: Optional[int] = typer.Option(None, help="Early stopping after N epochs without validation gain."),
    mixed_precision: str = typer.Option("no", help="no, bf16 or fp16."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    seed: int = typer.Option(0, help="Random seed (data draw, split, initialisation)."),
    image_size: Optional[int] = typer.Option(None, help="Image side in pixels (default: the backbone's)."),
    max_length: Optional[int] = typer.Option(None, help="Text: maximum tokens (default: 128)."),
    drop_path: Optional[float] = typer.Option(None, help="Stochastic-depth rate in training (timm: and "
                                                         "efficientnet-lite: backbones), e.g. 0.1."),
    text_column: Optional[str] = typer.Option(None, help="Table files: the text column."),
    label_column: str = typer.Option("label", help="Table files: the label column."),
    sensitive_column: Optional[str] = typer.Option(None, help="A sensitive-attribute (group) column, e.g. sex: kept "
                                                              "out of the inputs; adds group fairness metrics and "
                                                              "feeds the reweighing / adversarial-debiasing strategies "
                                                              "(built-in penguins: island or sex)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle at --out."),
    check_transfer: bool = typer.Option(False, help="Also train the from-scratch baseline on the same data and "
                                                    "record whether transfer helped (verdict in manifest and report)."),
    track: Optional[str] = typer.Option(None, help="Experiment tracker: tensorboard or mlflow (needs transferkit[track])."),
    track_dir: Optional[Path] = typer.Option(None, help="Tracker output folder (default: runs/track; MLflow: a local "
                                                        "file store there unless MLFLOW_TRACKING_URI is set)."),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Adapt BACKBONE to DATA with STRATEGY; save a bundle (weights, manifest, report) to OUT."""
    from transferkit.api import fit
    from transferkit.cli.evaluate import fairness_table
    from transferkit.cli.tables import metrics_table

    result = fit(backbone, data, strategy, strategy_options=parse_options(option), test_data=test_data,
                 target_data=target_data, target_labelled_data=target_labelled_data,
                 pretrain=pretrain, unlabelled_data=unlabelled_data, pretrain_options=parse_options(pretrain_option),
                 pretrain_epochs=pretrain_epochs, pretrain_max_items=pretrain_max_items,
                 labels_per_class=labels_per_class, val_fraction=val_fraction, val_data=val_data, out=out, overwrite=overwrite,
                 image_size=image_size, max_length=max_length, drop_path=drop_path, epochs=epochs,
                 lr=parse_lr(lr), head_lr=head_lr,
                 batch_size=batch_size, schedule=schedule, patience=patience, mixed_precision=mixed_precision,
                 grad_accum=grad_accum, seed=seed, text_column=text_column, label_column=label_column,
                 check_transfer=check_transfer, track=track, sensitive_column=sensitive_column,
                 track_dir=str(track_dir) if track_dir is not None else None)
    console.print(metrics_table(result.metrics, f"{strategy} on {data}"))
    if "fairness" in result.metrics:
        console.print(fairness_table(result.metrics["fairness"]))
    verdict = result.manifest.get("verdict")
    if verdict:
        console.print(f"[bold]{verdict['verdict']}[/bold]: {verdict['explanation']}", highlight=False)
    pre = result.manifest.get("pretrain")
    if pre:
        last = pre["history"][-1].get("train_loss") if pre["history"] else None
        console.print(f"pre-trained with {pre['method']} on {pre['items']} unlabelled items for {pre['epochs']} "
                      f"epoch{'' if pre['epochs'] == 1 else 's'}"
                      + (f" (final loss {last:.4f})" if isinstance(last, float) else ""), highlight=False)
    finder = result.manifest.get("lr_find")
    if finder:
        console.print(f"learning rate: {finder['suggestion']:.3g} (lr finder, {finder['method']}; "
                      f"curve: {out / 'lr_find.png'})", highlight=False)
    console.print(f"bundle: [bold]{out}[/bold] (report: {out / 'report.html'})")


def parse_lr(text: str | None) -> float | str | None:
    """``--lr``: a positive number or ``auto``."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--lr must be a number (e.g. 3e-4) or 'auto' (run the learning-rate finder). "
                          f"Got {text!r} instead.") from None
