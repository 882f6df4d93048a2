"""Throughput and latency of ``transferkit serve`` with micro-batching on and off.

    python benchmarks/serve.py [--data fashion-mnist] [--concurrency 1 8 32] [--client httpx raw]
        [--requests-per-client 12] [--max-seconds 15] [--max-batch 32] [--max-wait-ms 5]
        [--out benchmarks/results/serve]

Trains a small real bundle first (EfficientNet-Lite0 linear probe at 64 px on
20 labelled images per class of ``--data``; falls back to ``digits`` when the
Fashion-MNIST files are absent), then starts the service twice, batching on
and off, each in a subprocess on 127.0.0.1 (a free port; loopback only), and sends
``max(40, requests-per-client x clients)`` requests from 1, 8 and 32 concurrent
closed-loop clients, one base64 PNG test image per request, each configuration
capped at ``--max-seconds``, after a warm-up of two requests per client; on
and off run back to back for each setting.

Two load generators: ``httpx`` (one httpx.AsyncClient per client, what users would run)
and ``raw`` (HTTP/1.1 written by hand on keep-alive sockets). The client runs in
this process and shares the cores with the server, so its own CPU cost per
request (recorded, with the server's) bounds what can be measured: the raw
client costs about a tenth of httpx's. Measures requests/s (= items/s),
p50/p99 latency, errors, and the server's own batch counters from
``/metadata``. Writes ``serve.json`` and ``serve.md`` (the on/off ratio per
client and concurrency).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import numpy as np

from _loopback import free_port, png_b64, wait_until_healthy

OUT = Path(__file__).parent / "results" / "serve"
JSON = {"content-type": "application/json"}


def build_bundle(data: str, out: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Fit the bundle to serve; return it with test images to send."""
    from transferkit.api import fit
    from transferkit.data import load_dataset
    from transferkit.errors import DataError

    try:
        train, test = load_dataset(data)
    except (DataError, OSError) as exc:
        print(f"{data} unavailable ({exc}); using digits", flush=True)
        data, (train, test) = "digits", load_dataset("digits")
    start = time.perf_counter()
    result = fit("efficientnet-lite:0", train, "linear-probe", test_data=test, labels_per_class=20, max_test=200,
                 image_size=64, out=out, progress=False, report=False, seed=seed)
    print(f"bundle: linear probe on {data}, {time.perf_counter() - start:.1f} s, "
          f"test accuracy {result.metrics.get('accuracy', float('nan')):.3f}", flush=True)
    rng = np.random.default_rng(seed)
    return out, np.asarray(test.items)[rng.choice(len(test), 64, replace=False)]





def serve_child(args) -> None:
    """The server process: ``benchmarks/serve.py --child BUNDLE --port P --batching on|off``."""
    import uvicorn

    from transferkit.export.serve import create_app, load_predictor

    app = create_app(load_predictor(args.child), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     batching=args.batching == "on")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def start_server(bundle: Path, batching: bool, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--child", str(bundle), "--port", str(port), "--batching",
           "on" if batching else "off", "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url)
    return proc, url


@asynccontextmanager
async def senders(kind: str, url: str, clients: int):
    """One ``post(body) -> status`` per client: its own httpx.AsyncClient, or its own raw keep-alive socket.

    The raw client writes HTTP/1.1 by hand: it costs the load generator far less
    CPU per request than httpx, which matters when client and server share cores.
    """
    if kind == "httpx":
        import httpx

        # One client (one connection) per simulated user: a single AsyncClient shared by 32 tasks spends
        # about 5 ms of CPU per request in its connection pool here, and stalls some requests for ~1 s.
        async with AsyncExitStack() as stack:
            pool = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60.0))
                    for _ in range(clients)]

            def httpx_post(client):
                async def post(body: bytes) -> int:
                    return (await client.post("/predict", content=body, headers=JSON)).status_code

                return post

            yield [httpx_post(c) for c in pool]
        return
    host, port = url.removeprefix("http://").split(":")
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]

    def raw_post(reader, writer):
        async def post(body: bytes) -> int:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)))
            return int(head.split(b" ", 2)[1])

        return post

    try:
        yield [raw_post(r, w) for r, w in conns]
    finally:
        for _, w in conns:
            w.close()


async def load(url: str, bodies: list[bytes], clients: int, n_requests: int, max_seconds: float,
               kind: str = "httpx", server_pid: int | None = None) -> dict:
    """``clients`` closed-loop clients send ``n_requests`` in all (or stop at ``max_seconds``)."""
    latencies, statuses, sent = [], [], [0]

    async def run_client(post, k: int, count: int, stop_at: float, record: bool):
        for i in range(count):
            if record and (sent[0] >= n_requests or time.perf_counter() > stop_at):
                return
            sent[0] += record
            t0 = time.perf_counter()
            status = await post(bodies[(k * 7 + i) % len(bodies)])
            if record:
                latencies.append(time.perf_counter() - t0)
                statuses.append(status)

    async with senders(kind, url, clients) as posts:
        far = time.perf_counter() + 600
        await asyncio.gather(*(run_client(p, k, 2, far, False) for k, p in enumerate(posts)))  # warm-up
        before = await serving_stats(url)
        cpu, server_cpu = time.process_time(), process_cpu(server_pid)
        start = time.perf_counter()
        stop_at = start + max_seconds
        await asyncio.gather(*(run_client(p, k, n_requests, stop_at, True) for k, p in enumerate(posts)))
        elapsed = time.perf_counter() - start
        cpu, server_cpu = time.process_time() - cpu, process_cpu(server_pid) - server_cpu
        after = await serving_stats(url)
    lat = np.array(latencies) * 1000
    ok = sum(s == 200 for s in statuses)
    batches, items = after["batches"] - before["batches"], after["items"] - before["items"]
    return {"requests": len(statuses), "ok": ok, "errors": len(statuses) - ok,
            "server_errors": sum(s >= 500 for s in statuses), "seconds": round(elapsed, 3),
            "requests_per_s": round(ok / elapsed, 2), "items_per_s": round(ok / elapsed, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "batches": batches, "mean_items_per_batch": round(items / max(1, batches), 2),
            "client_cpu_ms_per_request": round(1000 * cpu / max(1, len(statuses)), 2),
            "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, len(statuses)), 2)}


async def serving_stats(url: str) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url) as client:
        return (await client.get("/metadata")).json()["serving"]


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def markdown(rows: list[dict], env: dict) -> str:
    setup = (f"{env['model']}; one {env['image']} PNG per request (base64 JSON); max_batch {env['max_batch']}, "
             f"max_wait_ms {env['max_wait_ms']}. Server (uvicorn {env['uvicorn']}, one process) and load "
             f"generator on one machine: {env['cpus']} CPUs, torch {env['torch']}; load average "
             f"{env['load_before']} before the run: {env['contention']}. Command: `{env['command']}`")
    clients = ("`httpx`: one httpx.AsyncClient per client, as users would run; `raw`: hand-written HTTP/1.1 on "
               "keep-alive sockets, a cheaper load generator (see the client CPU column). "
               "Items per batch: mean over the measured requests with batching on.")
    header = ("| client | clients | req/s on | req/s off | ratio on/off | p50 ms on / off | p99 ms on / off | "
              "items per batch | client CPU ms/req | server CPU ms/req on / off | errors on / off |")
    lines = ["# `transferkit serve`: micro-batching on vs off", "", setup, "", clients, "", header,
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for on in (r for r in rows if r["batching"]):
        off = next(r for r in rows if not r["batching"] and r["client"] == on["client"]
                   and r["clients"] == on["clients"])
        lines.append(f"| {on['client']} | {on['clients']} | {on['requests_per_s']:.1f} | {off['requests_per_s']:.1f} | "
                     f"{on['ratio_on_off']:.2f} | {on['p50_ms']:.0f} / {off['p50_ms']:.0f} | "
                     f"{on['p99_ms']:.0f} / {off['p99_ms']:.0f} | {on['mean_items_per_batch']:.1f} | "
                     f"{on['client_cpu_ms_per_request']:.1f} | {on['server_cpu_ms_per_request']:.1f} / "
                     f"{off['server_cpu_ms_per_request']:.1f} | {on['errors']} / {off['errors']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--client", nargs="+", choices=("httpx", "raw"), default=["httpx", "raw"])
    ap.add_argument("--requests-per-client", type=int, default=12)
    ap.add_argument("--max-seconds", type=float, default=15.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batching", choices=("on", "off"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return serve_child(args)
    import torch
    import uvicorn

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="transferkit-serve-bench-") as tmp:
        os.environ.setdefault("TRANSFERKIT_CACHE", str(Path(tmp) / "feature-cache"))
        bundle, images = build_bundle(args.data, Path(tmp) / "bundle", args.seed)
        bodies = [json.dumps({"inputs": [png_b64(im)]}).encode() for im in images]
        rows, servers = [], {}
        try:  # both servers up at once, on and off measured back to back: drifting contention hits both alike
            for batching in (True, False):
                servers[batching] = start_server(bundle, batching, args)
            for kind in args.client:
                for clients in args.concurrency:
                    for batching, (proc, url) in servers.items():
                        n = max(40, args.requests_per_client * clients)
                        row = {"batching": batching, "client": kind, "clients": clients,
                               **asyncio.run(load(url, bodies, clients, n, args.max_seconds, kind, proc.pid))}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    for on in (r for r in rows if r["batching"]):
        off = next(r for r in rows if not r["batching"] and r["client"] == on["client"]
                   and r["clients"] == on["clients"])
        on["ratio_on_off"] = round(on["requests_per_s"] / off["requests_per_s"], 3)
    env = {"model": "EfficientNet-Lite0 linear probe at 64 px (20 labelled images per class)",
           "image": f"{images.shape[1]}x{images.shape[2]} {args.data}", "max_batch": args.max_batch,
           "max_wait_ms": args.max_wait_ms, "cpus": os.cpu_count(), "torch": torch.__version__,
           "uvicorn": uvicorn.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
           "contention": ("shared with another CPU-heavy benchmark running at the same time"
                          if load_before > 0.5 * (os.cpu_count() or 1) else "machine otherwise idle"),
           "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps({**env, "results": rows}, indent=2))
    table = markdown(rows, env)
    (args.out / "serve.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
