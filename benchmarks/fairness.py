"""Fairness benchmark: before and after mitigation, on penguins (sex | island) and a synthetic positive control.

    python benchmarks/fairness.py [--seeds 20] [--epochs 60] [--control-epochs 30] [--quick]

Why penguins' sex with island as the attribute. Sex is balanced on every
island (Biscoe 80/83, Dream 61/62, Torgersen 24/23 female/male), so a fair
classifier has no reason to treat the islands differently; yet the islands
hold different species (Biscoe: mostly Gentoo; Dream: Adelie and Chinstrap;
Torgersen: Adelie only), and a plain MLP sexing penguins from their size is
less accurate on Dream than on Biscoe: an accuracy gap, a worst-group
accuracy and an equalized-odds difference to close. Species as the label with
island as the attribute is not a fairness problem (Gentoo lives only on
Biscoe, Chinstrap only on Dream: the "gap" is the biology), and species with
sex as the attribute has no gap (about 98% accuracy for both sexes).

Because sex does not depend on island, the two methods' levers (a label/group
dependence for reweighing; group information in the model for the adversary)
have little to act on in penguins. The positive control is a synthetic table
where they do: group ``g`` leaks into a feature and shifts the label's rate
(``y = 1[x1 + 1.5 (g - 1/2) + noise > 0]``), 400 training and 1,000 test rows
per seed; plain training reproduces the base-rate gap in its predictions.

Protocol. Penguins: each seed draws its own stratified 75/25 split (250
train / 83 test; the 11 penguins without a recorded sex are dropped); control:
each seed draws new tables. Every method trains ``mlp:64x64`` from scratch on
the same split (paired by seed):

* ``finetune``: plain training (before mitigation);
* ``reweighing``: Kamiran–Calders sample weights;
* ``adversarial-debiasing``, adversary on the ``features`` (the issue's
  definition; weight 1 and 3), on the ``outputs`` (Zhang et al.'s demographic
  parity) and on ``outputs+label`` (Zhang et al.'s equalized odds), weight 1.

Metrics on the test split (``transferkit.evaluation.fairness.group_metrics``,
rates from fairlearn): accuracy, worst-group accuracy, accuracy gap,
demographic parity difference and equalized odds difference (for two classes
the one-vs-rest maximum equals fairlearn's binary value), and how well a
fresh logistic regression recovers the group from the trained features
(5-fold CV on the test items: the leakage the ``features`` adversary fights). Mean and 95% Student-t interval over seeds;
paired differences against ``finetune``. As a reference for the noise of
the small test islands, the demographic parity difference of the true labels
themselves (what a perfect classifier would show) is recorded per split.

Writes ``benchmarks/results/fairness/{report.md,runs.csv,summary.csv,paired.csv}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/peft.py would shadow
# the peft package that transformers imports; this script needs nothing from that folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data import load_dataset  # noqa: E402
from transferkit.data.dataset import TaskData  # noqa: E402
from transferkit.evaluation import mean_ci, paired_difference  # noqa: E402
from transferkit.evaluation.fairness import group_metrics, kamiran_calders_weights  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.strategies.base import predict_outputs  # noqa: E402
from transferkit.training import TrainConfig, Trainer  # noqa: E402

OUT = Path(__file__).parent / "results" / "fairness"
METHODS = [
    ("finetune", "finetune", {}),
    ("reweighing", "reweighing", {}),
    ("adversary: features", "adversarial-debiasing", {"adversary_input": "features"}),
    ("adversary: features, weight 3", "adversarial-debiasing", {"adversary_input": "features", "weight": 3.0}),
    ("adversary: outputs (DP)", "adversarial-debiasing", {"adversary_input": "outputs"}),
    ("adversary: outputs+label (EO)", "adversarial-debiasing", {"adversary_input": "outputs+label"}),
]
METRICS = [("accuracy", "accuracy"), ("accuracy_worst_group", "worst-group accuracy"),
           ("accuracy_gap", "accuracy gap"), ("demographic_parity_difference", "DP difference"),
           ("equalized_odds_difference", "EO difference"), ("group_probe", "group recovered from features")]


def leaky_table(n: int, seed: int) -> TaskData:
    """The positive control: group g leaks into feature 0 and shifts the label's base rate by 1.5 sd."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    x1 = rng.normal(size=n)
    y = (x1 + 1.5 * (g - 0.5) + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    x = np.stack([2.0 * g + 0.5 * rng.normal(size=n), x1, rng.normal(size=n)], 1).astype(np.float32)
    return TaskData(x, y, "tabular", label_names=["no", "yes"], name="leaky", sensitive=np.where(g, "b", "a"),
                    sensitive_name="group")


CASES = {
    "penguins": lambda seed: load_dataset("penguins", seed=seed, label="sex", sensitive="island"),
    "control": lambda seed: (leaky_table(400, 2 * seed), leaky_table(1000, 2 * seed + 1)),
}
TITLES = {"penguins": "Penguins: sex from measurements, island as the sensitive attribute",
          "control": "Positive control (synthetic): the group leaks into a feature and shifts the label's rate"}


def group_probe(model, data) -> float:
    """5-fold CV accuracy of a logistic regression predicting the group from the model's features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with torch.no_grad():
        feats = model.backbone.eval().forward_features(torch.as_tensor(np.asarray(data.items))).numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, feats, data.sensitive, cv=folds).mean())


def run_seed(case: str, seed: int, args) -> list[dict]:
    train, test = CASES[case](seed)
    weights = kamiran_calders_weights(train.targets, train.sensitive)
    label_dp = group_metrics(test.targets, test.targets, test.sensitive)["demographic_parity_difference"]
    epochs = args.epochs if case == "penguins" else args.control_epochs
    rows = []
    for label, name, options in METHODS:
        start = time.perf_counter()
        strategy = make_strategy(name, options)
        backbone = load_backbone(args.backbone, in_features=train.items.shape[1])
        config = TrainConfig(epochs=epochs, lr=args.lr, head_lr=args.lr, batch_size=32, seed=seed, progress=False)
        model, history = strategy.fit(backbone, train, None, Trainer(config))
        outputs = predict_outputs(model, test)
        gm = group_metrics(test.targets, outputs, test.sensitive, label_names=test.label_names,
                           sensitive_name=test.sensitive_name)
        row = {"case": case, "seed": seed, "method": label, "strategy": name,
               "seconds": round(time.perf_counter() - start, 2),
               "accuracy": float((outputs.argmax(1) == test.targets).mean()),
               **{k: gm[k] for k in ("accuracy_worst_group", "worst_group", "accuracy_gap",
                                     "demographic_parity_difference", "equalized_odds_difference")},
               **{f"acc_{g}": v["accuracy"] for g, v in gm["groups"].items()},
               **{f"n_{g}": v["count"] for g, v in gm["groups"].items()},
               "group_probe": group_probe(model, test),
               "adversary_acc_last_epoch": history[-1].get("adversary_acc", float("nan")),
               "kc_weight_min": float(weights.min()), "kc_weight_max": float(weights.max()),
               "label_dp": label_dp}
        rows.append(row)
        print(f"{case} seed {seed} {label:30s} acc={row['accuracy']:.3f} worst={row['accuracy_worst_group']:.3f} "
              f"DP={row['demographic_parity_difference']:.3f} EO={row['equalized_odds_difference']:.3f} "
              f"probe={row['group_probe']:.3f} ({row['seconds']:.1f}s)", flush=True)
    return rows


def _group_columns(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if c.startswith("acc_") and runs[c].notna().all()]


def summarise(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per case and method: mean and 95% interval of every metric, and paired differences against finetune."""
    summary, paired = [], []
    for case, part_case in runs.groupby("case", sort=False):
        part_case = part_case.dropna(axis=1, how="all")
        base = part_case[part_case.method == "finetune"].sort_values("seed")
        keys = [k for k, _ in METRICS] + _group_columns(part_case) + ["label_dp", "adversary_acc_last_epoch"]
        for label, _, _ in METHODS:
            part = part_case[part_case.method == label].sort_values("seed")
            for key in keys:
                if key not in part or part[key].isna().all():
                    continue
                m, lo, hi = mean_ci(part[key].to_numpy())
                summary.append({"case": case, "method": label, "metric": key, "mean": m, "ci_low": lo, "ci_high": hi})
                if label != "finetune" and key != "adversary_acc_last_epoch":
                    d, dlo, dhi = paired_difference(part[key].to_numpy(), base[key].to_numpy())
                    paired.append({"case": case, "method": label, "metric": key, "diff_vs_finetune": d,
                                   "ci_low": dlo, "ci_high": dhi})
    return pd.DataFrame(summary), pd.DataFrame(paired)


def _fmt(m, lo, hi, sign=False) -> str:
    s = f"{m * 100:+.1f}" if sign else f"{m * 100:.1f}"
    if np.isnan(lo):
        return s
    return f"{s} [{lo * 100:+.1f}, {hi * 100:+.1f}]" if sign else f"{s} [{lo * 100:.1f}, {hi * 100:.1f}]"


def _significant(paired: pd.DataFrame) -> str:
    names = dict(METRICS)
    hits = paired[(paired.metric.isin(names)) & ((paired.ci_low > 0) | (paired.ci_high < 0))]
    if not len(hits):
        return "none"
    return "; ".join(f"{r.method}: {names[r.metric]} {100 * r.diff_vs_finetune:+.1f}" for r in hits.itertuples())


def _case_section(case: str, runs: pd.DataFrame, summary: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    s = summary[summary.case == case].set_index(["method", "metric"])
    p = paired[paired.case == case].set_index(["method", "metric"])
    header = ["| method | " + " | ".join(t for _, t in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines = ["", f"## {TITLES[case]}", "", "### Before and after mitigation", "", *header]
    for label, _, _ in METHODS:
        lines.append(f"| {label} | " + " | ".join(_fmt(*s.loc[(label, k)][["mean", "ci_low", "ci_high"]])
                                                  for k, _ in METRICS) + " |")
    lines += ["", "### Paired differences against plain training (after − before)", "", *header]
    for label, _, _ in METHODS[1:]:
        lines.append(f"| {label} | " + " | ".join(
            _fmt(*p.loc[(label, k)][["diff_vs_finetune", "ci_low", "ci_high"]], sign=True) for k, _ in METRICS) + " |")
    groups = _group_columns(runs[runs.case == case].dropna(axis=1, how="all"))
    lines += ["", "### Accuracy per group", "", "| method | " + " | ".join(g[4:] for g in groups) + " |",
              "|---" * (len(groups) + 1) + "|"]
    for label, _, _ in METHODS:
        lines.append(f"| {label} | " + " | ".join(_fmt(*s.loc[(label, g)][["mean", "ci_low", "ci_high"]])
                                                  for g in groups) + " |")
    part = runs[runs.case == case]
    first = part.drop_duplicates("seed")
    counts = ", ".join(f"{g[4:]} {first['n_' + g[4:]].mean():.0f}" for g in groups)
    adv = part[part.strategy == "adversarial-debiasing"].groupby("method").adversary_acc_last_epoch.mean()
    lines += ["", "Notes:", "",
              f"- Test items per group (mean over splits): {counts}.",
              f"- Worst group of plain training, by seed: {part[part.method == 'finetune'].worst_group.value_counts().to_dict()}.",
              f"- DP difference of the true test labels (what a perfect classifier shows): "
              f"{_fmt(*s.loc[('finetune', 'label_dp')][['mean', 'ci_low', 'ci_high']])}.",
              f"- Kamiran–Calders weights on the training splits: {part.kc_weight_min.min():.3f} to "
              f"{part.kc_weight_max.max():.3f}.",
              "- Adversary's training accuracy in the last epoch (mean): "
              + ", ".join(f"{m} {100 * v:.1f}" for m, v in adv.items()) + ".",
              f"- Paired intervals that exclude 0: {_significant(paired[paired.case == case])}."]
    return lines


def write_report(runs, summary, paired, args, seconds) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    runs.to_csv(OUT / "runs.csv", index=False)
    summary.to_csv(OUT / "summary.csv", index=False)
    paired.to_csv(OUT / "paired.csv", index=False)
    lines = ["# Fairness mitigation: before and after", "",
             f"`python benchmarks/fairness.py --seeds {args.seeds} --epochs {args.epochs} --control-epochs "
             f"{args.control_epochs}{' --quick' if args.quick else ''}`: {runs.seed.nunique()} seeds, `{args.backbone}` "
             f"from scratch, lr {args.lr}, batch 32, one CPU thread, {seconds / 60:.1f} min wall time. Values in "
             f"percentage points: mean [95% Student-t interval over seeds]; paired differences pair the methods "
             f"on the same split and seed. Group metrics from `transferkit.evaluation.fairness.group_metrics` "
             f"(rates from fairlearn); `group recovered from features` is the 5-fold CV accuracy of a fresh "
             f"logistic regression predicting the group from the trained features of the test items. The "
             f"docstring of `benchmarks/fairness.py` gives the protocol and why penguins' sex | island.", ""]
    for case in runs.case.unique():
        lines += _case_section(case, runs, summary, paired)
    lines += ["", "Adversarial debiasing: gradient reversal with DANN's ramp, adversary with one hidden layer of 64 "
                  "at the head's learning rate; Zhang et al.'s projection term is not used. Every number in this "
                  "file comes from `runs.csv` of this run."]
    (OUT / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--control-epochs", type=int, default=30)
    ap.add_argument("--backbone", default="mlp:64x64")
    ap.add_argument("--cases", default="penguins,control", help="comma-separated: penguins, control")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 10 epochs: checks that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.control_epochs = 2, 10, 10
    torch.set_num_threads(1)
    start = time.perf_counter()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    runs = pd.DataFrame([row for case in cases for seed in range(args.seeds) for row in run_seed(case, seed, args)])
    summary, paired = summarise(runs)
    write_report(runs, summary, paired, args, time.perf_counter() - start)
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()
