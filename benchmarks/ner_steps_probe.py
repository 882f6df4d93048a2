"""One-seed probe behind the NER recipe findings: do the tiny-data losses come from too few optimizer steps?

    python benchmarks/ner_steps_probe.py

Runs, on the same pii-ner draw as ``benchmarks/ner.py`` (seed 0, 50 sentences), full fine-tuning and
LoRA of MiniLM with 100 epochs (5x the default 20: about 200 optimizer steps instead of 40), and prints
test entity F1 next to the per-epoch validation F1. One seed: a probe that says where to look, not a result; compare with the default-epoch rows of
``benchmarks/results/ner/summary.md``.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    import torch

    import transferkit as tk
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig
    from transferkit.workflows.runs import train_and_score

    spec = importlib.util.spec_from_file_location("ner", Path(__file__).with_name("ner.py"))
    ner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ner)
    torch.set_num_threads(2)
    for size, epochs, strategy in [(50, 100, "finetune"), (50, 100, "lora")]:
        pool, test = ner._data(0, size)
        train, val, test = tk.prepare_data(pool, test_data=test, seed=0)
        start = time.perf_counter()
        run = train_and_score(ner.BACKBONE, make_strategy(strategy), train, val, test,
                              TrainConfig(seed=0, epochs=epochs, progress=False), {"max_length": ner.MAX_LENGTH})
        curve = [round(h.get("val_f1", 0), 2) for h in run.history][::5]
        print(f"{size} sentences, {strategy}, {epochs} epochs: test F1 {100 * run.metrics['f1']:.1f} "
              f"({time.perf_counter() - start:.0f} s); validation F1 every 5 epochs {curve}", flush=True)


if __name__ == "__main__":
    main()
