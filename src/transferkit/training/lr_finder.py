"""The learning-rate range test (Smith 2017; fastai's ``lr_find``).

Train for at most ``steps`` mini-batches while the learning rate grows
exponentially from ``start`` to ``end``, record the exponentially smoothed
loss, and stop once it exceeds ``diverge`` times the best seen. A good
learning rate lies on the descending part of the curve, below where it turns
up. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017,
https://arxiv.org/abs/1506.01186; fastai's ``LRFinder``,
https://docs.fast.ai/callback.schedule.html#lrfinder.

The test runs the strategy's own pieces, so it measures what training will
do: its ``train_dataset``, ``augment`` and ``step`` (mixup, regularizer
penalties), its ``param_groups`` on AdamW with the loop's weight-decay split
and gradient clipping. The ramp is the body learning rate; every parameter
group is scaled by the same factor, so the head keeps the strategy's default
``head_lr / lr`` ratio (and ``lr_decay`` its per-layer ratios).

Example:
    >>> model = strategy.prepare(backbone, train)                  # doctest: +SKIP
    >>> result = find_lr(strategy, model, train, steps=100)          # doctest: +SKIP
    >>> result.suggestion, result.plot("lr_find.png")                # doctest: +SKIP
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.data.batches import drops_last_single, to_device
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError, check_range
from transferkit.strategies.base import Strategy, TransferModel
from transferkit.training.loop import _decay_split, _progress

#: How ``LRFinderResult.suggestion`` is chosen (the other rule is reported alongside).
SUGGESTION_METHOD = "min/10"


@dataclass
class LRFinderResult:
    """What :func:`find_lr` measured.

    Attributes:
        lrs: the body learning rate of each step taken.
        losses: the smoothed (bias-corrected exponential moving average) loss after each step.
        raw_losses: the loss of each mini-batch.
        suggestion: the suggested body learning rate (``suggestions[method]``).
        suggestions: ``"min/10"``: a tenth of the learning rate at the smoothed
            loss's minimum; ``"steepest"``: where the smoothed loss falls fastest
            against log(lr), before its minimum (``None`` if the curve is too short).
        method: which of ``suggestions`` is the ``suggestion``.
        head_lr: the head's learning rate at the suggestion (the strategy's
            default ``head_lr / lr`` ratio, which the ramp kept).
        stopped_early: the loss diverged (or became NaN) before ``end``.
        start, end, steps: the range requested.

    ``min/10`` is the suggestion: it reads the curve at its minimum, which a
    noisy curve moves little, while the steepest point is an argmin of a
    numerical derivative of a noisy curve and jumps between neighbouring
    decades from one seed to the next (fastai moved off it for this reason).
    One decade below the minimum leaves room for the smoothing's lag, which
    places the minimum a little to the right of where the raw loss bottoms out.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    suggestions: dict[str, float | None]
    method: str = SUGGESTION_METHOD
    head_lr: float | None = None
    stopped_early: bool = False
    start: float = 1e-7
    end: float = 1.0
    steps: int = 100

    def to_dict(self) -> dict:
        """JSON-able, for the bundle manifest."""
        return asdict(self)

    def png(self) -> bytes:
        """Smoothed (and raw) loss against the learning rate on a log axis, the suggestions marked."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.raw_losses, color="0.75", linewidth=0.8, label="loss per batch")
        ax.plot(self.lrs, self.losses, color="tab:blue", label="smoothed loss")
        for name, lr in self.suggestions.items():
            if lr is None:
                continue
            chosen = name == self.method
            ax.axvline(lr, color="tab:red" if chosen else "tab:gray", linestyle="-" if chosen else ":",
                       label=f"{name}: {lr:.2g}" + (" (suggested)" if chosen else ""))
        ax.set_xscale("log")
        finite = [v for v in self.losses if math.isfinite(v)]
        if finite:  # the smoothed curve's descent, without the moving average's warm-up or divergent tail
            i_min, skip = finite.index(min(finite)), len(finite) // 10
            low, high = finite[i_min], max(finite[skip: i_min + 1]) if i_min > skip else max(finite)
            pad = 0.05 * ((high - low) or abs(low) or 1.0)
            ax.set_ylim(low - pad, high + pad)
        ax.set_xlabel("learning rate (body; log scale)")
        ax.set_ylabel("training loss")
        ax.set_title("Learning-rate range test" + (" (stopped at divergence)" if self.stopped_early else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        return buf.getvalue()

    def plot(self, path: str | Path) -> Path:
        """Write :meth:`png` to ``path`` (parent folders are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.png())
        return path


def suggest(lrs, losses) -> dict[str, float | None]:
    """The ``min/10`` and ``steepest`` suggestions of a smoothed loss curve.

    ``steepest`` looks only left of the minimum, where the loss still falls,
    skips the first tenth of the curve (the moving average of a handful of
    batches is still mostly noise there, as fastai's ``skip_start``), and
    takes the slope over a window of a twentieth of the curve on each side
    rather than between neighbouring points, whose derivative finds wobbles.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.isfinite(losses)
    if not finite.any():
        raise ConfigError("The learning-rate finder saw no finite loss; lower the start learning rate.")
    i_min = int(np.nanargmin(np.where(finite, losses, np.nan)))
    out: dict[str, float | None] = {"min/10": float(lrs[i_min] / 10.0), "steepest": None}
    w = max(1, len(lrs) // 20)
    centres = np.arange(len(lrs) // 10 + w, i_min + 1 - w)
    if len(centres):
        x = np.log10(lrs)
        slopes = (losses[centres + w] - losses[centres - w]) / (x[centres + w] - x[centres - w])
        out["steepest"] = float(lrs[centres[int(np.argmin(slopes))]])
    return out


def _check(start: float, end: float, steps: int, batch_size: int, smooth: float, diverge: float) -> None:
    check_range("find_lr", "start", start, low=0, low_open=True)
    check_range("find_lr", "end", end, low=start, low_open=True)
    check_range("find_lr", "steps", steps, low=2, kind="an int")
    check_range("find_lr", "batch_size", batch_size, low=1, kind="an int")
    if not 0 <= smooth < 1:
        raise ConfigError(f"The 'smooth' parameter of find_lr must be a float in [0, 1). Got {smooth!r} instead.")
    check_range("find_lr", "diverge", diverge, low=1, low_open=True)


def _batches(strategy: Strategy, model: TransferModel, train: TaskData, batch_size: int, seed: int):
    """Shuffled mini-batches of the strategy's training set, epoch after epoch, as the loop draws them."""
    dataset = strategy.train_dataset(model, train)
    if len(dataset) == 0:
        raise ConfigError(f"The learning-rate finder needs training data; '{train.name}' is empty.")
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=dataset.collate,
                                         generator=g, drop_last=drops_last_single(len(dataset), batch_size))
    while True:
        yield from loader


def find_lr(strategy: Strategy, model: TransferModel, train: TaskData, *, start: float = 1e-7, end: float = 1.0,
            steps: int = 100, batch_size: int = 32, seed: int = 0, smooth: float = 0.98, diverge: float = 4.0,
            weight_decay: float = 0.01, max_grad_norm: float | None = 1.0, device: str | torch.device | None = None,
            progress: bool = False) -> LRFinderResult:
    """Run the learning-rate range test of ``strategy`` on ``model`` (prepared by it) over ``train``.

    The model is trained in place and then put back: its state dict (weights
    and BatchNorm statistics), every parameter's ``requires_grad`` and every
    module's train/eval mode are restored, and so is torch's random state.
    Strategy state that ``step`` itself changes (none in the built-in
    strategies) is not.

    Args:
        strategy: the strategy that prepared ``model``.
        model: the model to probe; left unchanged.
        train: the training data.
        start: first learning rate (of the body; other groups keep their ratio).
        end: last learning rate.
        steps: number of mini-batches (at most; fewer if the loss diverges).
        batch_size: examples per mini-batch.
        seed: seeds the batch order, augmentation and mixing.
        smooth: factor of the exponential moving average of the loss.
        diverge: stop once the smoothed loss exceeds this multiple of its minimum.
        weight_decay: AdamW decay of matrices (as the loop's default).
        max_grad_norm: gradient clipping (as the loop's default); ``None`` for none.
        device: where to run (default: where the model is).
        progress: show a progress bar.

    Returns:
        An :class:`LRFinderResult`.

    Raises:
        ConfigError: a parameter is out of range, or the strategy leaves nothing to train.
    """
    _check(start, end, steps, batch_size, smooth, diverge)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model.to(device)
            return _range_test(strategy, model, train, start, end, steps, batch_size, seed, smooth, diverge,
                               weight_decay, max_grad_norm, device, progress)
    finally:
        model.load_state_dict(saved)
        model.to(home)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _range_test(strategy, model, train, start, end, steps, batch_size, seed, smooth, diverge, weight_decay,
                max_grad_norm, device, progress) -> LRFinderResult:
    model.train()
    strategy.on_epoch_start(model, 0, 1)
    d = strategy.defaults
    groups = _decay_split(strategy.param_groups(model, d.lr, d.head_lr), weight_decay)
    if not groups:
        raise ConfigError(f"Strategy '{strategy.name}' left no parameter to train.")
    ratios = [g["lr"] / d.lr for g in groups]  # each group's lr per unit of body lr
    optimizer = torch.optim.AdamW(groups)
    params = [p for g in groups for p in g["params"]]
    schedule = np.geomspace(start, end, steps)
    batches = _batches(strategy, model, train, batch_size, seed)
    lrs, losses, raw, avg, best, stopped = [], [], [], 0.0, math.inf, False
    bar = _progress(progress, steps, "lr-find")
    try:
        for i, lr in enumerate(schedule):
            for g, ratio in zip(optimizer.param_groups, ratios):
                g["lr"] = float(lr) * ratio
            batch = next(batches)
            batch["inputs"] = strategy.augment(to_device(batch["inputs"], device))
            if "targets" in batch:
                batch["targets"] = batch["targets"].to(device)
            loss = strategy.step(model, batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            value = float(loss.detach())
            avg = smooth * avg + (1 - smooth) * value
            smoothed = avg / (1 - smooth ** (i + 1))
            lrs.append(float(lr))
            raw.append(value)
            losses.append(smoothed)
            bar.update({"lr": float(lr), "loss": smoothed})
            if not math.isfinite(smoothed) or (i > 0 and smoothed > diverge * best):
                stopped = True
                break
            best = min(best, smoothed)
    finally:
        bar.close()
    suggestions = suggest(lrs, losses)
    chosen = suggestions[SUGGESTION_METHOD]
    return LRFinderResult(lrs, losses, raw, chosen, suggestions, SUGGESTION_METHOD, chosen * d.head_lr / d.lr,
                          stopped, start, end, steps)
