"""``strategy="auto"`` against every fixed choice it searches, on the same labelled draws.

Issue "Recipes that win": auto must find the best transfer (or say scratch) with the training labels
only, and never fall far below the best fixed choice picked in hindsight on the test set. Per seed
(one labelled draw, no validation split, as the tiny-data protocol trains), side by side:

* every fixed candidate of auto's space (its own candidate list, so the two never drift apart),
  each trained on all the labels with its default recipe and scored on the test set: per backbone,
  linear probes on the final features and on the intermediate layers (for images at the given
  size, twice and four times it), LoRA and full fine-tuning, and the scratch baseline (the small
  CNN for images, TF-IDF + logistic regression for text);
* ``auto`` with its defaults (3-fold cross-validation on the training labels, successive halving,
  10 min budget), its winner refit on all the labels; its time includes the search.

The summary gives each method's test accuracy (mean ± 95% t-interval over seeds), auto minus the
best fixed choice in hindsight (the best mean over seeds, paired by seed), auto minus the scratch
baseline (paired by seed), how often auto picked each recipe, and the time of auto vs training
every fixed candidate once.

    python benchmarks/auto.py --case fmnist --seeds 5
    python benchmarks/auto.py --case debian --seeds 3
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that the lora strategy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "auto"
CASES = {
    "fmnist": {"data": "fashion-mnist", "backbone": "efficientnet-lite:0,efficientnet-lite:1,efficientnet-lite:2",
               "labels_per_class": 10, "max_test": 1000, "bb": {"image_size": 32}, "scratch": "small-cnn"},
    "debian": {"data": "debian-packages", "backbone": "sentence:all-MiniLM-L6-v2", "labels_per_class": 8,
               "max_test": 840, "bb": {}, "scratch": "tfidf"},
}


def fixed_choices(case: dict, train) -> list:
    """Auto's own candidates (:class:`~transferkit.workflows.auto.Candidate`), in its order."""
    from transferkit.workflows.auto import AutoOptions, _candidates, _specs

    return _candidates(_specs(case["backbone"]), train, AutoOptions(), case["bb"])


def run_seed(name: str, case: dict, seed: int, done: set[str], autos: dict[str, dict]) -> list[dict]:
    """The methods of one seed not in ``done``: the fixed choices, then each auto variant (label -> options)."""
    import torch

    import transferkit as tk
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig
    from transferkit.workflows.auto import candidate_settings, search_and_train
    from transferkit.workflows.runs import train_and_score

    torch.set_num_threads(1)
    train, _, test = tk.prepare_data(case["data"], labels_per_class=case["labels_per_class"], val_fraction=0.0,
                                     seed=seed, max_test=case["max_test"])
    rows = []
    for cand in fixed_choices(case, train):
        label = cand.label
        if label in done:
            continue
        # the settings auto trains its winner with: the baseline's own recipe for scratch
        cfg, bb_options = candidate_settings(cand, TrainConfig(seed=seed, progress=False), case["bb"])
        run = train_and_score(cand.backbone, make_strategy(cand.strategy, cand.options or None), train, None, test,
                              cfg, bb_options)
        rows.append({"case": name, "seed": seed, "method": label, "accuracy": 100 * run.metrics["accuracy"],
                     "seconds": run.seconds, "choice": ""})
        print(f"{name} seed {seed} {label}: {rows[-1]['accuracy']:.1f} ({run.seconds:.0f}s)", flush=True)
    for label, options in autos.items():
        if label in done:
            continue
        start = time.perf_counter()
        run, found = search_and_train(case["backbone"], train, None, test, TrainConfig(seed=seed, progress=False),
                                      case["bb"], options)
        rows.append({"case": name, "seed": seed, "method": label, "accuracy": 100 * run.metrics["accuracy"],
                     "seconds": time.perf_counter() - start, "choice": found.winner.label,
                     "search": json.dumps(found.to_dict(), default=str)})
        print(f"{name} seed {seed} {label} -> {found.winner.label}: {rows[-1]['accuracy']:.1f} "
              f"({rows[-1]['seconds']:.0f}s)", flush=True)
        if label == "auto" and f"{label} (stack=0)" not in done:
            rows.append(_without_stacking(name, seed, case, train, test, found, rows[-1]))
    return rows


def _without_stacking(name: str, seed: int, case: dict, train, test, found, with_stack: dict) -> dict:
    """The same search with ``stack=0``: its winner is the best finalist other than the stacking candidate (the
    search before it is the same), refit on all the labels when it differs from auto's winner."""
    from transferkit.evaluation import higher_is_better
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig
    from transferkit.workflows.auto import candidate_settings
    from transferkit.workflows.runs import train_and_score

    stack = next((c for c in found.candidates if c.strategy == "stacking"), None)
    row = {**with_stack, "method": "auto (stack=0)", "search": ""}
    if stack is not None:
        row["seconds"] -= stack.seconds
    if found.winner is not stack:
        return row
    sign = 1 if higher_is_better(found.metric) else -1
    finalists = [c for c in found.candidates if c is not stack and c.status.startswith(("finalist", "stopped by the b"))]
    keys = sorted(stack.scores)
    win = max(finalists, key=lambda c: (sign * c.mean(keys), -c.cost))
    cfg, bb_options = candidate_settings(win, TrainConfig(seed=seed, progress=False), case["bb"])
    run = train_and_score(win.backbone, make_strategy(win.strategy, win.options or None), train, None, test, cfg,
                          bb_options)
    row.update(accuracy=100 * run.metrics["accuracy"], choice=win.label)
    print(f"{name} seed {seed} auto (stack=0) -> {win.label}: {row['accuracy']:.1f}", flush=True)
    return row


def _ci(values) -> str:
    from transferkit.evaluation import mean_ci

    values = list(values)
    if len(values) < 2:
        return f"{np.mean(values):.1f}"
    mean, low, _ = mean_ci(values)
    return f"{mean:.1f} ± {mean - low:.1f}"


def _paired(a: pd.Series, b: pd.Series) -> str:
    from transferkit.evaluation import paired_difference

    if len(a) < 2:
        return f"{(a - b).mean():+.1f}"
    gain, low, high = paired_difference(a.values, b.values)
    return f"{gain:+.1f} [{low:+.1f}, {high:+.1f}]"


def summarize(runs: pd.DataFrame) -> str:
    lines = ["# `strategy=auto` against every fixed choice it searches", "",
             "`python benchmarks/auto.py --case CASE --seeds N`; one labelled draw per seed, no validation split, "
             "every fixed choice trained on all the labels with its default recipe and scored on the test set; "
             "auto searched with its defaults (3-fold cross-validation on the training labels only, successive "
             "halving, 10 min budget) and its winner refit on all the labels. Accuracy in %, mean ± half-width of "
             "the 95% t-interval over seeds; differences paired by seed. Time in seconds per seed (auto: search and "
             "refit), measured on a 2-core CPU machine that other jobs shared, one thread per run.", ""]
    for name, group in runs.groupby("case", sort=False):
        case = CASES[name]
        wide = group.pivot_table(index="seed", columns="method", values="accuracy")
        seeds = len(wide)
        autos = [m for m in wide.columns if m.startswith("auto")]
        fixed = [m for m in wide.columns if m not in autos]
        best = max(fixed, key=lambda m: wide[m].mean())
        scratch = f"scratch:{case['scratch']}"
        lines += [f"## {case['data']}, {case['labels_per_class']} labels per class, {case['backbone']} "
                  f"({seeds} seeds)", "", "| method | accuracy | s / seed |", "| --- | ---: | ---: |"]
        secs = group.groupby("method")["seconds"].mean()
        for m in [*fixed, *autos]:
            lines.append(f"| {m}{' (best in hindsight)' if m == best else ''} | {_ci(wide[m])} | {secs[m]:.0f} |")
        lines.append("")
        for a in autos:
            both = wide[list(dict.fromkeys([a, best, scratch]))].dropna()
            picks = group[group.method == a]["choice"].value_counts()
            lines += [f"- {a} minus the best fixed choice in hindsight ({best}): {_paired(both[a], both[best])} "
                      f"points; minus {scratch}: {_paired(both[a], both[scratch])} points ({len(both)} seeds).",
                      f"- {a} picked: " + ", ".join(f"{k} ({v}×)" for k, v in picks.items()) + ".",
                      f"- time: {a} {secs[a]:.0f} s per seed vs {secs[fixed].sum():.0f} s to train every fixed "
                      f"choice once ({secs[a] / secs[fixed].sum():.2f}×)."]
            if a != "auto" and "auto" in wide.columns:
                pair = wide[["auto", a]].dropna()
                lines.append(f"- auto minus {a}, the same searches: {_paired(pair['auto'], pair[a])} points "
                             f"({len(pair)} seeds).")
        cut = _budget_cuts(group)
        if cut:
            lines.append("- searches the budget cut short (candidates it stopped after their first fold(s)): "
                         + ", ".join(f"seed {seed} ({n})" for seed, n in cut) + ".")
        lines.append("")
    return "\n".join(lines)


def _budget_cuts(group: pd.DataFrame) -> list[tuple[int, int]]:
    """(seed, candidates stopped by the budget) of each recorded search the budget cut short."""
    out = []
    for _, row in group[group.method == "auto"].iterrows():
        search = row.get("search")
        if isinstance(search, str) and search:
            n = sum("budget" in c["status"] for c in json.loads(search)["candidates"])
            if n:
                out.append((int(row.seed), n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, action="append",
                        help="auto's folds (repeatable: one auto row per value; default 3, auto's default)")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of runs.csv and summary.md (default: %(default)s)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "runs.csv"
    runs = pd.read_csv(path) if path.exists() else pd.DataFrame()
    autos = {("auto" if k == 3 else f"auto (folds={k})"): ({} if k == 3 else {"folds": k}) for k in (args.folds or [3])}
    if not args.summarize_only:
        for name in args.case or ["fmnist"]:
            for seed in range(args.seeds):
                done = set() if runs.empty else set(runs[(runs.case == name) & (runs.seed == seed)].method)
                new = pd.DataFrame(run_seed(name, CASES[name], seed, done, autos))  # resumes where a stop left off
                if not new.empty:
                    runs = pd.concat([runs, new], ignore_index=True)
                    runs.to_csv(path, index=False)
    notes = args.out / "notes.md"  # what the runs cannot say themselves (provenance of rows, cuts)
    text = summarize(runs) + ("\n" + notes.read_text(encoding="utf-8") if notes.exists() else "")
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
