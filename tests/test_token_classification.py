"""token-classification: tag schemes, sub-token alignment, windows for long sentences, entity metrics,
the strategies that train it, and the bundle, ONNX and serving outputs (entities with character offsets)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.data.token_spans import spans_to_tags, token_data
from transferkit.errors import ConfigError, DataError
from transferkit.tasks import get_task
from transferkit.tasks.token_classification import label_positions
from transferkit.tasks.token_schemes import check_tags, split_words, tags_to_entities

TASK = get_task("token-classification")
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
CITIES = ["Paris", "Berlin", "Rome", "Oslo", "Madrid", "Vienna", "Prague", "Lisbon"]
TEMPLATES = [("{p} Smith went to {c} today .", 0, 4), ("yesterday {p} Jones flew from {c} .", 1, 5),
             ("in {c} , {p} Brown met friends .", 3, 1)]


def sentences(n: int, seed: int, people=NAMES, cities=CITIES):
    """Templated sentences with a two-word PER entity and a one-word LOC entity, as words and IOB2 tags."""
    rng = np.random.default_rng(seed)
    words, tags = [], []
    for _ in range(n):
        template, p, c = TEMPLATES[rng.integers(len(TEMPLATES))]
        w = template.format(p=people[rng.integers(len(people))], c=cities[rng.integers(len(cities))]).split()
        t = ["O"] * len(w)
        t[p], t[p + 1], t[c] = "B-PER", "I-PER", "B-LOC"
        words.append(w)
        tags.append(t)
    return words, tags


# -- schemes ------------------------------------------------------------------------------------


def test_schemes_are_checked_and_normalised():
    assert check_tags(["B-PER", "E-PER", "S-LOC", "O"], "bilou", "s1") == ["B-PER", "L-PER", "U-LOC", "O"]
    assert check_tags(["I-PER", "I-PER", "O", "I-LOC"], "iob1", "s1") == ["B-PER", "I-PER", "O", "B-LOC"]
    with pytest.raises(DataError, match=r"s7, word 2: 'I-LOC' after 'B-PER' continues no LOC entity.*iob1"):
        check_tags(["B-PER", "I-LOC"], "iob2", "s7")
    with pytest.raises(DataError, match=r"s7, word 1: tag 'PER' is not a tag of IOB2"):
        check_tags(["PER"], "iob2", "s7")
    with pytest.raises(DataError, match="not closed with L-/E-"):
        check_tags(["B-PER", "O"], "bilou", "s7")
    with pytest.raises(DataError, match="unknown tag scheme 'bioes2'. Available: auto, iob2, bilou, iob1"):
        check_tags(["O"], "bioes2", "s7")


def test_entities_are_read_leniently_from_predictions():
    assert tags_to_entities(["B-PER", "I-PER", "I-LOC", "O", "I-ORG", "B-ORG", "U-X"]) == [
        ("PER", 0, 2), ("LOC", 2, 3), ("ORG", 4, 5), ("ORG", 5, 6), ("X", 6, 7)]


def test_spans_become_word_tags_and_bad_spans_name_the_line():
    text = "Mail ada@example.org or pay $1,250.00 to Ada Lovelace."
    start = text.index("Ada Lovelace")
    words, tags = spans_to_tags(text, [[5, 20, "EMAIL"], [28, 37, "MONEY"], [start, start + 12, "PERSON"]], "line 3")
    assert [w for w, t in zip(words, tags) if t != "O"] == ["ada@example.org", "$", "1,250.00", "Ada", "Lovelace"]
    assert [t for t in tags if t != "O"] == ["B-EMAIL", "B-MONEY", "I-MONEY", "B-PERSON", "I-PERSON"]
    assert all(text[s:e] == w for w, s, e in split_words(text))
    with pytest.raises(DataError, match=r"line 3, span 2: \[3, 8\) PER overlaps \[0, 5\) PER"):
        spans_to_tags("Alice Smith", [[0, 5, "PER"], [3, 8, "PER"]], "line 3")
    with pytest.raises(DataError, match=r"line 3, span 1: \[0, 3\) 'Ali' does not start and end on word boundaries"):
        spans_to_tags("Alice Smith", [[0, 3, "PER"]], "line 3")
    with pytest.raises(DataError, match=r"line 3, span 1: \[0, 99\) is empty or outside the text of 11"):
        spans_to_tags("Alice Smith", [[0, 99, "PER"]], "line 3")


def test_token_data_checks_one_tag_per_word_and_completes_the_tag_set():
    data = token_data([["Ada", "ran"]], [["B-PER", "O"]], name="toy")
    assert data.label_names == ["O", "B-PER", "I-PER"]  # I-PER known although no training entity had two words
    with pytest.raises(DataError, match="toy, sentence 2: 2 words but 1 tags"):
        token_data([["a"], ["b", "c"]], [["O"], ["O"]], name="toy")
    with pytest.raises(DataError, match="toy, sentence 1: tag 'B-LOC' is not in the tag set"):
        token_data([["Paris"]], [["B-LOC"]], name="toy", label_names=["O", "B-PER", "I-PER"])


# -- sub-tokens and windows ---------------------------------------------------------------------


def test_first_subtokens_carry_the_tags_and_long_sentences_are_windowed(tiny_bert):
    from transferkit.backbones import load_backbone

    backbone = load_backbone(f"hf:{tiny_bert}", max_length=10)
    words = ["unbelievably", "long"] + [f"w{i}" for i in range(30)]
    batch = backbone.preprocess([words, ["Ada", "Lovelace"]])
    rows = batch["item_ids"].tolist()
    assert rows.count(0) > 1 and rows.count(1) == 1 and rows == sorted(rows)  # several windows, nothing cut
    assert batch["word_counts"].tolist() == [len(words), 2]
    picked = label_positions(batch["word_ids"], batch["item_ids"])
    read = {(item, w) for _, _, item, w in picked}
    assert read == {(0, w) for w in range(len(words))} | {(1, 0), (1, 1)}  # every word read exactly once
    for r, p, item, w in picked:  # at a word's first sub-token
        assert batch["word_ids"][r, p] == w and (p == 0 or batch["word_ids"][r, p - 1] != w)
    targets = np.empty(2, dtype=object)
    targets[:] = [np.arange(len(words)) % 3, np.array([1, 2])]
    labels = TASK.collate_targets(targets, batch)
    assert (labels != -100).sum() == len(words) + 2
    logits = torch.randn(len(rows), batch["word_ids"].shape[1], 3)
    out = TASK.postprocess(logits, batch)
    assert [o.shape for o in out] == [(len(words), 3), (2, 3)]
    np.testing.assert_allclose([o.sum(1) for o in out][0], 1.0, rtol=1e-5)


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_score_entities_not_words():
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    gold = [np.array([3, 4, 0, 1]), np.array([0, 1, 2])]

    def onehot(idx):
        return np.eye(len(names), dtype=np.float32)[idx]

    perfect = TASK.metrics(gold, [onehot(g) for g in gold], names)
    assert perfect["f1"] == 1.0 and perfect["entities"] == 3 and perfect["f1_PER"] == 1.0
    # one word wrong of seven: word accuracy 6/7, but the two-word LOC entity is lost (and a one-word one found)
    half = TASK.metrics(gold, [onehot(gold[0]), onehot(np.array([0, 1, 0]))], names)
    assert half["word_accuracy"] == pytest.approx(6 / 7)
    assert half["precision"] == pytest.approx(2 / 3) and half["recall"] == pytest.approx(2 / 3)
    assert half["f1_LOC"] == pytest.approx(0.5) and half["f1_PER"] == 1.0
    # the per-sentence counts the transfer verdict resamples give back the same F1
    counts = TASK.item_counts(gold, [onehot(gold[0]), onehot(np.array([0, 1, 0]))], names)
    assert counts.tolist() == [[2, 0, 0], [0, 1, 1]]
    assert TASK.metric_from_counts(counts.sum(0)) == pytest.approx(half["f1"])


def test_scratch_auto_is_the_crf_for_per_word_tags():
    from transferkit.strategies import make_strategy
    from transferkit.workflows.baselines import default_baselines

    data = token_data(*sentences(4, seed=0), name="people")
    assert make_strategy("scratch").variant(data) == "crf"
    assert default_baselines("text", "token-classification") == ["crf"] and default_baselines("text") == ["tfidf"]
    with pytest.raises(ConfigError, match="Scratch variant 'tfidf' does not apply to token-classification data"):
        make_strategy("scratch", {"variant": "tfidf"}).variant(data)


# -- strategies, bundle, ONNX, serving ----------------------------------------------------------


@pytest.fixture(scope="module")
def toy_ner():
    words, tags = sentences(64, seed=0, people=NAMES[:6], cities=CITIES[:5])
    train = token_data(words, tags, name="people")
    words, tags = sentences(24, seed=1, people=NAMES[6:], cities=CITIES[5:])  # unseen names and cities
    return train, token_data(words, tags, name="people-test", label_names=train.label_names)


@pytest.mark.parametrize("strategy", ["finetune", "lora", "linear-probe"])
def test_strategies_learn_entities_of_unseen_names(strategy, toy_ner, minilm_path):
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    train, test = toy_ner
    backbone = load_backbone(f"sentence:{minilm_path}", max_length=24)
    s = make_strategy(strategy)
    model, history = s.fit(backbone, train, None, Trainer(TrainConfig(epochs=4, batch_size=8, progress=False)))
    scores = TASK.metrics(test.targets, s.predict(model, test), test.label_names)
    assert scores["f1"] > 0.8, (scores, history)  # a majority-O tagger scores 0


def test_bundle_onnx_and_serve_answer_entities_with_character_offsets(toy_ner, minilm_path, tmp_path):
    from fastapi.testclient import TestClient

    from transferkit.backbones import load_backbone
    from transferkit.export.bundle import load, save_bundle
    from transferkit.export.onnx_export import export_bundle
    from transferkit.export.onnx_runtime import OnnxPredictor
    from transferkit.export.serve import create_app
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    train, _ = toy_ner
    backbone = load_backbone(f"sentence:{minilm_path}", max_length=12)  # the long text below takes 3+ windows
    model, _ = make_strategy("linear-probe").fit(backbone, train, None, Trainer(TrainConfig(progress=False)))
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "linear-probe"}, "task": "token-classification"})
    predictor = load(tmp_path / "b")
    text = "Grace Smith went to Prague today . Later Heidi Jones flew from Lisbon and Ivan Brown met friends ."
    found = predictor.predict([text, ["Judy", "Smith", "went", "to", "Vienna"]])
    entities = [(e["label"], e["text"]) for e in found[0]]
    assert ("PER", "Grace Smith") in entities and ("LOC", "Lisbon") in entities, found[0]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in found[0])
    assert ("LOC", "Vienna") in [(e["label"], e["text"]) for e in found[1]]

    export_bundle(tmp_path / "b", tmp_path / "onnx")
    onnx = OnnxPredictor(tmp_path / "onnx").predict([text])
    assert [(e["label"], e["start"], e["end"]) for e in onnx[0]] == [(e["label"], e["start"], e["end"]) for e in found[0]]

    client = TestClient(create_app(predictor))
    answer = client.post("/predict", json={"texts": [text]})
    assert answer.status_code == 200
    record = answer.json()["predictions"][0]
    assert [e["text"] for e in record["entities"]] == [e["text"] for e in found[0]]
    assert len(record["tags"]) == len(split_words(text))


def test_strategies_that_read_one_vector_per_item_refuse_token_data(toy_ner):
    from transferkit.strategies import make_strategy

    train, _ = toy_ner
    for name in ("protonet", "dann", "zero-shot"):
        with pytest.raises(ConfigError, match=f"Strategy '{name}' supports .* tasks; 'people' is token-classification"):
            make_strategy(name).check_data(None, train)


# -- the CLI ------------------------------------------------------------------------------------


def _conll(path, words, tags):
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(ws, ts)) for ws, ts in zip(words, tags)) + "\n",
                    encoding="utf-8")
    return path


def test_cli_fits_conll_files_checks_transfer_against_the_crf_and_predicts_entities(tmp_path, minilm_path):
    import json

    from typer.testing import CliRunner

    from transferkit.cli.main import app

    runner = CliRunner()
    train = _conll(tmp_path / "train.conll", *sentences(60, seed=0, people=NAMES[:6], cities=CITIES[:5]))
    test = _conll(tmp_path / "test.conll", *sentences(20, seed=1, people=NAMES[6:], cities=CITIES[5:]))
    r = runner.invoke(app, ["fit", "--data", str(train), "--test-data", str(test), "--backbone",
                            f"sentence:{minilm_path}", "--strategy", "linear-probe", "--max-length", "24",
                            "--check-transfer", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["task"] == "token-classification"
    assert manifest["verdict"]["baseline"] == "scratch:crf" and manifest["verdict"]["metric"] == "f1"
    assert -1 <= manifest["verdict"]["gain_low"] <= manifest["verdict"]["gain"] <= manifest["verdict"]["gain_high"] <= 1
    report = (tmp_path / "b" / "report.md").read_text()
    assert "f1_PER" in report and "## Examples" in report and "]PER" in report

    r = runner.invoke(app, ["predict", str(tmp_path / "b"), "--json", "Judy Smith went to Lisbon today ."])
    assert r.exit_code == 0, r.output
    line = r.output[r.output.index('{"item"'):].splitlines()[0]  # after the progress bars on stderr
    entities = json.loads(line)["prediction"]
    assert ("LOC", "Lisbon") in [(e["label"], e["text"]) for e in entities], entities

    # an I- tag without its B- names the file, sentence and line; no traceback, exit 2
    bad = tmp_path / "bad.conll"
    bad.write_text("Ada\tB-PER\nran\tO\n\nto\tO\nParis\tI-LOC\n", encoding="utf-8")
    r = runner.invoke(app, ["fit", "--data", str(bad), "--backbone", f"sentence:{minilm_path}",
                            "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "bad.conll, sentence 2 (line 4), word 2" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c").exists()


# -- the step budget for tiny data ----------------------------------------------------------------


def test_tiny_token_data_gets_the_tasks_step_budget_unless_epochs_are_given():
    from transferkit.data.dataset import TaskData
    from transferkit.training import TrainConfig, Trainer

    tagged = token_data(*sentences(40, seed=0), name="tiny")
    floor = TASK.min_train_steps
    assert floor == 300
    default = Trainer(TrainConfig(progress=False))
    assert default.epochs_for(20, 2, tagged) == 150  # 40 sentences at batch 32: 2 steps an epoch
    assert default.epochs_for(20, 7, tagged) == 43  # ceil(300 / 7)
    assert default.epochs_for(20, 25, tagged) == 20  # 500 steps already: unchanged
    assert Trainer(TrainConfig(epochs=20, progress=False)).epochs_for(20, 2, tagged) == 20  # the user's epochs
    labels = TaskData(np.zeros((40, 3), np.float32), np.arange(40) % 2, "tabular", label_names=["a", "b"])
    assert labels.task_spec.min_train_steps == 0 and default.epochs_for(20, 2, labels) == 20


def test_fit_runs_the_step_budget_on_tiny_token_data(tiny_bert, monkeypatch):
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy
    from transferkit.tasks.token_classification import TokenClassification
    from transferkit.training import TrainConfig, Trainer

    monkeypatch.setattr(TokenClassification, "min_train_steps", 25)  # the loop's wiring, in a few steps
    tagged = token_data(*sentences(4, seed=0), name="four")  # one batch: one optimizer step an epoch
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=16)
    _, history = make_strategy("finetune").fit(backbone, tagged, None, Trainer(TrainConfig(progress=False)))
    assert len(history) == 25  # finetune's default 20 epochs of one step each, raised to reach 25 steps


# -- label_all_tokens: every sub-token of a word trains ---------------------------------------------


def test_label_all_tokens_gives_later_subtokens_the_inside_tag_of_their_word(tiny_bert):
    from transferkit.backbones import load_backbone
    from transferkit.strategies import make_strategy

    # the real MiniLM tokenizer: "Lovelace" -> love ##lace, "unbelievably" -> un ##bel ##ie ##va ##bly
    data = token_data([["Ada", "Lovelace", "was", "unbelievably", "kind"], ["Lovelace", "spoke"]],
                      [["B-PER", "I-PER", "O", "O", "O"], ["B-PER", "O"]], name="two")
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=16)
    tokens = backbone.tokenizer.convert_ids_to_tokens

    def tagged(options):
        s = make_strategy("finetune", options)
        batch = s.train_dataset(s.prepare(backbone, data), data).collate([0, 1])
        labels, ids = batch["targets"], batch["inputs"]["input_ids"]
        return [[(tok, data.label_names[j] if j >= 0 else None) for tok, j in zip(tokens(ids[r]), labels[r].tolist())
                 if tok != "[PAD]"] for r in range(2)]

    assert tagged({"label_all_tokens": True}) == [
        [("[CLS]", None), ("ada", "B-PER"), ("love", "I-PER"), ("##lace", "I-PER"), ("was", "O"), ("un", "O"),
         ("##bel", "O"), ("##ie", "O"), ("##va", "O"), ("##bly", "O"), ("kind", "O"), ("[SEP]", None)],
        [("[CLS]", None), ("love", "B-PER"), ("##lace", "I-PER"), ("spoke", "O"), ("[SEP]", None)]]
    default = tagged({})  # the first sub-token only
    assert [t for t, j in default[1] if j is not None] == ["love", "spoke"] and ("##lace", None) in default[1]


def test_label_all_tokens_refuses_bilou_tags_other_tasks_and_bad_values():
    from transferkit.strategies import make_strategy
    from transferkit.tasks.token_classification import continuation_tags

    assert continuation_tags(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]).tolist() == [0, 2, 2, 4, 4]
    bilou = token_data([["Ada", "Lovelace", "spoke"]], [["B-PER", "L-PER", "O"]], name="bilou")
    with pytest.raises(ConfigError, match=r"label_all_tokens=true .* BILOU \('L-PER'\).*label_all_tokens=false"):
        make_strategy("lora", {"label_all_tokens": True}).target_options(bilou)
    labels = _rows_data()
    with pytest.raises(ConfigError, match="'rows' is classification data. Set label_all_tokens=false"):
        make_strategy("finetune", {"label_all_tokens": True}).target_options(labels)
    assert make_strategy("finetune", {"label_all_tokens": False}).target_options(labels) == {}
    with pytest.raises(ConfigError, match="'label_all_tokens' parameter of FinetuneConfig must be a bool.*'maybe'"):
        make_strategy("finetune", {"label_all_tokens": "maybe"})


def _rows_data():
    from transferkit.data.dataset import TaskData

    return TaskData(np.zeros((4, 3), np.float32), np.arange(4) % 2, "tabular", label_names=["a", "b"], name="rows")


def test_label_all_tokens_round_trips_through_the_bundle(tiny_bert, tmp_path):
    import transferkit as tk
    from transferkit.export.bundle import load

    train = token_data(*sentences(16, seed=0), name="people")
    result = tk.fit(f"hf:{tiny_bert}", train, "finetune", strategy_options={"label_all_tokens": True}, epochs=1,
                    max_length=16, val_fraction=0.0, out=tmp_path / "b", report=False, progress=False)
    loaded = load(tmp_path / "b")
    assert loaded.manifest["strategy"]["config"]["label_all_tokens"] is True
    text = ["Grace Smith went to Prague today .", "yesterday Ivan Jones flew from Oslo ."]
    for t, mine, theirs in zip(text, result.predictor.outputs(text), loaded.outputs(text)):
        assert mine.shape == (len(split_words(t)), len(train.label_names))  # one row per word (its first sub-token)
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    assert loaded.predict(text) == result.predictor.predict(text)
