"""Parameter-efficient fine-tuning side by side: accuracy, trainable parameters, bundle size, memory, time.

    python benchmarks/peft.py [--seeds 3] [--only text|image|trainer] [--quick]

Every run is its own Python process (so its peak resident memory is its own)
and trains on the same seeded draw as the other methods of its row:

* MiniLM (``sentence:all-MiniLM-L6-v2``, mean pooling as it was trained) on
  ``debian-packages`` (the 14 topical sections, 32 labels per class, the fixed
  60 test items per section) and on ``drug-reviews`` (3 imbalanced classes, all
  600 training reviews; balanced accuracy and macro-F1 reported): full
  fine-tuning and each parameter-efficient method (``lora-ckpt``: LoRA with
  gradient checkpointing of the frozen encoder, the usual lever on memory).
* The same LoRA configuration (rank, alpha, target modules, epochs, learning
  rate, batch size, schedule, weight decay) trained with ``peft`` +
  ``transformers.Trainer`` on the same data and model, with the same mean
  pooling and linear head: accuracy and wall time, as a ratio.
* EfficientNet-Lite0 (packaged ImageNet weights) on Fashion-MNIST, 10 and 100
  labels per class at 32 px, 1,000 fixed test images: full fine-tuning, LoRA,
  IA3, conv adapters, and the knowledge-preserving regularizers on full
  fine-tuning, with the ImageNet head's agreement before and after adaptation
  (``source_agreement``): the trade-off in one table.

No validation split: every method trains for the same epochs on the same
items. Memory: ``peak MB`` is the process's peak resident set at the end of
training (read before predicting and saving); ``train MB`` is that peak minus
the resident set just before the model was loaded (what loading and training
needed). Time per epoch is the training time (after loading) divided by the
epochs; ``wall`` (load, train, predict the test set) is what the LoRA run is
compared on against ``peft`` + ``transformers.Trainer``, whose timer also
starts before it loads the model.

Writes ``benchmarks/results/peft/{runs.csv,summary.md,accuracy_vs_params.png}``;
runs already in ``runs.csv`` are kept (delete it to start over).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `peft` package: keep its folder off the import path so `import peft` finds PEFT.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = Path(__file__).parent / "results" / "peft"
MINILM = "sentence:all-MiniLM-L6-v2"
LORA = {"rank": 8, "alpha": 16.0}  # the shared LoRA configuration (targets: every linear layer of the encoder)

TEXT = [
    {"data": "debian-packages", "labels_per_class": 32, "max_length": 32, "epochs": 4, "batch_size": 32},
    {"data": "drug-reviews", "labels_per_class": None, "max_length": 64, "epochs": 3, "batch_size": 32},
]
TEXT_METHODS = {"debian-packages": ["finetune", "lora", "lora-ckpt", "ia3", "adapter", "prompt-tuning", "prefix-tuning"],
                "drug-reviews": ["finetune", "lora"]}
IMAGE = [{"data": "fashion-mnist", "labels_per_class": n, "image_size": 32, "epochs": epochs, "batch_size": 32,
          "max_test": 1000} for n, epochs in ((10, 30), (100, 6))]  # 120 and 192 optimizer steps
# The trade-off table: at 32 px the ImageNet head's predictions are close to noise, so agreement needs 64 px.
PRESERVE = [{"data": "fashion-mnist", "labels_per_class": 10, "image_size": 64, "epochs": 30, "batch_size": 32,
             "max_test": 500}]
PRESERVE_METHODS = ["finetune", "lora", "finetune+l2sp", "finetune+ewc", "finetune+lwf", "finetune+bss"]
IMAGE_METHODS = ["finetune", "lora", "ia3", "adapter", "finetune+l2sp", "finetune+ewc", "finetune+lwf", "finetune+bss"]


def method_spec(method: str) -> tuple[str, dict]:
    """``finetune+l2sp`` -> finetune with that regularizer; ``lora-ckpt`` -> LoRA with gradient checkpointing."""
    name, _, regularizer = method.partition("+")
    strategy = "lora" if name == "lora-ckpt" else name
    options = dict(LORA) if strategy == "lora" else {}
    if name == "lora-ckpt":
        options["gradient_checkpointing"] = True
    if regularizer:
        options["regularizer"] = regularizer
    return strategy, options


def _preload() -> None:
    """Import what either runner uses, so the memory baseline of both holds the same libraries."""
    import peft  # noqa: F401
    import sentence_transformers  # noqa: F401
    import transformers.trainer  # noqa: F401

    import transferkit.api  # noqa: F401


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one run, in its own process ------------------------------------------------------------

def run_transferkit(job: dict) -> dict:
    """One transferkit run: the library's own pieces in the order ``fit`` runs them, with the peak
    resident memory read right after training (before predicting and writing the bundle)."""
    import torch

    import transferkit as tk
    from transferkit.backbones import load_backbone
    from transferkit.tasks import compute_metrics
    from transferkit.export.bundle import save_bundle
    from transferkit.strategies import make_strategy
    from transferkit.strategies.regularizers import source_agreement, source_predictions
    from transferkit.training import TrainConfig, Trainer

    torch.set_num_threads(job["threads"])
    name, options = method_spec(job["method"])
    train, _, test = tk.prepare_data(job["data"], labels_per_class=job.get("labels_per_class"), val_fraction=0.0,
                                     seed=job["seed"], max_test=job.get("max_test"))
    base = _rss_mb()
    start = time.perf_counter()
    opts = {k: job[k] for k in ("image_size", "max_length") if job.get(k)}
    backbone = load_backbone(job["backbone"], **opts)
    before = source_predictions(backbone, test)
    load_seconds = time.perf_counter() - start
    strategy = make_strategy(name, options)
    config = TrainConfig(epochs=job["epochs"], batch_size=job["batch_size"], seed=job["seed"], progress=False)
    model, _ = strategy.fit(backbone, train, None, Trainer(config))
    train_seconds = time.perf_counter() - start - load_seconds
    peak = _peak_mb()
    m = compute_metrics(train.task, test.targets, strategy.predict(model, test), train.label_names)
    wall = time.perf_counter() - start
    agreement = source_agreement(before, source_predictions(model.backbone, test)) if before is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(model, Path(tmp) / "bundle", {"strategy": {"name": name}})
        weights = (Path(tmp) / "bundle" / "model.safetensors").stat().st_size
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "source_agreement": agreement,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()), "bundle_mb": weights / 1e6,
            "adapter_only": bool((model.adapter or {}).get("adapter_only")),
            "train_seconds": train_seconds, "wall_seconds": wall, "base_mb": base, "peak_mb": peak}


def run_peft_trainer(job: dict) -> dict:
    """The same LoRA run with ``peft.get_peft_model`` + ``transformers.Trainer`` (mean pooling, L2 norm, linear head)."""
    import numpy as np
    import peft
    import torch
    from torch import nn
    from transformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments

    import transferkit as tk
    from transferkit.backbones.hf import packaged_minilm
    from transferkit.tasks import compute_metrics

    torch.set_num_threads(job["threads"])
    train, _, test = tk.prepare_data(job["data"], labels_per_class=job.get("labels_per_class"), val_fraction=0.0,
                                     seed=job["seed"], max_test=job.get("max_test"))
    base = _rss_mb()
    start = time.perf_counter()
    torch.manual_seed(job["seed"])
    path = packaged_minilm()
    tok = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    encoder = peft.get_peft_model(encoder, peft.LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                                                           target_modules=targets, lora_dropout=0.0))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, nn.Linear(encoder.config.hidden_size, len(train.label_names))

        def forward(self, input_ids, attention_mask, labels=None):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            logits = self.head(nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1))
            loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}

    model = Model()
    loaded = time.perf_counter()

    class Texts(torch.utils.data.Dataset):
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return {"text": self.data.items[i], "labels": int(self.data.targets[i])}

    def collate(rows):
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=job["max_length"],
                  return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r["labels"] for r in rows])}

    steps = job["epochs"] * -(-len(train) // job["batch_size"])
    warmup = int(0.1 * steps)  # transferkit's default: 10% linear warm-up, then cosine to 0
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=job["epochs"], per_device_train_batch_size=job["batch_size"],
                                 learning_rate=1e-3, weight_decay=0.01, warmup_steps=warmup, lr_scheduler_type="cosine",
                                 max_grad_norm=1.0, seed=job["seed"], report_to=[], save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
                                 remove_unused_columns=False)
        Trainer(model=model, args=args, train_dataset=Texts(train), data_collator=collate).train()
    train_seconds = time.perf_counter() - loaded
    peak = _peak_mb()
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(test), 64):
            batch = collate([{"text": t, "labels": 0} for t in test.items[i:i + 64]])
            probs.append(model(batch["input_ids"], batch["attention_mask"])["logits"].softmax(-1).numpy())
    wall = time.perf_counter() - start
    m = compute_metrics("classification", test.targets, np.concatenate(probs), test.label_names)
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()), "bundle_mb": float("nan"),
            "source_agreement": None, "adapter_only": False, "train_seconds": train_seconds,
            "wall_seconds": wall, "base_mb": base, "peak_mb": peak}


# -- the driver ---------------------------------------------------------------------------------

def jobs(seeds: int, only: str | None, quick: bool) -> list[dict]:
    out = []
    text = [dict(c) for c in TEXT]
    image = [dict(c) for c in IMAGE]
    if quick:
        text = [{**text[0], "labels_per_class": 4, "epochs": 1}]
        image = [{**image[0], "labels_per_class": 4, "epochs": 1, "max_test": 100}]
    for seed in range(seeds):
        if only in (None, "text", "trainer"):
            for cfg in text:
                methods = [] if only == "trainer" else TEXT_METHODS[cfg["data"]]
                for method in methods[: 2 if quick else None]:
                    out.append({"runner": "transferkit", "backbone": MINILM, "method": method, "seed": seed, **cfg})
                out.append({"runner": "peft+Trainer", "backbone": MINILM, "method": "lora", "seed": seed, **cfg})
        if only in (None, "preserve") and not quick:
            for cfg in PRESERVE:
                for method in PRESERVE_METHODS:
                    out.append({"runner": "transferkit", "backbone": "efficientnet-lite:0", "method": method,
                                "seed": seed, **cfg})
        if only in (None, "image"):
            for cfg in image:
                for method in IMAGE_METHODS[: 2 if quick else None]:
                    out.append({"runner": "transferkit", "backbone": "efficientnet-lite:0", "method": method,
                                "seed": seed, **cfg})
    return out


def _key(job: dict) -> str:
    keys = ("runner", "backbone", "data", "labels_per_class", "image_size", "method", "seed")
    values = [job.get(k) for k in keys]
    return "|".join(str(int(v) if isinstance(v, float) and v.is_integer() else v) for v in values)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", choices=["text", "image", "trainer", "preserve"])
    p.add_argument("--quick", action="store_true", help="a few-minute smoke run (written under --out/quick)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # the child process
        job = json.loads(args.one)
        _preload()
        fn = run_peft_trainer if job["runner"] == "peft+Trainer" else run_transferkit
        print("RESULT " + json.dumps(fn(job)), flush=True)
        return
    import pandas as pd

    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "runs.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    if len(done):  # keys from the columns, so a change of the key's fields keeps finished runs
        done["key"] = [_key({k: (None if v != v else v) for k, v in r.items()}) for r in done.to_dict("records")]
    have = set(done["key"]) if len(done) else set()
    rows = done.to_dict("records") if len(done) else []
    todo = [j for j in jobs(args.seeds, args.only, args.quick) if _key(j) not in have]
    start = time.perf_counter()
    for i, job in enumerate(todo, 1):
        job["threads"] = args.threads
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"[{i}/{len(todo)}] FAILED {_key(job)}\n{proc.stderr[-3000:]}", flush=True)
            continue
        row = {"key": _key(job), **job, **json.loads(line[7:])}
        # Re-read before writing: another stream (--only text / --only image) may share this file.
        rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
        rows = [r for r in rows if r["key"] != row["key"]] + [row]
        pd.DataFrame(rows).to_csv(csv, index=False)
        print(f"[{i}/{len(todo)}] {row['runner']} {row['data']} {row['labels_per_class']} {row['method']} "
              f"seed={row['seed']}: acc={row['accuracy']:.3f} peak={row['peak_mb']:.0f}MB "
              f"wall={row['wall_seconds']:.0f}s ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    runs = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    if len(runs):
        write_summary(runs, out, args)


def _fmt_ci(mean, low, high, scale=100.0) -> str:
    if mean != mean:
        return "–"
    if low != low:
        return f"{scale * mean:.1f}"
    return f"{scale * mean:.1f} ± {scale * (high - low) / 2:.1f}"


def write_summary(runs, out: Path, args) -> None:
    import pandas as pd

    from transferkit.evaluation.stats import summarize

    runs = runs.copy()
    runs["labels_per_class"] = runs["labels_per_class"].fillna(-1).astype(int)
    runs["image_size"] = runs["image_size"].fillna(0).astype(int) if "image_size" in runs else 0
    runs["train_mb"] = runs["peak_mb"] - runs["base_mb"]
    runs["sec_per_epoch"] = runs["train_seconds"] / runs["epochs"]
    by = ["data", "labels_per_class", "image_size", "runner", "method"]
    rows = []
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "source_agreement"):
        if metric not in runs or runs[metric].isna().all():
            continue
        s = summarize(runs, metric, by)
        for _, r in s.iterrows():
            rows.append({**{k: r[k] for k in by}, metric: _fmt_ci(r["mean"], r["ci_low"], r["ci_high"]),
                         f"{metric}_mean": r["mean"]})
    table = pd.DataFrame(rows).groupby(by, sort=False).first().reset_index()
    means = runs.groupby(by, sort=False)[["trainable", "total", "bundle_mb", "peak_mb", "train_mb", "sec_per_epoch",
                                           "wall_seconds"]].mean().reset_index()
    table = table.merge(means, on=by)
    lines = ["# Parameter-efficient fine-tuning, side by side", "",
             f"`python benchmarks/peft.py --seeds {args.seeds}{' --quick' if args.quick else ''}`, "
             f"{args.threads} threads per run on a {os.cpu_count()}-core CPU machine, one run at a time. "
             "Metrics in % (mean ± half-width of the 95% Student-t interval over seeds). `train MB` is the run's "
             "peak resident memory minus the memory before the model was loaded; ratios are to full fine-tuning "
             "of the same row group.", ""]
    for (data, lpc, size), group in table.groupby(["data", "labels_per_class", "image_size"], sort=False):
        full = group[(group["method"] == "finetune") & (group["runner"] == "transferkit")]
        ref = full.iloc[0] if len(full) else None
        cols = ["accuracy"] + [c for c in ("balanced_accuracy", "macro_f1", "source_agreement")
                               if c in group and group[c].notna().any()]
        lpc_text = "all labels" if lpc < 0 else f"{lpc} labels per class"
        lines += [f"## {data}, {lpc_text}{f', {size} px' if size else ''}", "",
                  "| runner | method | " + " | ".join(cols) + " | Δ acc vs full (pts) | trainable params | bundle MB "
                  "| train MB (× full) | peak MB | s / epoch |",
                  "| --- | --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for _, r in group.iterrows():
            delta = f"{100 * (r['accuracy_mean'] - ref['accuracy_mean']):+.1f}" if ref is not None else "–"
            mem_ratio = f" ({r['train_mb'] / ref['train_mb']:.2f}×)" if ref is not None and ref["train_mb"] > 0 else ""
            share = f"{r['trainable']:,.0f} ({100 * r['trainable'] / r['total']:.2f}%)"
            bundle = f"{r['bundle_mb']:.2f}" if r["bundle_mb"] == r["bundle_mb"] else "–"
            lines.append(f"| {r['runner']} | {r['method']} | " + " | ".join(str(r.get(c, '–')) for c in cols)
                         + f" | {delta} | {share} | {bundle} | {r['train_mb']:.0f}{mem_ratio} | {r['peak_mb']:.0f} "
                         f"| {r['sec_per_epoch']:.1f} |")
        trainer = group[group["runner"] == "peft+Trainer"]
        ours = group[(group["runner"] == "transferkit") & (group["method"] == "lora")]
        if len(trainer) and len(ours):
            pair = runs[(runs["data"] == data) & (runs["labels_per_class"] == lpc) & (runs["image_size"] == size)
                        & (runs["method"] == "lora")]
            t = pair.pivot_table(index="seed", columns="runner", values="wall_seconds").dropna()
            ratio = t["transferkit"] / t["peft+Trainer"]
            lines += ["", f"LoRA wall time (load, train, predict), transferkit / peft + Trainer, per seed: "
                      f"{', '.join(f'{v:.2f}' for v in ratio)} (mean {ratio.mean():.2f}×); accuracy "
                      f"{ours.iloc[0]['accuracy']} vs {trainer.iloc[0]['accuracy']}."]
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    _plot(runs, table, out)


def _plot(runs, table, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table.groupby(["data", "labels_per_class", "image_size"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, ((data, lpc, size), g) in zip(axes[0], groups):
        for _, r in g.iterrows():
            sel = runs[(runs["data"] == data) & (runs["labels_per_class"] == lpc) & (runs["image_size"] == size)
                       & (runs["method"] == r["method"]) & (runs["runner"] == r["runner"])]
            y = 100 * sel["accuracy"]
            ax.errorbar(r["trainable"], y.mean(), yerr=y.std(ddof=1) if len(y) > 1 else 0, fmt="o", capsize=3)
            label = r["method"] if r["runner"] == "transferkit" else "peft+Trainer"
            ax.annotate(label, (r["trainable"], y.mean()), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{data}, {'all' if lpc < 0 else lpc} / class{f', {size} px' if size else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_params.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
