"""Why MiniLM transfer loses NER at tiny budgets: two cheap diagnostics on the ``benchmarks/ner.py`` draws.

    python benchmarks/ner_diagnostics.py case     # the CRF with and without capitalisation, 3 seeds
    python benchmarks/ner_diagnostics.py probe    # the token linear probe: every MiniLM layer, every C
    python benchmarks/ner_diagnostics.py paired   # paired differences of the recorded runs, per seed

* ``case``: ``all-MiniLM-L6-v2``'s tokenizer lowercases every word (``do_lower_case``), so a model on it
  never sees capitalisation, the strongest cue for names, organisations and cities. This trains the
  ``scratch:crf`` baseline on the same sentences as ``ner.py`` (same seeds, same 20% validation split),
  once on the words as they are and once on lowercased words (train, validation and test), and prints
  the test entity F1 of both: the part of the CRF's lead that is case.
* ``probe``: the frozen features of every MiniLM layer (embeddings = 0 ... 6 = what ``linear-probe``
  reads) for the seed-0 pool and the test set; a logistic regression (standardised or raw features) on
  the 80% training share of the 50 or 200 sentences (``--size``), for each C of 0.01 ... 100, scored by
  test entity F1. Shows whether the probe's weakness is its C selection and scaling or the features.
* ``paired``: no training; reads ``benchmarks/results/ner/runs*.csv`` (what ``ner.py`` recorded) and prints,
  per training size, each comparison paired by seed (``A - B`` on the same sentences): the per-seed
  differences, their mean and 95% Student-t interval, in test entity F1 and, where both runs recorded it,
  best validation F1 (the score a recipe choice may look at), and how many seeds an interval of +-1 point
  would take at the spread of these differences (``seeds for +-1``); written to ``results/ner/paired.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

CACHE = Path(tempfile.gettempdir()) / "transferkit-ner-layer-features.npz"  # about 160 MB, not kept


def _ner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ner", Path(__file__).with_name("ner.py"))
    ner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ner)
    return ner


def case() -> None:
    import transferkit as tk
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig
    from transferkit.workflows.runs import train_and_score

    ner = _ner()

    def lower(d):
        items = np.empty(len(d.items), dtype=object)
        items[:] = [[w.lower() for w in it] for it in d.items]
        return dataclasses.replace(d, items=items)

    for size in (50, 200, 1000):
        for seed in range(3):
            pool, test = ner._data(seed, size)
            tr, va, te = tk.prepare_data(pool, test_data=test, seed=seed)
            out = []
            for f in (lambda d: d, lower):
                r = train_and_score(None, make_strategy("scratch", {"variant": "crf"}), f(tr), f(va), f(te),
                                    TrainConfig(seed=seed, progress=False), {})
                out.append(round(100 * r.metrics["f1"], 1))
            print(f"size {size} seed {seed}: crf cased {out[0]}  crf lowercased {out[1]}", flush=True)


def _layer_features():
    """Word features of every layer ``[words, 7, 384]`` for the 1,000-sentence pool and the test set."""
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.backbones.hf import model_inputs
    from transferkit.data.builtin import load_pii_ner
    from transferkit.tasks import IGNORE_INDEX

    train, test = load_pii_ner(n_train=1000, n_test=500)
    bb = load_backbone("sentence:all-MiniLM-L6-v2", max_length=64).eval()
    owner, attr = bb.transformer_slot()
    inner = getattr(owner, attr)

    def feats(data):
        xs, ys, items = [], [], list(data.items)
        for s in range(0, len(items), 32):
            idx = np.arange(s, min(s + 32, len(items)))
            inputs = bb.preprocess([items[i] for i in idx])
            with torch.no_grad():
                hs = inner(**model_inputs(inner, inputs), output_hidden_states=True).hidden_states
            labels = data.task_spec.collate_targets(data.targets[idx], inputs)
            keep = labels != IGNORE_INDEX
            xs.append(np.stack([h[keep].numpy() for h in hs], 1))
            ys.append(labels[keep].numpy())
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys)

    Xtr, ytr = feats(train)
    Xte, yte = feats(test)
    return dict(Xtr=Xtr, ytr=ytr, Xte=Xte, yte=yte, ltr=np.array([len(t) for t in train.targets]),
                lte=np.array([len(t) for t in test.targets]), names=np.array(train.label_names))


def probe(size: int) -> None:
    from seqeval.metrics import f1_score
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    warnings.filterwarnings("ignore")
    if not CACHE.exists():
        np.savez(CACHE, **_layer_features())
    d = np.load(CACHE)
    names = list(d["names"])
    Xtr, ytr, Xte, yte = d["Xtr"], d["ytr"], d["Xte"], d["yte"]
    otr, ote = np.concatenate([[0], np.cumsum(d["ltr"])]), np.concatenate([[0], np.cumsum(d["lte"])])

    def sents(y, off):
        return [[names[j] for j in y[off[i]:off[i + 1]]] for i in range(len(off) - 1)]

    gold = sents(yte, ote)

    def run(layers, std=True, seed=0):
        order = np.sort(np.random.default_rng(seed).permutation(1000)[:size])
        tr = np.random.default_rng(seed).permutation(order)[:int(round(size * 0.8))]
        rows = np.concatenate([np.arange(otr[i], otr[i + 1]) for i in tr])
        X, y = Xtr[rows][:, layers].reshape(len(rows), -1), ytr[rows]
        Xt = Xte[:, layers].reshape(len(Xte), -1)
        m, s = (X.mean(0), X.std(0) + 1e-6) if std else (0, 1)
        out = {}
        for C in (0.01, 0.1, 1, 10, 100):
            with threadpool_limits(1):
                lr = LogisticRegression(C=C, max_iter=2000).fit((X - m) / s, y)
            out[C] = round(100 * f1_score(gold, sents(lr.predict((Xt - m) / s), ote)), 1)
        return out

    print(f"{size} sentences (seed 0, {int(round(size * 0.8))} train); test entity F1 per C:")
    print("  layer 6 (last, what linear-probe reads), standardised", run([6]))
    print("  layer 6, raw features", run([6], std=False))
    for layer in (0, 2, 3, 4, 5):
        print(f"  layer {layer}, standardised", run([layer]))


#: ``(A, B)``: the comparisons ``paired`` prints, where both were run on the same seeds.
PAIRS = (("finetune", "crf"), ("lora", "crf"), ("lora", "finetune"), ("finetune+all-tokens", "finetune"),
         ("lora+all-tokens", "lora"), ("lora+all-tokens", "finetune+all-tokens"), ("finetune+all-tokens", "crf"),
         ("finetune+last-epoch", "finetune"), ("lora+last-epoch", "lora"), ("lora+last-epoch", "finetune+last-epoch"),
         ("finetune+last-epoch", "crf"), ("finetune (ties later)", "finetune"), ("lora (ties later)", "lora"),
         ("lora (ties later)", "finetune (ties later)"), ("finetune (ties later)", "crf"), ("lora (ties later)", "crf"),
         # LoRA settings (ner.py --lora-options, issue 17) and a rerun of the defaults in the same environment
         *((f"lora ({x})", "finetune (ties later)") for x in ("drop0.1", "lr2e-3", "r16a32", "ties later, rerun")),
         *((f"lora ({x})", "lora (ties later)") for x in ("drop0.1", "lr2e-3", "r16a32", "ties later, rerun")),
         *((f"lora ({x})", "finetune (ties later, rerun)") for x in ("drop0.1", "lr2e-3", "r16a32", "ties later, rerun")),
         ("finetune (ties later, rerun)", "finetune (ties later)"))


def paired() -> None:
    import pandas as pd

    from transferkit.evaluation.stats import mean_ci

    out = Path(__file__).parent / "results" / "ner"
    files = sorted(out.glob("runs*.csv"))
    runs = pd.concat([pd.read_csv(p).assign(file=p.name) for p in files], ignore_index=True)
    lines = ["# NER: paired differences per seed", "",
             f"`python benchmarks/ner_diagnostics.py paired` over {', '.join(f'`{p.name}`' for p in files)} (the "
             "runs `benchmarks/ner.py` recorded; no training here). `A - B`: entity F1 points on the same "
             "sentences and seed; mean and 95% Student-t interval over the seeds both ran. `val F1`: the best "
             "validation F1 of each run, where both recorded it. `seeds for +-1`: how many seeds would give an "
             "interval of +-1 point at the spread of these differences.", "",
             "| sentences | A - B | per seed (seed: test F1 diff) | test F1: mean [95% CI] | val F1: mean [95% CI] "
             "| seeds for +-1 |", "| ---: | --- | --- | --- | --- | ---: |"]
    for size, group in runs.groupby("sentences"):
        for a, b in PAIRS:
            left = group[group.method == a].drop_duplicates("seed", keep="last").set_index("seed")
            right = group[group.method == b].drop_duplicates("seed", keep="last").set_index("seed")
            seeds = sorted(set(left.index) & set(right.index))
            if not seeds:
                continue
            cells = []
            for col in ("f1", "val_f1"):
                if col not in runs or left.loc[seeds, col].isna().any() or right.loc[seeds, col].isna().any():
                    cells.append("—")
                    continue
                diff = (left.loc[seeds, col] - right.loc[seeds, col]).to_numpy(float)
                mean, lo, hi = mean_ci(diff) if len(diff) > 1 else (diff[0], np.nan, np.nan)
                cells.append(f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]" if len(diff) > 1 else f"{mean:+.1f} (1 seed)")
            per_seed = ", ".join(f"{s}: {left.f1[s] - right.f1[s]:+.1f}" for s in seeds)
            lines.append(f"| {size} | {a} - {b} | {per_seed} | {cells[0]} | {cells[1]} | "
                         f"{_seeds_for(np.std(left.f1[seeds] - right.f1[seeds], ddof=1)) if len(seeds) > 1 else '—'} |")
    (out / "paired.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _seeds_for(sd: float, half_width: float = 1.0) -> int:
    """The fewest seeds n whose 95% Student-t interval of a mean difference with spread ``sd`` is +-``half_width``."""
    from scipy import stats

    n = 2
    while stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) > half_width and n < 10_000:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("case", "probe", "paired"))
    parser.add_argument("--size", type=int, default=50)
    args = parser.parse_args()
    if args.what == "paired":
        return paired()
    import torch

    torch.set_num_threads(1)
    case() if args.what == "case" else probe(args.size)


if __name__ == "__main__":
    main()
