"""ONNX and TorchScript export of audio classifiers: the graph takes the (log-)mel frames and their mask,
decoding and features stay outside it (in the preprocessing that ``preprocess.json`` rebuilds).

Fast: the MFCC baseline, a random tiny Whisper encoder and a random resemblyzer LSTM.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data import resolve_data  # noqa: E402
from transferkit.errors import ConfigError  # noqa: E402
from transferkit.export.bundle import load, rebuild_model, save_bundle  # noqa: E402
from transferkit.export.onnx_export import OnnxPredictor, check_exportable, export_bundle  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.training import TrainConfig, Trainer  # noqa: E402

RATE = 16000
TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two classes of tones (300 Hz, 2.5 kHz) with noise, 0.3 to 1.2 s long: clips of different frame counts."""
    root = tmp_path_factory.mktemp("clips")
    for label, freq in (("low", 300.0), ("high", 2500.0)):
        (root / label).mkdir()
        for i in range(4):
            t = np.arange(int((0.3 + 0.3 * i) * RATE)) / RATE
            wave = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.03 * i) * t)
            wave += 0.02 * np.random.default_rng(i).standard_normal(len(t))
            sf.write(str(root / label / f"{i}.wav"), wave.astype(np.float32), RATE)
    return resolve_data(root)[0]


def _bundle(tmp_path, clips, backbone, strategy: str, options: dict | None = None):
    torch.manual_seed(0)
    model, _ = make_strategy(strategy, options or {}).fit(backbone, clips, None,
                                                          Trainer(TrainConfig(epochs=1, batch_size=8, progress=False)))
    return save_bundle(model, tmp_path / "bundle", {"strategy": {"name": strategy}})


def _check(out, bundle, clips, frames) -> dict:
    """The export's record, the ONNX predictor against the bundle's on the wav files, and any batch size."""
    info = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert [i["name"] for i in info["inputs"]] == ["input_features", "frame_mask"]
    assert info["inputs"][0]["shape"] == ["batch", 40, frames] and info["inputs"][1]["shape"] == ["batch", frames]
    assert info["parity"]["max_abs_diff"] <= TOLERANCE
    onnx, torch_predictor = OnnxPredictor(out), load(bundle)
    np.testing.assert_allclose(onnx.outputs(clips.items, batch_size=3), torch_predictor.outputs(clips.items),
                               atol=TOLERANCE)
    assert onnx.predict(clips.items[:2]) == torch_predictor.predict(clips.items[:2])
    return info


def test_log_mel_frames_of_a_clip_do_not_depend_on_its_batch():
    from transferkit.backbones.audio import AudioPreprocess

    preprocess = AudioPreprocess(n_mels=40, features="log-mel")
    short, long = np.full(14399, 0.1, dtype=np.float32), np.full(20000, 0.1, dtype=np.float32)
    alone, batch = preprocess.from_waves([short]), preprocess.from_waves([short, long])
    assert alone["frame_mask"].sum() == batch["frame_mask"][0].sum() == 14399 // 160  # not ceil(14399 / 160)
    torch.testing.assert_close(batch["input_features"][0, :, :89], alone["input_features"][0])


def test_mfcc_baseline_exports_with_a_symbolic_frames_axis(clips, tmp_path):
    bundle = _bundle(tmp_path, clips, None, "scratch")
    out = export_bundle(bundle, tmp_path / "onnx")
    info = _check(out, bundle, clips, "frames")
    assert info["exporter"] == "torch.onnx.export(dynamo=True)"
    preprocess = json.loads((out / "preprocess.json").read_text(encoding="utf-8"))
    assert preprocess["kind"] == "audio" and preprocess["features"] == "log-mel" and preprocess["n_mels"] == 40
    assert "outside_the_graph" in preprocess
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [type(d) for d in session.get_inputs()[0].shape] == [str, int, str]


def test_the_onnx_runtime_serves_uploaded_wavs(clips, tmp_path):
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.export.serve import create_app, load_predictor

    bundle = _bundle(tmp_path, clips, None, "scratch")
    predictor = load_predictor(export_bundle(bundle, tmp_path / "onnx"), runtime="onnx")
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict", json={"inputs": [base64.b64encode(open(p, "rb").read()).decode()
                                                     for p in clips.items[:3]]})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == load(bundle).predict(clips.items[:3])


def test_whisper_encoder_probe_exports_at_its_fixed_window(clips, tiny_whisper, tmp_path):
    bundle = _bundle(tmp_path, clips, load_backbone(f"whisper:{tiny_whisper}"), "linear-probe")
    _check(export_bundle(bundle, tmp_path / "onnx"), bundle, clips, 200)  # a 2 s window of 10 ms frames


def test_resemblyzer_lstm_exports(clips, tmp_path):
    # finetune: a random LSTM's features barely vary, so a probe's weights would magnify float noise
    bundle = _bundle(tmp_path, clips, load_backbone("resemblyzer:", pretrained=False), "finetune")
    _check(export_bundle(bundle, tmp_path / "onnx"), bundle, clips, "frames")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_audio_torchscript_round_trip(clips, tmp_path):
    bundle = _bundle(tmp_path, clips, None, "scratch", {"variant": "audio-cnn"})
    out = export_bundle(bundle, tmp_path / "ts", format="torchscript")
    module, model = torch.jit.load(str(out / "model.pt")), rebuild_model(bundle)
    for items in (clips.items[:1], clips.items):
        batch = model.backbone.preprocess(items)
        with torch.no_grad():
            diff = (module(batch["input_features"], batch["frame_mask"]) - model(batch)).abs().max().item()
        assert diff <= TOLERANCE


def test_speech_recognition_is_refused_naming_the_task():
    manifest = {"task": "speech-recognition", "preprocess": {"kind": "audio"}, "backbone": {"spec": "whisper:tiny.en"}}
    with pytest.raises(ConfigError, match="speech-recognition bundles cannot be exported.*greedy decoding"):
        check_exportable(manifest)
