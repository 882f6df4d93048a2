"""Decoding and validating one ``POST /predict`` request of :mod:`transferkit.export.serve`.

Each request is decoded and validated on its own (content type, JSON schema,
base64, image decoding, input kinds, item counts) before anything is queued,
so only valid items reach the micro-batcher. A bad request raises
:class:`RequestError`, whose ``status_code`` is the HTTP status the service
answers with (400 malformed JSON, 413 over a limit, 415 wrong content type,
422 everything else).

Limits (:class:`RequestLimits`) are checked before the work they bound: the
body's size while it is read (``serve.BodyLimit``), the number of items and
the length of a text while the JSON is validated (pydantic checks a list's
length before its items), an image's pixels from its header before it is
decoded, and the pixels of all a request's images before any is decoded.
Parsing, validation and decoding run in worker threads (:data:`PARSE_THREADS` at
once), off the event loop.
Error bodies are bounded: they never echo an input, name at most
:data:`MAX_ERRORS` errors, and clip every message.

FastAPI, starlette and pydantic are imported inside functions.
"""
import base64
import binascii
import io
import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from transferkit.errors import ConfigError, DataError, check_range

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
#: Refuse an image larger than this before decoding it (a small PNG can decode to gigabytes).
MAX_IMAGE_PIXELS = 40_000_000
#: Refuse a request whose images hold more pixels than this in all (one megapixel per item at 256 items).
MAX_REQUEST_PIXELS = 256_000_000
#: Refuse a longer text: several times the context of a 512-token model, and tokenising it costs the model thread.
MAX_TEXT_CHARS = 20_000
#: An error body lists at most this many validation errors; a message is clipped to MAX_MESSAGE_CHARS.
MAX_ERRORS = 5
MAX_MESSAGE_CHARS = 1_000
#: Requests parsed and decoded at once (worker threads); more wait their turn.
PARSE_THREADS = 4
_IMAGE_PREFIXES = ("iVBORw0KGgo", "/9j/", "data:image/")  # base64 of the PNG / JPEG signatures
_FIELDS = ("inputs", "texts", "images")


class RequestError(DataError):
    """A bad request: the message says what was wrong; ``status_code`` is its HTTP status.

    ``detail``, where given, is the response's ``detail`` instead of the message
    (a short list of validation errors).
    """

    def __init__(self, message: str, status_code: int = 422, detail: list | None = None):
        super().__init__(message)
        self.status_code, self.detail = status_code, detail


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis: what an error body may quote."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class ModelInputs:
    """What a served model takes, read from its manifest."""

    modality: str
    image_size: int | None = None
    interpolation: str = "bilinear"
    n_features: int | None = None
    max_seconds: float | None = None
    sample_rate: int = 16000
    vad: bool | str = False

    @classmethod
    def from_manifest(cls, manifest: dict, model=None) -> "ModelInputs":
        """What the manifest says; ``model`` (the predictor's backbone or preprocessing, when at hand) lifts the
        length check of audio whose preprocessing reads long clips in windows. With ``vad`` the length checked is
        that of the speech the model keeps (:func:`decode_audio`)."""
        pre = manifest.get("preprocess") or {}
        audio_pre = getattr(model, "preprocess", model)
        modality = manifest.get("modality") or pre.get("kind")
        if modality not in ("image", "text", "tabular", "audio"):
            raise ConfigError(f"Cannot serve a model of modality {modality!r}: the service takes image, text, "
                              "tabular and audio models.")
        size = pre.get("size") if modality == "image" else None
        backbone = manifest.get("backbone")
        width = (backbone.get("options") or {}).get("in_features") if isinstance(backbone, dict) else None
        audio = modality == "audio"
        return cls(modality, int(size) if size else None, pre.get("interpolation", "bilinear"),
                   int(width) if modality == "tabular" and width else None,
                   float(pre["max_seconds"]) if audio and pre.get("max_seconds") and not getattr(
                       audio_pre, "windows", False) else None,
                   int(pre.get("sample_rate") or 16000),
                   (getattr(audio_pre, "vad", None) or pre.get("vad") or False) if audio else False)

    def describe(self) -> str:
        if self.modality == "tabular":
            return f"rows of {self.n_features or 'N'} numbers"
        if self.modality == "audio":
            return "audio files (WAV, FLAC, OGG, MP3)"
        return f"{self.modality}s"


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold; a request over a limit gets HTTP 413.

    Args:
        max_items: most items in one request.
        max_body_bytes: largest request body.
        max_text_chars: longest text item.
        max_image_pixels: largest image (width x height, from its header).
        max_request_pixels: most image pixels in one request, all images together.
    """

    max_items: int = 256
    max_body_bytes: int = 20 * 2**20
    max_text_chars: int = MAX_TEXT_CHARS
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS

    def __post_init__(self):
        for name, value in asdict(self).items():
            check_range("create_app", name, value, low=1, kind="an int")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- decoding and validating one request


def check_count(n: int, max_items: int) -> None:
    if n == 0:
        raise RequestError("No inputs: send at least one item.")
    if n > max_items:
        raise RequestError(f"{n:,} items in one request exceeds the limit of {max_items:,}; split the request.", 413)


@contextmanager
def _opened(raw: bytes, where: str, max_pixels: int):
    """The image file ``raw``, opened lazily (header only) and refused when over ``max_pixels``.

    Errors inside the block (decoding) become :class:`RequestError` too.
    """
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise RequestError(f"{where} is empty; send an image file ({', '.join(IMAGE_FORMATS[:2])}).")
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            if im.width * im.height > max_pixels:
                raise RequestError(f"{where} is {im.width}x{im.height} pixels, over the limit of "
                                   f"{max_pixels:,} pixels.", 413)
            yield im
    except RequestError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit (Image.MAX_IMAGE_PIXELS), when ours is higher
        raise RequestError(f"{where} has more pixels than the image decoder accepts.", 413) from None
    except UnidentifiedImageError:
        raise RequestError(f"{where} is not an image file in a supported format ({', '.join(IMAGE_FORMATS)}); "
                           "this model expects image files.") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes make PIL raise many types (OSError, SyntaxError, ...)
        raise RequestError(f"{where} cannot be decoded as an image ({type(exc).__name__}: {clip(exc, 200)}); "
                           f"this model expects image files ({', '.join(IMAGE_FORMATS)}).") from None


def image_from_bytes(raw: bytes, where: str, spec: ModelInputs, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]``, resized to the model's input size.

    Resizing here (as the model's own preprocessing would, with the same
    interpolation) keeps queued items small; the model's resize is then a no-op.
    """
    from PIL import Image

    with _opened(raw, where, max_pixels) as im:
        im.verify()
    with _opened(raw, where, max_pixels) as im:
        rgb = im.convert("RGB")
    if spec.image_size:
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
        rgb = rgb.resize((spec.image_size, spec.image_size), resample.get(spec.interpolation, Image.BILINEAR))
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(raws: Sequence[tuple[bytes, str]], spec: ModelInputs, limits: RequestLimits) -> list[np.ndarray]:
    """Image files ``(bytes, where)`` to uint8 RGB arrays, after every header is checked against the limits."""
    total = 0
    for raw, where in raws:
        with _opened(raw, where, limits.max_image_pixels) as im:
            total += im.width * im.height
        if total > limits.max_request_pixels:
            raise RequestError(f"The images of this request hold more than {limits.max_request_pixels:,} pixels "
                               f"in all (counted up to {where}); send fewer or smaller images.", 413)
    return [image_from_bytes(raw, where, spec, limits.max_image_pixels) for raw, where in raws]


def _base64_bytes(text: str, index: int, expects: str = "image files (PNG, JPEG)") -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"Item {index} is not valid base64 ({clip(exc, 100)}); this model expects {expects} "
                           "encoded as base64, not texts.") from None


def decode_audio(raws: Sequence[tuple[bytes, str]], spec: ModelInputs) -> list[np.ndarray]:
    """Audio files ``(bytes, where)`` to mono float32 samples at the model's rate; a bad or over-long clip is a
    :class:`RequestError` naming it (422)."""
    from transferkit.backbones.audio import read_audio
    from transferkit.errors import DataError

    waves = []
    for raw, where in raws:
        if not raw:
            raise RequestError(f"{where} is empty; send an audio file (WAV, FLAC, OGG, MP3).")
        try:
            wave = read_audio(raw, spec.sample_rate, where)
        except DataError as exc:
            raise RequestError(f"{clip(exc, 300)} This model expects audio files.") from None
        if spec.max_seconds is not None and len(wave) > spec.max_seconds * spec.sample_rate:
            check_speech_length(wave, where, spec)
        waves.append(wave)
    return waves


def check_speech_length(wave: np.ndarray, where: str, spec: ModelInputs) -> None:
    """Refuse a clip over the model's window (422 naming the limit); with ``vad``, one whose speech, as the
    model's preprocessing keeps it, is over the window (the segments found are remembered: the model's
    preprocessing does not run the detector again)."""
    n, kept = len(wave), ""
    if spec.vad:
        from transferkit.backbones.vad import apply_vad

        n, kept = len(apply_vad(wave, spec.vad)), f" of speech (of {n / spec.sample_rate:.2f} s as sent)"
    if n > spec.max_seconds * spec.sample_rate:
        raise RequestError(f"{where} is {n / spec.sample_rate:.2f} s{kept}, longer than the model's window of "
                           f"{spec.max_seconds:g} s; cut it into shorter clips.")


def decode_base64_image(text: str, index: int, spec: ModelInputs, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) to a uint8 RGB array."""
    return image_from_bytes(_base64_bytes(text, index), f"Item {index}", spec, max_pixels)


def check_texts(texts: Sequence[str]) -> list[str]:
    for i, t in enumerate(texts):
        if len(t) > 64 and t.startswith(_IMAGE_PREFIXES):
            raise RequestError(f"Item {i} looks like a base64-encoded image; this model expects texts.")
    return list(texts)


def check_rows(rows: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Rows of finite numbers (validated by the schema) as float32 rows of one width."""
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise RequestError(f"Rows of different lengths ({', '.join(map(str, sorted(widths)[:4]))}); "
                           "every row must have one number per feature.")
    table = np.asarray(rows, dtype=np.float64)
    big = np.argwhere(np.abs(table) > np.finfo(np.float32).max)
    if len(big):
        raise RequestError(f"Row {big[0][0]} column {big[0][1]} is beyond the float32 range (3.4e38).")
    return list(table.astype(np.float32))


def _wrong_kind(key: str, spec: ModelInputs) -> str | None:
    if spec.modality == "audio" and key != "inputs":
        return (f"This model takes audio, not {key}: send base64-encoded audio files in 'inputs', or upload them "
                "as multipart 'files'.")
    if spec.modality == "tabular" and key != "inputs":
        return f"This model takes {spec.describe()} in 'inputs', not {key}."
    if key == "texts" and spec.modality == "image":
        return ("This model takes images, not texts: send base64-encoded image files in 'inputs' "
                "or 'images', or upload them as multipart 'files'.")
    if key == "images" and spec.modality == "text":
        return "This model takes texts, not images: send strings in 'inputs' or 'texts'."
    return None


def items_from_json(parsed, spec: ModelInputs, limits: RequestLimits) -> list:
    """Validated model items from a parsed request (see :func:`~.serve_schemas.request_model`)."""
    key, values = next((k, getattr(parsed, k)) for k in _FIELDS if getattr(parsed, k) is not None)
    wrong = _wrong_kind(key, spec)
    if wrong:
        raise RequestError(wrong)
    check_count(len(values), limits.max_items)
    if spec.modality == "text":
        return check_texts(values)
    if spec.modality == "tabular":
        return check_rows(values)
    if spec.modality == "audio":
        return decode_audio([(_base64_bytes(v, i, "audio files"), f"Item {i}") for i, v in enumerate(values)], spec)
    return decode_images([(_base64_bytes(v, i), f"Item {i}") for i, v in enumerate(values)], spec, limits)


def items_from_body(body: bytes, model, spec: ModelInputs, limits: RequestLimits) -> list:
    """Parse, validate and decode a JSON body against the request ``model``: CPU work, run in a worker thread."""
    from pydantic import ValidationError

    if not body:
        raise RequestError("Malformed JSON body: empty. Send {\"inputs\": [...]}.", 400)
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body, model, limits) from None
    return items_from_json(parsed, spec, limits)


def validation_error(exc, body: bytes, model, limits: RequestLimits) -> RequestError:
    """A bounded :class:`RequestError` for pydantic's ``exc``: a limit's own message, or a few errors."""
    if exc.error_count() > 4 * limits.max_items + 16:  # more than the fields can hold: a flood of unknown keys
        from pydantic_core import from_json

        data = from_json(body)  # listing all of pydantic's errors would take longer than this parse
        unknown = [k for k in data if k not in model.model_fields] if isinstance(data, dict) else []
        if unknown:
            return RequestError(f"{len(unknown):,} unknown fields ({', '.join(repr(clip(k, 40)) for k in unknown[:3])}"
                                ", ...): give exactly one of 'inputs', 'texts' or 'images'.")
    errors = exc.errors(include_url=False, include_input=False)
    for e in errors:
        kind, loc, ctx = e["type"], e["loc"], e.get("ctx") or {}
        if kind == "json_invalid":
            return RequestError(f"Malformed JSON body: {clip(e['msg'], 200)}. Send {{\"inputs\": [...]}}.", 400)
        if len(loc) == 1 and loc[0] in _FIELDS and kind == "too_long":
            return RequestError(f"{ctx.get('actual_length', 0):,} items in one request exceeds the limit of "
                                f"{limits.max_items:,}; split the request.", 413)
        if len(loc) == 1 and loc[0] in _FIELDS and kind == "too_short":
            return RequestError("No inputs: send at least one item.")
        if kind == "string_too_long":
            return RequestError(f"Item {loc[-1]} is longer than the limit of {limits.max_text_chars:,} characters; "
                                "shorten or split it.", 413)
    detail = [{"loc": ["body", *(clip(part, 40) if isinstance(part, str) else part for part in e["loc"])],
               "msg": clip(e["msg"], 200), "type": e["type"]} for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"loc": ["body"], "msg": f"... and {len(errors) - MAX_ERRORS:,} more errors",
                       "type": "too_many_errors"})
    return RequestError("; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail), 422, detail)


# ---------------------------------------------------------------- reading a request

_limiters: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # event loop -> anyio.CapacityLimiter


async def in_worker_thread(fn, *args):
    """``fn(*args)`` in anyio's worker threads, at most :data:`PARSE_THREADS` at once per event loop.

    The bound caps the memory of the large bodies checked at once, and keeps their buffers in a few
    threads: with a thread per request (starlette's ``run_in_threadpool``, up to 40), glibc gives each
    thread its own malloc arena, and 32 clients sending hostile bodies of up to 5 MB grew the server's
    RSS from 1,125 to 1,493 MiB in 40 s; with 4 threads, 928 to 956 MiB (``benchmarks/serve_soak.py``).
    """
    import asyncio

    import anyio.to_thread

    loop = asyncio.get_running_loop()
    if loop not in _limiters:
        _limiters[loop] = anyio.CapacityLimiter(PARSE_THREADS)
    return await anyio.to_thread.run_sync(fn, *args, limiter=_limiters[loop])


async def read_items(request, spec: ModelInputs, limits: RequestLimits, model) -> list:
    """The request's validated model items (texts, uint8 RGB arrays or float32 rows), from JSON or multipart.

    Args:
        model: the pydantic request model of this app (:func:`~.serve_schemas.request_model`).
    """
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart_items(request, spec, limits)
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise RequestError(f"Unsupported content type '{clip(ctype, 60)}': send application/json "
                           "({\"inputs\": [...]}) or multipart/form-data with image files in 'files'.", 415)
    body = await request.body()
    # Parsing, validating and decoding are CPU work: a worker thread, so the event loop keeps answering.
    return await in_worker_thread(items_from_body, body, model, spec, limits)


async def _multipart_items(request, spec: ModelInputs, limits: RequestLimits) -> list:
    """Image files uploaded in the multipart field ``files``."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    if spec.modality not in ("image", "audio"):
        raise RequestError(f"This model takes {spec.describe()}, not uploaded files: send JSON "
                           "{\"inputs\": [...]}.")
    max_items = limits.max_items
    try:
        form = await request.form(max_files=max_items, max_fields=max_items, max_part_size=limits.max_body_bytes)
    except HTTPException as exc:  # starlette's multipart errors
        if "Too many files" in str(exc.detail):
            raise RequestError(f"More than {max_items:,} files in one request exceeds the limit of {max_items:,}; "
                               "split the request.", 413) from None
        raise RequestError(f"Malformed multipart body: {clip(exc.detail, 200)}", 400) from None
    try:
        unknown = sorted(set(form.keys()) - {"files"})
        if unknown:
            raise RequestError(f"Unknown form field(s) {', '.join(repr(clip(k, 40)) for k in unknown[:3])}"
                               f"{' and more' if len(unknown) > 3 else ''}: upload {spec.modality} files in 'files'.")
        uploads = form.getlist("files")
        check_count(len(uploads), max_items)
        raws = []
        for i, up in enumerate(uploads):
            if not isinstance(up, UploadFile):
                raise RequestError(f"Item {i} of 'files' is a text field, not a file upload.")
            raws.append((await up.read(), f"File {i} ({clip(up.filename, 60)!r})"))
    finally:
        await form.close()
    if spec.modality == "audio":
        return await in_worker_thread(decode_audio, raws, spec)
    return await in_worker_thread(decode_images, raws, spec, limits)
