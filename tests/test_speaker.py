"""The ``resemblyzer:`` speaker encoder: shapes, batching, weights read weights-only, and parity with resemblyzer.

The architecture tests run at random init (no package needed). The packaged weights need
``pip install --no-deps resemblyzer``; the parity check with resemblyzer's own ``VoiceEncoder`` also
needs the package importable (librosa and webrtcvad), and is skipped otherwise.
"""
from __future__ import annotations

import importlib.util
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.backbones import resemblyzer as rz
from transferkit.errors import ConfigError, DataError, MissingWeightsError

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")
RATE = 16000


def voiced(seconds: float, f0: float, seed: int = 0) -> np.ndarray:
    """A vowel-like clip: harmonics of a wavering pitch ``f0`` with noise, 16 kHz."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))
    wave = wave + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.1 * wave).astype(np.float32)


@pytest.fixture(scope="module")
def random_encoder():
    torch.manual_seed(0)
    return load_backbone("resemblyzer:", pretrained=False)


def packaged_or_skip():
    try:
        return rz.packaged_weights()
    except MissingWeightsError:
        pytest.skip("resemblyzer is not installed (pip install --no-deps resemblyzer)")


def test_partials_shape_unit_length_and_batch_independence(random_encoder):
    bb = random_encoder
    assert bb.modality == "audio" and bb.feature_kinds == ("pooled",) and bb.num_features == 256
    bb.check_groups()
    assert [sum(p.numel() for p in g) for g in bb.layer_groups()] == [4 * 256 * (40 + 256 + 2), *[4 * 256 * 514] * 2,
                                                                      256 * 257]
    waves = [voiced(3.0, 120), voiced(0.4, 210, seed=1), voiced(1.0, 160, seed=2)]
    batch = bb.preprocess(waves)
    # 3 s: 3 partials of 160 frames, 77 apart; a short clip is padded to one partial (1.6 s)
    assert batch["input_features"].shape == (3, 40, 2 * 77 + 160)
    assert batch["frame_mask"].sum(1).tolist() == [2 * 77 + 160, 160, 160]
    with torch.no_grad():
        feats = bb.forward_features(batch)
        again = bb.forward_features(bb.preprocess(waves))
        alone = bb.forward_features(bb.preprocess(waves[1:2]))
    assert feats.shape == (3, 256) and torch.isfinite(feats).all()
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))
    assert torch.equal(feats, again)  # deterministic
    torch.testing.assert_close(alone[0], feats[1], atol=1e-6, rtol=1e-5)  # padding partials are not counted


def test_partial_count_and_volume_follow_resemblyzer():
    assert [rz.partial_count(n) for n in (1, 25600, 31519, 31520, 48000)] == [1, 1, 1, 2, 3]
    quiet = voiced(1.0, 150) * 0.01
    louder = rz.normalize_volume(quiet)
    rms_db = 20 * np.log10(np.sqrt(np.mean((louder * 32767.0) ** 2)) / 32767.0)
    assert abs(rms_db - rz.TARGET_DBFS) < 1e-3
    loud = voiced(1.0, 150) * 5
    assert rz.normalize_volume(loud) is loud  # never lowered
    silence = np.zeros(800, dtype=np.float32)
    assert rz.normalize_volume(silence) is silence  # no division by zero


def test_clip_over_the_window_is_refused_and_options_are_checked():
    bb = load_backbone("resemblyzer:", pretrained=False, max_seconds=1)
    with pytest.raises(DataError, match="longer than the model's window of 1 s"):
        bb.preprocess([voiced(1.5, 150)])
    with pytest.raises(ConfigError, match="'max_seconds' parameter of resemblyzer"):
        load_backbone("resemblyzer:", pretrained=False, max_seconds=0)
    with pytest.raises(ConfigError, match="do not apply to 'resemblyzer:'"):
        load_backbone("resemblyzer:", pretrained=False, image_size=32)


def test_linear_probe_on_voices_round_trips_through_a_bundle(random_encoder, tmp_path):
    from transferkit.data import resolve_data
    from transferkit.export.bundle import load, save_bundle
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer, predict_outputs

    for label, f0 in (("low", 100.0), ("high", 260.0)):
        (tmp_path / "voices" / label).mkdir(parents=True)
        for i in range(4):
            sf.write(str(tmp_path / "voices" / label / f"{i}.wav"), voiced(0.5 + 0.3 * i, f0 * (1 + 0.03 * i), i), RATE)
    data = resolve_data(tmp_path / "voices")[0]
    model, _ = make_strategy("linear-probe").fit(random_encoder, data, None, Trainer(TrainConfig(progress=False)))
    out = predict_outputs(model, data)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "linear-probe"}})
    rebuilt = load(tmp_path / "b")
    assert rebuilt.manifest["backbone"]["spec"] == "resemblyzer:"
    np.testing.assert_allclose(rebuilt.outputs(data.items), out, atol=1e-5)


def test_weights_are_read_weights_only(tmp_path, monkeypatch):
    path = packaged_or_skip()
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    bb = load_backbone("resemblyzer:")
    assert bb.pretrained and calls == [{"map_location": "cpu", "weights_only": True}]
    state = real_load(path, map_location="cpu", weights_only=True)["model_state"]
    torch.testing.assert_close(bb.linear.weight, state["linear.weight"])
    # a checkpoint path names the same weights; a pickle holding code is refused, never run
    assert torch.equal(load_backbone(f"resemblyzer:{path}").lstm.weight_hh_l2, bb.lstm.weight_hh_l2)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(ConfigError("not a tensor")))
    with pytest.raises(MissingWeightsError, match="weights_only=True.*never unpickles"):
        load_backbone(f"resemblyzer:{evil}")
    torch.save({"model_state": {"lstm.weight_ih_l0": torch.zeros(3, 3)}}, tmp_path / "other.pt")
    with pytest.raises(MissingWeightsError, match="is not resemblyzer's encoder"):
        load_backbone(f"resemblyzer:{tmp_path / 'other.pt'}")


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # located, never imported
    with pytest.raises(MissingWeightsError, match=r"pip install --no-deps resemblyzer==0\.1\.4"):
        load_backbone("resemblyzer:")


def test_embeddings_match_resemblyzer_embed_utterance():
    packaged_or_skip()
    try:
        from resemblyzer import VoiceEncoder, normalize_volume
        from resemblyzer.audio import wav_to_mel_spectrogram
    except ImportError as exc:  # librosa, webrtcvad
        pytest.skip(f"resemblyzer cannot be imported: {exc}")
    reference = VoiceEncoder("cpu", verbose=False)
    bb = load_backbone("resemblyzer:")
    waves = [voiced(3.4, 110), voiced(0.7, 220, seed=1), voiced(1.9, 150, seed=2)]
    batch = bb.preprocess(waves)
    # the mel frames librosa computes for the first clip (padded as embed_utterance pads it)
    wave = normalize_volume(waves[0], -30, increase_only=True)
    frames = int(batch["frame_mask"][0].sum())
    mel = wav_to_mel_spectrogram(np.pad(wave, (0, max(0, frames * 160 - len(wave)))))[:frames]
    np.testing.assert_allclose(batch["input_features"][0].T.numpy(), mel, rtol=1e-4, atol=1e-6 * mel.max())
    with torch.no_grad():
        ours = bb.forward_features(batch).numpy()
    for wave, mine in zip(waves, ours):
        expected = reference.embed_utterance(normalize_volume(wave, -30, increase_only=True))
        np.testing.assert_allclose(mine, expected, atol=1e-5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_voice_is_closer_to_itself_than_to_another(tmp_path):
    packaged_or_skip()
    from transferkit.backbones.audio import read_audio

    said = {"a1": ("en-us+m3", "the birch canoe slid on the smooth planks"),
            "a2": ("en-us+m3", "glue the sheet to the dark blue background"),
            "b1": ("en-us+f2", "the birch canoe slid on the smooth planks")}
    for key, (voice, text) in said.items():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(tmp_path / f"{key}.wav"), text], check=True)
    bb = load_backbone("resemblyzer:")
    with torch.no_grad():
        a1, a2, b1 = bb.forward_features(bb.preprocess([read_audio(str(tmp_path / f"{k}.wav")) for k in said]))
    assert float(a1 @ a2) > float(a1 @ b1) + 0.05
