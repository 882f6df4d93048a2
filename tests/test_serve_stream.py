"""Streaming text generation: ``Predictor.stream`` and ``serve``'s ``POST /predict/stream`` (server-sent events).

On a bundle of the tiny random Llama of ``conftest.py`` (untrained: it writes a dozen varied tokens, so an answer
comes in several pieces): the pieces join to what ``predict`` and ``/predict`` answer, over a real loopback
server too. With a scripted writer in place of a model: the deadline, a full queue and a client that goes
away behave as ``/predict``'s do, and generation stops when nobody reads it.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serve_limits import asgi_client, serving

from transferkit.backbones import load_backbone
from transferkit.backbones.causal_lm import cut_at_stop
from transferkit.data.adapters_generation import from_pairs
from transferkit.errors import ConfigError
from transferkit.export.bundle import load, save_bundle
from transferkit.export.serve import create_app
from transferkit.strategies import make_strategy
from transferkit.tasks.generation import StreamedText

PROMPTS = ["Colour of the sky?", "Write a word.", "What is a Debian package?"]


@pytest.fixture(scope="module")
def bundle(tiny_llama, tmp_path_factory):
    """The untrained tiny Llama, prompted as it is (zero-shot), decoding 12 tokens greedily."""
    backbone = load_backbone(f"causal:{tiny_llama}", max_length=64)
    model, _ = make_strategy("zero-shot").fit(backbone, from_pairs(PROMPTS, ["a", "b", "c"]), None, None)
    model.generation = {"max_new_tokens": 12, "temperature": 0.0, "stop": []}
    return save_bundle(model, tmp_path_factory.mktemp("stream") / "bundle", {})


def _events(body: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event of ``body``."""
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet=" ab\nxy.", max_size=30), stop=st.lists(st.sampled_from(["\n", "xy", "a.b", " "]),
                                                                     max_size=2), cuts=st.lists(st.integers(0, 30)))
def test_streamed_pieces_join_to_the_cut_and_stripped_answer(text, stop, cuts):
    pieces, streamed = [], StreamedText(stop)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    for a, b in zip(bounds, bounds[1:]):
        pieces.append(streamed.push(text[a:b]))
        if streamed.stopped:
            break
    pieces.append(streamed.finish())
    assert "".join(pieces) == streamed.sent == cut_at_stop(text, stop).strip()


def test_a_long_stop_string_is_held_back_while_the_text_is_shorter_than_it():
    streamed = StreamedText(["ABCDEF"])  # holds back 5 characters: more than the text has after two pieces
    assert [streamed.push(p) for p in ("xA", "BC")] == ["", ""]
    assert streamed.push("DEF") == "x" and streamed.stopped and streamed.finish() == ""
    streamed = StreamedText(["ABCDEF"])
    assert [streamed.push(p) for p in ("xA", "BC", "DX", "yz")] == ["", "", "x", "AB"]
    assert streamed.finish() == "CDXyz" and streamed.sent == "xABCDXyz"


def test_stream_equals_predict_with_and_without_stop_strings(bundle):
    predictor = load(bundle)
    for prompt in PROMPTS:
        pieces: list[str] = []
        answer = predictor.stream(prompt, pieces.append)
        assert "".join(pieces) == answer == predictor.predict([prompt])[0]
        assert len(pieces) > 1 and all(pieces)
    full = predictor.predict(PROMPTS[:1])[0]
    predictor.model.generation = {**predictor.model.generation, "stop": [full[3:6]]}  # a stop string mid-answer
    pieces = []
    assert predictor.stream(PROMPTS[0], pieces.append) == "".join(pieces) == predictor.predict(PROMPTS[:1])[0]
    assert full.startswith("".join(pieces)) and len("".join(pieces)) <= 3


def test_a_cancelled_stream_stops_generating(bundle):
    predictor, cancel, pieces = load(bundle), threading.Event(), []

    def first_only(piece: str) -> None:
        pieces.append(piece)
        cancel.set()

    answer, full = predictor.stream(PROMPTS[0], first_only, cancel), predictor.predict(PROMPTS[:1])[0]
    assert answer == "".join(pieces) and full.startswith(answer) and len(answer) < len(full)


def test_models_that_do_not_generate_refuse_to_stream():
    from transferkit.export.bundle import Predictor

    class Stub:
        task = "classification"
    with pytest.raises(ConfigError, match="classification models answer whole predictions.*text-generation"):
        Predictor.stream(Stub(), "text", print)


def test_the_stream_over_loopback_matches_predict(bundle):
    predictor = load(bundle)
    with serving(create_app(predictor)) as (url, _):
        with httpx.stream("POST", f"{url}/predict/stream", json={"inputs": [PROMPTS[2]]}, timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            body = "".join(r.iter_text())
        answer = httpx.post(f"{url}/predict", json={"inputs": [PROMPTS[2]]}, timeout=60).json()
    events = _events(body)
    *deltas, (name, done) = events
    assert name == "message" and done["done"] is True and all(n == "message" for n, _ in deltas)
    assert "".join(d["delta"] for _, d in deltas) == done["text"] == answer["predictions"][0]["text"]
    assert len(deltas) > 1


def test_bad_stream_requests_get_the_answers_of_predict(bundle):
    app = create_app(load(bundle), max_text_chars=400)
    cases = [({"json": {"inputs": ["x" * 401]}}, 413), ({"content": b"{", "headers": {"content-type": "application/json"}}, 400),
             ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415), ({"json": {"images": ["aGk="]}}, 422),
             ({"json": {"inputs": ["word " * 60]}}, 422)]  # over the backbone's max_length of 64 tokens
    with TestClient(app) as client:
        for kwargs, status in cases:
            streamed, plain = client.post("/predict/stream", **kwargs), client.post("/predict", **kwargs)
            assert streamed.status_code == plain.status_code == status, (kwargs, streamed.text)
            assert streamed.json() == plain.json()
        r = client.post("/predict/stream", json={"inputs": PROMPTS[:2]})
        assert r.status_code == 413 and "2 items in one request exceeds the limit of 1" in r.json()["detail"]
        body = client.get("/openapi.json").json()["paths"]["/predict/stream"]["post"]
        schema = body["requestBody"]["content"]["application/json"]["schema"]
        assert next(s for s in schema["properties"]["inputs"]["anyOf"] if s.get("type") == "array")["maxItems"] == 1
        assert all(len(v) == 1 for example in schema["examples"] for v in example.values())
        assert "text/event-stream" in body["responses"]["200"]["content"]
        assert client.get("/metadata").json()["serving"]["pending"] == 0


class Writer:
    """A scripted text-generation 'model': ``stream`` emits ``pieces``, ``delay_s`` apart, until cancelled."""

    task = "text-generation"
    label_names = None
    manifest = {"modality": "text", "preprocess": {"kind": "causal-text"}}

    def __init__(self, pieces: list[str], delay_s: float = 0.0):
        self.pieces, self.delay_s = pieces, delay_s
        self.started, self.cancelled, self.release = threading.Event(), threading.Event(), threading.Event()
        self.release.set()

    def outputs(self, items):
        return np.array(["".join(self.pieces)] * len(items), dtype=object)

    def stream(self, item, emit, cancel):
        self.started.set()
        self.release.wait(30)
        for piece in self.pieces:
            if cancel.is_set():
                self.cancelled.set()
                return ""
            emit(piece)
            time.sleep(self.delay_s)
        return "".join(self.pieces)


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_stops():
    writer = Writer(["a", "b", "c", "d", "e", "f"], delay_s=0.25)
    with TestClient(create_app(writer, request_timeout_s=0.6)) as client:
        r = client.post("/predict/stream", json={"inputs": ["go"]})
        assert r.status_code == 200
        *deltas, (name, error) = _events(r.text)
        assert name == "error" and "did not finish within the request timeout of 0.6 s" in error["detail"]
        assert 1 <= len(deltas) < 6 and writer.cancelled.wait(5)
        meta = client.get("/metadata").json()["serving"]
        assert meta["timed_out"] == 1 and meta["pending"] == 0


def test_a_full_queue_and_a_missed_start_answer_503():
    writer = Writer(["a", "b"])
    writer.release.clear()
    app = create_app(writer, max_queue=1, request_timeout_s=1.0)

    async def main():
        async with asgi_client(app) as client:
            first = asyncio.ensure_future(client.post("/predict/stream", json={"inputs": ["one"]}))
            while not writer.started.is_set():
                await asyncio.sleep(0.01)
            busy = await client.post("/predict/stream", json={"inputs": ["two"]})
            late = await first  # held past its deadline before any text: 503, as /predict
            writer.release.set()
            return busy, late, await client.post("/predict/stream", json={"inputs": ["three"]})

    busy, late, after = asyncio.run(main())
    assert busy.status_code == 503 and "max_queue 1" in busy.json()["detail"] and int(busy.headers["retry-after"]) >= 1
    assert late.status_code == 503 and "request timeout of 1 s" in late.json()["detail"]
    assert after.status_code == 200 and _events(after.text)[-1][1] == {"done": True, "text": "ab"}
    assert app.state.batcher.pending == 0


def test_a_client_that_goes_away_stops_the_generation():
    writer = Writer([f"w{i} " for i in range(200)], delay_s=0.05)
    app = create_app(writer)
    with serving(app) as (url, _):
        with httpx.stream("POST", f"{url}/predict/stream", json={"inputs": ["go"]}, timeout=30) as r:
            first = next(r.iter_lines())
        assert first.startswith("data: ")
        assert writer.cancelled.wait(10), "generation went on for a client that left"
        deadline = time.monotonic() + 10
        while app.state.batcher.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.state.batcher.pending == 0
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_models_that_do_not_generate_have_no_stream_endpoint():
    from test_serve_limits import TextModel

    with TestClient(create_app(TextModel())) as client:
        assert client.post("/predict/stream", json={"inputs": ["a"]}).status_code == 404
        assert "/predict/stream" not in client.get("/openapi.json").json()["paths"]
