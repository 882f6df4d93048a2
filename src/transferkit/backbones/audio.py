"""Audio input: decoding, resampling, log-mel features and the :class:`AudioPreprocess` of audio backbones.

An audio item is a file path (WAV, FLAC, OGG, MP3: whatever libsndfile reads, through
``soundfile``), the bytes of such a file (an upload), a 1-D float array already at the
model's sample rate, or a ``{"array", "sampling_rate"}`` dict (Hugging Face ``datasets``'
``Audio`` column). Every item is mixed down to mono and resampled with ``soxr`` to the
model's rate. A file that cannot be decoded, an empty one, a sample rate of 0, NaN samples
and a clip longer than the model's window are each a :class:`~transferkit.errors.DataError`
naming the item; nothing is cut silently.

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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from transferkit.backbones.base import Preprocess
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
    """Decode, mix down, resample, refuse clips over the window, pad, then log-mel features.

    Args:
        n_mels: mel bands.
        features: ``whisper`` (Whisper's scaling, padded to the whole window) or ``log-mel``
            (natural log, padded to the longest clip of the batch).
        max_seconds: the longest clip taken; a longer one is refused, naming it.
        sample_rate: samples per second the model reads.
    """

    kind = "audio"

    def __init__(self, n_mels: int = 80, features: str = "whisper", max_seconds: float = 30.0,
                 sample_rate: int = SAMPLE_RATE):
        if features not in (*FEATURE_KINDS, *_FEATURE_CLASSES):
            kinds = ", ".join((*FEATURE_KINDS, *_FEATURE_CLASSES))
            raise ConfigError(f"The 'features' parameter of AudioPreprocess must be one of {kinds}. "
                              f"Got {features!r} instead.")
        self.n_mels, self.features = int(n_mels), features
        self.max_seconds, self.sample_rate = float(max_seconds), int(sample_rate)
        #: training-time augmentation of the decoded waves (:meth:`with_wave_augment`); ``None`` in inference.
        self.wave_augment: WaveAugment | None = None

    def with_wave_augment(self, augment: WaveAugment) -> AudioPreprocess:
        """A copy of this preprocessing that passes every decoded wave through ``augment`` (what training data
        reads); this one, which predictions and bundles use, is not changed."""
        out = copy.copy(self)
        out.wave_augment = augment
        return out

    @property
    def max_samples(self) -> int:
        return int(round(self.max_seconds * self.sample_rate))

    def waves(self, items: Sequence) -> list[np.ndarray]:
        """Each item as mono samples at the model's rate; a clip over the window is refused, naming it."""
        out = []
        for i, item in enumerate(items):
            where = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"audio item {i}"
            wave = read_audio(item, self.sample_rate, where)
            if len(wave) > self.max_samples:
                raise DataError(f"{where}: the clip is {len(wave) / self.sample_rate:.2f} s, longer than the model's "
                                f"window of {self.max_seconds:g} s (nothing is cut silently). Cut it into clips of at "
                                f"most {self.max_seconds:g} s, or raise the backbone's max_seconds option.")
            out.append(wave)
        return out

    def from_waves(self, waves: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """The model batch of decoded mono waves (what augmentation on samples feeds back in)."""
        frames_per_item = [max(1, math.ceil(len(w) / HOP)) for w in waves]
        if self.features == "whisper":  # Whisper pads the samples with silence to its window, as it was trained
            batch = torch.zeros(len(waves), max(self.max_samples, HOP))
            for b, w in enumerate(waves):
                batch[b, :len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
            feats = log_mel(batch, self.n_mels, self.features)
        else:  # each clip on its own (its edges reflected, not padded), then the frames padded: batch-independent
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

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        if not len(items):
            raise DataError("No audio items to preprocess.")
        waves = self.waves(items)
        if self.wave_augment is not None:
            waves = self.wave_augment(waves, self.sample_rate, self.max_samples)
        return self.from_waves(waves)

    def config(self) -> dict:
        return {"kind": self.kind, "n_mels": self.n_mels, "features": self.features,
                "max_seconds": self.max_seconds, "sample_rate": self.sample_rate}


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
    return cls(**{k: config[k] for k in ("n_mels", "features", "max_seconds", "sample_rate") if k in config})


def is_audio_path(value) -> bool:
    """Whether ``value`` is a path string ending in an audio suffix."""
    return isinstance(value, (str, os.PathLike)) and Path(os.fspath(value)).suffix.lower() in AUDIO_EXTENSIONS


# -- augmentation -------------------------------------------------------------------------------------------------

def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``wave`` plus white noise at a signal-to-noise ratio of ``snr_db`` decibels (power over the clip).

    Example:
        >>> w = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
        >>> noisy = add_noise(w, 10.0, np.random.default_rng(0))
        >>> round(float(10 * np.log10((w ** 2).mean() / ((noisy - w) ** 2).mean())))
        10
    """
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    noise = rng.standard_normal(len(wave)).astype(np.float32)
    return (wave + noise * np.float32(math.sqrt(power / (10.0 ** (snr_db / 10.0))))).astype(np.float32)


def time_shift(wave: np.ndarray, max_seconds: float, rng: np.random.Generator,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` delayed by up to ``max_seconds`` of leading silence (a random amount)."""
    pad = int(rng.integers(0, max(1, int(max_seconds * sample_rate)) + 1))
    return np.concatenate([np.zeros(pad, dtype=np.float32), wave.astype(np.float32)])


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` played ``factor`` times faster: shorter by ``factor`` and higher by ``factor`` (sox's ``speed``,
    Kaldi's speed perturbation, Ko et al. 2015, https://www.danielpovey.com/files/2015_interspeech_augmentation.pdf).

    The samples are taken to be at ``factor * sample_rate`` and resampled to ``sample_rate`` (soxr).

    Example:
        >>> len(speed_perturb(np.zeros(16000, dtype=np.float32), 1.25))
        12800
    """
    check_factor("speed_perturb", "factor", factor)
    if factor == 1.0:
        return wave.astype(np.float32)
    return _soxr_resample(wave, sample_rate * factor, sample_rate)


def time_stretch(wave: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """``wave`` ``rate`` times faster at the same pitch: a phase vocoder (Flanagan & Golden 1966; the
    algorithm of librosa's and torchaudio's ``phase_vocoder``). ``len(out) == round(len(wave) / rate)``."""
    check_factor("time_stretch", "rate", rate)
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    if len(x) < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - len(x)))
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # [F, T]
    steps = torch.arange(0, spec.shape[-1], rate, dtype=torch.float64)
    spec = torch.nn.functional.pad(spec, (0, 2))
    k = steps.floor().long()
    frac = (steps - k).float()
    s0, s1 = spec[:, k], spec[:, k + 1]
    advance = torch.linspace(0, math.pi * hop, spec.shape[0])[:, None]  # 2 pi hop f / n_fft at bin f
    dphase = s1.angle() - s0.angle() - advance
    dphase = dphase - 2 * math.pi * torch.round(dphase / (2 * math.pi))  # to [-pi, pi]
    phase = torch.cat([spec[:, :1].angle(), (dphase + advance)[:, :-1]], dim=1).cumsum(dim=1)
    mag = (1 - frac) * s0.abs() + frac * s1.abs()
    length = max(1, int(round(len(wave) / rate)))
    out = torch.istft(torch.polar(mag, phase), n_fft, hop, window=window, length=length)
    return out.numpy().astype(np.float32)


def pitch_shift(wave: np.ndarray, semitones: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` ``semitones`` higher (lower when negative) at the same length: stretched in time by the pitch
    ratio (:func:`time_stretch`), then resampled by it (soxr), as ``librosa.effects.pitch_shift`` does.

    Example:
        >>> len(pitch_shift(np.zeros(16000, dtype=np.float32), 2.0))
        16000
    """
    if not isinstance(semitones, (int, float, np.integer, np.floating)) or not math.isfinite(semitones) \
            or abs(semitones) > 24:
        raise ConfigError(f"The 'semitones' parameter of pitch_shift must be a number in [-24, 24]. "
                          f"Got {semitones!r} instead.")
    if semitones == 0:
        return wave.astype(np.float32)
    ratio = 2.0 ** (float(semitones) / 12.0)
    out = _soxr_resample(time_stretch(wave, 1.0 / ratio), sample_rate * ratio, sample_rate)
    return _fit_length(out, len(wave))


def check_factor(owner: str, name: str, value) -> None:
    if not isinstance(value, (int, float, np.integer, np.floating)) or not 0.25 <= value <= 4.0:
        raise ConfigError(f"The '{name}' parameter of {owner} must be a number in [0.25, 4]. Got {value!r} instead.")


def _soxr_resample(wave: np.ndarray, rate: float, target: float) -> np.ndarray:
    """``resample`` at rates that need not be whole numbers (a speed factor times the sample rate)."""
    try:
        import soxr
    except ImportError:
        raise ConfigError(f"Resampling audio needs the 'soxr' package: {_INSTALL}.") from None
    return soxr.resample(np.asarray(wave, dtype=np.float32), float(rate), float(target), quality="HQ").astype(
        np.float32)


def _fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """``wave`` cut or zero-padded to ``n`` samples (a resampler's rounding: a sample or two)."""
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


#: Wave-level augmentations of :class:`WaveAugment` -> what each does to a clip (drawn per clip).
WAVE_AUGMENTS = {
    "speed": "speed perturbation by a factor in [0.9, 1.1] (length and pitch change together)",
    "pitch": "pitch shift by -2 to +2 semitones (length kept)",
    "noise": "white noise at 10 to 30 dB SNR",
    "shift": "up to 0.2 s of leading silence",
}


class WaveAugment:
    """Random speed, pitch, noise and shift of training clips, each applied to half of the clips.

    Args:
        kinds: names from :data:`WAVE_AUGMENTS`, applied in that order (speed, pitch, noise, shift).
        p: the probability that a clip gets each one.

    A clip that the augmentations would make longer than the model's window is used as it was (cutting it
    would drop words its transcript still has). Draws come from a generator seeded from torch's, so a seeded (or
    resumed) run augments the same way.
    """

    def __init__(self, kinds, p: float = 0.5):
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        bad = [k for k in kinds if k not in WAVE_AUGMENTS]
        if bad or not kinds:
            raise ConfigError(f"The 'audio_augment' parameter must name some of {', '.join(WAVE_AUGMENTS)}. "
                              f"Got {kinds!r} instead.")
        self.kinds = [k for k in WAVE_AUGMENTS if k in kinds]
        self.p = float(p)

    def __call__(self, waves: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE,
                 max_samples: int | None = None) -> list[np.ndarray]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        return [self.one(w, rng, sample_rate, max_samples) for w in waves]

    def one(self, wave: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE,
            max_samples: int | None = None) -> np.ndarray:
        original = wave
        for kind in self.kinds:
            if rng.random() >= self.p:
                continue
            if kind == "speed":
                wave = speed_perturb(wave, float(rng.uniform(0.9, 1.1)), sample_rate)
            elif kind == "pitch":
                wave = pitch_shift(wave, float(rng.uniform(-2.0, 2.0)), sample_rate)
            elif kind == "noise":
                wave = add_noise(wave, float(rng.uniform(10.0, 30.0)), rng)
            else:
                wave = time_shift(wave, 0.2, rng, sample_rate)
        return original if max_samples is not None and len(wave) > max_samples else wave


def spec_augment(batch: dict[str, torch.Tensor], *, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2,
                 time_width: int = 10, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """SpecAugment's frequency and time masking (Park et al. 2019, https://arxiv.org/abs/1904.08779).

    Each item of ``batch["input_features"]`` ``[B, M, F]`` gets ``freq_masks`` bands of up to
    ``freq_width`` mel bins and ``time_masks`` spans of up to ``time_width`` frames (inside the
    frames that hold audio) set to the item's mean. A new dict; the input is not changed.
    """
    feats = batch["input_features"].clone()
    frames = batch["frame_mask"].sum(-1)
    n_mels = feats.shape[1]
    for b in range(feats.shape[0]):
        fill = feats[b, :, : max(1, int(frames[b]))].mean()
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
            f0 = int(torch.randint(0, max(1, n_mels - w), (1,), generator=generator))
            feats[b, f0:f0 + w, :] = fill
        for _ in range(time_masks):
            w = int(torch.randint(0, time_width + 1, (1,), generator=generator))
            t0 = int(torch.randint(0, max(1, int(frames[b]) - w), (1,), generator=generator))
            feats[b, :, t0:t0 + w] = fill
    return {**batch, "input_features": feats}
