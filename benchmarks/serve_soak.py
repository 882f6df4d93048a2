"""Soak test of ``transferkit serve``: 32 clients for a minute, valid and hostile requests mixed.

    python benchmarks/serve_soak.py [--seconds 60] [--clients 32] [--valid-fraction 0.6] [--seed 0]
        [--out benchmarks/results/serve_soak]

Fits a tiny real bundle first (``small-cnn:16`` fine-tuned 2 epochs on scikit-learn's
``digits``, 8x8 images), then starts the service in a subprocess on 127.0.0.1 (a
free port; loopback only) with the command's defaults but a 4 MiB body limit, and
runs ``--clients`` closed-loop clients (one httpx.AsyncClient each) for ``--seconds``.
Each request is drawn at random: with probability ``--valid-fraction`` a valid one
(1 to 4 base64 PNG test digits), else one of the hostile kinds below, each with the
status it must get. A separate client polls ``/health`` every 0.25 s throughout.

Reports throughput, p50/p99 latency (all requests, valid ones, ``/health``), counts
by status and by kind, whether every invalid request got a 4xx, and the server's
RSS after the warm-up, at the end (after the load stops) and its peak (sampled every
0.5 s). Targets: no 5xx, every invalid request a 4xx, RSS growth under 5%. Writes
``serve_soak.json`` and ``serve_soak.md``. Client and server share the machine's
cores: the throughput is a floor, not the service's capacity.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _loopback import free_port, png_b64, wait_until_healthy

OUT = Path(__file__).parent / "results" / "serve_soak"
JSON = {"content-type": "application/json"}
MAX_BODY_MB = 4.0


def build_bundle(out: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Fit the bundle to serve; return it with test images to send."""
    from transferkit.api import fit
    from transferkit.data import load_dataset

    train, test = load_dataset("digits")
    start = time.perf_counter()
    result = fit("small-cnn:16", train, "finetune", test_data=test, epochs=2, out=out, progress=False, report=False,
                 seed=seed)
    print(f"bundle: small-cnn:16 on digits, {time.perf_counter() - start:.1f} s, test accuracy "
          f"{result.metrics.get('accuracy', float('nan')):.3f}", flush=True)
    return out, np.asarray(test.items)[:64]




def hostile_requests() -> dict[str, tuple[dict, int]]:
    """Invalid requests by kind: (httpx keyword arguments, the status each must get)."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")  # 64 Mpx in 60 kB: over the 40 Mpx limit
    body = lambda obj: {"content": json.dumps(obj).encode(), "headers": JSON}  # noqa: E731
    return {
        "wrong types": (body({"inputs": [1, 2.5, None]}), 422),
        "too many items": (body({"inputs": ["x"] * 300}), 413),
        "a million numbers (2 MB)": ({"content": b'{"inputs": [' + b",".join([b"1"] * 1_000_000) + b"]}",
                                      "headers": JSON}, 413),
        "oversized body (5 MB)": ({"content": b"x" * 5_000_000, "headers": JSON}, 413),
        "bad base64": (body({"inputs": ["this is not base64!"]}), 422),
        "undecodable image": (body({"inputs": [base64.b64encode(os.urandom(300)).decode()]}), 422),
        "pixel bomb (8000x8000 PNG)": (body({"inputs": [base64.b64encode(bomb.getvalue()).decode()]}), 413),
        "unknown fields": (body({"inputs": ["x"], "top_k": 3, "temperature": 0.5}), 422),
        "malformed JSON": ({"content": b'{"inputs": ["iVBOR', "headers": JSON}, 400),
        "texts to an image model": (body({"texts": ["a digit"]}), 422),
        "wrong content type": ({"content": b"inputs=1", "headers": {"content-type": "text/plain"}}, 415),
        "multipart, not an image": ({"files": [("files", ("a.png", b"GIF89a broken", "image/png"))]}, 422),
    }



def serve_child(args) -> None:
    """The server process: ``benchmarks/serve_soak.py --child BUNDLE --port P``."""
    import uvicorn

    from transferkit.export.serve import create_app, load_predictor

    app = create_app(load_predictor(args.child), max_body_bytes=int(MAX_BODY_MB * 2**20))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def start_server(bundle: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(bundle), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url)
    return proc, url


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


async def soak(url: str, pid: int, valid: list[str], hostile: dict, args) -> dict:
    """``args.clients`` closed-loop clients for ``args.seconds``; returns every request's record and the samples."""
    import httpx

    rng = random.Random(args.seed)
    records, health, rss = [], [], []
    kinds = list(hostile)

    async def client(k: int, stop_at: float):
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as http:
            while time.perf_counter() < stop_at:
                if rng.random() < args.valid_fraction:
                    kind, expected = "valid", 200
                    kwargs = {"json": {"inputs": rng.sample(valid, rng.randint(1, 4))}}
                else:
                    kind = kinds[rng.randrange(len(kinds))]
                    kwargs, expected = hostile[kind]
                start = time.perf_counter()
                try:
                    status = (await http.post("/predict", **kwargs)).status_code
                except httpx.HTTPError as exc:  # a dropped connection counts as an error of its own
                    status = f"client error: {type(exc).__name__}"
                records.append({"kind": kind, "expected": expected, "status": status,
                                "seconds": time.perf_counter() - start})

    async def monitor(stop_at: float):
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as http:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                ok = (await http.get("/health")).status_code == 200
                health.append((time.perf_counter() - start, ok))
                rss.append(rss_mb(pid))
                await asyncio.sleep(0.25)

    warm_until = time.perf_counter() + 5  # warm-up: the same mix, not recorded
    await asyncio.gather(*(client(k, warm_until) for k in range(args.clients)))
    records.clear()
    await asyncio.sleep(1.0)
    rss_start = rss_mb(pid)
    start = time.perf_counter()
    stop_at = start + args.seconds
    await asyncio.gather(monitor(stop_at), *(client(k, stop_at) for k in range(args.clients)))
    elapsed = time.perf_counter() - start
    await asyncio.sleep(1.0)
    return {"records": records, "health": health, "rss": rss, "rss_start": rss_start, "rss_end": rss_mb(pid),
            "elapsed": elapsed}


def summarise(run: dict, stats: dict) -> dict:
    records, ms = run["records"], lambda xs, q: round(float(np.percentile(np.array(xs) * 1000, q)), 1)
    by_status, by_kind = {}, {}
    for r in records:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
        kind = by_kind.setdefault(r["kind"], {"expected": r["expected"], "statuses": {}})
        kind["statuses"][str(r["status"])] = kind["statuses"].get(str(r["status"]), 0) + 1
    valid = [r for r in records if r["kind"] == "valid"]
    invalid = [r for r in records if r["kind"] != "valid"]
    health = [s for s, _ in run["health"]]
    return {
        "seconds": round(run["elapsed"], 1), "requests": len(records), "requests_per_s": round(len(records) /
                                                                                                run["elapsed"], 1),
        "valid_requests": len(valid), "valid_per_s": round(len(valid) / run["elapsed"], 1),
        "p50_ms": ms([r["seconds"] for r in records], 50), "p99_ms": ms([r["seconds"] for r in records], 99),
        "valid_p50_ms": ms([r["seconds"] for r in valid], 50), "valid_p99_ms": ms([r["seconds"] for r in valid], 99),
        "health_p50_ms": ms(health, 50), "health_max_ms": round(max(health) * 1000, 1),
        "health_checks": len(health), "health_failures": sum(not ok for _, ok in run["health"]),
        "by_status": dict(sorted(by_status.items())), "by_kind": by_kind,
        "server_errors": sum(isinstance(r["status"], int) and r["status"] >= 500 for r in records),
        "client_errors": sum(not isinstance(r["status"], int) for r in records),
        "valid_not_200": sum(r["status"] != 200 for r in valid),
        "invalid_not_4xx": sum(not (isinstance(r["status"], int) and 400 <= r["status"] < 500) for r in invalid),
        "invalid_unexpected_status": sum(r["status"] != r["expected"] for r in invalid),
        "rss_start_mb": round(run["rss_start"], 1), "rss_end_mb": round(run["rss_end"], 1),
        "rss_peak_mb": round(max(run["rss"], default=float("nan")), 1),
        "rss_growth_pct": round(100 * (run["rss_end"] / run["rss_start"] - 1), 2),
        "rss_series_mb": [round(x, 1) for x in run["rss"][::20]],  # every 20th /health poll: about 6 s apart
        "server_counters": stats,
    }


def markdown(s: dict, env: dict) -> str:
    verdict = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [
        "# `transferkit serve` soak: valid and hostile requests mixed", "",
        f"{env['model']}; server: `create_app` defaults but max_body_bytes {MAX_BODY_MB:g} MiB, uvicorn "
        f"{env['uvicorn']}, one process. {env['clients']} closed-loop httpx clients for {s['seconds']} s after a "
        f"5 s warm-up; {env['valid_fraction']:.0%} valid requests (1 to 4 base64 PNG digits), the rest drawn "
        f"uniformly from {len(s['by_kind']) - 1} hostile kinds; /health polled every 0.25 s from the load "
        f"generator's own event loop (its latency includes that loop's turn). Client and server on "
        f"one machine: {env['cpus']} CPUs, torch {env['torch']}, Python {env['python']}; load average "
        f"{env['load_before']} before the run, {env['load_after']} after: {env['contention']}. "
        f"Command: `{env['command']}`", "",
        "| measure | value |", "| --- | ---: |",
        f"| requests (valid) | {s['requests']:,} ({s['valid_requests']:,}) |",
        f"| throughput, req/s (valid) | {s['requests_per_s']} ({s['valid_per_s']}) |",
        f"| latency p50 / p99, ms, all | {s['p50_ms']} / {s['p99_ms']} |",
        f"| latency p50 / p99, ms, valid | {s['valid_p50_ms']} / {s['valid_p99_ms']} |",
        f"| /health p50 / max, ms ({s['health_checks']} checks) | {s['health_p50_ms']} / {s['health_max_ms']} |",
        f"| responses by status | {', '.join(f'{k}: {v:,}' for k, v in s['by_status'].items())} |",
        f"| 5xx / client-side errors | {s['server_errors']} / {s['client_errors']} |",
        f"| valid requests not answered 200 | {s['valid_not_200']} |",
        f"| invalid requests not answered 4xx (not the expected status) | {s['invalid_not_4xx']} "
        f"({s['invalid_unexpected_status']}) |",
        f"| server RSS after warm-up / end / peak, MiB | {s['rss_start_mb']} / {s['rss_end_mb']} / "
        f"{s['rss_peak_mb']} |",
        f"| RSS growth (series, MiB) | {s['rss_growth_pct']:+.2f}% "
        f"({', '.join(f'{x:.0f}' for x in s['rss_series_mb'])}) |",
        f"| targets met: no 5xx, every invalid a 4xx, RSS growth < 5% | {verdict(s['server_errors'] == 0)}, "
        f"{verdict(s['invalid_not_4xx'] == 0)}, {verdict(s['rss_growth_pct'] < 5)} |",
        "", "| kind | expected | answered |", "| --- | ---: | --- |"]
    for kind, k in sorted(s["by_kind"].items()):
        answered = ", ".join(f"{status}: {n:,}" for status, n in sorted(k["statuses"].items()))
        lines.append(f"| {kind} | {k['expected']} | {answered} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--valid-fraction", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return serve_child(args)
    import httpx
    import torch
    import uvicorn

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="transferkit-serve-soak-") as tmp:
        os.environ.setdefault("TRANSFERKIT_CACHE", str(Path(tmp) / "feature-cache"))
        bundle, images = build_bundle(Path(tmp) / "bundle", args.seed)
        valid = [png_b64(im) for im in images]
        proc, url = start_server(bundle)
        try:
            run = asyncio.run(soak(url, proc.pid, valid, hostile_requests(), args))
            stats = httpx.get(f"{url}/metadata", timeout=30).json()["serving"]
        finally:
            proc.terminate()
            proc.wait(60)
    summary = summarise(run, stats)
    env = {"model": "small-cnn:16 fine-tuned 2 epochs on scikit-learn digits (8x8 images, resized to 16 px)",
           "clients": args.clients, "valid_fraction": args.valid_fraction, "cpus": os.cpu_count(),
           "torch": torch.__version__, "uvicorn": uvicorn.__version__, "python": sys.version.split()[0],
           "machine": platform.machine(), "load_before": round(load_before, 2),
           "load_after": round(os.getloadavg()[0], 2),
           "contention": ("shared with other CPU-heavy jobs running at the same time"
                          if load_before > 0.5 * (os.cpu_count() or 1) else "machine otherwise idle"),
           "command": " ".join(["python", *sys.argv])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_soak.json").write_text(json.dumps({**env, **summary}, indent=2))
    table = markdown(summary, env)
    (args.out / "serve_soak.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
