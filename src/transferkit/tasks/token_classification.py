"""``token-classification``: a tag per word (named entities, PII), scored by entities with seqeval.

Items are lists of words (CoNLL files, JSONL spans and Hugging Face token columns
are split into words by the data adapters); ``predict`` and ``serve`` also take
raw strings, split by :func:`~transferkit.tasks.token_schemes.split_words`, and
answer entities with character offsets into them. Targets are one tag index per
word into ``label_names`` (the tag set, ``O`` first).

Sub-tokens: the first sub-token of each word carries the word's tag; the other
sub-tokens, special tokens and padding are ignored by the loss
(Hugging Face's ``run_ner`` recipe). With the fine-tuning strategies' ``label_all_tokens``
option (:func:`continuation_tags`), a word's later sub-tokens train too, on the ``I-`` tag of
its type (``O`` for ``O``; IOB2 only); predictions still read each word at its first sub-token. A sentence longer than the model's window is
tokenised as overlapping windows (the backbone's preprocess returns
``item_ids``, the sentence of each window row); each word is read in the window
where it sits farthest from an edge, in training and prediction alike, so nothing
is truncated.

Metrics are entity-level (``seqeval``, conlleval's reading): micro precision,
recall and F1 (the primary metric), F1 per entity type (``f1_PER``, ...), and
word accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import DataError
from transferkit.tasks.base import IGNORE_INDEX, Task
from transferkit.tasks.token_schemes import parse_tag, split_words, tags_to_entities


def label_positions(word_ids: torch.Tensor, item_ids: torch.Tensor | None = None) -> list[tuple[int, int, int, int]]:
    """Where each word of each item is read: ``(row, position, item, word)``.

    ``word_ids`` ``[W, T]`` holds the word of each sub-token (-1: special or
    padding); ``item_ids`` ``[W]`` the item each row (window) belongs to (default:
    one row per item). A word is read at its first sub-token; when windows overlap,
    in the window where that sub-token is farthest from the window's edges. The
    first sub-token of a continuation window may be the middle of a word, so a word
    that starts a window which is not its item's first is read there only if it
    appears nowhere else.
    """
    ids = word_ids.cpu().numpy()
    items = np.arange(len(ids)) if item_ids is None else item_ids.cpu().numpy()
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    for r, row in enumerate(ids):
        content = np.flatnonzero(row >= 0)
        if not len(content):
            continue
        lo, hi = content[0], content[-1]
        continuation = r > 0 and items[r - 1] == items[r]
        previous = -1
        for p in content:
            w = int(row[p])
            if w == previous:
                continue
            previous = w
            margin = float(min(p - lo, hi - p))
            if continuation and p == lo:
                margin = -1.0  # maybe the middle of a word cut by the window
            key = (int(items[r]), w)
            if key not in best or margin > best[key][0]:
                best[key] = (margin, r, int(p))
    return [(r, p, item, w) for (item, w), (_, r, p) in sorted(best.items())]


def continuation_tags(label_names: Sequence[str]) -> np.ndarray:
    """For each tag index, the tag a word's later sub-tokens train on with ``label_all_tokens``: ``I-X`` for
    ``B-X`` and ``I-X``, ``O`` for ``O`` (Hugging Face ``run_ner``'s ``b_to_i_label``).

    Only IOB2 tag sets: in BILOU a word's ``U-``/``L-`` tag ends its entity, so no tag could follow it on the
    word's later sub-tokens while the first keeps the word's tag (what predictions read); such tag sets are
    refused, as is a ``B-X`` without its ``I-X``.

    Example:
        >>> continuation_tags(["O", "B-PER", "I-PER"]).tolist()
        [0, 2, 2]
    """
    from transferkit.errors import ConfigError

    names = list(label_names)
    index = {t: i for i, t in enumerate(names)}
    out = np.arange(len(names))
    for i, tag in enumerate(names):
        prefix, kind = parse_tag(tag)
        if prefix in "LU":
            raise ConfigError(f"label_all_tokens=true gives a word's later sub-tokens the I- tag of its type, which "
                              f"IOB2 tags allow; this tag set is BILOU ({tag!r}), where a word's U-/L- tag ends its "
                              f"entity. Use IOB2 tags, or label_all_tokens=false (the first sub-token only).")
        if prefix == "B":
            if f"I-{kind}" not in index:
                raise ConfigError(f"label_all_tokens=true: tag {tag!r} has no 'I-{kind}' in the tag set "
                                  f"{names}, so its later sub-tokens have no tag.")
            out[i] = index[f"I-{kind}"]
    return out


def _rows(inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if not isinstance(inputs, dict) or "word_ids" not in inputs:
        raise DataError("token-classification reads word-level items (lists of words) through a text backbone "
                        "with a fast tokenizer; this batch has no word_ids.")
    return inputs["word_ids"], inputs.get("item_ids"), inputs.get("word_counts")


class TokenClassification(Task):
    """A tag per word (IOB2 or BILOU): per-token softmax, cross-entropy on first sub-tokens, entity F1."""

    name = "token-classification"
    primary_metric = "f1"
    feature_kind = "sequence"
    head = "linear"
    target_kind = "per-token"
    pipeline_tags = {"text": "token-classification"}
    metric_names = ("f1", "precision", "recall", "word_accuracy", "f1_<TYPE>")
    #: A few dozen sentences are one or two batches, so a default of 20 epochs is 40 optimizer steps: on
    #: ``pii-ner`` at 50 sentences (40 train), MiniLM fine-tuning reached 35.3 entity F1 and LoRA 20.2 that
    #: way, 56.1 and 55.8 with 300 steps (3 seeds; benchmarks/results/ner). From about 450 training
    #: sentences (15 batches of 32) the default epochs already take more steps and nothing changes.
    min_train_steps = 300

    # -- targets ---------------------------------------------------------------
    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        n = len(label_names or [])
        out = np.empty(len(targets), dtype=object)
        for i, row in enumerate(targets):
            try:
                arr = np.asarray(row, dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"{where}: the targets of sentence {i + 1} are not tag indices: {row!r:.60}.") from None
            if n and len(arr) and (arr.min() < 0 or arr.max() >= n):
                raise DataError(f"{where}: sentence {i + 1} has tag index {int(arr.max() if arr.max() >= n else arr.min())}"
                                f"; the tag set has {n} tags (0..{n - 1}).")
            out[i] = arr
        return out

    def target_bytes(self, targets: np.ndarray) -> bytes:
        return b"|".join(np.asarray(t, np.int64).tobytes() for t in targets)

    def collate_targets(self, targets: np.ndarray, inputs: Any, *,
                        continuation: np.ndarray | None = None) -> torch.Tensor:
        """The tag of each word at the sub-token where it is read (:func:`label_positions`); -100 elsewhere.

        ``continuation`` (``label_all_tokens``, from :func:`continuation_tags`): the word's later sub-tokens in
        that same window take ``continuation[tag]``; its sub-tokens in other overlapping windows stay ignored.
        """
        word_ids, item_ids, _ = _rows(inputs)
        labels = torch.full(word_ids.shape, IGNORE_INDEX, dtype=torch.long)
        for r, p, item, w in label_positions(word_ids, item_ids):
            row = targets[item]
            if w >= len(row):
                raise DataError(f"Sentence {item + 1} of the batch has {len(row)} tags for more words; "
                                f"give one tag per word.")
            labels[r, p] = int(row[w])
            if continuation is not None:
                rest = word_ids[r] == w
                rest[:p + 1] = False
                labels[r, rest] = int(continuation[int(row[w])])
        return labels

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten().long(), ignore_index=IGNORE_INDEX,
                               label_smoothing=label_smoothing)

    # -- outputs ---------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor, inputs: Any = None) -> np.ndarray:
        """Per item: word probabilities ``[words, tags]``; a word with no sub-token (the tokenizer dropped it) is all 0."""
        word_ids, item_ids, counts = _rows(inputs)
        probs = outputs.float().softmax(-1).cpu().numpy()
        n_items = int(item_ids.max()) + 1 if item_ids is not None and len(item_ids) else len(word_ids)
        picked = label_positions(word_ids, item_ids)
        sizes = [0] * n_items
        for _, _, item, w in picked:
            sizes[item] = max(sizes[item], w + 1)
        if counts is not None:
            sizes = [int(c) for c in counts.cpu().tolist()]
        out = np.empty(n_items, dtype=object)
        for i in range(n_items):
            out[i] = np.zeros((sizes[i], probs.shape[-1]), dtype=np.float32)
        for r, p, item, w in picked:
            out[item][w] = probs[r, p]
        return out

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        if not parts:
            return np.empty(0, dtype=object)
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        out[:] = [row for part in parts for row in part]
        return out

    def prepare_items(self, items: Sequence) -> list:
        """Raw strings become their words (:func:`split_words`); lists of words pass through."""
        return [[w for w, _, _ in split_words(it)] if isinstance(it, str) else list(it) for it in items]

    @staticmethod
    def tags(outputs: np.ndarray, label_names: Sequence[str]) -> list[list[str]]:
        """The predicted tag of every word (a word the model could not read is ``O``)."""
        names = list(label_names)
        return [[names[int(j)] if s > 0 else "O" for j, s in zip(np.asarray(row).argmax(1), np.asarray(row).sum(1))]
                if len(row) else [] for row in outputs]

    def entities(self, outputs: np.ndarray, label_names: Sequence[str], items: Sequence | None = None,
                 tags: list[list[str]] | None = None) -> list[list[dict]]:
        """Entities per item: ``label``, ``text``, ``score`` (mean probability of its tags), ``start``/``end``
        character offsets (into the string item, or into the words joined by spaces) and ``words`` ``[first, end)``."""
        result = []
        all_tags = tags if tags is not None else self.tags(outputs, label_names)
        for k, (row, row_tags) in enumerate(zip(outputs, all_tags)):
            item = items[k] if items is not None else None
            if isinstance(item, str):
                spans = split_words(item)
                text = item
            else:
                words = list(item) if item is not None else [f"w{j}" for j in range(len(row_tags))]
                spans, pos = [], 0
                for w in words:
                    spans.append((w, pos, pos + len(w)))
                    pos += len(w) + 1
                text = " ".join(words)
            found = []
            for kind, a, b in tags_to_entities(row_tags):
                start, end = spans[a][1], spans[b - 1][2]
                score = float(np.asarray(row)[a:b].max(1).mean())
                found.append({"label": kind, "text": text[start:end] if item is not None else None,
                              "score": round(score, 6), "start": int(start), "end": int(end), "words": [a, b]})
            result.append(found)
        return result

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        return self.entities(outputs, label_names or [], items)

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list[dict]:
        tags = self.tags(outputs, label_names or [])
        return [{"entities": ents, "tags": t}
                for ents, t in zip(self.entities(outputs, label_names or [], items, tags), tags)]

    # -- evaluation ------------------------------------------------------------
    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        """Entity-level micro precision/recall/F1, F1 per type and word accuracy (``seqeval``, default mode)."""
        from seqeval.metrics import classification_report

        names = list(label_names or [])
        if not names:
            raise DataError("token-classification metrics need the tag names (label_names).")
        true = [[names[int(j)] for j in row] for row in y_true]
        pred = self.tags(outputs, names)
        for i, (t, p) in enumerate(zip(true, pred)):
            if len(t) != len(p):
                raise DataError(f"Sentence {i + 1}: {len(t)} gold tags but {len(p)} predicted words.")
        report = classification_report(true, pred, output_dict=True, zero_division=0)
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        words = np.concatenate([np.asarray(t) == np.asarray(p) for t, p in zip(true, pred)]) if true else np.zeros(0)
        out = {"f1": float(micro["f1-score"]), "precision": float(micro["precision"]),
               "recall": float(micro["recall"]), "word_accuracy": float(words.mean()) if len(words) else 0.0,
               "entities": int(micro["support"]), "n": len(true)}
        for kind, row in report.items():
            if kind not in ("micro avg", "macro avg", "weighted avg"):
                out[f"f1_{kind}"] = float(row["f1-score"])
        return out

    def item_counts(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> np.ndarray:
        """Per sentence: entities right (same type and words), predicted but wrong, missed: ``[N, 3]``."""
        names = list(label_names or [])
        rows = []
        for gold, pred in zip(y_true, self.tags(outputs, names)):
            g = set(tags_to_entities([names[int(j)] for j in gold]))
            p = set(tags_to_entities(pred))
            rows.append((len(g & p), len(p - g), len(g - p)))
        return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

    def metric_from_counts(self, totals: np.ndarray) -> float:
        """Micro entity F1 ``2 tp / (2 tp + fp + fn)`` (0 when there is nothing to find or found)."""
        tp, fp, fn = (float(v) for v in totals)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    def report_examples(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                        k: int = 5) -> tuple[list[str], list[list[str]]]:
        """The first ``k`` sentences with entities the model got wrong, then right ones: text with
        ``[entity]TYPE`` marks, gold and predicted."""
        names = list(label_names or [])

        def marked(words: Sequence[str], tags: Sequence[str]) -> str:
            out = list(words)
            for kind, a, b in tags_to_entities(tags):
                out[a] = "[" + out[a]
                out[b - 1] = out[b - 1] + "]" + kind
            return " ".join(out)

        predicted = self.tags(outputs, names)
        wrong, right = [], []
        for words, gold, pred in zip(items, y_true, predicted):
            gold_tags = [names[int(j)] for j in gold]
            if not tags_to_entities(gold_tags) and not tags_to_entities(pred):
                continue
            (right if gold_tags == list(pred) else wrong).append([marked(words, gold_tags), marked(words, pred)])
        return ["gold ([entity]TYPE)", "predicted"], (wrong + right)[:k]

    def export_postprocess(self) -> str:
        return "softmax"

