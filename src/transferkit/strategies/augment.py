"""Training-time regularisation of image batches: augmentation policies, mixup and cutmix.

Batches reach a strategy already preprocessed: float tensors ``[B, 3, H, W]``
normalised with the backbone's mean and std. Geometric policies act on them
directly (cropping, flipping and bilinear resizing commute with a per-channel
affine normalisation); photometric policies un-normalise to uint8 pixels
(the preprocessing made them from uint8, so the round trip is exact), apply
torchvision's transforms v2 per sample and normalise again.

Policies (``FinetuneConfig.augment``):

* ``shift-flip`` (also ``augment=True``): random translation by up to 1/8 of
  the side (reflect padding) and horizontal flip, the CIFAR recipe.
* ``crop-flip``: ``RandomResizedCrop`` (area 25% to 100%) and horizontal flip.
  ImageNet recipes draw 8% to 100% over hundreds of epochs; a few epochs on a
  small labelled set get the milder range.
* ``trivialaugment``: one random op at a random strength per image
  (Müller & Hutter 2021, https://arxiv.org/abs/2103.10044).
* ``randaugment``: two random ops at magnitude 9 of 31
  (Cubuk et al. 2020, https://arxiv.org/abs/1909.13719).
* ``autoaugment``: the searched ImageNet policy
  (Cubuk et al. 2019, https://arxiv.org/abs/1805.09501).

Mixing (``FinetuneConfig.mixup`` / ``cutmix``) pairs every image with a random
partner of the same batch and mixes both the images and their one-hot labels:

* mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412):
  ``x = lam * x_i + (1 - lam) * x_j``, ``y = lam * y_i + (1 - lam) * y_j``,
  ``lam ~ Beta(alpha, alpha)``;
* cutmix (Yun et al. 2019, https://arxiv.org/abs/1905.04899): a box of area
  ``(1 - lam) * H * W`` of ``x_j`` pasted into ``x_i``; ``lam`` is then
  corrected to the box's actual area after clipping at the border.

One ``lam`` per batch, as timm's ``Mixup(mode="batch")``. timm's class itself
is not used: it refuses odd batch sizes, which the training loop produces.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.errors import ConfigError

POLICIES = ("none", "shift-flip", "crop-flip", "trivialaugment", "randaugment", "autoaugment")
#: Policies that need pixel values (so the backbone's mean and std) rather than normalised inputs.
PHOTOMETRIC = ("trivialaugment", "randaugment", "autoaugment")
#: Area range of ``crop-flip``'s random crops.
CROP_SCALE = (0.25, 1.0)


def resolve_policy(value, owner: str = "FinetuneConfig") -> str:
    """The policy name ``augment=value`` stands for: ``True`` is ``shift-flip``, ``False``/``None`` is ``none``.

    Raises:
        ConfigError: ``value`` is neither a bool nor a policy name (the message lists them).
    """
    if value is True:
        return "shift-flip"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value in POLICIES:
        return value
    close = difflib.get_close_matches(str(value), POLICIES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"The 'augment' parameter of {owner} must be true, false or one of {', '.join(POLICIES)}. "
                      f"Got {value!r} instead.{hint}")


def random_shift_flip(x: torch.Tensor, max_shift: int | None = None) -> torch.Tensor:
    """Per-sample random translation (reflect padding, up to ~1/8 of the side) and horizontal flip."""
    if x.dim() != 4:
        return x
    b, _, h, w = x.shape
    s = max_shift if max_shift is not None else max(1, h // 8)
    padded = nn.functional.pad(x, (s, s, s, s), mode="reflect")
    dx, dy = torch.randint(0, 2 * s + 1, (b,)), torch.randint(0, 2 * s + 1, (b,))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    flip = torch.rand(b) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def _v2_transform(policy: str, size: tuple[int, int]):
    from torchvision.transforms import v2

    if policy == "crop-flip":
        return v2.Compose([v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True), v2.RandomHorizontalFlip()])
    return {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment,
            "autoaugment": v2.AutoAugment}[policy]()


class ImageAugment:
    """One augmentation policy over normalised image batches ``[B, C, H, W]``.

    Inputs that are not 4-D tensors (text, tabular) pass through unchanged.

    Args:
        policy: a name of :data:`POLICIES`, or a bool (see :func:`resolve_policy`).
        mean: the backbone's per-channel mean (needed by the photometric policies).
        std: the backbone's per-channel std.

    Example:
        >>> aug = ImageAugment("trivialaugment", mean=[0.5] * 3, std=[0.25] * 3)  # doctest: +SKIP
        >>> aug(batch).shape == batch.shape                                        # doctest: +SKIP
        True
    """

    def __init__(self, policy, mean=None, std=None):
        self.policy = resolve_policy(policy)
        if self.policy in PHOTOMETRIC and (mean is None or std is None):
            raise ConfigError(f"augment={self.policy!r} changes pixel values and needs the backbone's normalisation "
                              "(preprocess mean/std); prepare the model with the strategy first.")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std is not None else None
        self._transforms: dict[tuple[int, int], object] = {}

    def __call__(self, x):
        if self.policy == "none" or not isinstance(x, torch.Tensor) or x.dim() != 4:
            return x
        if self.policy == "shift-flip":
            return random_shift_flip(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size not in self._transforms:
            self._transforms[size] = _v2_transform(self.policy, size)
        transform = self._transforms[size]
        if self.policy == "crop-flip":  # geometric: works on the normalised values directly
            return torch.stack([transform(img) for img in x])
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        pixels = (x * std + mean).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        out = torch.stack([transform(img) for img in pixels])
        return (out.to(x.dtype).div_(255.0) - mean) / std


# ----------------------------------------------------------------------------- mixup and cutmix


@dataclass
class MixedBatch:
    """A batch after mixup or cutmix.

    Attributes:
        inputs: the mixed images ``[B, C, H, W]``.
        targets: the original hard labels ``[B]``.
        perm: ``perm[i]`` is the partner mixed into item ``i``.
        lam: weight of each item's own label (for cutmix: the area it keeps).
        kind: ``"mixup"`` or ``"cutmix"``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    perm: torch.Tensor
    lam: float
    kind: str

    def soft_targets(self, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
        """``lam * onehot(y_i) + (1 - lam) * onehot(y_perm[i])``, smoothed: rows ``[B, num_classes]`` summing to 1.

        Smoothing after mixing equals mixing smoothed labels (both are linear).
        """
        y = F.one_hot(self.targets.long(), num_classes).float()
        mixed = self.lam * y + (1.0 - self.lam) * y[self.perm]
        return mixed * (1.0 - label_smoothing) + label_smoothing / num_classes


def mixup_images(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]``."""
    return lam * x + (1.0 - lam) * x[perm]


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A random box ``(top, bottom, left, right)`` of about ``(1 - lam)`` of the image, clipped at the border.

    The centre is uniform over the image and the box keeps the image's aspect
    ratio (side ratio ``sqrt(1 - lam)``), as in the CutMix paper and timm.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return top, bottom, left, right


def cutmix_images(x: torch.Tensor, box: tuple[int, int, int, int], perm: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Paste ``x[perm]``'s box into ``x``; returns the images and ``lam``, the area fraction each keeps."""
    top, bottom, left, right = box
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / float(x.shape[-2] * x.shape[-1])
    return out, lam


def mix_batch(inputs: torch.Tensor, targets: torch.Tensor, *, mixup: float = 0.0, cutmix: float = 0.0,
              prob: float = 1.0, switch_prob: float = 0.5) -> MixedBatch | None:
    """Mix a batch with probability ``prob``; ``None`` when this batch stays unmixed.

    Args:
        inputs: images ``[B, C, H, W]``.
        targets: class indices ``[B]``.
        mixup: Beta(alpha, alpha) parameter of mixup; 0 disables it.
        cutmix: Beta(alpha, alpha) parameter of cutmix; 0 disables it.
        prob: probability that a batch is mixed at all.
        switch_prob: with both enabled, the probability of cutmix rather than mixup.

    Draws from torch's global generator (seeded by the training loop).
    """
    if (mixup <= 0 and cutmix <= 0) or float(torch.rand(())) >= prob:
        return None
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand(())) < switch_prob)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(inputs.shape[0], device=inputs.device)
    if use_cutmix:
        mixed, lam = cutmix_images(inputs, cutmix_box(inputs.shape[-2], inputs.shape[-1], lam), perm)
        return MixedBatch(mixed, targets, perm, lam, "cutmix")
    return MixedBatch(mixup_images(inputs, lam, perm), targets, perm, lam, "mixup")


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c targets[:, c] * log_softmax(logits)[:, c]`` (in float32)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
