"""Tag schemes of token classification: IOB2 (BIO) and BILOU (BIOES), words with character offsets.

Pure functions on strings, shared by the task (decoding entities), the data
adapters (checking files, turning character spans into word tags) and the
built-in corpora:

* :func:`split_words`: text -> words with their character offsets (the word
  splitter used wherever raw text meets word-level tags);
* :func:`check_tags`: validate one sentence's tags, naming the sentence and tag;
  an ``I-`` tag without its ``B-`` is refused in IOB2, and IOB1 files (where an
  entity may start with ``I-``) are converted with ``scheme="iob1"``;
* :func:`tags_to_entities`: tags -> ``(type, first_word, end_word)`` spans,
  leniently (a stray ``I-X`` starts an entity, as conlleval reads it), which is
  what a model's predictions need.

Example:
    >>> [w for w, _, _ in split_words("Ada Lovelace paid $3.50.")]
    ['Ada', 'Lovelace', 'paid', '$', '3.50', '.']
    >>> tags_to_entities(["B-PER", "I-PER", "O", "U-LOC"])
    [('PER', 0, 2), ('LOC', 3, 4)]
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from transferkit.errors import DataError

#: Accepted values of the ``scheme`` option: ``auto`` tells IOB2 from BILOU by the prefixes present.
SCHEMES = ("auto", "iob2", "bilou", "iob1")
_PREFIXES = {"B", "I", "L", "U", "E", "S"}
#: BIOES spellings of BILOU's last and unit tags.
_BIOES = {"E": "L", "S": "U"}
_TAG = re.compile(r"^([A-Z])-(.+)$")
# a word: letters/digits joined by inner dots, commas, apostrophes, hyphens, @ (3.50, e-mail, o'neil, a@b.org);
# any other non-space character stands alone
_WORD = re.compile(r"\w+(?:[.,'’@+\-/]\w+)*|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for each word of ``text``; ``text[start:end] == word``."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def parse_tag(tag: str) -> tuple[str, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", None)``; BIOES ``E``/``S`` read as ``L``/``U``."""
    if tag == "O":
        return "O", None
    m = _TAG.match(tag)
    if not m or m.group(1) not in _PREFIXES:
        raise ValueError(tag)
    return _BIOES.get(m.group(1), m.group(1)), m.group(2)


def detect_scheme(tags: Sequence[str]) -> str:
    """``"bilou"`` when any tag has an L/U/E/S prefix, else ``"iob2"``."""
    return "bilou" if any(t != "O" and t[:1] in "LUES" and t[1:2] == "-" for t in tags) else "iob2"


def check_tags(tags: Sequence[str], scheme: str, where: str) -> list[str]:
    """The sentence's tags, validated and normalised (BIOES written as BILOU, IOB1 converted to IOB2).

    Raises:
        DataError: an unknown tag (naming it and the accepted forms), an ``I-``/``L-``
        tag that does not continue an entity of its type, a ``B-`` entity left open
        in BILOU; ``where`` names the sentence.
    """
    if scheme not in SCHEMES:
        raise DataError(f"{where}: unknown tag scheme '{scheme}'. Available: {', '.join(SCHEMES)}.")
    out: list[str] = []
    open_type: str | None = None  # the entity the previous tag leaves open
    for i, tag in enumerate(tags):
        try:
            prefix, kind = parse_tag(str(tag))
        except ValueError:
            raise DataError(f"{where}, word {i + 1}: tag {str(tag)!r:.40} is not a tag of IOB2 (B-X, I-X, O) or "
                            f"BILOU/BIOES (B-, I-, L-/E-, U-/S-, O).") from None
        if scheme in ("iob2", "iob1") and prefix in "LU":
            raise DataError(f"{where}, word {i + 1}: tag {tag!r} is BILOU but the scheme is {scheme}; "
                            f"use scheme='bilou' or 'auto'.")
        if prefix in "IL" and open_type != kind:
            if scheme == "iob1" and prefix == "I":
                prefix = "B"
            else:
                after = f"after {out[-1]!r}" if out else "at the start of the sentence"
                raise DataError(f"{where}, word {i + 1}: {tag!r} {after} continues no {kind} entity "
                                f"(an I- tag needs a B- of its type before it). If the file is IOB1, pass "
                                f"scheme='iob1' to convert it to IOB2.")
        if scheme == "bilou" and open_type is not None and prefix not in "IL":
            raise DataError(f"{where}, word {i}: the {open_type} entity begun with B- is not closed with L-/E- "
                            f"before {tag!r}.")
        out.append("O" if prefix == "O" else f"{prefix}-{kind}")
        open_type = kind if prefix in "BI" else None
    if scheme == "bilou" and open_type is not None:
        raise DataError(f"{where}: the {open_type} entity at the end of the sentence is not closed with L-/E-.")
    return out


def tags_to_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities ``(type, first word, end word exclusive)`` of a tag sequence, read leniently.

    A ``B-``/``U-`` tag, or an ``I-``/``L-`` of another type than the open entity,
    starts an entity; ``U-`` and ``L-`` close it; ``O`` closes it. Unknown tags count as ``O``.
    """
    entities: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        try:
            prefix, typ = parse_tag(tag)
        except ValueError:
            prefix, typ = "O", None
        if kind is not None and (prefix in ("O", "B", "U") or typ != kind):
            entities.append((kind, start, i))
            kind = None
        if prefix != "O" and kind is None:
            kind, start = typ, i
        if prefix in ("L", "U") and kind is not None:
            entities.append((kind, start, i + 1))
            kind = None
    return entities


def entity_types(label_names: Sequence[str]) -> list[str]:
    """The sorted entity types named by a tag set."""
    return sorted({parse_tag(t)[1] for t in label_names if t != "O"})


def complete_tags(tags: Sequence[str] | set, scheme: str) -> list[str]:
    """Every tag of ``scheme`` (``iob2``/``iob1``: B, I; ``bilou``: B, I, L, U) for each entity type in ``tags``,
    in :func:`tag_order`."""
    prefixes = "BILU" if scheme == "bilou" else "BI"
    return tag_order([f"{p}-{kind}" for kind in entity_types(list(tags)) for p in prefixes])


def tag_order(tags: Sequence[str]) -> list[str]:
    """A tag set in its canonical order: ``O`` first, then by type, ``B I L U`` within a type."""
    rank = {"B": 0, "I": 1, "L": 2, "U": 3}

    def key(tag: str):
        prefix, kind = parse_tag(tag)
        return (kind is not None, kind or "", rank.get(prefix, 9))

    return sorted(set(tags) | {"O"}, key=key)
