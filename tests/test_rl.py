"""Reinforcement-learning transfer (transferkit.rl, `transferkit rl`): variants, bundles, strategies, metrics, CLI.

One PPO source policy is trained on CartPole-v1 for 10,240 steps (about 10 s on
one core) and shared by the module; every other run is a few thousand steps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("gymnasium")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from transferkit import rl  # noqa: E402
from transferkit.cli.main import app  # noqa: E402
from transferkit.errors import BundleError, ConfigError, UnknownNameError  # noqa: E402
from transferkit.rl.bundle import load_policy  # noqa: E402
from transferkit.rl.variants import DomainRandomization  # noqa: E402

runner = CliRunner()
NEAR = "CartPole-v1:length=0.6"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "src"
    rl.train("CartPole-v1", "PPO", steps=10_000, seed=0, eval_every=100_000, eval_episodes=5, out=out)
    return out


def one_error_line(result) -> str:
    """The CLI's user-error contract: exit code 2, one 'error:' line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------- variants


def test_variant_spec_round_trip():
    v = rl.parse_variant("CartPole-v1:length=1.0,masspole=0.3..0.5")
    assert (v.env_id, v.fixed, v.ranges) == ("CartPole-v1", {"length": 1.0}, {"masspole": (0.3, 0.5)})
    assert rl.parse_variant(str(v)) == v
    assert rl.parse_variant("Acrobot-v1") == rl.EnvVariant("Acrobot-v1")


def test_variant_sets_physics_and_what_derives_from_it():
    env = rl.make_env("CartPole-v1:length=1.0,masspole=0.3")
    base = env.unwrapped
    assert (base.length, base.masspole) == (1.0, 0.3)
    # CartPole's step() reads these two: they must follow the attributes they derive from
    assert base.polemass_length == pytest.approx(0.3) and base.total_mass == pytest.approx(1.3)


def test_domain_randomisation_draws_at_each_reset_within_the_range():
    env = rl.make_env("CartPole-v1:length=0.3..0.8")
    assert isinstance(env, DomainRandomization)
    drawn = []
    for i in range(20):
        env.reset(seed=7 if i == 0 else None)
        drawn.append(env.unwrapped.length)
        assert env.unwrapped.polemass_length == pytest.approx(env.unwrapped.masspole * env.unwrapped.length)
    assert all(0.3 <= x <= 0.8 for x in drawn) and len(set(drawn)) == 20
    again = rl.make_env("CartPole-v1:length=0.3..0.8")
    again.reset(seed=7)
    assert again.unwrapped.length == drawn[0]  # seeded: the same draws


@pytest.mark.parametrize("spec, error, words", [
    ("CartPole-v1:lenght=1.0", UnknownNameError, ["'lenght'", "Did you mean 'length'", "masspole", "force_mag"]),
    ("CartPole-v1:length=abc", ConfigError, ["'abc' is not a number"]),
    ("CartPole-v1:length=500", ConfigError, ["'length'", "[0.01, 100]", "500.0", "Valid attributes"]),
    ("CartPole-v1:length=0.8..0.3", ConfigError, ["LOW > HIGH"]),
    ("CartPole-v1:length", ConfigError, ["not NAME=VALUE"]),
    ("CartPol-v1", UnknownNameError, ["'CartPol-v1'", "CartPole-v1"]),
])
def test_bad_variants_are_refused_with_the_valid_choices(spec, error, words):
    with pytest.raises(error) as info:
        rl.make_env(spec)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("spec, words", [
    ("CartPole-v1:lenght=1.0", ["Valid attributes", "length"]),
    ("CartPole-v1:length=-1", ["must be a number in"]),
    ("NoSuchEnv-v0", ["Unknown environment id"]),
])
def test_cli_bad_variant_is_one_line_exit_2_and_writes_nothing(tmp_path, spec, words):
    out = tmp_path / "never"
    line = one_error_line(runner.invoke(app, ["rl", "train", "--env", spec, "--steps", "100", "--out", str(out)]))
    assert all(w in line for w in words), line
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bundle


def test_bundle_round_trip_and_no_pickle(source):
    manifest = json.loads((source / "manifest.json").read_text())
    assert manifest["format"] == "transferkit-rl-policy" and manifest["algorithm"] == "PPO"
    assert manifest["env"]["spec"] == "CartPole-v1" and manifest["hyperparameters"]["n_steps"] == 32
    assert {"stable-baselines3", "gymnasium", "torch"} <= set(manifest["versions"])
    assert sorted(p.name for p in source.iterdir()) == ["curve.csv", "manifest.json", "policy.safetensors"]
    saved = load_file(str(source / "policy.safetensors"))
    model, _ = load_policy(source)
    state = model.policy.state_dict()
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    obs = np.stack([model.observation_space.sample() for _ in range(64)])
    again, _ = load_policy(source)
    assert np.array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])


def test_bundle_refuses_overwrite_and_tampering(source, tmp_path):
    with pytest.raises(BundleError, match="already exists"):
        rl.train("CartPole-v1", steps=0, out=source)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in source.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    data = bytearray((copy / "policy.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_policy(copy)


# ---------------------------------------------------------------- transfer


def test_mismatched_spaces_are_refused_saying_what_differs(source, tmp_path):
    with pytest.raises(ConfigError) as info:
        rl.transfer(source, "Acrobot-v1", "finetune", steps=100)
    msg = str(info.value)
    assert "observation space shape: source [4] vs target [6]" in msg and "action space n: source 2 vs target 3" in msg
    line = one_error_line(runner.invoke(app, ["rl", "transfer", "--source", str(source), "--target", "Acrobot-v1",
                                              "--steps", "100", "--out", str(tmp_path / "t")]))
    assert "spaces differ" in line and not (tmp_path / "t").exists()


def test_transferred_jumpstart_is_above_scratch_on_a_near_target(source):
    # 20 sampled-action episodes per seed, 3 seeds; measured: ~145 for the source policy, ~25 for scratch
    for seed in range(3):
        ours = rl.transfer(source, NEAR, "finetune", steps=0, seed=seed, eval_episodes=20).metrics["jumpstart"]
        base = rl.transfer(source, NEAR, "scratch", steps=0, seed=seed, eval_episodes=20).metrics["jumpstart"]
        assert ours > base + 50, (seed, ours, base)


def test_frozen_features_trains_only_the_new_heads(source):
    res = rl.transfer(source, NEAR, "frozen-features", steps=512, eval_every=10_000, eval_episodes=1)
    src = load_file(str(source / "policy.safetensors"))
    now = res.model.policy.state_dict()
    trunk = [k for k in src if k.startswith("mlp_extractor.")]
    heads = [k for k in src if k.startswith(("action_net.", "value_net."))]
    assert trunk and heads
    assert all(torch.equal(now[k], src[k]) for k in trunk)
    assert not any(torch.equal(now[k], src[k]) for k in heads)
    assert res.manifest["transfer"]["parameters_frozen"] == sum(src[k].numel() for k in trunk)


def test_l2sp_stays_closer_to_the_source_than_finetune(source):
    src = load_file(str(source / "policy.safetensors"))

    def drift(strategy, **kw):
        res = rl.transfer(source, "CartPole-v1:length=2.0", strategy, steps=1024, seed=1, eval_every=10_000,
                          eval_episodes=1, **kw)
        now = res.model.policy.state_dict()
        return sum(float((now[k] - src[k]).pow(2).sum()) for k in src)

    free, pulled = drift("finetune"), drift("l2-sp", l2sp_weight=100.0)
    assert 0 < pulled < 0.5 * free, (pulled, free)


def test_curve_metrics_follow_taylor_and_stone():
    m = rl.curve_metrics([0, 100, 200, 300], [10.0, 30.0, 50.0, 50.0], threshold=45)
    assert m["jumpstart"] == 10.0 and m["time_to_threshold"] == 200
    assert m["auc"] == pytest.approx((20 + 40 + 50) * 100 / 300) and m["asymptotic"] == pytest.approx(130 / 3)
    assert rl.curve_metrics([0, 100], [1.0, 2.0], threshold=5)["time_to_threshold"] is None


def test_compare_end_to_end_writes_report_and_verdicts(source, tmp_path):
    out = tmp_path / "cmp"
    res = rl.compare_transfer(source, [NEAR], ["finetune"], seeds=2, steps=1024, eval_every=512, eval_episodes=3,
                              threshold=100, out=out)
    assert len(res.runs) == 4 and set(res.runs["kind"]) == {"transfer", "scratch"}
    assert list(res.verdicts["strategy"]) == ["finetune"] and res.verdicts["test"][0] == "paired by seed, n=2"
    assert {"runs.csv", "summary.csv", "verdicts.csv", "curves.csv", "learning_curves.png", "report.md",
            "settings.json"} <= {p.name for p in out.iterdir()}
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| target | strategy | jumpstart" in (out / "report.md").read_text()
    with pytest.raises(BundleError, match="already exists"):
        rl.compare_transfer(source, [NEAR], ["finetune"], seeds=1, steps=10, out=out)


# ---------------------------------------------------------------- CLI end to end


def test_cli_transfer_evaluate_export(source, tmp_path):
    tgt = tmp_path / "tgt"
    r = runner.invoke(app, ["rl", "transfer", "--source", str(source), "--target", NEAR, "--strategy", "l2-sp",
                            "--steps", "512", "--eval-every", "256", "--eval-episodes", "2", "--out", str(tgt)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tgt / "manifest.json").read_text())
    assert manifest["transfer"]["strategy"] == "l2-sp" and manifest["env"]["params"] == {"length": 0.6}
    from transferkit.strategies.regularizers import L2SP

    assert manifest["transfer"]["l2sp_weight"] == L2SP.default_weight  # no --l2sp-weight: the regularizer's own
    assert manifest["curve"][0]["steps"] == 0 and manifest["curve"][-1]["steps"] >= 512

    r = runner.invoke(app, ["rl", "evaluate", str(tgt), "--episodes", "3", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["episodes"] == 3 and len(info["returns"]) == 3 and info["env"] == NEAR

    r = runner.invoke(app, ["rl", "export", str(tgt), "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    exported = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert exported["parity"] == {"samples": 256, "passed": True, "agreement": 1.0}
    line = one_error_line(runner.invoke(app, ["rl", "export", str(tgt), "--out", str(tmp_path / "onnx")]))
    assert "already exists" in line


def test_cli_unknown_strategy_and_hyperparameter(source, tmp_path):
    line = one_error_line(runner.invoke(app, ["rl", "transfer", "--source", str(source), "--target", NEAR,
                                              "--strategy", "finetun", "--out", str(tmp_path / "a")]))
    assert "Did you mean 'finetune'" in line
    line = one_error_line(runner.invoke(app, ["rl", "train", "--env", "CartPole-v1", "--hp", "learning_rat=1e-3",
                                              "--out", str(tmp_path / "b")]))
    assert "Unknown hyper-parameter 'learning_rat'" in line and "learning_rate" in line


def test_compare_plan_picks_sources_per_strategy_and_seed():
    from transferkit.rl.compare import _for_seed, _plan

    plan = _plan({"single": "a", "dr": ["b0", "b1"]}, ["finetune@dr", "l2-sp"])
    assert plan == [("dr", ["b0", "b1"], "finetune"), ("single", "a", "l2-sp"), ("dr", ["b0", "b1"], "l2-sp")]
    assert [_for_seed(["b0", "b1"], s) for s in range(3)] == ["b0", "b1", "b0"] and _for_seed("a", 5) == "a"
    with pytest.raises(ConfigError, match="names the source 'other'"):
        _plan({"single": "a"}, ["finetune@other"])
    with pytest.raises(UnknownNameError, match="Did you mean 'frozen-features'"):
        _plan({"single": "a"}, ["frozen-feature"])


def test_cli_compare_two_sources(source, tmp_path):
    r = runner.invoke(app, ["rl", "compare", "--source", f"a={source}", "--source", f"b={source}", "--target", NEAR,
                            "--strategies", "finetune@a,finetune@b", "--seeds", "1", "--steps", "256",
                            "--eval-every", "256", "--eval-episodes", "2", "--threshold", "100"])
    assert r.exit_code == 0, r.output
    assert "finetune@a" in r.stdout and "finetune@b" in r.stdout and "scratch" in r.stdout
    assert "single seed" in r.stdout  # one seed: the verdict says its interval is unknown
