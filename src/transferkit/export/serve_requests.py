"""Decoding and validating one ``POST /predict`` request of :mod:`transferkit.export.serve`.

Each request is decoded and validated on its own (content type, JSON schema,
base64, image decoding, input kinds, item counts) before anything is queued,
so only valid items reach the micro-batcher. A bad request raises
:class:`RequestError`, whose ``status_code`` is the HTTP status the service
answers with (400 malformed JSON, 413 too large, 415 wrong content type, 422
everything else).

FastAPI, starlette and pydantic are imported inside functions; the pydantic
request and response models are built on first use by :func:`schemas`. Like
:mod:`transferkit.export.serve`, this module does not use
``from __future__ import annotations``: pydantic reads the annotations of the
models built in :func:`schemas` at runtime.
"""
import base64
import binascii
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, DataError

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
#: Refuse images larger than this before decoding them (a small PNG can decode to gigabytes).
MAX_IMAGE_PIXELS = 40_000_000
_IMAGE_PREFIXES = ("iVBORw0KGgo", "/9j/", "data:image/")  # base64 of the PNG / JPEG signatures


class RequestError(DataError):
    """A bad request: the message says what was wrong; ``status_code`` is its HTTP status."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


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
    """One response record per item of ``outputs``: the task's :meth:`~transferkit.tasks.Task.records`."""
    from transferkit.tasks import get_task

    return get_task(task).records(outputs, label_names)


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


# ---------------------------------------------------------------- reading a request


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
