"""Augmentation of audio clips: noise at an SNR, time shift, speed and pitch perturbation (on decoded waves, the
``audio_augment`` option of training) and SpecAugment's masking of log-mel features."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from transferkit.backbones.audio import _INSTALL, SAMPLE_RATE
from transferkit.errors import ConfigError


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
