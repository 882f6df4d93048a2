"""Built-in speech: command words spoken by espeak-ng in many voices, and the alsa-utils human clips.

espeak-ng (Debian ``espeak-ng``) speaks each word in a voice made of an English accent (8:
American, British, Scottish, RP, Lancaster, West Midlands, Caribbean, New York) and a voice
variant (12: ``m1``-``m7``, ``f1``-``f5``), with a speed, a pitch, a leading silence and white
noise at a signal-to-noise ratio drawn from a generator seeded by voice and word. Clips are
16 kHz mono WAV, written once under ``$TRANSFERKIT_CACHE/speech/<key>/`` (default
``~/.cache/transferkit/speech``), the key a hash of everything that makes them (words, voices,
the espeak-ng version, this generator's version); a generation is written to a temporary folder
and renamed into place. About 1,150 clips take half a minute.

Splits are by voice variant: the test voices' variants (``m6``, ``m7``, ``f4``, ``f5``) never
occur in training, in any accent, so a test voice is unseen.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import DataError

#: The command words (Speech Commands' ten and two digits).
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "one", "two")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")
TEST_VARIANTS = ("m6", "m7", "f4", "f5")
#: The eight spoken clips of alsa-utils (Noise.wav left out) and what each says.
ALSA_DIR = "/usr/share/sounds/alsa"
ALSA_PHRASES = {"Front_Center": "front center", "Front_Left": "front left", "Front_Right": "front right",
                "Rear_Center": "rear center", "Rear_Left": "rear left", "Rear_Right": "rear right",
                "Side_Left": "side left", "Side_Right": "side right"}
GENERATOR_VERSION = 1
SAMPLE_RATE = 16000


def espeak_binary() -> str:
    """The ``espeak-ng`` executable; DataError saying how to install it when missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError("The built-in speech data is spoken by espeak-ng, which is not installed: "
                        "apt-get install espeak-ng (Debian/Ubuntu).")
    return path


def espeak_version() -> str:
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().split("Data at")[0].strip()


def voices(variants: Sequence[str]) -> list[str]:
    """espeak-ng voice names ``ACCENT+VARIANT`` for every accent and the given variants."""
    return [f"{a}+{v}" for v in variants for a in ACCENTS]


def _rng(*parts: str) -> np.random.Generator:
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def speak(text: str, voice: str, path: Path, *, noise: bool = True) -> None:
    """Write ``text`` spoken by ``voice`` to ``path`` (16 kHz mono WAV), varied as the module says."""
    import soundfile as sf

    from transferkit.backbones.audio import add_noise, read_audio, time_shift

    rng = _rng(text, voice)
    speed, pitch = int(rng.integers(120, 201)), int(rng.integers(20, 81))
    raw = path.with_suffix(".raw.wav")
    done = subprocess.run([espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not raw.is_file():
        raise DataError(f"espeak-ng failed to speak {text!r} in voice {voice}: {done.stderr.strip()[:200]}")
    wave = read_audio(str(raw), SAMPLE_RATE)
    raw.unlink()
    wave = time_shift(wave, 0.3, rng)
    if noise:
        wave = add_noise(wave, float(rng.uniform(10.0, 40.0)), rng)
    peak = float(np.abs(wave).max()) or 1.0
    sf.write(str(path), (wave / max(peak, 1.0)).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def cache_root() -> Path:
    if os.environ.get("TRANSFERKIT_CACHE"):
        return Path(os.environ["TRANSFERKIT_CACHE"]).expanduser() / "speech"
    return Path.home() / ".cache" / "transferkit" / "speech"


def spoken_corpus(texts: Sequence[str], voice_names: Sequence[str], *, noise: bool = True) -> Path:
    """The folder ``<cache>/<key>/<voice>/<text>.wav`` of every text in every voice, generated once."""
    key_src = json.dumps({"texts": list(texts), "voices": list(voice_names), "noise": noise,
                          "espeak": espeak_version(), "version": GENERATOR_VERSION, "rate": SAMPLE_RATE})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    root = cache_root()
    final = root / key
    if (final / "done.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        for voice in voice_names:
            (tmp / voice).mkdir()
            for text in texts:
                speak(text, voice, tmp / voice / f"{text.replace(' ', '_')}.wav", noise=noise)
        (tmp / "done.json").write_text(key_src, encoding="utf-8")
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "done.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _clips(folder: Path, texts: Sequence[str], voice_names: Sequence[str], labels: Sequence[str],
           by: str) -> tuple[list[str], np.ndarray]:
    items, targets = [], []
    for voice in voice_names:
        for k, text in enumerate(texts):
            items.append(str(folder / voice / f"{text.replace(' ', '_')}.wav"))
            targets.append(k if by == "text" else labels.index(voice))
    return items, np.asarray(targets, dtype=np.int64)


def build_keywords(noise: bool = True) -> tuple[TaskData, TaskData]:
    """Keyword spotting: the 12 :data:`KEYWORDS`, train voices and unseen test voices (see the module)."""
    train_voices, test_voices = voices(TRAIN_VARIANTS), voices(TEST_VARIANTS)
    folder = spoken_corpus(KEYWORDS, train_voices + test_voices, noise=noise)
    source = f"espeak-ng {espeak_version()} ({folder})"
    out = []
    for split, names in (("train", train_voices), ("test", test_voices)):
        items, targets = _clips(folder, KEYWORDS, names, KEYWORDS, "text")
        out.append(TaskData(items, targets, "audio", label_names=list(KEYWORDS), name=f"espeak-keywords-{split}",
                            source=source))
    return out[0], out[1]


def build_speakers(noise: bool = True, test_words: int = 4) -> tuple[TaskData, TaskData]:
    """Speaker identification: which of the 96 voices says a keyword; the last ``test_words`` words are the
    test clips (unseen words of known voices), the others the training clips."""
    names = voices(TRAIN_VARIANTS + TEST_VARIANTS)
    folder = spoken_corpus(KEYWORDS, names, noise=noise)
    source = f"espeak-ng {espeak_version()} ({folder})"
    split = len(KEYWORDS) - test_words
    out = []
    for part, words in (("train", KEYWORDS[:split]), ("test", KEYWORDS[split:])):
        items, targets = _clips(folder, words, names, names, "voice")
        out.append(TaskData(items, targets, "audio", label_names=list(names), name=f"espeak-speakers-{part}",
                            source=source))
    return out[0], out[1]


def build_alsa_channels(noise: bool = True) -> tuple[TaskData, TaskData]:
    """The eight alsa-utils channel names: espeak-ng voices for training, the human recordings as the test."""
    labels = [name.replace("_", " ") for name in ALSA_PHRASES]
    test_items = [str(Path(ALSA_DIR) / f"{name}.wav") for name in ALSA_PHRASES]
    missing = [p for p in test_items if not Path(p).is_file()]
    if missing:
        raise DataError(f"The alsa-utils clips are missing ({missing[0]}): apt-get install alsa-utils.")
    texts = list(ALSA_PHRASES.values())
    folder = spoken_corpus(texts, voices(TRAIN_VARIANTS + TEST_VARIANTS), noise=noise)
    items, targets = _clips(folder, texts, voices(TRAIN_VARIANTS + TEST_VARIANTS), labels, "text")
    source = f"espeak-ng {espeak_version()} ({folder}); test: alsa-utils ({ALSA_DIR})"
    train = TaskData(items, targets, "audio", label_names=labels, name="alsa-channels-train", source=source)
    test = TaskData(test_items, np.arange(len(labels), dtype=np.int64), "audio", label_names=labels,
                    name="alsa-channels-test", source=source)
    return train, test
