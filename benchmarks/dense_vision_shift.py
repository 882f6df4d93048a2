"""Detection under a colour -> line-art shift: a detector trained on colour emoji, tested on line art.

    python benchmarks/dense_vision_shift.py [--seeds 3] [--source 50] [--few 10] [--image-size 128]

Data: the built-in ``emoji-scenes`` (seed 0) drawn twice, once with Noto's colour emoji and once with
Symbola's black line art: the same scenes (photo crops, emoji, places, boxes), only the drawing differs.
The test set is the line-art test split (the colour test split, the same scenes in colour, is scored
too, to show the drop and any forgetting). Per seed, a seeded permutation of the training pool gives
``--source`` colour scenes and ``--few`` *other* scenes in line art, so the few target images never
repeat a source scene.

``--recipe fixed`` (the default, the first runs) trains every arm for the step counts below; ``--recipe
defaults`` trains every arm as ``transferkit fit`` does without options (the task's batch size and image
budget, each strategy's learning rates; ``source+few``'s second stage and ``few-only`` take the budget on
the few scenes, ``few-scratch`` scratch's own longer schedule). ``--arms`` and ``--only-seeds`` pick what runs.

Every arm is the default detector (torchvision FPN + FCOS on EfficientNet-Lite0's pyramid), the recipes
of ``benchmarks/dense_vision.py``:

* ``source-only``: ImageNet Lite0 fine-tuned on the colour scenes (``finetune``, about ``--steps`` steps);
* ``source+few``: that same model, then fine-tuned on the few line-art scenes (``--few-steps`` steps,
  the same recipe: a fresh AdamW and cosine schedule, BatchNorm statistics frozen);
* ``few-only``: ImageNet Lite0 fine-tuned on the few line-art scenes alone, for as many steps as
  ``source+few`` took in all (``--steps + --few-steps``);
* ``few-scratch``: the same detector from random weights on the few line-art scenes, twice that;
* ``target-full``: a reference, not a contender: ImageNet Lite0 fine-tuned on the ``--source`` scenes
  drawn in line art (the labelled target data the shift takes away), ``--steps`` steps.

mAP@.5 (primary) and mAP@[.5:.95] on the line-art test set, mean and 95% Student-t interval over seeds,
and paired (same seed, same draw) differences. Writes ``benchmarks/results/dense_vision_shift/
{runs.jsonl,summary.md,summary.json}``; runs already in ``runs.jsonl`` are kept (the script resumes).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dense_vision import ARMS, BACKBONE, _ci, _fmt, _fmt_diff, _paired, load_average, load_note  # noqa: E402

OUT = Path(__file__).parent / "results" / "dense_vision_shift"
#: arm -> (training data, recipe in dense_vision.ARMS, steps as a multiple of the base budget)
SHIFT_ARMS = {
    "source-only": ("source", "finetune"),
    "source+few": ("few", "finetune"),  # continues source-only's model
    "few-only": ("few", "finetune"),
    "few-scratch": ("few", "scratch"),
    "target-full": ("target-full", "finetune"),
}
#: paired differences reported: (a, b) means a - b
PAIRS = (("source+few", "source-only"), ("source+few", "few-only"), ("few-only", "few-scratch"),
         ("source-only", "few-only"), ("target-full", "source+few"))


def _data(args):
    from transferkit.data import load_dataset

    kw = dict(n_train=args.pool, n_test=args.n_test, size=args.image_size, task="detection", seed=0)
    colour, colour_test = load_dataset("emoji-scenes", style="color", **kw)
    line, line_test = load_dataset("emoji-scenes", style="line", **kw)
    return colour, line, colour_test, line_test


def _draws(seed: int, args, colour, line) -> dict:
    """The seed's training sets: source colour scenes, the few other scenes in line art, the source in line art."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(colour))
    src, few = np.sort(order[:args.source]), np.sort(order[args.source:args.source + args.few])
    return {"source": colour.subset(src, name=f"colour[{args.source}]"),
            "few": line.subset(few, name=f"line[{args.few}]"),
            "target-full": line.subset(src, name=f"line[{args.source}]")}


def _steps(arm: str, args) -> int:
    if arm in ("source-only", "target-full"):
        return args.steps
    if arm == "source+few":
        return args.few_steps
    return (args.steps + args.few_steps) * ARMS[SHIFT_ARMS[arm][1]][2]  # scratch: twice


def _train(arm: str, data, seed: int, args, start=None):
    """Train one arm (``start``: a trained model to continue from) -> (model, steps, seconds, last loss)."""
    import torch

    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    strategy_name, options, _, lr, head_lr = ARMS[SHIFT_ARMS[arm][1]]
    if args.recipe == "defaults":  # as `transferkit fit` without options: the strategy's and the task's defaults
        config = TrainConfig(seed=seed, progress=False, cpu=True)
    else:
        per_epoch = max(1, math.ceil(len(data) / args.batch_size))
        config = TrainConfig(epochs=max(1, round(_steps(arm, args) / per_epoch)), batch_size=args.batch_size,
                             lr=lr, head_lr=head_lr, seed=seed, progress=False, cpu=True)
    per_epoch = max(1, math.ceil(len(data) / config.batch_for(data)))
    strategy = make_strategy(strategy_name, options)
    torch.manual_seed(seed)
    began = time.perf_counter()
    if start is None:
        model, history = strategy.fit(load_backbone(BACKBONE, image_size=args.image_size), data, None,
                                      Trainer(config))
    else:  # the same recipe on the trained detector: no new head, the weights trained so far
        model = copy.deepcopy(start)
        strategy.check_data(model.backbone, data)
        model, history = Trainer(config).fit(strategy, model, data, None)
        strategy.on_train_end(model, data)
    return model, len(history) * per_epoch, time.perf_counter() - began, float(history[-1]["train_loss"])


def _task_batch(data) -> int:
    from transferkit.training import TrainConfig

    return TrainConfig().batch_for(data)


def _score(model, test) -> dict:
    from transferkit.strategies.base import predict_outputs

    metrics = test.task_spec.metrics(test.targets, predict_outputs(model, test, batch_size=16), test.label_names)
    return {k: float(metrics[k]) for k in ("map_50", "map", "map_75", "mar_100")}


def run_seed(seed: int, data, args, done: set[str]):
    """Every arm of one seed not in ``done``; yields rows."""
    colour, line, colour_test, line_test = data
    sets = _draws(seed, args, colour, line)
    source_model = None
    for arm in SHIFT_ARMS:
        if f"{seed}|{arm}" in done or arm not in args.arms:
            continue
        kind = SHIFT_ARMS[arm][0]
        if arm == "source+few" and source_model is None:  # resumed after source-only: train it again
            source_model, *_ = _train("source-only", sets["source"], seed, args)
        model, steps, seconds, loss = _train(arm, sets[kind], seed, args,
                                             start=source_model if arm == "source+few" else None)
        if arm == "source-only":
            source_model = model
        line_scores, colour_scores = _score(model, line_test), _score(model, colour_test)
        yield {"seed": seed, "arm": arm, "train_set": sets[kind].name, "train_images": len(sets[kind]),
               "strategy": ARMS[SHIFT_ARMS[arm][1]][0], "steps": steps, "train_seconds": round(seconds, 1),
               "final_loss": round(loss, 4), **line_scores, **{f"colour_{k}": v for k, v in colour_scores.items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--source", type=int, default=50, help="colour training scenes")
    parser.add_argument("--few", type=int, default=10, help="line-art training scenes")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps on the source (and target-full)")
    parser.add_argument("--few-steps", type=int, default=20, help="optimizer steps of source+few's second stage")
    parser.add_argument("--recipe", default="fixed", choices=["fixed", "defaults"],
                        help="fixed: --steps, --few-steps, --batch-size and the arms' learning rates; defaults: "
                             "every arm with its strategy's defaults, as `transferkit fit` without options (the "
                             "task's batch size and image budget; source+few's second stage too)")
    parser.add_argument("--arms", default=",".join(SHIFT_ARMS), help="which arms run")
    parser.add_argument("--only-seeds", default="", help="run only these of the --seeds draws (e.g. 1,2): to split "
                                                             "the benchmark across processes, each into its own --out")
    parser.add_argument("--batch-size", type=int, default=8, help="--recipe fixed only")
    parser.add_argument("--pool", type=int, default=200, help="training scenes drawn from")
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary.md/json from runs.jsonl")
    args = parser.parse_args(argv)
    args.arms = [a for a in str(args.arms).split(",") if a]
    if not set(args.arms) <= set(SHIFT_ARMS):
        parser.error(f"--arms {','.join(args.arms)}: choose among {', '.join(SHIFT_ARMS)}")
    args.only_seeds = [int(s) for s in str(args.only_seeds).split(",") if s]
    if args.source + args.few > args.pool:
        parser.error(f"--source {args.source} + --few {args.few} scenes do not fit a pool of {args.pool}")

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / "runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    if args.summary_only:
        return write_summary(runs, args)
    began, data = time.perf_counter(), _data(args)
    fixed = args.recipe == "fixed"
    settings = {"image_size": args.image_size, "recipe": args.recipe,
                "batch_size": args.batch_size if fixed else _task_batch(data[0]),
                "source": args.source, "few": args.few, "base_steps": args.steps if fixed else None,
                "few_steps": args.few_steps if fixed else None, "pool": args.pool, "n_test": args.n_test,
                "threads": args.threads}
    for seed in range(args.seeds):
        if args.only_seeds and seed not in args.only_seeds:
            continue
        for row in run_seed(seed, data, args, {f"{r['seed']}|{r['arm']}" for r in runs}):
            row["settings"], row["load_average"] = settings, load_average()
            runs.append(row)
            with open(runs_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"seed {seed} {row['arm']}: line-art map_50 {row['map_50']:.3f} (colour {row['colour_map_50']:.3f}) "
                  f"in {row['train_seconds']}s, {time.perf_counter() - began:.0f}s so far", flush=True)
            write_summary(runs, args)
    write_summary(runs, args)


def write_summary(runs: list[dict], args) -> None:
    import numpy as np

    from transferkit.evaluation.stats import mean_ci

    if not runs:
        return
    s = runs[-1]["settings"]
    summary = {"backbone": BACKBONE, "settings": s, "machine": platform.processor() or platform.machine(),
               "arms": {a: {"data": d, "recipe": r, "strategy": ARMS[r][0], "options": ARMS[r][1], "lr": ARMS[r][3],
                            "head_lr": ARMS[r][4]} for a, (d, r) in SHIFT_ARMS.items()},
               "means": {}, "paired": {}}
    table = [f"### mAP@.5 on {s['n_test']} line-art test scenes (and on the same scenes in colour), mean ± 95% CI "
             "half-width over seeds (points)", "",
             "| arm | trained on | seeds | line-art map_50 | line-art map | colour map_50 | steps | train s/run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm in SHIFT_ARMS:
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        m, mm, c = ([r[k] for r in rs] for k in ("map_50", "map", "colour_map_50"))
        trained = {"source-only": f"{s['source']} colour", "source+few": f"{s['source']} colour, then {s['few']} "
                   "line art", "few-only": f"{s['few']} line art", "few-scratch": f"{s['few']} line art (random "
                   "init)", "target-full": f"{s['source']} line art (reference)"}[arm]
        table.append(f"| {arm} | {trained} | {len(rs)} | {_fmt(*_ci(m))} | {_fmt(*_ci(mm))} | {_fmt(*_ci(c))} | "
                     f"{rs[0]['steps']} | {np.mean([r['train_seconds'] for r in rs]):.0f} |")
        summary["means"][arm] = {"map_50": round(100 * float(np.mean(m)), 1), "map": round(100 * float(np.mean(mm)), 1),
                                 "colour_map_50": round(100 * float(np.mean(c)), 1), "values": m, "seeds": len(rs)}
    diffs = ["#### Paired by seed (same draws; line-art mAP@.5 unless said, points, 95% CI)", "",
             "| difference | seeds | mean [CI] |", "| --- | --- | --- |"]
    for a, b in PAIRS:
        d = _paired(runs, a, b, "map_50")
        if d is None:
            continue
        diffs.append(f"| {a} - {b} | {d[3]} | {_fmt_diff(*d[:3])} |")
        summary["paired"][f"{a}_minus_{b}".replace("+", "_plus_")] = {
            "mean": round(100 * float(d[0]), 1), "low": round(100 * float(d[1]), 1),
            "high": round(100 * float(d[2]), 1), "seeds": d[3]}
    forgot = _paired(runs, "source+few", "source-only", "colour_map_50")  # what the few line-art steps cost in colour
    if forgot is not None:
        diffs.append(f"| source+few - source-only, on the colour test | {forgot[3]} | {_fmt_diff(*forgot[:3])} |")
        summary["paired"]["colour_source_plus_few_minus_source-only"] = {
            "mean": round(100 * float(forgot[0]), 1), "low": round(100 * float(forgot[1]), 1),
            "high": round(100 * float(forgot[2]), 1), "seeds": forgot[3]}
    drop = {r["seed"]: r["colour_map_50"] - r["map_50"] for r in runs if r["arm"] == "source-only"}
    if drop:  # the shift itself: the source model on the same test scenes in colour minus in line art
        d = mean_ci(list(drop.values()))
        diffs.append(f"| source-only: colour test - line-art test | {len(drop)} | {_fmt_diff(*d)} |")
        summary["paired"]["shift_drop"] = {"mean": round(100 * float(d[0]), 1), "low": round(100 * float(d[1]), 1),
                                           "high": round(100 * float(d[2]), 1), "seeds": len(drop)}
    defaults = s.get("recipe") == "defaults"
    recipe = ("--recipe defaults" if defaults else f"--steps {s['base_steps']} --few-steps {s['few_steps']}")
    ran = sorted({r["arm"] for r in runs}, key=list(SHIFT_ARMS).index)
    arms = "" if len(ran) == len(SHIFT_ARMS) else f" --arms {','.join(ran)}"
    text = [
        "# Dense vision: detection under a colour -> line-art shift", "",
        f"`python benchmarks/dense_vision_shift.py --seeds {args.seeds} --source {s['source']} --few {s['few']} "
        f"{recipe}{arms} --image-size {s['image_size']} --n-test {s['n_test']} --threads {s['threads']}`", "",
        f"Data: built-in `emoji-scenes` (seed 0) at {s['image_size']} px, drawn in colour (Noto Color Emoji) and in "
        f"line art (Symbola): the same scenes, boxes and 9 classes, only the drawing differs. Per seed, a seeded "
        f"draw from the pool of {s['pool']} training scenes gives {s['source']} colour source scenes and "
        f"{s['few']} other scenes in line art (never a source scene). Tested on {s['n_test']} line-art test scenes; "
        "`colour map_50` scores the same test scenes drawn in colour.", "",
        *(_defaults_text(s) if defaults else _fixed_text(s)), "",
        *table, "", *diffs, "",
        *(_defaults_cuts(s, runs, ran) if defaults else _fixed_cuts(s, runs)),
    ]
    (args.out / "summary.md").write_text("\n".join(text) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def _defaults_text(s) -> list[str]:
    return [
        f"Model: `{BACKBONE}` (packaged ImageNet weights) + torchvision FPN (64 channels) + FCOS (the default "
        f"detector, 2 conv layers per tower). Every arm trains as `transferkit fit` without options: the task's "
        f"batch size ({s['batch_size']}) and image budget (4,800 images shown; `scratch` its own, four times that), "
        "each strategy's learning rates (finetune: backbone 1e-4, FPN and head 1e-3, BatchNorm statistics "
        "frozen; scratch: 1e-3 everywhere, BatchNorm trained and re-estimated), AdamW, cosine schedule with 10% "
        "warm-up, flip/zoom/shift with the boxes; the steps column is exact. `source+few` continues "
        "`source-only`'s model on the few line-art scenes with the same defaults (a fresh optimizer and schedule, "
        "the budget again); `few-only` fine-tunes ImageNet Lite0 on them alone at the defaults. `target-full` "
        "is the labelled target data the shift takes away: a reference, not a contender. Times are wall seconds "
        "on a shared CPU: compare them within this table only.",
    ]


def _defaults_cuts(s, runs, ran) -> list[str]:
    left = [a for a in SHIFT_ARMS if a not in ran]
    return [
        f"Cuts forced by the CPU (2 cores shared with other workers{load_note(runs)}, {s['threads']} thread(s) "
        f"per run): {s['image_size']} px images, a 64-channel FPN and 2-conv FCOS towers (torchvision's: 256 and "
        f"4), {s['source']} source scenes, a {s['n_test']}-scene test set, one few-shot size"
        + (f", and the arms {', '.join(left)} did not run" if left else "")
        + ". Not cut: each arm's default schedule, the same draws, detector, augmentation and batch size in "
        "every arm.",
    ]


def _fixed_text(s) -> list[str]:
    return [
        f"Model: `{BACKBONE}` (packaged ImageNet weights) + torchvision FPN (64 channels) + FCOS (the default "
        "detector, 2 conv layers per tower). Fine-tuning as in `../dense_vision/fixed_96px/summary.md`: backbone lr 2e-4, "
        "FPN and head 1e-3, BatchNorm statistics frozen; scratch: the same detector from random weights, 1e-3 "
        f"everywhere, BatchNorm trained and re-estimated, twice the steps. Batch size {s['batch_size']}, AdamW, "
        "cosine schedule with 10% warm-up, flip/zoom/shift with the boxes; steps are whole epochs (the steps "
        f"column is exact). `source+few` continues `source-only`'s model for {s['few_steps']} more steps with a "
        "fresh optimizer and schedule; `few-only` gets as many steps as `source+few` took in all. `target-full` "
        "is the labelled target data the shift takes away: a reference, not a contender. Times are wall seconds "
        "on a shared CPU: compare them within this table only.",
    ]


def _fixed_cuts(s, runs) -> list[str]:
    return [
        f"Cuts forced by the CPU (2 cores shared with other workers{load_note(runs)}, {s['threads']} thread(s) "
        "per run): "
        f"{s['image_size']} px images, about {s['base_steps']} optimizer steps on the source and {s['few_steps']} "
        f"on the few line-art scenes rather than schedules run to convergence, a 64-channel FPN and 2-conv FCOS "
        f"towers (torchvision's: 256 and 4), {s['source']} source scenes, a {s['n_test']}-scene test set, and "
        "one few-shot size. Not cut: the same draws, detector, augmentation and batch size in every arm.",
    ]


if __name__ == "__main__":
    main()
