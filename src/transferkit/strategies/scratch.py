"""``scratch``: the baselines a practitioner would really train without transfer.

Transfer is only worth its cost when it beats these, so they get a fair recipe,
not a strawman:

* ``small-cnn`` (images): a ~100k-parameter CNN at the data's own resolution,
  with random shifts and flips and a schedule long enough for tiny data
  (at least 60 epochs and about 600 optimizer steps, at most 150 epochs).
* ``same-arch``: the backbone's architecture, randomly initialised, trained
  with one learning rate for everything; BatchNorm statistics are re-estimated
  at the end (a randomly initialised EfficientNet-Lite otherwise collapses to
  chance, ASSETS.md).
* ``tfidf`` (text): TF-IDF word 1-2 grams and logistic regression with its C
  chosen by cross-validation.
* ``crf`` (token classification): the ``crf`` strategy, a linear-chain CRF on
  hand-written word features (:mod:`transferkit.strategies.crf`).
* ``mfcc`` (audio): MFCC and delta statistics (80 numbers per clip) and logistic regression
  with its C chosen by cross-validation.
* ``audio-cnn`` (audio): a small CNN on log-mel spectrograms with SpecAugment, on the small-CNN
  schedule.
* ``auto``: ``small-cnn`` for images, ``tfidf`` for text, ``mfcc`` for audio, ``crf`` for per-word tags,
  ``same-arch`` for detection and segmentation (the same detector or segmenter, every weight random, a
  longer schedule: :func:`dense_scratch_epochs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval, Options
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.strategies.base import TrainDefaults, TransferModel, register_strategy
from transferkit.strategies.finetune import Finetune, FinetuneConfig, recalibrate_batchnorm
from transferkit.strategies.linear_probe import fit_linear_head

VARIANTS = ("auto", "small-cnn", "same-arch", "tfidf", "crf", "mfcc", "audio-cnn")
#: The modality each data-specific variant takes.
VARIANT_MODALITY = {"small-cnn": "image", "tfidf": "text", "mfcc": "audio", "audio-cnn": "audio"}


@dataclass
class ScratchConfig(FinetuneConfig):
    variant: str = field(default="auto", metadata={"help": f"one of {', '.join(VARIANTS)}"})
    image_size: int | None = field(default=None, metadata={"help": "small-cnn input size (default: the data's own)"})
    augment: bool = field(default=True, metadata={
        "help": "random shifts and flips for image baselines, SpecAugment for audio-cnn"})
    batchnorm: str = field(default="train", metadata={
        "help": "BatchNorm statistics in training: train (a model from scratch has none worth keeping), frozen, auto"})
    vad: bool | str = field(default=False, metadata={
        "help": "mfcc and audio-cnn: trim the silence around each clip's words with Silero VAD (True or trim: what "
                "fit's --vad sets), or also shorten pauses inside a clip to 0.1 s (speech: fit's --vad-speech)"})

    _parameter_constraints = {"variant": [Options(*VARIANTS)], "image_size": [Interval("int", 4, None), NONE]}

    def validate(self) -> None:
        super().validate()
        from transferkit.backbones.vad import vad_setting

        self.vad = vad_setting(self.vad, type(self).__name__)  # off, trim or speech, as the bundle keeps it


def native_image_size(data: TaskData, default: int = 32) -> int:
    """The side of the data's images: array height, or the median of the first image files."""
    if isinstance(data.items, np.ndarray) and data.items.ndim >= 3:
        return int(data.items.shape[1])
    from PIL import Image

    sides = []
    for path in list(data.items)[:16]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except (OSError, TypeError):
            continue
    return int(np.median(sides)) if sides else default


def small_data_epochs(n: int, batch_size: int, min_epochs: int = 60, max_epochs: int = 150, steps: int = 600) -> int:
    """Epochs for a from-scratch model on ``n`` examples: ~``steps`` optimizer steps, clamped."""
    per_epoch = max(1, math.ceil(n / batch_size))
    return int(min(max_epochs, max(min_epochs, math.ceil(steps / per_epoch))))


#: How many times the training examples of a transfer run at its defaults (the task's ``min_train_examples``)
#: a detector or segmenter from scratch is shown: random weights need a longer schedule to be a fair baseline.
DENSE_SCRATCH_FACTOR = 4


def dense_scratch_epochs(n: int, min_examples: int) -> int:
    """Epochs for a detector or segmenter from scratch on ``n`` images: at least 40, and enough to show
    :data:`DENSE_SCRATCH_FACTOR` times the ``min_examples`` a transfer run at its defaults is shown."""
    return max(40, math.ceil(DENSE_SCRATCH_FACTOR * min_examples / max(1, n)))


@register_strategy
class Scratch(Finetune):
    """Baselines without transfer: a small CNN, the same architecture at random init, TF-IDF + LR, MFCC + LR."""

    name = "scratch"
    Config = ScratchConfig
    kind = "scratch"
    streams = False  # its baselines (small CNN sized from the items, TF-IDF, MFCC + LR) read the data whole
    modalities = ("image", "text", "audio")
    # its baselines pool one vector per item; per-word tags go to the CRF
    tasks = ("classification", "multilabel", "regression", "token-classification", "detection", "segmentation",
             "instance-segmentation")
    dense = True  # same-arch: the detector or segmenter with every weight random
    defaults = TrainDefaults(epochs=60, lr=3e-3, head_lr=3e-3)

    def variant(self, data: TaskData) -> str:
        v = self.config.variant
        per_token = data.task_spec.target_kind == "per-token"
        spatial = data.task_spec.spatial_targets
        if v == "auto":
            return ("crf" if per_token else "same-arch" if spatial
                    else {"image": "small-cnn", "audio": "mfcc"}.get(data.modality, "tfidf"))
        if spatial and v != "same-arch":
            raise ConfigError(f"Scratch variant '{v}' does not apply to {data.task} data '{data.name}': "
                              f"{data.task} trains from scratch with variant 'same-arch' (the same model, random init).")
        if v in VARIANT_MODALITY and data.modality != VARIANT_MODALITY[v]:
            raise ConfigError(f"Scratch variant '{v}' does not apply to {data.modality} data '{data.name}'.")
        if (v == "crf") != per_token:
            raise ConfigError(f"Scratch variant '{v}' does not apply to {data.task} data '{data.name}'"
                              + (": per-word tags take variant 'crf'." if per_token else "."))
        return v

    def needs_backbone(self, data: TaskData) -> bool:
        return self.variant(data) == "same-arch"

    def fit(self, backbone: Backbone | None, train: TaskData, val: TaskData | None, trainer):
        self.check_data(None, train)
        variant = self.variant(train)
        if variant == "tfidf":
            return self._fit_tfidf(train, val, trainer)
        if variant == "mfcc":
            return self._fit_fixed(load_backbone("mfcc:", vad=self.config.vad), train, val, trainer)
        if variant == "crf":
            from transferkit.strategies.crf import Crf

            return Crf().fit(None, train, val, trainer)
        if variant == "small-cnn":
            size = self.config.image_size or native_image_size(train)
            backbone = load_backbone(f"small-cnn:{size}")
        elif variant == "audio-cnn":
            backbone = load_backbone("audio-cnn:", vad=self.config.vad)
        else:
            if backbone is None:
                raise ConfigError("Scratch variant 'same-arch' needs a backbone spec to copy the architecture of.")
            arch = backbone.architecture()
            backbone = load_backbone(arch["spec"], pretrained=False, **arch.get("options", {}))
        self.check_data(backbone, train)
        self.defaults = self._defaults(variant, len(train), trainer.config.batch_for(train), train.task_spec)
        model = self.prepare(backbone, train)
        model, history = trainer.fit(self, model, train, val)
        if variant == "same-arch":
            recalibrate_batchnorm(model, train)
        return model, history

    def _defaults(self, variant: str, n: int, batch_size: int, spec) -> TrainDefaults:
        if spec.spatial_targets:
            return TrainDefaults(epochs=dense_scratch_epochs(n, spec.min_train_examples), lr=1e-3, head_lr=1e-3)
        if variant in ("small-cnn", "audio-cnn"):
            e = small_data_epochs(n, batch_size)
            return TrainDefaults(epochs=e, lr=3e-3, head_lr=3e-3)
        return TrainDefaults(epochs=30, lr=1e-3, head_lr=1e-3)

    def augment(self, inputs):
        """SpecAugment on log-mel batches (``audio-cnn``) when ``augment`` is on; images as :class:`Finetune`."""
        if isinstance(inputs, dict) and "input_features" in inputs:
            if not self.config.augment:
                return inputs
            from transferkit.backbones.audio_augment import spec_augment

            return spec_augment(inputs)
        return super().augment(inputs)

    def _fit_fixed(self, backbone: Backbone, train: TaskData, val: TaskData | None, trainer):
        """Logistic regression (C by cross-validation) on a parameter-free backbone's standardised features."""
        if self.config.audio_augment:
            raise ConfigError("audio_augment changes clips as a model trains; variant 'mfcc' computes each clip's "
                              "features once for a logistic regression. Use variant 'audio-cnn', or leave "
                              "audio_augment empty.")
        from transferkit.data.cache import compute_features

        X = compute_features(backbone, train)
        vdata = (compute_features(backbone, val), val.targets) if val is not None and len(val) else None
        head, info = fit_linear_head(train.task, X, train.targets, val=vdata, seed=trainer.config.seed)
        return TransferModel(backbone, head, train.task, train.label_names).eval(), [{"epoch": 1, **info}]

    def _fit_tfidf(self, train: TaskData, val: TaskData | None, trainer):
        backbone = load_backbone("tfidf:")
        X = backbone.fit_vocabulary(train.items)
        vdata = None
        if val is not None and len(val):
            vdata = (backbone.forward_features(backbone.preprocess(val.items)).numpy(), val.targets)
        head, info = fit_linear_head(train.task, X, train.targets, val=vdata,
                                     seed=trainer.config.seed, standardize=False)
        return TransferModel(backbone, head, train.task, train.label_names).eval(), [{"epoch": 1, **info}]
