"""``small-cnn:SIZE``: the small convolutional network a practitioner trains from scratch.

It is the strong no-transfer baseline for images (ASSETS.md: a ~100k-parameter
CNN at 28 px beat ImageNet transfer on Fashion-MNIST with 10 labels per class).
Its depth follows the image size: one 2x down-sampling stage per doubling
above 7 px, so 8 px digits get one stage and 28 px images two.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from transferkit.backbones import BACKBONE_SOURCES
from transferkit.backbones.base import Backbone, ImagePreprocess
from transferkit.constraints import MAX_IMAGE_SIZE
from transferkit.errors import ConfigError, check_range

WIDTHS = (32, 64, 96, 128)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(Backbone):
    """Conv-BN-ReLU stages (two convs each, then 2x max-pool), global average pooling.

    Args:
        size: input side in pixels (the data's native resolution).
        stages: number of down-sampling stages; default from ``size``.
    """

    modality = "image"

    def __init__(self, size: int = 28, stages: int | None = None):
        super().__init__()
        check_range("small-cnn", "size", size, low=4, high=MAX_IMAGE_SIZE, kind="an int")
        self.size = int(size)
        self.stages = stages or max(1, min(len(WIDTHS) - 1, round(math.log2(size / 7)) + 1))
        blocks, cin = [], 3
        for i in range(self.stages):
            cout = WIDTHS[i]
            blocks.append(nn.Sequential(_block(cin, cout), _block(cout, cout), nn.MaxPool2d(2) if i < self.stages - 1 else nn.Identity()))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.num_features = cin
        self.spec = f"small-cnn:{self.size}"
        self.preprocess = ImagePreprocess(self.size, [0.5] * 3, [0.25] * 3)

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch
        for b in self.blocks:
            x = b(x)
        return x.mean(dim=(2, 3))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(b.parameters()) for b in self.blocks]


def _small_cnn(name: str, *, pretrained: bool = False, files_dir=None, image_size: int | None = None, **_) -> SmallCNN:
    """``small-cnn:SIZE`` for SIZE-px images; ``image_size``, when given, wins (as the native size of other backbones).

    The size is the architecture (its depth follows it), so the built
    backbone's spec names the size it was built for: ``small-cnn:16`` with
    ``image_size=32`` is ``small-cnn:32``. Without either, 28 px.
    """
    # `pretrained` is ignored: nothing pre-trained exists, the point of this backbone is training from scratch.
    try:
        named = int(name) if name else None
    except ValueError:
        raise ConfigError(f"small-cnn takes the image size as its name, like 'small-cnn:28'. Got {name!r}.") from None
    return SmallCNN(int(image_size or named or 28))


BACKBONE_SOURCES.register("small-cnn", _small_cnn, help="small CNN trained from scratch (the image baseline), e.g. small-cnn:28")
