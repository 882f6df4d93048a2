"""strategy="auto": the search's schedule, budget, verdict and protocol (training faked with known skills),
then real searches on digits through fit, compare and the CLI."""
from __future__ import annotations

import numpy as np
import pytest

from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, TransferkitError
from transferkit.training import TrainConfig
from transferkit.workflows import auto as auto_mod
from transferkit.workflows.auto import auto_options, parse_budget, search
from transferkit.workflows.runs import Run


def _data(n_per_class=6, classes=3, seed=0) -> TaskData:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(len(y), 4)).astype(np.float32)
    x[:, 0] = np.arange(len(y))  # item id, so a fake run can tell which items it was given
    return TaskData(x, y, "tabular", label_names=[f"c{i}" for i in range(classes)], name="toy")


class FakeTraining:
    """Stands in for train_and_score: each candidate predicts right a known fraction of the held-out items."""

    def __init__(self, skill: dict[str, float]):
        self.skill, self.calls = skill, []

    def __call__(self, backbone, strategy, train, val, test, config, backbone_options, checkpoint=None):
        label = f"scratch:{strategy.config.variant}" if strategy.name == "scratch" else f"{strategy.name} on {backbone}"
        self.calls.append((label, train.items[:, 0].astype(int).tolist(), test.items[:, 0].astype(int).tolist()))
        y, c = np.asarray(test.targets), len(train.label_names)
        right = np.random.default_rng(int(test.items[0, 0])).random(len(y)) < self.skill[label]
        pred = np.where(right, y, (y + 1) % c)
        probs = np.eye(c, dtype=np.float32)[pred]
        return Run(model=None, history=[], metrics={"accuracy": float(right.mean())}, seconds=0.01, outputs=probs)


SKILL = {"linear-probe on bb": 0.6, "lora on bb": 0.9, "finetune on bb": 0.3, "scratch:small-cnn": 0.5}
OPTIONS = {"layers": False, "baselines": "small-cnn", "budget": "none"}


@pytest.fixture
def fake(monkeypatch):
    def install(skill=SKILL):
        f = FakeTraining(skill)
        monkeypatch.setattr(auto_mod, "train_and_score", f)
        return f
    return install


def test_parse_budget_forms_and_errors():
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget("1.5h") == 5400
    assert parse_budget(30) == 30 and parse_budget(None) is None and parse_budget("none") is None
    for bad in ("ten minutes", "-5m", 0, "5d"):
        with pytest.raises(ConfigError, match="budget"):
            parse_budget(bad)


def test_options_are_validated_with_the_valid_choices():
    with pytest.raises(ConfigError, match="budjet.*Valid: budget, folds"):
        auto_options({"budjet": "10m"})
    with pytest.raises(ConfigError, match="folds"):
        auto_options({"folds": 1})
    with pytest.raises(ConfigError, match="cannot include 'auto'"):
        auto_options({"strategies": "auto,lora"})
    with pytest.raises(TransferkitError, match="Did you mean 'linear-probe'"):
        auto_options({"strategies": "linear-prob"})
    assert auto_options({"strategies": "lora, finetune", "layers": "false"}).strategies == ("lora", "finetune")


def test_successive_halving_keeps_the_better_half_and_the_baseline(fake):
    f = fake()
    found = search("bb", _data(), TrainConfig(seed=0), {}, OPTIONS)
    rows = {c["candidate"]: c for c in found.to_dict()["candidates"]}
    # 3 transfer candidates: all run fold 1, the best 2 run fold 2, the best 1 runs fold 3; the baseline runs all
    assert rows["finetune on bb"]["folds"] == 1 and "halving" in rows["finetune on bb"]["status"]
    assert rows["linear-probe on bb"]["folds"] == 2 and "halving" in rows["linear-probe on bb"]["status"]
    assert rows["lora on bb"]["folds"] == 3 and rows["lora on bb"]["status"] == "winner"
    assert rows["scratch:small-cnn"]["folds"] == 3
    assert found.winner.label == "lora on bb" and "lora on bb had the best mean accuracy" in found.reason
    # cheapest first inside a rung: the probe trains before LoRA and fine-tuning on the first fold
    assert [c[0] for c in f.calls[:3]] == ["linear-probe on bb", "lora on bb", "finetune on bb"]
    assert found.verdict["verdict"] == "positive transfer" and found.verdict["gain_low"] > 0


def test_the_search_reads_the_training_labels_only_in_disjoint_folds(fake):
    f = fake()
    data = _data()
    search("bb", data, TrainConfig(seed=0), {}, OPTIONS)
    ids = set(range(len(data)))
    held_by_fold = {}
    for label, fit_ids, held_ids in f.calls:
        assert set(fit_ids) | set(held_ids) == ids and not set(fit_ids) & set(held_ids)
        held_by_fold.setdefault(tuple(held_ids), set()).add(label)
    assert len(held_by_fold) == 3  # three distinct held-out folds that together cover the data once
    assert sorted(i for held in held_by_fold for i in held) == sorted(ids)


def test_scratch_wins_when_transfer_is_worse_and_says_so(fake):
    fake({"linear-probe on bb": 0.2, "lora on bb": 0.3, "finetune on bb": 0.1, "scratch:small-cnn": 0.95})
    found = search("bb", _data(n_per_class=10), TrainConfig(seed=0), {}, OPTIONS)
    assert found.winner.is_scratch and found.winner.label == "scratch:small-cnn"
    assert "No transfer candidate beat training from scratch" in found.reason
    assert found.verdict["verdict"] == "negative transfer" and found.verdict["gain_high"] < 0


def test_a_spent_budget_stops_after_the_first_rung(fake):
    f = fake()
    found = search("bb", _data(), TrainConfig(seed=0), {}, {**OPTIONS, "budget": 1e-6})
    assert len(f.calls) == 4  # the first rung always runs: 3 candidates and the baseline, one fold each
    status = {c.label: c.status for c in found.candidates}
    assert status["finetune on bb"] == "stopped by halving after 1 fold(s)"  # halved out before the budget ran out
    assert status["linear-probe on bb"] == status["scratch:small-cnn"] == "stopped by the budget after 1 fold(s)"
    assert found.winner.label == "lora on bb" and found.to_dict()["candidates"][0]["folds"] == 1


def test_middle_layers_are_those_of_the_loaded_backbone():
    """Counted on a weightless build (efficientnet-lite:) or, where a source cannot be built so (concat:), on the
    full load: the blocks from a third of the loaded backbone's stack to the one before its last; none for a layer
    spec."""
    from transferkit.backbones import load_backbone
    from transferkit.backbones.layers import layer_aliases

    for spec in ("efficientnet-lite:0", "concat:efficientnet-lite:0+small-cnn:"):
        assert len(layer_aliases(load_backbone(spec, image_size=32))) == 7
        assert auto_mod._middle_layers(spec, {"image_size": 32, "max_length": None}) == [
            "block2", "block3", "block4", "block5"]
    assert auto_mod._middle_layers("efficientnet-lite:0@block3", {}) == []


def test_probe_sizes_double_the_given_size_up_to_the_native_one():
    """Images given below the model's native size (Lite0: 224) are probed again at 2x and 4x; none above it, none
    without a given size, none for text; explicit sizes replace the rule and bad ones are refused."""
    from transferkit.workflows.auto import AutoOptions

    images = _data()
    images.modality = "image"
    built = auto_mod._architecture("efficientnet-lite:0", {"image_size": 32})
    sizes = auto_mod._probe_sizes
    assert sizes("efficientnet-lite:0", built, images, AutoOptions(), {"image_size": 32}) == [64, 128]
    assert sizes("efficientnet-lite:0", built, images, AutoOptions(), {"image_size": 96}) == [192]
    assert sizes("efficientnet-lite:0", built, images, AutoOptions(), {"image_size": None}) == []
    assert sizes("efficientnet-lite:0", built, images, auto_options({"sizes": "48, 32"}), {"image_size": 32}) == [48]
    assert sizes("efficientnet-lite:0", built, _data(), AutoOptions(), {"image_size": 32}) == []
    for bad in ("big", "4", [32, 0]):
        with pytest.raises(ConfigError, match="sizes must be auto or image sizes"):
            auto_options({"sizes": bad})


def test_too_few_labels_or_an_unsearched_task_are_refused(fake):
    fake()
    y = np.array([0, 0, 0, 1, 1, 2])
    one = TaskData(np.zeros((6, 2), np.float32), y, "tabular", label_names=["a", "b", "lonely"], name="t")
    with pytest.raises(ConfigError, match="lonely has 1"):
        search("bb", one, TrainConfig(), {}, OPTIONS)
    tokens = TaskData([["a", "b"]] * 6, [[0, 0]] * 6, "text", task="token-classification",
                      label_names=["O"], name="ner")
    with pytest.raises(ConfigError, match="classification and regression"):
        search("bb", tokens, TrainConfig(), {}, OPTIONS)


# -- real searches: EfficientNet-Lite0 probes at three layers against the small CNN, on digits ---------------------
REAL = {"strategies": "linear-probe", "folds": 3}


@pytest.fixture(scope="module")
def auto_fit(tmp_path_factory):
    import transferkit as tk

    out = tmp_path_factory.mktemp("auto") / "bundle"
    return tk.fit("efficientnet-lite:0", "digits", "auto", labels_per_class=4, image_size=32, max_test=60,
                  strategy_options=REAL, out=out), out


@pytest.mark.slow
def test_fit_auto_trains_the_winner_and_records_the_search(auto_fit):
    import transferkit as tk

    result, out = auto_fit
    record = result.manifest["auto"]
    labels = [c["candidate"] for c in record["candidates"]]
    probes = ["efficientnet-lite:0", *(f"efficientnet-lite:0@block{i}" for i in range(2, 6))]
    assert labels == ([f"linear-probe on {p}" for p in probes]  # at the given 32 px, then at 64 and 128 px
                      + [f"linear-probe on {p} at {size} px" for size in (64, 128) for p in probes]
                      + ["scratch:small-cnn", labels[-1]])
    # last, the stacking candidate: the three best linear-probe finalists, each at its own layer and size
    stack = record["candidates"][-1]
    finalists = sorted((c for c in record["candidates"][:-1] if c["strategy"] == "linear-probe" and c["folds"] == 3),
                       key=lambda c: -c["mean"])[:3]
    assert stack["strategy"] == "stacking" and stack["options"] == {"combine": "mean"} and stack["folds"] == 3
    assert [(m["spec"], m["options"]["image_size"]) for m in stack["backbone_options"]["members"]] == [
        (c["backbone"], c["backbone_options"].get("image_size", 32)) for c in finalists]
    win = next(c for c in record["candidates"] if c["status"] == "winner")
    assert win["folds"] == 3 and record["winner"] == win["candidate"]
    # the bundle is the winner's recipe trained on all the labels, and it reloads
    assert result.manifest["strategy"]["name"] == win["strategy"]
    assert result.manifest["backbone_spec"] == win["backbone"]
    assert result.manifest["backbone"]["options"]["image_size"] == win["backbone_options"].get("image_size", 32)
    assert result.manifest["data"]["n_train"] == 40
    reloaded = tk.load(out)
    assert reloaded.manifest["auto"]["winner"] == record["winner"]
    report = (out / "report.md").read_text()
    assert "How auto chose this recipe" in report and record["winner"] in report


def test_compare_auto_matches_the_fixed_choice_it_picks():
    import transferkit as tk

    # one candidate only: auto must pick it and, trained on the same draw, score exactly as the fixed run
    result = tk.compare("efficientnet-lite:0", "digits", ["auto", "linear-probe"], seeds=1, labels_per_class=4,
                        image_size=32, max_test=60, baselines=[], progress=False,
                        strategy_options={"auto": {"strategies": "linear-probe", "layers": False, "sizes": "32",
                                                   "baselines": "none"}})
    runs = result.runs.set_index("strategy")
    assert runs.loc["auto", "choice"] == "linear-probe on efficientnet-lite:0"
    assert runs.loc["auto", "accuracy"] == pytest.approx(runs.loc["linear-probe", "accuracy"])


def test_cli_budget_belongs_to_auto(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    out = tmp_path / "b"
    res = CliRunner().invoke(app, ["fit", "--backbone", "efficientnet-lite:0", "--data", "digits", "--out", str(out),
                                   "--budget", "5m"])
    assert res.exit_code == 2 and "--budget" in res.output and not out.exists()
    res = CliRunner().invoke(app, ["fit", "--backbone", "efficientnet-lite:0", "--data", "digits", "--out", str(out),
                                   "--strategy", "auto", "--budget", "soon"])
    assert res.exit_code == 2 and "budget" in res.output and not out.exists()
