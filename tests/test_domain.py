"""Domain adaptation: losses and shift measures against hand computations, validators, data builders,
bad inputs, the gradient reversal, and an end-to-end adaptation that beats source-only on a synthetic shift.

The conformance test of every registered strategy (training and a bundle round trip, DA strategies
with a shifted target) is in ``test_strategies.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shapes_images
from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone, TabularPreprocess
from transferkit.data import from_arrays
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.domain_shift import coral_distance, coral_transform, mmd, proxy_a_distance
from transferkit.losses import coral_loss, dann_ramp, grad_reverse, mk_mmd
from transferkit.evaluation.domain_validation import (domain_importance_weights, importance_weighted_risk,
                                                      information_maximization, prediction_entropy, select_best,
                                                      soft_neighborhood_density, validator_values)
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import StepContext, predict_outputs
from transferkit.strategies.domain import domain_strategy_names
from transferkit.training import TrainConfig, Trainer

DEEP = ["dann", "cdan", "mmd", "coral", "self-training"]
LABELS = ["square", "bar", "noise"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second intra-op thread only adds contention (measured 10-50x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quiet(epochs: int = 2, **kw) -> Trainer:
    return Trainer(TrainConfig(epochs=epochs, progress=False, **kw))


@pytest.fixture
def shifted():
    """Source: the shapes task; target: other draws of it, inverted (dark shapes on a bright background)."""
    X, y = shapes_images()
    Xt, yt = shapes_images(seed=1)
    return from_arrays(X, y, label_names=LABELS), from_arrays(255 - Xt), from_arrays(255 - Xt, yt, label_names=LABELS)


# ----------------------------------------------------------------------------- losses and measures


def test_mk_mmd_zero_for_identical_samples_and_matches_a_hand_computation():
    x = torch.randn(20, 4, dtype=torch.float64)
    assert abs(float(mk_mmd(x, x))) < 1e-10
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]])
    # one kernel exp(-d²/b) with b = 2: K_ss = [[1, e^-.5], [e^-.5, 1]], K_tt = 1, K_st = [e^-4.5, e^-2]
    expected = (2 + 2 * math.exp(-0.5)) / 4 + 1 - 2 * (math.exp(-4.5) + math.exp(-2)) / 2
    assert float(mk_mmd(a, b, scales=[1.0], bandwidth=2.0)) == pytest.approx(expected, rel=1e-5)


def test_mmd_measure_grows_with_the_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert mmd(a, a) == pytest.approx(0.0, abs=1e-9)
    assert mmd(a, b) < 0.05 < mmd(a, b + 1.0) < mmd(a, b + 3.0)


def test_coral_loss_and_distance_by_hand():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(50, 3))
    assert coral_distance(xs, xs + 5.0) == pytest.approx(0.0, abs=1e-12)  # same covariance, other mean
    xt = rng.normal(size=(40, 3)) * [1.0, 2.0, 0.5]
    diff = np.cov(xs, rowvar=False) - np.cov(xt, rowvar=False)
    assert coral_distance(xs, xt) == pytest.approx((diff ** 2).sum() / (4 * 9))
    assert float(coral_loss(torch.from_numpy(xs), torch.from_numpy(xt))) == pytest.approx(coral_distance(xs, xt))


def test_closed_form_coral_recolours_source_to_target_statistics():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(500, 3))
    xt = rng.normal(size=(400, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]]) + [4.0, -1.0, 0.0]
    out = coral_transform(xs, xt, reg=1e-8)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.cov(xt, rowvar=False), atol=1e-6)
    np.testing.assert_allclose(out.mean(0), xt.mean(0), atol=1e-9)


def test_proxy_a_distance_near_zero_for_one_distribution_and_near_two_for_separable():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    assert proxy_a_distance(a, b) < 0.3
    assert proxy_a_distance(a, b + 6.0) > 1.9
    with pytest.raises(DataError, match="same width"):
        proxy_a_distance(a, b[:, :3])


def test_dann_ramp_rises_from_zero_to_one():
    values = [dann_ramp(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0, abs=1e-4)
    assert all(u < v for u, v in zip(values, values[1:]))
    assert dann_ramp(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)


def test_gradient_reversal_layer_negates_and_scales_the_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(3)
    (grad_reverse(x, 0.5) @ w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -0.5 * w.expand(5, 3).numpy(), rtol=1e-6)


def test_dann_step_reverses_the_domain_gradient_into_the_feature_extractor(shifted):
    """Through the strategy's own step: the backbone's gradient of the domain loss has the opposite sign
    (times lambda) of the gradient without reversal, and the discriminator's is unchanged."""
    source, target, _ = shifted
    s = make_strategy("dann")
    s.set_target(target)
    s._seed = 0
    torch.manual_seed(0)
    model = s.prepare(load_backbone("small-cnn:16"), source)
    model.eval()  # BatchNorm by running statistics: both passes compute the same features
    s.source_loss = lambda logits, batch: logits.sum() * 0.0  # the domain loss alone
    batch = s.train_dataset(model, source).collate(list(range(8)))
    body = [p for p in model.backbone.parameters()]
    disc = list(s.discriminator_.parameters())

    out = s.step(model, batch, StepContext(global_step=10, total_steps=10))  # progress 1
    out["loss"].backward()
    reversed_body = [p.grad.clone() for p in body]
    reversed_disc = [p.grad.clone() for p in disc]
    lam = float(out["lambda"])
    assert lam == pytest.approx(1.0, abs=1e-3)

    model.zero_grad(set_to_none=True)
    s.discriminator_.zero_grad(set_to_none=True)
    feats = model.backbone.forward_features(torch.cat([batch["inputs"], batch["target_inputs"]]))
    plain, _ = s.domain_loss(feats, len(batch["inputs"]))  # no reversal
    plain.backward()
    g_rev, g_plain = torch.cat([g.flatten() for g in reversed_body]), torch.cat([p.grad.flatten() for p in body])
    assert g_plain.norm() > 0
    assert float(torch.dot(g_rev, g_plain) / (g_rev.norm() * g_plain.norm())) == pytest.approx(-1.0, abs=1e-5)
    assert float((g_rev + lam * g_plain).norm() / g_plain.norm()) < 1e-4  # -lambda times, up to float32 sums
    d_rev, d_plain = torch.cat([g.flatten() for g in reversed_disc]), torch.cat([p.grad.flatten() for p in disc])
    assert float((d_rev - d_plain).norm() / d_plain.norm()) < 1e-4  # the discriminator's own gradient: unchanged


# ----------------------------------------------------------------------------- validators


def test_entropy_and_information_maximisation():
    sharp, flat = np.eye(3)[[0, 1, 2, 0]], np.full((4, 3), 1 / 3)
    assert prediction_entropy(sharp) == pytest.approx(0.0, abs=1e-9)
    assert prediction_entropy(flat) == pytest.approx(math.log(3))
    collapsed = np.eye(3)[[0, 0, 0, 0]]  # confident but all one class: low entropy, and no diversity
    assert prediction_entropy(collapsed) == pytest.approx(0.0, abs=1e-9)
    assert information_maximization(sharp) < information_maximization(collapsed)


def test_soft_neighbourhood_density_prefers_clustered_predictions():
    rng = np.random.default_rng(0)
    clustered = np.eye(3)[rng.integers(0, 3, 60)] * 0.9 + 0.1 / 3
    scattered = rng.dirichlet([1, 1, 1], 60)
    assert soft_neighborhood_density(clustered) > soft_neighborhood_density(scattered)


def test_importance_weighted_risk_and_domain_weights():
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    assert importance_weighted_risk(losses, np.ones(4)) == pytest.approx(2.5)
    assert importance_weighted_risk(losses, np.array([0, 0, 0, 4.0]), control_variate=False) == pytest.approx(4.0)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(400, 2))
    xt = rng.normal(size=(400, 2)) + [1.5, 0.0]
    w = domain_importance_weights(xs, xt)
    assert 0.8 < w.mean() <= 1.0 + 1e-9 and w.min() >= 0 and w.max() <= 10.0
    near, far = xs[:, 0] > 1.0, xs[:, 0] < -1.0
    assert w[near].mean() > 3 * w[far].mean()  # source points that look like the target weigh more


def test_validator_values_and_selection():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], 30)
    values = validator_values(p)
    assert set(values) == {"entropy", "infomax", "snd", "iwv"} and math.isnan(values["iwv"])
    full = validator_values(p, source_val_probs=p, source_val_targets=p.argmax(1), source_val_features=p,
                            target_features=p)
    assert np.isfinite(full["iwv"])
    assert select_best([0.5, 0.1, 0.3], "entropy") == 1
    assert select_best([0.5, float("nan"), 0.9], "snd") == 2
    with pytest.raises(ConfigError, match="No candidate"):
        select_best([float("nan")], "snd")


# ----------------------------------------------------------------------------- data builders


def test_fashion_mnist_m_is_deterministic_per_seed_and_changes_the_images():
    from transferkit.data import load_dataset, subsample
    from transferkit.data.domains import to_mnist_m

    try:
        _, test = load_dataset("fashion-mnist")
    except DataError:
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    part = subsample(test, 40, 0)
    a, b, c = to_mnist_m(part, seed=0), to_mnist_m(part, seed=0), to_mnist_m(part, seed=1)
    assert a.items.shape == (40, 28, 28, 3) and a.items.dtype == np.uint8
    np.testing.assert_array_equal(a.items, b.items)
    assert not np.array_equal(a.items, c.items)
    np.testing.assert_array_equal(a.targets, part.targets)
    grey = np.repeat(part.items[..., None], 3, -1)
    assert np.abs(a.items.astype(int) - grey).mean() > 20  # photo textures and colours, not the grey images
    assert (a.items.std(axis=-1) > 5).mean() > 0.5  # and colour: channels differ in most pixels


def test_fashion_mnist_m_refuses_colour_or_non_image_input():
    from transferkit.data.domains import to_mnist_m

    with pytest.raises(DataError, match="grey uint8"):
        to_mnist_m(from_arrays(np.zeros((4, 3), np.float32), [0, 1, 0, 1]))


def test_emoji_builder_names_the_debian_packages_when_fonts_are_missing(tmp_path, monkeypatch):
    from transferkit.data import domains, rendering

    with pytest.raises(DataError, match="unicode-data"):
        domains.load_emoji_styles(emoji_test=str(tmp_path / "missing.txt"))
    if not Path(domains.EMOJI_TEST).is_file():
        return
    monkeypatch.setattr(rendering, "NOTO_EMOJI_FONT", str(tmp_path / "NotoColorEmoji.ttf"))  # where the fonts are read
    with pytest.raises(DataError, match="apt-get install -y .*fonts-noto-color-emoji"):
        domains.load_emoji_styles(size=9)  # a size no earlier call cached


def test_emoji_styles_share_emoji_and_labels():
    from transferkit.data import domains

    if not (Path(domains.EMOJI_TEST).is_file() and Path(domains.NOTO_EMOJI_FONT).is_file()):
        pytest.skip("fonts-noto-color-emoji / fonts-symbola / unicode-data not installed")
    colour, _ = domains.load_emoji_styles("color", size=16)
    line, line_test = domains.load_emoji_styles("line", size=16)
    assert len(colour.label_names) == 9 and colour.label_names == line.label_names
    np.testing.assert_array_equal(colour.targets, line.targets)
    assert colour.items.shape[1:] == (16, 16, 3) and not np.array_equal(colour.items, line.items)
    assert (line.items.std(axis=-1) < 1).mean() > 0.99  # line art is black on white: no colour
    assert len(line_test) and not set(map(bytes, line_test.items[:50])) & set(map(bytes, line.items))


# ----------------------------------------------------------------------------- bad input


def test_da_strategy_without_target_names_the_argument(shifted):
    source, _, _ = shifted
    with pytest.raises(ConfigError, match=r"target_data=.*--target-data"):
        make_strategy("dann").fit(load_backbone("small-cnn:16"), source, None, quiet())


def test_fit_refuses_target_for_a_strategy_that_does_not_adapt(shifted):
    import transferkit as tk

    source, target, _ = shifted
    with pytest.raises(ConfigError, match="Domain-adaptation strategies do: .*dann"):
        tk.fit("small-cnn:16", source, "finetune", target_data=target, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="--target-data"):
        tk.fit("small-cnn:16", source, "coral", epochs=1, progress=False)


def test_source_and_target_of_different_input_kinds(shifted):
    from transferkit.data.domains import prepare_target_data

    source, _, _ = shifted
    texts = from_arrays(["a text", "another text"])
    with pytest.raises(DataError, match="same kind of input"):
        prepare_target_data(source, texts)
    s = make_strategy("mmd")
    s.set_target(texts)
    with pytest.raises(DataError, match="same kind of input"):
        s.fit(load_backbone("small-cnn:16"), source, None, quiet())
    tab = from_arrays(np.zeros((6, 3), np.float32), [0, 1, 0, 1, 0, 1])
    with pytest.raises(DataError, match="2 feature columns but the source has 3"):
        prepare_target_data(tab, np.zeros((4, 2), np.float32))


def test_labelled_target_of_a_single_class_is_refused(shifted):
    from transferkit.data.domains import prepare_target_data

    source, _, _ = shifted
    X, _ = shapes_images(n_per_class=2, seed=3)
    one = from_arrays(X, ["bar"] * len(X))
    with pytest.raises(DataError, match="single class \\('bar'"):
        prepare_target_data(source, target_labelled_data=one)
    unknown = from_arrays(X, ["circle"] * 3 + ["bar"] * 3)
    with pytest.raises(DataError, match="never had: 'circle'"):
        prepare_target_data(source, target_labelled_data=unknown)


def test_config_errors():
    assert {*DEEP, "source-only", "coral-linear", "reweight-linear"} <= set(domain_strategy_names())
    with pytest.raises(ConfigError, match="select"):
        make_strategy("dann", {"select": "accuracy"})
    with pytest.raises(ConfigError, match="weight"):
        make_strategy("mmd", {"weight": -1})
    with pytest.raises(ConfigError, match="not combined with domain adaptation"):
        make_strategy("coral", {"mixup": 0.2})
    with pytest.raises(ConfigError, match="threshold"):
        make_strategy("self-training", {"threshold": 1.5})


def test_iwv_selection_needs_a_source_validation_split(shifted):
    source, target, _ = shifted
    s = make_strategy("dann", {"select": "iwv"})
    s.set_target(target)
    with pytest.raises(ConfigError, match="val_fraction"):
        s.fit(load_backbone("small-cnn:16"), source, None, quiet())


# ----------------------------------------------------------------------------- training


def test_paired_batches_hold_target_inputs_drawn_with_a_seed(shifted):
    source, target, _ = shifted
    s = make_strategy("coral")
    s.set_target(target)
    s._seed = 0
    model = s.prepare(load_backbone("small-cnn:16"), source)
    a = s.train_dataset(model, source).collate([0, 1, 2, 3, 4])
    b = s.train_dataset(model, source).collate([0, 1, 2, 3, 4])
    assert set(a) == {"inputs", "targets", "task", "target_inputs"}
    assert a["target_inputs"].shape == a["inputs"].shape
    torch.testing.assert_close(a["target_inputs"], b["target_inputs"])


@pytest.mark.parametrize("name", DEEP)
def test_discriminator_stays_out_of_the_bundle_and_validators_are_recorded(name, shifted, tmp_path):
    source, target, target_eval = shifted
    s = make_strategy(name, {"select": "entropy"})
    s.set_target(target)
    model, history = s.fit(load_backbone("small-cnn:16"), source, source.subset(range(0, 36, 4)), quiet(3))
    assert all("target_entropy" in row and "val_accuracy" in row for row in history)
    assert sum(row["selected"] for row in history) == 1
    best = min(history, key=lambda r: r["target_entropy"])
    assert best["selected"]
    assert not any("discriminator" in k for k in model.state_dict())
    save_bundle(model, tmp_path / "b", {"strategy": {"name": name}})
    out = predict_outputs(model, target_eval)
    np.testing.assert_allclose(load(tmp_path / "b").outputs(target_eval.items), out, atol=1e-5)
    if name in ("dann", "cdan"):
        groups = s.param_groups(model, 1e-4, 1e-3)
        assert groups[-1]["name"] == "discriminator"


def test_semi_supervised_adaptation_uses_the_labelled_target(shifted):
    source, target, _ = shifted
    Xl, yl = shapes_images(n_per_class=2, seed=5)
    labelled = from_arrays(255 - Xl, np.array(LABELS)[yl].tolist(), label_names=LABELS)
    s = make_strategy("dann")
    s.set_target(target, labelled)
    assert len(s.labelled_pool(source)) == len(source) + len(labelled)
    assert len(s.target_pool()) == len(target) + len(labelled)
    model, history = s.fit(load_backbone("small-cnn:16"), source, None, quiet(1))
    assert history[0]["epoch"] == 1
    for name in ("coral-linear", "reweight-linear"):
        s = make_strategy(name)
        s.set_target(target, labelled)
        model, _ = s.fit(load_backbone("small-cnn:16"), source, None, quiet())
        assert predict_outputs(model, labelled).shape == (len(labelled), 3)


class TabularMLP(Backbone):
    """A two-layer MLP on tabular rows: the feature extractor of the synthetic-shift tests."""

    modality = "tabular"

    def __init__(self, d_in: int, width: int = 32):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d_in, width), nn.Linear(width, width)
        self.num_features, self.spec, self.preprocess = width, "test:mlp", TabularPreprocess()

    def forward_features(self, x):
        return torch.relu(self.l2(torch.relu(self.l1(x))))

    def layer_groups(self):
        return [list(self.l1.parameters()), list(self.l2.parameters())]


def spurious_shift(n: int, seed: int, target: bool):
    """Three 2-D Gaussian classes plus a third column: in the source it gives the class away
    (2 * class + noise), in the target it is a constant 6, unrelated to the class. A source-only
    model leans on that column and fails on the target; aligning the domains removes it."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n)
    x = np.array([[0, 2], [-1.7, -1], [1.7, -1]])[y] + rng.normal(0, 0.6, (3 * n, 2))
    extra = (6.0 if target else 2.0 * y[:, None]) + rng.normal(0, 0.3, (3 * n, 1))
    return np.concatenate([x, extra], 1).astype(np.float32), y


def target_accuracy(name: str, seed: int = 0) -> float:
    Xs, ys = spurious_shift(60, seed, target=False)
    Xt, yt = spurious_shift(60, 100 + seed, target=True)
    s = make_strategy(name)
    if name != "source-only":
        s.set_target(from_arrays(Xt))
    torch.manual_seed(seed)
    model, _ = s.fit(TabularMLP(3), from_arrays(Xs, ys), None, quiet(40, seed=seed, lr=1e-2, head_lr=1e-2))
    return float((predict_outputs(model, from_arrays(Xt, yt)).argmax(1) == yt).mean())


def test_adaptation_beats_source_only_on_a_synthetic_shift():
    """Target accuracy, seeds 0-7, one thread, 40 epochs: source-only 0.58-0.78, deep CORAL 0.81-0.96, DANN
    0.84-0.98 when this test was written; on 2026-12-07's fresh install (torch 2.14.1, accelerate 1.16.0) DANN
    gave 0.66-1.00 (seed 0: 0.74 instead of 0.96, seed 3: 0.66; the same on the code of 1958f23, which had
    passed CI, and with accelerate 1.15) while source-only and CORAL gave their earlier values. The cause is
    DANN's own sensitivity to floating-point rounding, not a library: on one machine, 2 threads instead of 1 (only
    the order of the sums changes) move DANN's seed 1 from 0.92 to 0.84 while source-only and CORAL stay the same
    to the last digit (``target_accuracy`` under ``torch.set_num_threads(1)``, then ``(2)``),
    so another CPU's kernels move it as much. The claim is therefore on the mean over seeds 0-3, paired by seed:
    +0.13 (DANN) and +0.22 (CORAL) on that install; 5 points are asked."""
    seeds = range(4)
    base = np.array([target_accuracy("source-only", s) for s in seeds])
    for name in ("dann", "coral"):
        gain = np.array([target_accuracy(name, s) for s in seeds]) - base
        assert gain.mean() > 0.05, (name, gain)


# ----------------------------------------------------------------------------- api and command line


def _write_images(folder: Path, X: np.ndarray, labels=None) -> None:
    from PIL import Image

    for i, img in enumerate(X):
        sub = folder / LABELS[labels[i]] if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"{i}.png")


def test_fit_with_target_data_records_the_domain_in_the_manifest(shifted, tmp_path):
    import transferkit as tk

    source, target, target_eval = shifted
    r = tk.fit("small-cnn:16", source, "dann", target_data=target, test_data=target_eval, epochs=1,
               out=tmp_path / "b", progress=False)
    da = r.manifest["domain_adaptation"]
    assert da["setting"] == "unsupervised" and da["target"]["n"] == len(target) and da["target_labelled"] is None
    assert "accuracy" in r.metrics and r.metrics["evaluated_on"] == "test"
    assert tk.load(tmp_path / "b").outputs(target_eval.items[:3]).shape == (3, 3)


def test_cli_fit_with_target_folder_and_shift_before_and_after(tmp_path):
    import typer
    from typer.testing import CliRunner

    from transferkit.cli import shift
    from transferkit.cli.main import app

    X, y = shapes_images()
    Xt, _ = shapes_images(seed=1)
    _write_images(tmp_path / "source", X, y)
    _write_images(tmp_path / "target", 255 - Xt)  # a flat folder: unlabelled
    runner = CliRunner()
    r = runner.invoke(app, ["fit", "--backbone", "small-cnn:16", "--data", str(tmp_path / "source"),
                            "--target-data", str(tmp_path / "target"), "--strategy", "coral", "--epochs", "1",
                            "--out", str(tmp_path / "bundle")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["domain_adaptation"]["target"]["name"] == "target"

    r = runner.invoke(app, ["fit", "--backbone", "small-cnn:16", "--data", str(tmp_path / "source"),
                            "--strategy", "mmd", "--epochs", "1", "--out", str(tmp_path / "b2")])
    assert r.exit_code == 2 and "--target-data" in r.output

    from transferkit.cli.errors import ErrorHandlingGroup

    cli = typer.Typer(cls=ErrorHandlingGroup)  # the real app's error handling
    shift.register(cli)
    cli.command("noop")(lambda: None)  # a second command keeps `shift` a named sub-command
    r = runner.invoke(cli, ["shift", "--source", str(tmp_path / "source"), "--target", str(tmp_path / "target"),
                            "--backbone", "small-cnn:16", "--bundle", str(tmp_path / "bundle"), "--projection", "pca",
                            "--out", str(tmp_path / "shift")])
    assert r.exit_code == 0, r.output
    figures = json.loads((tmp_path / "shift" / "shift.json").read_text())
    assert len(figures["measures"]) == 2
    for m in figures["measures"].values():
        assert set(m) == {"mmd", "proxy_a_distance", "coral"} and 0 <= m["proxy_a_distance"] <= 2
    assert (tmp_path / "shift" / "shift_projection.png").read_bytes()[:4] == b"\x89PNG"
