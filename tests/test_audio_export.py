"""ONNX and TorchScript export of audio classifiers: the graph takes the (log-)mel frames and their mask,
decoding and features stay outside it (in the preprocessing that ``preprocess.json`` rebuilds).

Fast: the MFCC baseline, a random tiny Whisper encoder and a random resemblyzer LSTM.
"""
from __future__ import annotations

import numpy as np
import torch


def test_log_mel_frames_of_a_clip_do_not_depend_on_its_batch():
    from transferkit.backbones.audio import AudioPreprocess

    preprocess = AudioPreprocess(n_mels=40, features="log-mel")
    short, long = np.full(14399, 0.1, dtype=np.float32), np.full(20000, 0.1, dtype=np.float32)
    alone, batch = preprocess.from_waves([short]), preprocess.from_waves([short, long])
    assert alone["frame_mask"].sum() == batch["frame_mask"][0].sum() == 14399 // 160  # not ceil(14399 / 160)
    torch.testing.assert_close(batch["input_features"][0, :, :89], alone["input_features"][0])
