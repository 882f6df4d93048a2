"""Does ``fit --check-transfer`` fire when transfer hurts, and stay quiet when it helps? 3 seeds per case.

    python benchmarks/negative_transfer.py [--seeds 3]

Cases (each seed draws its own labelled examples; the verdict of each run is a
paired bootstrap over the evaluated test items against the scratch baseline
trained on the same draw):

* ``random source``: EfficientNet-Lite0 at random initialisation (a checkpoint),
  linear probe, Fashion-MNIST 10 labels per class at 64 px, vs the small CNN
  from scratch; 1,000 fixed test images. Transfer from nothing should hurt.
* ``ImageNet, grey clothes``: the packaged ImageNet Lite0, same target and
  baseline: the real case where a small CNN does well (ASSETS.md).
* ``sentence encoder, Debian topics``: MiniLM linear probe, 8 labels per class,
  vs TF-IDF + logistic regression; transfer should help.

Writes ``benchmarks/results/negative_transfer/{runs.csv,summary.md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd

import transferkit as tk
from transferkit.backbones import load_backbone, save_checkpoint

OUT = Path(__file__).parent / "results" / "negative_transfer"


def cases(work: Path) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    random_ckpt = work / "lite0-random.safetensors"
    if not random_ckpt.exists():
        import torch

        torch.manual_seed(0)
        save_checkpoint(load_backbone("efficientnet-lite:0", pretrained=False, image_size=64), random_ckpt)
    image = {"data": "fashion-mnist", "labels_per_class": 10, "image_size": 64, "max_test": 1000}
    return [
        {"case": "random source", "backbone": f"file:{random_ckpt}", "expect": "negative transfer", **image},
        {"case": "ImageNet, grey clothes", "backbone": "efficientnet-lite:0", "expect": "(see text)", **image},
        {"case": "sentence encoder, Debian topics", "backbone": "sentence:all-MiniLM-L6-v2", "data": "debian-packages",
         "labels_per_class": 8, "expect": "positive transfer"},
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "transferkit-negative")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    start, rows = time.perf_counter(), []
    for case in cases(args.work):
        for seed in range(args.seeds):
            opts = {k: case[k] for k in ("labels_per_class", "image_size", "max_test") if k in case}
            r = tk.fit(case["backbone"], case["data"], "linear-probe", check_transfer=True, seed=seed, report=False,
                       progress=False, val_fraction=0.0, **opts)
            v = r.manifest["verdict"]
            rows.append({"case": case["case"], "expected": case["expect"], "seed": seed, "baseline": v["baseline"],
                         "transfer": v["transfer"], "scratch": v["baseline_value"], "gain": v["gain"],
                         "gain_low": v["gain_low"], "gain_high": v["gain_high"], "verdict": v["verdict"],
                         "seconds": r.manifest["train_seconds"], "baseline_seconds": v["baseline_seconds"]})
            print(f"  {case['case']} seed={seed}: {v['verdict']} ({v['explanation']})", flush=True)
    runs = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "runs.csv", index=False)
    lines = ["# Negative-transfer check: `fit(check_transfer=True)` per seed", "",
             f"`python benchmarks/negative_transfer.py --seeds {args.seeds}`, {os.cpu_count()} CPU cores, "
             f"{(time.perf_counter() - start) / 60:.1f} min. Accuracy in %; gain in points with its 95% paired "
             "bootstrap interval over the test items (one seed per row).", "",
             "| case | seed | transfer | scratch baseline | gain [95% interval] | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs.itertuples():
        lines.append(f"| {r.case} | {r.seed} | {100 * r.transfer:.1f} | {r.baseline} {100 * r.scratch:.1f} | "
                     f"{100 * r.gain:+.1f} [{100 * r.gain_low:+.1f}, {100 * r.gain_high:+.1f}] | {r.verdict} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
