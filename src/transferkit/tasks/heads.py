"""The head registry: how a head is built, described in a bundle manifest and rebuilt from it.

A bundle stores ``{"kind": NAME, ...}`` for its head; :func:`rebuild_head` finds
``NAME`` here, so the bundle and export code never import the strategy that made
the head. A new head (a per-token classifier, a detector's box predictor) is one
:func:`register_head` call.

Example:
    >>> head = build_head("linear", 8, 3, dropout=0.1)
    >>> describe_head(head)["kind"], rebuild_head(describe_head(head))[-1].out_features
    ('linear', 3)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from transferkit.registry import Registry


@dataclass(frozen=True)
class HeadType:
    """What the registry knows about one kind of head.

    Attributes:
        build: ``build(in_features, out_features, *, dropout=0.0, **options) -> nn.Module``.
        describe: ``describe(head) -> dict``: JSON-able shape and options for the manifest.
        rebuild: ``rebuild(description) -> nn.Module`` with the same architecture (weights come from the bundle).
    """

    build: Callable[..., nn.Module]
    describe: Callable[[nn.Module], dict]
    rebuild: Callable[[dict], nn.Module]


HEADS: Registry[HeadType] = Registry("head")


def register_head(name: str, build: Callable[..., nn.Module], describe: Callable[[nn.Module], dict],
                  rebuild: Callable[[dict], nn.Module], *, help: str = "") -> HeadType:
    """Register a head kind; heads built through :func:`build_head` remember it in ``head_kind``."""
    return HEADS.register(name, HeadType(build, describe, rebuild), help=help)


def build_head(kind: str, in_features: int, out_features: int, **options) -> nn.Module:
    """Build a head of the registered ``kind`` and tag it with its kind."""
    head = HEADS.get(kind).build(in_features, out_features, **options)
    head.head_kind = kind
    return head


def describe_head(head: nn.Module) -> dict:
    """The manifest entry of ``head``: its kind and what :func:`rebuild_head` needs."""
    kind = getattr(head, "head_kind", None) or "linear"
    return {**HEADS.get(kind).describe(head), "kind": kind}


def rebuild_head(description: dict) -> nn.Module:
    """The head a manifest describes (bundles written before heads had kinds are linear)."""
    kind = description.get("kind") or "linear"
    head = HEADS.get(kind).rebuild(description)
    head.head_kind = kind
    return head


class L2Normalize(nn.Module):
    """Scale each feature vector to unit length: what turns the linear head into a cosine classifier."""

    def forward(self, x):
        return F.normalize(x, dim=-1)


class FeatureScale(nn.Module):
    """Multiply features by a fixed number (not trained; the manifest records it as the head's ``input_scale``).

    Backbones give features on scales a thousand times apart (a sentence encoder's unit vectors have
    components near 0.05, an intermediate CNN block's near 7), while a head's learning rate assumes one
    scale: a fine-tuned head starts from features brought to a root-mean-square of 1 instead
    (:func:`transferkit.strategies.finetune.feature_scale_of`).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x):
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def linear_head(in_features: int, out_features: int, dropout: float = 0.0, normalize: bool = False,
                input_scale: float = 1.0) -> nn.Module:
    """Optional dropout, optional L2 normalisation or a fixed input scale, then one linear layer.

    ``normalize=True`` makes logits ``W @ (x / |x|) + b``: with unit-length rows of ``W``
    (prototypes, label-description embeddings) scaled by a temperature, a cosine classifier.
    ``nn.Linear`` acts on the last axis, so the same head classifies pooled features
    ``[B, D]`` and every token of a sequence ``[B, T, D]``. ``input_scale`` multiplies the features
    first (:class:`FeatureScale`).
    """
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    if normalize:
        layers.append(L2Normalize())
    elif input_scale != 1.0:
        layers.append(FeatureScale(input_scale))
    layers.append(nn.Linear(in_features, out_features))
    head = nn.Sequential(*layers)
    head.head_kind = "linear"
    return head


def is_normalized_head(head: nn.Module) -> bool:
    """Whether ``head`` (a :func:`linear_head`) normalises its input."""
    return any(isinstance(m, L2Normalize) for m in head.modules())


def head_input_scale(head: nn.Module) -> float:
    """The fixed number a :func:`linear_head` multiplies its features by (1 without a :class:`FeatureScale`)."""
    return next((m.scale for m in head.modules() if isinstance(m, FeatureScale)), 1.0)


def with_input_scale(head: nn.Module, scale: float) -> nn.Module:
    """The :func:`linear_head` ``head`` with a :class:`FeatureScale` of ``scale`` before its linear layer
    (the same layer objects, so its initialisation is kept)."""
    layers = [m for m in head if not isinstance(m, FeatureScale)]
    out = nn.Sequential(*layers[:-1], *([FeatureScale(scale)] if scale != 1.0 else []), layers[-1])
    out.head_kind = getattr(head, "head_kind", "linear")
    return out


def _describe_linear(head: nn.Module) -> dict:
    last = head[-1]
    dropout = next((float(m.p) for m in head if isinstance(m, nn.Dropout)), 0.0)
    out = {"in_features": last.in_features, "out_features": last.out_features, "dropout": dropout,
           "normalize": is_normalized_head(head)}
    scale = head_input_scale(head)
    return {**out, "input_scale": scale} if scale != 1.0 else out


def _build_linear(in_features: int, out_features: int, *, dropout: float = 0.0, normalize: bool = False,
                  input_scale: float = 1.0) -> nn.Module:
    return linear_head(in_features, out_features, dropout, normalize, input_scale)


def _rebuild_linear(h: dict) -> nn.Module:
    return linear_head(int(h["in_features"]), int(h["out_features"]), float(h.get("dropout") or 0.0),
                       bool(h.get("normalize")), float(h.get("input_scale", 1.0)))


register_head("linear", _build_linear, _describe_linear, _rebuild_linear,
              help="optional dropout, L2 normalisation or a fixed input scale, then nn.Linear (pooled or per-token features)")


class SourceOutput(nn.Identity):
    """No new head: the backbone's own output layer already scores the task (a causal LM's vocabulary
    logits, which generative fine-tuning trains through). No parameters, so nothing new in a bundle."""


def _build_source_output(in_features: int, out_features: int, *, dropout: float = 0.0) -> nn.Module:
    return SourceOutput()


register_head("source-output", _build_source_output, lambda head: {}, lambda h: SourceOutput(),
              help="no new layer: the source model's own output (a language model's next-token logits)")
