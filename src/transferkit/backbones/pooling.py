"""Pooling: from a backbone's sequence features ``[B, T, D]`` (with their mask) to one vector per item.

Pooling is a step after the backbone, chosen by the task and the head (or the
backbone's own configuration, as sentence-transformers models record it), not
buried inside each source.

Example:
    >>> import torch
    >>> hidden, mask = torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> pool(hidden, mask, "mean").shape
    torch.Size([2, 4])
"""
from __future__ import annotations

import torch

from transferkit.errors import ConfigError


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over the positions where ``mask`` is 1 (every position without a mask)."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def first_token(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The first position (BERT's [CLS])."""
    return hidden[:, 0]


POOLINGS = {"mean": masked_mean, "cls": first_token}


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, method: str) -> torch.Tensor:
    """Pool ``hidden [B, T, D]`` to ``[B, D]`` with the named method (``mean`` or ``cls``)."""
    try:
        fn = POOLINGS[method]
    except KeyError:
        raise ConfigError(f"Unknown pooling {method!r}. Available: {', '.join(POOLINGS)}.") from None
    return fn(hidden, mask)
