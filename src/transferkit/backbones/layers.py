"""Intermediate-layer backbones: ``SPEC@LAYER`` pools the output of one layer of a model.

``efficientnet-lite:0@block5`` is EfficientNet-Lite0 cut after its sixth
stage: its pooled 192-d output is the feature, and the layers after it are
never run (the forward pass stops at the layer). Early layers of an ImageNet
model are often the better candidate when the target is far from the source
(grey, low-resolution, few labels), so ``transferkit rank`` takes them as
candidates like any other backbone.

Layer names: ``blockN`` for the N-th element of the model's main stack
(``blocks``/``stages``/``layers``/``features`` of timm and torchvision
models, ResNet's ``layer1..4``, ``encoder.layer`` of BERT-style encoders),
or a dotted module path of ``named_modules()`` (``model.blocks.5.0``), or
its unique last part (``layer3``).

Pooling: a 4-D output ``[B, C, H, W]`` is averaged over space; a token
output ``[B, T, D]`` is averaged over the tokens the attention mask keeps.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.errors import DataError, unknown_name

#: Names of a model's main stack of layers (the end of a module path), tried in order.
STACKS = ("blocks", "stages", "layers", "encoder.layer", "features", "body")


class _Stop(Exception):
    """Raised by the layer hook to end the forward pass once the layer ran."""


def layer_aliases(backbone: Backbone) -> dict[str, str]:
    """``blockN`` -> module path, for the first main stack found in the backbone."""
    modules = dict(backbone.named_modules())
    for suffix in STACKS:
        for path, stack in modules.items():
            if ((path == suffix or path.endswith("." + suffix)) and isinstance(stack, (nn.ModuleList, nn.Sequential))
                    and len(stack) > 1):
                return {f"block{i}": f"{path}.{i}" for i in range(len(stack))}
    numbered = [path for path in modules if re.search(r"(^|\.)layer\d+$", path)]  # ResNet's layer1..layer4
    return {f"block{i}": path for i, path in enumerate(numbered)} if len(numbered) > 1 else {}


def split_layer(name: str) -> tuple[str, str | None]:
    """``"0@block5"`` -> ``("0", "block5")``; a path holding ``/`` after ``@`` is not a layer."""
    base, sep, layer = name.rpartition("@")
    if not sep or not layer or "/" in layer or "\\" in layer:
        return name, None
    return base, layer


def _pool(out, batch) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise DataError(f"The layer returned {type(out).__name__}, not a tensor; choose another layer.")
    if out.dim() == 4:
        return out.float().mean(dim=(2, 3))
    if out.dim() == 3:
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is None:
            return out.mean(dim=1)
        m = mask.to(out.dtype).unsqueeze(-1)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)
    if out.dim() == 2:
        return out
    raise DataError(f"Cannot pool a layer output of shape {tuple(out.shape)}; choose another layer.")


class LayerBackbone(Backbone):
    """The pooled output of ``layer`` of ``base``; the layers after it do not run.

    Args:
        base: the full backbone.
        layer: ``blockN`` or a dotted module path of ``base``.

    Raises:
        UnknownNameError: the layer is neither an alias nor a module path
            (the message lists the aliases).
    """

    def __init__(self, base: Backbone, layer: str):
        super().__init__()
        aliases = layer_aliases(base)
        modules = dict(base.named_modules())
        path = aliases.get(layer, layer)
        if path not in modules:  # a unique path suffix: 'layer3' for 'model.layer3'
            ends = [n for n in modules if n.endswith("." + layer)]
            path = ends[0] if len(ends) == 1 else path
        if not path or path not in modules:
            choices = list(aliases) or [n for n in modules if n and n.count(".") <= 2][:30]
            raise unknown_name(f"layer of {base.spec}", layer, choices)
        self.base, self.layer, self.path = base, layer, path
        self.spec = f"{base.spec}@{layer}"
        self.modality, self.preprocess, self.pretrained = base.modality, base.preprocess, base.pretrained
        self._captured: torch.Tensor | None = None
        modules[path].register_forward_hook(self._hook)
        self._groups = self._find_used_groups()

    def _hook(self, module, inputs, output):
        self._captured = output
        raise _Stop

    def forward_features(self, batch) -> torch.Tensor:
        try:
            self.base.forward_features(batch)
        except _Stop:
            pass
        out, self._captured = self._captured, None
        if out is None:
            raise RuntimeError(f"Layer {self.path} of {self.base.spec} did not run in the forward pass.")
        return _pool(out, batch)

    def _dummy_batch(self):
        if self.modality == "image":
            size = self.preprocess.size
            return torch.zeros(2, 3, size, size)
        return self.preprocess(["a short example", "another example text"])

    def _find_used_groups(self) -> list[list[nn.Parameter]]:
        """Run once on a dummy batch: the feature width, and the base's layer groups cut to the parameters used."""
        was_training = self.training
        self.eval()
        with torch.enable_grad():
            feats = self.forward_features(self._dummy_batch())
            self.num_features = int(feats.shape[1])
            grads = torch.autograd.grad(feats.sum(), [p for p in self.base.parameters() if p.requires_grad],
                                        allow_unused=True)
            params = [p for p in self.base.parameters() if p.requires_grad]
            used = {id(p) for p, g in zip(params, grads) if g is not None}
        self.train(was_training)
        groups = [[p for p in g if id(p) in used] for g in self.base.layer_groups()]
        return [g for g in groups if g]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The base's groups cut to the parameters before the layer; the unused rest stays out of training."""
        return self._groups

    def check_groups(self) -> None:
        seen = [id(p) for g in self._groups for p in g]
        assert len(seen) == len(set(seen)), "a parameter appears in two layer groups"

    def architecture(self) -> dict:
        arch = self.base.architecture()
        return {**arch, "spec": f"{arch['spec']}@{self.layer}"}

    def architecture_options(self) -> dict:
        return self.base.architecture_options()

    def save_files(self, directory: str | Path) -> None:
        self.base.save_files(directory)
