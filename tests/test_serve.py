"""The HTTP service: predictions equal the predictor's, bad requests are 4xx, concurrent requests are batched."""
from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import shapes_images, tiny_texts
from fastapi.testclient import TestClient
from PIL import Image

from transferkit.errors import ConfigError, DataError
from transferkit.export.bundle import Predictor, load
from transferkit.export.serve import MicroBatcher, create_app, load_predictor

SHAPES = ["square", "bar", "noise"]


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def b64(arr: np.ndarray, fmt: str = "PNG") -> str:
    return base64.b64encode(png_bytes(arr, fmt)).decode()


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory):
    from transferkit.api import fit
    from transferkit.data import from_arrays

    X, y = shapes_images(n_per_class=8)
    out = tmp_path_factory.mktemp("serve") / "shapes"
    fit("small-cnn:16", from_arrays(X, y, label_names=SHAPES), "finetune", epochs=1, out=out, progress=False,
        report=False)
    return out


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory, tiny_bert):
    from transferkit.api import fit
    from transferkit.data import from_arrays

    texts, labels = tiny_texts(6)
    out = tmp_path_factory.mktemp("serve") / "topics"
    fit(f"hf:{tiny_bert}", from_arrays(texts, labels), "linear-probe", epochs=1, out=out, progress=False,
        report=False)
    return out


@pytest.fixture(scope="module")
def image_predictor(image_bundle) -> Predictor:
    return load(image_bundle)


@pytest.fixture(scope="module")
def image_client(image_predictor):
    with TestClient(create_app(image_predictor, max_items=8, max_body_bytes=200_000)) as client:
        yield client


@pytest.fixture(scope="module")
def images():
    """20x20 test images: the service resizes them to the model's 16 px as the predictor would."""
    X, _ = shapes_images(n_per_class=4, size=20, seed=1)
    return X


def served_probs(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([list(p["probabilities"].values()) for p in response.json()["predictions"]])


# ---------------------------------------------------------------- predictions


def test_image_predictions_equal_the_predictor(image_client, image_predictor, images):
    expected, labels = image_predictor.outputs(list(images[:4])), image_predictor.predict(list(images[:4]))
    for payload in ({"inputs": [b64(im) for im in images[:4]]},
                    {"images": [f"data:image/png;base64,{b64(im)}" for im in images[:4]]}):
        r = image_client.post("/predict", json=payload)
        np.testing.assert_allclose(served_probs(r), expected, atol=1e-5)
        assert [p["label"] for p in r.json()["predictions"]] == labels
        assert list(r.json()["predictions"][0]["probabilities"]) == SHAPES
    files = [("files", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images[:4])]
    np.testing.assert_allclose(served_probs(image_client.post("/predict", files=files)), expected, atol=1e-5)


def test_text_predictions_equal_the_predictor(text_bundle):
    predictor = load(text_bundle)
    texts = ["a chess game for two", "music player with playlists", "audio mixer"]
    with TestClient(create_app(predictor)) as client:
        for key in ("inputs", "texts"):
            r = client.post("/predict", json={key: texts})
            np.testing.assert_allclose(served_probs(r), predictor.outputs(texts), atol=1e-5)
            assert [p["label"] for p in r.json()["predictions"]] == predictor.predict(texts)
        image = b64(shapes_images(1)[0][0])
        for payload, message in (({"images": [image]}, "takes texts"), ({"inputs": [image]}, "expects texts")):
            r = client.post("/predict", json=payload)
            assert r.status_code == 422 and message in r.json()["detail"]
        r = client.post("/predict", files=[("files", ("a.png", base64.b64decode(image), "image/png"))])
        assert r.status_code == 422 and "takes texts" in r.json()["detail"]
        assert client.get("/metadata").json()["modality"] == "text"


def test_onnx_runtime_serves_the_export(image_bundle, image_predictor, images, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx_export = pytest.importorskip("transferkit.export.onnx_export")
    export_dir = onnx_export.export_bundle(image_bundle, tmp_path / "onnx")
    predictor = load_predictor(export_dir, runtime="onnx")
    assert type(predictor).__name__ == "OnnxPredictor"
    app = create_app(predictor, max_wait_ms=20)
    responses = asyncio.run(_post_all(app, [{"inputs": [b64(im)]} for im in images[:6]]))
    served = np.concatenate([served_probs(r) for r in responses])
    np.testing.assert_allclose(served, predictor.outputs(list(images[:6])), atol=1e-5)
    np.testing.assert_allclose(served, image_predictor.outputs(list(images[:6])), atol=1e-4)
    assert app.state.stats.batches < 6


def test_health_metadata_and_schema(image_client):
    assert image_client.get("/health").json() == {"status": "ok"}
    meta = image_client.get("/metadata").json()
    assert meta["labels"] == SHAPES and meta["task"] == "classification" and meta["modality"] == "image"
    assert meta["backbone"] == "small-cnn:16" and meta["strategy"] == "finetune"
    assert "accuracy" in meta["metrics"] and meta["limits"]["max_items"] == 8
    assert {"requests", "batches", "items", "batch_sizes"} <= set(meta["serving"])
    schema = image_client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert set(body["application/json"]["schema"]["properties"]) == {"inputs", "texts", "images"}
    assert "PredictResponse" in schema["components"]["schemas"]
    assert image_client.get("/docs").status_code == 200


# ---------------------------------------------------------------- bad requests

_NOISE = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
_TRUNCATED = base64.b64encode(png_bytes(_NOISE)[:-200]).decode()  # header intact, pixel data cut

BAD_REQUESTS = [
    ("malformed JSON", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}, 400,
     "Malformed JSON"),
    ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "Malformed JSON"),
    ("texts to an image model", {"json": {"texts": ["a square"]}}, 422, "takes images"),
    ("plain text as inputs", {"json": {"inputs": ["a square"]}}, 422, "Item 0 is not valid base64"),
    ("undecodable image", {"json": {"inputs": ["PLACEHOLDER", base64.b64encode(b"not an image").decode()]}}, 422,
     "Item 1 is not an image file"),
    ("truncated image", {"json": {"inputs": [_TRUNCATED]}}, 422, "Item 0 cannot be decoded"),
    ("empty inputs", {"json": {"inputs": []}}, 422, "No inputs"),
    ("too many items", {"json": {"inputs": ["x"] * 9}}, 413, "limit of 8"),
    ("unknown field", {"json": {"inputs": ["x"], "top_k": 3}}, 422, "top_k"),
    ("no inputs field", {"json": {}}, 422, "exactly one of"),
    ("two kinds at once", {"json": {"inputs": ["x"], "images": ["x"]}}, 422, "exactly one of"),
    ("numbers as items", {"json": {"inputs": [1, 2]}}, 422, "valid string"),
    ("a dict, not a list", {"json": {"inputs": {"a": 1}}}, 422, "valid array"),
    ("body too large (Content-Length)", {"content": b"x" * 200_001, "headers": {"content-type": "application/json"}},
     413, "limit of 200,000 bytes"),
    ("body too large (streamed)", {"content": iter([b"x" * 150_000] * 2), "headers": {"content-type": "application/json"}},
     413, "limit of 200,000 bytes"),
    ("unsupported content type", {"content": b"a square", "headers": {"content-type": "text/plain"}}, 415,
     "application/json"),
    ("multipart undecodable file", {"files": [("files", ("a.png", b"PLACEHOLDER", "image/png")),
                                              ("files", ("b.png", b"\x89PNG broken", "image/png"))]}, 422, "File 1"),
    ("multipart unknown field", {"files": [("pictures", ("a.png", b"PLACEHOLDER", "image/png"))]}, 422, "pictures"),
    ("multipart too many files", {"files": [("files", (f"{i}.png", b"PLACEHOLDER", "image/png")) for i in range(9)]},
     413, "limit of 8"),
    ("multipart text field", {"data": {"files": "hello"}, "files": [("files", ("a.png", b"PLACEHOLDER", "image/png"))]},
     422, "not a file upload"),
]


def _fill(value, good_b64: str):
    """Swap PLACEHOLDER for a valid image, so an error is about the item the test means."""
    if isinstance(value, dict):
        return {k: _fill(v, good_b64) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, good_b64) for v in value)
    if value == "PLACEHOLDER":
        return good_b64
    if value == b"PLACEHOLDER":
        return base64.b64decode(good_b64)
    return value


@pytest.mark.parametrize("what, request_kwargs, status, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_4xx_and_the_service_keeps_serving(image_client, images, what, request_kwargs, status,
                                                             message):
    good = b64(images[0])
    r = image_client.post("/predict", **_fill(request_kwargs, good))
    assert r.status_code == status, r.text
    assert message in str(r.json()["detail"]), r.json()
    after = image_client.post("/predict", json={"inputs": [good]})
    assert after.status_code == 200 and len(after.json()["predictions"]) == 1


# ---------------------------------------------------------------- micro-batching


async def _post_all(app, payloads: list[dict]) -> list:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as client:
        return await asyncio.gather(*(client.post("/predict", json=p) for p in payloads))


def test_concurrent_requests_are_batched_and_answered_each_their_own(image_predictor, images):
    rng = np.random.default_rng(0)
    encoded = [b64(im) for im in images]
    expected = image_predictor.outputs(list(images))
    picks = [rng.choice(len(images), size=rng.integers(1, 4)) for _ in range(64)]
    payloads = [{"inputs": [encoded[i] for i in idx]} for idx in picks]
    for k in (5, 17, 40):  # bad requests inside the load fail alone
        payloads[k] = {"inputs": [encoded[0], "bm90IGFuIGltYWdl"]}
    app = create_app(image_predictor, max_batch=32, max_wait_ms=50)
    responses = asyncio.run(_post_all(app, payloads))
    assert not [r.status_code for r in responses if r.status_code >= 500]
    for k, (r, idx) in enumerate(zip(responses, picks)):
        if k in (5, 17, 40):
            assert r.status_code == 422 and "Item 1" in r.json()["detail"]
        else:
            np.testing.assert_allclose(served_probs(r), expected[idx], atol=1e-5)
    stats = app.state.stats
    assert stats.requests == 61 and stats.items == sum(len(picks[k]) for k in range(64) if k not in (5, 17, 40))
    assert stats.batches < stats.requests / 2, stats.to_dict()
    assert max(stats.batch_sizes) <= 32


def test_without_batching_every_request_is_its_own_call(image_predictor, images):
    app = create_app(image_predictor, batching=False)
    responses = asyncio.run(_post_all(app, [{"inputs": [b64(im)]} for im in images[:8]]))
    assert [r.status_code for r in responses] == [200] * 8
    assert app.state.stats.batches == app.state.stats.requests == 8


class FakePredictor:
    """A text 'model': probability of class 'long' grows with the text length; some texts make it fail."""

    task = "classification"

    def __init__(self):
        self.label_names = ["short", "long"]
        self.manifest = {"modality": "text", "preprocess": {"kind": "text"}, "strategy": {"name": "fake"}}
        self.calls: list[int] = []

    def outputs(self, items):
        self.calls.append(len(items))
        if "poison" in items:
            raise DataError("Text item 'poison' cannot be tokenised.")
        if "crash" in items:
            raise RuntimeError("kernel exploded")
        p = np.array([min(len(t), 20) / 20 for t in items])
        return np.stack([1 - p, p], 1)

    def predict(self, items):
        return [self.label_names[int(r.argmax())] for r in self.outputs(items)]


def test_a_failing_batch_fails_only_the_request_at_fault():
    fake = FakePredictor()
    app = create_app(fake, max_wait_ms=50)
    texts = [["a"], ["poison", "bb"], ["ccc", "dddd"], ["crash"], ["eeeee"]]
    responses = asyncio.run(_post_all(app, [{"inputs": t} for t in texts]))
    assert [r.status_code for r in responses] == [200, 422, 200, 500, 200]
    assert "poison" in responses[1].json()["detail"] and "RuntimeError" in responses[3].json()["detail"]
    assert responses[2].json()["predictions"][1]["probabilities"]["long"] == pytest.approx(0.2)
    assert fake.calls[0] == 7 and sorted(fake.calls[1:]) == [1, 1, 1, 2, 2]  # one batch, then each alone
    assert app.state.stats.failed_batches == 3


def test_an_unexpected_error_is_a_500_and_the_service_keeps_serving():
    with TestClient(create_app(FakePredictor()), raise_server_exceptions=False) as client:
        r = client.post("/predict", json={"inputs": ["crash"]})
        assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
        assert client.post("/predict", json={"inputs": ["fine"]}).status_code == 200


def test_batcher_splits_by_max_batch_and_keeps_order():
    calls = []

    def run(items):
        calls.append(len(items))
        return np.array(items, dtype=float)

    async def main():
        batcher = MicroBatcher(run, max_batch=4, max_wait_s=0.05)
        outs = await asyncio.gather(*(batcher.submit([i, i + 0.5]) for i in range(6)), batcher.submit(list(range(9))))
        await batcher.stop()
        return outs

    outs = asyncio.run(main())
    assert [o.tolist() for o in outs[:6]] == [[i, i + 0.5] for i in range(6)]
    assert outs[6].tolist() == list(range(9))
    assert all(c <= 4 for c in calls[:-1] if c != 9) and 9 in calls and sum(calls) == 21


# ---------------------------------------------------------------- loading, configuration, command line


def test_load_predictor_and_configuration_errors(image_bundle):
    assert isinstance(load_predictor(image_bundle), Predictor)
    with pytest.raises(ConfigError, match="Unknown runtime 'tensorrt'. Available: torch, onnx"):
        load_predictor(image_bundle, runtime="tensorrt")
    with pytest.raises(ConfigError, match="max_batch"):
        create_app(FakePredictor(), max_batch=0)


def test_importing_the_service_does_not_import_fastapi():
    code = ("import sys, transferkit.export.serve, transferkit.cli.serve\n"
            "assert not {'fastapi', 'uvicorn', 'pydantic'} & set(sys.modules), sys.modules.keys()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


def test_cli_serve_wiring(image_bundle, monkeypatch):
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from transferkit.cli import serve
    from transferkit.cli.errors import ErrorHandlingGroup

    app = typer.Typer(cls=ErrorHandlingGroup)  # the real app's error handling
    serve.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `serve` a named subcommand
    runner = CliRunner()
    help_text = runner.invoke(app, ["serve", "--help"]).output
    for flag in ("--host", "--port", "--runtime", "--max-batch", "--max-wait-ms", "--max-items", "--max-body-mb"):
        assert flag in help_text
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    result = runner.invoke(app, ["serve", str(image_bundle), "--port", "8123", "--max-batch", "8"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["app"].state.batcher.max_batch == 8
    result = runner.invoke(app, ["serve", str(image_bundle), "--runtime", "tensorrt"])
    assert result.exit_code == 2 and "Unknown runtime" in result.output
