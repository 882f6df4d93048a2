"""Resemblyzer's speaker encoder as a backbone (``resemblyzer:``): a 256-d voice embedding per clip.

The encoder of the ``resemblyzer`` package (Resemble AI, after Wan et al. 2018, "Generalized
End-to-End Loss for Speaker Verification", https://arxiv.org/abs/1710.10467): a 3-layer LSTM
(256 wide) over 40-band mel frames, its last hidden state through a linear layer and a ReLU,
L2-normalised. 1.42M parameters.

Only the package's weight file ``pretrained.pt`` is read, with ``torch.load(weights_only=True)``;
the package itself is never imported (it imports librosa and webrtcvad) and nothing is unpickled.
Install it with ``pip install --no-deps resemblyzer==0.1.4``. ``resemblyzer:PATH.pt`` reads another
checkpoint of the same architecture (what resemblyzer's ``weights_fpath`` takes).

Preprocessing mirrors resemblyzer's ``preprocess_wav`` and ``embed_utterance``:

* 16 kHz mono, the volume raised (never lowered) to -30 dBFS;
* mel power spectrogram as librosa's ``melspectrogram`` computes it (25 ms Hann window, 10 ms hop,
  centred frames with zero padding, 40 Slaney bands over 0-8 kHz; not logarithmic);
* partial utterances of 160 frames (1.6 s), one every 77 frames (1.3 per second), the clip
  zero-padded to cover the last one, which is kept when it holds at least 75% audio;
* each partial embedded; the clip's embedding is the L2-normalised mean of its partials'.

Not mirrored: ``preprocess_wav``'s removal of long silences with webrtcvad's voice detector. A clip
with long pauses embeds the pauses too; cut or trim such recordings first.

The batch is ``{"input_features": [B, 40, frames], "frame_mask": [B, frames]}`` with each clip's
frames up to the end of its last partial marked 1 (the padding that completes the last partial
included, as resemblyzer reads it); a partial counts when its last frame is marked.

Example:
    >>> bb = load_backbone("resemblyzer:")                                   # doctest: +SKIP
    >>> bb.forward_features(bb.preprocess(["alice.wav", "bob.wav"])).shape  # doctest: +SKIP
    torch.Size([2, 256])
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from transferkit.backbones import register_source
from transferkit.backbones.audio import (HOP, N_FFT, SAMPLE_RATE, AudioPreprocess, audio_options, mel_filters,
                                        register_features)
from transferkit.backbones.base import Backbone
from transferkit.backbones.packaged import load_tensors, package_file
from transferkit.backbones.pooling import masked_mean
from transferkit.errors import ConfigError, MissingWeightsError, check_range

PACKAGE, VERSION, MODULE = "resemblyzer", "0.1.4", "resemblyzer"
_INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
#: Names of the packaged encoder (an empty name too).
PACKAGED_NAMES = ("", "pretrained", "voice-encoder")
N_MELS, HIDDEN, EMBEDDING, LAYERS = 40, 256, 256, 3
PARTIAL_FRAMES = 160  # 1.6 s of 10 ms frames
PARTIALS_PER_SECOND, MIN_COVERAGE = 1.3, 0.75  # embed_utterance's defaults
PARTIAL_STEP = int(round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP))  # 77 frames
TARGET_DBFS = -30.0
_INT16_MAX = 2 ** 15 - 1
FEATURES = "resemblyzer-mel"


def partial_count(n_samples: int) -> int:
    """How many partial utterances resemblyzer's ``compute_partial_slices`` cuts a clip of ``n_samples`` into.

    Example:
        >>> [partial_count(n) for n in (100, 16000, 32000, 48000)]
        [1, 1, 2, 3]
    """
    n_frames = math.ceil((n_samples + 1) / HOP)
    steps = max(1, n_frames - PARTIAL_FRAMES + PARTIAL_STEP + 1)
    count = math.ceil(steps / PARTIAL_STEP)
    coverage = (n_samples - (count - 1) * PARTIAL_STEP * HOP) / (PARTIAL_FRAMES * HOP)
    return count - 1 if coverage < MIN_COVERAGE and count > 1 else count


def normalize_volume(wave: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """``wave`` scaled up to ``target_dbfs`` (RMS over the clip, as 16-bit samples); louder clips are kept."""
    rms = float(np.sqrt(np.mean(np.square(wave.astype(np.float64) * _INT16_MAX))))
    if rms == 0.0:  # silence stays silence (resemblyzer would divide by zero)
        return wave
    change = target_dbfs - 20.0 * math.log10(rms / _INT16_MAX)
    return wave if change < 0 else (wave * np.float32(10.0 ** (change / 20.0))).astype(np.float32)


def mel_power(wave: torch.Tensor) -> torch.Tensor:
    """librosa's ``melspectrogram`` of a 1-D wave at 16 kHz: ``[40, 1 + samples // 160]`` mel power frames."""
    window = torch.hann_window(N_FFT, dtype=wave.dtype)
    spec = torch.stft(wave, N_FFT, HOP, window=window, center=True, pad_mode="constant", return_complex=True)
    return mel_filters(N_MELS).T @ (spec.abs() ** 2)


class ResemblyzerPreprocess(AudioPreprocess):
    """16 kHz mono, volume up to -30 dBFS, then mel power frames covering each clip's partial utterances.

    Args:
        max_seconds: the longest clip taken; a longer one is refused, naming it.
        **_: the other fields of :meth:`config` (fixed here), so :func:`preprocess_from_config` rebuilds it.
    """

    def __init__(self, max_seconds: float = 30.0, vad: bool | str = False, **_):
        super().__init__(n_mels=N_MELS, features=FEATURES, max_seconds=max_seconds, vad=vad)

    def from_waves(self, waves: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        parts = []
        for wave in waves:
            wave = normalize_volume(np.asarray(wave, dtype=np.float32))
            frames = (partial_count(len(wave)) - 1) * PARTIAL_STEP + PARTIAL_FRAMES
            padded = np.pad(wave, (0, max(0, frames * HOP - len(wave))))
            parts.append(mel_power(torch.from_numpy(padded))[:, :frames])
        width = max(p.shape[-1] for p in parts)
        feats = torch.zeros(len(parts), N_MELS, width)
        mask = torch.zeros(len(parts), width, dtype=torch.long)
        for b, part in enumerate(parts):
            feats[b, :, :part.shape[-1]] = part
            mask[b, :part.shape[-1]] = 1
        return {"input_features": feats, "frame_mask": mask}

    def config(self) -> dict:
        return {**super().config(), "volume_dbfs": TARGET_DBFS, "partial_frames": PARTIAL_FRAMES,
                "partial_step": PARTIAL_STEP, "min_coverage": MIN_COVERAGE}


register_features(FEATURES, ResemblyzerPreprocess)


class ResemblyzerBackbone(Backbone):
    """The speaker encoder: each partial utterance's LSTM state to a unit vector, their normalised mean.

    Args:
        spec: the spec string.
        pretrained: whether pre-trained weights were loaded.
        max_seconds: the longest clip taken.
        vad: trim the silence around each clip's words (True or "trim"), or also shorten its inner pauses to
            0.1 s ("speech"); Silero VAD.
    """

    modality = "audio"
    feature_kinds = ("pooled",)

    def __init__(self, spec: str, *, pretrained: bool, max_seconds: float = 30.0, vad: bool | str = False):
        super().__init__()
        self.spec, self.pretrained = spec, pretrained
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)
        self.num_features = EMBEDDING
        self.preprocess = ResemblyzerPreprocess(max_seconds, vad)

    def embed_partials(self, partials: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``[N, 256]`` of partial utterances ``[N, 160, 40]`` (resemblyzer's ``forward``)."""
        _, (hidden, _) = self.lstm(partials)
        return F.normalize(torch.relu(self.linear(hidden[-1])), dim=1)  # eps: an all-zero vector stays 0, not NaN

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        frames = batch["input_features"].transpose(1, 2)  # [B, F, 40]
        n = (frames.shape[1] - PARTIAL_FRAMES) // PARTIAL_STEP + 1
        starts = torch.arange(n, device=frames.device) * PARTIAL_STEP
        index = starts[:, None] + torch.arange(PARTIAL_FRAMES, device=frames.device)  # [K, 160]
        partials = frames[:, index].reshape(-1, PARTIAL_FRAMES, N_MELS)  # [B * K, 160, 40]
        embeds = self.embed_partials(partials).reshape(frames.shape[0], n, EMBEDDING)
        valid = batch["frame_mask"][:, starts + PARTIAL_FRAMES - 1]  # a partial counts when its last frame does
        return F.normalize(masked_mean(embeds, valid), dim=1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Each LSTM layer (input to output), then the linear projection."""
        by_layer = [[p for name, p in self.lstm.named_parameters() if name.endswith(f"_l{k}")] for k in range(LAYERS)]
        return [*by_layer, list(self.linear.parameters())]

    def architecture_options(self) -> dict:
        return audio_options(self.preprocess)


def packaged_weights() -> Path:
    """``pretrained.pt`` of the installed ``resemblyzer`` package, found without importing it.

    Raises:
        MissingWeightsError: the package is not installed or lacks the file.
    """
    path = package_file(MODULE, "pretrained.pt")
    if path is not None:
        return path
    raise MissingWeightsError(f"The speaker encoder of resemblyzer: is the file pretrained.pt of the Python package "
                              f"'{PACKAGE}', which is not installed or lacks it: {_INSTALL} (only the weight file is "
                              f"read; the package is never imported, so its librosa and webrtcvad are not needed).")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's ``lstm.*`` and ``linear.*`` tensors of a resemblyzer checkpoint, read without unpickling code.

    A checkpoint is resemblyzer's ``{"model_state": ...}`` or a plain state dict; its GE2E similarity
    scale and bias (training-only) are dropped.

    Raises:
        MissingWeightsError: the file is missing, is not a weights-only checkpoint, or lacks encoder tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"No resemblyzer checkpoint at {path}.")
    checkpoint = load_tensors(path)
    state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise MissingWeightsError(f"{path} holds a {type(checkpoint).__name__}, not resemblyzer's "
                                  "{'model_state': state dict}.")
    return {k: v for k, v in state.items() if k.startswith(("lstm.", "linear.")) and isinstance(v, torch.Tensor)}


def _load_strict(backbone: ResemblyzerBackbone, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise MissingWeightsError(f"{path} is not resemblyzer's encoder: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise MissingWeightsError(f"{path} is not resemblyzer's encoder: missing {missing[:4]}, "
                                  f"unexpected {unexpected[:4]}.")


@register_source("resemblyzer", help="resemblyzer's speaker encoder (3-layer LSTM on 40-band mel, 256-d unit-length "
                                     "voice embeddings); the weights of the PyPI package, read weights-only",
                 examples=("resemblyzer:", "resemblyzer:path/to/encoder.pt"), options=("max_seconds", "vad"),
                 modality="audio")
def create_resemblyzer(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                       max_seconds: float | None = None, vad: bool | str = False) -> ResemblyzerBackbone:
    """Build ``resemblyzer:NAME``.

    Args:
        name: empty (or ``pretrained``) for the packaged encoder, or a path to a checkpoint of the same
            architecture.
        pretrained: load the weights; ``False`` builds the architecture at random init.
        files_dir: unused (the architecture needs no files); accepted for bundle rebuilds.
        max_seconds: the longest clip taken (default 30 s); a longer one is refused, not cut.
        vad: trim the silence around every clip's words (True or "trim"), or also shorten its inner pauses to
            0.1 s ("speech"); Silero VAD, :mod:`transferkit.backbones.vad`.
    """
    if max_seconds is not None:
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)):
            raise ConfigError(f"The 'max_seconds' parameter of resemblyzer: must be a number. Got {max_seconds!r} "
                              "instead.")
        check_range("resemblyzer", "max_seconds", max_seconds, low=0.1, high=600, kind="a number")
    packaged = name.strip().lower() in PACKAGED_NAMES
    backbone = ResemblyzerBackbone(f"resemblyzer:{name}", pretrained=pretrained and files_dir is None,
                                   max_seconds=30.0 if max_seconds is None else float(max_seconds), vad=vad)
    if pretrained and files_dir is None:
        path = packaged_weights() if packaged else Path(name).expanduser()
        _load_strict(backbone, read_weights(path), path)
    return backbone.eval()
