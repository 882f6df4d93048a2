"""Whisper tiny.en as converted here transcribes the 8 human recordings of alsa-utils (no training).

    python benchmarks/speech_transcripts.py

Loads ``whisper:tiny.en`` with its decoder (the packaged CTranslate2 weights, converted), transcribes each
``/usr/share/sounds/alsa/*.wav`` greedily with its full 30 s window, and scores the transcripts with the
``speech-recognition`` task's WER (lower case, punctuation removed). A check of the conversion: a wrong
mapping of any weight gives gibberish. Writes ``benchmarks/results/speech/transcripts.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.data.dataset import TaskData  # noqa: E402
from transferkit.data.speech_corpus import ALSA_DIR, ALSA_PHRASES  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.tasks import get_task  # noqa: E402
from transferkit.training import predict_outputs  # noqa: E402

OUT = Path(__file__).parent / "results" / "speech"


def main() -> None:
    clips = [str(Path(ALSA_DIR) / f"{name}.wav") for name in ALSA_PHRASES]
    data = TaskData(clips, np.asarray(list(ALSA_PHRASES.values()), dtype=object), "audio",
                    task="speech-recognition", name="alsa-utils")
    backbone = load_backbone("whisper:tiny.en", decoder=True)
    model = make_strategy("finetune").prepare(backbone, data)  # the source-output head: nothing trained
    model.generation = {"max_new_tokens": 16}
    out = predict_outputs(model, data)
    task = get_task("speech-recognition")
    m = task.metrics(data.targets, out)
    right = sum(task.metrics([t], [p])["wer"] == 0 for t, p in zip(data.targets, out))
    lines = ["# Whisper tiny.en (converted from CTranslate2) on the alsa-utils recordings", "",
             "Command: `python benchmarks/speech_transcripts.py` (no training; greedy, 30 s window)", "",
             "| clip | spoken | transcript |", "| --- | --- | --- |"]
    lines += [f"| {Path(c).name} | {t} | {p} |" for c, t, p in zip(clips, data.targets, out)]
    lines += ["", f"{right} of {len(clips)} clips exactly right after normalisation; WER {100 * m['wer']:.1f}%, "
                  f"CER {100 * m['cer']:.1f}%.", ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "transcripts.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
