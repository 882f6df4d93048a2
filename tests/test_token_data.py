"""Tests of the token-classification readers: CoNLL files, JSONL spans, HF token columns, resolve_data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from transferkit.data import resolve_data
from transferkit.data.adapters import from_hf_token_dataset, read_conll, read_span_jsonl
from transferkit.data.adapters_tokens import align_token_labels
from transferkit.errors import DataError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _tags(data, i):
    return [data.label_names[k] for k in data.targets[i]]


# ---------------------------------------------------------------- CoNLL


def test_conll_round_trip_skips_docstart(tmp_path):
    data = read_conll(_write(tmp_path / "train.conll", CONLL))
    assert data.task == "token-classification" and data.modality == "text"
    assert data.items == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert data.label_names == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert _tags(data, 0) == ["B-ORG", "O", "B-MISC", "O"]
    assert _tags(data, 1) == ["B-PER", "I-PER"]
    assert data.targets[1].tolist() == [5, 6]
    assert data.name == "train.conll"


def test_conll_tabs_and_given_label_names(tmp_path):
    path = _write(tmp_path / "t.iob", "New York\tB-LOC\nis\tO\n\n\nParis\tB-LOC\n")
    data = read_conll(path, label_names=["O", "B-LOC", "I-LOC"])
    assert data.items == [["New York", "is"], ["Paris"]]  # a tab keeps the space inside the word
    assert data.label_names == ["O", "B-LOC", "I-LOC"]
    assert data.targets[0].tolist() == [1, 0]


def test_conll_bioes_normalised(tmp_path):
    path = _write(tmp_path / "bioes.conll", "Ada B-PER\nLovelace E-PER\nin O\nLondon S-LOC\n")
    data = read_conll(path)
    assert _tags(data, 0) == ["B-PER", "L-PER", "O", "U-LOC"]
    assert data.label_names == ["O", "B-LOC", "I-LOC", "L-LOC", "U-LOC", "B-PER", "I-PER", "L-PER", "U-PER"]


def test_conll_iob1_refused_then_converted(tmp_path):
    path = _write(tmp_path / "iob1.conll", "x O\n\nthe O\nEU I-ORG\nand O\nUN I-ORG\nI-ORG I-ORG\n")
    with pytest.raises(DataError, match=r"iob1\.conll, sentence 2 \(line 3\), word 2: 'I-ORG'.*scheme='iob1'"):
        read_conll(path)
    data = read_conll(path, scheme="iob1")
    assert _tags(data, 1) == ["O", "B-ORG", "O", "B-ORG", "I-ORG"]


def test_conll_i_without_b_names_sentence_and_line(tmp_path):
    text = "A B-PER\nB I-PER\n\nC O\nD O\n\n-DOCSTART- O\n\nE O\nF I-LOC\n"
    path = _write(tmp_path / "bad.conll", text)
    with pytest.raises(DataError) as err:
        read_conll(path)
    msg = str(err.value)
    assert f"{path}, sentence 3 (line 9), word 2" in msg and "'I-LOC' after 'O' continues no LOC entity" in msg


def test_conll_one_column_line(tmp_path):
    path = _write(tmp_path / "one.conll", "A B-PER\nB\nC O\n")
    with pytest.raises(DataError, match=r"one\.conll: line 2 has one column \('B'\)"):
        read_conll(path)


def test_conll_not_utf8(tmp_path):
    path = tmp_path / "latin.conll"
    path.write_bytes("A O\n".encode() + "Caf\xe9 O\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.conll: line 2, column 4 is not valid UTF-8 \(byte 0xe9\)"):
        read_conll(path)


def test_conll_empty_file_and_bad_tag(tmp_path):
    with pytest.raises(DataError, match=r"empty\.conll: the file has no sentences"):
        read_conll(_write(tmp_path / "empty.conll", "\n-DOCSTART- O\n\n"))
    with pytest.raises(DataError, match=r"sentence 1 \(line 1\), word 2: tag 'PER' is not a tag"):
        read_conll(_write(tmp_path / "tag.conll", "A O\nB PER\n"))
    with pytest.raises(DataError, match="unknown tag scheme 'bio'.*auto, iob2, bilou, iob1"):
        read_conll(tmp_path / "tag.conll", scheme="bio")


# ---------------------------------------------------------------- JSONL spans


def _jsonl(path, *records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_span_jsonl_reads_lists_and_dicts(tmp_path):
    path = _jsonl(tmp_path / "spans.jsonl",
                  {"text": "Ada Lovelace lives in Paris.", "spans": [[0, 12, "PER"], [22, 27, "LOC"]]},
                  {"text": "Nothing here", "spans": []},
                  {"text": "Bob met Ann", "spans": [{"start": 8, "end": 11, "label": "PER", "token_start": 2}]})
    data = read_span_jsonl(path)
    assert data.items[0] == ["Ada", "Lovelace", "lives", "in", "Paris", "."]
    assert _tags(data, 0) == ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]
    assert _tags(data, 1) == ["O", "O"]
    assert _tags(data, 2) == ["O", "O", "B-PER"]
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.mark.parametrize("record, message", [
    ({"text": "Ada Lovelace", "spans": [[0, 12, "PER"], [4, 12, "PER"]]}, r"line 2, span 2: \[4, 12\) PER overlaps"),
    ({"text": "Ada", "spans": [[0, 9, "PER"]]}, r"line 2, span 1: \[0, 9\) is empty or outside the text of 3"),
    ({"text": "Lovelace", "spans": [[0, 4, "PER"]]}, r"line 2, span 1: \[0, 4\) 'Love' does not start and end on "
                                                     r"word boundaries"),
    ('{"text": "Ada", "spans": [}', r"line 2: not valid JSON"),
    ({"text": "Ada", "entities": []}, r"line 2: no key 'spans' \(keys found: text, entities\)"),
    ({"text": "Ada", "spans": "PER"}, r"line 2: 'spans' must be a list"),
    ({"text": "Ada", "spans": [{"start": 0, "label": "PER"}]},
     r"line 2, span 1: no key 'end'.*keys found: start, label"),
])
def test_span_jsonl_errors_name_the_line(tmp_path, record, message):
    path = _jsonl(tmp_path / "bad.jsonl", {"text": "fine", "spans": []}, record)
    with pytest.raises(DataError, match=message) as err:
        read_span_jsonl(path)
    assert str(err.value).startswith(str(path))


def test_span_jsonl_custom_keys(tmp_path):
    path = _jsonl(tmp_path / "k.jsonl", {"sentence": "Ann left", "ents": [[0, 3, "PER"]]})
    data = read_span_jsonl(path, text_key="sentence", spans_key="ents")
    assert _tags(data, 0) == ["B-PER", "O"]


# ---------------------------------------------------------------- Hugging Face


def _hf(tags, names=("O", "B-PER", "I-PER", "B-LOC", "I-LOC")):
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=list(names)))})
    return Dataset.from_dict({"tokens": [["Ada", "Lovelace", "visits", "Rome"], ["Hi"]], "ner_tags": tags},
                             features=features)


def test_hf_classlabel_ints_become_tags():
    data = from_hf_token_dataset(_hf([[1, 2, 0, 3], [0]]))
    assert data.items == [["Ada", "Lovelace", "visits", "Rome"], ["Hi"]]
    assert _tags(data, 0) == ["B-PER", "I-PER", "O", "B-LOC"]
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # canonical order, not the ClassLabel order


def test_hf_ints_without_names_and_missing_column():
    from datasets import Dataset

    ds = Dataset.from_dict({"tokens": [["Ada", "x"]], "tags": [[1, 0]]})
    with pytest.raises(DataError, match=r"row 0, word 1: tag 1 is an integer but column 'tags' has no ClassLabel"):
        from_hf_token_dataset(ds, tags_column="tags")
    data = from_hf_token_dataset(ds, tags_column="tags", label_names=["O", "B-PER"])
    assert _tags(data, 0) == ["B-PER", "O"] and data.label_names == ["O", "B-PER"]
    with pytest.raises(DataError, match="no column 'ner_tags'. Columns present: tokens, tags"):
        from_hf_token_dataset(ds)


def test_hf_bad_tag_names_the_row():
    with pytest.raises(DataError, match=r"row 0, word 2: 'I-LOC' after 'B-PER' continues no LOC entity"):
        from_hf_token_dataset(_hf([[1, 4, 0, 3], [0]]))


# ---------------------------------------------------------------- resolve_data


def test_resolve_conll_and_jsonl_with_test_alignment(tmp_path):
    train_path = _write(tmp_path / "train.conll", CONLL)
    test_path = _write(tmp_path / "test.conll", "Bob B-PER\nsaw O\nEU B-ORG\n")
    train, test = resolve_data(train_path, test_data=test_path)  # the suffix says token data
    assert test.label_names == train.label_names == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert test.targets[0].tolist() == [5, 0, 3]  # by its own tag set (O, B-ORG, I-ORG, B-PER, I-PER): [3, 0, 1]
    spans = _jsonl(tmp_path / "test.jsonl", {"text": "EU and Bob", "spans": [[0, 2, "ORG"], [7, 10, "PER"]]})
    train2, test2 = resolve_data(str(train_path), test_data=str(spans), task="token-classification")
    assert test2.items == [["EU", "and", "Bob"]] and test2.targets[0].tolist() == [3, 0, 5]
    assert train2.label_names == test2.label_names


def test_resolve_jsonl_needs_the_task_and_routes_keys(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", {"sentence": "Ann left", "ents": [[0, 3, "PER"]]})
    train, test = resolve_data(path, task="token-classification", text_column="sentence", label_column="ents")
    assert test is None and train.task == "token-classification" and _tags(train, 0) == ["B-PER", "O"]


def test_resolve_refuses_test_tag_unseen_in_training(tmp_path):
    train_path = _write(tmp_path / "train.conll", CONLL)
    test_path = _write(tmp_path / "test.conll", "Rome B-LOC\n\nx O\nin O\nParis B-LOC\n")
    with pytest.raises(DataError, match=r"test\.conll' has tag\(s\) the training data 'train\.conll' never had: "
                                        r"'B-LOC' \(2 words, first in sentence 1\)\. Training tags: O, B-MISC"):
        resolve_data(train_path, test_data=test_path, task="token-classification")


def test_resolve_conll_with_another_task_is_refused(tmp_path):
    path = _write(tmp_path / "train.conll", CONLL)
    with pytest.raises(DataError, match="holds token-classification data.*got task='classification'"):
        resolve_data(path, task="classification")


def test_resolve_hf_token_dataset_and_mismatched_tasks():
    train, test = resolve_data(_hf([[1, 2, 0, 3], [0]]), test_data=_hf([[0, 0, 0, 1], [0]]),
                               task="token-classification")
    assert test.label_names == train.label_names and test.targets[0].tolist() == [0, 0, 0, 3]
    from transferkit.data import from_arrays

    other = from_arrays(["a", "b"], ["x", "y"])
    with pytest.raises(DataError, match="is token-classification but evaluation data .* is classification"):
        align_token_labels(train, other)
    assert np.array_equal(align_token_labels(train, train).targets[0], train.targets[0])


def test_jsonl_of_text_and_spans_is_token_data_without_being_told(tmp_path):
    spans = _jsonl(tmp_path / "spans.jsonl", {"text": "Ada lives in Paris.", "spans": [[0, 3, "PER"], [13, 18, "LOC"]]},
                   {"text": "Bob too.", "spans": [[0, 3, "PER"]]})
    train, _ = resolve_data(str(spans))
    assert train.task == "token-classification" and train.items[0] == ["Ada", "lives", "in", "Paris", "."]
    labels = _jsonl(tmp_path / "labels.jsonl", {"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"})
    assert resolve_data(str(labels))[0].task == "classification"  # a table of texts and labels stays one
