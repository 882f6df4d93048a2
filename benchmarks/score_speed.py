"""Speed of every transferability score on one synthetic feature matrix.

    OMP_NUM_THREADS=2 python benchmarks/score_speed.py [--n 10000] [--d 1280] [--classes 10]
        [--source-classes 1000] [--seed 0] [--out benchmarks/results/score_speed]

Features are float32 Gaussian class clusters with a decaying spectrum: class
means in the first 64 dimensions, unit noise, dimension ``j`` scaled by
``1/sqrt(j)`` (so PCA at 80% variance keeps a realistic couple of hundred
dimensions rather than nearly all of them). ``source_probs`` are a softmax over
``--source-classes`` random logits, mildly tied to the class. Every score in
``SCORES`` runs once, with default options, after a warm-up of all of them on a
small problem (imports, BLAS start-up). Writes ``score_speed.json`` and
``score_speed.md`` (score, seconds, ratio to LogME's time, value).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from transferkit.evaluation.transferability import SCORES, compute_score

OUT = Path(__file__).parent / "results" / "score_speed"


def synthetic(n: int, d: int, classes: int, source_classes: int, seed: int):
    """Class-clustered float32 features, labels, and float32 source-head probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    means = np.zeros((classes, d))
    means[:, :64] = 0.5 * rng.normal(size=(classes, min(64, d)))
    features = ((means[y] + rng.normal(size=(n, d))) / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    logits = 2.0 * rng.normal(size=(n, source_classes))
    logits[np.arange(n), y % source_classes] += 2.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return features, y, (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def time_all(features, labels, probs) -> list[dict]:
    rows = []
    for entry in SCORES:
        start = time.perf_counter()
        value = compute_score(entry.name, features=features, labels=labels, source_probs=probs)
        rows.append({"score": entry.name, "seconds": time.perf_counter() - start, "value": value})
        print(f"{entry.name:>16}: {rows[-1]['seconds']:7.2f} s  (value {value:.6g})", flush=True)
    return rows


def markdown(rows: list[dict], args, env: dict) -> str:
    base = next(r["seconds"] for r in rows if r["score"] == "logme")
    title = (f"# Transferability score speed: n={args.n}, d={args.d}, {args.classes} classes, "
             f"{args.source_classes} source classes")
    setup = (f"{env['cpus']} CPUs, BLAS threads {env['blas_threads']}, numpy {env['numpy']}, "
             f"scikit-learn {env['sklearn']}. Command: `{env['command']}`")
    lines = [title, "", setup, "", "| score | seconds | ratio to logme | value |", "| --- | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: r["seconds"]):
        lines.append(f"| {r['score']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | {r['value']:.6g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--source-classes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import sklearn

    env = {"python": sys.version.split()[0], "numpy": np.__version__, "sklearn": sklearn.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "blas_threads": max((i["num_threads"] for i in threadpool_info()), default=None),
           "command": " ".join(sys.argv)}
    warm = synthetic(300, 32, args.classes, 50, args.seed + 1)
    for entry in SCORES:
        compute_score(entry.name, features=warm[0], labels=warm[1], source_probs=warm[2])
    rows = time_all(*synthetic(args.n, args.d, args.classes, args.source_classes, args.seed))
    base = next(r["seconds"] for r in rows if r["score"] == "logme")
    for r in rows:
        r["ratio_to_logme"] = r["seconds"] / base
    (args.out / "score_speed.json").write_text(json.dumps(
        {"n": args.n, "d": args.d, "classes": args.classes, "source_classes": args.source_classes,
         "seed": args.seed, "results": rows, **env}, indent=2))
    table = markdown(rows, args, env)
    (args.out / "score_speed.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
