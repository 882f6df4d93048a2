"""Token-classification adapters: CoNLL files, JSONL character spans and Hugging Face token columns.

Each reader ends in :func:`~transferkit.data.token_spans.token_data`, so every
format gets the same checks (one tag per word, a known tag scheme, no ``I-``
without its ``B-``) and the same tag set order (``O`` first, then by entity
type); errors are :class:`~transferkit.errors.DataError` naming the file and the
sentence or line:

* :func:`read_conll`: one word per line, the tag in the last column, a blank
  line between sentences, ``-DOCSTART-`` lines skipped;
* :func:`read_span_jsonl`: ``{"text": ..., "spans": [[start, end, label], ...]}``
  per line (spans may also be spaCy/Prodigy ``{"start", "end", "label"}`` dicts);
* :func:`from_hf_token_dataset`: a ``datasets.Dataset`` with a tokens column and a
  tags column (strings, or ints named by a ``Sequence(ClassLabel)`` feature);
* :func:`read_token_file` picks the reader by suffix (what ``resolve_data`` uses),
  and :func:`align_token_labels` re-encodes evaluation tags with the training tag set.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.conll"
    >>> _ = path.write_text("Ada B-PER\\nLovelace I-PER\\nwrote O\\n")
    >>> data = read_conll(path)
    >>> data.items, data.label_names, data.targets[0].tolist()
    ([['Ada', 'Lovelace', 'wrote']], ['O', 'B-PER', 'I-PER'], [1, 2, 0])
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.adapters_tables import _read_text
from transferkit.data.dataset import TaskData
from transferkit.data.token_spans import TASK, align_token_labels, spans_to_tags, token_data  # noqa: F401
from transferkit.errors import ConfigError, DataError
from transferkit.tasks.token_schemes import SCHEMES, parse_tag

#: Suffixes read as CoNLL by :func:`read_token_file` (and routed to it by ``resolve_data`` whatever the task).
CONLL_SUFFIXES = (".conll", ".iob", ".bio")
#: Every suffix :func:`read_token_file` reads (each optionally ``.gz``).
TOKEN_SUFFIXES = CONLL_SUFFIXES + (".txt", ".jsonl", ".json")


def _suffix(path: Path) -> str:
    """The format suffix, looking through ``.gz``."""
    return Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else path.suffix.lower()


def is_conll(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a CoNLL suffix (:data:`CONLL_SUFFIXES`, optionally ``.gz``)."""
    return _suffix(Path(path)) in CONLL_SUFFIXES


def is_span_jsonl(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.jsonl`` file whose first record has ``text`` and a list of ``spans``: entity
    spans, read as token-classification data without being told."""
    p = Path(path)
    if _suffix(p) != ".jsonl" or not p.is_file():
        return False
    try:
        with open(p, encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), "")
        record = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # the table reader names the problem
    return isinstance(record, dict) and "text" in record and isinstance(record.get("spans"), list)


def _text_of(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"Token-classification file not found: {path}")
    return _read_text(path)  # UTF-8 (BOMs honoured, .gz decompressed); bad bytes named by line and column


def _check_scheme(scheme: str, origin: str) -> None:
    if scheme not in SCHEMES:
        raise DataError(f"{origin}: unknown tag scheme {scheme!r}. Available: {', '.join(SCHEMES)}.")


def _canonical_names(label_names: Sequence[str] | None, origin: str) -> list[str] | None:
    """A given tag set in the spellings :func:`token_data` normalises to (BIOES ``E-``/``S-`` as ``L-``/``U-``)."""
    if label_names is None:
        return None
    out = []
    for name in label_names:
        try:
            prefix, kind = parse_tag(str(name))
        except ValueError:
            raise DataError(f"{origin}: label_names holds {name!r}, which is not a tag of IOB2 (B-X, I-X, O) or "
                            f"BILOU/BIOES (B-, I-, L-/E-, U-/S-, O).") from None
        out.append("O" if kind is None else f"{prefix}-{kind}")
    if len(set(out)) != len(out):
        raise DataError(f"{origin}: label_names names a tag twice ({', '.join(map(str, label_names))}).")
    return out


# ---------------------------------------------------------------- CoNLL


def read_conll(path: str | os.PathLike, *, label_names: Sequence[str] | None = None, scheme: str = "auto",
               word_column: int = 0, tag_column: int = -1) -> TaskData:
    """A CoNLL-style file: one word per line, a blank line between sentences.

    Columns are separated by tabs, or by whitespace on a line without a tab; the
    word is in ``word_column`` (the first) and its tag in ``tag_column`` (the
    last), so CoNLL-2003's four columns and two-column ``word tag`` files both
    read. Lines starting with ``-DOCSTART-`` separate documents and are skipped.

    Args:
        path: the file (``.conll``, ``.iob``, ``.bio``, ``.txt``; optionally ``.gz``), UTF-8.
        label_names: the tag set to encode with (a test file uses its training file's); by default
            the tags found, ``O`` first.
        scheme: ``auto``, ``iob2``, ``bilou`` (BIOES spellings accepted) or ``iob1`` (converted to IOB2).
        word_column, tag_column: the columns (Python indices) of the word and the tag.

    Raises:
        DataError: a missing or empty file, bytes that are not UTF-8 (line and column), a line with one
            column or too few for ``word_column``/``tag_column``, a bad tag (sentence, line and word).
    """
    p = Path(path)
    _check_scheme(scheme, str(p))
    names = _canonical_names(label_names, str(p))
    text = _text_of(p)
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    where: list[str] = []
    words_now: list[str] = []
    tags_now: list[str] = []
    start = 0

    def close() -> None:
        if words_now:
            sentences.append(list(words_now))
            tags.append(list(tags_now))
            where.append(f"{p}, sentence {len(sentences)} (line {start})")
            words_now.clear()
            tags_now.clear()

    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("-DOCSTART-"):
            close()
            continue
        cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if len(cols) < 2:
            raise DataError(f"{p}: line {n} has one column ({line!r:.60}); expected the word and its tag "
                            f"separated by a tab or spaces (the tag in the last column).")
        try:
            word, tag = cols[word_column], cols[tag_column]
        except IndexError:
            raise DataError(f"{p}: line {n} has {len(cols)} columns ({line!r:.60}) but word_column={word_column} "
                            f"and tag_column={tag_column}.") from None
        if not word or not tag:
            raise DataError(f"{p}: line {n} has an empty {'word' if not word else 'tag'} ({line!r:.60}).")
        if not words_now:
            start = n
        words_now.append(word)
        tags_now.append(tag)
    close()
    if not sentences:
        raise DataError(f"{p}: the file has no sentences (expected one 'word tag' line per word, a blank line "
                        f"between sentences).")
    return token_data(sentences, tags, name=p.name, source=str(p), label_names=names, scheme=scheme, where=where)


# ---------------------------------------------------------------- JSONL spans


def _records(p: Path, text: str) -> list[tuple[Any, str]]:
    """``(record, where)`` per JSONL line; a file that is one JSON array gives its elements (``record N``)."""
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{p}: the file starts with '[' but is not a valid JSON array ({exc}).") from None
        return [(r, f"{p}, record {i + 1}") for i, r in enumerate(array)]
    out = []
    for n, line in enumerate(text.split("\n"), start=1):  # newlines only: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            out.append((json.loads(line), f"{p}, line {n}"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}, line {n}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
        except (ValueError, RecursionError) as exc:  # a huge integer; nesting deeper than Python's stack
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise DataError(f"{p}, line {n}: cannot be read as JSON ({what}).") from None
    return out


def _span_list(spans: Any, spans_key: str, where: str) -> list:
    """Spans as ``[start, end, label]`` lists; spaCy/Prodigy ``{"start", "end", "label"}`` dicts converted."""
    if not isinstance(spans, list):
        raise DataError(f"{where}: '{spans_key}' must be a list of [start, end, label]; got a "
                        f"{type(spans).__name__} ({spans!r:.60}).")
    out = []
    for k, span in enumerate(spans):
        if isinstance(span, dict):
            missing = [key for key in ("start", "end", "label") if key not in span]
            if missing:
                raise DataError(f"{where}, span {k + 1}: no key {', '.join(repr(m) for m in missing)}; a span dict "
                                f"needs start, end and label (keys found: {', '.join(map(str, span)) or 'none'}).")
            span = [span["start"], span["end"], span["label"]]
        out.append(span)
    return out


def read_span_jsonl(path: str | os.PathLike, *, label_names: Sequence[str] | None = None, text_key: str = "text",
                    spans_key: str = "spans") -> TaskData:
    """A JSONL file of texts and character spans, one record per line, as word-level IOB2 tags.

    A record is ``{"text": "Ada lives in Paris.", "spans": [[13, 18, "CITY"]]}``;
    a span may also be a dict ``{"start": 13, "end": 18, "label": "CITY"}`` (spaCy,
    Prodigy). Texts are split into words by
    :func:`~transferkit.tasks.token_schemes.split_words`, and each span must start and end on
    word boundaries (:func:`~transferkit.data.token_spans.spans_to_tags`). A file that is one
    JSON array of such records is read too.

    Args:
        path: the file (``.jsonl`` or ``.json``; optionally ``.gz``), UTF-8.
        label_names: the tag set to encode with (IOB2 tags, ``O`` first); by default the tags found.
        text_key, spans_key: the keys of the text and of its spans.

    Raises:
        DataError: a line that is not a JSON object, a missing key (the keys found are listed), spans that
            are not a list, a malformed, empty, out-of-range or overlapping span, or one that cuts a word
            (each naming the file and line).
    """
    p = Path(path)
    names = _canonical_names(label_names, str(p))
    words, tags, where = [], [], []
    for record, place in _records(p, _text_of(p)):
        if not isinstance(record, dict):
            raise DataError(f"{place}: a JSON {type(record).__name__}, expected an object with keys "
                            f"'{text_key}' and '{spans_key}'.")
        for key in (text_key, spans_key):
            if key not in record:
                raise DataError(f"{place}: no key '{key}' (keys found: {', '.join(map(str, record)) or 'none'}); "
                                f"expected '{text_key}' and '{spans_key}'.")
        spans = _span_list(record[spans_key], spans_key, place)
        sentence, sentence_tags = spans_to_tags(record[text_key], spans, place)
        words.append(sentence)
        tags.append(sentence_tags)
        where.append(place)
    if not words:
        raise DataError(f"{p}: the file has no records.")
    return token_data(words, tags, name=p.name, source=str(p), label_names=names, scheme="iob2", where=where)


# ---------------------------------------------------------------- Hugging Face


def _classlabel_names(feature: Any) -> list[str] | None:
    """The names of a ``Sequence(ClassLabel)`` (or ``[ClassLabel]``) feature, else ``None``."""
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names is not None else None


def from_hf_token_dataset(ds: Any, *, tokens_column: str = "tokens", tags_column: str | None = "ner_tags",
                          label_names: Sequence[str] | None = None, scheme: str = "auto") -> TaskData:
    """A ``datasets.Dataset`` (one split) with a column of word lists and a column of their tags.

    Tags are strings, or ints: named by the column's ``Sequence(ClassLabel)``
    feature (CoNLL-2003, WikiANN), or else by ``label_names`` (int ``k`` is
    ``label_names[k]``). The tag set is ordered as for every token adapter (``O``
    first, then by type), whatever the ClassLabel order, unless ``label_names`` is given.

    Args:
        ds: the dataset (already loaded; nothing is downloaded here).
        tokens_column: the column of word lists.
        tags_column: the column of tag lists, or ``None`` for unlabelled data.
        label_names: the tag set to encode with; names int tags that have no ClassLabel names.
        scheme: ``auto``, ``iob2``, ``bilou`` or ``iob1`` (converted to IOB2).

    Raises:
        DataError: a missing column (the columns present are listed), a row whose tokens are not a list of
            strings, int tags without names, a tag index out of range, a bad tag (row and word).
    """
    if not hasattr(ds, "features") or not hasattr(ds, "column_names"):
        raise DataError(f"from_hf_token_dataset expects a datasets.Dataset (one split), got {type(ds).__name__}.")
    name = (getattr(ds, "info", None) and ds.info.dataset_name) or "hf-dataset"
    origin = f"Hugging Face dataset '{name}'"
    _check_scheme(scheme, origin)
    for col in [tokens_column] + ([tags_column] if tags_column is not None else []):
        if col not in ds.column_names:
            raise DataError(f"{origin}: no column '{col}'. Columns present: {', '.join(ds.column_names)}.")
    names = _canonical_names(label_names, origin)
    where = [f"{origin}, row {i}" for i in range(len(ds))]
    words = []
    for i, row in enumerate(ds[tokens_column]):
        if not isinstance(row, (list, tuple)) or not all(isinstance(w, str) for w in row):
            raise DataError(f"{where[i]}: column '{tokens_column}' must hold a list of words (strings); got "
                            f"{row!r:.60}.")
        words.append(list(row))
    if tags_column is None:
        return token_data(words, None, name=name, source=origin, label_names=names, where=where)
    tag_names = _classlabel_names(ds.features[tags_column])
    by_index = tag_names if tag_names is not None else (list(label_names) if label_names is not None else None)
    tags = []
    for i, row in enumerate(ds[tags_column]):
        if not isinstance(row, (list, tuple)):
            raise DataError(f"{where[i]}: column '{tags_column}' must hold a list of tags; got {row!r:.60}.")
        out = []
        for j, tag in enumerate(row):
            if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool):
                if by_index is None:
                    raise DataError(f"{where[i]}, word {j + 1}: tag {tag} is an integer but column '{tags_column}' "
                                    f"has no ClassLabel names; pass label_names=[...] (index k names tag k).")
                if not 0 <= tag < len(by_index):
                    raise DataError(f"{where[i]}, word {j + 1}: tag index {tag} is missing or outside "
                                    f"0..{len(by_index) - 1} ({', '.join(by_index)}).")
                tag = by_index[tag]
            out.append(tag)
        tags.append(out)
    return token_data(words, tags, name=name, source=origin, label_names=names, scheme=scheme, where=where)


# ---------------------------------------------------------------- routing and alignment


def read_token_file(path: str | os.PathLike, *, task: str | None = TASK, text_column: str | None = None,
                    label_column: str | None = None, feature_columns: Sequence[str] | None = None,
                    sensitive_column: str | None = None, label_names: Sequence[str] | None = None) -> TaskData:
    """A token-classification file by its suffix: CoNLL (``.conll .iob .bio .txt``) or JSONL spans (``.jsonl .json``).

    ``text_column`` and ``label_column`` name the JSONL keys of the text and the
    spans (``label_column="label"``, ``resolve_data``'s default, means the default
    ``spans``); CoNLL files have no named columns.

    Raises:
        DataError: a folder, an unsupported suffix, or a CoNLL file read for another task.
        ConfigError: ``feature_columns`` or a ``sensitive_column`` (token data has neither).
    """
    p = Path(path)
    suffix = _suffix(p)
    if task not in (None, TASK):
        raise DataError(f"{p} is a {suffix} file, which holds token-classification data (a tag per word); "
                        f"got task={task!r}. Pass task='{TASK}'.")
    if p.is_dir():
        raise DataError(f"{p} is a folder; {TASK} reads a file: CoNLL ({', '.join(CONLL_SUFFIXES)}, .txt) "
                        f"or JSONL spans (.jsonl, .json).")
    given = [k for k, v in (("feature_columns", feature_columns), ("sensitive_column", sensitive_column)) if v]
    if given:
        raise ConfigError(f"{p}: {' and '.join(given)} do not apply to {TASK} data (words and their tags).")
    if suffix in CONLL_SUFFIXES + (".txt",):
        return read_conll(p, label_names=label_names)
    if suffix in (".jsonl", ".json"):
        keys = {"text_key": text_column} if text_column else {}
        if label_column not in (None, "label"):
            keys["spans_key"] = label_column
        return read_span_jsonl(p, label_names=label_names, **keys)
    raise DataError(f"{p}: unsupported {TASK} format '{suffix}'. Supported: "
                    f"{', '.join(TOKEN_SUFFIXES)} (optionally .gz).")
