"""Model stacking: EfficientNet-Lite0, -Lite1, -Lite2 alone vs combined, Fashion-MNIST, 10 and 100 labels per class.

    python benchmarks/stacking.py [--seeds 3] [--size 64] [--test 2000] [--quick]

Protocol: every seed draws 10 and 100 labelled training images per class
(``sample_per_class``; the 10-per-class draw is part of the 100-per-class one)
from the Fashion-MNIST train split; one fixed, stratified set of ``--test``
test-split images scores every run. Each model (packaged ImageNet weights,
``--size`` px) embeds the union of the draws and the test set once, through
the feature cache; every run then indexes those features. Methods:

* ``Lite0`` / ``Lite1`` / ``Lite2``: linear probe on one model's features
  (``fit_linear_head``: standardised logistic regression, C chosen by
  5-fold cross-validation on the training draw);
* ``concat``: the same linear probe on the three models' features side by
  side (what ``linear-probe`` on ``concat:efficientnet-lite:0+...`` fits);
* ``stacking``: the ``stacking`` strategy's head (``fit_stacking_head``):
  per-model probes, their 5-fold out-of-fold probabilities, a logistic
  meta-learner on them. The per-model C is the single probe's (the strategy
  would choose the same C with the same seed);
* ``average``: the mean of the three single probes' probabilities, the
  combination with nothing learnt, as a reference for the meta-learner;
* ``small-cnn``: no transfer at all, the ``scratch`` strategy's small CNN
  trained from random init on the same draw at the images' own 28 px, with its
  own recipe (shifts and flips, >= 60 epochs and ~600 steps): the baseline a
  user would train instead (on Fashion-MNIST it is a strong one, ASSETS.md).

Accuracy: mean over seeds with a Student-t 95% interval; differences are
paired by seed against the best single model (the one with the highest mean
at that budget).

Writes ``benchmarks/results/stacking/{report.md,runs.csv,summary.csv}``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/peft.py would shadow
# the peft package that transformers imports; this script needs nothing from that folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data import extract_features, load_dataset  # noqa: E402
from transferkit.data.splits import sample_per_class  # noqa: E402
from transferkit.evaluation.stats import bootstrap_difference, mean_ci, paired_difference  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.strategies.linear_probe import fit_linear_head  # noqa: E402
from transferkit.strategies.stacking import fit_stacking_head  # noqa: E402
from transferkit.training import Trainer, TrainConfig  # noqa: E402

OUT = Path(__file__).parent / "results" / "stacking"
MODELS = {"Lite0": "efficientnet-lite:0", "Lite1": "efficientnet-lite:1", "Lite2": "efficientnet-lite:2"}
SINGLES = tuple(MODELS)
COMBINED = ("concat", "average", "stacking")
SCRATCH = ("small-cnn",)


def probs_of(head, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(np.asarray(X, np.float32))).softmax(-1).numpy()


def run_draw(feats: dict[str, np.ndarray], test: dict[str, np.ndarray], y: np.ndarray, y_test: np.ndarray,
             seed: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every method on one training draw; returns one row per method and each method's test probabilities."""
    rows, probs, Cs = [], {}, []

    def add(method: str, p: np.ndarray, t0: float, **extra) -> None:
        probs[method] = p
        rows.append({"method": method, "accuracy": float((p.argmax(1) == y_test).mean()),
                     "fit_s": round(time.time() - t0, 2), **extra})

    for name in SINGLES:
        t0 = time.time()
        head, info = fit_linear_head("classification", feats[name], y, seed=seed)
        Cs.append(info["C"])
        add(name, probs_of(head, test[name]), t0, C=info["C"])
    t0 = time.time()
    head, info = fit_linear_head("classification", np.hstack([feats[n] for n in SINGLES]), y, seed=seed)
    add("concat", probs_of(head, np.hstack([test[n] for n in SINGLES])), t0, C=info["C"])
    add("average", np.mean([probs[n] for n in SINGLES], axis=0), time.time())
    t0 = time.time()
    head, info = fit_stacking_head([feats[n] for n in SINGLES], y, 10, C=Cs, seed=seed)
    add("stacking", probs_of(head, np.hstack([test[n] for n in SINGLES])), t0, C=info["meta_C"],
        oof_accuracy=" ".join(f"{a:.3f}" for a in info["oof_accuracy"]))
    return rows, probs


def scratch_probs(draw, test, seed: int) -> np.ndarray:
    """The from-scratch small CNN (``scratch`` strategy, its own recipe) on one draw; test probabilities."""
    strategy = make_strategy("scratch", {"variant": "small-cnn"})
    model, _ = strategy.fit(None, draw, None, Trainer(TrainConfig(seed=seed, progress=False)))
    return strategy.predict(model, test)


def check_strategy_matches(backbones, draw, test_data, expected: np.ndarray) -> float:
    """The registered strategy on a concat backbone gives the benchmark's stacking probabilities."""
    from transferkit.backbones.concat import ConcatBackbone
    from types import SimpleNamespace

    concat = ConcatBackbone([backbones[n] for n in SINGLES])
    strategy = make_strategy("stacking")
    model, _ = strategy.fit(concat, draw, None, SimpleNamespace(config=SimpleNamespace(seed=0)))
    return float(np.abs(strategy.predict(model, test_data) - expected).max())


def summarise(runs: pd.DataFrame, correct: dict) -> tuple[pd.DataFrame, list[str]]:
    """Means and intervals over seeds; differences against the best single model.

    Two intervals per difference: paired by seed (``diff_*``: training-draw and
    test variation, 2 degrees of freedom with 3 seeds) and a paired bootstrap over
    the test images of the seed-averaged per-image correctness (``boot_*``: test
    sampling only, see :func:`bootstrap_difference`).
    """
    rows, lines = [], []
    for budget, g in runs.groupby("labels_per_class"):
        acc = {m: g[g.method == m].sort_values("seed").accuracy.to_numpy() for m in g.method.unique()}
        per_image = {m: np.mean([correct[(budget, s, m)] for s in sorted(g.seed.unique())], axis=0) for m in acc}
        best = max(SINGLES, key=lambda m: acc[m].mean())
        for m in (*SINGLES, *COMBINED, *SCRATCH):
            mean, lo, hi = mean_ci(acc[m])
            d, dlo, dhi = paired_difference(acc[m], acc[best]) if m != best else (0.0, 0.0, 0.0)
            bd, blo, bhi = bootstrap_difference(per_image[m], per_image[best]) if m != best else (0.0, 0.0, 0.0)
            rows.append({"labels_per_class": budget, "method": m, "n": len(acc[m]), "mean": mean, "ci_low": lo,
                         "ci_high": hi, "vs_best_single": best, "diff": d, "diff_low": dlo, "diff_high": dhi,
                         "boot_low": blo, "boot_high": bhi})
        for ref in ("concat", "average", *SCRATCH):
            d, dlo, dhi = paired_difference(acc["stacking"], acc[ref])
            _, blo, bhi = bootstrap_difference(per_image["stacking"], per_image[ref])
            lines.append(f"{budget}/class, stacking − {ref}: {pct(d)} ({pct(dlo)} to {pct(dhi)}; "
                         f"test-image bootstrap {pct(blo)} to {pct(bhi)})")
        lines.append(f"best single model at {budget} labels per class: {best}")
    return pd.DataFrame(rows), lines


def pct(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{100 * v:.1f}"


def write(runs: pd.DataFrame, summary: pd.DataFrame, notes: list[str], args, timings: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    runs.to_csv(OUT / "runs.csv", index=False)
    summary.to_csv(OUT / "summary.csv", index=False)
    budgets = sorted(summary.labels_per_class.unique())
    lines = [f"# Model stacking: EfficientNet-Lite0/1/2 on Fashion-MNIST at {args.size} px", "",
             f"Command: `{' '.join(['python', *sys.argv])}` ({platform.processor() or platform.machine()}, "
             f"2 CPU cores, torch 1 thread; total {timings['total'] / 60:.1f} min).", "",
             f"{args.seeds} seeds (seeded draws of the training labels), {args.test} fixed test images (stratified, "
             f"test split). Accuracy in %, mean and 95% interval (Student t over seeds). Cut for the CPU budget: "
             f"images at {args.size} px (native 224-260 px).", "",
             "| method | " + " | ".join(f"{b} labels/class" for b in budgets) + " |",
             "| --- | " + " | ".join("---" for _ in budgets) + " |"]
    for m in (*SINGLES, *COMBINED, *SCRATCH):
        cells = []
        for b in budgets:
            r = summary[(summary.labels_per_class == b) & (summary.method == m)].iloc[0]
            cells.append(f"{pct(r['mean'])} ({pct(r.ci_low)} to {pct(r.ci_high)})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences against the best single model (percentage points; 95% interval paired by "
              "seed, then the paired bootstrap over the test images of the seed-averaged per-image correctness, "
              "which shows test sampling only):", ""]
    for b in budgets:
        for _, r in summary[(summary.labels_per_class == b)
                            & summary.method.isin(COMBINED + SINGLES + SCRATCH)].iterrows():
            if r.method == r.vs_best_single:
                continue
            lines.append(f"- {b}/class, {r.method} − {r.vs_best_single}: {pct(r['diff'])} "
                         f"({pct(r.diff_low)} to {pct(r.diff_high)}; test-image bootstrap {pct(r.boot_low)} to "
                         f"{pct(r.boot_high)})")
    stack = runs[runs.method == "stacking"]
    lines += ["", *[f"- {n}" for n in notes],
              "- out-of-fold accuracy of the base learners (Lite0 Lite1 Lite2) per run, what the meta-learner saw: "
              + "; ".join(f"{r.labels_per_class}/class seed {r.seed}: {r.oof_accuracy}" for r in stack.itertuples()),
              f"- the registered `stacking` strategy on `ConcatBackbone([Lite0, Lite1, Lite2])` reproduces the "
              f"benchmark's stacking probabilities ({min(args.budgets)}/class, seed 0): max |difference| = "
              f"{timings['check']:.2e}",
              "", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if k != "check"), ""]
    (OUT / "report.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--test", type=int, default=2000, help="fixed test images (stratified)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 100], help="labels per class")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    if args.quick:
        OUT = Path("/tmp/stacking_quick")
        args.seeds, args.size, args.test, args.budgets = 2, 32, 200, [5, 10]
    torch.set_num_threads(1)
    t_start, timings = time.time(), {}
    train, test_split = load_dataset("fashion-mnist")
    test = sample_per_class(test_split, args.test // 10, seed=0)
    draws = {(b, s): sample_per_class(train, b, seed=s) for b in args.budgets for s in range(args.seeds)}
    pool_idx = np.unique(np.concatenate([d.origin[1] for d in draws.values()]))
    pool = train.subset(pool_idx, name="fashion-mnist-stacking-pool")
    position = {int(i): k for k, i in enumerate(pool_idx)}
    backbones, pool_feats, test_feats = {}, {}, {}
    for name, spec in MODELS.items():
        t0 = time.time()
        backbones[name] = load_backbone(spec, image_size=args.size)
        pool_feats[name] = extract_features(backbones[name], pool, batch_size=100, progress=True)
        test_feats[name] = extract_features(backbones[name], test, batch_size=100)
        timings[f"features {name}"] = time.time() - t0
        print(f"{name}: {len(pool)} + {len(test)} images embedded in {timings[f'features {name}']:.0f} s", flush=True)
    rows, correct = [], {}
    t0 = time.time()
    for (budget, seed), draw in draws.items():
        at = np.array([position[int(i)] for i in draw.origin[1]])
        out, probs = run_draw({n: f[at] for n, f in pool_feats.items()}, test_feats, draw.targets, test.targets,
                              seed)
        t1 = time.time()
        probs["small-cnn"] = scratch_probs(draw, test, seed)
        out.append({"method": "small-cnn", "accuracy": float((probs["small-cnn"].argmax(1) == test.targets).mean()),
                    "fit_s": round(time.time() - t1, 2)})
        rows += [{"labels_per_class": budget, "seed": seed, **r} for r in out]
        correct.update({(budget, seed, m): (p.argmax(1) == test.targets).astype(float) for m, p in probs.items()})
        print(budget, seed, " ".join(f"{r['method']}={100 * r['accuracy']:.1f}" for r in out), flush=True)
        if (budget, seed) == (min(args.budgets), 0):
            check = (draw, probs["stacking"])
    timings["fits"] = time.time() - t0
    timings["check"] = check_strategy_matches(backbones, check[0], test, check[1])
    timings["total"] = time.time() - t_start
    runs = pd.DataFrame(rows)
    summary, notes = summarise(runs, correct)
    write(runs, summary, notes, args, timings)
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()
