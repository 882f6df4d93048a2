"""Continual-learning benchmark: Split and Permuted Fashion-MNIST, every learner, several seeds.

    python benchmarks/continual.py [--seeds 3] [--quick] [--pilot]

* **Split Fashion-MNIST**, task-incremental: 5 experiences of 2 classes
  ({T-shirt, Trouser}, {Pullover, Dress}, ...), a head per task, the task id
  given at test. Network: ``small-cnn`` trained from scratch at ``--size`` px
  (14 by default: a 6x cheaper step than 28 px on this CPU).
* **Permuted Fashion-MNIST**, domain-incremental: 5 fixed pixel permutations
  (the permutation seed is the run's seed), the same 10 classes and one head;
  no task id at test, except for ``progressive``, which picks its column by
  task id (so it is task-incremental there: stated in the report). Network:
  an MLP on the 784 pixels (``mlp:256x256``; a permutation destroys the
  locality a CNN relies on) without its input BatchNorm (``--keep-input-norm``
  keeps it): the pixels are already in [0, 1], and that layer's running
  statistics, buffers that no regularizer protects, follow the newest
  permutation pixel by pixel, which by itself undoes what EWC and LwF keep.

Learners: ``naive`` (sequential fine-tuning), ``ewc`` (online), ``lwf``,
``replay`` (class-balanced memory) and ``progressive``. Every learner of a
seed sees the same items in the same order and starts from the same weights.
Each seed draws its own training and test items (``--train-per-class`` and
``--test-per-class`` per class from the official splits).

``--pilot`` chooses nothing by itself: it runs the same protocol on a
validation stream carved from the *training* split (items disjoint from the
training items) with seed 100, for setting hyper-parameters by hand without
looking at the test split.

Writes ``benchmarks/results/continual/``: ``report.md`` (the command first),
``runs.csv`` (one row per run with its four metrics), ``matrices.json`` (every
accuracy matrix), ``summary.csv``, ``budget.json`` (wall time) and one heat-map
per benchmark. ``--report-only`` rewrites the report from the saved files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/peft.py would shadow
# the `peft` package that transferkit imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from transferkit.data import load_dataset  # noqa: E402
from transferkit.data.streams import permuted, split_by_classes  # noqa: E402
from transferkit.evaluation.continual import METRICS, continual_metrics  # noqa: E402
from transferkit.evaluation.stats import mean_ci  # noqa: E402
from transferkit.reports.continual_plots import accuracy_matrix_png, accuracy_matrix_table, metrics_table  # noqa: E402
from transferkit.workflows.continual import train_stream  # noqa: E402
from transferkit.training import TrainConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "continual"
LEARNERS = ("naive", "ewc", "lwf", "replay", "progressive")
NOTES = [
    "- BatchNorm: `small-cnn` normalises every stage with running statistics, buffers that follow the newest "
    "experience under every learner but `progressive` (its own columns, frozen in eval mode). EWC and LwF protect "
    "weights and outputs, not these statistics; replay keeps them mixed. Some of `naive`'s forgetting on Split, with "
    "a head per task, may come from there (not measured separately).",
    "- LwF on Permuted distils the previous model's predictions on a permutation it never saw, which the labels "
    "contradict on the same head: with the paper's lambda 1 even the new experience is learnt less well (see the "
    "diagonal). LwF is meant for new tasks on similar inputs, not for domain shifts.",
    "- `progressive` adds a column per experience (5 networks in the end) and needs the task id at test: on "
    "Permuted it answers an easier question than the others, an upper bound rather than a competitor.",
    "- Forward transfer on Split reads an experience through its still untrained head (a head per task): the "
    "numbers are chance-level noise of random heads and say little; on Permuted the shared head makes them "
    "meaningful (and they are near 0).",
]


def draw(data, per_class: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``per_class`` indices of every class, seeded, avoiding ``exclude``."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(data.targets)
    pool = np.ones(len(targets), bool)
    if exclude is not None:
        pool[exclude] = False
    return np.sort(np.concatenate([rng.choice(np.flatnonzero((targets == c) & pool), per_class, replace=False)
                                   for c in range(10)]))


def streams(args, seed: int) -> dict:
    train, test = load_dataset("fashion-mnist")
    tr = draw(train, args.train_per_class, seed)
    if args.pilot:  # validation items from the training split, never the test split
        train, test = train.subset(tr), train.subset(draw(train, args.test_per_class, seed + 1, exclude=tr))
    else:
        train, test = train.subset(tr), test.subset(draw(test, args.test_per_class, seed))
    return {"split": split_by_classes(train, 2, test=test, scenario="task", name="split-fashion-mnist"),
            "permuted": permuted(train, args.tasks, seed=seed, test=test, flatten=True,
                                 name="permuted-fashion-mnist")}


def mlp_factory(args):
    """The Permuted network: ``args.mlp`` on 784 pixels, without its input BatchNorm unless asked."""
    from transferkit.backbones import load_backbone

    def make():
        bb = load_backbone(args.mlp, in_features=784)
        if not args.keep_input_norm:
            bb.standardise = torch.nn.Identity()
        return bb
    return make


def options(args) -> dict:
    return {"naive": {}, "ewc": {"weight": args.ewc_weight, "gamma": args.ewc_gamma, "fisher_samples": args.fisher_samples},
            "lwf": {"weight": args.lwf_weight, "temperature": 2.0}, "replay": {"buffer_size": args.buffer_size},
            "progressive": {}}


def run_all(args) -> tuple[pd.DataFrame, dict]:
    rows, matrices = [], {}
    opts = options(args)
    for seed in args.seeds_list:
        for bench, stream in streams(args, seed).items():
            if bench not in args.benchmarks:
                continue
            backbone = f"small-cnn:{args.size}" if bench == "split" else mlp_factory(args)
            for learner in args.learners:
                cfg = TrainConfig(epochs=args.epochs, lr=args.lr, head_lr=args.lr, batch_size=args.batch_size,
                                  seed=seed, progress=False)
                r = train_stream(backbone, stream, learner, opts[learner], cfg)
                row = {"benchmark": bench, "scenario": stream.scenario if learner != "progressive" else
                       ("task (task id at test)" if bench == "permuted" else stream.scenario),
                       "learner": learner, "seed": seed, "backbone": f"small-cnn:{args.size}" if bench == "split" else
                       args.mlp + ("" if args.keep_input_norm else " (no input BatchNorm)"), **r.metrics,
                       "seconds": r.seconds}
                rows.append(row)
                matrices[f"{bench}/{learner}/{seed}"] = {"accuracy": r.accuracy.tolist(),
                                                         "random_init": r.random_init.tolist()}
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                pd.DataFrame(rows).to_csv(args.out / "runs.csv", index=False)  # what is done survives a stop
    (args.out / "matrices.json").write_text(json.dumps(matrices, indent=1))
    return pd.DataFrame(rows), matrices


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (bench, learner), g in runs.groupby(["benchmark", "learner"], sort=False):
        row = {"benchmark": bench, "learner": learner, "n": len(g), "seconds": g["seconds"].mean()}
        for m in METRICS:
            row[m], row[f"{m}_low"], row[f"{m}_high"] = mean_ci(g[m].to_numpy())
        out.append(row)
    return pd.DataFrame(out)


def report(args, runs: pd.DataFrame, summary: pd.DataFrame, matrices: dict, seconds: float) -> str:
    lines = [f"# Continual learning: Split and Permuted Fashion-MNIST{' (pilot, validation items)' if args.pilot else ''}",
             "", f"Command: `python benchmarks/continual.py {' '.join(sys.argv[1:])}`", "",
             *(["(Report rewritten with `--report-only` from the saved runs.)", ""] if args.report_only else []),
             f"Seeds {args.seeds_list}; {args.train_per_class} training and {args.test_per_class} test images per class "
             f"per seed ({'held-out training images' if args.pilot else 'official test split'}), shared by every "
             f"learner of a seed. Each experience: {args.epochs} epoch(s), batch {args.batch_size}, AdamW "
             f"lr {args.lr} (cosine), weight decay 0.01. Wall time {seconds / 60:.1f} min on 2 shared CPU cores, "
             f"1 torch thread.", "",
             "Metrics in percent (points for transfers), mean and 95% Student-t interval over seeds: average accuracy "
             "(after the last experience), forgetting (mean drop from the best earlier accuracy), backward transfer "
             "(Lopez-Paz & Ranzato 2017: final minus just-learnt accuracy), forward transfer (accuracy on an "
             "experience before training it minus that of the freshly initialised model).", "",
             f"Learner settings: `ewc` lambda {args.ewc_weight} (Fisher scaled to mean 1, gamma {args.ewc_gamma}, "
             f"{args.fisher_samples} items), chosen with `--pilot` (validation images from the training split, seed "
             f"100, never the test split) among 1, 10, 100 on Split and 1, 100 on Permuted; `lwf` lambda "
             f"{args.lwf_weight}, T 2 (the paper's values); `replay` memory of {args.buffer_size} items in all, "
             f"class-balanced, as many memory items as new ones in every batch; `progressive` a new column per "
             f"experience from the initial weights, zero-initialised lateral adapters.", ""]
    norm = "" if args.keep_input_norm else (", without its input BatchNorm (its running statistics would follow the "
                                            "newest permutation, and no learner protects buffers)")
    specs = {"split": (f"Split Fashion-MNIST: **task-incremental** (5 experiences x 2 classes, a head per task, task "
                       f"id known at test; chance 50%). Network `small-cnn:{args.size}` from scratch (images resized "
                       f"to {args.size} px)."),
             "permuted": (f"Permuted Fashion-MNIST: **domain-incremental** ({args.tasks} pixel permutations, the same "
                          f"10 classes, one head, no task id at test; chance 10%). Network `{args.mlp}` on the 784 "
                          f"pixels{norm}. `progressive` picks its column by task id, so it is **task-incremental** here "
                          f"and not directly comparable.")}
    learners = [x for x in args.learners]
    for bench in ("split", "permuted"):
        s = summary[summary.benchmark == bench].set_index("learner")
        if s.empty:
            continue
        lines += [f"## {bench.capitalize()}", "", specs[bench], ""]
        table = {lr: {m: (s.loc[lr, m], s.loc[lr, f"{m}_low"], s.loc[lr, f"{m}_high"]) for m in METRICS}
                 for lr in learners if lr in s.index}
        lines += [metrics_table(table), "", "Seconds per run (mean): " +
                  ", ".join(f"{lr} {s.loc[lr, 'seconds']:.0f}" for lr in learners if lr in s.index), ""]
        mean = {lr: np.mean([matrices[f"{bench}/{lr}/{sd}"]["accuracy"] for sd in args.seeds_list], axis=0)
                for lr in learners if lr in s.index}
        png = f"{bench}_matrices.png"
        (args.out / png).write_bytes(accuracy_matrix_png(mean, title=f"{bench}: accuracy matrix, mean over seeds"))
        lines += [f"![{bench} accuracy matrices]({png})", "", "Accuracy matrices (mean over seeds, %):", ""]
        for lr, m in mean.items():
            lines += [f"`{lr}`:", "", accuracy_matrix_table(m), ""]
    lines += ["## Notes", "", *NOTES, "", "Per-run numbers: `runs.csv`; every matrix and random-init accuracy: "
              "`matrices.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--learners", default=",".join(LEARNERS))
    p.add_argument("--benchmarks", default="split,permuted")
    p.add_argument("--tasks", type=int, default=5, help="permutations of Permuted Fashion-MNIST")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=14, help="image side of the small CNN (Split)")
    p.add_argument("--mlp", default="mlp:256x256", help="network of Permuted")
    p.add_argument("--keep-input-norm", action="store_true", help="keep the MLP's input BatchNorm (Permuted)")
    p.add_argument("--ewc-weight", type=float, default=1.0, help="chosen with --pilot among 1, 10, 100")
    p.add_argument("--ewc-gamma", type=float, default=1.0)
    p.add_argument("--fisher-samples", type=int, default=200)
    p.add_argument("--lwf-weight", type=float, default=1.0)
    p.add_argument("--buffer-size", type=int, default=200)
    p.add_argument("--pilot", action="store_true", help="validation items from the training split, seed 100")
    p.add_argument("--quick", action="store_true", help="1 seed, 60 images per class, 1 epoch")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from runs.csv and matrices.json")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.train_per_class, args.test_per_class, args.epochs = 1, 60, 30, 1
    args.seeds_list = [100 + s for s in range(args.seeds)] if args.pilot else list(range(args.seeds))
    args.learners = [x for x in args.learners.split(",") if x]
    args.benchmarks = [x for x in args.benchmarks.split(",") if x]
    if args.quick or args.pilot:
        args.out = args.out / ("quick" if args.quick else "pilot")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:  # rewrite the report from the saved runs (same arguments as the run)
        runs, matrices = pd.read_csv(args.out / "runs.csv"), json.loads((args.out / "matrices.json").read_text())
        seconds = json.loads((args.out / "budget.json").read_text())["seconds"]
        for i, row in runs.iterrows():  # the metrics of the library's current definitions, from the saved matrices
            saved = matrices[f"{row['benchmark']}/{row['learner']}/{row['seed']}"]
            for k, v in continual_metrics(np.array(saved["accuracy"]), saved["random_init"]).items():
                runs.loc[i, k] = v
        runs.to_csv(args.out / "runs.csv", index=False)
    else:
        start = time.perf_counter()
        runs, matrices = run_all(args)
        seconds = time.perf_counter() - start
        (args.out / "budget.json").write_text(json.dumps({"seconds": round(seconds, 1), "argv": sys.argv[1:]}))
    summary = summarise(runs)
    summary.to_csv(args.out / "summary.csv", index=False)
    (args.out / "report.md").write_text(report(args, runs, summary, matrices, seconds))
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
