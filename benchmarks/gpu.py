"""Throughput and peak memory on a GPU: feature extraction and fine-tuning, bf16, channels_last, torch.compile.

    python benchmarks/gpu.py [--backbone efficientnet-lite:0] [--image-size 224] [--batch-sizes 32,64,128,256]
        [--steps 20] [--warmup 3] [--precision fp32,bf16] [--memory-format contiguous,channels_last]
        [--compile off,on] [--device cuda] [--out benchmarks/results/gpu]

For every combination of precision (fp32; bf16 under ``torch.autocast``), memory format (contiguous;
``channels_last`` for the model and its 4-D inputs), ``torch.compile`` (off; on) and batch size, two
measurements on synthetic images that went through the backbone's own preprocessing once:

* **extract**: ``backbone.forward_features`` under ``torch.inference_mode`` (what the feature cache runs);
* **finetune**: backbone + linear head, cross-entropy, ``backward`` and an AdamW step (what ``finetune`` runs).

Each is warmed up ``--warmup`` steps (compilation happens there), then ``--steps`` steps are timed between
CUDA synchronisations; throughput is items per second, peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps. A configuration that runs out of memory is recorded as ``OOM`` and the sweep goes on.
Data loading and preprocessing are not in the times (the inputs are on the device already).

Without CUDA (``--device cuda`` and ``torch.cuda.is_available()`` false) it measures nothing and writes
``summary.md`` and ``gpu.json`` saying it skipped and why. ``--device cpu`` runs the same sweep on the CPU,
a check of the script rather than a benchmark: its results go to ``--out`` like any other.
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "gpu"


def environment(device: str) -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cuda_available": torch.cuda.is_available(), "device": device,
           "command": "python " + " ".join(sys.argv)}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def synthetic_inputs(backbone, batch_size: int, image_size: int, device):
    """``batch_size`` random RGB images through the backbone's own preprocessing, on ``device``."""
    import numpy as np

    from transferkit.data.batches import to_device

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(batch_size)]
    return to_device(backbone.preprocess(images), device)


def channels_last(inputs):
    import torch

    if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    if isinstance(inputs, dict):
        return {k: channels_last(v) for k, v in inputs.items()}
    return inputs


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, device, warmup: int, steps: int, batch_size: int) -> dict:
    """Items per second and peak device memory of ``step()`` over ``steps`` timed calls."""
    import torch

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"items_per_s": round(batch_size * steps / seconds, 1), "peak_mib": round(peak, 1),
            "seconds": round(seconds, 3)}


def build(args, precision: str, memory_format: str, compiled: bool, batch_size: int, device, mode: str):
    """The step function of one configuration (a fresh backbone each time, so compile caches do not carry over)."""
    import torch

    from transferkit.backbones import load_backbone

    backbone = load_backbone(args.backbone, image_size=args.image_size).to(device)
    inputs = synthetic_inputs(backbone, batch_size, args.image_size, device)
    if memory_format == "channels_last":
        backbone = backbone.to(memory_format=torch.channels_last)
        inputs = channels_last(inputs)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else None
    if mode == "extract":
        backbone.eval()
        forward = torch.compile(backbone.forward_features) if compiled else backbone.forward_features

        def step():
            with torch.inference_mode(), (autocast() if autocast else _null()):
                forward(inputs)
        return step
    backbone.train()
    head = torch.nn.Linear(backbone.num_features, 10).to(device)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    run = (lambda x: head(backbone.forward_features(x).float()))
    run = torch.compile(run) if compiled else run
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        with autocast() if autocast else _null():
            loss = torch.nn.functional.cross_entropy(run(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sweep(args, device) -> list[dict]:
    import torch

    rows = []
    grid = itertools.product(("extract", "finetune"), args.precision, args.memory_format, args.compile,
                             args.batch_sizes)
    for mode, precision, memory_format, compiled, batch_size in grid:
        row = {"mode": mode, "precision": precision, "memory_format": memory_format, "compile": compiled,
               "batch_size": batch_size}
        try:
            step = build(args, precision, memory_format, compiled == "on", batch_size, device, mode)
            row.update(measure(step, device, args.warmup, args.steps, batch_size))
        except torch.cuda.OutOfMemoryError:
            row.update(items_per_s=None, peak_mib=None, error="OOM")
        except Exception as exc:  # noqa: BLE001  (one configuration failing, e.g. compile, must not end the sweep)
            row.update(items_per_s=None, peak_mib=None, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], args, env: dict) -> str:
    lines = [f"# GPU throughput and peak memory: {args.backbone} at {args.image_size} px", "",
             f"{env.get('gpu', env['device'])}, torch {env['torch']}; {args.steps} timed steps after {args.warmup} "
             "warm-up steps; synthetic preprocessed inputs already on the device.", ""]
    for mode in ("extract", "finetune"):
        lines += [f"## {mode}", "", "| precision | memory format | compile | batch | items/s | peak MiB |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        for r in (r for r in rows if r["mode"] == mode):
            speed = r.get("error") or f"{r['items_per_s']:.1f}"
            peak = "" if r.get("error") else f"{r['peak_mib']:.0f}"
            lines.append(f"| {r['precision']} | {r['memory_format']} | {r['compile']} | {r['batch_size']} | "
                         f"{speed} | {peak} |")
        lines.append("")
    lines.append(f"Command: `{env['command']}`")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet-lite:0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", type=lambda s: s.split(","), default=["fp32", "bf16"])
    p.add_argument("--memory-format", type=lambda s: s.split(","), default=["contiguous", "channels_last"])
    p.add_argument("--compile", type=lambda s: s.split(","), default=["off", "on"])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    import torch

    env = environment(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        reason = f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
        (args.out / "gpu.json").write_text(json.dumps({"skipped": True, "reason": reason, "env": env}, indent=1),
                                           encoding="utf-8")
        (args.out / "summary.md").write_text(f"# GPU throughput and peak memory\n\nSkipped: {reason}. Nothing was "
                                             f"measured.\n\nCommand: `{env['command']}`\n", encoding="utf-8")
        print(f"skipped: {reason}")
        return
    rows = sweep(args, torch.device(args.device))
    (args.out / "gpu.json").write_text(json.dumps({"skipped": False, "env": env, "args": {
        k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1), encoding="utf-8")
    (args.out / "summary.md").write_text(markdown(rows, args, env), encoding="utf-8")
    print(markdown(rows, args, env))


if __name__ == "__main__":
    main()
