"""Training losses for aligning domains, each with its paper, formula and tensor shapes (after TLlib).

Pure functions of tensors (layer 0 of the library: torch only), used by the
domain-adaptation and fairness strategies and by the shift measures of
:mod:`transferkit.evaluation.domain_shift`:

* :func:`grad_reverse` / :func:`dann_ramp`: the gradient-reversal layer of DANN and
  its adversarial-weight schedule.
* :func:`mk_mmd`: multi-kernel MMD with Gaussian kernels (DAN).
* :func:`coral_loss`: the deep CORAL loss.
* :func:`entropy`: per-row Shannon entropy of probability vectors (CDAN+E weights).

Example:
    >>> import torch
    >>> x = torch.randn(64, 3)
    >>> float(mk_mmd(x, x)) == 0.0, round(dann_ramp(0.0), 3), round(dann_ramp(1.0), 3)
    (True, 0.0, 1.0)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Bandwidth multipliers of the median heuristic (DAN used a geometric family around it).
MMD_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-coeff`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # noqa: D401
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """The gradient-reversal layer (Ganin & Lempitsky, ICML 2015, https://arxiv.org/abs/1409.7495).

    Forward: ``x`` unchanged. Backward: the gradient times ``-coeff``. A domain
    classifier fed ``grad_reverse(features)`` learns to tell the domains apart,
    while the feature extractor under it is pushed to make them indistinguishable.

    Args:
        x: features ``[B, D]``.
        coeff: the adversarial weight (lambda), >= 0.
    """
    return _GradientReversal.apply(x, coeff)


def dann_ramp(progress: float, gamma: float = 10.0) -> float:
    """DANN's adversarial-weight schedule ``2 / (1 + exp(-gamma p)) - 1``, from 0 at ``p=0`` towards 1.

    Ganin et al., JMLR 2016, https://arxiv.org/abs/1505.07818 (section 5.2.2):
    the weight starts at 0 so the domain classifier's early noise does not
    disturb the features, and ``gamma = 10``.

    Args:
        progress: training progress ``p`` in [0, 1] (clipped).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def entropy(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shannon entropy (nats) of each row of ``probs [B, C]``; returns ``[B]``."""
    return -(probs * torch.log(probs + eps)).sum(-1)


def _median_bandwidth(d2: torch.Tensor) -> torch.Tensor:
    """Median of the off-diagonal squared distances (detached): the median heuristic."""
    n = d2.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
    med = off.detach().median() if off.numel() else d2.new_tensor(1.0)
    return med.clamp_min(1e-12)


def mk_mmd(source: torch.Tensor, target: torch.Tensor, scales: Sequence[float] = MMD_SCALES,
           bandwidth: float | torch.Tensor | None = None) -> torch.Tensor:
    """Multi-kernel MMD² (biased, V-statistic) between two batches, with Gaussian kernels.

    DAN (Long et al., ICML 2015, https://arxiv.org/abs/1502.02791) sums Gaussian
    kernels ``k_s(x, y) = exp(-||x - y||² / (s · b))`` over bandwidth scales ``s``,
    with ``b`` the median squared distance of the pooled batch (median heuristic,
    not back-propagated). Then ``MMD² = mean K_ss + mean K_tt - 2 mean K_st``, which
    is exactly 0 when the two batches are the same samples.

    Args:
        source: ``[Ns, D]``.
        target: ``[Nt, D]``.
        scales: bandwidth multipliers.
        bandwidth: fixed base bandwidth ``b`` instead of the median heuristic.

    Returns:
        A scalar tensor, >= 0 up to rounding (the kernel is characteristic).
    """
    x = torch.cat([source, target]).float()
    d2 = torch.cdist(x, x).pow(2)
    base = _median_bandwidth(d2) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device)
    k = sum(torch.exp(-d2 / (s * base)) for s in scales) / len(scales)
    ns = source.shape[0]
    return k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()


def _cov(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / max(x.shape[0] - 1, 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ``||C_s - C_t||_F² / (4 d²)`` between the feature covariances.

    Sun & Saenko, ECCV 2016 workshops, https://arxiv.org/abs/1607.01719.
    ``C`` are the unbiased covariances of ``source [Ns, D]`` and ``target [Nt, D]``.
    """
    d = source.shape[1]
    diff = _cov(source.float()) - _cov(target.float())
    return (diff * diff).sum() / (4 * d * d)
