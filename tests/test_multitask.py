"""Multi-task learning: the MultiTaskData contract, hard/soft sharing, loss weighting, PCGrad, bundles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.data.dataset import TaskData
from transferkit.data.multitask import (FASHION_SUPER_CATEGORIES, SUPER_NAMES, MultiTaskData,
                                        load_penguins_multitask, super_category)
from transferkit.errors import ConfigError, DataError, UnknownNameError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies.base import TransferModel, predict_outputs
from transferkit.strategies.multi_task import (MultiTask, MultiTaskDataset, MultiTaskModel, evaluate_multitask,
                                               pcgrad_project)
from transferkit.workflows.multitask import fit_multitask
from transferkit.training import TrainConfig

FAST = dict(epochs=10, batch_size=64, lr=1e-2, head_lr=1e-2, progress=False)


@pytest.fixture(scope="module")
def penguins():
    pytest.importorskip("palmerpenguins")
    return load_penguins_multitask(seed=0)


def _toy(n=40, seed=0):
    """Two tasks on the same 4 columns: the sign of column 0 (2 classes) and a 3-way bin of column 1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return MultiTaskData.from_targets(X, {"a": (X[:, 0] > 0).astype(int), "b": np.digitize(X[:, 1], [-0.5, 0.5])},
                                      modality="tabular", label_names={"a": ["neg", "pos"], "b": ["lo", "mid", "hi"]})


def _batch(model, data):
    ds = MultiTaskDataset(data, model.backbone_list()[0].preprocess)
    return ds.collate(list(range(len(ds))))


# ---------------------------------------------------------------- data contract


def test_from_targets_encodes_each_task_and_shares_items():
    X = np.zeros((4, 2), np.float32)
    mt = MultiTaskData.from_targets(X, {"kind": ["cat", "dog", "cat", "dog"], "size": [1.0, 2.5, 3.0, 4.0]},
                                    modality="tabular", tasks={"size": "regression"})
    assert mt.shared and mt.names == ["kind", "size"]
    assert mt["kind"].label_names == ["cat", "dog"] and mt["kind"].targets.tolist() == [0, 1, 0, 1]
    assert mt["size"].task == "regression" and mt["size"].items is X


def test_mismatched_lengths_name_the_task_and_both_lengths():
    X = np.zeros((5, 2), np.float32)
    with pytest.raises(DataError, match=r"task 'sex' has 4 targets but there are 5 items"):
        MultiTaskData.from_targets(X, {"species": [0, 1, 2, 0, 1], "sex": [0, 1, 0, 1]}, modality="tabular")
    a = TaskData(X, np.zeros(5, np.int64), "tabular", label_names=["x"])
    b = TaskData(X[:3], np.zeros(3, np.int64), "tabular", label_names=["x"])
    with pytest.raises(DataError, match=r"task 'b' has 3 items but task 'a' has 5"):
        MultiTaskData({"a": a, "b": b}, shared=True)
    assert not MultiTaskData.from_tasks({"a": a, "b": b}).shared  # separate data may differ in length


def test_unknown_task_names_give_clear_errors(penguins):
    train, test = penguins
    with pytest.raises(UnknownNameError, match="Unknown task 'specie'. Did you mean 'species'"):
        train["specie"]
    with pytest.raises(ConfigError, match="'weights' names unknown task.*'colour'.*Tasks: species, sex"):
        fit_multitask("mlp:8", train, weights={"colour": 1.0}, train_config=TrainConfig(epochs=1, progress=False))
    with pytest.raises(ConfigError, match="label_names names task.*'c'"):
        MultiTaskData.from_targets(np.zeros((2, 1)), {"a": [0, 1]}, modality="tabular", label_names={"c": ["x"]})
    model, _ = fit_multitask("mlp:8", train.select("species"), train_config=TrainConfig(epochs=1, progress=False))
    with pytest.raises(UnknownNameError, match="Unknown task 'sex'"):
        evaluate_multitask(model, test)


def test_config_refuses_bad_combinations():
    with pytest.raises(ConfigError, match="'sharing'.*hard, soft.*'medium'"):
        MultiTask(sharing="medium")
    with pytest.raises(ConfigError, match="'weighting'.*fixed, uncertainty, pcgrad, gradnorm"):
        MultiTask(weighting="gradnorm2")
    for weighting in ("pcgrad", "gradnorm"):
        with pytest.raises(ConfigError, match=f"{weighting}.*sharing='hard'"):
            MultiTask(sharing="soft", weighting=weighting)
    with pytest.raises(ConfigError, match="learns the task weights"):
        MultiTask(weighting="uncertainty", weights={"a": 1.0})
    with pytest.raises(ConfigError, match="weights\\['a'\\]"):
        MultiTask(weights={"a": -1.0})


def test_penguin_and_fashion_tasks():
    pytest.importorskip("palmerpenguins")
    train, test = load_penguins_multitask(seed=1)
    assert train.names == ["species", "sex"] and train["sex"].label_names == ["female", "male"]
    assert len(train) + len(test) == 333  # the 11 rows without sex are dropped
    assert set(FASHION_SUPER_CATEGORIES.values()) == set(SUPER_NAMES)
    from transferkit.data.builtin import FASHION_MNIST_CLASSES

    supers = super_category(np.arange(10), FASHION_MNIST_CLASSES)
    assert [SUPER_NAMES[s] for s in supers[[0, 1, 3, 8, 9]]] == ["tops", "bottoms/dresses", "bottoms/dresses",
                                                                  "footwear/bags", "footwear/bags"]


# ---------------------------------------------------------------- sharing and training


@pytest.mark.parametrize("sharing", ["hard", "soft"])
def test_sharing_trains_and_beats_chance_on_penguins(penguins, sharing):
    train, test = penguins
    model, history = fit_multitask("mlp:16", train, sharing=sharing, train_config=TrainConfig(**FAST))
    scores = evaluate_multitask(model, test)
    assert set(scores) == {"species", "sex"}
    majority = {t: np.bincount(test[t].targets).max() / len(test) for t in test.names}
    for task in ("species", "sex"):
        assert {"accuracy", "macro_f1"} <= set(scores[task])
        assert scores[task]["accuracy"] > majority[task] + 0.15, (task, scores[task]["accuracy"])
    assert {"loss_species", "loss_sex"} <= set(history[-1]) and history[-1]["train_loss"] < history[0]["train_loss"]
    assert (len(model.backbone_list()) == 2) == (sharing == "soft")
    if sharing == "soft":
        assert history[-1]["soft_penalty"] > 0


def test_soft_penalty_zero_for_identical_copies_positive_after_divergence():
    torch.manual_seed(0)
    tasks = {"a": ("classification", ["x", "y"], 2), "b": ("classification", ["x", "y"], 2)}
    model = MultiTaskModel(load_backbone("mlp:8", in_features=4), tasks, sharing="soft")
    assert model.soft_penalty().item() == 0.0
    with torch.no_grad():
        model.backbones["b"].layers[0][0].weight[0, 0] += 0.5
    assert model.soft_penalty().item() == pytest.approx(0.25)
    assert model.backbones["a"].layers[0][0].weight is not model.backbones["b"].layers[0][0].weight


def test_separate_data_per_task_trains_with_its_own_items():
    a, b = _toy(40, seed=0), _toy(16, seed=1)
    data = MultiTaskData.from_tasks({"a": a["a"], "b": b["b"]})
    assert not data.shared and len(data) == 40
    model, history = fit_multitask("mlp:8", data, train_config=TrainConfig(epochs=2, progress=False))
    batch = _batch(model, data)
    assert batch["separate"] and batch["inputs"]["b"].shape == (40, 4)  # the 16 items of b cycle
    assert torch.equal(batch["inputs"]["b"][16:32], batch["inputs"]["b"][:16])
    assert set(evaluate_multitask(model, data)) == {"a", "b"}


# ---------------------------------------------------------------- weighting


def test_fixed_weights_scale_the_loss_terms():
    data = _toy()
    strategy = MultiTask(weights={"a": 2.0, "b": 0.0})
    torch.manual_seed(0)
    model = strategy.prepare(load_backbone("mlp:8", in_features=4), data)
    model.eval()  # BatchNorm statistics fixed: the two steps see the same network
    out = strategy.step(model, _batch(model, data))
    assert out["loss"].item() == pytest.approx(2.0 * out["loss_a"].item(), rel=1e-6)
    out2 = MultiTask(weights={"a": 0.5, "b": 3.0}).step(model, _batch(model, data))
    assert out2["loss"].item() == pytest.approx(0.5 * out["loss_a"].item() + 3.0 * out["loss_b"].item(), rel=1e-6)


def test_uncertainty_weights_are_learned(penguins):
    train, _ = penguins
    model, history = fit_multitask("mlp:8", train, weighting="uncertainty", train_config=TrainConfig(**FAST))
    log_vars = model.log_vars.detach()
    assert torch.all(log_vars != 0)  # initialised at 0, moved by training
    assert not torch.allclose(log_vars[0], log_vars[1])  # a different weight per task
    # the reported total is the uncertainty-weighted one, not the plain sum
    assert history[-1]["train_loss"] != pytest.approx(history[-1]["loss_species"] + history[-1]["loss_sex"])


def test_pcgrad_projection_removes_conflicts():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot product -1: conflicting
    projected = pcgrad_project(g, order=[[1], [0]])
    update = projected.sum(0)
    assert (g @ update >= -1e-6).all(), g @ update
    assert (g.sum(0) @ g[0]).item() == 0.0 and (update @ g[0]).item() > 0  # plain sum: no gain for task 0
    assert torch.allclose(projected[0] @ g[1], torch.tensor(0.0), atol=1e-6)
    agree = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    assert torch.equal(pcgrad_project(agree), agree)  # no conflict: unchanged
    three = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    assert pcgrad_project(three).shape == (3, 50)


def _grads(strategy, model, batch):
    model.zero_grad(set_to_none=True)
    out = strategy.step(model, batch)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_pcgrad_step_differs_from_plain_sum_on_the_shared_weights_only():
    data = MultiTaskData.from_targets(_toy().tasks["a"].items, {"a": [0, 1] * 20, "b": [1, 0] * 20},
                                      modality="tabular")  # b = not a: the task gradients conflict
    torch.manual_seed(0)
    plain, pc = MultiTask(), MultiTask(weighting="pcgrad")
    model = plain.prepare(load_backbone("mlp:8", in_features=4), data)
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())  # same head, opposite labels: opposite gradients
    model.eval()
    batch = _batch(model, data)
    out_plain, g_plain = _grads(plain, model, batch)
    out_pc, g_pc = _grads(pc, model, batch)
    assert out_pc["loss"].item() == pytest.approx(out_plain["loss"].item(), rel=1e-6)  # logged value: the real loss
    assert any(not torch.allclose(g_plain[n], g_pc[n]) for n in g_plain if n.startswith("backbone."))
    for n in g_plain:
        if n.startswith("heads."):
            torch.testing.assert_close(g_pc[n], g_plain[n])
    # the applied shared-weight update does not increase either task's loss to first order
    shared = [n for n in g_pc if n.startswith("backbone.")]
    for task in ("a", "b"):
        model.zero_grad(set_to_none=True)
        plain.task_losses(model, batch)[task].backward()
        dot = sum((p.grad * g_pc[n]).sum() for n, p in model.named_parameters() if n in shared)
        assert dot >= -1e-6


def test_gradnorm_weights_shrink_the_task_with_the_larger_gradient():
    data = _toy()
    strategy = MultiTask(weighting="gradnorm", gradnorm_alpha=0.0)  # alpha 0: target equal gradient norms
    torch.manual_seed(0)
    model = strategy.prepare(load_backbone("mlp:8", in_features=4), data)
    with torch.no_grad():
        model.heads["b"][-1].weight.mul_(10)  # task b's gradient on the shared layers is much larger
    model.eval()
    batch = _batch(model, data)
    norms = {}
    for task in ("a", "b"):
        model.zero_grad(set_to_none=True)
        strategy.task_losses(model, batch)[task].backward()
        norms[task] = torch.cat([p.grad.reshape(-1) for p in model.backbone.layer_groups()[-1]]).norm()
    assert norms["b"] > norms["a"]
    model.zero_grad(set_to_none=True)
    out = strategy.step(model, batch)
    assert out["loss"].item() == pytest.approx(out["loss_a"].item() + out["loss_b"].item(), rel=1e-5)
    out["loss"].backward()
    grad = model.task_weights.grad
    assert grad[1] > 0 > grad[0]  # descent lowers b's weight and raises a's


def test_gradnorm_trains_weights_that_sum_to_the_number_of_tasks(penguins):
    train, _ = penguins
    model, history = fit_multitask("mlp:8", train, weighting="gradnorm", train_config=TrainConfig(**FAST))
    w = model.task_weights.detach()
    assert not torch.allclose(w, torch.ones(2)) and w.sum().item() == pytest.approx(2.0, abs=0.1)
    assert {"weight_species", "weight_sex"} <= set(history[-1])
    with pytest.raises(ConfigError, match="frozen"):
        fit_multitask("mlp:8", train, weighting="gradnorm", finetune=False)


# ---------------------------------------------------------------- export


def test_task_model_bundle_round_trip(penguins, tmp_path):
    train, test = penguins
    model, _ = fit_multitask("mlp:8", train, train_config=TrainConfig(epochs=2, progress=False))
    sex = model.task_model("sex")
    assert isinstance(sex, TransferModel) and sex.label_names == ["female", "male"]
    out = predict_outputs(sex, test["sex"])
    assert out.shape == (len(test), 2)
    save_bundle(sex, tmp_path / "sex", {"strategy": {"name": "multi-task"}})
    np.testing.assert_allclose(load(tmp_path / "sex").outputs(test["sex"].items), out, atol=1e-5)
    with pytest.raises(UnknownNameError, match="Unknown task 'island'"):
        model.task_model("island")


def test_single_task_data_gives_a_transfer_model(penguins):
    from transferkit.training import Trainer

    train, _ = penguins
    model, history = MultiTask().fit(load_backbone("mlp:8", in_features=4), train["species"], None,
                                     Trainer(TrainConfig(epochs=1, progress=False)))
    assert isinstance(model, TransferModel) and model.label_names == ["Adelie", "Chinstrap", "Gentoo"]


def test_efficientnet_lite_fashion_mnist_end_to_end():
    from transferkit.data.multitask import load_fashion_mnist_multitask

    try:
        train, test = load_fashion_mnist_multitask()
    except DataError as exc:
        pytest.skip(str(exc))
    small = train.sample_per_class("class", 6, seed=0)
    assert len(small) == 60 and set(small["super"].targets.tolist()) == {0, 1, 2}
    model, history = fit_multitask("efficientnet-lite:0", small, image_size=32,
                                   train_config=TrainConfig(epochs=1, batch_size=20, progress=False))
    scores = evaluate_multitask(model, test.subset(np.arange(40)))
    assert set(scores) == {"class", "super"} and {"accuracy", "macro_f1"} <= set(scores["super"])
    assert np.isfinite(history[-1]["loss_class"]) and np.isfinite(history[-1]["loss_super"])
    assert predict_outputs(model.task_model("class"), test["class"].subset(np.arange(4))).shape == (4, 10)
