"""Default recipes side by side: does a strategy's default lose to another method, or to the reference
trainer a practitioner would use, on the same data?

Issue "Recipes that win". Every run of a case trains on the same labelled draw per seed, with no
validation split (the same epochs on all labels, as benchmarks/peft.py does). Cases (``--case``):

* ``fmnist``: EfficientNet-Lite0 (ImageNet) at 32 px on Fashion-MNIST, 10 and 100 labels per class,
  1,000 test images. EfficientNet-Lite0 full fine-tuning lost 20 points to LoRA on the same backbone
  and data (benchmarks/results/peft), so the recipe, not the method, was losing. Rows:

  - ``finetune (batchnorm=train, head_init=random)``: the first default, BatchNorm statistics updated
    from target batches;
  - ``finetune``, ``lora``: today's defaults (``feature_scale=auto`` leaves Lite0's features raw: they
    are not unit-length);
  - ``... (feature_scale=rms)``: the head's features brought to a root-mean-square of 1 on any backbone,
    the rule ``auto`` narrowed after this benchmark; ``finetune (head_init=probe, feature_scale=rms)``:
    LP-FT with it;
  - ``scratch``: the small CNN from scratch, the strongest baseline without transfer.

* ``drug``: MiniLM (``sentence:all-MiniLM-L6-v2``, max length 64) on the 600 drug reviews (3
  imbalanced classes, all 379 test reviews; balanced accuracy reported), where full fine-tuning
  learnt only the majority class. Rows: ``finetune``, ``finetune (feature_scale=none)``, ``lora``, and
  ``Trainer (full, defaults)``: ``AutoModelForSequenceClassification`` on the same MiniLM weights
  with ``transformers.Trainer``'s defaults (learning rate 5e-5, 3 epochs, batch 8, linear decay, no
  warm-up), the recipe the issue measured at 71.3 +- 1.6.

* ``debian``: MiniLM on the 14 Debian sections, 32 labels per class, 60 test items per section, where
  LoRA was 8 points below full fine-tuning. Rows: ``finetune``, ``lora`` and both with
  ``feature_scale=none`` (the rows before the scale, measured by benchmarks/peft.py on the same draws).

MiniLM's sentence embeddings are unit-length, so ``feature_scale=auto`` multiplies them by sqrt(384).

Results go to ``benchmarks/results/recipes/CASE/`` (``runs.csv``, ``summary.md``); accuracy in %, mean
+- half-width of the 95% Student-t interval over seeds, and the paired gain of each row over the
case's reference row. Runs already in ``runs.csv`` are kept (delete it to start over); ``--jobs 2``
trains two runs at once, one thread each.

    python benchmarks/recipes.py --case fmnist --seeds 3
    python benchmarks/recipes.py --case drug --seeds 3 --jobs 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# benchmarks/peft.py would shadow the peft package that the lora strategy imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "recipes"
MINILM = "sentence:all-MiniLM-L6-v2"
TRAINER = "Trainer (full, defaults)"
OLD_BN = "finetune (batchnorm=train, head_init=random)"
CASES = {
    "fmnist": {
        "backbone": "efficientnet-lite:0", "options": {"image_size": 32}, "reference": "finetune",
        # the Fashion-MNIST settings of benchmarks/peft.py: 120 and 192 optimizer steps at batch 32
        "draws": [{"data": "fashion-mnist", "labels_per_class": n, "epochs": e, "max_test": 1000}
                  for n, e in ((10, 30), (100, 6))],
        "methods": {OLD_BN: ("finetune", {"batchnorm": "train", "head_init": "random", "feature_scale": "none"}),
                    "finetune": ("finetune", {}), "finetune (feature_scale=rms)": ("finetune", {"feature_scale": "rms"}),
                    "finetune (head_init=probe, feature_scale=rms)": ("finetune", {"head_init": "probe",
                                                                                   "feature_scale": "rms"}),
                    "lora": ("lora", {}), "lora (feature_scale=rms)": ("lora", {"feature_scale": "rms"}),
                    "scratch": ("scratch", {})}},
    "drug": {
        "backbone": MINILM, "options": {"max_length": 64}, "reference": TRAINER,
        "draws": [{"data": "drug-reviews", "labels_per_class": None, "epochs": None, "max_test": None}],
        "note": (f"`{TRAINER}`: `AutoModelForSequenceClassification` (BERT's pooler on the first token, a new "
                 "classifier) on the same MiniLM weights, trained by `transformers.Trainer` with every default "
                 "(learning rate 5e-5, 3 epochs, batch 8, linear decay, no warm-up, no weight decay), truncated "
                 "at the same 64 tokens. The other rows use transferkit's defaults: 20 epochs at batch 32, "
                 "learning rate 1e-4 for the encoder and 1e-3 for the head, cosine with 10% warm-up."),
        "methods": {"finetune": ("finetune", {}), TRAINER: (None, {}),
                    "finetune (feature_scale=none)": ("finetune", {"feature_scale": "none"}),
                    "lora": ("lora", {})}},
    "debian": {
        "backbone": MINILM, "options": {"max_length": 64}, "reference": "finetune",
        "draws": [{"data": "debian-packages", "labels_per_class": 32, "epochs": None, "max_test": None}],
        "methods": {"finetune": ("finetune", {}), "lora": ("lora", {}),
                    "finetune (feature_scale=none)": ("finetune", {"feature_scale": "none"}),
                    "lora (feature_scale=none)": ("lora", {"feature_scale": "none"})}},
}


def run(case: str, draw: dict, method: str, seed: int) -> dict:
    import torch

    import transferkit as tk
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.tasks import compute_metrics
    from transferkit.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    spec = CASES[case]
    name, options = spec["methods"][method]
    train, _, test = tk.prepare_data(draw["data"], labels_per_class=draw["labels_per_class"], val_fraction=0.0,
                                     seed=seed, max_test=draw["max_test"])
    start = time.perf_counter()
    if name is None:
        probs = _trainer_reference(train, test, seed, spec["options"]["max_length"])
    else:
        strategy = make_strategy(name, options)
        backbone = None if name == "scratch" else load_backbone(spec["backbone"], **spec["options"])
        epochs = None if name == "scratch" else draw["epochs"]  # scratch: its own small-data schedule
        model, _ = strategy.fit(backbone, train, None, Trainer(TrainConfig(epochs=epochs, batch_size=32, seed=seed,
                                                                           progress=False)))
        probs = strategy.predict(model, test)
    m = compute_metrics(train.task, test.targets, probs, train.label_names)
    return {"case": case, "data": draw["data"], "labels_per_class": draw["labels_per_class"] or "all",
            "method": method, "seed": seed, "accuracy": 100 * m["accuracy"],
            "balanced_accuracy": 100 * m["balanced_accuracy"], "seconds": time.perf_counter() - start}


def _trainer_reference(train, test, seed: int, max_length: int) -> np.ndarray:
    """``AutoModelForSequenceClassification`` on the packaged MiniLM with ``transformers.Trainer``'s defaults."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from transferkit.backbones.hf import packaged_minilm

    path = packaged_minilm()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(train.label_names))

    class Texts(torch.utils.data.Dataset):
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return {"text": self.data.items[i], "labels": int(self.data.targets[i])}

    def collate(rows):
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {**enc, "labels": torch.tensor([r["labels"] for r in rows])}

    with tempfile.TemporaryDirectory() as tmp:  # every argument not given is the Trainer's default
        args = TrainingArguments(output_dir=tmp, seed=seed, report_to=[], save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, use_cpu=True, remove_unused_columns=False)
        Trainer(model=model, args=args, train_dataset=Texts(train), data_collator=collate).train()
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(test), 64):
            batch = collate([{"text": t, "labels": 0} for t in test.items[i:i + 64]])
            batch.pop("labels")
            probs.append(model(**batch).logits.softmax(-1).numpy())
    return np.concatenate(probs)


def summarize(case: str, runs: pd.DataFrame) -> str:
    from transferkit.evaluation.stats import mean_ci

    spec = CASES[case]
    opts = ", ".join(f"{k} {v}" for k, v in spec["options"].items())
    fixed = [f"{d['epochs']} epochs at {d['labels_per_class']}/class" for d in spec["draws"] if d["epochs"]]
    epochs = ("the transfer rows train " + " and ".join(fixed) + " (scratch: its own schedule)" if fixed
              else "every row at its default epochs")
    lines = [f"# Default recipes side by side: {case}", "",
             f"`python benchmarks/recipes.py --case {case} --seeds {runs.seed.nunique()}`; {spec['backbone']} "
             f"({opts}), batch 32, no validation split, {epochs}, 1 thread per run on a 2-core CPU machine. Accuracy and balanced accuracy in %, mean ± 95% CI over "
             f"seeds; gain: accuracy paired by seed against `{spec['reference']}`. `s / run` is wall time (load, "
             "train, predict), measured while other runs shared the 2 cores (up to five at once).", ""]
    lines += [spec["note"], ""] if spec.get("note") else []
    for (data, n), group in runs.groupby(["data", "labels_per_class"], sort=False):
        lines += [f"## {data}, " + ("all labels" if n == "all" else f"{n} labels per class"), "",
                  "| method | accuracy | balanced accuracy | gain vs reference (pts) | seeds | s / run |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        base = group[group.method == spec["reference"]].set_index("seed").accuracy
        for method in spec["methods"]:
            rows = group[group.method == method].set_index("seed")
            if rows.empty:
                continue
            mean, lo, hi = mean_ci(rows.accuracy.to_numpy())
            bmean, blo, bhi = mean_ci(rows.balanced_accuracy.to_numpy())
            diff = (rows.accuracy - base).dropna().to_numpy()
            g, glo, ghi = mean_ci(diff) if len(diff) else (np.nan, np.nan, np.nan)
            lines.append(f"| {method} | {mean:.1f} ± {(hi - lo) / 2:.1f} | {bmean:.1f} ± {(bhi - blo) / 2:.1f} | "
                         f"{g:+.1f} [{glo:+.1f}, {ghi:+.1f}] | {len(rows)} | {rows.seconds.mean():.0f} |")
        lines.append("")
    return "\n".join(lines)


def _record(path: Path, row: dict) -> None:
    """Add ``row`` to ``runs.csv`` as it is now on disk (another invocation may be adding other runs)."""
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    pd.concat([old, pd.DataFrame([row])], ignore_index=True).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="fmnist")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=None, help="';'-separated names (they hold commas); default: all")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    args = parser.parse_args()
    out = OUT / args.case
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    done = pd.read_csv(path) if path.exists() else pd.DataFrame()
    have = {(r["data"], str(r["labels_per_class"]), r["method"], r["seed"]) for r in done.to_dict("records")}
    methods = args.methods.split(";") if args.methods else list(CASES[args.case]["methods"])
    todo = [(args.case, d, m, s) for d in CASES[args.case]["draws"] for s in range(args.seeds) for m in methods
            if (d["data"], str(d["labels_per_class"] or "all"), m, s) not in have]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(run, *zip(*todo)) if todo else []:
            print(row, flush=True)
            _record(path, row)
    runs = pd.read_csv(path)
    (out / "summary.md").write_text(summarize(args.case, runs) + "\n", encoding="utf-8")
    print(summarize(args.case, runs))


if __name__ == "__main__":
    main()
