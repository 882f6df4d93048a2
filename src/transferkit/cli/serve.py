"""``transferkit serve``: an HTTP service for a bundle (or an ONNX export), with micro-batching."""
from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli.common import console, friendly_errors

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


@friendly_errors
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
    batching: bool = typer.Option(True, help="Gather concurrent requests into one model call."),
    log_level: str = typer.Option("info", help=f"uvicorn log level: {', '.join(LOG_LEVELS)}."),
) -> None:
    """Serve BUNDLE over HTTP: POST /predict, GET /health, GET /metadata, docs at /docs."""
    from transferkit.errors import ConfigError
    from transferkit.export.serve import create_app, load_predictor

    if log_level not in LOG_LEVELS:
        raise ConfigError(f"Unknown log level '{log_level}'. Available: {', '.join(LOG_LEVELS)}.")
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("Serving needs uvicorn: pip install 'transferkit[serve]'.") from None
    predictor = load_predictor(bundle, runtime)
    app = create_app(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_items=max_items,
                     max_body_bytes=int(max_body_mb * 2**20), batching=batching)
    console.print(f"serving [bold]{bundle}[/bold] ({predictor.task}, runtime {runtime}) on "
                  f"http://{host}:{port}  (API docs: http://{host}:{port}/docs)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
