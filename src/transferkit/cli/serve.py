"""``transferkit serve``: an HTTP service for a bundle (or an ONNX export), with micro-batching."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.common import ADDRESS_OPTION, console, examples

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=examples(
        'transferkit serve runs/fmnist --port 8000',
        'transferkit serve runs/fmnist-onnx --runtime onnx --max-batch 16',
        'transferkit serve runs/fmnist --engine ray --replicas 4'))(serve_command)


def serve_command(
    bundle: Path = typer.Argument(..., help="Bundle directory (torch runtime) or export directory written by "
                                            "`transferkit export` (onnx runtime)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the service to the network)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    runtime: str = typer.Option("torch", help="torch (the bundle) or onnx (an ONNX export directory)."),
    max_batch: int = typer.Option(32, help="Most items run in one model call."),
    max_wait_ms: float = typer.Option(5.0, help="How long a batch waits for more requests after its first."),
    max_items: int = typer.Option(256, help="Most items in one request (more: HTTP 413)."),
    max_body_mb: float = typer.Option(20.0, help="Largest request body in MiB (more: HTTP 413)."),
    max_text_chars: int = typer.Option(20_000, help="Longest text item (more: HTTP 413)."),
    max_queue: int = typer.Option(1024, help="Most items waiting for the model; past it requests get HTTP 503 "
                                             "with Retry-After."),
    request_timeout: float = typer.Option(30.0, help="Seconds one request may take (past it: HTTP 503); also how "
                                                     "long shutdown waits for the requests in flight."),
    batching: bool = typer.Option(True, help="Gather concurrent requests into one model call."),
    log_level: str = typer.Option("info", help=f"uvicorn log level: {', '.join(LOG_LEVELS)}."),
    engine: str = typer.Option("local", help="local (uvicorn in this process) or ray (Ray Serve, --replicas "
                                             "replicas, requests batched by @serve.batch).",
                               rich_help_panel="Scaling out"),
    replicas: int = typer.Option(1, help="With --engine ray: replicas of the model, one CPU each.",
                                 rich_help_panel="Scaling out"),
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Serve BUNDLE over HTTP: POST /predict, GET /health, GET /metadata, docs at /docs.

    Text-generation bundles also answer POST /predict/stream: one prompt's text as server-sent events.
    """
    from transferkit.errors import ConfigError
    from transferkit.export.serve import create_app, load_predictor
    from transferkit.workflows.engine import check_engine

    check_engine(engine, address)
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"Unknown log level '{log_level}'. Available: {', '.join(LOG_LEVELS)}.")
    if engine == "ray":
        return _serve_on_ray(bundle, host, port, runtime, replicas, address, max_batch, max_wait_ms, max_queue,
                             dict(max_items=max_items, max_body_bytes=int(max_body_mb * 2**20),
                                  max_text_chars=max_text_chars, request_timeout_s=request_timeout, batching=batching))
    if replicas != 1:
        raise ConfigError(f"--replicas {replicas} needs --engine ray: the local engine serves one replica.")
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("Serving needs uvicorn: pip install 'transferkit[serve]'.") from None
    predictor = load_predictor(bundle, runtime)
    app = create_app(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_items=max_items,
                     max_body_bytes=int(max_body_mb * 2**20), max_text_chars=max_text_chars, max_queue=max_queue,
                     request_timeout_s=request_timeout, batching=batching)
    console.print(f"serving [bold]{bundle}[/bold] ({predictor.task}, runtime {runtime}) on "
                  f"http://{host}:{port}  (API docs: http://{host}:{port}/docs)", highlight=False)
    # On Ctrl-C / SIGTERM uvicorn stops accepting, lets open requests finish (bounded by their deadline), then
    # the app drains its batcher.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(request_timeout) + 5)


def _serve_on_ray(bundle, host, port, runtime, replicas, address, max_batch, max_wait_ms, max_queue, options) -> None:
    """Ray Serve until Ctrl-C or SIGTERM, then a graceful shutdown."""
    import signal

    from transferkit.export.serve_ray import serve_on_ray, stop_serving

    def stop(signum, frame):
        raise KeyboardInterrupt


    url = serve_on_ray(bundle, runtime=runtime, replicas=replicas, host=host, port=port, address=address,
                       max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, **options)
    signal.signal(signal.SIGTERM, stop)  # after Ray's own handler: a service manager's stop shuts down as Ctrl-C does
    console.print(f"serving [bold]{bundle}[/bold] on Ray Serve, {replicas} replica(s), runtime {runtime}, on {url}  "
                  f"(API docs: {url}/docs); Ctrl-C stops it", highlight=False)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping: the replicas finish their requests first")
    finally:
        stop_serving()
