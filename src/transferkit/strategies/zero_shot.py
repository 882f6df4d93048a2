"""``zero-shot``: classify from label names or descriptions, without training.

Each label becomes texts: every template (``"This example is {label}."``)
filled with the label's name, or with each of its descriptions. How the texts
score an item depends on the backbone:

* a text encoder (``sentence:``, ``hf:``): the texts are embedded, each
  embedding normalised, averaged over the label's texts and normalised again
  (prompt ensembling, Radford et al. 2021, https://arxiv.org/abs/2103.00020);
  the head is a cosine classifier whose rows are ``scale`` times those unit
  label embeddings (``linear_head(D, C, normalize=True)``, bias 0);
* an image-text model (``clip:``): the same, with the texts embedded by its
  text tower, so images are classified by their similarity to label prompts;
* an NLI model (``nli:``, Yin et al. 2019, https://arxiv.org/abs/1909.00161):
  the texts become hypotheses, the backbone returns one entailment logit per
  hypothesis, and the head averages each label's logits (times ``scale``);
* a pre-trained detector (``mtcnn:``, ``detection`` task): its own detections,
  its classes (``face``) matched to the data's label names (case-insensitive)
  by the ``source-detector`` head; templates and descriptions are not used.

The result is an ordinary :class:`TransferModel` and bundle, evaluated with the
same metrics as trained strategies, so ``transferkit compare`` can put
zero-shot next to few-shot runs. The training examples are not used (the
history says so); only the data's label names are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.backbones.base import Backbone
from transferkit.constraints import NONE, Interval
from transferkit.data.batches import module_device, run_batches
from transferkit.data.dataset import TaskData
from transferkit.errors import ConfigError
from transferkit.strategies.base import (Strategy, StrategyConfig, TrainDefaults, TransferModel, _dense_choices,
                                         linear_head, predict_outputs, register_strategy)

DEFAULT_TEMPLATE = "This example is {label}."  # the hypothesis template of Hugging Face's zero-shot pipeline
#: Logit scale for sentence encoders: temperature 0.05, in the range contrastive text encoders train with.
TEXT_ENCODER_SCALE = 20.0
_NUMERIC = re.compile(r"\s*[-+]?\d+(\.\d*)?\s*")


def _check_template(template: object) -> None:
    if not isinstance(template, str) or "{label}" not in template:
        raise ConfigError(f"Every zero-shot template must be a string holding '{{label}}', such as "
                          f"{DEFAULT_TEMPLATE!r}. Got {template!r} instead.")
    try:
        template.format(label="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"Zero-shot template {template!r} has a placeholder other than '{{label}}' ({exc!r}); "
                          "write literal braces as '{{' and '}}'.") from None


def _check_descriptions(descriptions: object) -> None:
    if not isinstance(descriptions, dict):
        raise ConfigError("The 'label_descriptions' parameter of ZeroShotConfig must be a dict label -> description "
                          f"(a string or a list of strings). Got {descriptions!r} instead.")
    for label, value in descriptions.items():
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, (list, tuple)) or not texts or \
                not all(isinstance(t, str) and t.strip() for t in texts):
            raise ConfigError(f"The description of label {label!r} must be a non-empty string or a non-empty list "
                              f"of them. Got {value!r} instead.")


@dataclass
class ZeroShotConfig(StrategyConfig):
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE], metadata={
        "help": "texts made from each label, with '{label}' replaced by its name or description; "
                "several templates are averaged"})
    label_descriptions: dict | None = field(default=None, metadata={
        "help": "label -> description (a string or a list of strings) put into the templates instead of the "
                "label's name; labels left out use their name"})
    scale: float | None = field(default=None, metadata={
        "help": "logit scale (1 / temperature); None: CLIP's learnt scale, 1 for NLI entailment logits, "
                f"{TEXT_ENCODER_SCALE:g} for text encoders"})
    batch_size: int = field(default=64, metadata={"help": "items per forward pass"})

    _parameter_constraints = {
        "scale": [Interval("number", 0, None, closed="neither"), NONE],
        "batch_size": [Interval("int", 1, None)],
    }

    def validate(self) -> None:
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        if not isinstance(self.templates, (list, tuple)) or not self.templates:
            raise ConfigError(f"The 'templates' parameter of ZeroShotConfig must be a non-empty list of strings "
                              f"holding '{{label}}'. Got {self.templates!r} instead.")
        self.templates = list(self.templates)
        for template in self.templates:
            _check_template(template)
        if self.label_descriptions is not None:
            _check_descriptions(self.label_descriptions)
            # Label names are strings; keys read from YAML or JSON (-o label_descriptions={0: sports}) may not be.
            self.label_descriptions = {str(k): v for k, v in self.label_descriptions.items()}


def label_texts(label_names: list[str] | None, config: ZeroShotConfig) -> list[list[str]]:
    """The texts of each label: every template filled with each of its descriptions (or its name).

    Raises:
        ConfigError: no label names; a description for a label the data does not have
            (naming the valid labels); a label that is a bare number and has no description.
    """
    if not label_names:
        raise ConfigError("Zero-shot classifies by label names, but the data has none; give it named labels "
                          "(label_names=...) or label_descriptions.")
    descriptions = config.label_descriptions or {}
    unknown = [k for k in descriptions if k not in label_names]
    if unknown:
        raise ConfigError(f"label_descriptions names label(s) {', '.join(map(repr, unknown))} that the data does "
                          f"not have. Valid labels: {', '.join(map(repr, label_names))}.")
    bare = [n for n in label_names if n not in descriptions and (not n.strip() or _NUMERIC.fullmatch(n))]
    if bare:
        raise ConfigError(f"Zero-shot needs a text for every label, but label(s) {', '.join(map(repr, bare))} "
                          f"are bare numbers (or empty) with no description. Pass label_descriptions, e.g. "
                          f"{{{bare[0]!r}: 'a short description'}}, or give the data label names.")
    out = []
    for name in label_names:
        value = descriptions.get(name, name)
        texts = [value] if isinstance(value, str) else list(value)
        out.append([t.format(label=d) for d in texts for t in config.templates])
    return out


def embed_texts(backbone: Backbone, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Text embeddings ``[N, D]``: an image-text model's text tower, else the text backbone itself."""
    backbone.eval()
    part = lambda idx: [texts[i] for i in idx]  # noqa: E731
    if hasattr(backbone, "encode_text"):  # takes raw texts and places its inputs itself
        batches = run_batches(backbone.encode_text, part, len(texts), batch_size=batch_size)
    else:
        batches = run_batches(backbone.forward_features, lambda idx: backbone.preprocess(part(idx)), len(texts),
                              batch_size=batch_size, device=module_device(backbone))
    return torch.cat([out for _, _, out in batches]).float().cpu()


def label_embeddings(backbone: Backbone, texts: list[list[str]], batch_size: int = 64) -> torch.Tensor:
    """Unit-length label embeddings ``[C, D]``: each text normalised, averaged per label, normalised again."""
    flat = [t for group in texts for t in group]
    emb = F.normalize(embed_texts(backbone, flat, batch_size), dim=-1)
    bounds = np.cumsum([0] + [len(g) for g in texts])
    return F.normalize(torch.stack([emb[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])]), dim=-1)


def is_nli(backbone: Backbone) -> bool:
    return hasattr(backbone, "set_hypotheses")


@register_strategy
class ZeroShot(Strategy):
    """No training: a head built from label names or descriptions (text encoders, CLIP, NLI models).

    ``modalities`` lists text; image data is accepted with a backbone that has a text tower (``clip:``).
    """

    tasks = ("classification", "text-generation", "detection")
    learns_from_labels = False

    name = "zero-shot"
    Config = ZeroShotConfig
    modalities = ("text",)
    defaults = TrainDefaults(epochs=1)

    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        """Text data with a text backbone, image data with an image-text backbone (``clip:``), or detection data
        with a pre-trained detector (``mtcnn:``)."""
        if data.task == "detection":
            if backbone is not None and "detections" not in backbone.feature_kinds:
                raise ConfigError(f"zero-shot detection needs a pre-trained detector as the backbone (mtcnn:); "
                                  f"'{backbone.spec}' gives {' and '.join(backbone.feature_kinds)} features, on "
                                  f"which a detector must be trained." + _dense_choices(data.task))
            if backbone is not None and backbone.modality != data.modality:
                raise ConfigError(f"Backbone '{backbone.spec}' takes {backbone.modality} input but data "
                                  f"'{data.name}' is {data.modality}.")
            return
        if data.task not in self.tasks and data.task_spec.feature_kind == "pyramid":
            super().check_data(None, data)  # refuses, naming the strategies that train detection or segmentation
        if data.task not in self.tasks:  # first: a task it never does is the clearest reason
            raise ConfigError(f"Strategy '{self.name}' supports {', '.join(self.tasks)} tasks; "
                              f"'{data.name}' is {data.task}.")
        has_text = backbone is not None and (backbone.modality == "text" or hasattr(backbone, "encode_text"))
        if backbone is not None and not has_text:
            raise ConfigError(f"zero-shot needs a backbone that embeds text: backbone '{backbone.spec}' has no text "
                              "encoder. Use a text encoder (sentence:, hf:) or an NLI model (nli:) for text, and "
                              "an image-text model (clip:) for images.")
        if data.modality == "image" and has_text:
            if backbone.modality != "image":
                raise ConfigError(f"Backbone '{backbone.spec}' takes text input but data '{data.name}' is image.")
        else:
            super().check_data(backbone, data)

    def fit(self, backbone: Backbone, train: TaskData, val: TaskData | None,
            trainer) -> tuple[TransferModel, list[dict]]:
        """Build the head from the label texts; ``train`` only supplies the label names.

        For ``text-generation`` the pre-trained language model prompted as it is (its own output layer,
        nothing trained): the no-training baseline of generative fine-tuning.
        """
        self.check_data(backbone, train)
        if train.task == "text-generation":
            return self._prompted(backbone, train)
        if train.task == "detection":
            return self._detector(backbone, train)
        texts = label_texts(train.label_names, self.config)
        for p in backbone.parameters():
            p.requires_grad_(False)
        head = self._nli_head(backbone, texts) if is_nli(backbone) else self._embedding_head(backbone, texts)
        for p in head.parameters():
            p.requires_grad_(False)
        model = TransferModel(backbone, head, train.task, train.label_names).eval()
        note = (f"zero-shot: no training; the {len(train)} training examples were not used, only their "
                f"{len(texts)} label names")
        return model, [{"epoch": 1, "trained": False, "note": note, "scale": self._scale(backbone),
                        "label_texts": dict(zip(train.label_names, texts))}]

    def _prompted(self, backbone: Backbone, train: TaskData) -> tuple[TransferModel, list[dict]]:
        backbone.requires_grad_(False)
        task = train.task_spec
        head = task.make_head(backbone.feature_spec(task.feature_kind), 1)
        model = TransferModel(backbone, head, train.task, None).eval()
        task.configure_model(model, train)
        note = f"zero-shot: no training; the {len(train)} training examples were not used (the model is prompted)"
        return model, [{"epoch": 1, "trained": False, "note": note}]

    def _detector(self, backbone: Backbone, train: TaskData) -> tuple[TransferModel, list[dict]]:
        """The detector's classes mapped onto the data's by name (case-insensitive); at least one must match."""
        from transferkit.tasks import build_head

        names = list(train.label_names or [])
        source = list(backbone.source_labels)
        lower = [n.strip().lower() for n in names]
        class_map = [lower.index(s.lower()) if s.lower() in lower else -1 for s in source]
        if all(c < 0 for c in class_map):
            raise ConfigError(f"Backbone '{backbone.spec}' detects {', '.join(map(repr, source))}, but data "
                              f"'{train.name}' has no class of that name (its classes: "
                              f"{', '.join(map(repr, names)) or 'none'}); name the class {source[0]!r}.")
        backbone.requires_grad_(False)
        head = build_head("source-detector", backbone.feature_spec("detections"), len(names),
                          source_labels=source, class_map=class_map)
        model = TransferModel(backbone, head, train.task, names).eval()
        mapped = {s: names[c] for s, c in zip(source, class_map) if c >= 0}
        note = (f"zero-shot: no training; the pre-trained detector's classes {mapped} (the {len(train)} training "
                f"images were not used)")
        return model, [{"epoch": 1, "trained": False, "note": note, "classes": mapped}]

    def _scale(self, backbone: Backbone) -> float:
        if self.config.scale is not None:
            return float(self.config.scale)
        if is_nli(backbone):
            return 1.0
        return float(getattr(backbone, "logit_scale", TEXT_ENCODER_SCALE))

    def _embedding_head(self, backbone: Backbone, texts: list[list[str]]) -> torch.nn.Module:
        emb = label_embeddings(backbone, texts, self.config.batch_size)
        if emb.shape[1] != backbone.num_features:
            raise ConfigError(f"{backbone.spec}: text embeddings have {emb.shape[1]} dimensions but its features "
                              f"{backbone.num_features}; zero-shot needs one shared space.")
        head = linear_head(emb.shape[1], emb.shape[0], normalize=True)
        with torch.no_grad():
            head[-1].weight.copy_(self._scale(backbone) * emb)
            head[-1].bias.zero_()
        return head

    def _nli_head(self, backbone: Backbone, texts: list[list[str]]) -> torch.nn.Module:
        """Hypotheses label-major; the head averages each label's entailment logits."""
        backbone.set_hypotheses([t for group in texts for t in group])
        weight = torch.zeros(len(texts), backbone.num_features)
        start = 0
        for c, group in enumerate(texts):
            weight[c, start:start + len(group)] = self._scale(backbone) / len(group)
            start += len(group)
        head = linear_head(backbone.num_features, len(texts))
        with torch.no_grad():
            head[-1].weight.copy_(weight)
            head[-1].bias.zero_()
        return head

    def predict(self, model: TransferModel, data: TaskData) -> np.ndarray:
        """Cached features for embedding backbones; NLI runs ``H`` pairs per item, so smaller batches."""
        if model.task in ("text-generation", "detection"):
            return predict_outputs(model, data, batch_size=self.config.batch_size)
        if is_nli(model.backbone):
            per_batch = max(1, self.config.batch_size // max(1, model.backbone.num_features))
            return predict_outputs(model, data, batch_size=per_batch)
        from transferkit.data.cache import extract_features

        X = torch.from_numpy(extract_features(model.backbone, data, batch_size=self.config.batch_size))
        with torch.no_grad():
            return model.outputs_to_numpy(model.head(X.float()))
