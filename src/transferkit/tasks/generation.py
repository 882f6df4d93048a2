"""``text-generation``: a causal language model continues a prompt; trained on prompt/completion pairs.

After TRL's ``SFTTrainer``: no new head (the model's own output layer scores the
next token: the ``source-output`` head on ``logits`` features), and the task is the
label masking: a training item is the prompt followed by its completion, and the
loss reads only the completion's tokens (-100 elsewhere; the backbone's
preprocessing builds the ``labels``, see
:class:`~transferkit.backbones.causal_text.CausalPreprocess`). Prediction decodes
autoregressively (:meth:`TextGeneration.infer`): greedy by default, settings in the
model's ``generation`` dict (``max_new_tokens``, ``temperature``, ``stop``).

Items are prompts: a string, or a dict with ``prompt`` or chat ``messages``
(``[{"role": "user", "content": ...}, ...]``, read through the tokenizer's chat
template); targets are the completions (strings).

Metrics, with the field's libraries: ROUGE-L F-measure (``rouge-score``, Porter
stemming; the primary metric), chrF (``sacrebleu``, on the 0-1 scale here) and
exact match (after trimming and lower-casing: classification posed as generation);
with the model at hand, the perplexity of the reference completions (:meth:`TextGeneration.model_metrics`).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.causal_lm import cut_at_stop
from transferkit.errors import ConfigError, DataError
from transferkit.tasks.base import IGNORE_INDEX, Task, check_text_targets, text_target_bytes

#: Decoding settings used where a model has none of its own.
DEFAULT_GENERATION = {"max_new_tokens": 64, "temperature": 0.0, "stop": []}


def check_generation(settings: dict, where: str = "generation") -> dict:
    """Validated decoding settings (unknown keys and bad values are refused by name)."""
    unknown = sorted(set(settings) - set(DEFAULT_GENERATION))
    if unknown:
        raise ConfigError(f"Unknown {where} setting(s) {', '.join(map(repr, unknown))}. "
                          f"Valid: {', '.join(DEFAULT_GENERATION)}.")
    out = {**DEFAULT_GENERATION, **settings}
    n, temperature, stop = out["max_new_tokens"], out["temperature"], out["stop"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4096:
        raise ConfigError(f"The 'max_new_tokens' {where} setting must be an int in [1, 4096]. Got {n!r} instead.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
        raise ConfigError(f"The 'temperature' {where} setting must be a number in [0, 10] (0: greedy). "
                          f"Got {temperature!r} instead.")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(f"The 'stop' {where} setting must be a list of non-empty strings. Got {stop!r} instead.")
    return {"max_new_tokens": n, "temperature": float(temperature), "stop": list(stop)}


def check_prompt(item: Any, where: str) -> dict:
    """One generation item as ``{"prompt": text}`` or ``{"messages": turns}`` (the turns are checked where they
    are read: a file's chat records, the backbone's chat template).

    Raises:
        DataError: an empty or non-text prompt, or an item that is neither a string nor a dict with ``prompt``
            or ``messages``, named by ``where``.
    """
    if isinstance(item, dict) and "messages" in item:
        return {"messages": item["messages"]}
    text = item.get("prompt") if isinstance(item, dict) else item
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: empty or non-text prompt ({item!r:.60}); a prompt is a non-empty string or a "
                        f"dict with 'prompt' or 'messages'.")
    return {"prompt": text}


class StreamedText:
    """A generation's text as it streams, released so that the pieces join to the whole answer :meth:`TextGeneration.infer`
    gives: nothing from a stop string on, nor what may start one (the last ``len(longest stop) - 1`` characters wait
    for the next piece), and no surrounding spaces (trailing ones wait for the text after them).

    Example:
        >>> s = StreamedText(["\\n"])
        >>> [s.push(p) for p in [" Hello", "  world ", "\\nmore"]], s.stopped, s.sent
        (['Hello', '  world', ''], True, 'Hello  world')
    """

    def __init__(self, stop: Sequence[str]):
        self.stop, self.hold = list(stop), max((len(s) for s in stop), default=1) - 1
        self.text, self.sent, self.stopped = "", "", False

    def push(self, chunk: str) -> str:
        """Take the next decoded piece; return the text it makes safe to send (``""``: none yet)."""
        self.text += chunk
        cut = cut_at_stop(self.text, self.stop)
        self.stopped = len(cut) < len(self.text)
        return self._release(cut if self.stopped else self.text[:max(0, len(self.text) - self.hold)])

    def finish(self) -> str:
        """The generation ended: the rest of the answer."""
        return self._release(cut_at_stop(self.text, self.stop))

    def _release(self, upto: str) -> str:
        ready = upto.strip()
        assert ready.startswith(self.sent), (ready, self.sent)  # the released text only grows
        new, self.sent = ready[len(self.sent):], ready
        return new


class TextGeneration(Task):
    """Continue a prompt (summaries, answers, rewrites): completion-only loss, ROUGE-L / chrF / exact match."""

    name = "text-generation"
    primary_metric = "rougeL"
    feature_kind = "logits"
    head = "source-output"
    has_labels = False
    target_kind = "text"
    pipeline_tags = {"text": "text-generation"}
    metric_names = ("rougeL", "chrf", "exact_match")
    packable = True
    streams = True

    # -- targets ---------------------------------------------------------------
    def num_outputs(self, label_names: Sequence[str] | None) -> int:
        return 0

    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        return check_text_targets(targets, where, "completion", "every prompt needs the text the model should learn to write")

    def target_bytes(self, targets: np.ndarray) -> bytes:
        return text_target_bytes(targets)

    def training_items(self, items: Sequence, targets: np.ndarray) -> list[dict]:
        """Each prompt with its completion: the model reads both (teacher forcing), the loss the completion."""
        return [{**check_prompt(it, f"item {i}"), "completion": str(t)}
                for i, (it, t) in enumerate(zip(items, targets))]

    def collate_targets(self, targets: np.ndarray, inputs: Any) -> torch.Tensor:
        if not isinstance(inputs, dict) or "labels" not in inputs:
            raise DataError("text-generation trains through a causal: backbone, whose preprocessing joins each "
                            "prompt with its completion; this batch has no completion labels.")
        return inputs["labels"]

    # -- model -----------------------------------------------------------------
    def configure_model(self, model: nn.Module, data: Any) -> None:
        """Decode up to 1.25 times the longest training completion (at least 8, at most 256 tokens), greedily:
        longer generations only add text the references do not have (and time)."""
        tokenizer = getattr(model.backbone, "tokenizer", None)
        if tokenizer is None or data.targets is None or not len(data.targets):
            return
        sample = [str(t) for t in list(data.targets)[:2000]]
        longest = max(len(ids) for ids in tokenizer(sample, add_special_tokens=False)["input_ids"])
        model.generation = check_generation({"max_new_tokens": int(min(256, max(8, round(1.25 * longest) + 1)))})

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Next-token cross-entropy on the completion: position t's logits score token t + 1.

        Only the completion's positions go through the softmax (the prompt's rows of the ``[B, T, V]``
        logits are skipped, not masked afterwards): less memory, the same mean.
        """
        labels = targets[:, 1:]
        keep = labels != IGNORE_INDEX
        if not keep.any():
            return outputs.sum() * 0.0  # nothing to learn in this batch (never from the preprocessing)
        return F.cross_entropy(outputs[:, :-1][keep].float(), labels[keep].long(), label_smoothing=label_smoothing)

    @staticmethod
    def _generator(model: nn.Module) -> tuple[Any, dict]:
        """The model's backbone, which must generate, and the model's decoding settings."""
        backbone = getattr(model, "backbone", None)
        if not hasattr(backbone, "generate"):
            raise ConfigError(f"text-generation needs a causal language model (causal:smollm2, causal:PATH); "
                              f"'{getattr(backbone, 'spec', backbone)}' does not generate.")
        return backbone, check_generation(getattr(model, "generation", None) or {})

    def infer(self, model: nn.Module, inputs: Any) -> np.ndarray:
        """Generated text per prompt (the backbone's ``generate``, with the model's ``generation`` settings)."""
        backbone, settings = self._generator(model)
        out = np.empty(len(inputs["input_ids"]), dtype=object)
        out[:] = backbone.generate(inputs, **settings)
        return out

    def stream(self, model: nn.Module, inputs: Any, on_text: Callable[[str], None],
               cancel: threading.Event | None = None) -> str:
        """The answer to one prompt (``inputs``: a batch of one), handed to ``on_text`` piece by piece as it is
        generated; returns the whole answer, the text :meth:`infer` gives (the pieces join to it, see
        :class:`StreamedText`). Setting ``cancel`` ends the generation at its next token (what was sent stays)."""
        backbone, settings = self._generator(model)
        text = StreamedText(settings["stop"])

        def piece(chunk: str) -> None:
            new = text.push(chunk)
            if new:
                on_text(new)

        backbone.generate(inputs, **settings, on_text=piece,
                          should_stop=lambda: text.stopped or (cancel is not None and cancel.is_set()))
        tail = text.finish()
        if tail:
            on_text(tail)
        return text.sent

    # -- outputs ---------------------------------------------------------------
    def postprocess(self, outputs: Any, inputs: Any = None) -> np.ndarray:
        if isinstance(outputs, torch.Tensor):
            raise DataError("text-generation outputs are generated text: predict through the task's infer "
                            "(transferkit.predict_outputs), not the model's logits.")
        return np.asarray(outputs, dtype=object)

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        out[:] = [t for part in parts for t in part]
        return out

    def prepare_items(self, items: Sequence) -> list[dict]:
        """Strings become ``{"prompt": ...}``; dicts with ``prompt`` or ``messages`` pass through."""
        return [check_prompt(it, f"item {i}") for i, it in enumerate(items)]

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        return [str(t) for t in outputs]

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None,
                items: Sequence | None = None) -> list[dict]:
        return [{"text": str(t)} for t in outputs]

    # -- evaluation ------------------------------------------------------------
    @staticmethod
    def rouge_l(y_true: Sequence[str], outputs: Sequence[str]) -> np.ndarray:
        """ROUGE-L F-measure per item (``rouge-score``, Porter stemmer)."""
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        return np.asarray([scorer.score(str(t), str(p))["rougeL"].fmeasure for t, p in zip(y_true, outputs)],
                          dtype=np.float64)

    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        import sacrebleu

        true, pred = [str(t) for t in y_true], [str(p) for p in outputs]
        if len(true) != len(pred):
            raise DataError(f"{len(true)} reference completions but {len(pred)} generated texts.")
        if not true:
            return {"rougeL": 0.0, "chrf": 0.0, "exact_match": 0.0, "mean_words": 0.0}
        return {"rougeL": float(self.rouge_l(true, pred).mean()),
                "chrf": float(sacrebleu.corpus_chrf(pred, [true]).score) / 100.0,
                "exact_match": float(np.mean([t.strip().lower() == p.strip().lower() for t, p in zip(true, pred)])),
                "mean_words": float(np.mean([len(p.split()) for p in pred]))}

    def model_metrics(self, model: nn.Module, data: Any, batch_size: int = 8) -> dict:
        """Perplexity of the reference completions given their prompts: ``exp`` of the mean negative
        log-likelihood per completion token (the end-of-sequence token included), teacher-forced."""
        if data.targets is None or not len(data) or not hasattr(model.backbone, "generate"):
            return {}
        device = next(model.parameters()).device
        total, tokens = 0.0, 0
        model.eval()
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                idx = list(range(start, min(start + batch_size, len(data))))
                batch = model.backbone.preprocess(self.training_items([data.items[i] for i in idx],
                                                                      np.asarray(data.targets)[idx]))
                batch = {k: v.to(device) for k, v in batch.items()}
                n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                total += float(self.loss(model(batch), batch["labels"])) * n  # the loss is the mean over them
                tokens += n
        return {"perplexity": float(np.exp(total / max(tokens, 1)))}

    def item_counts(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> np.ndarray:
        """Per item: its ROUGE-L and a 1, so resampled column sums give the mean ROUGE-L."""
        scores = self.rouge_l([str(t) for t in y_true], [str(p) for p in outputs])
        return np.stack([scores, np.ones_like(scores)], axis=1)

    def metric_from_counts(self, totals: np.ndarray) -> float:
        return float(totals[0] / totals[1]) if totals[1] else 0.0

    def report_examples(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                        k: int = 5) -> tuple[list[str], list[list[str]]]:
        """The first ``k`` prompts (shortened) with their reference and generated completions."""
        def short(text: str, n: int = 160) -> str:
            text = " ".join(str(text).split())
            return text if len(text) <= n else text[:n - 1] + "…"

        rows = []
        for item, t, p in list(zip(items, y_true, outputs))[:k]:
            prompt = (item.get("prompt") or str(item.get("messages"))) if isinstance(item, dict) else item
            rows.append([short(prompt), short(t), short(p)])
        return ["prompt", "reference", "generated"], rows
