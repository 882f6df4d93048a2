"""``crf:``: a trained linear-chain CRF on hand-written word features, as a backbone (the ``crf`` strategy's model).

The ``crf`` strategy (:mod:`transferkit.strategies.crf`) trains it; here is what a
bundle needs to hold and rebuild it without the strategy: the feature function
(:func:`word_features`, :func:`sentence_features`), the preprocess that turns word
lists into crfsuite item sequences plus the word map a per-token task reads, the
backbone whose ``forward_sequence`` gives per-word tag marginals ``[B, T, C]``
(forward-backward), and :func:`save_crf` / :func:`load_crf`: crfsuite's own binary
model file (checked by :func:`check_crfsuite_model` before crfsuite's C reader
sees it) and a JSON description (tag order, feature set, training info). No pickles.
"""
from __future__ import annotations

import copy
import json
import struct
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.backbones import BACKBONE_SOURCES
from transferkit.backbones.base import Backbone, FeatureSpec, Preprocess
from transferkit.errors import BundleError, ConfigError, DataError

__all__ = ["CRF_FILE", "CRF_INFO_FILE", "FEATURE_SET", "CrfBackbone", "CrfFeatures", "check_crfsuite_model",
           "load_crf", "save_crf", "sentence_features", "word_features", "word_shape"]

#: the files a saved CRF is made of, in the bundle's ``backbone/`` folder
CRF_FILE, CRF_INFO_FILE = "model.crfsuite", "crf.json"
#: names the feature function below; a saved model trained on other features is refused, not misread
FEATURE_SET = "conll-v1"
_INFO_FORMAT = "transferkit-crf"

# ---------------------------------------------------------------------------------------------- features


def word_shape(word: str, run: int = 4) -> str:
    """Upper case -> ``X``, lower case -> ``x``, digits -> ``d``, other characters kept; runs capped at ``run``.

    Example:
        >>> word_shape("Ada"), word_shape("Amsterdam"), word_shape("12.50"), word_shape("e-mail"), word_shape("IBM")
        ('Xxx', 'Xxxxx', 'dd.dd', 'x-xxxx', 'XXX')
    """
    out, prev, count = [], "", 0
    for ch in word:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        count = count + 1 if c == prev else 1
        prev = c
        if count <= run:
            out.append(c)
    return "".join(out)


def _length_bucket(n: int) -> str:
    return str(n) if n <= 4 else "5-6" if n <= 6 else "7-9" if n <= 9 else "10+"


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"  # punctuation and symbols ($, %, +)


def word_features(word: str, prefix: str = "") -> dict[str, float | str]:
    """The features of one word, named with ``prefix`` (``""``, ``"-1:"``, ``"+1:"``); flags only when true."""
    lower = word.lower()
    f: dict[str, float | str] = {
        f"{prefix}lower": lower, f"{prefix}suffix3": lower[-3:], f"{prefix}suffix2": lower[-2:],
        f"{prefix}prefix3": lower[:3], f"{prefix}prefix2": lower[:2], f"{prefix}shape": word_shape(word),
        f"{prefix}length": _length_bucket(len(word))}
    flags = {"title": word.istitle(), "upper": word.isupper(), "digit": word.isdigit(),
             "has_digit": any(ch.isdigit() for ch in word), "has_at": "@" in word,
             "has_punct": any(_is_punct(ch) for ch in word)}
    f.update({f"{prefix}{k}": 1.0 for k, v in flags.items() if v})
    return f


def sentence_features(words: Sequence[str]) -> list[dict[str, float | str]]:
    """Per word: its own features, the full set at -1 and +1, the word and shape at -2 and +2, ``BOS``/``EOS``.

    Example:
        >>> f = sentence_features(["Ada", "met", "Bob"])[0]
        >>> f["lower"], f["shape"], f["+1:lower"], f["+2:shape"], "BOS" in f, "EOS" in f
        ('ada', 'Xxx', 'met', 'Xxx', True, False)
    """
    n = len(words)
    out = []
    for i, word in enumerate(words):
        f: dict[str, float | str] = {"bias": 1.0, **word_features(word)}
        for off in (-1, 1):
            j = i + off
            if 0 <= j < n:
                f.update(word_features(words[j], f"{off:+d}:"))
        for off in (-2, 2):
            j = i + off
            if 0 <= j < n:
                f[f"{off:+d}:lower"] = words[j].lower()
                f[f"{off:+d}:shape"] = word_shape(words[j])
        if i == 0:
            f["BOS"] = 1.0
        if i == n - 1:
            f["EOS"] = 1.0
        out.append(f)
    return out


def _pycrfsuite():
    try:
        import pycrfsuite
    except ImportError:
        raise ConfigError("The CRF baseline needs sklearn-crfsuite: pip install 'transferkit[ner]'.") from None
    return pycrfsuite


def _word_lists(items: Sequence) -> list[list[str]]:
    """Items as lists of words (``predict`` splits raw strings into words first: the task's ``prepare_items``)."""
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, (list, tuple, np.ndarray)):
            raise DataError(f"Text item {i} is {type(item).__name__}; the CRF reads a list of words.")
        bad = next((w for w in item if not isinstance(w, str)), None)
        if bad is not None:
            raise DataError(f"Text item {i} is a list of words holding {type(bad).__name__} {bad!r:.40}, not str.")
        out.append(list(item))
    return out


def _sequences(items: Sequence) -> list:
    pycrfsuite = _pycrfsuite()
    return [pycrfsuite.ItemSequence(sentence_features(words)) for words in _word_lists(items)]


# ---------------------------------------------------------------------------------------------- the model


class CrfFeatures(Preprocess):
    """Word lists -> the CRF's features (``features``: one crfsuite item sequence per sentence) and the word map
    the task reads (``word_ids`` ``[B, T]``, -1 for padding; ``item_ids``; ``word_counts``)."""

    kind = "crf-features"

    def __call__(self, items: Sequence) -> dict:
        words = _word_lists(items)
        counts = [len(w) for w in words]
        width = max(counts, default=0) or 1
        word_ids = torch.full((len(words), width), -1, dtype=torch.long)
        for b, n in enumerate(counts):
            word_ids[b, :n] = torch.arange(n)
        return {"features": _sequences(words), "word_ids": word_ids,
                "item_ids": torch.arange(len(words), dtype=torch.long),
                "word_counts": torch.tensor(counts, dtype=torch.long)}

    def config(self) -> dict:
        return {"kind": self.kind, "features": FEATURE_SET}


def check_crfsuite_model(data: bytes, where: str) -> None:
    """Refuse bytes that are not a whole crfsuite CRF1d model before crfsuite's C reader sees them.

    crfsuite checks only the magic number and may read out of bounds on a truncated or
    altered file (python-crfsuite's own note); this checks the 48-byte header: magic
    ``lCRF``, the size it records equals the file's, type ``FOMC``, and every section
    offset lies inside the file after the header, in order.

    Raises:
        BundleError: naming ``where`` and what does not fit.
    """
    if len(data) < 48 or data[:4] != b"lCRF":
        raise BundleError(f"{where} is not a crfsuite model (no 'lCRF' header).")
    size, = struct.unpack("<I", data[4:8])
    if size != len(data):
        raise BundleError(f"{where}: the crfsuite header records {size} bytes but the file has {len(data)} "
                          "(truncated or altered).")
    if data[8:12] != b"FOMC":
        raise BundleError(f"{where}: crfsuite model type {data[8:12]!r}, expected b'FOMC' (a linear-chain CRF).")
    offsets = struct.unpack("<5I", data[28:48])
    if any(not 48 <= o < size for o in offsets) or list(offsets) != sorted(offsets):
        raise BundleError(f"{where}: crfsuite section offsets {list(offsets)} do not lie in order inside the "
                          f"file of {size} bytes.")


class CrfBackbone(Backbone):
    """The trained CRF as a backbone: ``forward_sequence`` gives per-word tag marginals ``[B, T, C]``.

    Holds crfsuite's model bytes (what :func:`save_crf` writes) and a tagger opened on them
    (in memory; one sentence at a time under a lock, as a crfsuite tagger is stateful).
    ``tags`` is the column order, the task's ``label_names``.
    """

    modality = "text"
    feature_kinds = ("sequence",)

    def __init__(self, model: bytes | None = None, tags: Sequence[str] | None = None, info: dict | None = None):
        super().__init__()
        self.spec = "crf:"
        self.tags = list(tags or [])
        self.num_features = len(self.tags)
        self.info = dict(info or {})
        self.preprocess = CrfFeatures()
        self._model = model
        self._tagger = None
        self._lock = threading.Lock()
        if model is not None:
            pycrfsuite = _pycrfsuite()
            check_crfsuite_model(model, "the CRF model")
            tagger = pycrfsuite.Tagger()
            tagger.open_inmemory(model)  # crfsuite reads the buffer in place: self._model keeps it alive
            unknown = [t for t in tagger.labels() if t not in self.tags]
            if unknown:
                raise BundleError(f"The CRF model predicts tag(s) {unknown} that are not in its tag set {self.tags}.")
            self._tagger = tagger
            self._columns = [(self.tags.index(t), t) for t in tagger.labels()]

    @property
    def model_bytes(self) -> bytes | None:
        """crfsuite's binary model (``None`` before training)."""
        return self._model

    def marginals(self, features: Sequence) -> list[np.ndarray]:
        """Per sentence ``[words, tags]`` float64 marginals in ``tags`` order (features: :func:`sentence_features`
        dicts or crfsuite item sequences)."""
        if self._tagger is None:
            raise ConfigError("The CRF backbone has no trained model: the 'crf' strategy trains it "
                              "(--strategy crf); it is not a pre-trained backbone for other strategies.")
        out = []
        with self._lock:
            for xseq in features:
                n = len(xseq)
                p = np.zeros((n, len(self.tags)))
                if n:
                    self._tagger.set(xseq)
                    for j, label in self._columns:
                        p[:, j] = [self._tagger.marginal(label, i) for i in range(n)]
                out.append(p)
        return out

    def forward_sequence(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        word_ids = batch["word_ids"]
        feats = torch.zeros((*word_ids.shape, len(self.tags)), dtype=torch.float32)
        for b, p in enumerate(self.marginals(batch["features"])):
            feats[b, :len(p)] = torch.from_numpy(p).float()
        return feats.to(word_ids.device), (word_ids >= 0).long()

    def forward_features(self, batch: dict) -> torch.Tensor:
        raise ConfigError("The CRF gives per-word tag marginals (sequence features), not one vector per item.")

    def feature_spec(self, kind: str = "sequence") -> FeatureSpec:
        self.check_feature_kind(kind)
        return FeatureSpec(kind, dim=len(self.tags))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return []

    def save_files(self, directory: str | Path) -> None:
        save_crf(self, directory)

    @torch.no_grad()
    def weights_digest(self) -> str:
        """A hash of the CRF's model and tag order (it has no tensors): what feature caches key on."""
        import hashlib

        h = hashlib.sha256(self._model or b"")
        h.update(json.dumps(self.tags).encode())
        return h.hexdigest()[:16]

    def __deepcopy__(self, memo):  # the tagger and lock cannot be copied; the bytes are immutable
        new = type(self)(self._model, self.tags, copy.deepcopy(self.info, memo))
        new.train(self.training)
        return new


# ---------------------------------------------------------------------------------------------- saving


def save_crf(model, directory: str | Path) -> Path:
    """Write a trained CRF (a model of the ``crf`` strategy, or its backbone) as ``directory/model.crfsuite``
    (crfsuite's own binary format) and ``directory/crf.json`` (tags, feature set, training info). No pickles."""
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, CrfBackbone) or backbone.model_bytes is None:
        raise ConfigError("save_crf saves a CRF trained by the 'crf' strategy; this model has none.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CRF_FILE).write_bytes(backbone.model_bytes)
    info = {"format": _INFO_FORMAT, "version": 1, "features": FEATURE_SET, "tags": backbone.tags,
            "training": backbone.info}
    (directory / CRF_INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return directory


def load_crf(directory: str | Path) -> CrfBackbone:
    """The CRF :func:`save_crf` wrote in ``directory``, checked before crfsuite reads it.

    Raises:
        BundleError: a file is missing, ``crf.json`` is not what :func:`save_crf` writes (or names another
            feature set), or ``model.crfsuite`` fails :func:`check_crfsuite_model` or predicts unknown tags.
    """
    directory = Path(directory)
    info_path, model_path = directory / CRF_INFO_FILE, directory / CRF_FILE
    for p in (info_path, model_path):
        if not p.is_file():
            raise BundleError(f"{p} is missing: a saved CRF is {CRF_FILE} and {CRF_INFO_FILE}.")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Corrupt {info_path}: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != _INFO_FORMAT:
        raise BundleError(f"{info_path} is not a transferkit CRF description (format={_INFO_FORMAT!r}).")
    tags = info.get("tags")
    if not (isinstance(tags, list) and tags and all(isinstance(t, str) for t in tags) and len(set(tags)) == len(tags)):
        raise BundleError(f"{info_path}: 'tags' must be a list of distinct tag names; got {tags!r:.80}.")
    if info.get("features") != FEATURE_SET:
        raise BundleError(f"{info_path}: the CRF was trained on feature set {info.get('features')!r}; this version "
                          f"computes {FEATURE_SET!r}.")
    data = model_path.read_bytes()
    check_crfsuite_model(data, str(model_path))
    try:
        return CrfBackbone(data, tags, info.get("training") if isinstance(info.get("training"), dict) else {})
    except ValueError as exc:  # crfsuite refused the model
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{model_path}: crfsuite cannot open it ({exc}).") from None


def _crf_source(name: str, *, pretrained: bool = False, files_dir=None, **_) -> CrfBackbone:
    if files_dir is not None and (Path(files_dir) / CRF_FILE).exists():
        return load_crf(files_dir)
    return CrfBackbone()


BACKBONE_SOURCES.register("crf", _crf_source, help="a linear-chain CRF trained by the 'crf' strategy (the token "
                                                   "classification baseline); rebuilt from a bundle's files")
