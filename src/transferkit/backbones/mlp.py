"""``mlp:WIDTHS``: a small multilayer perceptron for tabular data, trained from scratch.

The tabular counterpart of ``small-cnn``: the network a practitioner trains on a
table of measurements. ``mlp:64x64`` has two hidden layers of 64 units. Inputs
are standardised by a BatchNorm layer in front (its running mean and variance
are learnt from the training batches and stored in the bundle), so raw columns
on different scales (grams and millimetres) need no preprocessing.
``in_features`` is the table's width; :func:`transferkit.fit` passes it.
"""
from __future__ import annotations

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, TabularPreprocess
from transferkit.errors import ConfigError

DEFAULT_WIDTHS = (64, 64)


def parse_widths(name: str) -> tuple[int, ...]:
    """``"64x32"`` -> ``(64, 32)``; empty -> the default."""
    if not name:
        return DEFAULT_WIDTHS
    try:
        widths = tuple(int(w) for w in name.lower().split("x"))
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"mlp takes its hidden widths as the name, like 'mlp:64x64'. Got {name!r}.")
    return widths


class MLP(Backbone):
    """Input BatchNorm, then Linear-ReLU layers; the features are the last hidden layer.

    Args:
        in_features: number of input columns.
        widths: hidden layer widths.
        dropout: dropout after each hidden layer.
    """

    modality = "tabular"

    def __init__(self, in_features: int, widths: tuple[int, ...] = DEFAULT_WIDTHS, dropout: float = 0.0):
        super().__init__()
        if int(in_features) < 1:
            raise ConfigError(f"The 'in_features' option of mlp must be an int in [1, inf). Got {in_features!r} instead.")
        self.in_features, self.widths, self.dropout = int(in_features), tuple(widths), float(dropout)
        self.standardise = nn.BatchNorm1d(self.in_features)
        layers, cin = [], self.in_features
        for w in self.widths:
            layers.append(nn.Sequential(nn.Linear(cin, w), nn.ReLU(), nn.Dropout(dropout) if dropout else nn.Identity()))
            cin = w
        self.layers = nn.ModuleList(layers)
        self.num_features = cin
        self.spec = "mlp:" + "x".join(map(str, self.widths))
        self.preprocess = TabularPreprocess()

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.standardise(batch.float())
        for layer in self.layers:
            x = layer(x)
        return x

    def layer_groups(self) -> list[list[nn.Parameter]]:
        groups = [list(layer.parameters()) for layer in self.layers]
        groups[0] = list(self.standardise.parameters()) + groups[0]
        return groups

    def architecture_options(self) -> dict:
        return {"in_features": self.in_features, "dropout": self.dropout}


@register_source("mlp", help="small MLP trained from scratch on tabular data (standardising input BatchNorm), "
                             "e.g. mlp:64x64", examples=("mlp:64x64", "mlp:128"), options=("in_features", "dropout"),
                 modality="tabular")
def _mlp(name: str, *, pretrained: bool = False, files_dir=None, in_features: int | None = None,
         dropout: float = 0.0, **_) -> MLP:
    # `pretrained` is ignored: like small-cnn, this backbone exists to be trained from scratch.
    if in_features is None:
        raise ConfigError("mlp needs the table's width: load_backbone('mlp:64x64', in_features=4) "
                          "(transferkit.fit passes it from the data).")
    return MLP(int(in_features), parse_widths(name), float(dropout))
