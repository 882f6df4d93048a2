"""What detection and segmentation cost on a CPU beside classification, on the same backbone and images.

    python benchmarks/dense_vision_cost.py [--rounds 3] [--image-size 128] [--threads 1]

Four arms on EfficientNet-Lite0 (packaged ImageNet weights) at one image size, on the same images (the
built-in ``emoji-scenes``, seed 0):

* ``detection``: ``finetune`` of the default detector (torchvision FPN + FCOS on Lite0's pyramid);
* ``segmentation``: ``finetune`` of the semantic head (Panoptic FPN's semantic branch on the same FPN);
* ``classification-finetune``: ``finetune`` of Lite0 with a linear head, each scene labelled with the
  class of its largest emoji;
* ``classification-probe``: ``linear-probe`` on the same labels (features extracted once, no feature
  cache: a fresh empty cache folder per run, so the extraction is timed).

Each arm trains in a process of its own (so the peak memory is its own) and predicts in another one,
which loads the trained model as a server would; the arms are interleaved: round ``r`` runs them in an
order rotated by ``r``, so a load that comes and goes on a shared machine falls on every arm alike. Per
run: training time per image (the fit's wall time over epochs x images; the probe: its fit over the
images, each seen once), inference time per image (``predict_outputs`` at batch 16 after one warm-up
batch: preprocessing, the forward pass and the task's postprocessing, NMS included), and resident
memory: with data and model loaded, its peak (VmHWM) while training, and the predicting process's
peak. The summary gives the median over rounds.

Writes ``benchmarks/results/dense_vision_cost/{runs.jsonl,summary.md,summary.json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path(__file__).parent / "results" / "dense_vision_cost"
BACKBONE = "efficientnet-lite:0"
#: arm -> (task, strategy, options, lr, head lr); the fine-tuning recipe of benchmarks/dense_vision.py
ARMS = {
    "detection": ("detection", "finetune", {}, 2e-4, 1e-3),
    "segmentation": ("segmentation", "finetune", {}, 2e-4, 1e-3),
    "classification-finetune": ("classification", "finetune", {}, 2e-4, 1e-3),
    "classification-probe": ("classification", "linear-probe", {}, None, None),
}


def _memory(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process, MiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set size (Linux >= 4.0)
        f.write("5")


def _classification(scenes):
    """The same scenes as single-label classification: each labelled with its largest emoji's class."""
    import numpy as np

    from transferkit.data.dataset import TaskData

    labels = []
    for t in scenes.targets:
        area = (t["boxes"][:, 2] - t["boxes"][:, 0]) * (t["boxes"][:, 3] - t["boxes"][:, 1])
        labels.append(int(t["labels"][int(np.argmax(area))]))
    return TaskData(scenes.items, np.asarray(labels, dtype=np.int64), "image", task="classification",
                    label_names=scenes.label_names, name=scenes.name.replace("emoji-scenes", "emoji-largest"),
                    source=scenes.source)


def _data(arm: str, args):
    from transferkit.data import load_dataset

    task = ARMS[arm][0]
    scenes = load_dataset("emoji-scenes", n_train=args.n, n_test=args.n_test, size=args.image_size,
                          task="segmentation" if task == "segmentation" else "detection", seed=0)
    return tuple(_classification(s) for s in scenes) if task == "classification" else scenes


def train_worker(arm: str, args) -> dict:
    """Train ``arm`` in this process and pickle the model to ``args.model_file``: time and memory."""
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    task, strategy_name, options, lr, head_lr = ARMS[arm]
    train, _ = _data(arm, args)
    torch.manual_seed(0)
    backbone = load_backbone(BACKBONE, image_size=args.image_size)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, head_lr=head_lr, seed=0,
                         progress=False, cpu=True)
    ready = _memory("VmRSS")
    _reset_peak()
    began = time.perf_counter()
    model, _ = make_strategy(strategy_name, options).fit(backbone, train, None, Trainer(config))
    seconds = time.perf_counter() - began
    peak = _memory("VmHWM")
    torch.save(model, args.model_file)
    seen = len(train) * (1 if strategy_name == "linear-probe" else args.epochs)
    return {"arm": arm, "task": task, "strategy": strategy_name, "train_images": len(train),
            "epochs": 1 if strategy_name == "linear-probe" else args.epochs, "images_trained": seen,
            "train_seconds": round(seconds, 2), "train_ms_per_image": round(1000 * seconds / seen, 1),
            "rss_ready_mib": round(ready), "peak_rss_train_mib": round(peak)}


def predict_worker(arm: str, args) -> dict:
    """Load the trained model in a fresh process and predict: time per image and the process's peak memory."""
    import torch

    from transferkit.strategies.base import predict_outputs

    _, test = _data(arm, args)
    model = torch.load(args.model_file, weights_only=False)  # our own file, written by train_worker just now
    ready = _memory("VmRSS")
    predict_outputs(model, test.subset(range(args.predict_batch)), batch_size=args.predict_batch)  # warm-up
    began = time.perf_counter()
    predict_outputs(model, test, batch_size=args.predict_batch)
    seconds = time.perf_counter() - began
    return {"predict_images": len(test), "predict_seconds": round(seconds, 3),
            "predict_ms_per_image": round(1000 * seconds / len(test), 2), "rss_loaded_mib": round(ready),
            "peak_rss_predict_mib": round(_memory("VmHWM"))}


def _run_worker(phase: str, arm: str, passed: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", arm, "--phase", phase, *passed], env=env,
                          capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{arm} ({phase}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every arm once per round)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n", type=int, default=64, help="training images")
    parser.add_argument("--n-test", type=int, default=64, help="images predicted (timed)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the loop arms")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--predict-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="train", choices=["train", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--model-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary.md/json from runs.jsonl")
    args = parser.parse_args(argv)
    args.arms = [a for a in args.arms.split(",") if a]
    if not set(args.arms) <= set(ARMS):
        parser.error(f"--arms {','.join(args.arms)}: choose among {', '.join(ARMS)}")
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = (train_worker if args.phase == "train" else predict_worker)(args.worker, args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / "runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    if args.summary_only:
        return write_summary(runs, args)
    done = {(r["round"], r["arm"]) for r in runs}
    passed = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("image_size", "n", "n_test", "epochs",
                                                                         "batch_size", "predict_batch", "threads")]
    for r in range(args.rounds):
        order = args.arms[r % len(args.arms):] + args.arms[:r % len(args.arms)]
        for arm in order:
            if (r, arm) in done:
                continue
            with tempfile.TemporaryDirectory() as tmp:  # a cold, private feature cache: the probe extracts
                env = {**os.environ, "TRANSFERKIT_CACHE": tmp, "OMP_NUM_THREADS": str(args.threads)}
                load = os.getloadavg()[0]
                model_file = ["--model-file", str(Path(tmp) / "model.pt")]
                result = {**_run_worker("train", arm, passed + model_file, env),
                          **_run_worker("predict", arm, passed + model_file, env)}
            row = {"round": r, **result, "load_before": round(load, 1),
                   "settings": {k: getattr(args, k) for k in ("image_size", "n", "n_test", "epochs", "batch_size",
                                                             "predict_batch", "threads")}}
            runs.append(row)
            with open(runs_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"round {r} {arm}: train {row['train_ms_per_image']} ms/image, predict "
                  f"{row['predict_ms_per_image']} ms/image, peak {row['peak_rss_train_mib']} MiB", flush=True)
    write_summary(runs, args)


def write_summary(runs: list[dict], args) -> None:
    import numpy as np

    if not runs:
        return
    s = runs[-1]["settings"]
    cols = ("train_ms_per_image", "predict_ms_per_image", "rss_ready_mib", "peak_rss_train_mib",
            "peak_rss_predict_mib")  # rss_ready: before training, data and model loaded
    summary = {"backbone": BACKBONE, "settings": s, "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "arms": {a: {"task": t, "strategy": st, "lr": lr, "head_lr": hl}
                                                for a, (t, st, _, lr, hl) in ARMS.items()}, "median": {}}
    table = ["| arm | task | strategy | runs | train ms/image | predict ms/image | RSS ready (MiB) | "
             "peak RSS training (MiB) | peak RSS of a predicting process (MiB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        med = {c: float(np.median([r[c] for r in rs])) for c in cols}
        spread = {c: (min(r[c] for r in rs), max(r[c] for r in rs)) for c in cols[:2]}
        summary["median"][arm] = {**{c: round(v, 1) for c, v in med.items()}, "runs": len(rs),
                                  "range": {c: list(v) for c, v in spread.items()}}
        table.append(f"| {arm} | {rs[0]['task']} | {rs[0]['strategy']} | {len(rs)} | "
                     f"{med['train_ms_per_image']:.0f} ({spread['train_ms_per_image'][0]:.0f}-"
                     f"{spread['train_ms_per_image'][1]:.0f}) | {med['predict_ms_per_image']:.1f} "
                     f"({spread['predict_ms_per_image'][0]:.1f}-{spread['predict_ms_per_image'][1]:.1f}) | "
                     f"{med['rss_ready_mib']:.0f} | {med['peak_rss_train_mib']:.0f} | {med['peak_rss_predict_mib']:.0f} |")
    ratios = ["| arm | rounds | training time | prediction time | peak RSS training |", "| --- | --- | --- | --- | --- |"]
    base = {r["round"]: r for r in runs if r["arm"] == "classification-finetune"}
    for arm in ARMS:  # paired by round: the two runs of a round saw about the same load
        pairs = [(r, base[r["round"]]) for r in runs if r["arm"] == arm and r["round"] in base]
        if not pairs or arm == "classification-finetune":
            continue
        cell = {}
        for col, key in (("train_ms_per_image", "train"), ("predict_ms_per_image", "predict"),
                         ("peak_rss_train_mib", "peak_rss_train")):
            values = [a[col] / b[col] for a, b in pairs]
            cell[key] = {"median": round(float(np.median(values)), 2), "min": round(min(values), 2),
                         "max": round(max(values), 2)}
        summary.setdefault("ratio_to_classification_finetune", {})[arm] = {**cell, "rounds": len(pairs)}
        ratios.append(f"| {arm} | {len(pairs)} | " + " | ".join(
            f"{c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f})" for c in cell.values()) + " |")
    loads = [r["load_before"] for r in runs]
    text = [
        "# Dense vision: time and memory of detection and segmentation beside classification", "",
        f"`python benchmarks/dense_vision_cost.py --rounds {max(r['round'] for r in runs) + 1} --image-size "
        f"{s['image_size']} --n {s['n']} --n-test {s['n_test']} --epochs {s['epochs']} --threads {s['threads']}`", "",
        f"`{BACKBONE}` (packaged ImageNet weights) at {s['image_size']} px on the same {s['n']} training and "
        f"{s['n_test']} prediction images of `emoji-scenes` (seed 0); classification labels each scene with its "
        "largest emoji's class. Detection: FPN (64 channels) + FCOS (the default detector); segmentation: the "
        "same FPN + Panoptic FPN's semantic branch; both `finetune` (backbone lr 2e-4, head 1e-3, BatchNorm "
        "statistics frozen), as is classification's fine-tuning (a linear head); the probe is `linear-probe` "
        f"(features extracted once with a cold cache, then logistic regression). Loop arms: {s['epochs']} epoch(s) "
        f"at batch {s['batch_size']}, AdamW, augmentation on (detection and segmentation: flips, zooms and "
        "shifts that move the boxes and masks; classification: none); train ms/image is the whole fit's wall "
        "time over the images it trained on (epochs x images; the probe: each image once), so it includes "
        f"preprocessing and one-off set-up. Predict: `predict_outputs` at batch {s['predict_batch']} after a "
        "warm-up batch, postprocessing included (FCOS's score threshold and NMS, the mask upsampled to the "
        "image and its argmax, class probabilities).", "",
        f"Every arm trained in a process of its own with {s['threads']} thread(s) and predicted in another that "
        "loaded the trained model, the arms interleaved (each round rotates the order); medians over runs, the "
        f"range of the runs in brackets. The machine: {os.cpu_count()} CPU cores shared with other workers (load "
        f"average {min(loads):.1f} to {max(loads):.1f} when runs started), so the times are this shared CPU's, "
        "comparable between the arms of this table, not absolute. Memory is the process's resident set (VmRSS, "
        "peak VmHWM): Python with torch and transferkit imported, the images and the model, not the model alone; "
        "`RSS ready` is the training process before training.", "",
        *table, "",
        "#### Against classification fine-tuning, paired by round (ratio per image; median and range over rounds)",
        "", *ratios, "",
    ]
    (args.out / "summary.md").write_text("\n".join(text) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
