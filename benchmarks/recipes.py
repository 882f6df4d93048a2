"""Default recipes side by side: does a strategy's default lose to another method on the same data?

Issue "Recipes that win": EfficientNet-Lite0 full fine-tuning at 32 px lost 20 points to LoRA on
the same backbone and data (benchmarks/results/peft), so the recipe, not the method, was losing.
This runs, on the same labelled draws per seed, with no validation split (every run trains the
same epochs on all labels, as benchmarks/peft.py does):

* ``finetune (batchnorm=train, head_init=random)``: the old default, BatchNorm statistics updated
  from target batches and a freshly initialised head;
* ``finetune``: today's default, the pre-trained BatchNorm statistics kept (``batchnorm=auto``);
* ``finetune (head_init=probe)``: also starting from the linear probe's head (LP-FT);
* ``lora`` and ``lora (head_init=probe)``: the PEFT reference, without and with the probe's head;
* ``scratch``: the small CNN from scratch, the strongest baseline without transfer.

Results (``runs.csv``, ``summary.md``) go to ``benchmarks/results/recipes/``; accuracy in %, mean
± half-width of the 95% Student-t interval over seeds, and the paired gain of each row over the
old default.

    python benchmarks/recipes.py --seeds 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that the lora strategy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "recipes"
OLD = "finetune (batchnorm=train, head_init=random)"
METHODS = {OLD: ("finetune", {"batchnorm": "train", "head_init": "random"}),
           "finetune": ("finetune", {}), "finetune (head_init=probe)": ("finetune", {"head_init": "probe"}),
           "lora": ("lora", {}), "lora (head_init=probe)": ("lora", {"head_init": "probe"}),
           "scratch": ("scratch", {})}
#: Fashion-MNIST settings of benchmarks/peft.py: 120 and 192 optimizer steps at batch 32.
CASES = [{"data": "fashion-mnist", "labels_per_class": n, "image_size": 32, "epochs": e, "max_test": 1000}
         for n, e in ((10, 30), (100, 6))]


def run(case: dict, method: str, seed: int) -> dict:
    import torch

    import transferkit as tk
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.tasks import compute_metrics
    from transferkit.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    name, options = METHODS[method]
    train, _, test = tk.prepare_data(case["data"], labels_per_class=case["labels_per_class"], val_fraction=0.0,
                                     seed=seed, max_test=case["max_test"])
    start = time.perf_counter()
    strategy = make_strategy(name, options)
    backbone = None if name == "scratch" else load_backbone("efficientnet-lite:0", image_size=case["image_size"])
    epochs = None if name == "scratch" else case["epochs"]  # scratch: its own small-data schedule
    model, _ = strategy.fit(backbone, train, None, Trainer(TrainConfig(epochs=epochs, batch_size=32, seed=seed,
                                                                       progress=False)))
    m = compute_metrics(train.task, test.targets, strategy.predict(model, test), train.label_names)
    return {**{k: case[k] for k in ("data", "labels_per_class", "image_size")}, "method": method, "seed": seed,
            "accuracy": 100 * m["accuracy"], "seconds": time.perf_counter() - start}


def summarize(runs: pd.DataFrame) -> str:
    from transferkit.evaluation.stats import mean_ci

    lines = ["# Default recipes side by side", "",
             "`python benchmarks/recipes.py`; EfficientNet-Lite0 (ImageNet) at 32 px, batch 32, Fashion-MNIST "
             "(1,000 test images), no validation split, 1 thread per run on a 2-core CPU machine. Accuracy in %, "
             "mean ± 95% CI over seeds; gain: paired by seed against the old default (batchnorm=train, "
             "head_init=random). `s / run` is wall time and was measured while other jobs shared the 2 cores. "
             "Starting from the linear probe's head (LP-FT, `head_init=probe`) lost to a new head here, for both "
             "full fine-tuning and LoRA, so it stays an option.", ""]
    for (n,), group in runs.groupby(["labels_per_class"]):
        lines += [f"## {n} labels per class", "", "| method | accuracy | gain vs old default (pts) | s / run |",
                  "| --- | ---: | ---: | ---: |"]
        base = group[group.method == OLD].set_index("seed").accuracy
        for method in METHODS:
            rows = group[group.method == method].set_index("seed")
            if rows.empty:
                continue
            mean, lo, hi = mean_ci(rows.accuracy.to_numpy())
            diff = (rows.accuracy - base).dropna().to_numpy()
            g, glo, ghi = mean_ci(diff) if len(diff) else (np.nan, np.nan, np.nan)
            lines.append(f"| {method} | {mean:.1f} ± {(hi - lo) / 2:.1f} | {g:+.1f} [{glo:+.1f}, {ghi:+.1f}] | "
                         f"{rows.seconds.mean():.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=";".join(METHODS), help="';'-separated names (they hold commas)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in CASES:
        for seed in range(args.seeds):
            for method in args.methods.split(";"):
                rows.append(run(case, method, seed))
                print(rows[-1], flush=True)
                pd.DataFrame(rows).to_csv(OUT / "runs.csv", index=False)
    runs = pd.DataFrame(rows)
    (OUT / "summary.md").write_text(summarize(runs) + "\n", encoding="utf-8")
    print(summarize(runs))


if __name__ == "__main__":
    main()
