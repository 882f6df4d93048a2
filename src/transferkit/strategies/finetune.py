"""Fine-tuning strategies: ``finetune`` (full, partial, layer-specific, discriminative
learning rates) and ``gradual-unfreeze`` (ULMFiT / fastai ``fine_tune`` style).

Layer groups come from the backbone's ``layer_groups()`` (input -> output), so
the same options work on CNNs, vision transformers and BERT-style encoders.

* ``train_last=k`` trains only the top k layer groups (partial fine-tuning).
* ``freeze=["blocks.0*", ...]`` / ``train_only=[...]``: fnmatch patterns over
  the backbone's parameter names (layer-specific fine-tuning).
* ``lr_decay=d``: group i from the top trains at ``lr * d**i``
  (discriminative learning rates, Howard & Ruder 2018,
  https://arxiv.org/abs/1801.06146).
* ``regularizer="l2sp"|"ewc"|"lwf"|"bss"`` (with ``regularizer_weight`` and
  ``regularizer_options``): a knowledge-preserving penalty added to the loss
  and reported by name (:mod:`transferkit.strategies.regularizers`).
* ``augment=True|"trivialaugment"|...``, ``mixup=alpha``, ``cutmix=alpha``:
  image augmentation policies and label-mixing regularisers
  (:mod:`transferkit.strategies.augment`).
* ``audio_augment=["speed", "pitch", "noise", "shift"]``: random speed and pitch perturbation, noise
  and time shift of the training clips of audio data, on the decoded waves
  (:class:`transferkit.backbones.audio_augment.WaveAugment`).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from transferkit.constraints import NONE, Interval, Options
from transferkit.data.batches import run_batches
from transferkit.data.dataset import TaskData
from transferkit.data.streaming import StreamData, is_stream
from transferkit.data.packing import PackedDataset
from transferkit.errors import ConfigError
from transferkit.strategies import regularizers
from transferkit.strategies.augment import (POLICIES, ImageAugment, mix_batch, random_shift_flip,  # noqa: F401
                                            resolve_policy, soft_target_cross_entropy)
from transferkit.strategies.base import (STRATEGIES, StepContext, Strategy, StrategyConfig, TrainDefaults,
                                         TransferModel, frozen_batchnorm_to_eval, is_normalized_head,
                                         register_strategy)
from transferkit.strategies.head_init import HEAD_INITS, init_head_from_probe, wants_probe_head
from transferkit.strategies.regularizers import REGULARIZERS
from transferkit.tasks.detection import DETECTORS, OTHER_DETECTORS
from transferkit.tasks.heads import with_input_scale

#: ``class_weight`` values: see :func:`balanced_class_weights`.
CLASS_WEIGHTS = ("none", "balanced")
#: ``feature_scale`` values: see :func:`feature_scale_of`.
FEATURE_SCALES = ("auto", "rms", "none")


@dataclass
class FinetuneConfig(StrategyConfig):
    train_last: int | None = field(default=None, metadata={"help": "train only the last k layer groups (None: all)"})
    freeze: list[str] = field(default_factory=list, metadata={"help": "fnmatch patterns of backbone parameters to freeze"})
    train_only: list[str] = field(default_factory=list, metadata={"help": "fnmatch patterns: train only these backbone parameters"})
    lr_decay: float = field(default=1.0, metadata={"help": "per-group learning-rate factor from the top (1: uniform)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout before the head"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the classification loss"})
    augment: bool | str = field(default=False, metadata={
        "help": f"images: true (shift-flip), false, or a policy: {', '.join(POLICIES)}"})
    audio_augment: list[str] = field(default_factory=list, metadata={
        "help": "audio: random changes of half the training clips each, of speed (x0.9-1.1), pitch (+-2 semitones), "
                "noise (10-30 dB SNR), shift (up to 0.2 s): any of speed, pitch, noise, shift"})
    mixup: float = field(default=0.0, metadata={"help": "images, classification: mixup Beta(alpha, alpha); 0: off"})
    cutmix: float = field(default=0.0, metadata={"help": "images, classification: cutmix Beta(alpha, alpha); 0: off"})
    mix_prob: float = field(default=1.0, metadata={"help": "probability that a batch is mixed (mixup/cutmix)"})
    recalibrate_bn: bool = field(default=False, metadata={"help": "re-estimate BatchNorm statistics after training"})
    batchnorm: str = field(default="auto", metadata={
        "help": "BatchNorm statistics in training: frozen (keep the pre-trained ones), train (update from target "
                "batches), auto (frozen for a pre-trained backbone, else train)"})
    feature_scale: str = field(default="auto", metadata={
        "help": "what a new linear head on a pre-trained backbone multiplies its features by: auto (unit-length "
                "embeddings, as sentence encoders give, by sqrt(width), which brings them to a root-mean-square "
                "of 1; other features stay raw), rms (any features, to a root-mean-square of 1 on up to 64 "
                "training items), none"})
    class_weight: str = field(default="none", metadata={
        "help": "single-label classification: balanced (each class's loss weighted by n / (classes x its count), "
                "scikit-learn's rule, so a rare class counts as much as a common one) or none"})
    head_init: str = field(default="random", metadata={
        "help": "random (a new head), or probe: fit the head on the frozen features first (LP-FT)"})
    regularizer: str | None = field(default=None, metadata={
        "help": f"knowledge-preserving penalty: {', '.join(REGULARIZERS.names())} (None: none)"})
    regularizer_weight: float | None = field(default=None, metadata={
        "help": "weight of the penalty (None: the regularizer's default)"})
    regularizer_options: dict = field(default_factory=dict, metadata={
        "help": "the regularizer's options, e.g. {temperature: 2} for lwf (transferkit.strategies.regularizers)"})
    packing: bool = field(default=False, metadata={
        "help": "text-generation: pack several prompt/completion pairs into each training row of up to max_length "
                "tokens (less padding; positions restart and attention stays within each pair; batch_size counts "
                "rows, so an epoch has fewer steps)"})
    label_all_tokens: bool = field(default=False, metadata={
        "help": "token-classification: train every sub-token of a word, its later ones on the I- tag of its type "
                "(IOB2 tags; BILOU refused); false: the first sub-token only. Predictions read each word at its "
                "first sub-token either way"})
    detector: str | None = field(default=None, metadata={
        "help": f"detection data: the detector on the backbone's pyramid, one of {', '.join(DETECTORS)} "
                f"(None: {DETECTORS[0]}); instance-segmentation: mask-rcnn (its only one); other tasks refuse it"})

    _parameter_constraints = {
        "train_last": [Interval("int", 0, None), NONE],
        "lr_decay": [Interval("number", 0, 1, closed="right")],
        "dropout": [Interval("number", 0, 0.95)],
        "label_smoothing": [Interval("number", 0, 0.5)],
        "mixup": [Interval("number", 0, None)],
        "cutmix": [Interval("number", 0, None)],
        "mix_prob": [Interval("number", 0, 1)],
        "batchnorm": [Options("auto", "frozen", "train")],
        "feature_scale": [Options(*FEATURE_SCALES)],
        "class_weight": [Options(*CLASS_WEIGHTS)],
        "head_init": [Options(*HEAD_INITS)],
        "detector": [Options(*DETECTORS, *OTHER_DETECTORS), NONE],
    }

    def validate(self) -> None:
        owner = type(self).__name__
        resolve_policy(self.augment, owner)
        if isinstance(self.audio_augment, str):
            self.audio_augment = [self.audio_augment]
        if self.audio_augment:
            from transferkit.backbones.audio_augment import WaveAugment

            WaveAugment(self.audio_augment)  # names checked here, with the valid ones in the message
        if self.freeze and self.train_only:
            raise ConfigError(f"{owner}: give 'freeze' or 'train_only', not both.")
        regularizers.validate_fields(owner, self.regularizer, self.regularizer_weight, self.regularizer_options)


def balanced_class_weights(targets, num_classes: int) -> torch.Tensor:
    """``n / (classes x count)`` per class (scikit-learn's ``balanced``); a class with no item gets weight 0.

    Example:
        >>> balanced_class_weights([0, 0, 0, 1], 2).tolist()
        [0.6666666865348587, 2.0]
    """
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def class_weights_for(mode: str, data: TaskData | StreamData) -> torch.Tensor | None:
    """The ``class_weight`` option's weights for ``data`` (``None`` for ``none``); refused for tasks without one class
    per item, naming the task. A stream's weights come from the counts of its label pass."""
    if mode == "none":
        return None
    if not data.task_spec.single_label:
        raise ConfigError(f"class_weight={mode!r} weights the classes of single-label classification; "
                          f"'{data.name}' is {data.task}. Set class_weight=none.")
    if is_stream(data):
        return balanced_class_weights(np.repeat(np.arange(len(data.label_counts)), data.label_counts),
                                      max(data.num_outputs, 1))
    return balanced_class_weights(data.targets, max(data.num_outputs, 1))


#: Items whose features set the head's input scale: enough for a stable mean.
SCALE_ITEMS = 64
#: Features whose mean length is within this of 1 are unit-length embeddings (``feature_scale=auto``).
UNIT_LENGTH_TOLERANCE = 0.01


def feature_scale_of(backbone, data: TaskData | StreamData, mode: str = "auto", items: int = SCALE_ITEMS) -> float:
    """The fixed number a new head multiplies ``backbone``'s features by, from the first ``items`` training
    items (in eval mode; a stream's first items in its source's order), rounded to 3 significant digits.

    * ``rms``: the number that brings the features to a root-mean-square of 1;
    * ``auto``: the same for unit-length embeddings (their mean length within 1%), which makes it
      ``sqrt(width)``; 1 for other features;
    * ``none``: 1.

    A sentence encoder's unit vectors (components near 0.05 for 384 dimensions) left a fine-tuned head at
    the loop's head learning rate learning only the class prior on the drug reviews. Scaling every backbone's
    features (``rms``) did not help EfficientNet-Lite0, whose features the default learning rates were tuned
    on: -1.5 points [-4.9, +1.9] on Fashion-MNIST at 10 labels per class, 3 seeds
    (benchmarks/results/recipes/fmnist), so ``auto`` scales only unit-length embeddings.
    """
    if mode == "none":
        return 1.0
    kind = data.task_spec.feature_kind
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            first = data.head(items) if is_stream(data) else [data.items[i] for i in range(min(items, len(data)))]
            batch = backbone.preprocess(first)
            feats = backbone.features(batch, kind).float()
    finally:
        backbone.train(was_training)
    if not feats.numel() or not torch.isfinite(feats).all():
        return 1.0
    if mode == "auto" and abs(float(feats.norm(dim=-1).mean()) - 1.0) > UNIT_LENGTH_TOLERANCE:
        return 1.0
    rms = float(feats.pow(2).mean().sqrt())
    return float(f"{1.0 / rms:.3g}") if rms > 0 else 1.0


def recalibrate_batchnorm(model: TransferModel, data: TaskData, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics with a cumulative average over ``data``.

    A randomly initialised EfficientNet-Lite (BN momentum 0.01) barely moves its
    statistics in a short run and collapses to chance at evaluation (ASSETS.md).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()  # BatchNorm updates its running statistics in train mode, also without gradients
    pre = model.backbone.preprocess
    for _ in run_batches(model.backbone.forward_features, lambda idx: pre([data.items[j] for j in idx]), len(data),
                         batch_size=batch_size):
        pass
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@register_strategy
class Finetune(Strategy):
    """Fine-tune the backbone and a new head (full, partial, layer-specific, discriminative lrs)."""

    name = "finetune"
    Config = FinetuneConfig
    defaults = TrainDefaults(epochs=20, lr=1e-4, head_lr=1e-3)
    streams = True  # gradient steps in the loop; a stream's counts and first items serve prepare()
    generative = True  # trains through a language model's own output layer too (text-generation)
    dense = True  # and a detection or segmentation head on the backbone's feature pyramid
    #: Regularizers a subclass accepts (``None``: every registered one); PEFT methods narrow it.
    allowed_regularizers: ClassVar[tuple[str, ...] | None] = None
    #: Trains the pre-trained backbone, so ``fit`` measures ``source_agreement`` where there is a source head.
    changes_backbone: ClassVar[bool] = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        if self.config.regularizer is not None:
            regularizers.check_allowed(self, self.config.regularizer)
        if self.config.detector is not None and not self.dense:
            raise ConfigError(f"Strategy '{self.name}' does not train detectors, so its 'detector' option must stay "
                              f"unset (got {self.config.detector!r}). Strategies that train detection: "
                              f"{', '.join(n for n in STRATEGIES.names() if STRATEGIES.get(n).dense)}.")
        self.regularizer_ = None

    @classmethod
    def describe_options(cls) -> list[tuple]:
        """The options, without ``detector`` for strategies that train no head on a pyramid (its config's base is
        shared with them)."""
        return [row for row in super().describe_options() if cls.dense or row[0] != "detector"]

    def chosen_head(self) -> str | None:
        """The ``detector`` option (``None``: the task's default head)."""
        return self.config.detector

    def head_options(self, data: TaskData) -> dict:
        """``{"head": detector}`` where the option is set; refused for a task that offers no such choice."""
        c, task = self.config, data.task_spec
        if c.detector is None:
            return {}
        if c.detector not in task.heads and c.detector in OTHER_DETECTORS:
            raise ConfigError(f"The {c.detector!r} detector predicts a mask per object: it trains "
                              f"{OTHER_DETECTORS[c.detector]} data (fit with --task {OTHER_DETECTORS[c.detector]} on "
                              f"data with masks); '{data.name}' is {data.task} data, whose detectors are "
                              f"{', '.join(task.heads) or task.head}.")
        if c.detector not in task.heads:
            raise ConfigError(f"The 'detector' option ({c.detector!r}) chooses the detector of detection data; "
                              f"'{data.name}' is {data.task} data, whose head is {task.head}. Leave detector unset.")
        return {"head": c.detector}

    def _frozen_names(self, model: TransferModel) -> set[str]:
        c, bb = self.config, model.backbone
        names = {n for n, p in bb.named_parameters()}
        frozen: set[str] = set()
        if c.train_last is not None:
            groups = bb.layer_groups()
            keep = {id(p) for g in groups[len(groups) - c.train_last:] for p in g} if c.train_last else set()
            frozen |= {n for n, p in bb.named_parameters() if id(p) not in keep}
        if c.freeze:
            frozen |= {n for n in names if any(fnmatch.fnmatch(n, pat) for pat in c.freeze)}
        if c.train_only:
            frozen |= {n for n in names if not any(fnmatch.fnmatch(n, pat) for pat in c.train_only)}
        for pat in [*c.freeze, *c.train_only]:
            if not any(fnmatch.fnmatch(n, pat) for n in names):
                raise ConfigError(f"Pattern {pat!r} matches no parameter of backbone '{bb.spec}'. "
                                  f"Examples of names: {', '.join(sorted(names)[:6])}.")
        return frozen

    def prepare(self, backbone, data: TaskData | StreamData) -> TransferModel:
        self._check_mixing(data)
        self._check_stream_options(data)
        self._check_packing(backbone, data)
        self.target_options(data)  # label_all_tokens on data without a tag per word, or on BILOU tags: refused now
        self.class_weight_ = class_weights_for(self.config.class_weight, data)
        model = super().prepare(backbone, data)
        self._scale_features(model, data)
        self.head_init_ = None
        if wants_probe_head(self.config.head_init, model, data):  # before any adapter or regularizer snapshot
            self.head_init_ = init_head_from_probe(model, data, seed=torch.initial_seed() % 2**31)
        pre = backbone.preprocess
        # a task whose targets sit on pixels augments images and targets together (Task.augment) instead
        policy = False if data.task_spec.spatial_targets else self.config.augment
        self._augment = ImageAugment(policy, getattr(pre, "mean", None), getattr(pre, "std", None))
        if backbone.source_head is not None:
            backbone.source_head.requires_grad_(False)
        frozen = self._frozen_names(model)
        for n, p in backbone.named_parameters():
            if backbone.source_head is None or not n.startswith("source_head."):
                p.requires_grad_(n not in frozen)
        # Snapshots and the Fisher see every weight the freeze options let train.
        self.regularizer_ = regularizers.build_regularizer(self, model, data)
        return model

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        groups = model.backbone.layer_groups()
        out = []
        for i, g in enumerate(groups):
            params = [p for p in g if p.requires_grad]
            if params:
                out.append({"params": params, "lr": lr * self.config.lr_decay ** (len(groups) - 1 - i), "name": f"group{i}"})
        head = [p for p in model.head.parameters() if p.requires_grad]
        return out + [{"params": head, "lr": head_lr, "name": "head"}]

    def _scale_features(self, model: TransferModel, data: TaskData) -> None:
        """``feature_scale``: give a new linear head on a pre-trained backbone a fixed input scale."""
        if (self.config.feature_scale == "none" or self.kind == "scratch" or not model.backbone.pretrained
                or getattr(model.head, "head_kind", None) != "linear" or is_normalized_head(model.head)
                or not len(data)):
            return
        model.head = with_input_scale(model.head, feature_scale_of(model.backbone, data, self.config.feature_scale))

    def _check_mixing(self, data: TaskData) -> None:
        """Mixup/cutmix mix images and one-hot labels; named policies act on images only."""
        c = self.config
        if (c.mixup > 0 or c.cutmix > 0) and (data.modality != "image" or not data.task_spec.single_label):
            raise ConfigError(f"mixup and cutmix mix images and their class labels, so they need image "
                              f"classification data; '{data.name}' is {data.modality} {data.task}. "
                              f"Set mixup=0 and cutmix=0.")
        if c.audio_augment and data.modality != "audio":
            raise ConfigError(f"audio_augment={c.audio_augment!r} changes audio clips; '{data.name}' is "
                              f"{data.modality} data. Leave audio_augment empty.")
        if isinstance(c.augment, str) and resolve_policy(c.augment) != "none" and data.modality != "image":
            raise ConfigError(f"augment={c.augment!r} transforms images; '{data.name}' is {data.modality} data.")
        if data.task_spec.spatial_targets and resolve_policy(c.augment) != "none" and self.kind != "scratch":
            raise ConfigError(f"augment={c.augment!r} moves images without their {data.task_spec.target_kind}; "
                              f"{data.task} augments both together (flip, zoom, shift) on its own. Set augment=false.")

    def _check_stream_options(self, data) -> None:
        """Options that read the whole training set before or after training are refused on a stream."""
        c = self.config
        wholesale = {"head_init=probe": c.head_init == "probe", "recalibrate_bn=true": c.recalibrate_bn}
        named = [k for k, on in wholesale.items() if on]
        if is_stream(data) and named:
            raise ConfigError(f"{', '.join(named)} read{'s' if len(named) == 1 else ''} the whole training set in "
                              f"memory; '{data.name}' is a stream. Leave {' and '.join(k.split('=')[0] for k in named)} "
                              f"at the default, or read the data whole (without --stream).")

    def _check_packing(self, backbone, data: TaskData) -> None:
        """``packing`` needs a task whose items are token sequences, and a model that keeps packed pairs apart."""
        if not self.config.packing:
            return
        if not data.task_spec.packable:
            raise ConfigError(f"packing=true joins several prompt/completion pairs into one training row; "
                              f"'{data.name}' is {data.task} data. Set packing=false.")
        isolates = getattr(backbone, "packing_isolates_pairs", None)
        if isolates is None or not isolates():
            raise ConfigError(f"packing=true: the attention of '{backbone.spec}' crosses the pairs of a packed row "
                              f"(its logits for a pair packed after another differ from its logits alone), so each "
                              f"pair would read the ones before it. Set packing=false.")

    def train_dataset(self, model: TransferModel, data: TaskData):
        """The training items (packed into rows with ``packing``); with ``audio_augment``, their waves changed at
        random as they are read."""
        if self.config.packing:
            return PackedDataset(data, model.backbone.preprocess)
        dataset = super().train_dataset(model, data)
        if self.config.audio_augment:
            from transferkit.backbones.audio_augment import WaveAugment

            pre = model.backbone.preprocess
            if not hasattr(pre, "with_wave_augment"):
                raise ConfigError(f"audio_augment changes decoded waves; backbone '{model.backbone.spec}' does not "
                                  f"read audio through transferkit's audio preprocessing.")
            dataset.preprocess = pre.with_wave_augment(WaveAugment(self.config.audio_augment))
        return dataset

    def target_options(self, data: TaskData) -> dict:
        """``label_all_tokens``: the tag of a word's later sub-tokens (tasks with a tag per word only)."""
        if not self.config.label_all_tokens:
            return {}
        if data.task_spec.target_kind != "per-token":
            raise ConfigError(f"label_all_tokens=true tags the sub-tokens of words (token-classification); "
                              f"'{data.name}' is {data.task} data. Set label_all_tokens=false.")
        from transferkit.tasks.token_classification import continuation_tags

        return {"continuation": continuation_tags(data.label_names)}

    def augment(self, inputs):
        """The ``augment`` policy on a normalised image batch (other inputs pass through)."""
        aug = getattr(self, "_augment", None)
        if aug is None:  # prepare() not run on this instance: build from the config alone (needs no mean/std)
            aug = self._augment = ImageAugment(self.config.augment)
        return aug(inputs)

    def on_epoch_start(self, model: TransferModel, epoch: int, epochs: int) -> None:
        self.set_batchnorm(model)

    def set_batchnorm(self, model: TransferModel) -> None:
        """Frozen BatchNorm layers stay in eval mode; with ``batchnorm`` frozen (the default for a pre-trained
        backbone) every BatchNorm layer does.

        Fine-tuning EfficientNet-Lite0 on 10 and 100 Fashion-MNIST images per class at 32 px with batch 32
        reached about 50% and 68% with statistics updated from the target batches, 73% and 84% with the
        pre-trained statistics kept (benchmarks/results/recipes): small target batches of small images give
        noisy statistics, and the running averages drift away from what the pre-trained layers expect.
        """
        mode = self.config.batchnorm
        if mode == "frozen" or (mode == "auto" and model.backbone.pretrained):
            for m in model.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        else:
            frozen_batchnorm_to_eval(model.backbone)

    def step(self, model: nn.Module, batch: dict, ctx: StepContext | None = None) -> dict:
        # Mix first, so the task loss and every penalty see the same (mixed) inputs.
        c = self.config
        if (c.mixup > 0 or c.cutmix > 0) and "targets" in batch:
            mixed = mix_batch(batch["inputs"], batch["targets"], mixup=c.mixup, cutmix=c.cutmix, prob=c.mix_prob)
            if mixed is not None:
                batch = {**batch, "inputs": mixed.inputs, "mixed": mixed}
        if self.regularizer_ is None:
            return self._task_step(model, batch)
        return regularizers.regularized_step(self._task_step, self.regularizer_, model, batch)

    def _task_step(self, model: nn.Module, batch: dict) -> dict:
        """The task loss: soft-target cross-entropy (label smoothing folded in) on a mixed batch."""
        mixed = batch.get("mixed")
        if mixed is None:
            return super().step(model, batch)
        outputs = model(batch["inputs"])
        soft = mixed.soft_targets(outputs.shape[-1], self.config.label_smoothing)
        weight = getattr(self, "class_weight_", None)
        if weight is not None:  # each item's soft targets weighted class by class
            soft = soft * weight.to(soft.device, soft.dtype)
        return {"loss": soft_target_cross_entropy(outputs, soft)}

    def on_train_end(self, model: TransferModel, data: TaskData) -> None:
        if self.regularizer_ is not None:
            self.regularizer_.release()
        if self.config.recalibrate_bn:
            recalibrate_batchnorm(model, data)


@dataclass
class GradualUnfreezeConfig(FinetuneConfig):
    head_epochs: int = field(default=1, metadata={"help": "epochs training only the head"})
    unfreeze_every: int = field(default=1, metadata={"help": "epochs between unfreezing the next group (top-down)"})

    _parameter_constraints = {"head_epochs": [Interval("int", 0, None)], "unfreeze_every": [Interval("int", 1, None)]}


@register_strategy
class GradualUnfreeze(Finetune):
    """Train the head first, then unfreeze layer groups top-down on a schedule (ULMFiT)."""

    name = "gradual-unfreeze"
    Config = GradualUnfreezeConfig
    defaults = TrainDefaults(epochs=20, lr=1e-4, head_lr=1e-3)

    def prepare(self, backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        # What the freeze options let train at all; the schedule opens groups within it.
        self._allowed = {id(p) for p in model.backbone.parameters() if p.requires_grad}
        return model

    def on_epoch_start(self, model: TransferModel, epoch: int, epochs: int) -> None:
        c = self.config
        groups = model.backbone.layer_groups()
        n_open = 0 if epoch < c.head_epochs else 1 + (epoch - c.head_epochs) // c.unfreeze_every
        if not any(True for _ in model.head.parameters()):
            n_open = max(n_open, 1)  # no new head (a language model's own output): the top group trains first
        open_ids = {id(p) for g in groups[len(groups) - n_open:] for p in g} if n_open else set()
        for p in model.backbone.parameters():
            if id(p) in self._allowed:
                p.requires_grad_(id(p) in open_ids)
        self.set_batchnorm(model)
