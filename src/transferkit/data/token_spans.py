"""Word-level tagged data as :class:`TaskData` for ``token-classification``; character spans -> word tags.

Every token-classification adapter (CoNLL files, JSONL spans, Hugging Face token
columns, the built-in corpora) ends in :func:`token_data`, so they share the
checks: one tag per word, a known tag scheme, no ``I-`` without its ``B-``, and a
tag set in a fixed order (``O`` first, then by entity type).

Example:
    >>> words, tags = spans_to_tags("Ada lives in Paris.", [[13, 18, "CITY"]], "line 1")
    >>> list(zip(words, tags))[-2:]
    [('Paris', 'B-CITY'), ('.', 'O')]
    >>> data = token_data([words], [tags], name="toy")
    >>> data.label_names, data.targets[0].tolist()
    (['O', 'B-CITY', 'I-CITY'], [0, 0, 0, 1, 0])
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from transferkit.data.dataset import TaskData
from transferkit.errors import DataError
from transferkit.tasks.token_schemes import check_tags, complete_tags, detect_scheme, parse_tag, split_words

TASK = "token-classification"


def token_data(words: Sequence[Sequence[str]], tags: Sequence[Sequence[str]] | None, *, name: str = "data",
               source: str = "", label_names: Sequence[str] | None = None, scheme: str = "auto",
               where: Sequence[str] | None = None) -> TaskData:
    """Sentences of words and their tags as token-classification :class:`TaskData`.

    Args:
        words: one list of words per sentence.
        tags: one tag per word (``None``: unlabelled data).
        name, source: display name and provenance.
        label_names: the tag set to encode with (a test split uses its training split's); by default every
            tag of the scheme for each entity type found (``B-X``, ``I-X``; BILOU adds ``L-X``, ``U-X``), ``O``
            first, so a test sentence's ``I-X`` is known even where no training entity had two words. A tag
            outside a given set is refused.
        scheme: ``auto`` (IOB2, or BILOU/BIOES when such prefixes occur), ``iob2``, ``bilou`` or ``iob1``
            (converted to IOB2).
        where: how to name each sentence in messages (``"train.conll, sentence 3 (line 17)"``); default
            ``"{name}, sentence {i}"``.

    Raises:
        DataError: a sentence with no words, a tag count that is not the word count, a bad tag (see
            :func:`~transferkit.tasks.token_schemes.check_tags`), a tag outside ``label_names``.
    """
    words = [[str(w) for w in sentence] for sentence in words]
    place = list(where) if where is not None else [f"{name}, sentence {i + 1}" for i in range(len(words))]
    for i, sentence in enumerate(words):
        if not sentence:
            raise DataError(f"{place[i]}: a sentence with no words.")
    if tags is None:
        return TaskData(words, None, "text", TASK, list(label_names) if label_names else None, name=name, source=source)
    if len(tags) != len(words):
        raise DataError(f"{name}: {len(words)} sentences but {len(tags)} tag sequences.")
    if scheme == "auto":
        scheme = detect_scheme([t for row in tags for t in row])
    checked = []
    for i, (sentence, row) in enumerate(zip(words, tags)):
        if len(row) != len(sentence):
            raise DataError(f"{place[i]}: {len(sentence)} words but {len(row)} tags; give one tag per word.")
        checked.append(check_tags([str(t) for t in row], scheme, place[i]))
    names = list(label_names) if label_names else complete_tags({t for row in checked for t in row}, scheme)
    index = {t: j for j, t in enumerate(names)}
    targets = []
    for i, row in enumerate(checked):
        unknown = next((t for t in row if t not in index), None)
        if unknown is not None:
            raise DataError(f"{place[i]}: tag {unknown!r} is not in the tag set ({', '.join(names)}).")
        targets.append(np.array([index[t] for t in row], dtype=np.int64))
    return TaskData(words, targets, "text", TASK, names, name=name, source=source)


def spans_to_tags(text: str, spans: Sequence[Sequence], where: str) -> tuple[list[str], list[str]]:
    """The words of ``text`` and their IOB2 tags from character spans ``[start, end, label]``.

    A word is inside a span when its characters are; a span must start and end on
    word boundaries (``split_words``), so a span that cuts a word is refused rather
    than silently widened.

    Raises:
        DataError: a malformed span, one outside the text, an empty one, overlapping spans or a span that cuts a
            word; ``where`` names the line.
    """
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string; got {type(text).__name__}.")
    found = split_words(text)
    words = [w for w, _, _ in found]
    tags = ["O"] * len(found)
    starts = {s: j for j, (_, s, _) in enumerate(found)}
    ends = {e: j for j, (_, _, e) in enumerate(found)}
    taken: list[tuple[int, int, str]] = []
    for k, span in enumerate(spans):
        if not isinstance(span, (list, tuple)) or len(span) != 3:
            raise DataError(f"{where}, span {k + 1}: expected [start, end, label]; got {span!r:.60}.")
        start, end, label = span
        if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
            raise DataError(f"{where}, span {k + 1}: start and end must be integers; got {start!r}, {end!r}.")
        if not isinstance(label, str) or not label.strip() or label == "O" or "-" in label[:2]:
            raise DataError(f"{where}, span {k + 1}: the label must be an entity type such as 'PERSON' "
                            f"(no B-/I- prefix); got {label!r}.")
        if not 0 <= start < end <= len(text):
            raise DataError(f"{where}, span {k + 1}: [{start}, {end}) is empty or outside the text of "
                            f"{len(text)} characters.")
        clash = next((t for t in taken if start < t[1] and t[0] < end), None)
        if clash is not None:
            raise DataError(f"{where}, span {k + 1}: [{start}, {end}) {label} overlaps [{clash[0]}, {clash[1]}) "
                            f"{clash[2]}; spans must not overlap.")
        a = starts.get(start + len(text[start:end]) - len(text[start:end].lstrip()))
        b = ends.get(end - (len(text[start:end]) - len(text[start:end].rstrip())))
        if a is None or b is None or b < a:
            raise DataError(f"{where}, span {k + 1}: [{start}, {end}) {text[start:end]!r:.40} does not start and "
                            f"end on word boundaries (words: {', '.join(repr(w) for w in words[:12])}...).")
        taken.append((start, end, label))
        tags[a] = f"B-{label}"
        for j in range(a + 1, b + 1):
            tags[j] = f"I-{label}"
    return words, tags


def align_token_labels(train: TaskData, evaluation: TaskData) -> TaskData:
    """``evaluation`` with its tags re-encoded as indices into ``train.label_names`` (matched by name).

    The token-classification counterpart of :func:`~transferkit.data.adapters_labels.check_eval_labels`
    and :func:`~transferkit.data.adapters_labels.align_labels` together.

    Raises:
        DataError: the two are not both token-classification data, or ``evaluation`` has a tag that no
            training word has (named, with its count and first sentence, and the training tags listed).
    """
    if train.task != evaluation.task:
        raise DataError(f"Training data '{train.name}' is {train.task} but evaluation data "
                        f"'{evaluation.name}' is {evaluation.task}.")
    if evaluation.targets is None or train.label_names is None:
        return evaluation
    train_names = list(train.label_names)
    if train.targets is not None:  # the entity types training words carry: a model never learns a type it has no word of
        used = np.unique(np.concatenate([np.asarray(t, np.int64) for t in train.targets] or [np.zeros(0, np.int64)]))
        types = {parse_tag(train_names[k])[1] for k in used if k < len(train_names)}
        seen = {n for n in train_names if parse_tag(n)[1] in types}
    else:
        seen = set(train_names)
    lookup = {n: k for k, n in enumerate(train_names) if n in seen}
    names = list(evaluation.label_names or [])
    unseen: dict[str, list[int]] = {}  # tag -> [words, first sentence]
    for i, row in enumerate(evaluation.targets):
        for k in np.asarray(row, np.int64):
            tag = names[k] if k < len(names) else str(int(k))
            if tag not in lookup:
                unseen.setdefault(tag, [0, i + 1])[0] += 1
    if unseen:
        listed = ", ".join(f"'{t}' ({c} words, first in sentence {s})" for t, (c, s) in unseen.items())
        raise DataError(f"Evaluation data '{evaluation.source or evaluation.name}' has tag(s) the training data "
                        f"'{train.name}' never had: {listed}. Training tags: "
                        f"{', '.join(n for n in train_names if n in seen)}.")
    if names == train_names:
        return evaluation
    mapping = np.array([lookup.get(n, -1) for n in names], dtype=np.int64)  # -1: a tag no word carries
    targets = np.empty(len(evaluation.targets), dtype=object)
    targets[:] = [mapping[np.asarray(row, np.int64)] for row in evaluation.targets]
    return replace(evaluation, targets=targets, label_names=train_names, _fingerprint=None)
