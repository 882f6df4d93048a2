"""Domain adaptation: does each method beat source-only on the target, and can a label-free validator choose?

    python benchmarks/domain_adaptation.py [--seeds 3] [--quick] [--only fmnist-m,emoji,debian,penguins] [--methods M,...]
                                           [--weights 0.3,1,3] [--sweep dann,coral] [--out DIR]

Target labels are never used for training or choosing: each case has a
labelled source, unlabelled target inputs, and a labelled target test set
that only scores the result. Every seed draws its own source labels, target
pool and validation split; the test set is fixed.

Cases:

* ``fmnist-m``: Fashion-MNIST (100 labels per class) -> Fashion-MNIST-M, the
  MNIST-M recipe (``transferkit.data.domains.to_mnist_m``: ``|photo patch -
  image|`` with scikit-learn's two sample photos), 2,000 unlabelled target
  images from the Fashion-MNIST train split (blend seed 0), 1,000 fixed test
  images from the test split (blend seed 1); EfficientNet-Lite0 (packaged
  ImageNet weights) at 64 px, 15 epochs.
* ``emoji``: the 9 Unicode emoji groups, Noto Color Emoji illustrations (source,
  labelled) -> Symbola line art (target), 64 px, Lite0, 15 epochs; the
  stratified 75/25 split of ``load_emoji_styles`` (test emoji unseen in training).
  Needs the Debian packages fonts-noto-color-emoji, fonts-symbola, unicode-data (skipped otherwise).
* ``debian``: Debian package topics (14 sections), long description (source, 32
  labels per class from one half of the training packages) -> one-line synopsis
  (target: the synopses of the other half; test: the 840 test synopses);
  ``sentence:all-MiniLM-L6-v2``, 5 epochs.
* ``penguins``: Palmer penguins' sex from the 4 body measurements, Biscoe island
  (Adelie, Gentoo) -> Dream and Torgersen (Adelie, Chinstrap); a 2-layer MLP
  (standardised by the source statistics) for the deep methods, the standardised
  raw measurements for the shallow ones; the target is both the unlabelled pool
  and the test set (transductive, as in the usual UDA protocol), 100 epochs.

Methods: ``source-only`` and ``linear-probe`` (baselines), ``dann``, ``cdan``,
``mmd``, ``coral``, ``self-training``, ``coral-linear``, ``reweight-linear``;
the methods in ``--sweep`` also run at ``--weights`` times their default
trade-off weight. Label-free validators (entropy, infomax, SND, IWV) and the
source validation accuracy each choose (a) the weight of each swept method and
(b) one run among all; the table gives the target accuracy lost against the
oracle choice (best target test accuracy). ``skada`` (if installed) runs CORAL
and DiscriminatorReweight (its discriminator-based shallow method; skada's
deep DANN needs skorch and a trainable feature layer, so it has no counterpart
on frozen features) on the same cached features, beside ``coral-linear`` and
``reweight-linear``.

Writes ``benchmarks/results/domain_adaptation/``: ``runs.csv``, ``choices.csv``,
``skada.csv``, ``report.md``, ``accuracy.png``. ``--quick`` is a smoke run
(tiny sizes, one epoch; not for quoting).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/peft.py would shadow
# the peft package that transformers imports; this script needs nothing from that folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import pandas as pd
import torch
from torch import nn

import transferkit as tk
from transferkit.backbones.base import Backbone, TabularPreprocess
from transferkit.data import sample_per_class, subsample
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError
from transferkit.evaluation import mean_ci, paired_difference
from transferkit.evaluation.domain_validation import VALIDATORS, select_best
from transferkit.strategies.base import predict_outputs
from transferkit.strategies.domain import validator_scores

OUT = Path(__file__).parent / "results" / "domain_adaptation"
DEEP = ["source-only", "dann", "cdan", "mmd", "coral", "self-training"]
SHALLOW = ["linear-probe", "coral-linear", "reweight-linear"]
DEFAULT_WEIGHT = {"dann": 1.0, "cdan": 1.0, "mmd": 1.0, "coral": 10.0, "self-training": 1.0}
CHOOSERS = ["source-val", *VALIDATORS.names()]


# ----------------------------------------------------------------------------- tabular backbones


class StandardisedMLP(Backbone):
    """Penguins: standardise by the source statistics, then two ReLU layers (trained from scratch)."""

    modality = "tabular"

    def __init__(self, mean: np.ndarray, std: np.ndarray, width: int = 32, hidden: bool = True):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.hidden = hidden
        self.layers = nn.Sequential(nn.Linear(len(mean), width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.num_features = width if hidden else len(mean)
        self.spec = "benchmark:penguin-mlp" if hidden else "benchmark:standardised"
        self.preprocess = TabularPreprocess()

    def forward_features(self, x):
        z = (x - self.mean) / self.std
        return self.layers(z) if self.hidden else z

    def layer_groups(self):
        return [list(self.layers[0].parameters()), list(self.layers[2].parameters())]


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    description: str
    source: TaskData  # the labelled pool the seed draws from
    target: TaskData  # unlabelled target pool (labels dropped before use)
    test: TaskData  # labelled target test set (fixed)
    backbone: object  # spec string, or a callable(source) -> Backbone for the deep methods
    shallow_backbone: object = None  # for the shallow methods (default: the same)
    fit: dict = field(default_factory=dict)
    per_class: int | None = None
    target_items: int | None = None


def fmnist_case(quick: bool) -> Case:
    from transferkit.data import load_dataset
    from transferkit.data.domains import to_mnist_m

    train, test = load_dataset("fashion-mnist")
    pool = subsample(train, 600 if quick else 4000, 11)  # target pool: blended with seed 0
    target = to_mnist_m(pool, seed=0)
    test_m = to_mnist_m(subsample(test, 200 if quick else 1000, 0), seed=1)
    return Case("fmnist-m", "Fashion-MNIST -> Fashion-MNIST-M, EfficientNet-Lite0", train, target, test_m,
                "efficientnet-lite:0", fit={"image_size": 32 if quick else 64, "epochs": 1 if quick else 15},
                per_class=10 if quick else 100, target_items=300 if quick else 2000)


def emoji_case(quick: bool) -> Case:
    from transferkit.data.domains import load_emoji_styles

    size = 32 if quick else 64
    colour, _ = load_emoji_styles("color", size=size)
    line, line_test = load_emoji_styles("line", size=size)
    return Case("emoji", "emoji colour (Noto) -> line art (Symbola), EfficientNet-Lite0", colour, line, line_test,
                "efficientnet-lite:0", fit={"image_size": size, "epochs": 1 if quick else 15},
                per_class=5 if quick else None, target_items=200 if quick else None)


def debian_case(quick: bool) -> Case:
    from transferkit.data import load_dataset

    opts = {"snapshot": "subset"} if quick else {}
    desc, _ = load_dataset("debian-packages", field="description", **opts)
    syn, syn_test = load_dataset("debian-packages", field="synopsis", **opts)
    half = np.random.default_rng(0).permutation(len(desc))  # the same packages in both fields, same order
    a, b = np.sort(half[: len(desc) // 2]), np.sort(half[len(desc) // 2:])
    return Case("debian", "Debian topics, description -> synopsis, MiniLM", desc.subset(a, "debian-description"),
                syn.subset(b, "debian-synopsis"), subsample(syn_test, 140, 0) if quick else syn_test,
                "sentence:all-MiniLM-L6-v2", fit={"max_length": 64 if quick else 128, "epochs": 1 if quick else 5},
                per_class=4 if quick else 32, target_items=200 if quick else 2000)


def penguins_case(quick: bool) -> Case:
    from transferkit.data.domains import load_penguin_islands

    source, target = load_penguin_islands(("Biscoe",), label="sex")
    x = np.asarray(source.items)
    mean, std = x.mean(0), x.std(0) + 1e-6
    return Case("penguins", "penguins sex, Biscoe -> Dream + Torgersen, MLP / standardised features", source,
                target, target, lambda: StandardisedMLP(mean, std), lambda: StandardisedMLP(mean, std, hidden=False),
                fit={"epochs": 5 if quick else 100, "lr": 1e-2, "head_lr": 1e-2})


CASES = {"fmnist-m": fmnist_case, "emoji": emoji_case, "debian": debian_case, "penguins": penguins_case}


# ----------------------------------------------------------------------------- one seed of one case


def draw(case: Case, seed: int) -> tuple[TaskData, TaskData]:
    source = sample_per_class(case.source, case.per_class, seed, strict=False) if case.per_class else case.source
    target = case.target
    if case.target_items and len(target) > case.target_items:
        target = subsample(target, case.target_items, 100 + seed)
    return source, TaskData(target.items, None, target.modality, target.task, target.label_names,
                            name=target.name, source=target.source)


def backbone_for(case: Case, shallow: bool):
    spec = case.shallow_backbone if shallow and case.shallow_backbone is not None else case.backbone
    return spec() if callable(spec) else spec


def run_one(case: Case, method: str, weight: float | None, source, target, seed: int) -> dict:
    options = {} if weight is None else {"weight": weight}
    shallow = method in SHALLOW
    fit = {k: v for k, v in case.fit.items() if not (shallow and k in ("epochs", "lr", "head_lr"))}
    start = time.perf_counter()
    r = tk.fit(backbone_for(case, shallow), source, method, strategy_options=options,
               target_data=None if method == "linear-probe" else target, test_data=case.test, val_fraction=0.2,
               seed=seed, progress=False, report=False, **fit)
    seconds = time.perf_counter() - start
    _, val, _ = tk.prepare_data(source, val_fraction=0.2, seed=seed)  # the validation split fit used
    model = r.predictor.model
    scores = validator_scores(model, target, val, seed=seed)
    source_val = float((predict_outputs(model, val).argmax(1) == np.asarray(val.targets)).mean())
    return {"case": case.name, "seed": seed, "method": method, "weight": weight, "accuracy": r.metrics["accuracy"],
            "seconds": round(seconds, 1), "source-val": source_val, **scores}


def skada_rows(case: Case, source: TaskData, target: TaskData, seed: int) -> list[dict]:
    """skada's CORAL and DiscriminatorReweight on the cached frozen features our shallow methods read."""
    try:
        import sklearn
        from skada import CORAL, DiscriminatorReweight
    except ImportError:
        return []
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from transferkit.backbones import load_backbone
    from transferkit.data.cache import extract_features

    spec = backbone_for(case, shallow=True)
    opts = {k: v for k, v in case.fit.items() if k in ("image_size", "max_length")}
    bb = load_backbone(spec, **opts) if isinstance(spec, str) else spec
    train, _, _ = tk.prepare_data(source, val_fraction=0.2, seed=seed)
    xs, xt, xte = (extract_features(bb, d) for d in (train, target, case.test))
    scaler = StandardScaler().fit(xs)
    xs, xt, xte = scaler.transform(xs), scaler.transform(xt), scaler.transform(xte)
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.asarray(train.targets), -np.ones(len(xt), dtype=int)])
    domain = np.concatenate([np.ones(len(xs), dtype=int), -2 * np.ones(len(xt), dtype=int)])
    rows = []
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for name, est in (("skada CORAL", CORAL(LogisticRegression(max_iter=2000))),
                          ("skada DiscriminatorReweight",
                           DiscriminatorReweight(LogisticRegression(max_iter=2000).set_fit_request(sample_weight=True)))):
            start = time.perf_counter()
            est.fit(x, y, sample_domain=domain)
            pred = est.predict(xte, sample_domain=-2 * np.ones(len(xte), dtype=int))
            rows.append({"case": case.name, "seed": seed, "method": name,
                         "accuracy": float((pred == np.asarray(case.test.targets)).mean()),
                         "seconds": round(time.perf_counter() - start, 1)})
    return rows


# ----------------------------------------------------------------------------- choosing without target labels


def choices(runs: pd.DataFrame, sweep: list[str]) -> pd.DataFrame:
    """Per case and seed, what each chooser picks (a weight per swept method; one run of all) vs the oracle."""
    rows = []
    for (case, seed), group in runs.groupby(["case", "seed"], sort=False):
        pools = [(f"{m} weight", group[group["method"] == m]) for m in sweep]
        pools.append(("any run", group[group["method"] != "linear-probe"]))
        for what, pool in pools:
            pool = pool.reset_index(drop=True)
            if len(pool) < 2:
                continue
            oracle = float(pool["accuracy"].max())
            for chooser in CHOOSERS:
                values = pool[chooser].to_numpy(np.float64)
                if not np.isfinite(values).any():
                    continue
                i = int(np.nanargmax(values)) if chooser == "source-val" else select_best(values, chooser)
                rows.append({"case": case, "seed": seed, "choice": what, "chooser": chooser,
                             "picked": f"{pool.loc[i, 'method']}@{pool.loc[i, 'weight']}",
                             "accuracy": pool.loc[i, "accuracy"], "oracle": oracle,
                             "regret": oracle - pool.loc[i, "accuracy"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- report


def _ci(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    mean, low, high = mean_ci(values)
    return f"{100 * mean:.1f}" + ("" if np.isnan(low) else f" ± {100 * (high - mean):.1f}")


def report(runs: pd.DataFrame, chosen: pd.DataFrame, skada: pd.DataFrame, cases: dict[str, Case],
           env: dict) -> str:
    lines = ["# Domain adaptation: methods vs source-only on the target, and label-free choices", "",
             f"`{env['command']}`; {env['cpus']} CPU cores, torch {env['torch']}, {env['minutes']:.1f} min. "
             "Target test accuracy in %, mean ± 95% Student-t half-width over seeds; gain vs source-only "
             "paired by seed. Target labels are used for scoring only.", ""]
    for name, case in cases.items():
        budget = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in case.fit.items() if k in ("image_size", "max_length",
                                                                                             "epochs"))
        lines.append(f"- **{name}**: {case.description} ({budget}); source {len(case.source)} labelled "
                     + (f"({case.per_class} per class drawn per seed)" if case.per_class else "(all of it)")
                     + f", target pool {len(case.target)}, "
                     f"test {len(case.test)}.")
    lines += ["", "## Target accuracy", "", "| case | method | weight | accuracy | gain vs source-only [95% CI] | seconds |",
              "| --- | --- | --- | --- | --- | --- |"]
    for (case, method, weight), g in runs.groupby(["case", "method", "weight"], sort=False, dropna=False):
        base = runs[(runs["case"] == case) & (runs["method"] == "source-only")].set_index("seed")["accuracy"]
        acc = g.set_index("seed")["accuracy"]
        gain = "-"
        if method != "source-only" and set(acc.index) == set(base.index) and len(acc) > 1:
            d, lo, hi = paired_difference(acc.to_numpy(), base.loc[acc.index].to_numpy())
            gain = f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        elif method != "source-only" and set(acc.index) == set(base.index):
            gain = f"{100 * (acc - base.loc[acc.index]).mean():+.1f}"
        w = "" if pd.isna(weight) else f"{weight:g}"
        lines.append(f"| {case} | {method} | {w} | {_ci(acc)} | {gain} | {g['seconds'].mean():.0f} |")
    if not chosen.empty:
        lines += ["", "## Choosing without target labels", "",
                  "Target accuracy lost against the oracle choice (points; mean over seeds), and how often "
                  "the chooser picked the oracle's run.", "",
                  "| case | choice among | " + " | ".join(CHOOSERS) + " |", "| --- | --- |" + " --- |" * len(CHOOSERS)]
        for (case, what), g in chosen.groupby(["case", "choice"], sort=False):
            cells = []
            for c in CHOOSERS:
                r = g[g["chooser"] == c]
                cells.append("-" if r.empty else f"{100 * r['regret'].mean():.1f} ({(r['regret'] <= 1e-12).mean():.0%})")
            lines.append(f"| {case} | {what} | " + " | ".join(cells) + " |")
    if not skada.empty:
        lines += ["", "## skada on the same cached features", "", "| case | method | accuracy | seconds |",
                  "| --- | --- | --- | --- |"]
        ours = runs[runs["method"].isin(["linear-probe", "coral-linear", "reweight-linear"])]
        both = pd.concat([ours, skada])
        both = both.assign(order=both["case"].map({c: i for i, c in enumerate(dict.fromkeys(runs["case"]))}))
        for (_, case, method), g in both.groupby(["order", "case", "method"], sort=True):
            lines.append(f"| {case} | {method} | {_ci(g['accuracy'])} | {g['seconds'].mean():.1f} |")
    else:
        lines += ["", "skada is not installed (`pip install skada`): its side-by-side was skipped."]
    return "\n".join(lines) + "\n"


def accuracy_png(runs: pd.DataFrame) -> bytes:
    from transferkit.evaluation import summarize
    from transferkit.reports import strategy_bars_png

    runs = runs.assign(experiment=runs["case"], kind="transfer",
                       strategy=[m if pd.isna(w) else f"{m}@{w:g}" for m, w in zip(runs["method"], runs["weight"])])
    return strategy_bars_png(summarize(runs, "accuracy", by=["experiment", "strategy", "kind"]), "accuracy")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one epoch, one seed (not for quoting)")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    ap.add_argument("--weights", default="0.3,1,3", help="multipliers of the default trade-off weight for --sweep")
    ap.add_argument("--sweep", default="dann,coral", help="methods also run at the --weights multipliers")
    ap.add_argument("--methods", default=",".join(SHALLOW + DEEP), help="comma-separated methods to run "
                    "(default: all; source-only always runs, it is what every gain is measured against)")
    ap.add_argument("--epochs", type=int, help="override the epochs of the pre-trained image and text cases (a CPU-sized budget)")
    ap.add_argument("--image-size", type=int, help="override the image cases' input size in px")
    ap.add_argument("--max-length", type=int, help="override the text case's token length")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    methods = {m for m in args.methods.split(",") if m} | {"source-only"}
    unknown = sorted(methods - set(SHALLOW + DEEP))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(SHALLOW + DEEP)}")
    multipliers = [1.0] if args.quick else sorted({float(w) for w in args.weights.split(",")} | {1.0})
    sweep = [] if args.quick else [m for m in args.sweep.split(",") if m]
    start, runs, skada, built = time.perf_counter(), [], [], {}
    for name in [c for c in args.only.split(",") if c]:
        try:
            case = CASES[name](args.quick)
        except DataError as exc:
            print(f"skipped {name}: {exc}", flush=True)
            continue
        overrides = {"epochs": args.epochs, "image_size": args.image_size, "max_length": args.max_length}
        if isinstance(case.backbone, str):  # the pre-trained image and text cases, not the penguins MLP
            case.fit.update({k: v for k, v in overrides.items() if v is not None and k in case.fit})
        built[name] = case
        for seed in range(seeds):
            source, target = draw(case, seed)
            plan = [(m, None) for m in SHALLOW if m in methods]
            for m in [m for m in DEEP if m in methods]:
                ws = [DEFAULT_WEIGHT[m] * k for k in multipliers] if m in sweep else [None]
                plan += [(m, w) for w in ws]
            for method, weight in plan:
                row = run_one(case, method, weight, source, target, seed)
                runs.append(row)
                print(f"  {name} seed={seed} {method}{'' if weight is None else f'@{weight:g}'}: "
                      f"target accuracy {row['accuracy']:.3f} ({row['seconds']:.0f}s)", flush=True)
            skada += skada_rows(case, source, target, seed)
    if not runs:
        print("nothing ran")
        return 1
    runs_df, skada_df = pd.DataFrame(runs), pd.DataFrame(skada)
    chosen = choices(runs_df.assign(weight=runs_df["weight"].astype(object)), sweep)
    env = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
           "cpus": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
           "minutes": (time.perf_counter() - start) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    runs_df.to_csv(args.out / "runs.csv", index=False)
    chosen.to_csv(args.out / "choices.csv", index=False)
    skada_df.to_csv(args.out / "skada.csv", index=False)
    text = report(runs_df, chosen, skada_df, built, env)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    (args.out / "accuracy.png").write_bytes(accuracy_png(runs_df))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
