"""``transferkit fit``: adapt a backbone to data with one strategy and save a bundle.

The options are the fields of ``fit``'s option groups (:mod:`transferkit.workflows.options`)
and of :class:`~transferkit.training.TrainConfig`, with their help texts; the command
builds the groups and passes them to :func:`transferkit.api.fit`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import CONFIG_OPTION, console, examples, parse_options
from transferkit.errors import ConfigError
from transferkit.workflows.options import DataOptions, DomainOptions, FairnessOptions, PretrainOptions, field_help


#: the help panel of each option group in ``transferkit fit --help``
PANELS = {DataOptions: "Data", DomainOptions: "Domain adaptation", FairnessOptions: "Fairness",
          PretrainOptions: "Pre-training"}


def group_option(cls: type, name: str, *param_decls: str, note: str = ""):
    """A typer option for field ``name`` of option group ``cls``: its default and help come from the field."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    return typer.Option(default, *param_decls, help=field_help(cls, name, note), rich_help_panel=PANELS[cls])


def train_option(default, help: str):
    """A typer option for a :class:`~transferkit.training.TrainConfig` field, in the "Training" help panel."""
    return typer.Option(default, help=help, rich_help_panel="Training")


def register(app: typer.Typer) -> None:
    app.command("fit", epilog=examples(
        'transferkit fit --backbone efficientnet-lite:0 --data fashion-mnist \\',
        '    --strategy finetune --labels-per-class 10 --image-size 64 \\',
        '    --check-transfer --out runs/fmnist',
        'transferkit fit --backbone sentence:all-MiniLM-L6-v2 \\',
        '    --data debian-packages --strategy lora -o rank=8 --out runs/lora',
        'transferkit fit --backbone efficientnet-lite:0,efficientnet-lite:1 \\',
        '    --data fashion-mnist --labels-per-class 10 --strategy auto --budget 10m --out runs/auto',
        'transferkit fit --backbone efficientnet-lite:0 --data coco.json --strategy finetune \\',
        '    -o detector=retinanet --image-size 128 --out runs/det   # fcos (default), retinanet, faster-rcnn',
        "transferkit fit --backbone efficientnet-lite:0 --data 'shards/{000..009}.tar' --strategy finetune \\",
        '    --test-data test/ --out runs/streamed   # tar shards stream; quote the braces',
        'transferkit fit --backbone sentence:all-MiniLM-L6-v2 --data reviews.parquet --stream \\',
        '    --text-column review --strategy lora --out runs/lora-stream',
        'transferkit fit --config recipe.yaml --out runs/x'))(fit_command)


def fit_command(
    backbone: str = typer.Option(..., help="Backbone spec, e.g. efficientnet-lite:0, sentence:all-MiniLM-L6-v2, timm:resnet18."),
    data: str = typer.Option(..., help="Built-in data set name, image folder, CSV/TSV/JSONL file, or tar shards "
                                       "('shards/{000..009}.tar', streamed)."),
    out: Path = typer.Option(..., help="Bundle directory to write (refused if it exists, unless --overwrite)."),
    strategy: str = typer.Option("linear-probe", help="Strategy name (see `transferkit list strategies`), or auto: "
                                                      "search probe / fine-tune / LoRA / layers / scratch by "
                                                      "cross-validation on the training labels."),
    budget: Optional[str] = typer.Option(None, help="With --strategy auto: time for the search, e.g. 10m, 90s "
                                                    "(default 10m)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Strategy option KEY=VALUE (repeatable), e.g. -o train_last=2; "
                                                                          "on detection data, -o detector=fcos|retinanet|faster-rcnn "
                                                                          "(instance-segmentation: mask-rcnn)."),
    # DataOptions
    labels_per_class: Optional[int] = group_option(DataOptions, "labels_per_class"),
    test_data: Optional[str] = group_option(DataOptions, "test_data"),
    val_fraction: Optional[float] = group_option(DataOptions, "val_fraction"),
    val_data: Optional[str] = group_option(DataOptions, "val_data"),
    max_test: Optional[int] = group_option(DataOptions, "max_test"),
    image_size: Optional[int] = group_option(DataOptions, "image_size"),
    max_length: Optional[int] = group_option(DataOptions, "max_length"),
    vad: bool = group_option(DataOptions, "vad", note="On the command line --vad is trim; --vad-speech is speech."),
    vad_speech: bool = typer.Option(False, "--vad-speech", rich_help_panel=PANELS[DataOptions],
                                    help="Audio: as --vad, and also shorten each pause inside a clip to 0.1 s "
                                         "(Silero VAD; vad='speech' in the bundle)."),
    text_column: Optional[str] = group_option(DataOptions, "text_column"),
    label_column: str = group_option(DataOptions, "label_column"),
    task: Optional[str] = group_option(DataOptions, "task"),
    stream: bool = group_option(DataOptions, "stream", "--stream"),
    # DomainOptions, FairnessOptions
    target_data: Optional[str] = group_option(DomainOptions, "target_data"),
    target_labelled_data: Optional[str] = group_option(DomainOptions, "target_labelled_data"),
    sensitive_column: Optional[str] = group_option(FairnessOptions, "sensitive_column"),
    # PretrainOptions
    pretrain: Optional[str] = group_option(PretrainOptions, "method"),
    unlabelled_data: Optional[str] = group_option(PretrainOptions, "unlabelled_data"),
    pretrain_option: Optional[list[str]] = group_option(PretrainOptions, "options", "--pretrain-option",
                                                        note="KEY=VALUE, repeatable."),
    pretrain_epochs: Optional[int] = group_option(PretrainOptions, "epochs"),
    pretrain_max_items: Optional[int] = group_option(PretrainOptions, "max_items"),
    # TrainConfig: each help text starts with the field's (checked by tests/test_fit_options.py; reading
    # them from TrainConfig here would import the training loop, and torch, whenever the CLI starts)
    epochs: Optional[int] = train_option(None, "Passes over the training data. Default: the strategy's, raised on "
                                               "tiny data to the task's budget (token classification: 300 steps; "
                                               "detection and segmentation: 4,800 images shown)."),
    lr: Optional[str] = train_option(None, "Learning rate of pre-trained weights. A number, or 'auto' to run the "
                                           "learning-rate finder first (default: the strategy's)."),
    head_lr: Optional[float] = train_option(None, "Learning rate of new layers (head). Default: the strategy's."),
    batch_size: Optional[int] = train_option(None, "Examples per optimizer step (per process); default: the "
                                                    "task's (32; 8 for detection and segmentation)."),
    schedule: str = train_option("cosine", "One of cosine, onecycle, constant. All with linear warm-up."),
    patience: Optional[int] = train_option(None, "Early stopping after this many epochs without gain. Gain on "
                                                 "the validation split."),
    mixed_precision: str = train_option("no", "One of no, bf16, fp16."),
    grad_accum: int = train_option(1, "Batches per optimizer step."),
    seed: int = train_option(0, "Random seed. Data draw, split, initialisation."),
    track: Optional[str] = train_option(None, "Experiment tracker: tensorboard, mlflow or None. Needs "
                                              "transferkit[track]."),
    track_dir: Optional[Path] = train_option(None, "Tracker output folder (default: runs/track). MLflow: a local "
                                                   "file store there unless MLFLOW_TRACKING_URI is set."),
    checkpoint_every: Optional[int] = train_option(None, "With a checkpoint folder: also save a checkpoint every "
                                                         "this many optimizer steps (default: at each epoch end "
                                                         "only). The folder is OUT.checkpoint, removed once the "
                                                         "bundle is written."),
    # fit's own
    drop_path: Optional[float] = typer.Option(None, help="Stochastic-depth rate in training (timm: and "
                                                         "efficientnet-lite: backbones), e.g. 0.1."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle at --out; start over when "
                                                              "OUT.checkpoint holds an interrupted run."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoint in OUT.checkpoint "
                                                        "(same command and settings; --epochs may change)."),
    check_transfer: bool = typer.Option(False, "--check-transfer", help="Also train the from-scratch baseline on the same data and "
                                                                        "record whether transfer helped (verdict in manifest and report)."),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Adapt BACKBONE to DATA with STRATEGY; save a bundle (weights, manifest, report) to OUT."""
    from transferkit.api import fit
    from transferkit.training import TrainConfig

    learning_rate = parse_lr(lr)
    auto = {"lr": "auto"} if learning_rate == "auto" else {}  # not a TrainConfig value: fit runs the finder
    groups = dict(
        data_options=DataOptions(test_data=test_data, labels_per_class=labels_per_class, val_fraction=val_fraction,
                                 val_data=val_data, text_column=text_column, label_column=label_column,
                                 max_test=max_test, image_size=image_size, max_length=max_length, task=task,
                                 vad="speech" if vad_speech else vad, stream=stream),
        domain=DomainOptions(target_data=target_data, target_labelled_data=target_labelled_data),
        fairness=FairnessOptions(sensitive_column=sensitive_column),
        pretraining=PretrainOptions(method=pretrain, unlabelled_data=unlabelled_data,
                                    options=parse_options(pretrain_option), epochs=pretrain_epochs,
                                    max_items=pretrain_max_items),
        train=TrainConfig(epochs=epochs, lr=None if auto else learning_rate, head_lr=head_lr, batch_size=batch_size,
                          schedule=schedule, patience=patience, mixed_precision=mixed_precision,
                          grad_accum=grad_accum, seed=seed, track=track,
                          track_dir=str(track_dir) if track_dir is not None else None,
                          checkpoint_every=checkpoint_every))
    strategy_options = parse_options(option)
    if budget is not None:
        if strategy != "auto":
            raise ConfigError(f"--budget is the time of --strategy auto's search; --strategy is {strategy!r}.")
        strategy_options = {**(strategy_options or {}), "budget": budget}
    result = fit(backbone, data, strategy, strategy_options=strategy_options, out=out, overwrite=overwrite,
                 resume=resume, drop_path=drop_path, check_transfer=check_transfer, **groups, **auto)
    _print_result(result, f"{strategy} on {data}", out)


def _print_result(result, title: str, out: Path) -> None:
    """The metrics (and fairness) tables, the transfer verdict, pre-training and finder lines, the bundle path."""
    from transferkit.cli.evaluate import fairness_table
    from transferkit.cli.tables import metrics_table

    console.print(metrics_table(result.metrics, title))
    if "fairness" in result.metrics:
        console.print(fairness_table(result.metrics["fairness"]))
    auto = result.manifest.get("auto")
    if auto:
        console.print(f"[bold]auto[/bold] ({auto['seconds']:.0f} s, {len(auto['candidates'])} candidates): "
                      f"{auto['reason']}", highlight=False)
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
