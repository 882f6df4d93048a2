"""The ``crf`` strategy: a linear-chain CRF on word features, the no-transfer baseline of token classification.

Trained on a small synthetic tagged set (sentences from templates, people and cities
from fixed lists) and tested on sentences whose names and cities it never saw.
"""
from __future__ import annotations

import copy
import random
import time

import numpy as np
import pytest

pytest.importorskip("sklearn_crfsuite")
pytest.importorskip("seqeval")

from transferkit.data import from_arrays  # noqa: E402
from transferkit.data.token_spans import token_data  # noqa: E402
from transferkit.errors import BundleError, ConfigError  # noqa: E402
from transferkit.export.bundle import load, save_bundle  # noqa: E402
from transferkit.strategies import STRATEGIES, make_strategy  # noqa: E402
from transferkit.strategies.base import predict_outputs  # noqa: E402
from transferkit.backbones.crf_model import (CRF_FILE, CRF_INFO_FILE, CrfBackbone, _sequences,  # noqa: E402
                                             check_crfsuite_model, load_crf, save_crf, sentence_features)
from transferkit.tasks import get_task  # noqa: E402

FIRST = ["Anna", "Boris", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
LAST = ["Smith", "Okafor", "Novak", "Tanaka", "Garcia", "Muller", "Rossi", "Kowalski"]
CITY = ["Paris", "Berlin", "Lagos", "Osaka", "Lima", "Oslo", "Quito", "Hanoi", "New York", "San Jose"]
# never in training: the test measures what a NER baseline is for, tagging unseen names
HELD_FIRST = ["Zofia", "Yusuf", "Xavier", "Wanda", "Vikram", "Ursula"]
HELD_LAST = ["Lindqvist", "Mbeki", "Haddad", "Ferreira"]
HELD_CITY = ["Nairobi", "Krakow", "Santiago", "Kyoto", "Buenos Aires", "Perth"]
TEMPLATES = ["{P} lives in {C} .", "Yesterday {P} flew to {C} with a friend .",
             "{P} said the weather in {C} was nice .",
             "In {C} , {P} met the mayor .", "The report from {C} was written by {P} .",
             "We saw {P} near the old station .", "Flights to {C} were cancelled on Monday .",
             "{P} and {P} opened a bakery in {C} ."]


def _tagged(n: int, seed: int, first, last, city) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    words, tags = [], []
    for _ in range(n):
        ws, ts = [], []
        for tok in rng.choice(TEMPLATES).split():
            if tok == "{P}":
                name = [rng.choice(first)] + ([rng.choice(last)] if rng.random() < 0.5 else [])
                ws += name
                ts += ["B-PER"] + ["I-PER"] * (len(name) - 1)
            elif tok == "{C}":
                place = rng.choice(city).split()
                ws += place
                ts += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
            else:
                ws.append(tok)
                ts.append("O")
        words.append(ws)
        tags.append(ts)
    return words, tags


@pytest.fixture(scope="module")
def splits():
    train = token_data(*_tagged(200, 0, FIRST, LAST, CITY), name="train")
    val = token_data(*_tagged(40, 1, FIRST, LAST, CITY), name="val", label_names=train.label_names)
    test = token_data(*_tagged(80, 2, HELD_FIRST, HELD_LAST, HELD_CITY), name="test", label_names=train.label_names)
    return train, val, test


@pytest.fixture(scope="module")
def trained(splits):
    train, val, _ = splits
    start = time.perf_counter()
    model, history = make_strategy("crf").fit(None, train, val, None)
    return model, history, time.perf_counter() - start


def test_registered_as_a_scratch_baseline_for_token_classification():
    cls = STRATEGIES.get("crf")
    assert cls.tags()["tasks"] == ["token-classification"] and cls.tags()["kind"] == "scratch"
    assert make_strategy("crf").needs_backbone(None) is False


def test_features_are_the_conll_set():
    f = sentence_features(["Ada", "paid", "$3.50", "to", "bob@x.org"])
    assert f[0]["lower"] == "ada" and f[0]["shape"] == "Xxx" and f[0]["title"] == 1.0 and f[0]["BOS"] == 1.0
    assert f[0]["+1:lower"] == "paid" and f[0]["+2:shape"] == "$d.dd" and "-1:lower" not in f[0]
    assert f[2]["has_digit"] == 1.0 and f[2]["has_punct"] == 1.0 and "digit" not in f[2]
    assert f[2]["prefix2"] == "$3" and f[2]["suffix3"] == ".50" and f[2]["length"] == "5-6"
    assert f[2]["-1:lower"] == "paid" and f[2]["-2:lower"] == "ada" and f[2]["+1:suffix2"] == "to"
    assert f[4]["has_at"] == 1.0 and f[4]["EOS"] == 1.0 and "+1:lower" not in f[4]
    assert f[4]["-2:shape"] == "$d.dd"


def test_tags_unseen_names_with_entity_f1_above_0_8(splits, trained):
    train, _, test = splits
    model, history, seconds = trained
    out = predict_outputs(model, test)
    metrics = get_task("token-classification").metrics(test.targets, out, train.label_names)
    assert metrics["f1"] > 0.8, metrics
    assert metrics["f1_PER"] > 0.8 and metrics["f1_LOC"] > 0.8, metrics
    h = history[0]
    assert h["selected_by"] == "validation" and len(h["grid"]) == 6
    assert (h["c1"], h["c2"]) in {(r["c1"], r["c2"]) for r in h["grid"]}
    assert h["selection_score"] == max(r["f1"] for r in h["grid"]) > 0.8
    assert seconds < 15, f"6 CRF fits on 200 sentences took {seconds:.1f} s"


def test_outputs_are_per_word_marginals_in_label_order(splits, trained):
    import sklearn_crfsuite

    train, _, test = splits
    model, history, _ = trained
    out = predict_outputs(model, test)
    assert out.dtype == object and len(out) == len(test)
    for row, words in zip(out, test.items):
        assert row.shape == (len(words), len(train.label_names)) and row.dtype == np.float32
        np.testing.assert_allclose(row.sum(1), 1.0, atol=1e-5)
        assert (row >= 0).all()
    # the same marginals as sklearn-crfsuite's predict_marginals with the chosen penalties, column by tag name
    ref = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=history[0]["c1"], c2=history[0]["c2"], max_iterations=100,
                               all_possible_transitions=True)
    ref.fit(_sequences(train.items), [[train.label_names[j] for j in r] for r in train.targets])
    expected = ref.predict_marginals(_sequences(test.items[:5]))
    for row, sentence in zip(out[:5], expected):
        want = np.array([[word[t] for t in train.label_names] for word in sentence])
        np.testing.assert_allclose(row, want, atol=1e-6)


def test_a_tag_the_crf_never_saw_gets_probability_zero(splits):
    train, _, _ = splits
    names = train.label_names + ["B-ORG", "I-ORG"]
    data = token_data(train.items[:60], [[train.label_names[j] for j in r] for r in train.targets[:60]],
                      label_names=names)
    model, history = make_strategy("crf", {"c1": 0.1, "c2": 0.1}).fit(None, data, None, None)
    assert history[0]["selected_by"] == "fixed"
    out = predict_outputs(model, data)
    rows = np.concatenate(list(out))
    assert rows.shape[1] == len(names) and np.all(rows[:, -2:] == 0)
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5)


def test_save_crf_and_load_crf_round_trip_without_pickles(splits, trained, tmp_path):
    _, _, test = splits
    model, _, _ = trained
    save_crf(model, tmp_path / "crf")
    assert sorted(p.name for p in (tmp_path / "crf").iterdir()) == sorted([CRF_FILE, CRF_INFO_FILE])
    data = (tmp_path / "crf" / CRF_FILE).read_bytes()
    assert data[:4] == b"lCRF" and data == model.backbone.model_bytes  # crfsuite's own format, not a pickle
    again = load_crf(tmp_path / "crf")
    assert isinstance(again, CrfBackbone) and again.tags == model.backbone.tags
    feats = _sequences(test.items)
    copied = copy.deepcopy(model).backbone  # what a tuner's best-model snapshot does: no pickling either
    for a, b, c in zip(model.backbone.marginals(feats), again.marginals(feats), copied.marginals(feats)):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_a_bundle_stores_the_crf_and_reloads_identical_outputs(splits, trained, tmp_path):
    _, _, test = splits
    model, history, _ = trained
    out = predict_outputs(model, test)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "crf"}, "history": history})
    files = sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert f"backbone/{CRF_FILE}" in files and f"backbone/{CRF_INFO_FILE}" in files and "model.safetensors" in files
    predictor = load(tmp_path / "b")
    again = predictor.outputs(test.items)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    [entities] = predictor.predict(["Yesterday Wanda Haddad flew to Kyoto with a friend."])
    assert [(e["label"], e["text"]) for e in entities] == [("PER", "Wanda Haddad"), ("LOC", "Kyoto")]


def test_a_damaged_model_file_is_refused_before_crfsuite_reads_it(trained, tmp_path):
    model, _, _ = trained
    save_crf(model, tmp_path / "crf")
    path = tmp_path / "crf" / CRF_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(BundleError, match="header records .* bytes but the file has"):
        load_crf(tmp_path / "crf")
    with pytest.raises(BundleError, match="not a crfsuite model"):
        check_crfsuite_model(b"\x80\x04" + data[2:], "x")
    path.write_bytes(data)
    info = tmp_path / "crf" / CRF_INFO_FILE
    info.write_text(info.read_text().replace('"conll-v1"', '"conll-v0"'))
    with pytest.raises(BundleError, match="feature set 'conll-v0'"):
        load_crf(tmp_path / "crf")


def test_refuses_a_task_that_is_not_token_classification():
    data = from_arrays(["good film", "bad film", "great plot", "awful plot"], np.array([1, 0, 1, 0]))
    with pytest.raises(ConfigError, match="Strategy 'crf' supports token-classification tasks; .* is classification"):
        make_strategy("crf").fit(None, data, None, None)


def test_cross_validation_chooses_without_a_validation_split(splits):
    train, _, _ = splits
    small = token_data(train.items[:45], [[train.label_names[j] for j in r] for r in train.targets[:45]])
    _, history = make_strategy("crf", {"max_iterations": 30}).fit(None, small, None, None)
    h = history[0]
    assert h["selected_by"] == "cv-3" and len(h["grid"]) == 6 and h["selection_score"] > 0.8
    assert make_strategy("crf")._search(None, 8_001) == "fixed"  # too many words to cross-validate
    assert make_strategy("crf", {"c2": 0.05})._grid() == [(0.1, 0.05), (0.01, 0.05), (0.5, 0.05)]
    with pytest.raises(ConfigError, match="needs a labelled validation split"):
        make_strategy("crf", {"search": "validation"}).fit(None, small, None, None)
    with pytest.raises(ConfigError, match="'c1' parameter of CrfConfig"):
        make_strategy("crf", {"c1": -1})
