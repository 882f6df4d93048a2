"""``tfidf``: TF-IDF features of word 1-2 grams, the strong no-transfer text baseline.

Fitted on the training texts by the ``scratch`` strategy; its vocabulary is
saved as JSON beside the bundle and its IDF weights as a tensor, so a bundle
reloads without pickles. Output equals scikit-learn's ``TfidfVectorizer``
with ``sublinear_tf=True, norm="l2"``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.backbones import BACKBONE_SOURCES
from transferkit.backbones.base import Backbone, Preprocess
from transferkit.errors import ConfigError, DataError


class TermCounts(Preprocess):
    """Sub-linear term frequencies ``1 + log(tf)`` over a fixed vocabulary, as a dense tensor."""

    kind = "tfidf"

    def __init__(self, vocabulary: dict[str, int], ngram_max: int):
        from sklearn.feature_extraction.text import CountVectorizer

        self.ngram_max = ngram_max
        self.vectorizer = CountVectorizer(vocabulary=vocabulary, ngram_range=(1, ngram_max)) if vocabulary else None

    def __call__(self, items: Sequence) -> torch.Tensor:
        if self.vectorizer is None:
            raise ConfigError("The TF-IDF backbone has no vocabulary yet: the 'scratch' strategy fits it on the "
                              "training texts (--strategy scratch); other strategies need a pre-trained backbone.")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise DataError(f"Text item {i} is {type(t).__name__}, not str: {t!r:.80}")
        counts = self.vectorizer.transform(list(items)).astype(np.float32)
        counts.data = 1.0 + np.log(counts.data)
        return torch.from_numpy(counts.toarray())

    def config(self) -> dict:
        return {"kind": self.kind, "ngram_max": self.ngram_max,
                "vocabulary_size": len(self.vectorizer.vocabulary) if self.vectorizer else 0}


class TfidfBackbone(Backbone):
    """TF-IDF "backbone": ``forward_features`` applies IDF weights and L2 normalisation."""

    modality = "text"

    def __init__(self, vocabulary: dict[str, int] | None = None, ngram_max: int = 2, max_features: int = 50000):
        super().__init__()
        self.ngram_max, self.max_features = ngram_max, max_features
        self.spec = "tfidf:"
        self._set_vocabulary(vocabulary or {}, torch.ones(len(vocabulary or {})))

    def _set_vocabulary(self, vocabulary: dict[str, int], idf: torch.Tensor) -> None:
        self.vocabulary = dict(vocabulary)
        self.register_buffer("idf", idf.float())
        self.num_features = len(vocabulary)
        self.preprocess = TermCounts(self.vocabulary, self.ngram_max)

    def fit_vocabulary(self, texts: Sequence[str]):
        """Learn the vocabulary and IDF weights; returns the sparse TF-IDF matrix of ``texts``."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, self.ngram_max), sublinear_tf=True, max_features=self.max_features)
        matrix = vec.fit_transform(list(texts))
        vocab = {t: int(i) for t, i in vec.vocabulary_.items()}
        self._set_vocabulary(vocab, torch.from_numpy(vec.idf_.astype(np.float32)))
        return matrix

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(batch * self.idf, dim=-1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return []

    def architecture_options(self) -> dict:
        return {"ngram_max": self.ngram_max, "max_features": self.max_features}

    def save_files(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "vocabulary.json").write_text(json.dumps(self.vocabulary), encoding="utf-8")


def _tfidf(name: str, *, pretrained: bool = False, files_dir=None, ngram_max: int = 2, max_features: int = 50000, **_) -> TfidfBackbone:
    vocab = None
    if files_dir is not None and (Path(files_dir) / "vocabulary.json").exists():
        vocab = json.loads((Path(files_dir) / "vocabulary.json").read_text(encoding="utf-8"))
    return TfidfBackbone(vocab, ngram_max=ngram_max, max_features=max_features)


BACKBONE_SOURCES.register("tfidf", _tfidf, help="TF-IDF word 1-2 grams fitted on the training texts (the text baseline)")
