"""Self-supervised pre-training on the unlabelled target images, then fine-tuning, vs scratch and ImageNet.

    python benchmarks/self_supervised.py [--seeds 3] [--pretrain-items 10000] [--pretrain-epochs 5] [--quick]

Fashion-MNIST, 10 labels per class (seeded draws), 1,000 fixed test images:

* ``simclr+finetune``: a small CNN (``small-cnn:28``, 204k parameters) pre-trained
  with SimCLR on unlabelled training images (a random subset, labels unused; one
  pre-training run, seed 0, shared by every label draw), then fine-tuned with
  exactly the recipe of the ``scratch`` small-CNN baseline (AdamW 3e-3, random
  shifts and flips, cosine schedule, ~600 steps): only the initialisation differs.
* ``simclr+linear-probe``: the same pre-trained CNN frozen, logistic-regression head.
* ``scratch:small-cnn``: the same architecture from random init with that recipe
  (the small-CNN baseline of ``benchmarks/data_efficiency.py``), so it is both
  "same architecture from scratch" and "the small CNN baseline".
* ``random-init+linear-probe``: the same CNN at random init, frozen (what SimCLR's
  features must beat).
* ``lite0-imagenet+linear-probe`` / ``lite0-imagenet+finetune``: EfficientNet-Lite0
  with its ImageNet weights at 32 px (fine-tune: ``--lite0-epochs`` 30, 1e-4 body /
  1e-3 head; 0 skips it).

The SimCLR budget (``--pretrain-items``, ``--pretrain-epochs``, ``--batch-size``) and
the fine-tuning epochs (``--ft-epochs``, both CNN fine-tunes) are stated in the report.

Runs on one torch thread: on 2 cores shared with other jobs, a small-CNN step
took 0.22 s with 1 thread and 0.74 s with 2.

Writes ``benchmarks/results/self_supervised/``: ``report.md`` (the command first),
``runs.csv``, ``summary.csv``, ``pretrain_history.csv`` and ``accuracy.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd
import torch

import transferkit as tk
from transferkit.backbones import load_backbone
from transferkit.data import load_dataset, subsample
from transferkit.evaluation.stats import mean_ci, paired_difference
from transferkit.strategies.scratch import small_data_epochs
from transferkit.workflows.pretrain import pretrain

OUT = Path(__file__).parent / "results" / "self_supervised"
LABELS_PER_CLASS = 10
#: (treatment, reference) pairs whose accuracy difference is reported, paired by seed.
PAIRS = (("simclr+finetune", "scratch:small-cnn"), ("simclr+linear-probe", "random-init+linear-probe"),
         ("simclr+finetune", "lite0-imagenet+finetune"), ("simclr+linear-probe", "lite0-imagenet+linear-probe"))
SIMCLR_OPTIONS = {"temperature": 0.5, "proj_dim": 128, "crop_scale": 0.2, "jitter": 0.4, "hue": 0.0}


ROWS: list[dict] = []
OUT_DIR: list[Path] = [OUT]


def run(name: str, backbone, strategy: str, train, test, seed: int, **kw) -> dict:
    start = time.perf_counter()
    r = tk.fit(backbone, train, strategy, test_data=test, labels_per_class=LABELS_PER_CLASS, val_fraction=0.0,
               seed=seed, report=False, progress=False, **kw)
    row = {"method": name, "seed": seed, "accuracy": r.metrics["accuracy"],
           "seconds": round(time.perf_counter() - start, 1)}
    print(row, flush=True)
    ROWS.append(row)
    pd.DataFrame(ROWS).to_csv(OUT_DIR[0] / "runs.csv", index=False)  # what is done survives an interruption
    return row


def simclr_backbone(train, items: int, epochs: int, batch_size: int) -> tuple[torch.nn.Module, list[dict], float]:
    torch.manual_seed(0)
    bb = load_backbone("small-cnn:28")
    start = time.perf_counter()
    bb, history = pretrain(bb, train, "simclr", options=SIMCLR_OPTIONS, epochs=epochs, lr=1e-3,
                           batch_size=batch_size, max_items=items, seed=0, progress=False)
    seconds = time.perf_counter() - start
    print(f"SimCLR: {items} images x {epochs} epochs in {seconds:.0f} s; losses "
          f"{[round(h['train_loss'], 3) for h in history]}", flush=True)
    return bb, history, seconds


def runs_for_seed(seed: int, pre, train, test, lite0_epochs: int, ft_epochs: int | None) -> list[dict]:
    # the scratch baseline's own epoch count for 100 items (150) unless --quick overrides it
    epochs = ft_epochs or small_data_epochs(LABELS_PER_CLASS * 10, 32)
    recipe = {"epochs": epochs, "lr": 3e-3, "head_lr": 3e-3}
    torch.manual_seed(seed)
    rows = [run("simclr+linear-probe", copy.deepcopy(pre), "linear-probe", train, test, seed),
            run("random-init+linear-probe", load_backbone("small-cnn:28"), "linear-probe", train, test, seed),
            run("lite0-imagenet+linear-probe", "efficientnet-lite:0", "linear-probe", train, test, seed, image_size=32),
            run("simclr+finetune", copy.deepcopy(pre), "finetune", train, test, seed,
                strategy_options={"augment": True}, **recipe),
            run("scratch:small-cnn", None, "scratch", train, test, seed, strategy_options={"variant": "small-cnn"},
                **({"epochs": ft_epochs} if ft_epochs else {}))]
    if lite0_epochs:
        rows.append(run("lite0-imagenet+finetune", "efficientnet-lite:0", "finetune", train, test, seed,
                        image_size=32, epochs=lite0_epochs))
    return rows


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for method, g in runs.groupby("method", sort=False):
        mean, lo, hi = mean_ci(g["accuracy"].to_numpy())
        rows.append({"method": method, "n": len(g), "mean": mean, "ci_low": lo, "ci_high": hi,
                     "seconds_per_run": g["seconds"].mean()})
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame, history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    y = range(len(summary))
    ax.barh(list(y), summary["mean"] * 100, xerr=[(summary["mean"] - summary["ci_low"]) * 100,
                                                   (summary["ci_high"] - summary["mean"]) * 100], color="#4c72b0")
    ax.set_yticks(list(y), summary["method"])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy, % (mean and 95% CI over seeds)")
    ax.set_title(f"Fashion-MNIST, {LABELS_PER_CLASS} labels per class")
    ax2.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o")
    ax2.set_xlabel("SimCLR epoch")
    ax2.set_ylabel("NT-Xent loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reference_scratch():
    """The small CNN's accuracies at 10 labels per class with its full recipe, from the data-efficiency benchmark."""
    path = Path(__file__).parent / "results" / "data_efficiency" / "runs.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    df = df[df["experiment"].str.startswith("fashion-mnist") & (df["labels_per_class"] == LABELS_PER_CLASS)
            & (df["strategy"] == "scratch:small-cnn")]
    return df["accuracy"].to_numpy() if len(df) else None


def report(out: Path, command: str, summary: pd.DataFrame, runs: pd.DataFrame, budget: dict) -> None:
    lines = ["# Self-supervised pre-training (SimCLR) vs scratch vs ImageNet transfer", "",
             f"Command: `{command}`", "",
             f"Fashion-MNIST, {LABELS_PER_CLASS} labels per class (seeded draws {sorted(int(s) for s in runs['seed'].unique())}), "
             f"tested on 1,000 fixed test images. Budget: SimCLR on {budget['items']:,} unlabelled training images "
             f"(random subset of 60,000) x {budget['epochs']} epochs, batch {budget['batch_size']}, "
             f"{budget['seconds']:.0f} s on {budget['cpus']} shared CPU cores (torch {budget['torch']}, "
             f"{budget['threads']} threads); one pre-training run (seed 0) shared by all label draws. "
             f"Fine-tuning of the SimCLR CNN uses the scratch baseline's recipe ({budget['ft_epochs']} epochs, "
             "AdamW 3e-3, shifts and flips): only the initialisation differs.", "",
             *([budget["note"], ""] if budget.get("note") else []),
             "| method | n | accuracy % (95% CI) | seconds per run |", "|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.method} | {r.n} | {r.mean * 100:.1f} [{r.ci_low * 100:.1f}, {r.ci_high * 100:.1f}] "
                     f"| {r.seconds_per_run:.0f} |")
    lines += ["", "Differences, paired by seed (points, 95% CI):", ""]
    for a, b in PAIRS:
        if {a, b} <= set(runs["method"]):
            wide = runs.pivot(index="seed", columns="method", values="accuracy")
            d, lo, hi = paired_difference(wide[a], wide[b])
            lines.append(f"- {a} - {b}: {d * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]")
    ref = reference_scratch() if budget["ft_epochs"] != small_data_epochs(LABELS_PER_CLASS * 10, 32) else None
    if ref is not None:
        mean, lo, hi = mean_ci(ref)
        lines += ["", f"Reference, not re-run here: `scratch:small-cnn` with its default recipe (150 epochs, ~600 "
                      f"steps) on the same draws (seeds 0-2) and the same 1,000 test images, from "
                      f"`benchmarks/results/data_efficiency/runs.csv`: {mean * 100:.1f} [{lo * 100:.1f}, {hi * 100:.1f}]."]
    lines += ["", "![accuracy](accuracy.png)", "", "Per-run numbers: `runs.csv`; SimCLR loss per epoch: "
              "`pretrain_history.csv`."]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pretrain-items", type=int, default=10000)
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lite0-epochs", type=int, default=30, help="epochs of the Lite0 fine-tune; 0 skips it")
    ap.add_argument("--ft-epochs", type=int, default=None, help="override the fine-tune epochs (default: 150)")
    ap.add_argument("--quick", action="store_true", help="smoke run (not for quoting)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the saved CSV/JSON files")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.pretrain_items, args.pretrain_epochs, args.ft_epochs = 1, 400, 1, 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return write_outputs(args.out, pd.read_csv(args.out / "runs.csv"),
                             pd.read_csv(args.out / "pretrain_history.csv").to_dict("records"),
                             json.loads((args.out / "budget.json").read_text()))
    torch.set_num_threads(1)
    train, test = load_dataset("fashion-mnist")
    test = subsample(test, 1000, 0)
    pre, history, seconds = simclr_backbone(train, args.pretrain_items, args.pretrain_epochs, args.batch_size)
    pd.DataFrame(history).to_csv(args.out / "pretrain_history.csv", index=False)
    OUT_DIR[0] = args.out
    for seed in range(args.seeds):
        runs_for_seed(seed, pre, train, test, args.lite0_epochs, args.ft_epochs)
    budget = {"items": args.pretrain_items, "epochs": args.pretrain_epochs, "batch_size": args.batch_size,
              "seconds": seconds, "cpus": os.cpu_count(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "ft_epochs": args.ft_epochs or small_data_epochs(LABELS_PER_CLASS * 10, 32),
              "machine": platform.machine(), "command": "python " + " ".join(sys.argv)}
    (args.out / "budget.json").write_text(json.dumps(budget, indent=2))
    write_outputs(args.out, pd.DataFrame(ROWS), history, budget)


def write_outputs(out: Path, runs: pd.DataFrame, history: list[dict], budget: dict) -> None:
    summary = summarize(runs)
    summary.to_csv(out / "summary.csv", index=False)
    plot(summary, history, out / "accuracy.png")
    report(out, budget["command"], summary, runs, budget)
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
