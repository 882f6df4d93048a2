"""The deep domain-adaptation methods: ``dann``, ``cdan``, ``mmd``, ``coral``, ``self-training``.

Each is a :class:`~transferkit.strategies.domain.DomainAdaptation` whose
``step`` adds one adaptation term to the source loss; the loss functions
themselves are in :mod:`transferkit.losses`.

Discriminators (``dann``, ``cdan``) live on the strategy, outside the saved
model, and train through the loop's optimizer as the parameter group
``"discriminator"``. With one process (CPU or one GPU) Accelerate does not
wrap anything, so this works as is; under several processes the model is
wrapped by DistributedDataParallel but the discriminator is not, so its
gradients are not averaged across processes (each process keeps its own
discriminator), and the loop's gradient clipping covers the model only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from transferkit.constraints import Interval, Options
from transferkit.data.dataset import TaskData

from transferkit.losses import coral_loss, dann_ramp, entropy, grad_reverse, mk_mmd
from transferkit.strategies.base import StepContext, TransferModel, register_strategy
from transferkit.strategies.domain import (DomainAdaptation, DomainConfig, batch_len, concat_inputs,
                                          domain_discriminator)
from transferkit.strategies.augment import ImageAugment, random_shift_flip


@dataclass
class AdversarialConfig(DomainConfig):
    hidden: int = field(default=256, metadata={"help": "width of the discriminator's two hidden layers"})
    gamma: float = field(default=10.0, metadata={"help": "steepness of the adversarial-weight ramp 2/(1+exp(-gamma p))-1"})

    _parameter_constraints = {"hidden": [Interval("int", 1, None)], "gamma": [Interval("number", 0, None)]}


class _Adversarial(DomainAdaptation):
    """Shared parts of DANN and CDAN: the discriminator and its parameter group."""

    Config = AdversarialConfig

    def discriminator_input(self, model: TransferModel, data: TaskData) -> int:
        return model.backbone.num_features

    def prepare(self, backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        self.discriminator_ = domain_discriminator(self.discriminator_input(model, data), self.config.hidden)
        return model

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        disc = list(self.discriminator_.parameters())
        return super().param_groups(model, lr, head_lr) + [{"params": disc, "lr": head_lr, "name": "discriminator"}]

    def coefficient(self, ctx: StepContext | None) -> float:
        """The adversarial weight now: ``weight`` times DANN's ramp over training progress."""
        return self.config.weight * dann_ramp((ctx or StepContext()).progress, self.config.gamma)

    def domain_loss(self, h: torch.Tensor, ns: int, sample_weight: torch.Tensor | None = None):
        """Binary cross-entropy of the discriminator on ``h`` (source rows first, target = 1), and its accuracy."""
        disc = self.discriminator_
        if next(disc.parameters()).device != h.device:
            disc.to(h.device)  # in place: the optimizer keeps the same Parameter objects
        logit = disc(h).squeeze(-1).float()
        label = torch.cat([torch.zeros(ns), torch.ones(len(h) - ns)]).to(h.device)
        loss = F.binary_cross_entropy_with_logits(logit, label, weight=sample_weight)
        acc = ((logit > 0).float() == label).float().mean()
        return loss, acc


@register_strategy
class DANN(_Adversarial):
    """Domain-adversarial training with a gradient-reversal layer (Ganin et al., JMLR 2016).

    https://arxiv.org/abs/1505.07818. Loss: source loss + BCE of a domain
    discriminator on ``grad_reverse(features, lambda_p)``: the discriminator
    learns to tell the domains apart, the features get the reversed gradient,
    weighted by ``lambda_p = weight * (2 / (1 + exp(-gamma p)) - 1)`` that
    ramps up from 0 over training progress ``p``.
    """

    name = "dann"

    def step(self, model, batch: dict, ctx: StepContext | None = None) -> dict:
        ls, _, fs, ft = self.forward_pair(model, batch)
        lam = self.coefficient(ctx)
        cls = self.source_loss(ls, batch)
        dom, acc = self.domain_loss(grad_reverse(torch.cat([fs, ft]), lam), len(fs))
        return {"loss": cls + dom, "source_loss": cls.detach(), "domain_loss": dom.detach(), "domain_acc": acc,
                "lambda": torch.tensor(lam)}


@dataclass
class CDANConfig(AdversarialConfig):
    entropy_conditioning: bool = field(default=False, metadata={"help": "CDAN+E: weight examples by 1+exp(-entropy)"})
    max_map_dim: int = field(default=4096, metadata={"help": "above this features x classes, a random multilinear map"})
    map_dim: int = field(default=1024, metadata={"help": "output width of the random multilinear map"})

    _parameter_constraints = {"max_map_dim": [Interval("int", 1, None)], "map_dim": [Interval("int", 1, None)]}


@register_strategy
class CDAN(_Adversarial):
    """Conditional adversarial domain adaptation (Long et al., NeurIPS 2018, https://arxiv.org/abs/1705.10667).

    The discriminator sees the multilinear map ``f ⊗ g`` of features ``f [B, D]``
    and (detached) class probabilities ``g [B, C]``: the outer product, or when
    ``D·C > max_map_dim`` the randomized map ``(f R_f) ⊙ (g R_g) / sqrt(map_dim)``
    with fixed Gaussian ``R``. ``entropy_conditioning`` (CDAN+E) weights each
    example by ``1 + exp(-H(g))``, normalised to mean 1, so confident
    predictions count more. Classification only.
    """

    name = "cdan"
    Config = CDANConfig
    tasks = ("classification",)

    def discriminator_input(self, model: TransferModel, data: TaskData) -> int:
        d, c = model.backbone.num_features, max(data.num_outputs, 1)
        if d * c <= self.config.max_map_dim:
            self._random_map = None
            return d * c
        g = torch.Generator().manual_seed(getattr(self, "_seed", 0))
        self._random_map = (torch.randn(d, self.config.map_dim, generator=g),
                            torch.randn(c, self.config.map_dim, generator=g))
        return self.config.map_dim

    def multilinear(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self._random_map is None:
            return (g.unsqueeze(2) * f.unsqueeze(1)).flatten(1)
        rf, rg = (r.to(f.device, f.dtype) for r in self._random_map)
        return (f @ rf) * (g @ rg) / self.config.map_dim ** 0.5

    def step(self, model, batch: dict, ctx: StepContext | None = None) -> dict:
        ls, lt, fs, ft = self.forward_pair(model, batch)
        cls = self.source_loss(ls, batch)
        g = torch.cat([ls, lt]).float().softmax(-1).detach()
        h = grad_reverse(self.multilinear(torch.cat([fs, ft]).float(), g), self.coefficient(ctx))
        weight = None
        if self.config.entropy_conditioning:
            weight = 1.0 + torch.exp(-entropy(g))
            weight = weight / weight.sum() * len(weight)
        dom, acc = self.domain_loss(h, len(fs), weight)
        return {"loss": cls + dom, "source_loss": cls.detach(), "domain_loss": dom.detach(), "domain_acc": acc}


@register_strategy
class MMD(DomainAdaptation):
    """Multi-kernel MMD between source and target features (DAN, Long et al., ICML 2015).

    https://arxiv.org/abs/1502.02791. Loss: source loss + ``weight`` times the
    MK-MMD² of the pooled features, Gaussian kernels at the median-heuristic
    bandwidth times 1/4 .. 4 (:func:`~transferkit.losses.mk_mmd`).
    """

    name = "mmd"

    def step(self, model, batch: dict, ctx: StepContext | None = None) -> dict:
        ls, _, fs, ft = self.forward_pair(model, batch)
        cls = self.source_loss(ls, batch)
        term = mk_mmd(fs, ft)
        return {"loss": cls + self.config.weight * term, "source_loss": cls.detach(), "mmd": term.detach()}


@dataclass
class CoralConfig(DomainConfig):
    weight: float = field(default=10.0, metadata={"help": "trade-off weight of the CORAL term (0: source-only)"})


@register_strategy
class Coral(DomainAdaptation):
    """Deep CORAL: align second-order statistics of the features (Sun & Saenko, 2016).

    https://arxiv.org/abs/1607.01719. Loss: source loss + ``weight`` times
    ``||C_s - C_t||_F² / (4 d²)`` of the batch's pooled features.
    """

    name = "coral"
    Config = CoralConfig

    def step(self, model, batch: dict, ctx: StepContext | None = None) -> dict:
        ls, _, fs, ft = self.forward_pair(model, batch)
        cls = self.source_loss(ls, batch)
        term = coral_loss(fs, ft)
        return {"loss": cls + self.config.weight * term, "source_loss": cls.detach(), "coral": term.detach()}


@dataclass
class SelfTrainingConfig(DomainConfig):
    threshold: float = field(default=0.95, metadata={"help": "confidence above which a target prediction becomes a label"})
    augment: bool | str = field(default=True, metadata={"help": "images: the source batches' augmentation (true: "
                                                                "shift-flip, FixMatch's weak aug) or a policy name"})
    strong: str = field(default="randaugment", metadata={"help": "images: strong aug of the target, randaugment or noise"})

    _parameter_constraints = {"threshold": [Interval("number", 0, 1)], "strong": [Options("randaugment", "noise")]}


def strong_augment(x: torch.Tensor, randaugment: ImageAugment | None) -> torch.Tensor:
    """FixMatch's strong augmentation of a normalised image batch ``[B, C, H, W]``.

    With ``randaugment`` (an :class:`ImageAugment` that knows the backbone's
    mean and std): RandAugment per image on its pixels, then a shift, a flip
    and Cutout (a mid-grey square of half the side at a random centre).
    Without: shifts of up to a quarter of the side, flips and Gaussian noise
    (std 0.5 of the normalised scale).
    """
    b, _, h, w = x.shape
    if randaugment is None:
        return random_shift_flip(x, max(1, h // 4)) + 0.5 * torch.randn_like(x)
    out = random_shift_flip(randaugment(x))
    grey = ((0.5 - randaugment.mean) / randaugment.std).to(x.device, x.dtype)  # 0.5 in pixel space
    half = max(1, h // 4)
    for i in range(b):
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, left = max(0, cy - half), max(0, cx - half)
        out[i, :, top:cy + half, left:cx + half] = grey[0, :, :1, :1]
    return out


@register_strategy
class SelfTraining(DomainAdaptation):
    """Confidence-thresholded pseudo labels on the target; FixMatch-style for images.

    FixMatch (Sohn et al., NeurIPS 2020, https://arxiv.org/abs/2001.07685):
    the prediction on a weakly augmented target image (shift + flip) becomes its
    label when its confidence is at least ``threshold``, and the model is
    trained to predict that label on a strongly augmented view
    (:func:`strong_augment`). Text and tabular inputs have no augmentation:
    plain pseudo-labelling on the same inputs. Loss: source loss +
    ``weight`` times the masked cross-entropy. Classification only.
    """

    name = "self-training"
    Config = SelfTrainingConfig
    tasks = ("classification",)

    def prepare(self, backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        pre = backbone.preprocess
        mean, std = getattr(pre, "mean", None), getattr(pre, "std", None)
        known = data.modality == "image" and self.config.strong == "randaugment" and mean is not None and std is not None
        self._strong = ImageAugment("randaugment", mean, std) if known else None
        return model

    def step(self, model, batch: dict, ctx: StepContext | None = None) -> dict:
        xs, xt = batch["inputs"], batch["target_inputs"]
        images = isinstance(xt, torch.Tensor) and xt.dim() == 4
        if images:
            views = torch.cat([random_shift_flip(xt), strong_augment(xt, self._strong)])
            logits = model(torch.cat([xs, views]))
            ls, lw, lst = logits[:len(xs)], logits[len(xs):len(xs) + len(xt)], logits[len(xs) + len(xt):]
        else:
            logits = model(concat_inputs(xs, xt))
            ls, lw = logits[:batch_len(xs)], logits[batch_len(xs):]
            lst = lw
        cls = self.source_loss(ls, batch)
        conf, pseudo = lw.detach().float().softmax(-1).max(-1)
        mask = (conf >= self.config.threshold).float()
        unsup = (F.cross_entropy(lst.float(), pseudo, reduction="none") * mask).mean()
        return {"loss": cls + self.config.weight * unsup, "source_loss": cls.detach(), "pseudo_loss": unsup.detach(),
                "pseudo_fraction": mask.mean()}
