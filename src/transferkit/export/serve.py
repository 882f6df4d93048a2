"""The HTTP service behind ``transferkit serve``: FastAPI, with micro-batching.

Endpoints:

* ``POST /predict``: JSON ``{"inputs": [...]}`` (texts for text models,
  base64-encoded image files for image models; ``{"texts": [...]}`` and
  ``{"images": [...]}`` name the kind explicitly), or a multipart upload of
  image files in the ``files`` field. Returns ``{"predictions": [...]}``, one
  per item, in order: ``{"label", "probabilities"}`` (classification),
  ``{"labels", "probabilities"}`` (multi-label, labels over 0.5) or
  ``{"value"}`` (regression).
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

Bad requests get a 4xx with a message (400 malformed JSON, 413 too large,
415 wrong content type, 422 everything else) and the service keeps serving.

FastAPI, pydantic and uvicorn are imported inside functions: importing
transferkit never imports them. This module deliberately does not use
``from __future__ import annotations``: FastAPI reads the endpoint annotations
at runtime, and ``Request`` is imported inside :func:`create_app`.
"""
import asyncio
import base64
import binascii
import functools
import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit import __version__
from transferkit.errors import ConfigError, DataError, TransferkitError, check_range

log = logging.getLogger("transferkit.serve")

RUNTIMES = ("torch", "onnx")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
#: Refuse images larger than this before decoding them (a small PNG can decode to gigabytes).
MAX_IMAGE_PIXELS = 40_000_000
_IMAGE_PREFIXES = ("iVBORw0KGgo", "/9j/", "data:image/")  # base64 of the PNG / JPEG signatures
DESCRIPTION = ("Predictions of a transferkit model. `POST /predict` takes JSON `{\"inputs\": [...]}` (texts, or "
               "base64-encoded image files) or a multipart upload of image files in `files`; concurrent "
               "requests are micro-batched into one model call.")


class RequestError(DataError):
    """A bad request: the message says what was wrong; ``status_code`` is its HTTP status."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


# ---------------------------------------------------------------- loading


def load_predictor(path: str | Path, runtime: str = "torch"):
    """The predictor to serve: a bundle (``torch``) or an ONNX export directory (``onnx``)."""
    if runtime == "torch":
        from transferkit.export.bundle import load

        return load(path)
    if runtime == "onnx":
        try:
            from transferkit.export.onnx_export import OnnxPredictor
        except ImportError as exc:
            if exc.name in ("onnx", "onnxruntime"):
                raise ConfigError(f"The onnx runtime needs {exc.name}: pip install 'transferkit[export]'.") from None
            raise
        return OnnxPredictor(path)
    raise ConfigError(f"Unknown runtime '{runtime}'. Available: {', '.join(RUNTIMES)}.")


@dataclass(frozen=True)
class ModelInputs:
    """What a served model takes, read from its manifest."""

    modality: str
    image_size: int | None = None
    interpolation: str = "bilinear"

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ModelInputs":
        pre = manifest.get("preprocess") or {}
        modality = manifest.get("modality") or pre.get("kind")
        if modality not in ("image", "text"):
            raise ConfigError(f"Cannot serve a model of modality {modality!r}: the service takes image and text models.")
        size = pre.get("size") if modality == "image" else None
        return cls(modality, int(size) if size else None, pre.get("interpolation", "bilinear"))


# ---------------------------------------------------------------- decoding and validating one request


def check_count(n: int, max_items: int) -> None:
    if n == 0:
        raise RequestError("No inputs: send at least one item.")
    if n > max_items:
        raise RequestError(f"{n} items in one request exceeds the limit of {max_items}; split the request.", 413)


def image_from_bytes(raw: bytes, where: str, spec: ModelInputs) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]``, resized to the model's input size.

    Resizing here (as the model's own preprocessing would, with the same
    interpolation) keeps queued items small; the model's resize is then a no-op.
    """
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise RequestError(f"{where} is empty; send an image file ({', '.join(IMAGE_FORMATS[:2])}).")
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise RequestError(f"{where} is {im.width}x{im.height} pixels, over the limit of "
                                   f"{MAX_IMAGE_PIXELS:,} pixels.", 413)
            im.verify()
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            rgb = im.convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(f"{where} is not an image file in a supported format ({', '.join(IMAGE_FORMATS)}); "
                           "this model expects image files.") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes make PIL raise many types (OSError, SyntaxError, ...)
        raise RequestError(f"{where} cannot be decoded as an image ({type(exc).__name__}: {exc}); this model "
                           f"expects image files ({', '.join(IMAGE_FORMATS)}).") from None
    if spec.image_size:
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
        rgb = rgb.resize((spec.image_size, spec.image_size), resample.get(spec.interpolation, Image.BILINEAR))
    return np.asarray(rgb, dtype=np.uint8)


def decode_base64_image(text: str, index: int, spec: ModelInputs) -> np.ndarray:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) to a uint8 RGB array."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"Item {index} is not valid base64 ({exc}); this model expects image files "
                           "(PNG, JPEG) encoded as base64, not texts.") from None
    return image_from_bytes(raw, f"Item {index}", spec)


def check_texts(texts: Sequence[str]) -> list[str]:
    for i, t in enumerate(texts):
        if len(t) > 64 and t.startswith(_IMAGE_PREFIXES):
            raise RequestError(f"Item {i} looks like a base64-encoded image; this model expects texts.")
    return list(texts)


def items_from_json(parsed, spec: ModelInputs, max_items: int) -> list:
    """Validated model items from a parsed ``PredictRequest``."""
    given = {k: v for k, v in (("inputs", parsed.inputs), ("texts", parsed.texts), ("images", parsed.images))
             if v is not None}
    key, values = next(iter(given.items()))
    if key == "texts" and spec.modality == "image":
        raise RequestError("This model takes images, not texts: send base64-encoded image files in 'inputs' "
                           "or 'images', or upload them as multipart 'files'.")
    if key == "images" and spec.modality == "text":
        raise RequestError("This model takes texts, not images: send strings in 'inputs' or 'texts'.")
    check_count(len(values), max_items)
    if spec.modality == "text":
        return check_texts(values)
    return [decode_base64_image(v, i, spec) for i, v in enumerate(values)]


def format_predictions(outputs: np.ndarray, task: str, label_names: Sequence[str] | None) -> list[dict]:
    """One response record per row of ``outputs`` (see the module docstring)."""
    outputs = np.asarray(outputs)
    if task == "regression":
        return [{"value": float(v)} for v in outputs.reshape(len(outputs))]
    names = list(label_names) if label_names else [str(j) for j in range(outputs.shape[1])]
    records = []
    for row in outputs:
        probs = {n: float(p) for n, p in zip(names, row)}
        if task == "multilabel":
            records.append({"labels": [n for n, p in zip(names, row) if p > 0.5], "probabilities": probs})
        else:
            records.append({"label": names[int(np.argmax(row))], "probabilities": probs})
    return records


# ---------------------------------------------------------------- micro-batching


@dataclass
class ServingStats:
    """Counters of what the model thread ran; ``batch_sizes`` maps items per batch to batch count."""

    requests: int = 0
    batches: int = 0
    items: int = 0
    failed_batches: int = 0
    model_seconds: float = 0.0
    batch_sizes: Counter = field(default_factory=Counter)

    def record(self, requests: int, items: int, seconds: float) -> None:
        self.requests += requests
        self.batches += 1
        self.items += items
        self.model_seconds += seconds
        self.batch_sizes[items] += 1

    def to_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "items": self.items,
                "failed_batches": self.failed_batches, "model_seconds": round(self.model_seconds, 4),
                "mean_items_per_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                "max_items_per_batch": max(self.batch_sizes, default=0),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


@dataclass
class _Job:
    items: list
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Runs ``run(items) -> outputs`` on one model thread, gathering concurrent requests into batches.

    Args:
        run: the model call, e.g. ``predictor.outputs``; rows of its result follow ``items``.
        max_batch: most items in one call (a larger request runs as a batch of its own).
        max_wait_s: how long after the first queued request to wait for more.
        enabled: ``False`` runs every request as its own call (the baseline to compare with).
    """

    def __init__(self, run: Callable[[list], np.ndarray], *, max_batch: int = 32, max_wait_s: float = 0.005,
                 enabled: bool = True):
        self.run, self.max_batch, self.max_wait_s, self.enabled = run, max_batch, max_wait_s, enabled
        self.stats = ServingStats()
        # One model thread: the model sees one call at a time (tokenizers and some runtimes are not
        # re-entrant), and its own intra-op threads use the cores.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="transferkit-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, items: list) -> np.ndarray:
        """The outputs of ``items`` (validated already), computed alone or with other requests."""
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), loop.time())
        if not self.enabled:
            await self._run_jobs([job])
        else:
            self._ensure_worker(loop)
            self._queue.put_nowait(job)
        return await job.future

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        # Started lazily in the serving loop (ASGI transports without lifespan events work too).
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work(), name="transferkit-batcher")

    async def stop(self) -> None:
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None

    async def _work(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry or await self._queue.get()
            jobs, carry = await self._gather(first)
            live = [j for j in jobs if not j.future.done()]  # a client that went away is skipped
            if live:
                try:
                    await self._run_jobs(live)
                except Exception as exc:  # never let the worker die; fail this batch only
                    log.exception("micro-batch worker error")
                    for j in live:
                        if not j.future.done():
                            j.future.set_exception(exc)

    async def _gather(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """Jobs for one batch, and the job that did not fit (the first of the next batch)."""
        loop = asyncio.get_running_loop()
        jobs, n = [first], len(first.items)
        deadline = first.arrived + self.max_wait_s
        while n < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if n + len(job.items) > self.max_batch:
                return jobs, job
            jobs.append(job)
            n += len(job.items)
        return jobs, None

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        items = [it for j in jobs for it in j.items]
        start = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._call, items)
        except Exception as exc:  # noqa: BLE001 - isolate the request at fault, then report its error
            self.stats.failed_batches += 1
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(exc)
                return
            for job in jobs:
                await self._run_jobs([job])
            return
        self.stats.record(len(jobs), len(items), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(outputs[offset:offset + len(job.items)])
            offset += len(job.items)

    def _call(self, items: list) -> np.ndarray:
        outputs = np.asarray(self.run(items))
        if len(outputs) != len(items):
            raise RuntimeError(f"The predictor returned {len(outputs)} rows for {len(items)} items.")
        return outputs


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


# ---------------------------------------------------------------- schemas


@functools.cache
def schemas():
    """The pydantic request/response models (built on first use: pydantic is an optional dependency)."""
    from types import SimpleNamespace
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class PredictRequest(BaseModel):
        """Give exactly one of ``inputs``, ``texts`` or ``images``."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
            {"inputs": ["a puzzle game with levels"]}, {"images": ["iVBORw0KGgoAAAANSUhEUgAA..."]}]})
        inputs: list[str] | None = Field(None, description="Texts (text models) or base64-encoded image "
                                                           "files, PNG or JPEG (image models).")
        texts: list[str] | None = Field(None, description="Texts, for text models.")
        images: list[str] | None = Field(None, description="Base64-encoded image files (PNG, JPEG; a "
                                                           "data:image/...;base64, URL works too).")

        @model_validator(mode="after")
        def _exactly_one(self):
            given = [k for k in ("inputs", "texts", "images") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of 'inputs', 'texts' or 'images' (a list of items); "
                                 f"got {', '.join(given) if given else 'none'}")
            return self

    class ClassPrediction(BaseModel):
        label: str = Field(description="The most probable class.")
        probabilities: dict[str, float] = Field(description="Probability of every class.")

    class MultilabelPrediction(BaseModel):
        labels: list[str] = Field(description="Labels with probability over 0.5.")
        probabilities: dict[str, float] = Field(description="Probability of every label (sigmoid).")

    class RegressionPrediction(BaseModel):
        value: float

    class PredictResponse(BaseModel):
        predictions: list[ClassPrediction | MultilabelPrediction | RegressionPrediction] = Field(
            description="One per input item, in order.")

    class Health(BaseModel):
        status: Literal["ok"] = "ok"

    class Metadata(BaseModel):
        task: str
        modality: str
        labels: list[str] | None
        backbone: str | None = Field(description="Backbone spec.")
        strategy: str | None
        metrics: dict[str, Any]
        preprocess: dict[str, Any]
        predictor: str = Field(description="Predictor class (runtime).")
        limits: dict[str, Any]
        serving: dict[str, Any] = Field(description="Requests, batches and items run so far.")

    class ErrorResponse(BaseModel):
        detail: Any = Field(description="What was wrong with the request.")

    return SimpleNamespace(**{c.__name__: c for c in (PredictRequest, ClassPrediction, MultilabelPrediction,
                                                       RegressionPrediction, PredictResponse, Health, Metadata,
                                                       ErrorResponse)})


def _request_body_openapi(m) -> dict:
    files = {"type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}, "description": "Image files."}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": m.PredictRequest.model_json_schema()},
        "multipart/form-data": {"schema": files}}}}


# ---------------------------------------------------------------- the app


def create_app(predictor, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_items: int = 256,
               max_body_bytes: int = 20 * 2**20, batching: bool = True):
    """A FastAPI app serving ``predictor`` (a :class:`~transferkit.export.bundle.Predictor` or ``OnnxPredictor``).

    Args:
        predictor: has ``outputs(items)``, ``label_names``, ``task`` and ``manifest``.
        max_batch: most items run in one model call.
        max_wait_ms: how long a batch waits for more requests after its first; 0 runs at once
            whatever queued while the model was busy (no added latency at low load).
        max_items: most items in one request (more: 413).
        max_body_bytes: largest request body (more: 413).
        batching: ``False`` runs each request as its own model call.

    The batcher and its counters are ``app.state.batcher`` and ``app.state.stats``.

    Example:
        >>> app = create_app(transferkit.load("runs/fmnist"))     # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)         # doctest: +SKIP
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
    except ImportError as exc:
        raise ConfigError(f"Serving needs {exc.name}: pip install 'transferkit[serve]'.") from None

    for name, value, low in (("max_batch", max_batch, 1), ("max_items", max_items, 1),
                             ("max_body_bytes", max_body_bytes, 1), ("max_wait_ms", max_wait_ms, 0)):
        check_range("create_app", name, value, low=low)
    manifest = predictor.manifest or {}
    spec = ModelInputs.from_manifest(manifest)
    m = schemas()
    batcher = MicroBatcher(predictor.outputs, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0, enabled=batching)
    limits = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_items": max_items,
              "max_body_bytes": max_body_bytes, "batching": batching}

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.stop()

    app = FastAPI(title=f"transferkit: {_describe(manifest)['backbone'] or 'model'}", description=DESCRIPTION,
                  version=__version__, lifespan=lifespan)
    app.state.batcher, app.state.stats, app.state.predictor = batcher, batcher.stats, predictor
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    errors = {code: {"model": m.ErrorResponse, "description": text} for code, text in (
        (400, "Malformed JSON"), (413, "Too many items, a body or an image over the limits"),
        (415, "Unsupported content type"), (422, "Wrong input kind, undecodable item, unknown field"))}

    @app.post("/predict", response_model=m.PredictResponse, responses=errors,
              openapi_extra=_request_body_openapi(m), summary="Predict labels or values for a list of items")
    async def predict(request: Request):
        outputs = await batcher.submit(await read_items(request, spec, max_items, max_body_bytes))
        return {"predictions": format_predictions(outputs, predictor.task, predictor.label_names)}

    @app.get("/health", response_model=m.Health, summary="Liveness")
    async def health():
        return {"status": "ok"}

    @app.get("/metadata", response_model=m.Metadata, summary="The served model and the serving counters")
    async def metadata():
        return {"task": predictor.task, "modality": spec.modality, "labels": predictor.label_names,
                **_describe(manifest), "predictor": type(predictor).__name__, "limits": limits,
                "serving": batcher.stats.to_dict()}

    @app.exception_handler(TransferkitError)  # RequestError, and the predictor's own DataError
    async def transferkit_error(request, exc: TransferkitError):
        return JSONResponse({"detail": str(exc)}, status_code=getattr(exc, "status_code", 422))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):  # last resort: logged, and the service keeps serving
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"Internal server error ({type(exc).__name__})."}, status_code=500)

    return app


def _describe(manifest: dict) -> dict:
    backbone, strategy = manifest.get("backbone"), manifest.get("strategy")
    return {"backbone": backbone.get("spec") if isinstance(backbone, dict) else manifest.get("backbone_spec"),
            "strategy": strategy.get("name") if isinstance(strategy, dict) else strategy,
            "metrics": manifest.get("metrics") or {}, "preprocess": manifest.get("preprocess") or {}}


async def read_items(request, spec: ModelInputs, max_items: int, max_body_bytes: int) -> list:
    """The request's validated model items (texts, or uint8 RGB arrays), from JSON or multipart."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart_items(request, spec, max_items, max_body_bytes)
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise RequestError(f"Unsupported content type '{ctype}': send application/json "
                           "({\"inputs\": [...]}) or multipart/form-data with image files in 'files'.", 415)
    body = await request.body()
    try:
        parsed = schemas().PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        bad_json = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if bad_json or not body:
            raise RequestError(f"Malformed JSON body: {bad_json[0]['msg'] if bad_json else 'empty'}. "
                               "Send {\"inputs\": [...]}.", 400) from None
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in details]) from None
    # Decoding images is CPU work: off the event loop, which keeps accepting requests.
    return await run_in_threadpool(items_from_json, parsed, spec, max_items)


async def _multipart_items(request, spec: ModelInputs, max_items: int, max_body_bytes: int) -> list:
    """Image files uploaded in the multipart field ``files``."""
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    if spec.modality != "image":
        raise RequestError("This model takes texts, not uploaded files: send JSON {\"inputs\": [\"...\"]}.")
    try:
        form = await request.form(max_files=max_items, max_fields=max_items, max_part_size=max_body_bytes)
    except HTTPException as exc:  # starlette's multipart errors
        if "Too many files" in str(exc.detail):
            raise RequestError(f"More than {max_items} files in one request exceeds the limit of {max_items}; "
                               "split the request.", 413) from None
        raise RequestError(f"Malformed multipart body: {exc.detail}", 400) from None
    try:
        unknown = sorted(set(form.keys()) - {"files"})
        if unknown:
            raise RequestError(f"Unknown form field(s) {', '.join(map(repr, unknown))}: upload image files in 'files'.")
        uploads = form.getlist("files")
        check_count(len(uploads), max_items)
        raws = []
        for i, up in enumerate(uploads):
            if not isinstance(up, UploadFile):
                raise RequestError(f"Item {i} of 'files' is a text field, not a file upload.")
            raws.append((await up.read(), f"File {i} ({up.filename!r})"))
    finally:
        await form.close()
    return await run_in_threadpool(lambda: [image_from_bytes(raw, where, spec) for raw, where in raws])
