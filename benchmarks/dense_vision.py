"""Detection (and segmentation) transfer on CPU: ImageNet EfficientNet-Lite0 frozen, fine-tuned, LoRA, or from scratch.

    python benchmarks/dense_vision.py [--sizes 10,50] [--seeds 3] [--arms frozen,finetune,lora,scratch]
                                      [--part detection|segmentation|both|detectors|instance-segmentation]

Data: the built-in ``emoji-scenes`` (36 emoji, 4 per Unicode group, pasted on crops of the photos inside
scikit-learn and scikit-image; 9 classes; exact boxes and masks), built once with seed 0: a pool of
training scenes and a fixed test set. Per seed, ``n`` training scenes are drawn from the pool (seeded),
and the arms train on that same draw with the same detector (torchvision FPN + FCOS head on
Lite0's pyramid, ``fpn_channels=64``, two conv layers per tower):

* ``frozen``: ``finetune -o train_last=0``: the ImageNet backbone frozen (BatchNorm statistics too),
  only the FPN and head train;
* ``finetune``: every weight trains, BatchNorm statistics frozen (the detection default);
* ``lora``: ``lora`` (rank 8, alpha 16) on every plain convolution of the backbone, the backbone itself frozen;
  the adapters, FPN and head train;
* ``scratch``: ``scratch`` (variant ``same-arch``): the same detector with every weight random,
  BatchNorm statistics trained and re-estimated at the end, twice the optimizer steps.

Every arm sees the same augmentation (flip, zoom, shift with the boxes) and batch size. With the default
``--recipe fixed``, steps are fixed per arm, not per epoch, so 10 and 50 images get the same compute, at
``--batch-size`` and the learning rates of ``ARMS``; ``--recipe defaults`` trains each arm as ``transferkit
fit`` does without options (the task's batch size: 8 for the dense tasks, which ran at 32 before they had
their own; each strategy's learning rates; the task's ``min_train_examples`` for the transfer arms and four
times that for ``scratch``). mAP@.5 (primary) and mAP@[.5:.95]
on the test set, mean and 95% Student-t interval over seeds, and the paired (same seed, same draw)
differences transfer minus scratch.

``--part detectors`` compares the detectors instead, at one training-set size (``--detector-size``, 50):
``fcos``, ``retinanet`` and ``faster-rcnn`` (the strategies' ``detector`` option), each fine-tuned (the
``finetune`` arm above) and from scratch (the ``scratch`` arm, the same detector), on the same draws, into
``benchmarks/results/dense_vision/detectors/``.

``--part instance-segmentation`` runs the ``instance-segmentation`` task (Mask R-CNN, the task's only head) at
``--inst-sizes`` (50) with the ``finetune`` and ``scratch`` arms (``--arms`` filters), into
``benchmarks/results/dense_vision/instance/``; mask mAP@.5 is its primary metric.

The colour -> line-art shift and the time and memory beside classification are separate scripts:
``benchmarks/dense_vision_shift.py`` and ``benchmarks/dense_vision_cost.py``.

Writes ``benchmarks/results/dense_vision/{runs.jsonl,summary.md,summary.json}``; runs already in
``runs.jsonl`` are kept (delete it to start over), so the script resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `python benchmarks/x.py` puts benchmarks/ first on sys.path, where benchmarks/peft.py would shadow
# the peft package that the lora arm imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

OUT = Path(__file__).parent / "results" / "dense_vision"
BACKBONE = "efficientnet-lite:0"
ARMS = {  # arm -> (strategy, options, steps factor, lr, head lr)
    "frozen": ("finetune", {"train_last": 0}, 1, 1e-3, 1e-3),
    "finetune": ("finetune", {}, 1, 2e-4, 1e-3),
    "lora": ("lora", {}, 1, 1e-3, 1e-3),
    "scratch": ("scratch", {"variant": "same-arch"}, 2, 1e-3, 1e-3),
}
DETECTORS = ("fcos", "retinanet", "faster-rcnn")
#: ``--part detectors``: "<detector>/<arm>" -> the arm's settings with the detector option
DETECTOR_ARMS = {f"{d}/{arm}": (ARMS[arm][0], {**ARMS[arm][1], "detector": d}, *ARMS[arm][2:])
                 for d in DETECTORS for arm in ("finetune", "scratch")}
#: ``--part instance-segmentation``: Mask R-CNN fine-tuned against the same from scratch
INST_ARMS = ("finetune", "scratch")
PRIMARY = {"detection": "map_50", "segmentation": "mean_iou", "instance-segmentation": "mask_map_50"}
SECONDARY = {"detection": "map", "segmentation": "pixel_accuracy", "instance-segmentation": "box_map_50"}
#: paired differences shown, where both arms ran
PAIRS = (("finetune", "scratch"), ("frozen", "scratch"), ("lora", "scratch"), ("finetune", "frozen"),
         ("lora", "finetune"))


def _data(task: str, args):
    from transferkit.data import load_dataset

    return load_dataset("emoji-scenes", n_train=args.pool, n_test=args.n_test, size=args.image_size, task=task, seed=0)


def run_one(job: dict, pool, test, args) -> dict:
    import numpy as np
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.strategies.base import predict_outputs
    from transferkit.training import TrainConfig, Trainer

    strategy, options, factor, lr, head_lr = {**ARMS, **DETECTOR_ARMS}[job["arm"]]
    draw = np.sort(np.random.default_rng(job["seed"]).permutation(len(pool))[:job["n"]])
    train = pool.subset(draw, name=f"{pool.name}[{job['n']}]")
    torch.manual_seed(job["seed"])
    backbone = load_backbone(BACKBONE, image_size=args.image_size)
    if args.recipe == "defaults":  # what `transferkit fit` does when the user sets nothing: each strategy's defaults
        config = TrainConfig(seed=job["seed"], batch_size=args.batch_size, progress=False, cpu=True)
    else:
        per_epoch = max(1, math.ceil(job["n"] / args.batch_size))
        epochs = max(1, round(args.steps * factor / per_epoch))
        config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=lr, head_lr=head_lr, seed=job["seed"],
                             progress=False, cpu=True)
    batch_size = config.batch_for(train)  # the task's when the recipe leaves it to the defaults
    per_epoch = max(1, math.ceil(job["n"] / batch_size))
    start = time.perf_counter()
    model, history = make_strategy(strategy, options).fit(backbone, train, None, Trainer(config))
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    outputs = predict_outputs(model, test, batch_size=16)
    predict_seconds = time.perf_counter() - start
    metrics = test.task_spec.metrics(test.targets, outputs, test.label_names)
    epochs = len(history)  # no validation data: every epoch runs
    return {**job, "strategy": strategy, "options": options, "epochs": epochs, "steps": epochs * per_epoch,
            "batch_size": batch_size,
            "train_seconds": round(seconds, 1), "predict_seconds": round(predict_seconds, 2), "final_loss": round(float(history[-1]["train_loss"]), 4),
            **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("n", "objects")}}


def jobs(args) -> list[dict]:
    if args.part == "detectors":
        return [{"task": "detection", "n": args.detector_size, "seed": seed, "arm": arm}
                for seed in range(args.seeds) for arm in DETECTOR_ARMS if arm.split("/")[0] in args.detectors]
    parts = ["detection", "segmentation"] if args.part == "both" else [args.part]
    out = []
    for task in parts:
        sizes = {"detection": args.sizes, "segmentation": args.seg_sizes}.get(task, args.inst_sizes)
        arms = INST_ARMS if task == "instance-segmentation" else ARMS
        for seed in range(args.seeds):  # seeds outermost: every comparison fills in evenly if stopped
            if args.only_seeds and seed not in args.only_seeds:
                continue
            for n in sizes:
                for arm in arms:
                    if arm in args.arms:
                        out.append({"task": task, "n": n, "seed": seed, "arm": arm})
    return out


def _key(job: dict) -> str:
    return f"{job['task']}|{job['n']}|{job['seed']}|{job['arm']}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="detection", choices=["detection", "segmentation", "both", "detectors",
                                                                "instance-segmentation"])
    parser.add_argument("--arms", default=",".join(ARMS), help="which arms run (detection, segmentation, instance)")
    parser.add_argument("--inst-sizes", default="50", help="training scenes per run (instance-segmentation)")
    parser.add_argument("--sizes", default="10,50", help="training scenes per run (detection)")
    parser.add_argument("--seg-sizes", default="50", help="training scenes per run (segmentation)")
    parser.add_argument("--detector-size", type=int, default=50, help="training scenes per run (--part detectors)")
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="--part detectors: which detectors")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only-seeds", default="", help="run only these of the --seeds draws (e.g. 1,2): to split "
                                                             "one benchmark across processes, each into its own --out")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of the transfer arms (scratch: 2x)")
    parser.add_argument("--recipe", default="fixed", choices=["fixed", "defaults"],
                        help="fixed: --steps, --batch-size and the arms' learning rates; defaults: every arm with its "
                             "strategy's defaults, as `transferkit fit` without options (the task's batch "
                             "size and image budget)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="--recipe fixed: examples per step (default 8); --recipe defaults: only to override the "
                             "task's batch size (to measure the default against another)")
    parser.add_argument("--pool", type=int, default=200, help="training scenes drawn from")
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/dense_vision, "
                                                                 "its detectors/ subfolder for --part detectors)")
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary.md/json from runs.jsonl")
    parser.add_argument("--against", type=Path, default=None,
                        help="with --summary-only: also write against.md/json, every (task, scenes, arm) of this "
                             "folder's runs minus the same in that folder's runs.jsonl, paired by seed (the same "
                             "draws: e.g. the task's batch size against another)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    args.seg_sizes = [int(s) for s in str(args.seg_sizes).split(",")]
    args.inst_sizes = [int(s) for s in str(args.inst_sizes).split(",")]
    args.arms = [a for a in str(args.arms).split(",") if a]
    args.only_seeds = [int(s) for s in str(args.only_seeds).split(",") if s]
    if not set(args.arms) <= set(ARMS):
        parser.error(f"--arms {','.join(args.arms)}: choose among {', '.join(ARMS)}")
    if args.recipe == "fixed":
        args.batch_size = args.batch_size or 8
    args.detectors = [d for d in str(args.detectors).split(",") if d]
    if not set(args.detectors) <= set(DETECTORS):
        parser.error(f"--detectors {','.join(args.detectors)}: choose among {', '.join(DETECTORS)}")
    args.out = args.out or {"detectors": OUT / "detectors", "instance-segmentation": OUT / "instance"}.get(args.part, OUT)
    summarize = write_detector_summary if args.part == "detectors" else write_summary

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / "runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    done = {_key(r) for r in runs}
    if args.summary_only:
        if args.against is not None:
            write_against(runs, [json.loads(line) for line in (args.against / "runs.jsonl").read_text().splitlines()],
                          args)
        return summarize(runs, args)
    data = {}
    for job in jobs(args):
        if _key(job) in done:
            continue
        if job["task"] not in data:
            data[job["task"]] = _data(job["task"], args)
        pool, test = data[job["task"]]
        row = run_one(job, pool, test, args)
        row["load_1min"] = round(os.getloadavg()[0], 2)  # the machine is shared: the summary reports the range
        row["settings"] = {"image_size": args.image_size, "recipe": args.recipe,
                           "batch_size": row["batch_size"],
                           "base_steps": None if args.recipe == "defaults" else args.steps,
                           "pool": args.pool, "n_test": args.n_test, "threads": args.threads}
        runs.append(row)
        with open(runs_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{_key(job)}: {PRIMARY[job['task']]} {row[PRIMARY[job['task']]]:.3f} in {row['train_seconds']}s",
              flush=True)
        summarize(runs, args)
    summarize(runs, args)


def _missing(runs: list[dict]) -> str:
    """``" Not run: ..."``: the (task, scenes) rows of the summary where an arm that ran elsewhere has no run."""
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
    gaps = []
    for task, n in sorted({(r["task"], r["n"]) for r in runs}, key=lambda k: (k[0], k[1])):
        absent = [a for a in arms if not any(r["task"] == task and r["n"] == n and r["arm"] == a for r in runs)]
        if absent:
            gaps.append(f"{task} at {n} scenes: {', '.join(absent)}")
    return f" Not run (the CPU's time went elsewhere): {'; '.join(gaps)}." if gaps else ""


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages now (``None`` where the OS has none): each run's row records
    them as it ends, and the summary reports their range from the rows, never as fixed text."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_note(runs: list[dict]) -> str:
    """``", load average A to B (...)"``: the range of the 1-minute load averages the rows recorded, or ``""``
    when none recorded one (runs written before rows did)."""
    loads = [r["load_average"][0] for r in runs if r.get("load_average")]
    if not loads:
        return ""
    return (f", load average {min(loads):.1f} to {max(loads):.1f} (1 minute, recorded as each of {len(loads)} of "
            f"{len(runs)} runs ended)")


def _ci(values) -> tuple[float, float, float]:
    from transferkit.evaluation.stats import mean_ci

    return mean_ci(values)


def _fmt(mean, low, high) -> str:
    if math.isnan(low):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * (high - low) / 2:.1f}"


def _fmt_diff(mean, low, high) -> str:
    if math.isnan(low):
        return f"{100 * mean:+.1f} (one seed)"
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def write_summary(runs: list[dict], args) -> None:
    import numpy as np

    from transferkit.evaluation.stats import paired_difference

    tables, summary = [], {"backbone": BACKBONE, "arms": {a: {"strategy": s, "options": o, "steps_factor": f,
                                                                "lr": lr, "head_lr": hl}
                                                            for a, (s, o, f, lr, hl) in ARMS.items()},
                           "settings": runs[-1].get("settings") if runs else {}, "machine": platform.processor()
                           or platform.machine(), "results": []}
    for task in PRIMARY:
        rows = [r for r in runs if r["task"] == task]
        if not rows:
            continue
        metric, second = PRIMARY[task], SECONDARY[task]
        lines = [f"### {task}: {metric} (and {second}) on {rows[0]['settings']['n_test']} test scenes, "
                 f"mean ± 95% CI half-width over seeds (points)", "",
                 "| training scenes | arm | seeds | " + metric + " | " + second + " | steps | train s/run |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        ran = {r["arm"] for r in rows}
        pairs = [(a, b) for a, b in PAIRS if a in ran and b in ran]
        diffs = [f"#### {task}: transfer minus scratch, paired by seed ({metric}, points, 95% CI)", "",
                 "| training scenes | " + " | ".join(f"{a} - {b}" for a, b in pairs) + " |",
                 "| --- |" + " --- |" * len(pairs)]
        for n in sorted({r["n"] for r in rows}):
            by_arm = {a: sorted((r for r in rows if r["n"] == n and r["arm"] == a), key=lambda r: r["seed"])
                      for a in ARMS}
            for arm, rs in by_arm.items():
                if not rs:
                    continue
                m, s = [r[metric] for r in rs], [r[second] for r in rs]
                lines.append(f"| {n} | {arm} | {len(rs)} | {_fmt(*_ci(m))} | {_fmt(*_ci(s))} | {rs[0]['steps']} | "
                             f"{np.mean([r['train_seconds'] for r in rs]):.0f} |")
                summary["results"].append({"task": task, "n": n, "arm": arm, "seeds": len(rs), "metric": metric,
                                           "mean": float(np.mean(m)), "ci": list(_ci(m)[1:]),
                                           second: float(np.mean(s)), "values": m})
                summary.setdefault("means", {}).setdefault(task, {}).setdefault(f"n{n}", {})[arm] = round(
                    100 * float(np.mean(m)), 1)
            cells = []
            for a, b in pairs:
                seeds = sorted({r["seed"] for r in by_arm[a]} & {r["seed"] for r in by_arm[b]})
                if not seeds:
                    cells.append("—")
                    continue
                va = [next(r[metric] for r in by_arm[a] if r["seed"] == s) for s in seeds]
                vb = [next(r[metric] for r in by_arm[b] if r["seed"] == s) for s in seeds]
                d = paired_difference(va, vb)
                cells.append(_fmt_diff(*d))
                summary["results"].append({"task": task, "n": n, "difference": f"{a} - {b}", "seeds": len(seeds),
                                           "mean": float(d[0]), "ci": [float(d[1]), float(d[2])]})
                # points, keyed for the guide's value() directives: paired.detection.n50.finetune_minus_scratch.mean
                summary.setdefault("paired", {}).setdefault(task, {}).setdefault(f"n{n}", {})[f"{a}_minus_{b}"] = {
                    "mean": round(100 * float(d[0]), 1), "low": round(100 * float(d[1]), 1),
                    "high": round(100 * float(d[2]), 1), "seeds": len(seeds)}
            diffs.append(f"| {n} | " + " | ".join(cells) + " |")
        tables += lines + [""] + (diffs + [""] if pairs else [])
    s = runs[-1]["settings"] if runs else {}
    instance = args.part == "instance-segmentation"
    loads = [r["load_1min"] for r in runs if "load_1min" in r]
    later = sorted({r["arm"] for r in runs if "load_1min" in r})
    load_text = (f"1-minute load average {min(loads):.1f} to {max(loads):.1f} at the end of the {len(loads)} runs "
                 f"that recorded it" + (f"; {len(runs) - len(loads)} earlier runs did not record it, and the runs "
                                        f"that did ({', '.join(later)}) ran at another time, so their train s/run "
                                        "does not compare with the other arms'"
                                        if len(loads) < len(runs) else "") if loads else "load not recorded")
    seg_only = args.part == "segmentation"
    command = (f"`python benchmarks/dense_vision.py --part {args.part} "
               + (f"--inst-sizes {','.join(map(str, args.inst_sizes))} " if instance else
                  "" if seg_only else f"--sizes {','.join(map(str, args.sizes))} ")
               + (f"--seg-sizes {','.join(map(str, args.seg_sizes))} " if seg_only or (args.part == "both"
                  and args.seg_sizes != [50]) else "")
               + (f"--arms {','.join(args.arms)} " if args.arms != list(ARMS) else "")
               + f"--seeds {args.seeds} "
               + ("--recipe defaults " if args.recipe == "defaults" else f"--steps {args.steps} ")
               + (f"--batch-size {args.batch_size} " if args.batch_size else "")
               + f"--image-size {args.image_size} --n-test {args.n_test} --threads {args.threads}`")
    model = ("Mask R-CNN (the task's `mask-rcnn` head: torchvision FPN 64 channels, RPN, RoIAlign on P3-P5, a "
             "256-wide two-layer box head, a mask branch of two 3x3 convs 64 wide and a 28x28 mask per class)"
             if instance else "torchvision FPN (64 channels) + Panoptic FPN's semantic branch (`fpn-seg`)" if seg_only
             else "torchvision FPN (64 channels, P3-P7) + FCOS head (2 conv layers per tower)"
             + ("; for segmentation, torchvision FPN (64 channels) + Panoptic FPN's semantic branch (`fpn-seg`)"
                if any(r["task"] == "segmentation" for r in runs) else ""))
    text = [
        "# Dense vision: " + ("instance segmentation (Mask R-CNN)" if instance else "detection and segmentation")
        + " transfer from ImageNet on CPU", "", command, "",
        f"Data: built-in `emoji-scenes` (seed 0): a pool of {s.get('pool')} training scenes and {s.get('n_test')} "
        f"test scenes at {s.get('image_size')} px, 1-3 emoji each from 36 (4 per Unicode group, 9 classes), "
        "pasted on crops of the scikit-learn and scikit-image photos with exact boxes and masks (from the alpha "
        "channel). Per seed, the training scenes are a seeded draw from the pool, the same for every arm.", "",
        f"Model: `{BACKBONE}` (packaged ImageNet weights) + {model}, batch size "
        f"{s.get('batch_size')}, AdamW, cosine schedule with 10% warm-up, flip/zoom/shift augmentation with "
        f"the {'masks' if seg_only else 'boxes'}{' and masks' if instance else ''}. " + _recipe_text(s, instance), "",
        *tables,
        f"Cuts forced by the CPU (2 cores shared with other engineers' jobs; {load_text}; so one thread per run): "
        f"images at {s.get('image_size')} px (the issue asks for 128-192 px), "
        + ("a 64-channel FPN and mask branch (torchvision's Mask R-CNN: 256, four convs), fewer proposals, one "
           "training-set size, " if instance else
           "an FPN/head of 64 channels and 2 conv layers (torchvision's FCOS: 256 and 4), ")
        + (f"{s.get('base_steps')} optimizer steps (scratch: {2 * (s.get('base_steps') or 0)}) rather than a "
           "schedule run to convergence, " if s.get("recipe", "fixed") == "fixed" else "")
        + f"and a test set of {s.get('n_test')} scenes. The comparison itself is not cut: the same "
        f"{'model' if instance else 'detector'}, data draw, augmentation and batch size in every arm."
        + _missing(runs),
    ]
    (args.out / "summary.md").write_text("\n".join(text) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def _setting(rows: list[dict]) -> str:
    """What sets a run folder apart, from its rows: its batch sizes and recipe."""
    sizes = sorted({r.get("batch_size", r["settings"].get("batch_size")) for r in rows}, key=str)
    st = rows[0]["settings"]
    return f"{st.get('image_size')} px, batch {'/'.join(map(str, sizes))}, recipe {st.get('recipe', 'fixed')}"


def write_against(runs: list[dict], other: list[dict], args) -> None:
    """``against.md``/``.json`` in ``args.out``: each (task, scenes, arm) of ``runs`` minus the same of ``other``,
    paired by seed (same draws and test set), in the task's primary metric."""
    import numpy as np

    from transferkit.evaluation.stats import paired_difference

    here, there = _setting(runs), _setting(other)
    lines = [f"# This folder's runs ({here}) minus `{args.against}` ({there})", "",
             f"`python benchmarks/dense_vision.py --part {args.part} --summary-only --out {args.out} --against "
             f"{args.against}`", "", "Paired by seed: the same training draw, augmentation and test scenes; "
             "points, mean [95% Student-t CI].", "",
             "| task | training scenes | arm | metric | this folder | other folder | difference | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    out = []
    for task, n, arm in sorted({(r["task"], r["n"], r["arm"]) for r in runs}):
        metric = PRIMARY[task]
        a = {r["seed"]: r[metric] for r in runs if (r["task"], r["n"], r["arm"]) == (task, n, arm)}
        b = {r["seed"]: r[metric] for r in other if (r["task"], r["n"], r["arm"]) == (task, n, arm)}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        va, vb = [a[k] for k in seeds], [b[k] for k in seeds]
        d = paired_difference(va, vb)
        lines.append(f"| {task} | {n} | {arm} | {metric} | {_fmt(*_ci(va))} | {_fmt(*_ci(vb))} | {_fmt_diff(*d)} | "
                     f"{len(seeds)} |")
        out.append({"task": task, "n": n, "arm": arm, "metric": metric, "seeds": seeds, "this": va, "other": vb,
                    "difference": {"mean": round(100 * d[0], 1), "low": round(100 * d[1], 1),
                                   "high": round(100 * d[2], 1)}})
    (args.out / "against.md").write_text("\n".join(lines) + "\n")
    keyed = {}  # task -> n<scenes> -> arm -> the difference in points, for the guide's value() directives
    for r in out:
        keyed.setdefault(r["task"], {}).setdefault(f"n{r['n']}", {})[r["arm"]] = {
            **r["difference"], "this": round(100 * float(np.mean(r["this"])), 1),
            "other": round(100 * float(np.mean(r["other"])), 1), "seeds": len(r["seeds"])}
    (args.out / "against.json").write_text(json.dumps({"this": here, "other": there, "against": str(args.against),
                                                       "rows": out, "difference": keyed}, indent=1) + "\n")


def _recipe_text(s: dict, instance: bool) -> str:
    """The summary's sentence on how long each arm trained and with which learning rates."""
    if s.get("recipe") == "defaults":
        return ("Every arm trains with its strategy's defaults, as `transferkit fit` without options: no epochs "
                "given, so the task's step budget (`min_train_examples`) sets the length of the transfer arms, and "
                "`scratch` takes its own longer schedule; the steps column gives the exact count. frozen: "
                "`finetune -o train_last=0` (head lr 1e-3); finetune: backbone 1e-4, head 1e-3, BatchNorm statistics "
                "frozen; lora: rank-8 LoRA on every plain convolution of the backbone, 1e-3; scratch: 1e-3 "
                "everywhere, BatchNorm trained and re-estimated after training. `train s/run` is wall time while "
                "other jobs shared the CPU: compare it within a row only.")
    return (f"Transfer arms: about {s.get('base_steps')} optimizer steps; scratch: about twice as many "
            "(a longer schedule for random weights; whole epochs, so the steps column gives the exact count). "
            "`train s/run` is wall time while other jobs shared the CPU: compare it within a row only. "
            + ("" if instance else "frozen: backbone lr 0, head lr 1e-3; ") + "finetune: backbone 2e-4, "
            "head 1e-3, BatchNorm statistics frozen; "
            + ("" if instance else "lora: rank-8 LoRA (alpha 16) on every plain convolution of the backbone, "
               "adapters and head lr 1e-3, the backbone's own weights frozen; ")
            + "scratch: 1e-3 everywhere, BatchNorm trained and re-estimated after training.")


def _paired(rows: list[dict], arm_a: str, arm_b: str, metric: str):
    """(mean, low, high, seeds) of ``arm_a - arm_b`` paired by seed, or ``None`` without a common seed."""
    from transferkit.evaluation.stats import paired_difference

    a = {r["seed"]: r[metric] for r in rows if r["arm"] == arm_a}
    b = {r["seed"]: r[metric] for r in rows if r["arm"] == arm_b}
    seeds = sorted(set(a) & set(b))
    return (*paired_difference([a[k] for k in seeds], [b[k] for k in seeds]), len(seeds)) if seeds else None


def write_detector_summary(runs: list[dict], args) -> None:
    """``--part detectors``: each detector fine-tuned and from scratch, and the paired differences."""
    import numpy as np

    rows = [r for r in runs if r["arm"] in DETECTOR_ARMS]
    if not rows:
        return
    s = rows[-1]["settings"]
    n, metric, second = rows[0]["n"], PRIMARY["detection"], SECONDARY["detection"]
    summary = {"backbone": BACKBONE, "n": n, "settings": s, "arms": {a: {"strategy": st, "options": o,
               "steps_factor": f, "lr": lr, "head_lr": hl} for a, (st, o, f, lr, hl) in DETECTOR_ARMS.items()},
               "machine": platform.processor() or platform.machine(), "means": {}, "paired": {}}
    table = [f"### {metric} (and {second}) on {s['n_test']} test scenes after training on {n}, mean ± 95% CI "
             "half-width over seeds (points)", "",
             f"| detector | arm | seeds | {metric} | {second} | steps | train s/run | predict s ({s['n_test']} scenes) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm in DETECTOR_ARMS:
        rs = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        m, sec = [r[metric] for r in rs], [r[second] for r in rs]
        detector, kind = arm.split("/")
        table.append(f"| {detector} | {kind} | {len(rs)} | {_fmt(*_ci(m))} | {_fmt(*_ci(sec))} | {rs[0]['steps']} | "
                     f"{np.mean([r['train_seconds'] for r in rs]):.0f} | "
                     f"{np.mean([r['predict_seconds'] for r in rs]):.1f} |")
        summary["means"].setdefault(detector, {})[kind] = {"mean": round(100 * float(np.mean(m)), 1),
                                                           "values": m, "seeds": len(rs)}
    diffs = [f"#### Paired by seed (same draw; {metric}, points, 95% CI)", "", "| difference | seeds | mean [CI] |",
             "| --- | --- | --- |"]
    pairs = [(f"{d}/finetune", f"{d}/scratch") for d in DETECTORS] + [
        (f"{d}/finetune", "fcos/finetune") for d in DETECTORS[1:]] + [(f"{d}/scratch", "fcos/scratch")
                                                                      for d in DETECTORS[1:]]
    for a, b in pairs:
        d = _paired(rows, a, b, metric)
        if d is None:
            continue
        diffs.append(f"| {a} - {b} | {d[3]} | {_fmt_diff(*d[:3])} |")
        summary["paired"][f"{a.replace('/', '_')}_minus_{b.replace('/', '_')}"] = {
            "mean": round(100 * float(d[0]), 1), "low": round(100 * float(d[1]), 1),
            "high": round(100 * float(d[2]), 1), "seeds": d[3]}
    text = [
        "# Dense vision: FCOS, RetinaNet and Faster R-CNN on ImageNet EfficientNet-Lite0, fine-tuned and from scratch",
        "", f"`python benchmarks/dense_vision.py --part detectors --detector-size {n} --seeds {args.seeds} "
        f"--steps {args.steps} --image-size {args.image_size} --n-test {args.n_test} --threads {args.threads}"
        + ("" if set(args.detectors) == set(DETECTORS) else f" --detectors {','.join(args.detectors)}")
        + (f" --out {args.out}" if args.out != OUT / "detectors" else "") + "`", "",
        f"Data as in `../summary.md`: `emoji-scenes` (seed 0), {n} training scenes drawn per seed from a pool of "
        f"{s['pool']} (the same draw for every arm and detector), {s['n_test']} test scenes at {s['image_size']} px, "
        "9 classes.", "",
        f"Model: `{BACKBONE}` (packaged ImageNet weights) + torchvision FPN (64 channels) + the detector chosen with "
        "the strategies' `detector` option: `fcos` (2 conv layers per tower, P3-P7), `retinanet` (torchvision's "
        "head, 4 conv layers per tower with GroupNorm, 9 anchors per location, P3-P7), `faster-rcnn` (RPN with the "
        "same anchors, RoIAlign on P3-P5, a 256-wide two-layer box head, 500/250 proposals per image in "
        "training/prediction). finetune: every weight trains, backbone lr 2e-4, FPN and detector 1e-3, BatchNorm "
        f"statistics frozen, about {s['base_steps']} optimizer steps; scratch: the same detector from random weights, "
        f"1e-3 everywhere, BatchNorm trained and re-estimated, about {2 * s['base_steps']} steps. Batch size "
        f"{s['batch_size']}, AdamW, cosine schedule with warm-up, flip/zoom/shift with the boxes. Times are wall "
        "seconds with other jobs on the same 2 cores: compare them within this table only.", "",
        *table, "", *diffs, "",
        f"Cuts forced by the CPU (2 cores shared with other workers, {s['threads']} thread per run): one training-set "
        f"size ({n}), "
        + "".join(f"{d} not run here, " for d in DETECTORS if d not in args.detectors) +
        f"{s['image_size']} px images, {s['base_steps']} optimizer steps (scratch "
        f"{2 * s['base_steps']}), 64-channel FPN and heads, a {s['n_test']}-scene test set: every arm is far from "
        "converged, so these are early-training figures. Not cut: the same draw, augmentation, batch size and "
        "schedule for every detector.",
    ]
    (args.out / "summary.md").write_text("\n".join(text) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
