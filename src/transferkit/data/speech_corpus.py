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

Sentences for speech recognition (:func:`build_sentences`) come from a small English grammar
(:func:`make_sentences`: a person, a past-tense verb, a thing, a place or a time, 7 to 12 words),
spoken in one espeak-ng voice each. Every word list is cut in two halves: training sentences use
the first half only; the test sentences are new sentences, either of the same half (``seen`` words
in new combinations) or of the other half only (``unseen``: no content word of the test occurs in
training); 30 hand-written everyday sentences outside the grammar (:data:`OTHER_SENTENCES`) test
what an adapted model keeps.
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

    from transferkit.backbones.audio import read_audio
    from transferkit.backbones.audio_augment import add_noise, time_shift

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


# -- sentences for speech recognition ------------------------------------------------------------------------------

#: The grammar's word lists; each is cut into two halves (even and odd positions): training and unseen words.
SENTENCE_WORDS = {
    "person": ("farmer", "doctor", "teacher", "sailor", "baker", "driver", "singer", "painter", "soldier", "student",
               "nurse", "lawyer", "hunter", "pilot", "writer", "gardener", "captain", "waiter", "dancer", "miner"),
    "adjective": ("old", "young", "tall", "quiet", "tired", "happy", "angry", "clever", "brave", "busy", "careful",
                  "friendly", "lazy", "proud", "gentle", "nervous"),
    "verb": ("painted", "carried", "found", "opened", "cleaned", "washed", "bought", "sold", "built", "fixed",
             "dropped", "pulled", "lifted", "hid", "broke", "filled"),
    "colour": ("red", "green", "blue", "yellow", "wooden", "heavy", "broken", "golden", "silver", "empty", "narrow",
               "brown", "white", "black", "shiny", "large"),
    "thing": ("boat", "box", "door", "chair", "basket", "bottle", "window", "table", "bicycle", "letter", "lamp",
              "bucket", "ladder", "wagon", "kettle", "drum", "blanket", "mirror", "wheel", "barrel"),
    "place": ("near the river", "behind the house", "beside the church", "in the garden", "at the market",
              "under the bridge", "on the hill", "by the station", "inside the barn", "across the road",
              "near the harbor", "outside the school", "beside the lake", "in the kitchen", "at the farm",
              "behind the hotel"),
    "time": ("yesterday", "last night", "this morning", "on Sunday", "before dinner", "after lunch", "last summer",
             "at noon", "every evening", "last winter", "on Monday", "before sunrise"),
}
SENTENCE_TEMPLATES = (
    "The {adjective} {person} {verb} the {colour} {thing} {place}.",
    "{Time}, the {person} {verb} a {colour} {thing}.",
    "The {person} {verb} the {thing} {place} {time}.",
    "A {adjective} {person} and the {person2} {verb} the {colour} {thing}.",
    "The {adjective} {person} {verb} a {thing} {time}.",
)


#: Everyday English outside the grammar (questions, requests, other words and word orders), written for this
#: corpus: what a model adapted to the grammar's sentences still has to transcribe (``test_words="other"``).
OTHER_SENTENCES = (
    "Could you tell me where the nearest pharmacy is?",
    "I think it is going to rain later this afternoon.",
    "Please remember to switch off the lights when you leave.",
    "The meeting has been moved to Thursday morning.",
    "She has been learning to play the piano for three years.",
    "We need more milk, bread and some coffee.",
    "How long does it take to get to the airport?",
    "My phone battery died in the middle of the call.",
    "They are planning a trip to the mountains next month.",
    "Do not forget to water the plants while I am away.",
    "The train was delayed because of the snow.",
    "He wrote a long email to his manager about the project.",
    "Can I pay with a credit card?",
    "The museum is closed on public holidays.",
    "It was the best concert I have ever seen.",
    "Our neighbors adopted a puppy last week.",
    "Turn left at the second traffic light.",
    "The soup needs a little more salt.",
    "I would like to book a table for four people.",
    "The weather was perfect for a walk on the beach.",
    "Scientists discovered a new species of frog in the forest.",
    "Why is the printer not working again?",
    "The children laughed at the funny movie.",
    "Please send me the report before Friday.",
    "This computer is much faster than my old one.",
    "We watched the sunset from the top of the tower.",
    "Her favorite color has always been purple.",
    "The store opens at nine and closes at six.",
    "Somebody left an umbrella on the bus.",
    "Learning a new language takes patience and practice.",
)


def _half(words: Sequence[str], half: int) -> tuple[str, ...]:
    return tuple(words[half::2])


def make_sentences(n: int, *, words: str = "train", seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` distinct sentences of the grammar (deterministic for ``seed``), none of them in ``exclude``.

    Args:
        n: how many.
        words: ``train`` (the first half of every word list), ``unseen`` (the other half) or ``other``
            (:data:`OTHER_SENTENCES`, everyday English outside the grammar, in their order; ``seed`` unused).
        seed: the draw.
        exclude: sentences not to make (the training sentences, for a test set of ``train`` words).

    Example:
        >>> make_sentences(1)[0].split()[0] in ("The", "A", "Yesterday,", "Last", "This", "On", "Before",
        ...                                     "After", "At", "Every")
        True
    """
    if words == "other":
        if n > len(OTHER_SENTENCES):
            raise DataError(f"There are {len(OTHER_SENTENCES)} sentences outside the grammar; {n} were asked for.")
        return list(OTHER_SENTENCES[:n])
    if words not in ("train", "unseen"):
        raise DataError(f"The 'words' parameter of make_sentences must be 'train', 'unseen' or 'other'. "
                        f"Got {words!r} instead.")
    lists = {k: _half(v, 0 if words == "train" else 1) for k, v in SENTENCE_WORDS.items()}
    rng, out, seen = _rng("sentences", words, str(seed)), [], set(exclude)
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        pick = {k: str(v[int(rng.integers(len(v)))]) for k, v in lists.items()}
        others = [p for p in lists["person"] if p != pick["person"]]
        pick["person2"] = str(others[int(rng.integers(len(others)))])
        pick["Time"] = pick["time"][0].upper() + pick["time"][1:]
        text = SENTENCE_TEMPLATES[int(rng.integers(len(SENTENCE_TEMPLATES)))].format(**pick)
        text = " ".join(_article(w, nxt) for w, nxt in zip(text.split(), text.split()[1:] + [""]))
        if text not in seen:
            seen.add(text)
            out.append(text)
    raise DataError(f"The sentence grammar gives fewer than {n} distinct sentences of {words!r} words.")


def _article(word: str, following: str) -> str:
    """``a`` before a vowel becomes ``an`` (A old -> An old)."""
    if word in ("a", "A") and following[:1].lower() in "aeiou" and following:
        return word + "n"
    return word


def build_sentences(voice: str = "fr-fr", n_train: int = 150, n_test: int = 40, test_words: str = "train",
                    noise: bool = False) -> tuple[TaskData, TaskData]:
    """Speech recognition: grammar sentences spoken by ``voice``; the test sentences never occur in training.

    Args:
        voice: an espeak-ng voice (``fr-fr`` reads English by French rules: an accent Whisper tiny.en
            transcribes badly; ``en-us`` one it reads well).
        n_train: training sentences (the first half of every word list).
        n_test: test sentences: new sentences of the training words (``test_words="train"``), of the other
            half of every word list (``"unseen"``), or everyday sentences outside the grammar (``"other"``, 30).
        noise: white noise at 10-40 dB SNR on every clip.
    """
    train_texts = make_sentences(n_train, words="train")
    test_texts = make_sentences(n_test, words=test_words, seed=1, exclude=train_texts)
    folder = spoken_corpus(train_texts + test_texts, [voice], noise=noise)
    source = f"espeak-ng {espeak_version()} voice {voice} ({folder})"
    out = []
    for split, texts in (("train", train_texts), ("test", test_texts)):
        items = [str(folder / voice / f"{t.replace(' ', '_')}.wav") for t in texts]
        out.append(TaskData(items, np.asarray(texts, dtype=object), "audio", task="speech-recognition",
                            name=f"espeak-sentences-{voice}-{split}", source=source))
    return out[0], out[1]


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
