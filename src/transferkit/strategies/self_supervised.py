"""Self-supervised pre-training on unlabelled target data, before fine-tuning (the hybrid recipe).

:func:`transferkit.workflows.pretrain.pretrain` trains a backbone in place on unlabelled items and returns it,
ready for any fine-tuning strategy (or :func:`~transferkit.backbones.save_checkpoint`
for a ``file:`` spec). Methods (:data:`PRETRAINERS`):

* ``simclr``: two augmented views of each image, a projection MLP and the
  NT-Xent loss: each view must pick its partner among the ``2N - 1`` other
  views of the batch (Chen et al. 2020, https://arxiv.org/abs/2002.05709).
* ``simsiam``: a projector and a predictor; ``D(p1, z2)`` with a stop-gradient
  on the target branch, no negatives (Chen & He 2021, https://arxiv.org/abs/2011.10566).
* ``mlm``: masked-language-model continued pre-training of a text encoder,
  BERT's 80/10/10 masking (Devlin et al. 2019, https://arxiv.org/abs/1810.04805);
  on in-domain text it is domain-adaptive pre-training (Gururangan et al. 2020,
  https://arxiv.org/abs/2004.10964). The MLM head (dense, GELU, LayerNorm, decoder
  tied to the input embeddings, as BERT's) is new and discarded afterwards.

Each method is a :class:`~transferkit.strategies.base.Strategy` whose ``step``
computes its loss on unlabelled batches, so the generic loop (Accelerate,
AdamW, warm-up and cosine schedule, clipping) runs it unchanged. They are
registered in :data:`PRETRAINERS`, not :data:`STRATEGIES`: none of them makes
a predictor. Augmentations (:class:`TwoViews`) act on preprocessed batches
like :mod:`transferkit.strategies.augment`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval
from transferkit.data.dataset import TaskData
from transferkit.data.domains import unlabelled
from transferkit.errors import ConfigError, DataError
from transferkit.registry import Registry
from transferkit.strategies.base import (ItemDataset, StepContext, Strategy, StrategyConfig, TrainDefaults,
                                         TransferModel)

PRETRAINERS: Registry[type["Pretrainer"]] = Registry("pre-training method")
#: Backbone families MLM works on (a transformer encoder with a tokenizer vocabulary).
MLM_FAMILIES = ("hf:", "sentence:", "file: (a checkpoint of one of those)")
IGNORE = -100  # cross-entropy's ignore_index: positions that are not predicted


# ----------------------------------------------------------------------------- two-view augmentation


@dataclass
class TwoViewConfig(StrategyConfig):
    """The standard SimCLR/SimSiam augmentations (crop, flip, colour jitter, greyscale)."""

    crop_scale: float = field(default=0.2, metadata={"help": "smallest area fraction of the random resized crop"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    jitter: float = field(default=0.4, metadata={"help": "brightness/contrast/saturation jitter strength (0: off)"})
    hue: float = field(default=0.1, metadata={"help": "hue jitter in [0, 0.5] (0: off; no effect on grey images)"})
    jitter_prob: float = field(default=0.8, metadata={"help": "probability of colour jitter per view"})
    grayscale_prob: float = field(default=0.2, metadata={"help": "probability of a greyscale view"})

    _parameter_constraints = {
        "crop_scale": [Interval("number", 0, 1, closed="right")],
        "jitter": [Interval("number", 0, 1)],
        "hue": [Interval("number", 0, 0.5)],
        "jitter_prob": [Interval("number", 0, 1)],
        "grayscale_prob": [Interval("number", 0, 1)],
    }


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # torchvision's weights


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image's hue by ``shift`` turns ``[B]``: a rotation of the chroma plane in YIQ space.

    One matrix per image, so the batch is done at once; it matches HSV hue shifts
    (v2's ``adjust_hue``) up to the colour model, and keeps the luma.
    """
    rgb2yiq = _RGB2YIQ.to(x.device, x.dtype)
    angle = shift.to(x.dtype) * 2 * torch.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(len(shift), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1.0, cos, -sin, sin, cos
    m = torch.linalg.inv(rgb2yiq) @ rot @ rgb2yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0.0, 1.0)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)  # torchvision's _blend, one ratio per image


class TwoViews:
    """Random views of a normalised image batch ``[B, 3, H, W]`` (same shape, same normalisation).

    Geometry (``RandomResizedCrop``, flip) is torchvision's transforms v2 per image;
    colour jitter follows v2's ``ColorJitter`` formulas (brightness, contrast,
    saturation blends, then hue, in that fixed order) vectorised over the batch
    with one factor per image (a per-image v2 call costs ~5 ms on a CPU); hue is
    a chroma rotation in YIQ space (:func:`_rotate_hue`).
    """

    def __init__(self, config: TwoViewConfig, mean, std):
        self.c = config
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._geometry: dict[tuple[int, int], Any] = {}

    def _geo(self, size: tuple[int, int]):
        from torchvision.transforms import v2

        if size not in self._geometry:
            crop = v2.RandomResizedCrop(size, scale=(self.c.crop_scale, 1.0), antialias=True)
            self._geometry[size] = v2.Compose([crop, v2.RandomHorizontalFlip(0.5 if self.c.flip else 0.0)])
        return self._geometry[size]

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], self.c
        on = (torch.rand(b, 1, 1, 1, device=x.device) < c.jitter_prob).to(x.dtype)
        if c.jitter > 0:
            def factor() -> torch.Tensor:  # uniform in [1 - s, 1 + s] where jittered, 1 elsewhere
                return 1.0 + on * (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * c.jitter
            x = (x * factor()).clamp(0.0, 1.0)
            x = _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), factor())
            x = _blend(x, _grey(x), factor())
        if c.hue > 0:
            x = _rotate_hue(x, on.view(-1) * (torch.rand(b, device=x.device) * 2 - 1) * c.hue)
        grey = (torch.rand(b, 1, 1, 1, device=x.device) < c.grayscale_prob).to(x.dtype)
        return grey * _grey(x).expand_as(x) + (1 - grey) * x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        pixels = (x * std + mean).clamp(0.0, 1.0)
        geo = self._geo((int(x.shape[-2]), int(x.shape[-1])))
        pixels = self._colour(torch.stack([geo(img) for img in pixels]))
        return (pixels - mean) / std


# ----------------------------------------------------------------------------- losses


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: cross-entropy of each view against its partner among the other ``2N - 1`` views.

    Args:
        z1: projections of the first views ``[N, d]``.
        z2: projections of the second views ``[N, d]`` (row ``i`` pairs with ``z1[i]``).
        temperature: the softmax temperature ``tau``.

    Returns:
        ``mean_i -log( exp(s(i, j(i)) / tau) / sum_{k != i} exp(s(i, k) / tau) )`` over all
        ``2N`` views, ``s`` the cosine similarity and ``j(i)`` the partner of ``i``.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with ``D`` the negative cosine similarity, ``sg`` stop-gradient."""
    d1 = F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
    d2 = F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
    return -(d1 + d2) / 2


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, *,
                mask_prob: float = 0.15, replace_mask: float = 0.8, replace_random: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick ``mask_prob`` of the non-special tokens; of those, ``replace_mask`` become
    the mask token, ``replace_random`` a random token, the rest stay; only picked positions are predicted.

    Args:
        input_ids: ``[B, L]`` token ids.
        special: bool ``[B, L]``, True where a token must never be picked (special tokens, padding).
        mask_id: the tokenizer's mask token id.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        generator: a ``torch.Generator`` (default: the global one, seeded by the loop).

    Returns:
        ``(masked_ids, labels)``: labels hold the original id at picked positions and
        ``-100`` elsewhere. At least one token is picked when any can be.
    """
    def draw(shape) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(input_ids.device)

    picked = (draw(input_ids.shape) < mask_prob) & ~special
    if not picked.any() and (~special).any():  # a batch of short texts still trains on one token
        allowed = (~special).flatten().nonzero().flatten()
        picked.view(-1)[allowed[int(draw((1,)) * len(allowed)) % len(allowed)]] = True
    labels = input_ids.masked_fill(~picked, IGNORE)
    u = draw(input_ids.shape)
    to_mask = picked & (u < replace_mask)
    to_random = picked & (u >= replace_mask) & (u < replace_mask + replace_random)
    random_ids = (draw(input_ids.shape) * vocab_size).long().clamp_(max=vocab_size - 1)
    masked = input_ids.masked_fill(to_mask, mask_id)
    return torch.where(to_random, random_ids, masked), labels


# ----------------------------------------------------------------------------- methods


class Pretrainer(Strategy):
    """Base of the pre-training methods: the backbone trains at ``lr``, the method's head at ``head_lr``."""

    kind = "pretrain"
    defaults = TrainDefaults(epochs=10, lr=1e-3, head_lr=1e-3)
    #: examples per step when the caller gives none.
    batch_size: ClassVar[int] = 128

    def build_head(self, backbone: Backbone) -> nn.Module:
        raise NotImplementedError

    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        super().check_data(backbone, data)
        if len(data) < 2:
            raise DataError(f"Pre-training '{self.name}' needs at least 2 unlabelled items; "
                            f"'{data.name}' has {len(data)}.")

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        for n, p in backbone.named_parameters():
            p.requires_grad_(not n.startswith("source_head."))
        return TransferModel(backbone, self.build_head(backbone), "classification", None)

    def train_dataset(self, model: TransferModel, data: TaskData) -> ItemDataset:
        return ItemDataset(unlabelled(data), model.backbone.preprocess)

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in body}
        head = [p for p in model.head.parameters() if p.requires_grad and id(p) not in ids]  # tied weights once
        return [{"params": body, "lr": lr, "name": "backbone"}, {"params": head, "lr": head_lr, "name": "head"}]


class _TwoViewPretrainer(Pretrainer):
    modalities = ("image",)

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        self.views_ = TwoViews(self.config, backbone.preprocess.mean, backbone.preprocess.std)
        return model

    def two_views(self, model: nn.Module, inputs: torch.Tensor):
        """Both views in one forward pass (BatchNorm sees all ``2N``); returns the head's outputs, split."""
        n = inputs.shape[0]
        out = model(torch.cat([self.views_(inputs), self.views_(inputs)]))
        if isinstance(out, tuple):
            return [(o[:n], o[n:]) for o in out]
        return out[:n], out[n:]


def _mlp(sizes: list[int], last_bn: bool, affine_last: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=last and not last_bn))
        if not last or last_bn:
            layers.append(nn.BatchNorm1d(b, affine=affine_last or not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@dataclass
class SimCLRConfig(TwoViewConfig):
    temperature: float = field(default=0.5, metadata={"help": "NT-Xent softmax temperature"})
    proj_dim: int = field(default=128, metadata={"help": "output width of the projection MLP"})
    proj_hidden: int | None = field(default=None, metadata={
        "help": "hidden width of the projection MLP (None: the backbone's)"})

    _parameter_constraints = {
        "temperature": [Interval("number", 0, 10, closed="right")],
        "proj_dim": [Interval("int", 1, None)],
        "proj_hidden": [Interval("int", 1, None), NONE],
    }


class SimCLR(_TwoViewPretrainer):
    """SimCLR: contrast two views of each image against the other views of the batch (NT-Xent)."""

    name = "simclr"
    Config = SimCLRConfig

    def build_head(self, backbone: Backbone) -> nn.Module:
        d = backbone.num_features
        return _mlp([d, self.config.proj_hidden or d, self.config.proj_dim], last_bn=False)

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        z1, z2 = self.two_views(model, batch["inputs"])
        return {"loss": nt_xent(z1, z2, self.config.temperature)}


class SimSiamHead(nn.Module):
    """Projector (3 layers, BN, the last BN without affine) and predictor (bottleneck); returns ``(z, p)``."""

    def __init__(self, in_features: int, proj_dim: int, pred_dim: int):
        super().__init__()
        self.projector = _mlp([in_features, proj_dim, proj_dim, proj_dim], last_bn=True, affine_last=False)
        self.predictor = nn.Sequential(nn.Linear(proj_dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True), nn.Linear(pred_dim, proj_dim))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(features)
        return z, self.predictor(z)


@dataclass
class SimSiamConfig(TwoViewConfig):
    proj_dim: int = field(default=2048, metadata={"help": "width of the projector"})
    pred_dim: int = field(default=512, metadata={"help": "bottleneck width of the predictor"})

    _parameter_constraints = {"proj_dim": [Interval("int", 1, None)], "pred_dim": [Interval("int", 1, None)]}


class SimSiam(_TwoViewPretrainer):
    """SimSiam: predict one view's projection from the other's, with a stop-gradient on the target."""

    name = "simsiam"
    Config = SimSiamConfig

    def build_head(self, backbone: Backbone) -> nn.Module:
        return SimSiamHead(backbone.num_features, self.config.proj_dim, self.config.pred_dim)

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        (z1, z2), (p1, p2) = self.two_views(model, batch["inputs"])
        return {"loss": simsiam_loss(p1.float(), p2.float(), z1.float(), z2.float())}


@dataclass
class MLMConfig(StrategyConfig):
    mask_prob: float = field(default=0.15, metadata={"help": "fraction of (non-special) tokens predicted"})
    replace_mask: float = field(default=0.8, metadata={"help": "of those, the fraction replaced by the mask token"})
    replace_random: float = field(default=0.1, metadata={"help": "of those, the fraction replaced by a random token"})

    _parameter_constraints = {
        "mask_prob": [Interval("number", 0, 1, closed="right")],
        "replace_mask": [Interval("number", 0, 1)],
        "replace_random": [Interval("number", 0, 1)],
    }

    def validate(self) -> None:
        if self.replace_mask + self.replace_random > 1:
            raise ConfigError(f"The 'replace_mask' + 'replace_random' parameters of MLMConfig must sum to at most 1. "
                              f"Got {self.replace_mask} + {self.replace_random} instead.")


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then a decoder tied to the input embeddings, plus a bias."""

    def __init__(self, hidden: int, vocab: int, eps: float = 1e-12):
        super().__init__()
        self.dense, self.norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), embeddings, self.bias)


def _encoder(backbone: Backbone) -> nn.Module:
    owner, attr = backbone.transformer_slot()
    return getattr(owner, attr)


class MaskedLMModel(TransferModel):
    """The backbone's transformer and an MLM head; ``forward`` predicts the labelled positions only."""

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        encoder = _encoder(self.backbone)
        hidden = encoder(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        picked = labels != IGNORE
        return self.head(hidden[picked], encoder.get_input_embeddings().weight), labels[picked]


class MaskedLM(Pretrainer):
    """Masked-language-model continued pre-training of a transformer text encoder (domain-adaptive pre-training)."""

    name = "mlm"
    Config = MLMConfig
    modalities = ("text",)
    defaults = TrainDefaults(epochs=3, lr=5e-5, head_lr=5e-4)
    batch_size = 16

    @staticmethod
    def check_backbone(backbone: Backbone) -> None:
        """Refuse a backbone without a transformer and a tokenizer that has a mask token, naming the valid ones."""
        tokenizer = getattr(getattr(backbone, "preprocess", None), "tokenizer", None)
        slot = backbone.transformer_slot() if backbone.modality == "text" else None
        encoder = getattr(*slot) if slot is not None else None
        if encoder is None or not hasattr(encoder, "get_input_embeddings") or tokenizer is None:
            what = f"a {backbone.modality} model without a transformer encoder and its tokenizer"
        elif getattr(tokenizer, "mask_token_id", None) is None:
            what = f"a text model whose tokenizer ({type(tokenizer).__name__}) has no mask token"
        else:
            return
        raise ConfigError(f"Pre-training method 'mlm' needs a transformer text encoder with a tokenizer vocabulary; "
                          f"backbone '{backbone.spec}' is {what}. Valid backbone families for mlm: "
                          f"{', '.join(MLM_FAMILIES)}. Backbones such as small-cnn:, timm:, torchvision:, "
                          f"efficientnet-lite: (images: use simclr or simsiam) and tfidf: have none.")

    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        if backbone is not None:
            self.check_backbone(backbone)
        super().check_data(backbone, data)

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        self.check_backbone(backbone)
        for p in backbone.parameters():
            p.requires_grad_(True)
        tokenizer, encoder = backbone.preprocess.tokenizer, _encoder(backbone)
        vocab = encoder.get_input_embeddings().weight.shape[0]
        head = MaskedLMHead(encoder.get_input_embeddings().weight.shape[1], vocab,
                            getattr(encoder.config, "layer_norm_eps", 1e-12))
        self.mask_id_ = int(tokenizer.mask_token_id)
        self.special_ids_ = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.vocab_ = min(vocab, len(tokenizer))
        return MaskedLMModel(backbone, head, "classification", None)

    def special_mask(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """True at the tokenizer's special tokens ([CLS], [SEP], [PAD], ...) and at padding: never masked."""
        ids = inputs["input_ids"]
        special = torch.isin(ids, self.special_ids_.to(ids.device))
        if "attention_mask" in inputs:
            special |= inputs["attention_mask"] == 0
        return special

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        inputs, c = batch["inputs"], self.config
        masked, labels = mask_tokens(inputs["input_ids"], self.special_mask(inputs), self.mask_id_, self.vocab_,
                                     mask_prob=c.mask_prob,
                                     replace_mask=c.replace_mask, replace_random=c.replace_random)
        logits, targets = model({**inputs, "input_ids": masked, "labels": labels})
        if targets.numel() == 0:  # only special tokens in this batch
            return {"loss": logits.sum() * 0.0}
        return {"loss": F.cross_entropy(logits.float(), targets)}


for _cls in (SimCLR, SimSiam, MaskedLM):
    PRETRAINERS.register(_cls.name, _cls)


# ----------------------------------------------------------------------------- entry point


