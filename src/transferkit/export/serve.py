"""The HTTP service behind ``transferkit serve``: FastAPI, with micro-batching.

Endpoints:

* ``POST /predict``: JSON ``{"inputs": [...]}`` (texts for text models,
  base64-encoded image files for image models, rows of numbers for tabular
  models; ``{"texts": [...]}`` and
  ``{"images": [...]}`` name the kind explicitly), or a multipart upload of
  image files in the ``files`` field. Returns ``{"predictions": [...]}``, one
  per item, in order: ``{"label", "probabilities"}`` (classification),
  ``{"labels", "probabilities"}`` (multi-label, labels over 0.5) or
  ``{"value"}`` (regression).
* ``POST /predict/stream`` (text-generation models): one prompt's generated text as server-sent
  events, piece by piece as it is made (:func:`add_stream_endpoint`).
* ``GET /health``: ``{"status": "ok"}``.
* ``GET /metadata``: labels, task, modality, backbone, strategy, metrics,
  limits, and the ``serving`` counters (requests, batches, items per batch).
* ``/openapi.json`` and ``/docs``: FastAPI's schema.

Micro-batching: each request is decoded and validated on its own first (base64,
image decoding, kinds, counts), so only valid items are queued. A single worker
task takes the first queued request, then gathers more until ``max_batch``
items or ``max_wait_ms`` after that first request arrived, and runs them as one
``predictor.outputs(...)`` call on the model thread (the event loop keeps
accepting meanwhile); results are split back per request. Should a batch still
fail, each of its requests is rerun alone, so only the request at fault fails.

Bad requests get a 4xx with a bounded message (400 malformed JSON, 413 over a
limit, 415 wrong content type, 422 everything else) and the service keeps
serving. The limits (:class:`RequestLimits`: body size, items, text length,
image pixels) are checked before the work they bound, and parsing and
validation run in a worker thread, so ``/health`` answers at once while a large
body is checked. Under overload the service answers 503 with ``Retry-After``:
when ``max_queue`` items already wait for the model, and when a request misses
its deadline (``request_timeout_s``). On shutdown (uvicorn stops accepting
connections and lets the open requests finish first) the batcher drains: new
requests get 503, accepted ones are answered.

The parts: :mod:`~transferkit.export.serve_requests` decodes and validates a
request, :mod:`~transferkit.export.serve_schemas` holds the pydantic models
(the request's is built per app, with its limits and examples),
:mod:`~transferkit.export.serve_batching` runs the micro-batches, and this
module loads the predictor and builds the app; the names of the parts are
re-exported here.

FastAPI, pydantic and uvicorn are imported inside functions: importing
transferkit never imports them. This module deliberately does not use
``from __future__ import annotations``: FastAPI reads the endpoint annotations
at runtime, and ``Request`` is imported inside :func:`create_app`.
"""
import dataclasses
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from transferkit import __version__
from transferkit.errors import ConfigError, TransferkitError, check_range
from transferkit.export.serve_batching import MicroBatcher, Overloaded, ServingStats
from transferkit.export.serve_requests import (
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    MAX_TEXT_CHARS,
    ModelInputs,
    RequestError,
    RequestLimits,
    check_count,
    check_texts,
    clip,
    decode_base64_image,
    image_from_bytes,
    items_from_json,
    read_items,
)
from transferkit.export.serve_schemas import request_examples, request_model, schemas

__all__ = [
    "DESCRIPTION", "IMAGE_FORMATS", "MAX_IMAGE_PIXELS", "MAX_REQUEST_PIXELS", "MAX_TEXT_CHARS", "RUNTIMES",
    "BodyLimit", "MicroBatcher", "ModelInputs", "Overloaded", "RequestError", "RequestLimits", "ServingStats",
    "check_count", "check_texts", "create_app", "decode_base64_image", "format_predictions", "image_from_bytes",
    "items_from_json", "load_predictor", "read_items", "request_examples", "request_model", "schemas",
]

log = logging.getLogger("transferkit.serve")

RUNTIMES = ("torch", "onnx")
DESCRIPTION = ("Predictions of a transferkit model. `POST /predict` takes JSON `{\"inputs\": [...]}` (texts, "
               "base64-encoded image files, or rows of numbers) or a multipart upload of image files in `files`; "
               "concurrent requests are micro-batched into one model call. A full queue or a missed deadline "
               "answers 503 with `Retry-After`.")


# ---------------------------------------------------------------- loading


def load_predictor(path: str | Path, runtime: str = "torch"):
    """The predictor to serve: a bundle (``torch``) or an ONNX export directory (``onnx``)."""
    if runtime == "torch":
        from transferkit.export.bundle import load

        return load(path)
    if runtime == "onnx":
        try:
            from transferkit.export.onnx_runtime import OnnxPredictor
        except ImportError as exc:
            if exc.name in ("onnx", "onnxruntime"):
                raise ConfigError(f"The onnx runtime needs {exc.name}: pip install 'transferkit[export]'.") from None
            raise
        return OnnxPredictor(path)
    raise ConfigError(f"Unknown runtime '{runtime}'. Available: {', '.join(RUNTIMES)}.")


# ---------------------------------------------------------------- body size


class BodyLimit:
    """ASGI middleware: 413 for a declared Content-Length over ``max_bytes``, and while reading a body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_error(send, 400, "Invalid Content-Length header.")
            if size > self.max_bytes:
                return await _send_error(send, 413, f"Request body of {size:,} bytes exceeds the limit of "
                                                    f"{self.max_bytes:,} bytes.")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestError(f"Request body exceeds the limit of {self.max_bytes:,} bytes.", 413)
            return message

        return await self.app(scope, limited_receive, send)


async def _send_error(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the app


def format_predictions(outputs, task: str, label_names, items=None) -> list[dict]:
    """One response record per item of ``outputs``: the task's :meth:`~transferkit.tasks.Task.records`
    (``items``: the request's raw items, for offsets into them)."""
    from transferkit.tasks import get_task

    return get_task(task).records(outputs, label_names, items)


def _predict_openapi(request_schema: dict, m) -> dict:
    files = {"type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}, "description": "Image files."}}}
    busy = {"model": m.ErrorResponse, "description": "Busy (the queue is full, or the request missed its "
                                                     "deadline) or shutting down: retry after Retry-After seconds",
            "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                        "schema": {"type": "integer"}}}}
    errors = {code: {"model": m.ErrorResponse, "description": text} for code, text in (
        (400, "Malformed JSON"), (413, "Over a limit: the body, the items, a text's length or an image's pixels"),
        (415, "Unsupported content type"), (422, "Wrong input kind, undecodable item, unknown field"))}
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema},
                                                           "multipart/form-data": {"schema": files}}}}
    return {"responses": {**errors, 503: busy}, "openapi_extra": extra}


def create_app(predictor, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_items: int = 256,
               max_body_bytes: int = 20 * 2**20, max_text_chars: int = MAX_TEXT_CHARS,
               max_image_pixels: int = MAX_IMAGE_PIXELS, max_request_pixels: int = MAX_REQUEST_PIXELS,
               max_queue: int = 1024, request_timeout_s: float = 30.0, batching: bool = True, submit=None):
    """A FastAPI app serving ``predictor`` (a :class:`~transferkit.export.bundle.Predictor` or ``OnnxPredictor``).

    Args:
        predictor: has ``outputs(items)``, ``label_names``, ``task`` and ``manifest``.
        max_batch: most items run in one model call.
        max_wait_ms: how long a batch waits for more requests after its first; 0 runs at once
            whatever queued while the model was busy (no added latency at low load).
        max_items: most items in one request (more: 413).
        max_body_bytes: largest request body (more: 413).
        max_text_chars: longest text item (more: 413).
        max_image_pixels: largest image, width x height read from its header before decoding (more: 413).
        max_request_pixels: most image pixels in one request, all its images together (more: 413).
        max_queue: most items accepted and not yet answered; a request beyond it gets 503 with
            ``Retry-After`` instead of a wait that grows without bound.
        request_timeout_s: deadline of one request, from reading its body to its answer (past it: 503
            with ``Retry-After``); also how long shutdown waits for accepted requests.
        batching: ``False`` runs each request as its own model call.
        submit: an async ``submit(items) -> outputs`` that runs the model instead of the micro-batcher
            (:mod:`~transferkit.export.serve_ray` passes Ray Serve's ``@serve.batch`` method); requests are
            read, validated, limited and answered as without it.

    The batcher and its counters are ``app.state.batcher`` and ``app.state.stats``.

    Example:
        >>> app = create_app(transferkit.load("runs/fmnist"))     # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)         # doctest: +SKIP
    """
    try:
        import anyio
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as exc:
        raise ConfigError(f"Serving needs {exc.name}: pip install 'transferkit[serve]'.") from None

    for name, value, low, low_open in (("max_batch", max_batch, 1, False), ("max_wait_ms", max_wait_ms, 0, False),
                                       ("max_queue", max_queue, 1, False),
                                       ("request_timeout_s", request_timeout_s, 0, True)):
        check_range("create_app", name, value, low=low, low_open=low_open)
    limits = RequestLimits(max_items, max_body_bytes, max_text_chars, max_image_pixels, max_request_pixels)
    manifest = predictor.manifest or {}
    spec = ModelInputs.from_manifest(manifest, getattr(predictor, "preprocess", None)
                                     or getattr(getattr(predictor, "model", None), "backbone", None))
    m, predict_request = schemas(), request_model(spec, limits)
    batcher = MicroBatcher(predictor.outputs, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0, enabled=batching,
                           max_queue=max_queue)
    settings = {**limits.to_dict(), "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue,
                "request_timeout_s": request_timeout_s, "batching": batching}

    @asynccontextmanager
    async def lifespan(app):
        batcher.open()
        yield
        # uvicorn has stopped accepting connections and let the open requests finish; drain what remains.
        await batcher.drain(timeout_s=request_timeout_s)

    app = FastAPI(title=f"transferkit: {_describe(manifest)['backbone'] or 'model'}", description=DESCRIPTION,
                  version=__version__, lifespan=lifespan)
    app.state.batcher, app.state.stats, app.state.predictor = batcher, batcher.stats, predictor
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.post("/predict", response_model=m.PredictResponse, **_predict_openapi(predict_request.model_json_schema(), m),
              summary="Predict labels or values for a list of items")
    async def predict(request: Request):
        batcher.check_capacity()  # full, or shutting down: 503 before the body is even read
        with anyio.move_on_after(request_timeout_s):
            items = await read_items(request, spec, limits, predict_request)
            outputs = await (submit or batcher.submit)(items)
            return {"predictions": format_predictions(outputs, predictor.task, predictor.label_names, items)}
        raise _missed_deadline(batcher, request_timeout_s)

    from transferkit.tasks import get_task

    if get_task(predictor.task).streams and hasattr(predictor, "stream"):
        add_stream_endpoint(app, predictor, spec, limits, batcher, request_timeout_s)

    @app.get("/health", response_model=m.Health, summary="Liveness")
    async def health():
        return {"status": "ok"}

    @app.get("/metadata", response_model=m.Metadata, summary="The served model and the serving counters")
    async def metadata():
        return {"task": predictor.task, "modality": spec.modality, "labels": predictor.label_names,
                **_describe(manifest), "predictor": type(predictor).__name__, "limits": settings,
                "serving": {**batcher.stats.to_dict(), "pending": batcher.pending}}

    @app.exception_handler(TransferkitError)  # RequestError, Overloaded, and the predictor's own DataError
    async def transferkit_error(request, exc: TransferkitError):
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Overloaded) else None
        return JSONResponse({"detail": getattr(exc, "detail", None) or clip(str(exc))},
                            status_code=getattr(exc, "status_code", 422), headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):  # last resort: logged, and the service keeps serving
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"Internal server error ({type(exc).__name__})."}, status_code=500)

    return app


def _sse(data: dict, event: str | None = None) -> str:
    """One server-sent event: an optional ``event:`` line and a JSON ``data:`` line."""
    import json

    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


def add_stream_endpoint(app, predictor, spec: ModelInputs, limits: RequestLimits, batcher: MicroBatcher,
                        request_timeout_s: float) -> None:
    """``POST /predict/stream``: one prompt's generated text as server-sent events, as it is made.

    The request is the one ``/predict`` takes, limited to one item, read and checked the same way: a bad
    request, a full queue or a missed deadline gets the same 4xx or 503 answer, before the stream starts. The
    generation runs on the model thread between micro-batches, as one pending item. Events: ``data:
    {"delta": text}`` for each new piece, then ``data: {"done": true, "text": answer}`` (the answer
    ``/predict`` gives); a failure after the stream began, or the request's deadline passing, ends it with
    ``event: error`` and ``data: {"detail": ...}``. A client that goes away stops the generation.
    """
    import anyio
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    async def events(first: tuple, rest, deadline: float):
        try:
            kind, value = first
            while kind == "piece":
                yield _sse({"delta": value})
                with anyio.move_on_after(max(deadline - anyio.current_time(), 0)) as scope:
                    kind, value = await anext(rest)
                if scope.cancelled_caught:
                    batcher.stats.timed_out += 1
                    yield _sse({"detail": f"The generation did not finish within the request timeout of "
                                          f"{request_timeout_s:g} s; the text so far was sent."}, "error")
                    return
            yield _sse({"done": True, "text": value})
        except TransferkitError as exc:
            yield _sse({"detail": clip(str(exc))}, "error")
        except Exception as exc:  # noqa: BLE001 - the status line is sent: the stream ends with an error event
            log.error("unexpected error while streaming", exc_info=exc)
            yield _sse({"detail": f"Internal server error ({type(exc).__name__})."}, "error")
        finally:
            await rest.aclose()

    ok = {"description": "Server-sent events: `data: {\"delta\": ...}` per new piece of text, then "
                         "`data: {\"done\": true, \"text\": ...}`; `event: error` ends a stream that failed "
                         "after it began.", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    one = dataclasses.replace(limits, max_items=1)
    stream_request = request_model(spec, one)
    openapi = _predict_openapi(stream_request.model_json_schema(), schemas())
    openapi["openapi_extra"]["requestBody"]["content"].pop("multipart/form-data")

    @app.post("/predict/stream", response_class=StreamingResponse, responses={200: ok, **openapi["responses"]},
              openapi_extra=openapi["openapi_extra"], summary="Generate text for one prompt, streamed as it is made")
    async def predict_stream(request: Request):
        batcher.check_capacity()
        deadline = anyio.current_time() + request_timeout_s
        with anyio.move_on_after(request_timeout_s):
            items = await read_items(request, spec, one, stream_request)
            rest = batcher.stream(lambda emit, cancel: predictor.stream(items[0], emit, cancel))
            first = await anext(rest)  # the first piece or the answer: errors before any text answer as /predict's
            return StreamingResponse(events(first, rest, deadline), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        raise _missed_deadline(batcher, request_timeout_s)


def _missed_deadline(batcher: MicroBatcher, request_timeout_s: float) -> Overloaded:
    """The 503 of a request that got no answer within its deadline (counted in the stats)."""
    batcher.stats.timed_out += 1
    return Overloaded(f"No answer within the request timeout of {request_timeout_s:g} s: the service is busy.",
                      batcher.retry_after_s())


def _describe(manifest: dict) -> dict:
    backbone, strategy = manifest.get("backbone"), manifest.get("strategy")
    return {"backbone": backbone.get("spec") if isinstance(backbone, dict) else manifest.get("backbone_spec"),
            "strategy": strategy.get("name") if isinstance(strategy, dict) else strategy,
            "metrics": manifest.get("metrics") or {}, "preprocess": manifest.get("preprocess") or {}}
