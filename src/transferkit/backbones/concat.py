"""``concat:A+B+...``: several source models side by side, their features concatenated.

``concat:efficientnet-lite:0+efficientnet-lite:1`` runs EfficientNet-Lite0 and
-Lite1 on the same raw items and returns their pooled features next to each
other (1280 + 1280 = 2560 columns). Member specs are joined by ``+`` (a spec
itself may hold ``:``). What it is for:

* ``linear-probe`` on a concat backbone fits one head on the concatenated
  cached features ("feature concatenation");
* the ``stacking`` strategy reads each member's features separately
  (:attr:`ConcatBackbone.members`, :attr:`ConcatBackbone.slices`) and stacks
  per-member classifiers under a meta-learner.

Each member keeps its own preprocessing (image size, normalisation,
tokenizer). When all members preprocess alike (Lite0/1/2 at one
``image_size``: the same mean and std), the concat backbone uses that one
preprocessing and every member reads the same batch. Otherwise
:class:`ConcatPreprocess` packs the members' inputs into one batch: image
tensors flattened and laid side by side in one ``[B, sum_k 3*S_k*S_k]``
tensor (so a pre-computed dataset still indexes and concatenates like any
image batch), token dicts merged under ``"{member}.{key}"`` keys.

Options given to :func:`~transferkit.backbones.load_backbone` (``image_size``,
...) apply to every member. A rebuilt bundle passes ``members=[{"spec": ...,
"options": {...}}, ...]``, each member's own architecture.

Example:
    >>> bb = load_backbone("concat:efficientnet-lite:0+efficientnet-lite:1", image_size=64)  # doctest: +SKIP
    >>> bb.num_features, bb.slices                                                          # doctest: +SKIP
    (2560, [(0, 1280), (1280, 2560)])
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.backbones import BACKBONE_SOURCES, load_backbone
from transferkit.backbones.base import Backbone, ImagePreprocess, Preprocess
from transferkit.errors import ConfigError

PREFIX = "concat"
EXAMPLE = "concat:efficientnet-lite:0+efficientnet-lite:1"


def split_members(name: str) -> list[str]:
    """``"efficientnet-lite:0+small-cnn:28"`` -> ``["efficientnet-lite:0", "small-cnn:28"]``."""
    return [s.strip() for s in str(name).split("+") if s.strip()]


def _too_few(what: str) -> ConfigError:
    return ConfigError(f"Stacking needs at least two source models joined by '+', like '{EXAMPLE}'. Got {what}.")


class ConcatPreprocess(Preprocess):
    """The members' own preprocessing, packed into one batch; :meth:`split` unpacks it.

    Args:
        members: one :class:`Preprocess` per distinct preprocessing (members
            that preprocess alike share one).
    """

    kind = "concat"

    def __init__(self, members: Sequence[Preprocess]):
        self.members = list(members)
        self._flat = all(isinstance(p, ImagePreprocess) for p in self.members)
        #: per member: (channels, height, width) of an image input; used to unflatten.
        self._shapes = [(3, p.size, p.size) for p in self.members] if self._flat else []

    def __call__(self, items: Sequence) -> Any:
        outs = [p(items) for p in self.members]
        if self._flat:  # one tensor: a pre-computed dataset can torch.cat and index it like any image batch
            return torch.cat([o.reshape(len(o), -1) for o in outs], dim=1)
        packed = {}
        for g, out in enumerate(outs):
            if isinstance(out, dict):
                packed.update({f"{g}.{k}": v for k, v in out.items()})
            else:
                packed[str(g)] = out
        return packed

    def split(self, batch: Any) -> list[Any]:
        """The inverse of :meth:`__call__`: one input per distinct preprocessing."""
        if self._flat:
            sizes = [c * h * w for c, h, w in self._shapes]
            parts = torch.split(batch, sizes, dim=1)
            return [p.reshape(len(p), *shape) for p, shape in zip(parts, self._shapes)]
        out: list[Any] = []
        for g in range(len(self.members)):
            if str(g) in batch:
                out.append(batch[str(g)])
            else:
                out.append({k.split(".", 1)[1]: v for k, v in batch.items() if k.split(".", 1)[0] == str(g)})
        return out

    def config(self) -> dict:
        return {"kind": self.kind, "members": [p.config() for p in self.members]}


class ConcatBackbone(Backbone):
    """Member backbones run on the same items; ``forward_features`` concatenates their features.

    Args:
        members: two or more backbones of one modality.

    Attributes:
        members: the member backbones (an ``nn.ModuleList``).
        slices: ``(start, stop)`` of each member's columns in the features.

    Raises:
        ConfigError: fewer than two members, or members of different modalities.
    """

    def __init__(self, members: Sequence[Backbone]):
        super().__init__()
        if len(members) < 2:
            raise _too_few(f"{len(members)} model{'s' if len(members) != 1 else ''}: "
                           f"{', '.join(repr(m.spec) for m in members) or 'none'}")
        modalities = {m.modality for m in members}
        if len(modalities) > 1:
            raise ConfigError("The source models of a concat backbone must take the same input; got "
                              + ", ".join(f"'{m.spec}' ({m.modality})" for m in members) + ".")
        self.members = nn.ModuleList(members)
        self.modality = members[0].modality
        self.spec = f"{PREFIX}:" + "+".join(m.spec for m in members)
        self.pretrained = all(m.pretrained for m in members)
        self.num_features = sum(m.num_features for m in members)
        stops = torch.tensor([m.num_features for m in members]).cumsum(0).tolist()
        self.slices = [(stop - m.num_features, stop) for m, stop in zip(members, stops)]
        # members that preprocess alike read one shared input
        configs = [json.dumps(m.preprocess.config(), sort_keys=True) for m in members]
        distinct = list(dict.fromkeys(configs))
        self._input_of = [distinct.index(c) for c in configs]
        if len(distinct) == 1:
            self.preprocess = members[0].preprocess
        else:
            self.preprocess = ConcatPreprocess([members[configs.index(c)].preprocess for c in distinct])

    def forward_features(self, batch) -> torch.Tensor:
        inputs = self.preprocess.split(batch) if isinstance(self.preprocess, ConcatPreprocess) else [batch]
        return torch.cat([m.forward_features(inputs[g]) for m, g in zip(self.members, self._input_of)], dim=1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The members' groups merged by depth, aligned at the output end.

        Group ``-1`` holds every member's last group, group ``-2`` every
        member's second-to-last, and so on: "train the last k groups" and
        gradual unfreezing then act on the top of every member at once, not on
        one member's top while another member stays wholly frozen.
        """
        per_member = [m.layer_groups() for m in self.members]
        depth = max(len(g) for g in per_member)
        merged: list[list[nn.Parameter]] = [[] for _ in range(depth)]
        for groups in per_member:
            for i, group in enumerate(groups):
                merged[depth - len(groups) + i].extend(group)
        return [g for g in merged if g]

    def architecture_options(self) -> dict:
        return {"members": [m.architecture() for m in self.members]}

    def save_files(self, directory: str | Path) -> None:
        for k, m in enumerate(self.members):
            m.save_files(Path(directory) / f"member{k}")

    def check_groups(self) -> None:
        """Internal invariant: the groups cover every parameter but the members' source heads, once."""
        seen = [id(p) for g in self.layer_groups() for p in g]
        assert len(seen) == len(set(seen)), "a parameter appears in two layer groups"
        heads = {id(p) for m in self.members if m.source_head is not None for p in m.source_head.parameters()}
        assert set(seen) == {id(p) for p in self.parameters()} - heads, "layer groups do not cover every parameter"


def create_concat(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                  members: Sequence[dict] | None = None, **options: Any) -> ConcatBackbone:
    """Build ``concat:A+B+...``: each member through :func:`load_backbone`.

    Args:
        name: member specs joined by ``+``.
        pretrained: load each member's pre-trained weights.
        files_dir: a bundle's ``backbone/`` folder; member ``k`` reads ``member{k}/``.
        members: ``[{"spec": ..., "options": {...}}]`` per member (a bundle's
            saved architecture); overrides ``options``.
        **options: options of every member (``image_size=64``).
    """
    specs = split_members(name)
    if members is not None:
        if len(members) != len(specs):
            raise ConfigError(f"The 'members' option of '{PREFIX}:{name}' describes {len(members)} models but the "
                              f"spec names {len(specs)}.")
        archs = [(m["spec"], dict(m.get("options") or {})) for m in members]
    else:
        archs = [(s, dict(options)) for s in specs]
    if len(archs) < 2:
        raise _too_few(f"'{PREFIX}:{name}'")
    if any(s.partition(":")[0].strip() == PREFIX for s, _ in archs):
        raise ConfigError(f"A concat backbone cannot hold another concat backbone; list the models once: '{EXAMPLE}'.")
    built = []
    for k, (spec, opts) in enumerate(archs):
        sub = Path(files_dir) / f"member{k}" if files_dir is not None else None
        built.append(load_backbone(spec, pretrained=pretrained, files_dir=sub if sub and sub.is_dir() else None,
                                   **opts))
    return ConcatBackbone(built)


BACKBONE_SOURCES.register(PREFIX, create_concat,
                          help=f"several source models side by side, features concatenated, e.g. {EXAMPLE} "
                               "(the input of feature concatenation and the 'stacking' strategy)")
