"""The Backbone contract (after timm's uniform model contract) and preprocessing.

A backbone is an ``nn.Module`` that knows its modality and its preprocessing:

* typed features (:meth:`Backbone.features`): ``forward_features(batch) -> Tensor[B, D]``
  pooled, ``num_features == D``; sources that have them add ``forward_sequence(batch)
  -> (Tensor[B, T, D], mask[B, T])`` (tokens, frames, patches), declared in
  ``feature_kinds``; pooling a sequence is a separate step (:mod:`.pooling`);
* ``layer_groups() -> list[list[nn.Parameter]]`` ordered input -> output, what
  partial fine-tuning, gradual unfreezing and per-layer learning rates act on;
* ``preprocess``: a callable turning a list of raw items into model input,
  built from the model's own configuration, never guessed by the caller;
* ``architecture()``: a JSON-able dict from which :func:`load_backbone` rebuilds
  the same architecture offline (``pretrained=False``), plus
  ``save_files(dir)`` for what that rebuild needs (configs, tokenizer files).
"""
from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError, DataError

#: The kinds of features a backbone can give: one vector per item, one per token/frame/patch, a
#: pyramid of feature maps (what detection and segmentation heads read), or the source model's own
#: next-token scores over its vocabulary (``logits``: a causal language model's output layer, which
#: generative fine-tuning trains through instead of a new head).
FEATURE_KINDS = ("pooled", "sequence", "pyramid", "logits", "detections")


@dataclass(frozen=True)
class FeatureSpec:
    """The shape of one kind of features, which is what a head is built from.

    Attributes:
        kind: ``pooled`` (``[B, D]``), ``sequence`` (``[B, T, D]`` with a mask),
            ``pyramid`` (a list of ``[B, C_i, H_i, W_i]``, finest first) or ``logits``
            (``[B, T, V]``: next-token scores over a vocabulary of V).
        dim: D for pooled and sequence features, V for logits.
        channels: C_i of each pyramid level.
        strides: the input pixels per feature-map pixel of each level.
    """

    kind: str
    dim: int = 0
    channels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()


class Preprocess:
    """Turns a list of raw items into a model batch; serialisable with :meth:`config`."""

    kind: str = "identity"

    def __call__(self, items: Sequence) -> Any:
        raise NotImplementedError

    def config(self) -> dict:
        return {"kind": self.kind}


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixel values of any depth as uint8, scaled by what the values can hold, never clipped to white.

    Floats in [0, 1] scale by 255 (others are clipped to [0, 255]); 16-bit
    unsigned data (a 16-bit PNG, a ``uint16`` array) scales by 255/65535;
    other integers are kept where they fit in 8 bits, else scaled from 16 bits
    or, wider still, from their own range.

    Example:
        >>> to_uint8(np.array([0, 32768, 65535], dtype=np.uint16)).tolist()
        [0, 128, 255]
    """
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr * (255.0 if arr.size and arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    sixteen_bit = arr.dtype.kind == "u" and arr.dtype.itemsize == 2  # any byte order (I;16B)
    if not sixteen_bit and low >= 0 and high <= 255:
        return arr.astype(np.uint8)
    if sixteen_bit or (low >= 0 and high <= 65535):
        return (arr.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
    return ((arr.astype(np.float64) - low) * (255.0 / max(high - low, 1))).round().astype(np.uint8)


def to_rgb(image, where: str = "image"):
    """A PIL image of any mode as 8-bit RGB.

    Pillow's own ``convert("RGB")`` clips 16- and 32-bit grey (``I;16``, ``I``,
    ``F``: 16-bit PNGs, TIFFs) at 255, which turns most pixels white: those
    modes are scaled by :func:`to_uint8` instead. A palette with transparency
    goes through RGBA (as Pillow asks); alpha is dropped.

    Raises:
        DataError: a mode Pillow cannot convert (named with ``where``).
    """
    from PIL import Image

    mode = image.mode
    try:
        if mode.startswith("I") or mode == "F":
            return Image.fromarray(to_uint8(np.asarray(image))).convert("RGB")
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")
    except ValueError as exc:
        raise DataError(f"Cannot convert {where} (mode {mode}) to RGB: {exc}") from None


def load_rgb(item, index: int | None = None):
    """An image item (a file path, a PIL image, a uint8 or float array ``[H, W]`` / ``[H, W, C]``) as an RGB PIL
    image in its own size; a file that cannot be read, or NaN pixels, raise :class:`DataError` naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return to_rgb(item, f"image at index {index}")
    if isinstance(item, np.ndarray):
        arr = item
        if arr.dtype != np.uint8:
            if not np.isfinite(arr).all():
                raise DataError(f"Image at index {index} contains NaN or inf values.")
            arr = to_uint8(arr)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return Image.fromarray(arr).convert("RGB")
    path = os.fspath(item)
    try:
        with Image.open(path) as im:
            return to_rgb(im, path)
    except FileNotFoundError:
        raise DataError(f"Image file not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot read image {path}: {exc}") from None


class ImagePreprocess(Preprocess):
    """Resize to ``size`` x ``size``, scale to [0, 1], normalise with the model's mean/std.

    Items are file paths, PIL images or uint8 arrays ``[H, W]`` / ``[H, W, C]``;
    grey images are replicated to 3 channels. A file that cannot be read raises
    :class:`DataError` naming it.
    """

    kind = "image"

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bilinear"):
        self.size = int(size)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.interpolation = interpolation
        self._mean_t = torch.tensor(self.mean).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std).view(1, 3, 1, 1)

    def load(self, item, index: int | None = None):
        return load_rgb(item, index)

    def to_tensor(self, images) -> torch.Tensor:
        from PIL import Image

        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[self.interpolation]
        arrs = [np.asarray(im.resize((self.size, self.size), resample), dtype=np.uint8) for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean_t) / self._std_t

    def __call__(self, items: Sequence) -> torch.Tensor:
        return self.to_tensor([self.load(it, i) for i, it in enumerate(items)])

    def config(self) -> dict:
        return {"kind": self.kind, "size": self.size, "mean": self.mean, "std": self.std,
                "interpolation": self.interpolation}


class TextPreprocess(Preprocess):
    """Tokenise with the model's own tokenizer, padded to the longest item, truncated at ``max_length``.

    Items are strings, or lists of words (pre-split, as token-classification data
    comes); for word lists the batch also holds ``word_ids`` ``[W, T]``: the word
    each token belongs to, -1 for special tokens and padding, which is what a
    per-token task needs to map its outputs back to words. A word list longer than
    ``max_length`` tokens is not truncated: it becomes several overlapping windows
    (``stride`` tokens shared between neighbours, a quarter of the window), so the
    batch has ``W >= B`` rows, ``item_ids`` ``[W]`` says which item each row is, and
    ``word_counts`` ``[B]`` how many words each item has.
    """

    kind = "text"
    #: The tensors a model takes; other keys of a batch (``word_ids``) are for the task.
    MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, tokenizer, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        if len(items) and all(isinstance(t, (list, tuple)) for t in items):
            return self._words(items)
        texts = []
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise DataError(f"Text item {i} is {type(t).__name__}, not str: {t!r:.80}")
            texts.append(t)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in self.MODEL_KEYS}

    def _words(self, items: Sequence) -> dict[str, torch.Tensor]:
        for i, words in enumerate(items):
            bad = next((w for w in words if not isinstance(w, str)), None)
            if bad is not None:
                raise DataError(f"Text item {i} is a list of words holding {type(bad).__name__} {bad!r:.40}, not str.")
        if not getattr(self.tokenizer, "is_fast", False):
            raise DataError("Word-level items need a fast tokenizer (it maps tokens back to words); "
                            f"{type(self.tokenizer).__name__} is not one.")
        special = self.tokenizer.num_special_tokens_to_add(pair=False)
        stride = max(1, (self.max_length - special) // 4)
        enc = self.tokenizer([list(w) if len(w) else [""] for w in items], is_split_into_words=True, padding=True,
                             truncation=True, max_length=self.max_length, return_overflowing_tokens=True,
                             stride=stride, return_tensors="pt")
        out = {k: v for k, v in enc.items() if k in self.MODEL_KEYS}
        rows = len(out["input_ids"])
        out["word_ids"] = torch.tensor([[-1 if w is None else w for w in enc.word_ids(b)] for b in range(rows)],
                                       dtype=torch.long).reshape(rows, -1)
        mapping = enc.get("overflow_to_sample_mapping")
        out["item_ids"] = (torch.as_tensor(mapping, dtype=torch.long) if mapping is not None
                           else torch.arange(rows, dtype=torch.long))
        out["word_counts"] = torch.tensor([len(w) for w in items], dtype=torch.long)
        return out

    def config(self) -> dict:
        return {"kind": self.kind, "max_length": self.max_length,
                "tokenizer": type(self.tokenizer).__name__}


class TabularPreprocess(Preprocess):
    """Float32 rows; NaN is refused with the row that holds it."""

    kind = "tabular"

    def __call__(self, items: Sequence) -> torch.Tensor:
        try:
            x = np.asarray(items, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise DataError(f"Tabular items must be rows of numbers: {e}.") from None
        if x.ndim != 2:
            raise DataError(f"Tabular items must be a 2-D table [rows, columns]; got an array of shape {x.shape}.")
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            raise DataError(f"Tabular row {bad[0][0]} column {bad[0][1]} is NaN or inf.")
        return torch.from_numpy(x)


class Backbone(nn.Module):
    """Base class of every backbone source. Subclasses set the attributes below.

    Attributes:
        spec: the spec string it was loaded from (``timm:resnet18``).
        modality: ``"image"``, ``"text"``, ``"tabular"`` or ``"audio"``.
        feature_kinds: the kinds of features :meth:`features` gives (``pooled``, ``sequence``).
        num_features: width D of :meth:`forward_features`.
        preprocess: a :class:`Preprocess`.
        pretrained: whether pre-trained weights were loaded.
        source_head: optional module mapping features to the source task's
            logits (EfficientNet-Lite's ImageNet classifier); not part of
            ``layer_groups()``, never trained; for LwF / LEEP later.
        rebuilt_from: set by the ``file:`` source to the architecture the saved
            weights were loaded on; :meth:`architecture` returns it, while
            ``spec`` stays ``file:PATH``.
    """

    spec: str = ""
    modality: str = "image"
    feature_kinds: tuple[str, ...] = ("pooled",)
    num_features: int = 0
    preprocess: Preprocess
    pretrained: bool = False
    rebuilt_from: dict | None = None
    source_head: nn.Module | None  # set in __init__: a class-level default would hide a registered module

    def __init__(self) -> None:
        super().__init__()
        self.source_head = None

    def forward_features(self, batch) -> torch.Tensor:
        """The pooled features ``[B, num_features]`` of a preprocessed batch; each source implements it.

        Example:
            >>> feats = backbone.forward_features(backbone.preprocess(images))  # doctest: +SKIP
            >>> feats.shape                                                    # doctest: +SKIP
            torch.Size([8, 1280])
        """
        raise NotImplementedError

    def forward(self, batch) -> torch.Tensor:
        return self.forward_features(batch)

    def forward_sequence(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unpooled features ``[B, T, D]`` and their mask ``[B, T]`` (1 = real position), where supported."""
        raise ConfigError(f"Backbone '{self.spec}' gives only pooled features, no sequence.")

    def forward_pyramid(self, batch) -> list[torch.Tensor]:
        """Feature maps ``[B, C_i, H_i, W_i]``, finest first, where supported (see :meth:`feature_spec`)."""
        raise ConfigError(f"Backbone '{self.spec}' gives no feature pyramid.")

    def forward_logits(self, batch) -> torch.Tensor:
        """The source model's next-token logits ``[B, T, V]`` (causal language models), where supported."""
        raise ConfigError(f"Backbone '{self.spec}' has no language-model output layer (no next-token logits).")

    def forward_detections(self, batch) -> dict:
        """A pre-trained detector's own detections (``mtcnn:``): ``{"detections": per image ``boxes`` [k, 4] xyxy
        input pixels, ``scores``, ``labels`` (indices into ``source_labels``), "image_size": (H, W)}``."""
        raise ConfigError(f"Backbone '{self.spec}' is not a pre-trained detector (no detections of its own).")

    def features(self, batch, kind: str = "pooled"):
        """Features of ``kind`` (see :data:`FEATURE_KINDS`): pooled ``[B, D]``, a sequence ``[B, T, D]``
        (its mask stays in the batch), a pyramid (a list of maps), next-token logits ``[B, T, V]`` or a pre-trained
        detector's detections."""
        self.check_feature_kind(kind)
        if kind == "sequence":
            return self.forward_sequence(batch)[0]
        if kind == "pyramid":
            return self.forward_pyramid(batch)
        if kind == "logits":
            return self.forward_logits(batch)
        if kind == "detections":
            return self.forward_detections(batch)
        return self.forward_features(batch)

    def feature_spec(self, kind: str = "pooled") -> FeatureSpec:
        """The shape of features of ``kind``: what a head on them is built from."""
        self.check_feature_kind(kind)
        return FeatureSpec(kind, dim=self.num_features)

    def feature_dim(self, kind: str = "pooled") -> int:
        """The width D of pooled or sequence features."""
        return self.feature_spec(kind).dim

    def check_feature_kind(self, kind: str) -> None:
        """Refuse a kind of features this backbone cannot give, naming what it gives."""
        if kind not in self.feature_kinds:
            raise ConfigError(f"Backbone '{self.spec}' gives {' and '.join(self.feature_kinds)} features; "
                              f"the task needs {kind} features (choose a backbone that has them: hf:, sentence:).")

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters in groups ordered input → output (stem, stages or blocks, last layers).

        What ``train_last``, gradual unfreezing and per-group learning rates act on.

        Example:
            >>> groups = backbone.layer_groups()                    # doctest: +SKIP
            >>> [sum(p.numel() for p in g) for g in groups][-1]    # doctest: +SKIP
            412160
        """
        raise NotImplementedError

    def transformer_slot(self) -> tuple[nn.Module, str] | None:
        """``(owner, attribute)`` holding the inner transformers model, or ``None``.

        Strategies that wrap the transformer itself (prompt and prefix tuning
        through PEFT) replace ``getattr(owner, attribute)``; the backbone's
        pooling then skips the virtual tokens the wrapper prepends.
        """
        return None

    def architecture(self) -> dict:
        """JSON-able description to rebuild this architecture: ``{"spec": ..., "options": {...}}``.

        A spec may refer to files written by :meth:`save_files` with a path
        relative to the bundle's ``backbone/`` folder, prefixed ``bundle:``.
        Subclasses describe their options in :meth:`architecture_options`.
        """
        if self.rebuilt_from is not None:
            return copy.deepcopy(self.rebuilt_from)
        return {"spec": self.spec, "options": self.architecture_options()}

    def architecture_options(self) -> dict:
        """Keyword options of :func:`load_backbone` that rebuild this architecture (``image_size``, ...)."""
        return {}

    def save_files(self, directory: str | Path) -> None:
        """Write what an offline rebuild needs (configs, tokenizer files). Default: nothing."""

    @torch.no_grad()
    def weights_digest(self) -> str:
        """A short hash of the current weights: part of the feature-cache key."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if t.numel() else b"")
        return h.hexdigest()[:16]

    def check_groups(self) -> None:
        """Internal invariant: layer groups cover every parameter (but the source head's) exactly once."""
        seen = [id(p) for g in self.layer_groups() for p in g]
        assert len(seen) == len(set(seen)), "a parameter appears in two layer groups"
        head = {id(p) for p in self.source_head.parameters()} if self.source_head is not None else set()
        expected = {id(p) for p in self.parameters()} - head
        assert set(seen) == expected, "layer groups do not cover every parameter"
