"""``compare`` on the local engine against the Ray engine: wall time and identical results.

    python benchmarks/scale.py [--backbone small-cnn:16] [--data digits] [--labels-per-class 40]
        [--epochs 5] [--seeds 4] [--workers 2] [--reps 3] [--out benchmarks/results/scale]

One comparison of ``--seeds`` fine-tuning runs (no baselines) is timed on the local engine (the runs one
after another in this process, torch using every core) and on the Ray engine (a local Ray started with
``--workers`` CPUs, one run per CPU); the two alternate, ``--reps`` times each, so that a change in the
machine's load hits both. The Ray time includes starting and stopping Ray and its workers, as a command
line user sees it. Writes ``scale.json`` (every repetition) and ``summary.md``: the median wall time of
each engine, their ratio, and whether every repetition's runs table (all but the time column) was the
same on both engines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "scale"


def one(engine: str, args) -> dict:
    from transferkit.workflows.compare import compare

    start = time.perf_counter()
    result = compare(args.backbone, args.data, ["finetune"], seeds=args.seeds, labels_per_class=args.labels_per_class,
                     baselines=[], epochs=args.epochs, progress=False, engine=engine)
    wall = time.perf_counter() - start
    runs = result.runs
    return {"engine": engine, "wall_s": round(wall, 2), "run_seconds": runs["seconds"].tolist(),
            "table": runs.drop(columns="seconds").round(6).to_dict("records")}


def start_ray(workers: int):
    """Ray on this machine with ``workers`` CPUs, the way RayEngine starts it (the engine then reuses it)."""
    import ray

    from transferkit.export.ray_cluster import runtime_env

    ray.init(num_cpus=workers, runtime_env=runtime_env(None), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    return ray


def markdown(reps: list[dict], args, env: dict) -> str:
    local = [r["wall_s"] for r in reps if r["engine"] == "local"]
    ray = [r["wall_s"] for r in reps if r["engine"] == "ray"]
    ratio = statistics.median(ray) / statistics.median(local)
    same = all(r["table"] == reps[0]["table"] for r in reps)
    per_rep = [f"{b / a:.2f}" for a, b in zip(local, ray)]
    lines = [
        f"# compare on the local and the Ray engine: {args.seeds} runs",
        "",
        f"`{args.backbone}` fine-tuned on `{args.data}`, {args.labels_per_class} labels per class, {args.epochs} "
        f"epochs, {args.seeds} seeds (one run each, no baselines). Local: the runs one after another in one "
        f"process (torch with {env['torch_threads']} threads). Ray: a local Ray started with {args.workers} CPUs, "
        f"one run per CPU; its time includes starting Ray and its workers. {args.reps} alternating repetitions; "
        f"machine: {env['cpus']} CPUs, {env['platform']}.",
        "",
        "| engine | median wall time (s) | repetitions (s) |",
        "| --- | ---: | --- |",
        f"| local | {statistics.median(local):.1f} | {', '.join(f'{t:.1f}' for t in local)} |",
        f"| ray, {args.workers} workers | {statistics.median(ray):.1f} | {', '.join(f'{t:.1f}' for t in ray)} |",
        "",
        f"**Ray / local wall time: {ratio:.2f}x** (median over repetitions; per repetition: {', '.join(per_rep)}).",
        "",
        f"Runs tables (every metric, all but the time column) identical on both engines in every repetition: "
        f"**{'yes' if same else 'no'}**.",
        "",
        "The machine was shared with other jobs while this ran (its load average went from "
        f"{env['load_before']} before to {env['load_after']} after, on {env['cpus']} cores), so the absolute times "
        "are noisy; the repetitions alternate engines so that the load hits both.",
        "",
        f"Command: `{env['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="small-cnn:16")
    p.add_argument("--data", default="digits")
    p.add_argument("--labels-per-class", type=int, default=40)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import torch

    env = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
           "load_before": f"{os.getloadavg()[0]:.1f}", "command": "python " + " ".join(sys.argv)}
    reps = []
    for rep in range(args.reps):
        reps.append({"rep": rep, **one("local", args)})
        print(f"rep {rep} local: {reps[-1]['wall_s']:.1f} s", flush=True)
        start = time.perf_counter()
        ray = start_ray(args.workers)
        try:
            ray_rep = one("ray", args)
        finally:
            ray.shutdown()
        ray_rep["wall_s"] = round(time.perf_counter() - start, 2)  # with Ray's start-up and shutdown
        reps.append({"rep": rep, **ray_rep})
        print(f"rep {rep} ray: {reps[-1]['wall_s']:.1f} s", flush=True)
    env["load_after"] = f"{os.getloadavg()[0]:.1f}"
    args.out.mkdir(parents=True, exist_ok=True)
    summary = markdown(reps, args, env)
    (args.out / "scale.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "env": env,
                                                     "repetitions": reps}, indent=1), encoding="utf-8")
    (args.out / "summary.md").write_text(summary, encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
