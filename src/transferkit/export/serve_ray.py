"""``transferkit serve --engine ray``: the same HTTP service on Ray Serve, in several replicas.

Each replica loads the predictor and builds the FastAPI app of :func:`~transferkit.export.serve.create_app`
(the same request schema, limits, validation and error answers); only the model call differs: the
requests a replica receives are gathered by Ray Serve's ``@serve.batch`` (up to ``max_batch`` requests,
waiting at most ``max_wait_ms`` after the first) and run as one ``predictor.outputs`` call off the event
loop, then split back per request. As with the micro-batcher, a batch that fails is rerun one request
at a time, so only the request at fault fails. Ray Serve's proxy spreads requests over the replicas and
answers 503 once ``max_queue`` requests wait.

Example:
    >>> url = serve_on_ray("runs/fmnist", replicas=2, port=8000)     # doctest: +SKIP
    >>> stop_serving()                                                 # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from transferkit.errors import check_range
from transferkit.export.ray_cluster import import_ray, init_ray

__all__ = ["APP_NAME", "serve_on_ray", "stop_serving"]

APP_NAME = "transferkit"


def _deployment(path: str, runtime: str, replicas: int, max_batch: int, max_wait_ms: float, max_queue: int,
                app_options: dict):
    """The Ray Serve deployment of the predictor at ``path``, bound and ready for ``serve.run``."""
    from ray import serve

    @serve.deployment(name=APP_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": 1},
                      max_ongoing_requests=max(2 * max_batch, 8), max_queued_requests=max_queue)
    @serve.ingress()
    class TransferkitModel:
        def __init__(self):
            from transferkit.export.serve import load_predictor

            self.predictor = load_predictor(path, runtime)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_wait_ms / 1000.0)
        async def batched(self, requests: list[list]) -> list:
            return await asyncio.get_running_loop().run_in_executor(None, _run_batch, self.predictor, requests)

        async def submit(self, items: list):
            outputs = await self.batched(items)
            if isinstance(outputs, BaseException):  # this request's own failure, rerun alone
                raise outputs
            return outputs

        def __serve_build_asgi_app__(self):
            from transferkit.export.serve import create_app

            return create_app(self.predictor, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                              submit=self.submit, **app_options)

    return TransferkitModel.bind()


def _run_batch(predictor, requests: list[list]) -> list:
    """One model call over every request's items, split back; after a failure, each request alone."""
    sizes = [len(r) for r in requests]
    try:
        outputs = predictor.outputs([item for r in requests for item in r])
    except Exception:  # noqa: BLE001  (the request at fault gets its error below; the others their outputs)
        return [_run_one(predictor, r) for r in requests]
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [outputs[a:b] for a, b in zip(starts, starts[1:])]


def _run_one(predictor, items: list):
    try:
        return predictor.outputs(items)
    except Exception as exc:  # noqa: BLE001  (returned, and raised to that request's caller by submit)
        return exc


def serve_on_ray(path: str | Path, *, runtime: str = "torch", replicas: int = 2, host: str = "127.0.0.1",
                 port: int = 8000, address: str | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, **app_options) -> str:
    """Serve the bundle (or ONNX export) at ``path`` on Ray Serve with ``replicas`` replicas; returns its URL.

    Args:
        path, runtime: what :func:`~transferkit.export.serve.load_predictor` loads in every replica.
        replicas: replicas of the model, each a Ray actor with one CPU.
        host, port: where Ray Serve's HTTP proxy listens.
        address: the Ray cluster (``None``: start a local Ray; ``auto``; ``ray://HOST:PORT``).
        max_batch, max_wait_ms: ``@serve.batch``'s batch size and wait.
        max_queue: requests waiting beyond it get 503.
        app_options: the other limits of :func:`~transferkit.export.serve.create_app` (``max_items``, ...).

    The predictor is loaded here first, so a bad bundle fails before Ray starts.
    """
    from transferkit.export.serve import RequestLimits, load_predictor

    check_range("serve_on_ray", "replicas", replicas, low=1, kind="an int")
    for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
        check_range("serve_on_ray", name, value, low=1, kind="an int")
    limits = {k: v for k, v in app_options.items() if k in RequestLimits.__dataclass_fields__}
    RequestLimits(**limits)  # bad limits: refused here, not in every replica
    load_predictor(path, runtime)
    if app_options.get("batching") is False:
        max_batch = 1
    init_ray(address)
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    serve.run(_deployment(str(Path(path).resolve()), runtime, replicas, max_batch, max_wait_ms, max_queue, app_options),
              name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def stop_serving(shutdown_ray: bool = True) -> None:
    """Shut Ray Serve down (the replicas finish their requests first), then Ray unless ``shutdown_ray=False``."""
    ray = import_ray()
    from ray import serve

    serve.shutdown()
    if shutdown_ray:
        ray.shutdown()
