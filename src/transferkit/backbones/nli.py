"""NLI models as zero-shot text classifiers (``nli:ID_OR_PATH``).

Natural-language-inference zero-shot classification (Yin et al. 2019,
https://arxiv.org/abs/1909.00161; Hugging Face's ``zero-shot-classification``
pipeline): each text is the premise, each label becomes a hypothesis ("This
example is sports."), and the model's entailment logit scores the pair.

As a backbone, ``forward_features`` returns one entailment logit per
hypothesis, ``[B, H]``. The hypotheses are set by the ``zero-shot`` strategy
(:meth:`NLIBackbone.set_hypotheses`) and are part of the architecture options,
so a bundle rebuilds the same features offline. A linear head over them that
averages each label's hypotheses gives exactly the pipeline's single-label
scores after the softmax. The cost is one forward pass per (text, hypothesis)
pair.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, TextPreprocess
from transferkit.backbones.hf import (DEFAULT_MAX_LENGTH, _from_files_dir, load_from_sources, text_preprocess,
                                      transformer_groups)
from transferkit.errors import ConfigError, DataError


class NLIPreprocess(TextPreprocess):
    """Tokenise every (text, hypothesis) pair: ``B`` texts give ``B * H`` rows, text-major.

    Only the premise is truncated at ``max_length``, so the hypothesis is never cut.
    """

    kind = "nli"

    def __init__(self, tokenizer: Any, max_length: int, hypotheses: Sequence[str]):
        super().__init__(tokenizer, max_length)
        self.hypotheses = list(hypotheses)

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        premises = []
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise DataError(f"Text item {i} is {type(t).__name__}, not str: {t!r:.80}")
            premises += [t] * len(self.hypotheses)
        enc = self.tokenizer(premises, self.hypotheses * len(items), padding=True, truncation="only_first",
                             max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def config(self) -> dict:
        return {**super().config(), "kind": self.kind, "hypotheses": list(self.hypotheses)}


def entailment_index(config: Any, spec: str) -> int:
    """The output index whose ``id2label`` name starts with "entail" (case-insensitive).

    Raises:
        ConfigError: no such label (not an NLI model, or one with generic ``LABEL_0`` names).
    """
    labels = {int(i): str(n) for i, n in (getattr(config, "id2label", None) or {}).items()}
    found = [i for i, n in labels.items() if n.lower().startswith("entail")]
    if not found:
        names = ", ".join(labels.values()) or "none"
        raise ConfigError(f"{spec}: its config.id2label names no entailment label (labels: {names}). nli: needs a "
                          "sequence-classification model trained on NLI whose labels include 'entailment'.")
    return found[0]


def check_hypotheses(hypotheses: Any) -> list[str]:
    """A list of non-empty strings, or :class:`ConfigError`."""
    if isinstance(hypotheses, str) or not isinstance(hypotheses, (list, tuple)) or \
            not all(isinstance(h, str) and h.strip() for h in hypotheses):
        raise ConfigError(f"The 'hypotheses' option of nli: backbones must be a list of non-empty strings. "
                          f"Got {hypotheses!r} instead.")
    return list(hypotheses)


class NLIBackbone(Backbone):
    """A sequence-classification NLI model; features are entailment logits, one per hypothesis.

    Args:
        spec: the spec string.
        model: the ``AutoModelForSequenceClassification``.
        tokenizer: its tokenizer.
        max_length: maximum tokens per (text, hypothesis) pair.
        hypotheses: the hypotheses (may be empty until the strategy sets them).
        pretrained: whether pre-trained weights were loaded.
    """

    modality = "text"

    def __init__(self, spec: str, model: nn.Module, tokenizer: Any, *, max_length: int,
                 hypotheses: Sequence[str], pretrained: bool):
        super().__init__()
        self.spec, self.model, self.tokenizer, self.pretrained = spec, model, tokenizer, pretrained
        self.entailment = entailment_index(model.config, spec)
        self.max_length = text_preprocess(spec, tokenizer, max_length).max_length  # refuses one beyond the model's
        self.set_hypotheses(hypotheses)

    def set_hypotheses(self, hypotheses: Sequence[str]) -> None:
        """Score these hypotheses from now on; ``num_features`` becomes their number."""
        self.hypotheses = check_hypotheses(hypotheses) if hypotheses else []
        self.preprocess = NLIPreprocess(self.tokenizer, self.max_length, self.hypotheses)
        self.num_features = len(self.hypotheses)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.hypotheses:
            raise ConfigError(f"{self.spec} has no hypotheses to score: use it with the zero-shot strategy, which "
                              "sets them from the label names.")
        logits = self.model(**batch).logits[:, self.entailment]
        return logits.view(-1, len(self.hypotheses))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return transformer_groups(self.model)

    def architecture_options(self) -> dict:
        return {"max_length": self.preprocess.max_length, "hypotheses": list(self.hypotheses)}

    def save_files(self, directory: str | Path) -> None:
        """Write ``config.json`` and the tokenizer files (no weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def _nli_parts(name: str, pretrained: bool, files_dir: Path | None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    def from_folder(src: str) -> tuple[nn.Module, Any]:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        if pretrained:
            model = AutoModelForSequenceClassification.from_pretrained(src, trust_remote_code=False,
                                                                       dtype=torch.float32)
        else:
            config = AutoConfig.from_pretrained(src, trust_remote_code=False)
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
        return model.eval(), tokenizer

    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        return _from_files_dir(files_dir, from_folder)
    return load_from_sources(name, from_folder, "nli")


@register_source("nli", help="NLI sequence-classification models for zero-shot text classification "
                             "(entailment logit per label hypothesis)",
                 examples=("nli:facebook/bart-large-mnli", "nli:cross-encoder/nli-deberta-v3-small"),
                 options=("max_length", "hypotheses"), modality="text")
def create_nli(name: str, *, pretrained: bool = True, files_dir: Path | None = None, max_length: int | None = None,
               hypotheses: Sequence[str] | None = None) -> NLIBackbone:
    """Build ``nli:ID_OR_PATH``.

    Args:
        name: a hub id or a local folder holding an NLI sequence-classification model.
        pretrained: load the weights; ``False`` builds from the config at random init.
        files_dir: rebuild from files written by :meth:`NLIBackbone.save_files` (``pretrained=False``).
        max_length: maximum tokens per (text, hypothesis) pair (default 128).
        hypotheses: the hypotheses to score (the zero-shot strategy sets them).
    """
    model, tokenizer = _nli_parts(name, pretrained, files_dir)
    return NLIBackbone(f"nli:{name}", model, tokenizer, max_length=max_length or DEFAULT_MAX_LENGTH,
                       hypotheses=hypotheses or [], pretrained=pretrained and files_dir is None)
