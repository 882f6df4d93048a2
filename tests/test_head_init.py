"""LP-FT: fine-tuning starts from a head fitted on the frozen features (strategies/head_init.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Identity
from transferkit.data import from_arrays
from transferkit.strategies import make_strategy
from transferkit.strategies.linear_probe import fit_linear_head


class Pretrained(Identity):
    """Tabular rows as features through one trainable layer, flagged as pre-trained."""

    def __init__(self, d: int, pretrained: bool):
        super().__init__(d)
        self.spec, self.pretrained = "identity-pretrained", pretrained
        self.layer = nn.Linear(d, d)
        with torch.no_grad():
            self.layer.weight.copy_(torch.eye(d))
            self.layer.bias.zero_()

    def forward_features(self, x):
        return self.layer(x)

    def layer_groups(self):
        return [list(self.layer.parameters())]


def _blobs(n: int = 30, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n)
    X = rng.normal(size=(3 * n, d)).astype(np.float32) + 2.0 * np.eye(3, d)[y]
    return from_arrays(X, y, label_names=["a", "b", "c"])


def _prepared(pretrained: bool, **options):
    data, backbone = _blobs(), Pretrained(6, pretrained)
    strategy = make_strategy("finetune", options)
    torch.manual_seed(0)
    return strategy, strategy.prepare(backbone, data), data


def test_probe_fits_the_head_of_a_pretrained_backbone_to_the_linear_probe():
    strategy, model, data = _prepared(True, head_init="probe")
    probe, info = fit_linear_head(data.task, np.asarray(data.items, np.float32), data.targets, seed=0)
    X = torch.as_tensor(np.asarray(data.items, np.float32))
    with torch.no_grad():
        got, want = model.head(X), probe(X)
    assert strategy.head_init_["C"] == info["C"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1).numpy() == data.targets).mean() > 0.8  # a head that already classifies


@pytest.mark.parametrize("pretrained, options", [(False, {}), (True, {}), (True, {"head_init": "random"})])
def test_random_head_by_default(pretrained, options):
    strategy, model, _ = _prepared(pretrained, **options)
    torch.manual_seed(0)
    fresh = nn.Linear(6, 3)  # what the seeded default initialisation gives
    assert strategy.head_init_ is None
    torch.testing.assert_close(model.head[-1].weight, fresh.weight)


def test_probe_on_a_scratch_backbone_when_asked():
    strategy, model, data = _prepared(False, head_init="probe")
    assert strategy.head_init_ is not None
    X = torch.as_tensor(np.asarray(data.items, np.float32))
    with torch.no_grad():
        assert (model.head(X).argmax(1).numpy() == data.targets).mean() > 0.8


def test_unknown_head_init_names_the_choices():
    with pytest.raises(Exception, match="probe"):
        make_strategy("finetune", {"head_init": "zeros"})
