"""Self-supervised pre-training as a workflow: a pre-training method of
:data:`~transferkit.strategies.self_supervised.PRETRAINERS` run by the generic loop on unlabelled items.
"""
from __future__ import annotations

from typing import Any

import torch

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.data.dataset import TaskData
from transferkit.data.domains import resolve_domain_data, unlabelled
from transferkit.data.splits import subsample
from transferkit.strategies.self_supervised import PRETRAINERS
from transferkit.training import TrainConfig, Trainer


def pretrain(backbone: Backbone | str, data: Any, method: str = "simclr", *, options: dict | None = None,
             epochs: int | None = None, lr: float | None = None, batch_size: int | None = None, seed: int = 0,
             max_items: int | None = None, progress: bool = False, **train_options: Any) -> tuple[Backbone, list[dict]]:
    """Pre-train ``backbone`` in place on unlabelled ``data`` with a self-supervised method.

    Args:
        backbone: a :class:`Backbone` (trained in place) or a spec string.
        data: a TaskData or any form ``fit``'s target data takes (labels, if any, are ignored).
        method: a name of :data:`PRETRAINERS`: ``simclr``, ``simsiam`` (images) or ``mlm`` (text).
        options: the method's config fields (``transferkit.strategies.self_supervised.SimCLRConfig``, ...).
        epochs, lr: default per method (simclr/simsiam 10 epochs at 1e-3, mlm 3 at 5e-5); the
            method's new head trains at the method's head/body ratio times ``lr``.
        batch_size: default 128 for images, 16 for mlm.
        seed: seeds the item draw, the head's init, the shuffling and the masks/augmentations.
        max_items: pre-train on a random subset of this many items.
        **train_options: further :class:`~transferkit.training.TrainConfig` fields (``cpu``, ``weight_decay``, ...).

    Returns:
        ``(backbone, history)``: the same backbone object, in eval mode, and one dict per epoch
        (``epoch``, ``train_loss``). ``backbone.pretrained`` becomes ``False``: its weights are
        no longer those its spec loads, so bundles store them in full.

    Example:
        >>> bb = load_backbone("small-cnn:28")                                            # doctest: +SKIP
        >>> bb, history = pretrain(bb, unlabelled_images, "simclr", epochs=5)              # doctest: +SKIP
        >>> save_checkpoint(bb, "runs/simclr.safetensors")  # fit("file:runs/simclr.safetensors", ...)  # doctest: +SKIP
    """
    strategy = PRETRAINERS.get(method)(options or {})
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    data = unlabelled(data if isinstance(data, TaskData) else resolve_domain_data(data))
    if max_items is not None:
        data = subsample(data, max_items, seed)
    strategy.check_data(backbone, data)
    d = strategy.defaults
    head_lr = lr * d.head_lr / d.lr if lr is not None else None
    config = TrainConfig(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size or strategy.batch_size,
                         seed=seed, progress=progress, **train_options)
    torch.manual_seed(seed)  # the head initialises the same way for the same seed
    model = strategy.prepare(backbone, data)
    _, history = Trainer(config).fit(strategy, model, data, None)
    backbone.pretrained = False
    return backbone.eval(), history
