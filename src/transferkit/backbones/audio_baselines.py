"""The no-transfer audio baselines: MFCC statistics (``mfcc``) and a small CNN on log-mel (``audio-cnn``).

* ``mfcc``: 20 MFCCs (a DCT of 40 log-mel bands, 25 ms windows, 10 ms hop) and their first
  differences, each summarised by its mean and standard deviation over the frames that hold
  audio: 80 numbers per clip, no parameters. The ``scratch`` strategy fits a logistic
  regression on them (the classic keyword / speaker baseline).
* ``audio-cnn``: four Conv-BN-ReLU-pool stages over the 40-band log-mel "image" (each band's mean over
  the clip removed), a masked mean over time: the small network a practitioner trains from
  scratch, with SpecAugment in training (``scratch`` strategy).

Both read 16 kHz mono, padded to the longest clip of a batch, at most ``max_seconds`` (30 s).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from transferkit.backbones import BACKBONE_SOURCES
from transferkit.backbones.audio import AudioPreprocess, audio_options
from transferkit.backbones.base import Backbone
from transferkit.errors import ConfigError

N_MELS = 40
N_MFCC = 20
CNN_WIDTHS = (16, 32, 64, 64)


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The orthonormal DCT-II ``[n_out, n_in]`` (what MFCCs apply to log-mel bands)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    m = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    m[0] /= math.sqrt(2.0)
    return m.float()


def _masked_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``x [B, C, F]`` over the frames where ``mask [B, F]`` is 1."""
    w = mask.unsqueeze(1).to(x.dtype)
    n = w.sum(-1).clamp(min=1.0)
    mean = (x * w).sum(-1) / n
    var = (((x - mean.unsqueeze(-1)) ** 2) * w).sum(-1) / n
    return mean, var.clamp(min=0).sqrt()


class MfccStats(Backbone):
    """MFCC and delta statistics (mean and std over time): a fixed 80-d description of a clip."""

    modality = "audio"

    def __init__(self, max_seconds: float = 30.0, vad: bool | str = False):
        super().__init__()
        self.spec = "mfcc:"
        self.register_buffer("dct", dct_matrix(N_MELS, N_MFCC))
        self.num_features = 4 * N_MFCC
        self.preprocess = AudioPreprocess(n_mels=N_MELS, features="log-mel", max_seconds=max_seconds, vad=vad)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mfcc = torch.einsum("km,bmf->bkf", self.dct, batch["input_features"])
        mask = batch["frame_mask"]
        delta = torch.zeros_like(mfcc)
        delta[..., 1:] = mfcc[..., 1:] - mfcc[..., :-1]
        delta_mask = mask.clone()
        delta_mask[:, 0] = 0  # the first frame has no difference
        m_mean, m_std = _masked_stats(mfcc, mask)
        d_mean, d_std = _masked_stats(delta, delta_mask)
        return torch.cat([m_mean, m_std, d_mean, d_std], dim=1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return []

    def architecture_options(self) -> dict:
        return audio_options(self.preprocess)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AudioCNN(Backbone):
    """A small CNN on log-mel spectrograms (~61k parameters), trained from scratch.

    Each clip's per-band mean (over its frames) is removed first, padding set to 0; four stages of
    a 3x3 convolution (16, 32, 64, 64 channels) and a 2x2 max-pool (about 20M multiply-adds per
    second of audio: a CPU trains it in minutes); the last map is averaged over frequency and over
    the time steps that hold audio.
    """

    modality = "audio"

    def __init__(self, max_seconds: float = 30.0, vad: bool | str = False):
        super().__init__()
        self.spec = "audio-cnn:"
        blocks, cin = [], 1
        for cout in CNN_WIDTHS:
            blocks.append(nn.Sequential(_block(cin, cout), nn.MaxPool2d(2)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.num_features = cin
        self.preprocess = AudioPreprocess(n_mels=N_MELS, features="log-mel", max_seconds=max_seconds, vad=vad)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, mask = batch["input_features"], batch["frame_mask"].to(batch["input_features"].dtype)
        mean, _ = _masked_stats(x, mask)
        x = ((x - mean.unsqueeze(-1)) * mask.unsqueeze(1)).unsqueeze(1)
        for conv, pool in self.blocks:
            # padding is zeroed after every convolution and a pooled step counts only when both of its frames are
            # audio: a clip's features are then the same alone as in a batch with longer clips
            x = pool(conv(x) * mask[:, None, None, :])
            steps = x.shape[-1]
            mask = mask[:, : 2 * steps].reshape(mask.shape[0], steps, 2).amin(-1)
            x = x * mask[:, None, None, :]
        x = x.mean(dim=2)  # over frequency: [B, C, T]
        w = mask.unsqueeze(1)
        return (x * w).sum(-1) / w.sum(-1).clamp(min=1.0)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(b.parameters()) for b in self.blocks]

    def architecture_options(self) -> dict:
        return audio_options(self.preprocess)


def _max_seconds(value) -> float:
    if value is None:
        return 30.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= 600:
        raise ConfigError(f"The 'max_seconds' parameter of audio baselines must be a number in [0.1, 600]. "
                          f"Got {value!r} instead.")
    return float(value)


def _mfcc(name: str, *, pretrained: bool = False, files_dir=None, max_seconds=None, vad=False, **_) -> MfccStats:
    # nothing to load: the features are fixed, the classifier on them is fitted by the strategy
    return MfccStats(_max_seconds(max_seconds), vad)


def _audio_cnn(name: str, *, pretrained: bool = False, files_dir=None, max_seconds=None, vad=False, **_) -> AudioCNN:
    # `pretrained` is ignored: nothing pre-trained exists, the point of this backbone is training from scratch
    return AudioCNN(_max_seconds(max_seconds), vad)


BACKBONE_SOURCES.register("mfcc", _mfcc, help="MFCC + delta statistics of a clip, 80-d (the audio baseline "
                                              "with logistic regression)")
BACKBONE_SOURCES.register("audio-cnn", _audio_cnn, help="small CNN on log-mel spectrograms trained from scratch "
                                                        "(the audio baseline)")
