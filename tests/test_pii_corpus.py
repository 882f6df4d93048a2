"""Tests of the built-in token-classification corpora: the synthetic PII corpus and the hironsan Japanese NER set."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from transferkit.data import list_datasets, load_dataset
from transferkit.data.pii_corpus import (ENTITY_TYPES, TEMPLATES, build_pii, fill, main, pii_sentences,
                                         template_split, template_types)
from transferkit.data.token_spans import spans_to_tags
from transferkit.errors import DataError
from transferkit.tasks.token_schemes import split_words, tags_to_entities

N_TRAIN, N_TEST = 300, 120


@pytest.fixture(scope="module")
def records():
    return pii_sentences(N_TRAIN, N_TEST, seed=0)


@pytest.fixture(scope="module")
def splits():
    return build_pii(N_TRAIN, N_TEST, seed=0)


def _words_and_tags(data, i):
    return data.items[i], [data.label_names[t] for t in data.targets[i]]


# ---------------------------------------------------------------- PII: generation


def test_pii_is_deterministic_for_a_seed(records, splits):
    assert pii_sentences(N_TRAIN, N_TEST, seed=0) == records
    train, test = build_pii(N_TRAIN, N_TEST, seed=0)
    assert train.fingerprint() == splits[0].fingerprint() and test.fingerprint() == splits[1].fingerprint()
    other = pii_sentences(N_TRAIN, N_TEST, seed=1)
    assert [r["text"] for r in other[0]] != [r["text"] for r in records[0]]


def test_pii_counts_and_tag_set(records, splits):
    train, test = splits
    assert (len(records[0]), len(records[1])) == (N_TRAIN, N_TEST)
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert train.task == test.task == "token-classification" and train.modality == "text"
    assert train.label_names == test.label_names
    assert train.label_names[0] == "O" and len(train.label_names) == 1 + 2 * len(ENTITY_TYPES)
    assert {t[2:] for t in train.label_names[1:]} == set(ENTITY_TYPES)
    assert "Faker" in train.source and train.name == "pii-ner-train" and test.name == "pii-ner-test"


def test_pii_template_split_is_disjoint_and_covers_every_type():
    train_ids, test_ids = template_split()
    assert len(TEMPLATES) >= 40 and len(set(t for _, t in TEMPLATES)) == len(TEMPLATES)
    assert not set(train_ids) & set(test_ids) and sorted(train_ids + test_ids) == list(range(len(TEMPLATES)))
    assert len(test_ids) == 17  # 30 % within each genre
    for ids, least in ((train_ids, 5), (test_ids, 3)):
        per_type = Counter(k for i in ids for k in template_types(TEMPLATES[i][1]))
        assert all(per_type[k] >= least for k in ENTITY_TYPES), per_type
        assert any(not template_types(TEMPLATES[i][1]) for i in ids)  # sentences without entities in both
        assert {TEMPLATES[i][0] for i in ids} == {g for g, _ in TEMPLATES}  # every genre in both


def test_pii_records_use_their_split_templates_and_mix_entity_counts(records):
    train_ids, test_ids = template_split()
    train, test = records
    assert {r["template"] for r in train} <= set(train_ids)
    assert {r["template"] for r in test} <= set(test_ids)
    for split in records:
        per_sentence = Counter(len(r["spans"]) for r in split)
        assert per_sentence[0] > 0 and per_sentence[2] + per_sentence[3] + per_sentence[4] > len(split) // 2
        assert max(per_sentence) <= 4


def test_pii_test_entity_strings_are_unseen_in_training(records):
    def strings(split):
        return {r["text"][s:e] for r in split for s, e, _ in r["spans"]}

    train, test = records
    assert len(strings(test)) > 200
    assert not strings(train) & strings(test)
    dates = [r["text"][s:e] for r in test for s, e, k in r["spans"] if k == "DATE"]
    assert dates and all(any(str(y) in d for y in range(2023, 2027)) for d in dates)


def test_pii_every_type_in_both_splits(splits):
    for data in splits:
        counts = Counter(k for i in range(len(data)) for k, _, _ in tags_to_entities(_words_and_tags(data, i)[1]))
        assert set(counts) == set(ENTITY_TYPES) and min(counts.values()) >= 5, (data.name, counts)


def test_pii_every_span_decodes_to_its_value(records, splits):
    for recs, data in zip(records, splits):
        for i, rec in enumerate(recs):
            text, spans = rec["text"], rec["spans"]
            words, tags = _words_and_tags(data, i)
            assert words == [w for w, _, _ in split_words(text)]
            entities = tags_to_entities(tags)
            assert len(entities) == len(spans), text
            for (kind, a, b), (start, end, label) in zip(entities, spans):
                assert kind == label
                assert words[a:b] == [w for w, _, _ in split_words(text[start:end])], (text, text[start:end])


def test_pii_tricky_values_fall_on_word_boundaries():
    text, spans = fill("Paid {MONEY} to {PERSON} ({EMAIL}), call {PHONE} by {DATE}.",
                       {"MONEY": "$1,234.50", "PERSON": "Siobhan O'Neill-Byrne", "EMAIL": "s.o-b@example.co.uk",
                        "PHONE": "+44(0)20 7946 0958", "DATE": "March 3, 2024"}.__getitem__)
    words, tags = spans_to_tags(text, spans, "tricky")
    got = {k: " ".join(words[a:b]) for k, a, b in tags_to_entities(tags)}
    assert got == {"MONEY": "$ 1,234.50", "PERSON": "Siobhan O'Neill-Byrne", "EMAIL": "s.o-b@example.co.uk",
                   "PHONE": "+ 44 ( 0 ) 20 7946 0958", "DATE": "March 3 , 2024"}


def test_pii_refuses_negative_counts():
    with pytest.raises(DataError, match="n_train=-1"):
        pii_sentences(-1, 5)


def test_pii_jsonl_cli_writes_records_that_spans_to_tags_accepts(tmp_path, capsys):
    out = tmp_path / "pii.jsonl"
    main(["--out", str(out), "--n-train", "30", "--n-test", "12", "--seed", "2"])
    assert "42 sentences" in capsys.readouterr().out
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 42
    rows = [json.loads(line) for line in lines]
    assert Counter(r["split"] for r in rows) == {"train": 30, "test": 12}
    for k, row in enumerate(rows):
        words, tags = spans_to_tags(row["text"], row["spans"], f"line {k + 1}")
        assert len(words) == len(tags) and sum(t.startswith("B-") for t in tags) == len(row["spans"])
    main(["--out", str(out), "--n-test", "7", "--split", "test"])
    assert len(out.read_text(encoding="utf-8").splitlines()) == 7


# ---------------------------------------------------------------- registry


def test_token_corpora_are_registered_with_provenance():
    entries = {d["name"]: d for d in list_datasets()}
    assert entries["pii-ner"]["task"] == entries["hironsan-ner"]["task"] == "token-classification"
    assert entries["pii-ner"]["licence"] == "synthetic (Faker, MIT)" and entries["hironsan-ner"]["licence"] == "MIT"
    assert entries["pii-ner"]["options"] == ["n_train", "n_test", "seed"]
    assert entries["hironsan-ner"]["options"] == ["seed"]


def test_pii_ner_loads_through_the_registry():
    train, test = load_dataset("pii-ner", n_train=40, n_test=20, seed=3)
    assert (len(train), len(test)) == (40, 20) and train.label_names == test.label_names


# ---------------------------------------------------------------- hironsan


needs_hironsan = pytest.mark.skipif(importlib.util.find_spec("hironsan") is None,
                                    reason="hironsancorpus not installed")


@needs_hironsan
def test_hironsan_loads_500_sentences_with_its_tag_types():
    train, test = load_dataset("hironsan-ner")
    assert (len(train), len(test)) == (400, 100)
    assert train.label_names == test.label_names
    types = {t[2:] for t in train.label_names if t != "O"}
    assert types == {"ART", "DAT", "LOC", "MON", "ORG", "PER", "PSN", "TIM"}
    assert sum(len(w) for w in train.items) + sum(len(w) for w in test.items) == 15520
    words, tags = train.items[0], [train.label_names[t] for t in train.targets[0]]
    assert len(words) == len(tags) and all(isinstance(w, str) and w for w in words)
    counts = Counter(k for d in (train, test) for i in range(len(d))
                     for k, _, _ in tags_to_entities([d.label_names[t] for t in d.targets[i]]))
    assert counts == {"LOC": 398, "DAT": 272, "ORG": 251, "PSN": 162, "ART": 122, "TIM": 57, "PER": 13, "MON": 9}


@needs_hironsan
def test_hironsan_split_is_seeded_and_disjoint():
    a_train, a_test = load_dataset("hironsan-ner", seed=0)
    b_train, b_test = load_dataset("hironsan-ner", seed=0)
    assert a_test.fingerprint() == b_test.fingerprint()
    c_train, c_test = load_dataset("hironsan-ner", seed=1)
    assert c_test.fingerprint() != a_test.fingerprint()
    joined = lambda d: {"".join(w) for w in d.items}  # noqa: E731
    assert len(joined(a_train) | joined(a_test)) == 499  # the corpus holds one sentence twice
    assert a_test.origin is not None and not set(a_test.origin[1]) & set(a_train.origin[1])
