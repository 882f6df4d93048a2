"""Audio input: decoding, resampling, log-mel features and the :class:`AudioPreprocess` of audio backbones.

An audio item is a file path (WAV, FLAC, OGG, MP3: whatever libsndfile reads, through
``soundfile``), the bytes of such a file (an upload), a 1-D float array already at the
model's sample rate, or a ``{"array", "sampling_rate"}`` dict (Hugging Face ``datasets``'
``Audio`` column). Every item is mixed down to mono and resampled with ``soxr`` to the
model's rate. A file that cannot be decoded, an empty one, a sample rate of 0, NaN samples
and a clip longer than the model's window are each a :class:`~transferkit.errors.DataError`
naming the item; nothing is cut silently. Whisper reads a longer clip in overlapping windows instead
(:mod:`transferkit.backbones.audio_windows`). With ``vad=True`` (``"trim"``) the silence before the first and
after the last word is trimmed first; with ``vad="speech"`` long pauses inside the clip are shortened to 0.1 s
too (Silero VAD, :mod:`transferkit.backbones.vad`).

The features are log-mel spectrograms (10 ms hop, 25 ms window), computed in PyTorch:

* ``whisper``: Whisper's own log-mel (log10, clamped to 8 below the clip's maximum, scaled
  ``(x + 4) / 4``; the same values as ``transformers.WhisperFeatureExtractor``), every clip
  padded with silence to the model's window, as Whisper's encoder expects;
* ``log-mel``: natural-log mel energies of each clip on its own, padded to the longest clip of the
  batch (so a clip's features do not depend on what it is batched with).

Both give ``{"input_features": [B, n_mels, frames], "frame_mask": [B, frames]}``
(1 where the frame holds audio, 0 on padding).
"""
from __future__ import annotations

import copy
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from transferkit.backbones.audio_windows import Window, overlapping_windows
from transferkit.backbones.base import Preprocess
from transferkit.backbones.vad import apply_vad, vad_setting
from transferkit.errors import ConfigError, DataError

#: File suffixes taken as audio in folders and tables (libsndfile reads them).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")
#: Samples per second of every built-in audio backbone.
SAMPLE_RATE = 16000
HOP = 160  # 10 ms at 16 kHz
N_FFT = 400  # 25 ms at 16 kHz
FEATURE_KINDS = ("whisper", "log-mel")
_INSTALL = "pip install soundfile soxr (or pip install 'transferkit[audio]')"


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise ConfigError(f"Reading audio needs the 'soundfile' package: {_INSTALL}.") from None
    return soundfile


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave`` (float32, 1-D) from ``rate`` to ``target`` samples per second (soxr, high quality)."""
    if rate == target:
        return wave
    try:
        import soxr
    except ImportError:
        raise ConfigError(f"Resampling audio needs the 'soxr' package: {_INSTALL}.") from None
    return soxr.resample(wave, rate, target, quality="HQ").astype(np.float32)


def _info(source, where: str):
    """soundfile's header info of a file or file-like object (rewound); DataError naming ``where`` when it is
    missing, not audio, has a sample rate of 0 or no samples."""
    sf = _soundfile()
    try:
        info = sf.info(source)
        if hasattr(source, "seek"):
            source.seek(0)
    except FileNotFoundError:
        raise DataError(f"Audio file not found: {where}") from None
    except (RuntimeError, ValueError, OSError, EOFError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise DataError(f"Cannot read audio {where}: not a readable audio file ({_first_line(exc)}). "
                        f"Supported: WAV, FLAC, OGG, MP3.") from None
    if info.samplerate <= 0:
        raise DataError(f"Cannot read audio {where}: its sample rate is {info.samplerate} Hz.")
    if info.frames == 0 or info.channels == 0:
        raise DataError(f"Cannot read audio {where}: it holds no samples (an empty clip).")
    return info


def _decode(source, where: str) -> tuple[np.ndarray, int]:
    """``(samples [N, channels], rate)`` of a file or file-like object; DataError naming ``where``."""
    sf = _soundfile()
    _info(source, where)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, OSError, EOFError) as exc:
        raise DataError(f"Cannot read audio {where}: {_first_line(exc)}.") from None
    if data.size == 0:
        raise DataError(f"Cannot read audio {where}: it holds no samples (an empty clip).")
    return data, int(rate)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_audio(item, sample_rate: int = SAMPLE_RATE, where: str | None = None) -> np.ndarray:
    """One audio item as mono float32 samples at ``sample_rate``.

    Args:
        item: a file path, the bytes of an audio file, a 1-D array (taken to be at
            ``sample_rate`` already) or a ``{"array", "sampling_rate"}`` dict.
        sample_rate: the rate to resample to.
        where: how errors name the item (default: its path, or "audio item").

    Raises:
        DataError: a missing, corrupt, empty or non-audio file, a sample rate of 0, NaN or inf samples.

    Example:
        >>> read_audio(np.zeros(800, dtype=np.float32)).shape
        (800,)
    """
    is_path = isinstance(item, (str, os.PathLike))
    where = where or (os.fspath(item) if is_path else "uploaded audio" if isinstance(item, (bytes, bytearray))
                      else "audio item")
    if isinstance(item, dict):
        if "array" not in item or "sampling_rate" not in item:
            raise DataError(f"{where}: an audio dict needs 'array' and 'sampling_rate'; "
                            f"got keys {sorted(item)}.")
        rate = item["sampling_rate"]
        if not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise DataError(f"{where}: its sampling_rate is {rate!r}; a positive int is needed.")
        wave, rate = _as_wave(np.asarray(item["array"], dtype=np.float32), where), int(rate)
    elif isinstance(item, np.ndarray):
        wave, rate = _as_wave(item.astype(np.float32, copy=False), where), sample_rate
    elif isinstance(item, (bytes, bytearray)):
        data, rate = _decode(io.BytesIO(bytes(item)), where)
        wave = data.mean(axis=1)
    elif is_path:
        data, rate = _decode(os.fspath(item), where)
        wave = data.mean(axis=1)
    else:
        raise DataError(f"{where} is a {type(item).__name__}; an audio item is a file path, "
                        f"file bytes, a 1-D array or an {{'array', 'sampling_rate'}} dict.")
    if not np.isfinite(wave).all():
        raise DataError(f"Cannot read audio {where}: it holds NaN or inf samples.")
    return resample(np.ascontiguousarray(wave, dtype=np.float32), rate, sample_rate)


def _as_wave(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 2:  # [channels, samples] or [samples, channels]: mix down along the short axis
        arr = arr.mean(axis=0 if arr.shape[0] <= arr.shape[1] else 1)
    if arr.ndim != 1:
        raise DataError(f"{where}: audio samples must be a 1-D array (or [channels, samples]); got shape {arr.shape}.")
    if arr.size == 0:
        raise DataError(f"{where}: it holds no samples (an empty clip).")
    return arr


def audio_info(path: str | os.PathLike) -> tuple[float, int]:
    """``(seconds, sample rate)`` of an audio file from its header; DataError naming the file when unreadable.

    What data adapters call on every file they list, so a bad file fails when the data is read,
    before any training.
    """
    info = _info(os.fspath(path), os.fspath(path))
    return info.frames / info.samplerate, int(info.samplerate)


_MEL_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def mel_filters(n_mels: int, kind: str = "whisper") -> torch.Tensor:
    """The ``[N_FFT // 2 + 1, n_mels]`` mel filter bank (Slaney scale and norm, 0-8 kHz, as Whisper's)."""
    key = (n_mels, kind)
    if key not in _MEL_CACHE:
        from transformers.audio_utils import mel_filter_bank

        bank = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                               mel_scale="slaney")
        _MEL_CACHE[key] = torch.from_numpy(np.asarray(bank, dtype=np.float32))
    return _MEL_CACHE[key]


def log_mel(waves: torch.Tensor, n_mels: int, kind: str) -> torch.Tensor:
    """Log-mel features ``[B, n_mels, frames]`` of padded waves ``[B, samples]`` (frames = samples / 160)."""
    window = torch.hann_window(N_FFT, device=waves.device)
    spec = torch.stft(waves, N_FFT, HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2
    mel = mel_filters(n_mels).to(waves.device).T @ power
    if kind == "whisper":
        logs = mel.clamp(min=1e-10).log10()
        top = logs.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(logs, top - 8.0) + 4.0) / 4.0
    return (mel + 1e-6).log()


class AudioPreprocess(Preprocess):
    """Decode, mix down, resample, trim silence (``vad``), refuse (or window) clips over the window, pad, then
    log-mel features.

    Args:
        n_mels: mel bands.
        features: ``whisper`` (Whisper's scaling, padded to the whole window) or ``log-mel``
            (natural log, padded to the longest clip of the batch).
        max_seconds: the longest clip taken; a longer one is refused, naming it (unless ``windows``).
        sample_rate: samples per second the model reads.
        vad: what Silero VAD keeps of each clip: ``False`` (all), ``True`` or ``"trim"`` (from the first to the
            last word), ``"speech"`` (that, with each pause inside the clip shortened to 0.1 s).
        windows: read a clip longer than ``max_seconds`` in overlapping windows (``whisper`` features: the
            batch then says which clip each window belongs to, ``window_item``) instead of refusing it.
    """

    kind = "audio"

    def __init__(self, n_mels: int = 80, features: str = "whisper", max_seconds: float = 30.0,
                 sample_rate: int = SAMPLE_RATE, vad: bool | str = False, windows: bool = False):
        if features not in (*FEATURE_KINDS, *_FEATURE_CLASSES):
            kinds = ", ".join((*FEATURE_KINDS, *_FEATURE_CLASSES))
            raise ConfigError(f"The 'features' parameter of AudioPreprocess must be one of {kinds}. "
                              f"Got {features!r} instead.")
        self.n_mels, self.features = int(n_mels), features
        self.max_seconds, self.sample_rate = float(max_seconds), int(sample_rate)
        if windows and features != "whisper":
            raise ConfigError("Windows over long clips are pooled by Whisper's encoder (features='whisper'); "
                              f"got features={features!r}.")
        self.vad, self.windows = vad_setting(vad), bool(windows)  # False, True (trim) or "speech"
        #: training-time augmentation of the decoded waves (:meth:`with_wave_augment`, a
        #: :class:`~transferkit.backbones.audio_augment.WaveAugment`); ``None`` in inference.
        self.wave_augment: Callable[..., list[np.ndarray]] | None = None

    def with_wave_augment(self, augment: Callable[..., list[np.ndarray]]) -> AudioPreprocess:
        """A copy of this preprocessing that passes every decoded wave through ``augment`` (what training data
        reads); this one, which predictions and bundles use, is not changed."""
        out = copy.copy(self)
        out.wave_augment = augment
        return out

    @property
    def max_samples(self) -> int:
        return int(round(self.max_seconds * self.sample_rate))

    def waves(self, items: Sequence, windows: bool | None = None) -> list[np.ndarray]:
        """Each item as mono samples at the model's rate (silence cut with ``vad``); a clip over the window is
        refused, naming it, unless it is read in ``windows`` (default: this preprocessing's setting)."""
        windows = self.windows if windows is None else windows
        out = []
        for i, item in enumerate(items):
            where = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"audio item {i}"
            wave = read_audio(item, self.sample_rate, where)
            wave = apply_vad(wave, self.vad)
            if len(wave) > self.max_samples and not windows:
                raise DataError(f"{where}: the clip is {len(wave) / self.sample_rate:.2f} s, longer than the model's "
                                f"window of {self.max_seconds:g} s (nothing is cut silently). "
                                f"{self.over_window_hint()}")
            out.append(wave)
        return out

    def over_window_hint(self) -> str:
        """What to do about a clip over the window (the refusal's advice)."""
        return (f"Cut it into clips of at most {self.max_seconds:g} s, or raise the backbone's max_seconds option "
                f"(whisper: backbones read longer clips in overlapping windows; their ONNX export reads one).")

    def split(self, wave: np.ndarray) -> list[Window]:
        """The windows the model reads ``wave`` in: the whole clip, or (``windows``, longer than the window)
        windows overlapping by a third (:func:`~transferkit.backbones.audio_windows.overlapping_windows`)."""
        if not self.windows or len(wave) <= self.max_samples:
            return [Window(0, len(wave), 0, len(wave))]
        return overlapping_windows(len(wave), self.max_samples)

    def from_waves(self, waves: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """The model batch of decoded mono waves (what augmentation on samples feeds back in)."""
        if self.features == "whisper":  # Whisper pads the samples with silence to its window, as it was trained
            return self._whisper_batch(waves)
        # each clip on its own (its edges reflected, not padded), then the frames padded: batch-independent
        parts = [log_mel(torch.from_numpy(np.asarray(np.pad(w, (0, max(0, HOP - len(w)))), dtype=np.float32))[None],
                         self.n_mels, self.features)[0] for w in waves]
        feats = torch.full((len(waves), self.n_mels, max(p.shape[-1] for p in parts)), math.log(1e-6))
        for b, part in enumerate(parts):
            feats[b, :, :part.shape[-1]] = part
        # a clip of L samples has L // 160 frames of its own: ceil(L / 160) would mark a padding frame as audio
        # whenever a longer clip shares the batch
        frames_per_item = [part.shape[-1] for part in parts]
        mask = torch.zeros(len(waves), feats.shape[-1], dtype=torch.long)
        for b, n in enumerate(frames_per_item):
            mask[b, :n] = 1
        return {"input_features": feats, "frame_mask": mask}

    def _whisper_batch(self, waves: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Each window padded to the whole window: a clip read in several windows adds rows, ``window_item`` (the
        clip of each row) and ``window_overlap`` (whether it overlaps the row before); ``frame_mask`` marks the
        frames each window keeps."""
        rows = [(b, win) for b, wave in enumerate(waves) for win in self.split(wave)]
        batch = torch.zeros(len(rows), max(self.max_samples, HOP))
        for r, (b, win) in enumerate(rows):
            batch[r, :win.stop - win.start] = torch.from_numpy(np.asarray(waves[b][win.start:win.stop],
                                                                          dtype=np.float32))
        feats = log_mel(batch, self.n_mels, self.features)
        mask = torch.zeros(len(rows), feats.shape[-1], dtype=torch.long)
        for r, (_, win) in enumerate(rows):
            mask[r, (win.keep_start - win.start) // HOP:max(1, math.ceil((win.keep_stop - win.start) / HOP))] = 1
        out = {"input_features": feats, "frame_mask": mask}
        if len(rows) > len(waves):
            out["window_item"] = torch.tensor([b for b, _ in rows], dtype=torch.long)
            out["window_overlap"] = torch.tensor([win.overlaps_previous for _, win in rows], dtype=torch.bool)
        return out

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        if not len(items):
            raise DataError("No audio items to preprocess.")
        return self.from_waves(self.augmented(self.waves(items)))

    def augmented(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """``waves`` through the training augmentation, if any (never longer than the window)."""
        if self.wave_augment is None:
            return waves
        return self.wave_augment(waves, self.sample_rate, self.max_samples)

    def config(self) -> dict:
        # vad only when on (True for trim, as older bundles wrote it): configs and feature-cache keys stay as they were
        return {"kind": self.kind, "n_mels": self.n_mels, "features": self.features, "max_seconds": self.max_seconds,
                "sample_rate": self.sample_rate, **({"vad": self.vad} if self.vad else {})}


def audio_options(preprocess: AudioPreprocess) -> dict:
    """The :func:`~transferkit.backbones.load_backbone` options an audio backbone is rebuilt with (its
    ``architecture_options``): ``max_seconds``, and ``vad`` when it is on (``True`` for trim, or ``"speech"``)."""
    return {"max_seconds": preprocess.max_seconds, **({"vad": preprocess.vad} if preprocess.vad else {})}


#: Features computed by a subclass of :class:`AudioPreprocess` (``resemblyzer-mel``) -> that subclass.
_FEATURE_CLASSES: dict[str, type[AudioPreprocess]] = {}


def register_features(name: str, cls: type[AudioPreprocess]) -> None:
    """Declare that ``cls`` computes the features named ``name`` (what :func:`preprocess_from_config` rebuilds)."""
    _FEATURE_CLASSES[name] = cls


def preprocess_from_config(config: dict) -> AudioPreprocess:
    """The audio preprocessing an :meth:`AudioPreprocess.config` describes (what an ONNX export rebuilds).

    Example:
        >>> preprocess_from_config(AudioPreprocess(n_mels=40, features="log-mel").config()).n_mels
        40
    """
    cls = _FEATURE_CLASSES.get(config.get("features"), AudioPreprocess)
    return cls(**{k: config[k] for k in ("n_mels", "features", "max_seconds", "sample_rate", "vad") if k in config})


def is_audio_path(value) -> bool:
    """Whether ``value`` is a path string ending in an audio suffix."""
    return isinstance(value, (str, os.PathLike)) and Path(os.fspath(value)).suffix.lower() in AUDIO_EXTENSIONS
