"""``speech-recognition``: transcripts of audio clips; Whisper's own decoder trained on (clip, transcript) pairs.

As ``text-generation`` does for causal language models, there is no new head: the ``source-output``
head on ``logits`` features, the decoder's next-token scores (a ``whisper:`` backbone loaded with
``decoder=True``). A training item is the clip with its transcript (teacher forcing: the backbone's
preprocessing builds ``decoder_input_ids`` and ``labels``, -100 on the decoder prefix and padding);
prediction transcribes greedily (:meth:`SpeechRecognition.infer`), up to the model's
``generation["max_new_tokens"]``.

Metrics (``jiwer``): word error rate (the primary metric, lower is better) and character error rate,
over transcripts normalised the same way on both sides (lower case, punctuation removed, spaces
collapsed), so "Front, left." matches "front left".
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError, DataError
from transferkit.tasks.base import IGNORE_INDEX, Task, check_text_targets, text_target_bytes

_PUNCTUATION = re.compile(r"[^\w\s']|_")


def normalise(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), spaces collapsed: what WER compares.

    Example:
        >>> normalise("Front, LEFT.")
        'front left'
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def _errors(reference: str, hypothesis: str, unit: str) -> tuple[int, int]:
    """(edit operations, reference length) in words or characters."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if unit == "char":
        out = jiwer.process_characters(ref or " ", hyp or " ")
        n = len(ref)
    else:
        if not ref:
            return len(hyp.split()), 0
        out = jiwer.process_words(ref, hyp or "")
        n = len(ref.split())
    return int(out.substitutions + out.deletions + out.insertions), n


class SpeechRecognition(Task):
    """Transcribe audio clips: Whisper's decoder, cross-entropy on the transcript's tokens, WER / CER."""

    name = "speech-recognition"
    primary_metric = "wer"
    feature_kind = "logits"
    head = "source-output"
    has_labels = False
    target_kind = "text"
    pipeline_tags = {"audio": "automatic-speech-recognition"}
    metric_names = ("wer", "cer")
    exportable = False
    export_note = ("its outputs are transcripts from greedy decoding, a loop over Whisper's decoder, not one graph "
                   "(audio classifiers export).")

    def num_outputs(self, label_names: Sequence[str] | None) -> int:
        return 0

    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        return check_text_targets(targets, where, "transcript", "every clip needs the words spoken in it")

    def target_bytes(self, targets: np.ndarray) -> bytes:
        return text_target_bytes(targets)

    def training_items(self, items: Sequence, targets: np.ndarray) -> list[dict]:
        """Each clip with its transcript: the decoder reads the transcript (teacher forcing) and learns it."""
        return [{"audio": it, "transcript": str(t)} for it, t in zip(items, targets)]

    def collate_targets(self, targets: np.ndarray, inputs: Any) -> torch.Tensor:
        if not isinstance(inputs, dict) or "labels" not in inputs:
            raise DataError("speech-recognition trains Whisper's decoder (whisper:NAME with decoder=True), whose "
                            "preprocessing turns transcripts into labels; this batch has none.")
        return inputs["labels"]

    def configure_model(self, model: nn.Module, data: Any) -> None:
        """Decode up to 1.25 times the longest training transcript (at least 8 tokens, at most 224)."""
        tokenizer = getattr(model.backbone, "tokenizer", None)
        if tokenizer is None or data.targets is None or not len(data.targets):
            return
        longest = max(len(ids) for ids in tokenizer([" " + str(t) for t in data.targets],
                                                    add_special_tokens=False)["input_ids"])
        model.generation = {"max_new_tokens": int(min(224, max(8, round(1.25 * longest) + 1))), "temperature": 0.0,
                            "stop": []}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy of the decoder's scores at the positions that predict a transcript token (labels are
        already the next tokens: no shift here)."""
        keep = targets != IGNORE_INDEX
        if not keep.any():
            return outputs.sum() * 0.0
        return F.cross_entropy(outputs[keep].float(), targets[keep].long(), label_smoothing=label_smoothing)

    def infer(self, model: nn.Module, inputs: Any) -> np.ndarray:
        backbone = getattr(model, "backbone", None)
        if "logits" not in getattr(backbone, "feature_kinds", ()) or not hasattr(backbone, "generate"):
            raise ConfigError(f"speech-recognition needs Whisper with its decoder (whisper:tiny.en with "
                              f"decoder=True); '{getattr(backbone, 'spec', backbone)}' does not transcribe.")
        settings = getattr(model, "generation", None) or {}
        texts = backbone.generate(inputs, max_new_tokens=int(settings.get("max_new_tokens", 64)))
        out = np.empty(len(texts), dtype=object)  # a long clip's windows are one transcript
        out[:] = texts
        return out

    def postprocess(self, outputs: Any, inputs: Any = None) -> np.ndarray:
        if isinstance(outputs, torch.Tensor):
            raise DataError("speech-recognition outputs are transcripts: predict through the task's infer "
                            "(transferkit.predict_outputs), not the model's logits.")
        return np.asarray(outputs, dtype=object)

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        out[:] = [t for part in parts for t in part]
        return out

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        return [str(t) for t in outputs]

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None,
                items: Sequence | None = None) -> list[dict]:
        return [{"text": str(t)} for t in outputs]

    def item_counts(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> np.ndarray:
        """Per item: word errors and reference words (column sums give the corpus WER)."""
        return np.asarray([_errors(t, p, "word") for t, p in zip(y_true, outputs)], dtype=np.float64).reshape(-1, 2)

    def metric_from_counts(self, totals: np.ndarray) -> float:
        return float(totals[0] / totals[1]) if totals[1] else 0.0

    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        """Corpus word and character error rates: edit operations over reference length, all items together."""
        true, pred = [str(t) for t in y_true], [str(p) for p in outputs]
        if len(true) != len(pred):
            raise DataError(f"{len(true)} reference transcripts but {len(pred)} predicted ones.")
        if not true:
            return {"wer": 0.0, "cer": 0.0}
        words = np.asarray([_errors(t, p, "word") for t, p in zip(true, pred)], dtype=np.float64).sum(0)
        chars = np.asarray([_errors(t, p, "char") for t, p in zip(true, pred)], dtype=np.float64).sum(0)
        return {"wer": float(words[0] / max(words[1], 1.0)), "cer": float(chars[0] / max(chars[1], 1.0))}

    def report_examples(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                        k: int = 5) -> tuple[list[str], list[list[str]]]:
        return ["clip", "reference", "transcribed"], [[str(i), str(t), str(p)]
                                                    for i, t, p in list(zip(items, y_true, outputs))[:k]]
