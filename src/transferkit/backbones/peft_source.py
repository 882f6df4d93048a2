"""``peft:FOLDER``: a LoRA or IA3 adapter saved by Hugging Face PEFT, on its base text encoder, as a backbone.

The adapter folder is what ``PeftModel.save_pretrained`` writes
(``adapter_config.json`` and ``adapter_model.safetensors``). The base encoder
comes from the ``base`` option (a backbone spec such as
``sentence:all-MiniLM-L6-v2``) or from the config's ``base_model_name_or_path``
(a sentence-transformers folder or hub id becomes ``sentence:``, anything else
``hf:``). The adapter is folded into the base weights, so every strategy can
then adapt the result, and ``fit`` turns it into a bundle.

Only safetensors adapters are read (never a pickle); prompt and prefix
adapters cannot be folded into weights and are refused.
"""
from __future__ import annotations

import json
from pathlib import Path

from transferkit.backbones import load_backbone, register_source
from transferkit.backbones.base import Backbone
from transferkit.errors import ConfigError, MissingWeightsError

MERGEABLE = ("LORA", "IA3")


def read_adapter_config(folder: Path) -> dict:
    """The adapter's ``adapter_config.json``, after checking the folder holds a safetensors adapter."""
    cfg_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_file.is_file():
        raise MissingWeightsError(f"peft: {folder} holds no adapter_config.json (a folder written by "
                                  f"PeftModel.save_pretrained).")
    if not weights.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise MissingWeightsError(f"peft: {folder} holds no adapter_model.safetensors (found: {found}); only "
                                  f"safetensors adapters are read, never pickled .bin files.")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"peft: cannot read {cfg_file}: {exc}") from None
    if config.get("peft_type") not in MERGEABLE:
        raise ConfigError(f"peft: {cfg_file} is a {config.get('peft_type')!r} adapter; the peft: source folds "
                          f"adapters into the weights and takes {', '.join(MERGEABLE)}.")
    return config


def base_spec(config: dict, base: str | None) -> str:
    """The backbone spec of the adapter's base encoder."""
    if base:
        return base
    name = config.get("base_model_name_or_path")
    if not name:
        raise ConfigError("peft: the adapter config names no base_model_name_or_path; give the base as an option, "
                          "e.g. peft:FOLDER with base='sentence:all-MiniLM-L6-v2'.")
    from transferkit.backbones.hf import MINILM_NAMES, packaged_minilm

    local = Path(name).expanduser()
    if name in MINILM_NAMES or (local.is_dir() and (local / "modules.json").is_file()) or (
            packaged_minilm() is not None and local == Path(packaged_minilm())):
        return f"sentence:{'all-MiniLM-L6-v2' if name in MINILM_NAMES else name}"
    return f"hf:{name}"


@register_source("peft", help="a LoRA/IA3 adapter folder saved by Hugging Face PEFT, folded into its base text encoder",
                 examples=("peft:path/to/adapter",), options=("base", "max_length", "pooling"), modality="text")
def create_peft(name: str, *, pretrained: bool = True, files_dir: Path | None = None, base: str | None = None,
                **options) -> Backbone:
    """Build ``peft:FOLDER``.

    Args:
        name: the adapter folder.
        pretrained: load the base weights and fold the adapter in; ``False`` gives the base architecture at random init.
        files_dir: rebuild the base architecture from a bundle's ``backbone/`` folder (``pretrained=False``).
        base: the base encoder's backbone spec (default: from the adapter config).
        **options: ``max_length``, ``pooling`` of the base source.
    """
    folder = Path(name).expanduser()
    if files_dir is not None:
        spec = base or "hf:" + name
        backbone = load_backbone(spec, pretrained=False, files_dir=files_dir, **options)
    else:
        if not folder.is_dir():
            raise MissingWeightsError(f"peft: adapter folder not found: {folder}.")
        spec = base_spec(read_adapter_config(folder), base)
        backbone = load_backbone(spec, pretrained=pretrained, **options)
        if pretrained:
            _fold(backbone, folder)
    arch = backbone.architecture()
    backbone.rebuilt_from = {"spec": f"peft:{name}", "options": {"base": spec, **arch.get("options", {})}}
    backbone.spec = f"peft:{name}"
    return backbone


def _fold(backbone: Backbone, folder: Path) -> None:
    from peft import PeftModel

    slot = backbone.transformer_slot()
    if slot is None:
        raise ConfigError(f"peft: the base '{backbone.spec}' is not a transformers text encoder.")
    owner, attr = slot
    wrapped = PeftModel.from_pretrained(getattr(owner, attr), str(folder), is_trainable=False)
    setattr(owner, attr, wrapped.merge_and_unload())
    backbone.requires_grad_(True)
