"""Backbone sources behind one contract, named by a spec string ``PREFIX:NAME``.

Each source module registers its prefix in :data:`BACKBONE_SOURCES`;
:func:`load_backbone` splits the spec and calls the source's factory.

Example:
    >>> from transferkit.backbones import load_backbone
    >>> bb = load_backbone("efficientnet-lite:0", image_size=64)   # doctest: +SKIP
    >>> bb.forward_features(bb.preprocess(images)).shape           # doctest: +SKIP
    torch.Size([8, 1280])

Importing this package imports no model library: timm, torchvision,
transformers and sentence-transformers are imported inside the factories.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.backbones.base import (
    Backbone,
    ImagePreprocess,
    Preprocess,
    TabularPreprocess,
    TextPreprocess,
)
from transferkit.constraints import MAX_IMAGE_SIZE
from transferkit.errors import ConfigError, check_range
from transferkit.registry import Registry

__all__ = [
    "BACKBONE_SOURCES", "Backbone", "BackboneSource", "ImagePreprocess", "Preprocess", "TabularPreprocess",
    "TextPreprocess", "list_backbones", "load_backbone", "register_source", "save_checkpoint", "split_spec",
]

#: The keyword options of :func:`load_backbone` that the built-in sources declare.
COMMON_OPTIONS = ("image_size", "max_length", "pooling")


@dataclass(frozen=True)
class BackboneSource:
    """A registered source: its factory and what :func:`load_backbone` may pass to it.

    Attributes:
        factory: ``factory(name, *, pretrained, files_dir, **options) -> Backbone``.
        options: the keyword options it takes; others are refused with a
            :class:`~transferkit.errors.ConfigError` naming these.
        examples: spec strings shown by ``transferkit list backbones``.
        modality: ``"image"``, ``"text"``, ``"tabular"``, ``"audio"`` or ``"any"``.
    """

    factory: Callable[..., Backbone]
    options: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    modality: str = "any"

    def __call__(self, name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                 **options: Any) -> Backbone:
        return self.factory(name, pretrained=pretrained, files_dir=files_dir, **options)


#: Spec prefix -> :class:`BackboneSource` (or a plain factory function taking ``**options``).
BACKBONE_SOURCES: Registry[BackboneSource | Callable[..., Backbone]] = Registry("backbone source")


def register_source(prefix: str, *, help: str, examples: tuple[str, ...] = (), options: tuple[str, ...] = (),
                    modality: str = "any") -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: register ``factory`` as the source of specs ``PREFIX:NAME``.

    Example:
        >>> @register_source("toy", help="a toy source", options=("image_size",))  # doctest: +SKIP
        ... def create_toy(name, *, pretrained, files_dir=None, image_size=None): ...
    """

    def add(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONE_SOURCES.register(prefix, BackboneSource(factory, tuple(options), tuple(examples), modality),
                                  help=help)
        return factory

    return add


def split_spec(spec: str) -> tuple[str, str]:
    """``"timm:resnet50"`` -> ``("timm", "resnet50")``; the name may itself hold colons (paths)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"A backbone spec is a string 'PREFIX:NAME' such as 'timm:resnet50'. Got {spec!r}.")
    prefix, _, name = spec.strip().partition(":")
    return prefix, name


def _check_options(prefix: str, source: object, options: dict[str, Any]) -> None:
    """Refuse options a declared source does not take, and out-of-range sizes."""
    for field in ("image_size", "max_length"):
        value = options.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"The '{field}' parameter of load_backbone must be an int. Got {value!r} instead.")
    if "image_size" in options:
        check_range("load_backbone", "image_size", options["image_size"], low=8, high=MAX_IMAGE_SIZE, kind="an int")
    if "max_length" in options:
        check_range("load_backbone", "max_length", options["max_length"], low=2, kind="an int")
    if not isinstance(source, BackboneSource):
        return  # a plain factory takes ``**options`` and decides for itself
    extra = sorted(set(options) - set(source.options))
    if extra:
        takes = ", ".join(source.options) or "no options"
        raise ConfigError(f"Option(s) {', '.join(repr(e) for e in extra)} do not apply to '{prefix}:' backbones "
                          f"({source.modality}). '{prefix}:' takes: {takes}.")


def load_backbone(spec: str, *, pretrained: bool = True, image_size: int | None = None,
                  max_length: int | None = None, pooling: str | None = None,
                  files_dir: str | Path | None = None, **options: Any) -> Backbone:
    """Build the backbone a spec names.

    Args:
        spec: ``PREFIX:NAME``, e.g. ``timm:resnet50``, ``torchvision:resnet18``,
            ``hf:bert-base-uncased``, ``sentence:all-MiniLM-L6-v2``,
            ``efficientnet-lite:0``, ``file:runs/my-bundle``; ``PREFIX:NAME@LAYER``
            pools an intermediate layer (``efficientnet-lite:0@block5``, see
            :mod:`transferkit.backbones.layers`).
        pretrained: load pre-trained weights; ``False`` gives the same
            architecture at random init (and never touches the network for
            timm and torchvision).
        image_size: image side in pixels (image sources; default: the model's own).
        max_length: maximum tokens (text sources).
        pooling: ``"mean"`` or ``"cls"`` (``hf:`` only).
        files_dir: folder written by :meth:`Backbone.save_files`: rebuild
            from it offline (with ``pretrained=False``).
        **options: further options of sources registered as plain factories
            (``architecture()["options"]`` of a saved backbone).

    Returns:
        The :class:`Backbone`.

    Raises:
        UnknownNameError: the prefix is not registered (the message lists the known ones).
        ConfigError: an option does not apply to the source, or is out of range.
        MissingWeightsError: the weights or files cannot be found offline.

    Example:
        >>> from transferkit.backbones import load_backbone
        >>> backbone = load_backbone("efficientnet-lite:0@block5", image_size=64)   # doctest: +SKIP
        >>> backbone.num_features                                                   # doctest: +SKIP
    """
    from transferkit.backbones.layers import LayerBackbone, split_layer

    prefix, name = split_spec(spec)
    source = BACKBONE_SOURCES.get(prefix)
    # concat:A@LAYER+B: each member spec keeps its own @LAYER
    name, layer = split_layer(name) if prefix != "concat" else (name, None)
    if layer is not None and prefix == "file" and Path(f"{name}@{layer}").exists():
        name, layer = f"{name}@{layer}", None  # a path that holds '@'
    given = {"image_size": image_size, "max_length": max_length, "pooling": pooling, **options}
    given = {k: v for k, v in given.items() if v is not None}
    _check_options(prefix, source, given)
    backbone = source(name, pretrained=pretrained, files_dir=Path(files_dir) if files_dir is not None else None,
                      **given)
    return LayerBackbone(backbone, layer) if layer is not None else backbone


def list_backbones() -> list[dict]:
    """The registered sources, for ``transferkit list backbones``.

    Returns:
        One dict per prefix: ``prefix``, ``help``, ``examples``, ``options``, ``modality``.
    """
    rows = []
    for entry in BACKBONE_SOURCES:
        src = entry.obj
        declared = isinstance(src, BackboneSource)
        rows.append({"prefix": entry.name, "help": entry.help,
                     "examples": list(src.examples) if declared else [f"{entry.name}:"],
                     "options": list(src.options) if declared else [],
                     "modality": src.modality if declared else "any"})
    return rows


# The source modules register themselves on import; the registry above must exist first.
from transferkit.backbones import (  # noqa: E402,F401
    audio_baselines,
    causal_lm,
    clip,
    concat,
    crf_model,
    efficientnet_lite,
    file_source,
    hf,
    mlp,
    mtcnn,
    nli,
    peft_source,
    resemblyzer,
    small_cnn,
    tfidf,
    timm_source,
    whisper,
)
from transferkit.backbones.file_source import save_checkpoint  # noqa: E402
