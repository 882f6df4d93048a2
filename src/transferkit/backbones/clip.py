"""CLIP image-text models (``clip:ID_OR_PATH``) from Hugging Face transformers.

CLIP (Radford et al. 2021, https://arxiv.org/abs/2103.00020) embeds images and
texts in one space. As a backbone it is an image model:
``forward_features`` returns the projected image embeddings, and
:meth:`CLIPBackbone.encode_text` embeds texts with the text tower, which is
what the ``zero-shot`` strategy builds its label prototypes from.

The text tower is held outside the module tree on purpose: it takes no part in
the image features, so it is not trained, not in ``layer_groups()``, not in
the weights digest and not stored in bundles (a zero-shot bundle keeps the
label embeddings it computed in its head). A backbone rebuilt from a bundle
(``files_dir``) therefore has no text tower; :meth:`CLIPBackbone.encode_text`
says so.

Preprocessing comes from the model's own image-processor config (crop size,
mean, std, resampling). Items are resized to the crop size directly (no
shortest-edge resize and centre crop), as every transferkit image backbone does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, ImagePreprocess
from transferkit.backbones.hf import _from_files_dir, load_from_sources, transformer_groups
from transferkit.errors import ConfigError

# PIL resampling codes used by transformers image processors.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TextTower:
    """CLIP's text encoder, its projection and tokenizer (a plain holder: not registered as a submodule)."""

    model: nn.Module
    projection: nn.Module
    tokenizer: Any
    max_length: int


def _side(size: Any, default: int) -> int:
    """The square side an image-processor ``crop_size`` / ``size`` entry asks for."""
    for key in ("height", "shortest_edge", "width"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if isinstance(value, int):
            return value
    return int(size) if isinstance(size, int) else default


def clip_preprocess(processor: Any, vision_config: Any, image_size: int | None) -> ImagePreprocess:
    """An :class:`ImagePreprocess` from a CLIP image processor (crop size, mean, std, resampling)."""
    native = int(getattr(vision_config, "image_size", 224))
    if processor is None:
        return ImagePreprocess(image_size or native, CLIP_MEAN, CLIP_STD, "bicubic")
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    side = _side(crop if crop is not None else getattr(processor, "size", None), native)
    resample = getattr(processor, "resample", 3)
    interpolation = _RESAMPLE.get(int(getattr(resample, "value", resample) or 3), "bicubic")
    mean = getattr(processor, "image_mean", None) or CLIP_MEAN
    std = getattr(processor, "image_std", None) or CLIP_STD
    return ImagePreprocess(image_size or side, mean, std, interpolation)


class CLIPBackbone(Backbone):
    """A CLIP vision tower with its projection; texts through :meth:`encode_text`.

    Args:
        spec: the spec string.
        vision: the ``CLIPVisionModel``.
        projection: the visual projection (``Linear(hidden, projection_dim)``).
        preprocess: the image preprocessing.
        config: the full ``CLIPConfig`` (saved for an offline rebuild).
        processor: the image processor (saved with the config), or ``None``.
        text: the text tower, or ``None`` (rebuilt from a bundle).
        pretrained: whether pre-trained weights were loaded.
        logit_scale: the model's learnt ``exp(logit_scale)`` (default: from the config's initial value).
    """

    modality = "image"

    def __init__(self, spec: str, vision: nn.Module, projection: nn.Module, preprocess: ImagePreprocess, *,
                 config: Any, processor: Any, text: TextTower | None, pretrained: bool,
                 logit_scale: float | None = None):
        super().__init__()
        self.spec, self.vision, self.projection, self.preprocess = spec, vision, projection, preprocess
        self.config, self.processor, self.text, self.pretrained = config, processor, text, pretrained
        self.num_features = int(config.projection_dim)
        #: CLIP's learnt temperature ``exp(logit_scale)``: the zero-shot strategy's default logit scale.
        self.logit_scale = float(logit_scale if logit_scale is not None else
                                 torch.tensor(float(config.logit_scale_init_value)).exp())
        self._native_size = int(config.vision_config.image_size)

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        resized = batch.shape[-1] != self._native_size  # other sizes interpolate the position embeddings
        pooled = self.vision(pixel_values=batch, interpolate_pos_encoding=resized).pooler_output
        return self.projection(pooled)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings ``[N, num_features]`` (not normalised) from the text tower.

        Raises:
            ConfigError: the backbone was rebuilt from a bundle, which stores the vision tower only.
        """
        if self.text is None:
            raise ConfigError(f"{self.spec} was rebuilt from a bundle, which stores the vision tower only; load "
                              "the clip: model itself (pretrained) to embed new texts.")
        device = self.projection.weight.device
        self.text.model.to(device).eval()
        self.text.projection.to(device)
        enc = self.text.tokenizer(list(texts), padding=True, truncation=True, max_length=self.text.max_length,
                                  return_tensors="pt")
        pooled = self.text.model(input_ids=enc["input_ids"].to(device),
                                 attention_mask=enc["attention_mask"].to(device)).pooler_output
        return self.text.projection(pooled)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Patch embeddings, each transformer layer, the final norm, then the projection."""
        return [*transformer_groups(self.vision), list(self.projection.parameters())]

    def architecture_options(self) -> dict:
        return {"image_size": self.preprocess.size}

    def save_files(self, directory: str | Path) -> None:
        """Write ``config.json`` (the full CLIP config), the image-processor config and the tokenizer."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        if self.text is not None:
            self.text.tokenizer.save_pretrained(directory)


def _processor(src: str) -> Any:
    from transformers import CLIPImageProcessor

    try:
        return CLIPImageProcessor.from_pretrained(src)
    except OSError:  # a checkpoint without preprocessor_config.json: CLIP's published defaults
        return None


def _parts(name: str, pretrained: bool) -> tuple[nn.Module, Any, Any]:
    """``(CLIPModel, tokenizer, image processor)`` from a local folder or the hub."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    def from_folder(src: str) -> tuple[nn.Module, Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        if pretrained:
            model = CLIPModel.from_pretrained(src, trust_remote_code=False, dtype=torch.float32)
        else:
            model = CLIPModel(CLIPConfig.from_pretrained(src, trust_remote_code=False))
        return model, tokenizer, _processor(src)

    return load_from_sources(name, from_folder, "clip")


def _vision_from_files(files_dir: Path) -> tuple[nn.Module, nn.Module, Any, Any]:
    """Vision tower and projection at random init from a :meth:`CLIPBackbone.save_files` folder."""
    from transformers import CLIPConfig, CLIPVisionModel

    def load(src: str) -> tuple[nn.Module, nn.Module, Any, Any]:
        config = CLIPConfig.from_pretrained(src, trust_remote_code=False)
        vision = CLIPVisionModel(config.vision_config)
        projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        return vision, projection, config, _processor(src)

    return _from_files_dir(files_dir, load)


@register_source("clip", help="CLIP image-text models (transformers CLIPModel): image features, text tower for "
                              "zero-shot", examples=("clip:openai/clip-vit-base-patch32", "clip:path/to/clip"),
                 options=("image_size",), modality="image")
def create_clip(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                image_size: int | None = None) -> CLIPBackbone:
    """Build ``clip:ID_OR_PATH``.

    Args:
        name: a hub id (``openai/clip-vit-base-patch32``) or a local folder holding a CLIPModel.
        pretrained: load the weights; ``False`` builds both towers from the config at random init.
        files_dir: rebuild the vision tower from files written by :meth:`CLIPBackbone.save_files`
            (``pretrained=False``; no text tower).
        image_size: input side in pixels (default: the processor's crop size); other sizes than the
            model's own interpolate its position embeddings.
    """
    spec = f"clip:{name}"
    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        vision, projection, config, processor = _vision_from_files(files_dir)
        text, scale = None, None
    else:
        model, tokenizer, processor = _parts(name, pretrained)
        config, vision, projection = model.config, model.vision_model, model.visual_projection
        text = TextTower(model.text_model, model.text_projection, tokenizer,
                         int(config.text_config.max_position_embeddings))
        scale = float(model.logit_scale.detach().exp())
    preprocess = clip_preprocess(processor, config.vision_config, image_size)
    return CLIPBackbone(spec, vision, projection, preprocess, config=config, processor=processor, text=text,
                        pretrained=pretrained and files_dir is None, logit_scale=scale)
