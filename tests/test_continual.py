"""Continual learning: streams, learners, the accuracy matrix and its metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.data.dataset import TaskData
from transferkit.data.streams import make_stream, permuted, split_by_classes
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.continual import continual_metrics
from transferkit.reports.continual_plots import accuracy_matrix_png, accuracy_matrix_table, metrics_table
from transferkit.strategies import STRATEGIES
from transferkit.strategies.continual import CONTINUAL, ReplayBuffer
from transferkit.workflows.continual import train_stream
from transferkit.training import TrainConfig

FAST = TrainConfig(epochs=3, lr=3e-3, head_lr=3e-3, batch_size=16, progress=False, weight_decay=0.0)


def blobs(n_per_class=40, classes=4, dim=6, seed=0, spread=0.5):
    """Separable tabular classes: Gaussian blobs around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    names = [f"c{i}" for i in range(classes)]
    return (TaskData(x, y, "tabular", label_names=names, name="blobs"),
            TaskData(x + 0.1 * rng.normal(size=x.shape).astype(np.float32), y, "tabular", label_names=names,
                     name="blobs-test"))


def tiny_image_data(n_per_class=12, classes=4, size=8, seed=0):
    """Grey images whose class is the bright quadrant (or bars), uint8 [N, size, size]."""
    rng = np.random.default_rng(seed)
    h = size // 2
    x, y = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size))
            r, k = divmod(c % 4, 2)
            img[r * h:(r + 1) * h, k * h:(k + 1) * h] += 180
            x.append(img.clip(0, 255))
            y.append(c)
    return TaskData(np.asarray(x, np.uint8), np.asarray(y), "image", label_names=[f"q{c}" for c in range(classes)],
                    name="quadrants")


# ---------------------------------------------------------------- metrics


def test_metrics_on_a_hand_made_matrix():
    a = np.array([[0.9, 0.2, 0.1],
                  [0.7, 0.8, 0.3],
                  [0.6, 0.5, 0.9]])
    m = continual_metrics(a, random_init=[0.5, 0.25, 0.2])
    assert m["average_accuracy"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    # forgetting: task 0 best 0.9 -> 0.6 (0.3); task 1 best 0.8 -> 0.5 (0.3)
    assert m["forgetting"] == pytest.approx(0.3)
    assert m["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert m["forward_transfer"] == pytest.approx(((0.2 - 0.25) + (0.3 - 0.2)) / 2)
    assert np.isnan(continual_metrics(a)["forward_transfer"])
    # forgetting takes the best earlier row, not the diagonal
    b = np.array([[0.5, 0.0], [0.4, 1.0]])
    assert continual_metrics(b)["forgetting"] == pytest.approx(0.1)
    # ... but only rows after the experience was trained: task 1's lucky 0.8 before training it is not forgotten
    c = np.array([[0.9, 0.8, 0.1],
                  [0.85, 0.6, 0.1],
                  [0.8, 0.6, 0.9]])
    assert continual_metrics(c)["forgetting"] == pytest.approx((0.1 + 0.0) / 2)


def test_metrics_refuse_bad_matrices():
    with pytest.raises(DataError, match="square"):
        continual_metrics(np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"\[1, 0\] is 1.5"):
        continual_metrics(np.array([[0.5, 0.5], [1.5, 0.5]]))
    with pytest.raises(DataError, match="one accuracy per experience"):
        continual_metrics(np.eye(2) * 0.5, random_init=[0.5])
    one = continual_metrics(np.array([[0.7]]))
    assert one["average_accuracy"] == pytest.approx(0.7) and np.isnan(one["forgetting"])


# ---------------------------------------------------------------- streams


def test_split_by_classes_relabels_per_scenario():
    train, test = blobs()
    task = split_by_classes(train, 2, test=test)
    assert [e.classes for e in task] == [("c0", "c1"), ("c2", "c3")] and task.head_sizes() == [2, 2]
    assert set(task[1].train.targets) == {0, 1} and task[1].train.label_names == ["c2", "c3"]
    cls = split_by_classes(train, groups=[[3, 1], [0, 2]], test=test, scenario="class")
    assert cls.head_sizes() == [2, 4] and cls[0].train.label_names == ["c1", "c3", "c0", "c2"]
    # class ids 1, 3 become head rows 0, 1; 0, 2 become 2, 3
    assert set(cls[0].train.targets) == {0, 1} and set(cls[1].train.targets) == {2, 3}
    assert np.array_equal(cls[1].test.targets, np.where(cls[1].test.targets == 2, 2, 3))


def test_class_incremental_refuses_overlapping_classes():
    train, _ = blobs()
    with pytest.raises(DataError, match=r"experience 1 .* repeats class\(es\) 'c1' \(id 1\) of experience\(s\) 0"):
        split_by_classes(train, groups=[[0, 1], [1, 2]], scenario="class")
    split_by_classes(train, groups=[[0, 1], [1, 2]], scenario="task")  # allowed: a head per task
    with pytest.raises(ConfigError, match="Unknown continual scenario 'classes'"):
        split_by_classes(train, 2, scenario="classes")


def test_domain_stream_needs_the_same_classes():
    a, _ = blobs()
    b = TaskData(a.items, a.targets, "tabular", label_names=["x", "y", "z", "w"], name="other")
    with pytest.raises(DataError, match="experience 1 \\('other'\\) has classes"):
        make_stream([a, b], "domain")


def test_permuted_applies_one_permutation_per_experience_to_train_and_test():
    base = np.arange(64, dtype=np.uint8).reshape(8, 8)
    imgs = TaskData(np.stack([base + 3 * i for i in range(6)]), np.arange(6) % 2, "image", label_names=["a", "b"])
    s = permuted(imgs, 3, seed=1, test=imgs.subset([1, 2]))
    assert s.scenario == "domain" and len(s) == 3
    flat = imgs.items.reshape(6, -1)
    perms = []
    for e in s:
        x = e.train.items.reshape(6, -1)
        perm = x[0].astype(np.int64)  # image 0 holds each pixel's own index
        assert sorted(perm) == list(range(64)) and np.array_equal(x, flat[:, perm])
        assert np.array_equal(e.test.items.reshape(2, -1), flat[[1, 2]][:, perm])  # the same permutation
        perms.append(tuple(perm))
    assert len(set(perms)) == 3 and tuple(range(64)) not in perms
    tab = permuted(imgs, 2, seed=1, flatten=True)
    assert tab[0].train.modality == "tabular" and tab[0].train.items.shape == (6, 64)
    assert np.allclose(tab[1].train.items * 255, flat[:, list(perms[1])])
    assert np.array_equal(permuted(imgs, 2, seed=1)[1].train.items, s[1].train.items)  # same seed, same stream


# ---------------------------------------------------------------- learners


def test_learners_live_in_their_own_registry():
    assert set(CONTINUAL.names()) == {"naive", "ewc", "lwf", "replay", "progressive"}
    assert not {"naive", "replay", "progressive"} & set(STRATEGIES.names())  # trained per data set there


def test_replay_buffer_is_class_balanced_and_bounded():
    buf = ReplayBuffer(10, seed=0)
    x = torch.arange(200, dtype=torch.float32).view(100, 2)
    y = torch.tensor([0] * 70 + [1] * 30)
    buf.add(x, y, task_id=0)
    assert buf.counts() == {(0, 0): 5, (0, 1): 5}
    buf.add(x + 1000, torch.tensor([0] * 50 + [1] * 50), task_id=1)
    buf.add(x + 2000, torch.tensor([0] * 90 + [1] * 10), task_id=2)
    counts = buf.counts()
    assert len(buf) == 10 and len(counts) == 6 and max(counts.values()) - min(counts.values()) <= 1
    for (task, c), (xs, ys) in buf.groups.items():
        assert (ys == c).all() and ((xs[:, 0] // 1000) == task).all()  # items stay with their class and task
    xs, ys, ts = buf.sample(8)
    assert len(ys) == 8 and set(ts.tolist()) <= {0, 1, 2}
    assert len(buf.sample(25)[0]) == 25  # more than held: drawn with replacement


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_replay_refuses_an_empty_memory(size):
    train, test = blobs(10)
    with pytest.raises(ConfigError, match="buffer_size"):
        train_stream("mlp:8", split_by_classes(train, 2, test=test), "replay", {"buffer_size": size}, FAST)


def test_progressive_refuses_class_incremental_and_unknown_learners():
    train, test = blobs(10)
    s = split_by_classes(train, 2, test=test, scenario="class")
    with pytest.raises(ConfigError, match="'progressive' supports the task, domain"):
        train_stream("mlp:8", s, "progressive", train_config=FAST)
    with pytest.raises(KeyError, match="Did you mean 'replay'"):
        train_stream("mlp:8", s, "replay2", train_config=FAST)


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_with_distance():
    train, test = blobs(20)
    s = split_by_classes(train, 2, test=test)
    learner = CONTINUAL.get("ewc")({"weight": 10.0, "fisher_samples": 16})
    r = train_stream("mlp:8", s, learner, train_config=FAST)
    model = r.model
    batch = {"inputs": torch.zeros(2, 6), "task_ids": torch.zeros(2, dtype=torch.long)}
    feats = torch.zeros(2, 8)
    learner.anchor_ = {n: p.detach().clone() for n, p in model.named_parameters() if n in learner.fisher_}
    assert float(learner.penalty(model, batch, feats)["ewc"].detach()) == 0.0
    assert all(float(f.sum()) > 0 for n, f in learner.fisher_.items() if n.startswith("backbone.layers"))
    values = []
    for scale in (0.01, 0.1):
        with torch.no_grad():
            moved = {n: p.clone() for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                p.add_(scale)
        values.append(float(learner.penalty(model, batch, feats)["ewc"].detach()))
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(moved[n] - scale)
    assert 0 < values[0] < values[1]


def test_progressive_leaves_earlier_columns_bit_identical():
    data = tiny_image_data(10, classes=4)
    s = split_by_classes(data, 2, test=data)
    snapshots = {}

    def snap(i, model, row):
        snapshots[i] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    r = train_stream("small-cnn:8", s, "progressive", train_config=FAST, on_experience_end=snap)
    before, after = snapshots[0], snapshots[1]
    frozen = [k for k in before if k.startswith(("columns.0.", "backbone.", "head.0."))]
    assert any("running_mean" in k for k in frozen) and len(frozen) > 10
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    # the new column and its adapters did train, and task 0 scores exactly as before
    initial = r.model._initial  # column 1 started from the backbone's initial weights
    assert any(not torch.equal(initial[k[len("columns.1."):]], v) for k, v in after.items() if k.startswith("columns.1."))
    laterals = [v for k, v in after.items() if k.startswith("laterals.1.")]
    assert laterals and any(v.abs().sum() > 0 for v in laterals)
    assert r.accuracy[1, 0] == r.accuracy[0, 0]
    assert all(not p.requires_grad for p in r.model.columns[0].parameters())


def test_naive_forgets_more_than_replay_in_class_incremental():
    train, test = blobs(40)
    s = split_by_classes(train, 2, test=test, scenario="class")
    cfg = TrainConfig(epochs=10, lr=3e-3, head_lr=3e-3, batch_size=16, progress=False)
    naive = train_stream("mlp:16", s, "naive", train_config=cfg)
    replay = train_stream("mlp:16", s, "replay", {"buffer_size": 40}, cfg)
    assert naive.accuracy.shape == replay.accuracy.shape == (2, 2)
    assert naive.random_init is None and np.isnan(naive.metrics["forward_transfer"])
    assert naive.accuracy[0, 0] > 0.9 and naive.accuracy[0, 1] == 0.0  # unseen classes are never predicted
    assert naive.metrics["forgetting"] > replay.metrics["forgetting"] + 0.3
    assert replay.metrics["average_accuracy"] > naive.metrics["average_accuracy"]


@pytest.mark.parametrize("learner", ["lwf", "ewc", "progressive", "replay"])
def test_every_learner_runs_task_and_domain_streams(learner):
    train, test = blobs(16)
    for s in (split_by_classes(train, 2, test=test), permuted(train, 2, test=test)):
        r = train_stream("mlp:8", s, learner, train_config=FAST)
        assert r.accuracy.shape == (2, 2) and r.random_init.shape == (2,)
        assert ((0 <= r.accuracy) & (r.accuracy <= 1)).all() and {row["experience"] for row in r.history} == {0, 1}
        extra = {"lwf": "lwf", "ewc": "ewc"}.get(learner)
        if extra:
            assert any(extra in row for row in r.history if row["experience"] == 1)


def test_end_to_end_with_a_packaged_model():
    from transferkit.data import load_dataset, sample_per_class

    try:
        train, test = load_dataset("fashion-mnist")
    except DataError as e:
        pytest.skip(str(e))
    train, test = sample_per_class(train, 8, 0), sample_per_class(test, 4, 0)
    s = split_by_classes(train, groups=[[0, 1], [7, 9]], test=test)
    r = train_stream("efficientnet-lite:0", s, "lwf", train_config=TrainConfig(epochs=1, batch_size=16, progress=False),
                     backbone_options={"image_size": 32})
    assert r.accuracy.shape == (2, 2) and r.random_init.shape == (2,)
    assert set(r.metrics) == {"average_accuracy", "forgetting", "backward_transfer", "forward_transfer"}
    assert np.isfinite(list(r.metrics.values())).all()
    assert r.model.backbone.spec == "efficientnet-lite:0" and [e.classes for e in s][1] == ("Sneaker", "Ankle boot")


# ---------------------------------------------------------------- report pieces


def test_heatmap_and_tables():
    a = np.array([[0.9, 0.5], [0.6, 0.8]])
    png = accuracy_matrix_png({"naive": a, "replay": a[::-1].copy()}, task_names=["A", "B"], title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    table = accuracy_matrix_table(a, ["A", "B"])
    assert "| B | 60.0 | 80.0 |" in table
    m = metrics_table({"naive": {**continual_metrics(a), "average_accuracy": (0.7, 0.6, 0.8)}})
    assert "70.0 [60.0, 80.0]" in m and "n/a" in m and "-30.0" in m
    with pytest.raises(DataError):
        accuracy_matrix_png(np.zeros((2, 3)))
