"""Where adapters go and the layers written here: target-module resolution per architecture, rank
checks, the bottleneck and parallel conv adapter layers, activation checkpointing.

Used by :mod:`transferkit.strategies.parameter_efficient`; see its docstring for the methods.
"""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


# -- which modules to adapt -------------------------------------------------------

def _plain(module: nn.Module) -> bool:
    """Linear layers and ungrouped convolutions of the exact torch types (no 'same'-padding subclasses)."""
    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1)


def adaptable_modules(backbone: Backbone) -> dict[str, nn.Module]:
    """Name -> module of every layer an adapter can target: plain linear layers and convolutions,
    outside the source head, the unused pooler of BERT-style encoders and a language model's output layer
    (the head of generative tasks: kept as pre-trained, and tied to the input embeddings in most models)."""
    out = {}
    output_layer = getattr(backbone, "lm_head", None)
    for name, module in backbone.named_modules():
        if not name or name.startswith("source_head") or ".pooler." in f".{name}." or module is output_layer:
            continue
        if _plain(module):
            out[name] = module
    return out


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.endswith("." + pattern)


def resolve_targets(backbone: Backbone, patterns: list[str], default: list[str], method: str) -> list[str]:
    """Module names of ``backbone`` that ``patterns`` select (``default`` when no pattern is given).

    Raises:
        ConfigError: a pattern matches no adaptable module (the message lists examples), or none is left.
    """
    modules = adaptable_modules(backbone)
    if not patterns:
        if not default:
            raise ConfigError(f"{method}: found no layer to adapt in backbone '{backbone.spec}'. "
                              f"Give 'target_modules'; adaptable modules: {_examples(modules)}.")
        return default
    chosen: list[str] = []
    for pat in patterns:
        hits = [n for n in modules if _matches(n, pat)]
        if not hits:
            raise ConfigError(f"{method}: target module pattern {pat!r} matches no adaptable layer (linear or "
                              f"ungrouped convolution) of backbone '{backbone.spec}'. Examples: {_examples(modules)}.")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _examples(modules: dict[str, nn.Module], k: int = 6) -> str:
    names = list(modules)
    picks = names[:: max(1, len(names) // k)][:k]
    return ", ".join(picks) + (f" ... ({len(names)} in all)" if len(names) > k else "") if names else "none"


# Module-name suffixes per architecture family: BERT, timm ViT, DistilBERT, CLIP; Llama-style decoders last.
_ATTENTION_OUT = ("attention.output.dense", "attn.proj", "attention.out_lin", "attention.out_proj", "self_attn.o_proj")
_FFN_OUT = ("output.dense", "mlp.fc2", "ffn.lin2", "fc2", "mlp.down_proj")
_IA3_KEYS_VALUES = ("attention.self.key", "attention.self.value", "attn.qkv", "attention.k_lin", "attention.v_lin",
                    "self_attn.k_proj", "self_attn.v_proj")


def is_ffn_output(name: str) -> bool:
    return any(name.endswith(s) for s in _FFN_OUT) and not any(name.endswith(s) for s in _ATTENTION_OUT)


def default_targets(backbone: Backbone, method: str) -> tuple[list[str], list[str]]:
    """(targets, feed-forward targets) a method adapts by default on this architecture.

    * ``lora``: every linear layer of a transformer (query, key, value, output and
      feed-forward projections: adapting all of them beats query/value only at the
      same rank, Dettmers et al. 2023, https://arxiv.org/abs/2305.14314); every
      plain convolution and linear layer of a conv net.
    * ``ia3``: keys, values and the feed-forward output of a transformer (PEFT's
      default for BERT); every plain convolution of a conv net.
    * ``adapter``: the attention and feed-forward output projections of a transformer;
      the plain convolutions of a conv net.
    """
    modules = adaptable_modules(backbone)
    names = list(modules)
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    transformer = any(is_ffn_output(n) for n in names)
    if method == "ia3":
        if transformer:
            ffn = [n for n in names if is_ffn_output(n)]
            return [n for n in names if any(n.endswith(s) for s in _IA3_KEYS_VALUES)] + ffn, ffn
        return convs, []
    if method == "adapter":
        if transformer:
            return [n for n in names if any(n.endswith(s) for s in _ATTENTION_OUT) or is_ffn_output(n)], []
        return convs, []
    return names, []


def _rank_limit(m: nn.Module) -> int:
    """The largest useful rank of a LoRA update of ``m``: ``min(fan_in, fan_out)``."""
    if isinstance(m, nn.Linear):
        return min(m.in_features, m.out_features)
    return min(m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels)


def check_rank(backbone: Backbone, targets: list[str], rank: int, method: str, explicit: bool) -> list[str]:
    """Targets that can take a rank-``rank`` update. Chosen by default, narrower layers are left out;
    named by the user, they are an error."""
    modules = dict(backbone.named_modules())
    narrow = [n for n in targets if rank > _rank_limit(modules[n])]
    if narrow and explicit:
        m = modules[narrow[0]]
        raise ConfigError(f"{method}: rank {rank} is larger than layer {narrow[0]!r} ({type(m).__name__} "
                          f"{tuple(m.weight.shape)}) allows; use rank <= {_rank_limit(m)} or leave that layer out "
                          f"of 'target_modules'.")
    kept = [n for n in targets if n not in narrow]
    if not kept:
        raise ConfigError(f"{method}: rank {rank} is larger than every targeted layer of '{backbone.spec}' allows "
                          f"(largest: {max(_rank_limit(modules[n]) for n in targets)}).")
    return kept


# -- hand-written bottleneck adapters ----------------------------------------------

class Bottleneck(nn.Module):
    """``h + up(act(down(h)))`` with ``up`` initialised to zero (the adapter starts as the identity)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu"):
        super().__init__()
        self.down, self.act, self.up = nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class SeriesAdapter(nn.Module):
    """A layer followed by a :class:`Bottleneck` on its output (Houlsby / Pfeiffer placement)."""

    def __init__(self, base_layer: nn.Linear, hidden: int, activation: str):
        super().__init__()
        self.base_layer, self.adapter = base_layer, Bottleneck(base_layer.out_features, hidden, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))


class ParallelConvAdapter(nn.Module):
    """``conv(x) + up(down(x))`` with 1x1 convolutions at the conv's stride; ``up`` starts at zero."""

    def __init__(self, base_layer: nn.Conv2d, hidden: int):
        super().__init__()
        self.base_layer = base_layer
        self.down = nn.Conv2d(base_layer.in_channels, hidden, 1, stride=base_layer.stride, bias=False)
        self.up = nn.Conv2d(hidden, base_layer.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        side = self.up(self.down(x))
        if side.shape[-2:] != out.shape[-2:]:  # padding != kernel // 2: align the centres
            side = nn.functional.interpolate(side, size=out.shape[-2:], mode="nearest")
        return out + side

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """The conv with the adapter folded in: exact when the conv pads ``kernel // 2`` (a 1x1 term at its centre)."""
        conv = self.base_layer
        kh, kw = conv.kernel_size
        if conv.padding != (kh // 2, kw // 2) or conv.dilation != (1, 1):
            raise ConfigError(f"Cannot fold a parallel adapter into a convolution with padding {conv.padding} "
                              f"and kernel {conv.kernel_size}: the 1x1 branch does not sit at the kernel's centre.")
        delta = (self.up.weight[:, :, 0, 0] @ self.down.weight[:, :, 0, 0])
        conv.weight[:, :, kh // 2, kw // 2] += delta
        return conv


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def enable_checkpointing(backbone: Backbone, method: str) -> None:
    """Turn on activation (gradient) checkpointing in the backbone's transformers or timm model.

    With a frozen base, the activations dominate training memory (a 22M-parameter
    encoder's weights, gradients and optimizer state are a few hundred MB;
    the activations of a batch are more): checkpointing trades them for a
    second forward pass in backward.
    """
    slot = backbone.transformer_slot()
    inner = getattr(*slot) if slot is not None else getattr(backbone, "model", None)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(inner, "set_grad_checkpointing"):
        inner.set_grad_checkpointing(True)
    else:
        raise ConfigError(f"{method}: gradient_checkpointing needs a transformers or timm model; backbone "
                          f"'{backbone.spec}' has neither.")
