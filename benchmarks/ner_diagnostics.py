"""Why MiniLM transfer loses NER at tiny budgets: two cheap diagnostics on the ``benchmarks/ner.py`` draws.

    python benchmarks/ner_diagnostics.py case     # the CRF with and without capitalisation, 3 seeds
    python benchmarks/ner_diagnostics.py probe    # the token linear probe: every MiniLM layer, every C

* ``case``: ``all-MiniLM-L6-v2``'s tokenizer lowercases every word (``do_lower_case``), so a model on it
  never sees capitalisation, the strongest cue for names, organisations and cities. This trains the
  ``scratch:crf`` baseline on the same sentences as ``ner.py`` (same seeds, same 20% validation split),
  once on the words as they are and once on lowercased words (train, validation and test), and prints
  the test entity F1 of both: the part of the CRF's lead that is case.
* ``probe``: the frozen features of every MiniLM layer (embeddings = 0 ... 6 = what ``linear-probe``
  reads) for the seed-0 pool and the test set; a logistic regression (standardised or raw features) on
  the 80% training share of the 50 or 200 sentences (``--size``), for each C of 0.01 ... 100, scored by
  test entity F1. Shows whether the probe's weakness is its C selection and scaling or the features.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("case", "probe"))
    parser.add_argument("--size", type=int, default=50)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    case() if args.what == "case" else probe(args.size)


if __name__ == "__main__":
    main()
