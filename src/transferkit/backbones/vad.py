"""Voice activity: Silero VAD v6 (the ONNX model packaged in the PyPI package ``silero-vad``, MIT).

Where speech is in a clip, at 32 ms resolution: what the ``vad`` option of every audio backbone cuts
(:func:`apply_vad`) and where a long recording is cut for speech recognition (:func:`speech_segments`,
:mod:`transferkit.backbones.audio_windows`). The option takes:

* ``trim`` (or ``True``; ``fit --vad``): the silence before the first and after the last word goes
  (:func:`trim_silence`); pauses inside the clip stay;
* ``speech``: the ends go and every pause inside the clip longer than 0.1 s is shortened to 0.1 s, its
  middle cut out (:func:`keep_speech`): the speech segments, joined with 0.1 s of the audio between them.

The model is the package's ``silero_vad_16k_sequence.onnx``: the streaming model exported to read a
block of 512-sample frames (each with the 64 samples before it) in one call, run with ``onnxruntime``;
its probabilities equal the streaming model's (Silero's own claim, and
``tests/test_vad.py`` checks the segments against the package's ``get_speech_timestamps``). The file
is found without importing the package (its import sets torch's thread count to 1), nothing is
unpickled, and nothing is downloaded.

:func:`speech_segments` turns the frame probabilities into segments as Silero's
``get_speech_timestamps`` does with its defaults: speech starts at a frame of probability at least
0.5, ends after 100 ms below 0.35, segments shorter than 250 ms are dropped and each is widened by
30 ms on both sides (never over its neighbour).

Each clip's segments are found once: they are remembered by the clip's samples (a BLAKE2 digest; the
last 65,536 clips), and a clip cut by :func:`trim_silence` or :func:`keep_speech` is remembered with the
segments found in the clip it was cut from, where they now lie. So the same training clip is not run again each epoch, and a long recording that is
trimmed and then cut at pauses for speech recognition, or checked by ``serve`` and then predicted, runs the
model once.

Example:
    >>> segments = speech_segments(read_audio("clip.wav"))   # doctest: +SKIP
    >>> [(s / 16000, e / 16000) for s, e in segments]         # doctest: +SKIP
    [(1.0, 2.62), (2.7, 4.21)]
"""
from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from transferkit.backbones.packaged import package_file
from transferkit.errors import ConfigError, MissingWeightsError

PACKAGE, MODULE = "silero-vad", "silero_vad"
MODEL_FILE = "silero_vad_16k_sequence.onnx"
_INSTALL = "pip install silero-vad onnxruntime (or pip install 'transferkit[audio]')"
SAMPLE_RATE = 16000
FRAME = 512  # 32 ms: one probability per frame
CONTEXT = 64  # samples of the previous frame each frame is read with
BLOCK = 512  # frames per onnxruntime call (16.4 s)
THRESHOLD, NEG_THRESHOLD = 0.5, 0.35
MIN_SPEECH, MIN_SILENCE, PAD = 4000, 1600, 480  # samples: 250 ms, 100 ms, 30 ms
GAP = 1600  # samples: 100 ms, what vad="speech" shortens a longer pause to
#: What the ``vad`` option takes (``True`` is ``trim``, ``False`` or ``off`` neither).
VAD_CHOICES = ("off", "trim", "speech")
CACHED_CLIPS = 65536  # segments remembered (a few hundred bytes each)
_found: OrderedDict[bytes, list[tuple[int, int]]] = OrderedDict()
_found_lock = threading.Lock()  # serve decodes clips in worker threads


def packaged_model() -> Path:
    """The sequence ONNX model of the installed ``silero-vad`` package, found without importing it.

    Raises:
        MissingWeightsError: the package is not installed or lacks the file.
    """
    path = package_file(MODULE, Path("data") / MODEL_FILE)
    if path is not None:
        return path
    raise MissingWeightsError(f"Voice activity detection (vad) reads Silero VAD's {MODEL_FILE} from the Python "
                              f"package '{PACKAGE}', which is not installed or lacks it: {_INSTALL}.")


@functools.lru_cache(maxsize=1)
def _session():
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"Voice activity detection (vad) runs Silero VAD with onnxruntime: {_INSTALL}.") from None
    options = ort.SessionOptions()
    options.inter_op_num_threads = options.intra_op_num_threads = 1  # small sequential work; leave cores to torch
    return ort.InferenceSession(str(packaged_model()), sess_options=options, providers=["CPUExecutionProvider"])


def speech_probabilities(wave: np.ndarray) -> np.ndarray:
    """The probability of speech in each 32 ms frame of ``wave`` (16 kHz mono; the last frame zero-padded)."""
    wave = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
    n = -(-len(wave) // FRAME)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    frames = np.zeros((n, FRAME), dtype=np.float32)
    frames.reshape(-1)[:len(wave)] = wave
    context = np.zeros((n, CONTEXT), dtype=np.float32)
    context[1:] = frames[:-1, -CONTEXT:]
    rows = np.concatenate([context, frames], axis=1)
    session, out = _session(), []
    h = c = np.zeros((1, 1, 128), dtype=np.float32)
    for start in range(0, n, BLOCK):
        probs, h, c = session.run(["speech_probs", "hn", "cn"], {"input": rows[start:start + BLOCK], "h": h, "c": c})
        out.append(probs.reshape(-1))
    return np.concatenate(out)


def segments_from_probabilities(probs: np.ndarray, n_samples: int) -> list[tuple[int, int]]:
    """Speech segments ``[(start, stop), ...]`` in samples from frame probabilities (Silero's defaults)."""
    found, start, silence_from = [], None, None
    for i, p in enumerate(probs):
        at = i * FRAME
        if p >= THRESHOLD:
            silence_from = None
            if start is None:
                start = at
        elif start is not None and p < NEG_THRESHOLD:
            silence_from = at if silence_from is None else silence_from
            if at - silence_from >= MIN_SILENCE:
                if silence_from - start > MIN_SPEECH:
                    found.append([start, silence_from])
                start, silence_from = None, None
    if start is not None and n_samples - start > MIN_SPEECH:
        found.append([start, n_samples])
    for k, seg in enumerate(found):  # widen by PAD, splitting a narrower gap between neighbours
        if k == 0:
            seg[0] = max(0, seg[0] - PAD)
        if k + 1 < len(found):
            gap = found[k + 1][0] - seg[1]
            if gap < 2 * PAD:
                seg[1] += gap // 2
                found[k + 1][0] = max(0, found[k + 1][0] - gap // 2)
            else:
                seg[1] = min(n_samples, seg[1] + PAD)
                found[k + 1][0] = max(0, found[k + 1][0] - PAD)
        else:
            seg[1] = min(n_samples, seg[1] + PAD)
    return [(int(a), int(b)) for a, b in found]


def _key(wave: np.ndarray) -> bytes:
    """What a clip is remembered by: a digest of its float32 samples (their count included)."""
    samples = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
    return hashlib.blake2b(samples.view(np.uint8), digest_size=16, person=b"vad-16k").digest()


def _remember(key: bytes, found: list[tuple[int, int]]) -> None:
    with _found_lock:
        _found[key] = list(found)
        _found.move_to_end(key)
        while len(_found) > CACHED_CLIPS:
            _found.popitem(last=False)


def clear_cache() -> None:
    """Forget the segments found so far."""
    with _found_lock:
        _found.clear()


def speech_segments(wave: np.ndarray) -> list[tuple[int, int]]:
    """Where ``wave`` (16 kHz mono) holds speech: ``[(start, stop), ...]`` in samples, in order (found once per
    clip: see the module's docstring).

    Raises:
        MissingWeightsError: ``silero-vad`` is not installed.
    """
    key = _key(wave)
    with _found_lock:
        if key in _found:
            _found.move_to_end(key)
            return list(_found[key])
    found = segments_from_probabilities(speech_probabilities(wave), len(wave))
    _remember(key, found)
    return found


def trim_silence(wave: np.ndarray) -> np.ndarray:
    """``wave`` from the start of its first speech segment to the end of its last (30 ms kept on each side);
    a clip in which no speech is found is returned whole (a word under noise is kept, not dropped). The trimmed
    clip's segments are remembered: those of ``wave``, shifted."""
    found = speech_segments(wave)
    if not found:
        return wave
    start = found[0][0]
    out = wave[start:found[-1][1]]
    _remember(_key(out), [(a - start, b - start) for a, b in found])
    return out


def keep_speech(wave: np.ndarray, gap: int = GAP) -> np.ndarray:
    """The speech segments of ``wave`` joined with ``gap`` samples (0.1 s) of the audio between them: the ends
    go (as :func:`trim_silence`) and each pause longer than ``gap`` keeps ``gap // 2`` samples on each side,
    its middle cut out; shorter pauses stay whole. A clip in which no speech is found is returned whole. The
    result's segments are remembered, where they now lie."""
    found = speech_segments(wave)
    if not found:
        return wave
    half, pieces = gap // 2, [[found[0][0], found[0][1]]]
    for a, b in found[1:]:
        if a - pieces[-1][1] <= gap:
            pieces[-1][1] = b
        else:
            pieces[-1][1] += half
            pieces.append([a - half, b])
    out = np.concatenate([wave[a:b] for a, b in pieces])
    moved, offset, k = [], 0, 0
    for a, b in found:
        while b > pieces[k][1]:
            offset += pieces[k][1] - pieces[k][0]
            k += 1
        moved.append((offset + a - pieces[k][0], offset + b - pieces[k][0]))
    _remember(_key(out), moved)
    return out


def vad_setting(value, owner: str = "audio backbones") -> bool | str:
    """The ``vad`` option as bundles keep it: ``False`` (off), ``True`` (trim; older bundles wrote ``True``
    too) or ``"speech"``.

    Raises:
        ConfigError: any other value, listing the choices.

    Example:
        >>> vad_setting("trim"), vad_setting(False), vad_setting("speech")
        (True, False, 'speech')
    """
    if isinstance(value, str) and value.lower() in ("true", "false"):  # -o vad=true on the command line
        value = value.lower() == "true"
    if value is None or value is False or value == "off":
        return False
    if value is True or value == "trim":
        return True
    if value == "speech":
        return "speech"
    raise ConfigError(f"The 'vad' parameter of {owner} must be one of {', '.join(VAD_CHOICES)} (True is trim, False "
                      f"is off). Got {value!r} instead.")


def apply_vad(wave: np.ndarray, setting: bool | str) -> np.ndarray:
    """``wave`` as the ``vad`` setting keeps it: whole (off), trimmed (``True``) or its speech (``"speech"``)."""
    setting = vad_setting(setting)
    if not setting:
        return wave
    return keep_speech(wave) if setting == "speech" else trim_silence(wave)
