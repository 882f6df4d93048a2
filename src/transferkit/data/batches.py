"""The one batched inference function: the loop's evaluation, the feature cache, bundle
prediction, export parity checks and the strategies that embed items all run through
:func:`run_batches`.

Example:
    >>> import torch
    >>> rows = torch.arange(10.0).view(5, 2)
    >>> [out.shape[0] for _, _, out in run_batches(lambda x: x.sum(1), lambda idx: rows[idx], 5, batch_size=2)]
    [2, 2, 1]
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch


def to_device(inputs: Any, device: torch.device | str | None) -> Any:
    """Move a tensor, or every tensor in a dict, list or tuple, to ``device`` (other values pass through)."""
    if device is None:
        return inputs
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


def drops_last_single(n: int, batch_size: int) -> bool:
    """Whether an epoch of ``n`` training items in batches of ``batch_size`` drops its last batch: a batch of one
    item, when there are more items than a batch (BatchNorm cannot train on one item). The loop's epochs, the
    learning-rate finder's and a stream's batches all follow this one rule."""
    return n > batch_size and n % batch_size == 1


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def run_batches(fn: Callable[[Any], Any], load: Callable[[list[int]], Any], n: int, *, batch_size: int = 64,
                device: torch.device | str | None = None,
                order: Sequence[int] | np.ndarray | None = None) -> Iterator[tuple[list[int], Any, Any]]:
    """Run ``fn`` over ``n`` items in batches, without gradients.

    Args:
        fn: the model (or any callable) applied to one batch of inputs.
        load: ``load(indices) -> inputs``: preprocessed inputs of those items.
        n: number of items.
        batch_size: items per call of ``fn``.
        device: where the inputs go (default: ``fn``'s device when it is a module, else unchanged).
        order: the order to visit items in (default ``0..n-1``), e.g. sorted by length.

    Yields:
        ``(indices, inputs, outputs)`` per batch, in visiting order.
    """
    if device is None and isinstance(fn, torch.nn.Module):
        device = module_device(fn)
    order = list(range(n)) if order is None else [int(i) for i in order]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        inputs = to_device(load(idx), device)
        with torch.no_grad():
            outputs = fn(inputs)
        yield idx, inputs, outputs
