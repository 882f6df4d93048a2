"""``transferkit demo``: both outcomes a user meets, on data that ships with the install.

1. MiniLM (sentence encoder) -> Debian package topics: 14 sections, 8 labels per
   class, and the curve at 8 / 32 / 200, against TF-IDF + logistic regression.
2. EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST, 10 labels per class at 64 px
   (scikit-learn digits when Fashion-MNIST is not installed): linear probe,
   fine-tuning, gradual unfreezing and ``auto`` (here its search over frozen
   probes: every layer from a third of the stack, at 64 and 128 px, picked by
   cross-validation on the training labels) against a small CNN and the same
   architecture trained from scratch.

Each over several seeds, with mean ± 95% CI, the gain over the strongest
scratch baseline and an honest verdict, then one report with plots.
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import pandas as pd
import typer

from transferkit.cli.common import console, examples

TEXT = dict(backbone="sentence:all-MiniLM-L6-v2", data="debian-packages", strategies=["linear-probe"],
            labels_per_class=[8, 32, 200], baselines=["tfidf"], max_length=128, strict_labels=False,
            data_options={"snapshot": "subset"})  # the packaged subset: the same numbers on every machine
#: ``auto`` in the demo searches the frozen probes only (layers x sizes, and the average of the best three; the
#: baselines run beside it anyway), which keeps the demo within minutes; ``--strategy auto`` alone also cross-validates LoRA, fine-tuning and the small CNN.
DEMO_AUTO = {"strategies": "linear-probe", "baselines": "none"}
IMAGE = dict(backbone="efficientnet-lite:0", strategies=["linear-probe", "finetune", "gradual-unfreeze", "auto"],
             labels_per_class=10, baselines=["small-cnn", "same-arch"], image_size=64, max_test=1000, epochs=30,
             strategy_options={"auto": DEMO_AUTO})


def register(app: typer.Typer) -> None:
    app.command("demo", epilog=examples(
        'transferkit demo --quick --out demo-output'))(demo_command)


def image_dataset() -> tuple[str, str]:
    """Fashion-MNIST when installed, else scikit-learn digits, with the reason."""
    from transferkit.data import load_dataset
    from transferkit.errors import DataError

    try:
        load_dataset("fashion-mnist")
        return "fashion-mnist", ""
    except DataError as exc:
        return "digits", f"Fashion-MNIST is not installed ({exc}); using scikit-learn digits instead."


def run_demo(out: Path, seeds: int = 3, quick: bool = False, parts: tuple[str, ...] = ("text", "image")):
    """Run the demo experiments; returns the list of CompareResults and writes one report to ``out``."""
    from transferkit.api import CompareResult, compare
    from transferkit.evaluation import summarize, transfer_verdicts
    from transferkit.reports import write_compare_report

    results, notes = [], []
    if "text" in parts:
        cfg = {**TEXT, **({"labels_per_class": [8]} if quick else {})}
        results.append(compare(**cfg, seeds=seeds, val_fraction=0.0, experiment="debian / MiniLM"))
    if "image" in parts:
        name, note = image_dataset()
        if note:
            notes.append(note)
            console.print(f"[yellow]{note}[/yellow]")
        cfg = {**IMAGE, **({"epochs": 3, "max_test": 300, "baselines": ["small-cnn"]} if quick else {})}
        results.append(compare(data=name, **cfg, seeds=seeds, val_fraction=0.0,
                               experiment=f"{name} / Lite0"))
    runs = pd.concat([r.runs for r in results], ignore_index=True)
    summary, verdicts = summarize(runs, "accuracy"), transfer_verdicts(runs, "accuracy", True)
    combined = CompareResult(runs, summary, verdicts, "accuracy", path=out, notes=notes)
    write_compare_report(out, runs=runs, summary=summary, verdicts=verdicts, metric="accuracy",
                         title="transferkit demo: does transfer help?", notes=notes + _recipe_notes(quick))
    return combined


def _recipe_notes(quick: bool) -> list[str]:
    return [
        "Text: MiniLM mean-pooled embeddings (cached) + logistic regression vs TF-IDF 1-2 grams + logistic "
        "regression; 14 Debian sections, 60 test descriptions each (packaged subset of the Debian bookworm index).",
        "Images: EfficientNet-Lite0 at 64 px, AdamW 1e-4 body / 1e-3 head, cosine schedule; baselines: a small CNN "
        "at 28 px with shifts/flips and a long schedule, and Lite0 from random init (BatchNorm re-estimated).",
        "auto (images): here a search over frozen linear probes only (the final layer and blocks 2-5 of Lite0, at 64 "
        "and 128 px) by 3-fold cross-validation on each seed's training labels, its winner refit on all of them; "
        "the scratch baselines are the rows beside it. `transferkit fit --strategy auto` also cross-validates LoRA, "
        "fine-tuning and the small CNN.",
        "All labelled examples are used for training (no validation split); every strategy sees the same draw per seed.",
    ] + (["QUICK mode: fewer seeds, epochs and test items; numbers are not representative."] if quick else [])


def demo_command(
    out: Optional[Path] = typer.Option(None, help="Report directory (default: transferkit-demo/<timestamp>)."),
    seeds: int = typer.Option(3, help="Seeds per strategy."),
    quick: bool = typer.Option(False, "--quick", help="A fast smoke run: fewer label budgets, epochs and test items."),
) -> None:
    """Run the built-in demo: MiniLM on Debian package topics, EfficientNet-Lite0 on Fashion-MNIST."""
    from transferkit.cli.tables import compare_table

    out = out or Path("transferkit-demo") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists():
        raise typer.BadParameter(f"{out} already exists; choose another --out")
    start = time.perf_counter()
    result = run_demo(out, seeds=seeds, quick=quick)
    console.print(compare_table(result))
    for _, v in result.verdicts.iterrows():
        console.print(f"[bold]{v['experiment']}[/bold], {v['strategy']} @ {v['labels_per_class']}/class: {v['explanation']}")
    console.print(f"\nreport: {out / 'report.html'}  ({time.perf_counter() - start:.0f} s)")
