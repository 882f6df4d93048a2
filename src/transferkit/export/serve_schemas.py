"""The pydantic models of :mod:`transferkit.export.serve`: the request of one served model, and the responses.

The request model is built per app by :func:`request_model`, from what the
model takes (:class:`~transferkit.export.serve_requests.ModelInputs`) and the
limits (:class:`~transferkit.export.serve_requests.RequestLimits`), so the
schema that ``/openapi.json`` shows states them (``maxItems``, ``maxLength``,
the width of a tabular row) and its examples are requests this very model
answers. pydantic checks a list's length before its items: a request of a
million numbers fails on its count at once, with one error.

pydantic is imported inside functions (an optional dependency). Like
:mod:`transferkit.export.serve`, this module does not use
``from __future__ import annotations``: pydantic reads the annotations of the
models built here at runtime.
"""
import base64
import functools
import io
from typing import Any

from transferkit.export.serve_requests import ModelInputs, RequestLimits

FIELDS = ("inputs", "texts", "images")


def example_png_base64(size: int = 8) -> str:
    """A small grey PNG, base64-encoded: the image example of the schema."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def example_wav_base64(seconds: float = 0.25, rate: int = 16000) -> str:
    """A short 440 Hz tone as a 16-bit WAV file, base64-encoded: the audio example of the schema."""
    import wave

    import numpy as np

    samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def request_examples(spec: ModelInputs) -> list[dict]:
    """Requests that a model taking ``spec`` answers with 200 (the schema's ``examples``)."""
    if spec.modality == "audio":
        return [{"inputs": [example_wav_base64()]}]
    if spec.modality == "tabular":
        return [{"inputs": [[0.0] * (spec.n_features or 1)]}]
    if spec.modality == "image":
        png = example_png_base64(spec.image_size or 8)
        return [{"inputs": [png]}, {"images": [f"data:image/png;base64,{png}"]}]
    return [{"inputs": ["a puzzle game with levels"]}, {"texts": ["a puzzle game with levels", "an audio mixer"]}]


def request_model(spec: ModelInputs, limits: RequestLimits):
    """The pydantic model of a ``POST /predict`` JSON body for a model taking ``spec``, within ``limits``.

    Example:
        >>> M = request_model(ModelInputs("text"), RequestLimits(max_items=8))    # doctest: +SKIP
        >>> M.model_json_schema()["properties"]["inputs"]["anyOf"][0]["maxItems"]  # doctest: +SKIP
        8
    """
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    def items(item_type, description: str):
        return Annotated[list[item_type], Field(min_length=1, max_length=limits.max_items, description=description)]

    text = Annotated[str, Field(max_length=limits.max_text_chars)]
    texts_type = items(text, "Texts, for text models.")
    images_type = items(str, "Base64-encoded image files (PNG, JPEG; a data:image/...;base64, URL works too), "
                             "for image models.")
    if spec.modality == "tabular":
        width = {"min_length": spec.n_features, "max_length": spec.n_features} if spec.n_features else {}
        # fail_fast: a row's first bad number ends its checks (a wide row of strings is one error, not thousands).
        row = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(fail_fast=True, **width)]
        inputs_type = items(row, f"Rows of {spec.n_features or 'N'} numbers, one per item (tabular models).")
    elif spec.modality == "image":
        inputs_type = items(str, "Base64-encoded image files, PNG or JPEG (a data:image/...;base64, URL works too).")
    elif spec.modality == "audio":
        inputs_type = items(str, "Base64-encoded audio files, WAV, FLAC, OGG or MP3 (a data:audio/...;base64, URL "
                                 "works too), for audio models; any sample rate, mixed down to mono.")
    else:
        inputs_type = items(text, "Texts.")

    examples = [e for e in request_examples(spec) if all(len(v) <= limits.max_items for v in e.values())]

    class PredictRequest(BaseModel):
        """Give exactly one of ``inputs``, ``texts`` or ``images``."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={  # exactly one field, in the schema too
            "minProperties": 1, "maxProperties": 1, "examples": examples})
        inputs: inputs_type | None = None
        texts: texts_type | None = None
        images: images_type | None = None

        @model_validator(mode="after")
        def _exactly_one(self):
            given = [k for k in FIELDS if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of 'inputs', 'texts' or 'images' (a list of items); "
                                 f"got {', '.join(given) if given else 'none'}")
            return self

    return PredictRequest


@functools.cache
def schemas():
    """The pydantic response models (built on first use: pydantic is an optional dependency)."""
    from types import SimpleNamespace
    from typing import Literal

    from pydantic import BaseModel, Field

    class ClassPrediction(BaseModel):
        label: str = Field(description="The most probable class.")
        probabilities: dict[str, float] = Field(description="Probability of every class.")

    class MultilabelPrediction(BaseModel):
        labels: list[str] = Field(description="Labels with probability over 0.5.")
        probabilities: dict[str, float] = Field(description="Probability of every label (sigmoid).")

    class RegressionPrediction(BaseModel):
        value: float

    class Entity(BaseModel):
        label: str = Field(description="The entity type.")
        text: str | None = Field(description="The entity's text, text[start:end].")
        score: float = Field(description="Mean probability of its words' tags.")
        start: int = Field(description="Character offset of its first character in the item.")
        end: int = Field(description="Character offset just after its last character.")
        words: list[int] = Field(description="[first word, end word) in the item's words.")

    class TokenPrediction(BaseModel):
        entities: list[Entity] = Field(description="Entities found, in order (token classification).")
        tags: list[str] = Field(description="The tag of every word of the item (split on words and punctuation).")

    class GenerationPrediction(BaseModel):
        text: str = Field(description="The generated continuation of the prompt (text generation).")

    class ObjectMask(BaseModel):
        size: list[int] = Field(description="[height, width] of the image.")
        counts: str = Field(description="COCO run-length encoding (pycocotools' compressed counts): decode with "
                                        "pycocotools.mask.decode({'size': size, 'counts': counts}).")

    class DetectedObject(BaseModel):
        label: str = Field(description="The object's class.")
        score: float = Field(description="The detector's confidence (objects scoring under 0.3 are left out).")
        box: list[float] = Field(description="[x1, y1, x2, y2] in the image's pixels.")

    class MaskedObject(DetectedObject):
        mask: ObjectMask = Field(description="The object's pixels.")

    class DetectionPrediction(BaseModel):
        objects: list[DetectedObject] = Field(description="Objects found, best first (object detection).")

    class InstancePrediction(BaseModel):
        objects: list[MaskedObject] = Field(description="Objects found, best first, each with its mask (instance "
                                                        "segmentation).")

    class SegmentationPrediction(BaseModel):
        classes: dict[str, float] = Field(description="Share of the image's pixels given to each class present.")
        mask_png: str = Field(description="Base64 PNG of the mask in the image's size: pixel value = class index "
                                          "into the labels (semantic segmentation).")
        height: int
        width: int

    class PredictResponse(BaseModel):
        predictions: list[ClassPrediction | MultilabelPrediction | RegressionPrediction | TokenPrediction
                          | GenerationPrediction | InstancePrediction | DetectionPrediction
                          | SegmentationPrediction] = Field(
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
        serving: dict[str, Any] = Field(description="Requests, batches and items run so far, and the queue.")

    class ErrorResponse(BaseModel):
        detail: Any = Field(description="What was wrong with the request: a message, or a list of at most "
                                        "a few validation errors ({loc, msg, type}).")

    return SimpleNamespace(**{c.__name__: c for c in (ClassPrediction, MultilabelPrediction, RegressionPrediction,
                                                       PredictResponse, Health, Metadata, ErrorResponse)})
