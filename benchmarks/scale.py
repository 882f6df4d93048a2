"""``compare`` on the local engine against the Ray engine: wall time and identical results.

    python benchmarks/scale.py [--backbone small-cnn:16] [--data digits] [--labels-per-class 100]
        [--epochs 20] [--seeds 4] [--workers 2] [--reps 3] [--out benchmarks/results/scale]

One comparison of ``--seeds`` fine-tuning runs (no baselines) is timed three ways: the local engine as it
runs by default (the runs one after another in this process, torch using every core), the local engine
with torch on one thread (what each Ray task gets), and the Ray engine (a local Ray started with
``--workers`` CPUs, one run per CPU, one thread each). The three alternate, ``--reps`` times each, so that a
change in the machine's load hits all of them. The Ray time includes starting and stopping Ray and its
workers, as a command line user sees it. Writes ``scale.json`` (every repetition) and ``summary.md``: the
median wall times, the ratios, and which runs tables (all but the time column) were the same: multi-threaded
CPU kernels are not bit-reproducible across thread counts, so a run trained on two threads can differ from
the same run on one thread by an item, whichever engine runs it.

The default runs (100 labels per class, 20 epochs) take 8 to 20 s each on one thread of this 2-core machine
(more under other jobs' load), so that the comparison measures running them side by side rather than Ray's
start-up (runs of about a second, the first version's default, were mostly start-up: Ray 3.29x the local engine).
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


def one(engine: str, args, threads: int | None = None) -> dict:
    import torch

    from transferkit.workflows.compare import compare

    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    start = time.perf_counter()
    result = compare(args.backbone, args.data, ["finetune"], seeds=args.seeds, labels_per_class=args.labels_per_class,
                     baselines=[], epochs=args.epochs, progress=False, engine=engine)
    wall = time.perf_counter() - start
    torch.set_num_threads(default)
    runs = result.runs
    return {"engine": engine + (f", {threads} thread" if threads else ""), "wall_s": round(wall, 2), "run_seconds": runs["seconds"].tolist(),
            "table": runs.drop(columns="seconds").round(6).to_dict("records")}


def start_ray(workers: int):
    """Ray on this machine with ``workers`` CPUs, the way RayEngine starts it (the engine then reuses it)."""
    import ray

    from transferkit.export.ray_cluster import runtime_env

    ray.init(address="local", num_cpus=workers, runtime_env=runtime_env(None), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    return ray


def markdown(reps: list[dict], args, env: dict) -> str:
    arms = list(dict.fromkeys(r["engine"] for r in reps))
    done = len({r["rep"] for r in reps if r["engine"] == arms[-1]})  # repetitions in which every arm ran
    times = {a: [r["wall_s"] for r in reps if r["engine"] == a] for a in arms}
    median = {a: statistics.median(t) for a, t in times.items()}
    tables = {a: [r["table"] for r in reps if r["engine"] == a] for a in arms}
    stable = {a: all(t == tables[a][0] for t in tables[a]) for a in arms}
    run_median = {a: statistics.median(s for r in reps if r["engine"] == a for s in r["run_seconds"]) for a in arms}

    def same(a, b):
        return "yes" if all(x == y for x, y in zip(tables[a], tables[b])) else "no"

    def differing(a, b):
        """Per differing run: the largest difference over its metrics, and accuracy on both."""
        out = []
        for x, y in zip(tables[a][0], tables[b][0]):
            if x != y:
                gap = max(abs(x[k] - y[k]) for k in x if isinstance(x[k], float) and k in y)
                out.append(f"seed {x['seed']}: accuracy {x['accuracy']:.4f} vs {y['accuracy']:.4f}, largest metric "
                           f"difference {gap:.2g}")
        return "; ".join(out) or "none"

    names = {"local": "local", "local1": "local, 1 thread", "ray": "ray"}
    local, one, ray = (names[a] if names[a] in arms else None for a in ("local", "local1", "ray"))
    ratios = [f"Ray / local on one thread: {median[ray] / median[one]:.2f}x" if one and ray else "",
              f"Ray / local: {median[ray] / median[local]:.2f}x" if local and ray else ""]
    checks = [(ray, one, "one thread per run on both"), (ray, local, f"one thread per run against {env['torch_threads']}"),
              (local, one, f"the same engine, {env['torch_threads']} threads against one")]
    lines = [
        f"# compare on the local and the Ray engine: {args.seeds} runs",
        "",
        f"`{args.backbone}` fine-tuned on `{args.data}`, {args.labels_per_class} labels per class, {args.epochs} "
        f"epochs, {args.seeds} seeds (one run each, no baselines). `local`: the runs one after another in one "
        f"process, torch with its default {env['torch_threads']} threads; `local, 1 thread`: the same with torch on "
        f"one thread; `ray`: a local Ray started with {args.workers} CPUs, one run per CPU (one thread each), its "
        f"time including starting Ray and its workers. {done} of {args.reps} repetitions, the arms alternating; machine: "
        f"{env['cpus']} CPUs, {env['platform']}. Median run: the median of the runs' own training times (the runs "
        f"table's seconds column), what each run costs on that arm.",
        "",
        "| engine | median wall time (s) | repetitions (s) | median run (s) |",
        "| --- | ---: | --- | ---: |",
        *[f"| {a} | {median[a]:.1f} | {', '.join(f'{t:.1f}' for t in times[a])} | {run_median[a]:.1f} |" for a in arms],
        "",
        f"**Wall time, {args.workers} Ray workers: {'; '.join(r for r in ratios if r) or 'no Ray arm has finished'}** "
        f"(medians over repetitions).",
        "",
        "Runs tables (every metric, all but the time column):",
        "",
        "- the same in every repetition of each engine: " + ", ".join(
            f"{a}: {'yes' if stable[a] else 'no'}" for a in arms) + ";",
        *[f"- `{a}` and `{b}` ({why}): **{same(a, b)}** (differing runs: {differing(a, b)});"
          for a, b, why in checks if a and b],
        "",
        "The machine was shared with other jobs while this ran (its load average went from "
        f"{env['load_before']} before to {env['load_after']} after, on {env['cpus']} cores), so the absolute times "
        "are noisy and the local engine's threads competed with the other jobs' for the two cores; the "
        "repetitions alternate the arms so that the load hits all of them.",
        "",
        f"Command: `{env['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="small-cnn:16")
    p.add_argument("--data", default="digits")
    p.add_argument("--labels-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--arms", type=lambda s: s.split(","), default=["local", "local1", "ray"],
                   help="Which of local (default threads), local1 (one thread) and ray to time.")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import torch

    env = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
           "load_before": f"{os.getloadavg()[0]:.1f}", "command": "python " + " ".join(sys.argv)}
    reps = []
    args.out.mkdir(parents=True, exist_ok=True)
    for rep in range(args.reps):
        # one thread and Ray first: under other jobs' load torch's default threads can crawl for long
        for arm in [a for a in ("local1", "ray", "local") if a in args.arms]:
            result = one_ray(args) if arm == "ray" else one("local", args, 1 if arm == "local1" else None)
            reps.append({"rep": rep, **result})
            print(f"rep {rep} {reps[-1]['engine']}: {reps[-1]['wall_s']:.1f} s", flush=True)
            write(args, env, reps)  # after every arm: a run stopped early keeps what it measured
    print(write(args, env, reps))


def one_ray(args) -> dict:
    """The Ray arm, timed with Ray's start-up and shutdown."""
    start = time.perf_counter()
    ray = start_ray(args.workers)
    try:
        rep = one("ray", args)
    finally:
        ray.shutdown()
    rep["wall_s"] = round(time.perf_counter() - start, 2)
    return rep


def write(args, env: dict, reps: list[dict]) -> str:
    """``scale.json`` and ``summary.md`` of the repetitions so far; returns the summary."""
    env["load_after"] = f"{os.getloadavg()[0]:.1f}"
    summary = markdown(reps, args, env)
    (args.out / "scale.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "env": env,
                                                     "repetitions": reps}, indent=1), encoding="utf-8")
    (args.out / "summary.md").write_text(summary, encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
