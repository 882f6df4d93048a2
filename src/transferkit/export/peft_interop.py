"""Adapter bundles beyond transferkit: fold an adapter into the base weights (``merge``), and write
a LoRA / IA3 / prompt / prefix adapter in Hugging Face PEFT's own format, so
``peft.PeftModel.from_pretrained(base_model, folder)`` loads it.

The other direction, a folder saved by ``peft`` as a transferkit backbone, is
the ``peft:`` backbone source (:mod:`transferkit.backbones.peft_source`).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from transferkit.errors import BundleError, ConfigError
from transferkit.export.bundle import WEIGHTS, atomic_dir, check_writable, read_manifest, rebuild_model, save_bundle

#: PEFT's file names (``peft.utils.constants``), written here without importing PEFT's saving code paths.
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
HEAD_FILE, LABELS_FILE = "head.safetensors", "labels.json"


def merge_bundle(bundle: str | Path, out: str | Path, *, overwrite: bool = False, hf: bool = False) -> Path:
    """Write a copy of an adapter ``bundle`` at ``out`` with the adapter folded into the base weights.

    The result is a plain bundle (full weights, no adapter entry in the
    manifest) that exports to ONNX and serves like any fine-tuned model, with
    the same outputs up to float rounding. With ``hf=True`` (a language model
    trained for ``text-generation``), ``out`` is instead a plain Hugging Face
    folder (config, safetensors weights, tokenizer, generation config) that
    ``AutoModelForCausalLM.from_pretrained(out)`` loads, for the field's own
    serving stacks.

    Example:
        >>> import transferkit as tk
        >>> tk.merge_bundle("runs/debian-lora", "runs/debian-merged")   # doctest: +SKIP
        PosixPath('runs/debian-merged')
    """
    from transferkit.strategies.parameter_efficient import check_mergeable, merge_adapter

    bundle = Path(bundle)
    out = check_writable(out, overwrite)
    if out.resolve() == bundle.resolve():
        raise BundleError(f"merge would overwrite its input {bundle}: give another --out.")
    manifest = read_manifest(bundle)
    if not manifest.get("adapter"):
        done = " (already merged)" if manifest.get("merged_from") else ""
        raise ConfigError(f"{bundle} holds no adapter{done}; merge applies to bundles of lora, ia3 and conv "
                          f"adapters (strategy here: {manifest.get('strategy', {}).get('name')!r}).")
    check_mergeable(manifest["adapter"]["strategy"])  # before loading the base model
    model = merge_adapter(rebuild_model(bundle, manifest))
    if hf:
        return _write_hf_folder(model, out, overwrite)
    keep = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "backbone", "head",
                                                            "preprocess", "versions", "adapter")}
    keep["merged_from"] = {"bundle": str(bundle), "adapter": manifest["adapter"]}

    def copy_report(tmp: Path) -> None:
        for name in ("report.md", "report.html", "README.md"):
            if (bundle / name).exists():
                shutil.copy2(bundle / name, tmp / name)
        if (bundle / "plots").is_dir():
            shutil.copytree(bundle / "plots", tmp / "plots")

    return save_bundle(model, out, keep, overwrite=overwrite, extra=copy_report)


def _write_hf_folder(model, out: Path, overwrite: bool) -> Path:
    """The merged language model as a Hugging Face folder (what ``save_pretrained`` writes), atomically."""
    inner = getattr(model.backbone, "model", None)
    if model.task != "text-generation" or not hasattr(inner, "save_pretrained"):
        raise ConfigError(f"--hf writes a language model's Hugging Face folder; this bundle is {model.task} on "
                          f"'{model.backbone.spec}'. Merge it into a transferkit bundle instead (without --hf).")
    with atomic_dir(out, overwrite) as tmp:
        inner.save_pretrained(str(tmp))
        model.backbone.tokenizer.save_pretrained(str(tmp))
    return Path(out)


def _base_name(spec: str) -> str:
    """The name PEFT records as ``base_model_name_or_path``: the hub id or folder of the transformers model."""
    from transferkit.backbones.hf import MINILM_HUB_ID, MINILM_NAMES

    name = spec.split(":", 1)[1] if ":" in spec else spec
    return MINILM_HUB_ID if name in MINILM_NAMES else name


def export_peft_adapter(bundle: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the adapter of ``bundle`` as a PEFT adapter folder at ``out``.

    The folder holds ``adapter_config.json`` and ``adapter_model.safetensors``
    (what ``PeftModel.from_pretrained`` reads, keyed relative to the
    transformers model inside the backbone), plus transferkit's classification
    head (``head.safetensors``) and ``labels.json``, which PEFT ignores.

    Raises:
        ConfigError: the bundle has no adapter, or its backbone is not a Hugging Face text encoder.
    """
    import peft
    from safetensors.torch import save_file

    bundle = Path(bundle)
    out = check_writable(out, overwrite)
    manifest = read_manifest(bundle)
    adapter = manifest.get("adapter")
    if not adapter:
        raise ConfigError(f"{bundle} holds no adapter; PEFT export applies to bundles of "
                          f"lora, ia3, prompt-tuning and prefix-tuning.")
    model = rebuild_model(bundle, manifest)
    backbone = model.backbone
    slot = backbone.transformer_slot()
    if slot is None and hasattr(getattr(backbone, "model", None), "active_peft_config"):
        slot = backbone, "model"  # prompt tuning on a causal LM: PEFT's CAUSAL_LM model is the backbone's model
    if slot is None or adapter["strategy"] == "adapter":
        raise ConfigError(f"PEFT export needs a PEFT method (lora, ia3, prompt-tuning, prefix-tuning) on a "
                          f"transformers encoder (hf:, sentence:), or prompt-tuning on a causal LM; this bundle "
                          f"has {adapter['strategy']!r} on "
                          f"'{backbone.spec}'. Use `transferkit merge` and ONNX export instead.")
    owner, attr = slot
    inner = getattr(owner, attr)
    base = _base_name(manifest["backbone"]["spec"])
    with atomic_dir(out, overwrite) as tmp:
        if hasattr(inner, "active_peft_config"):  # prompt / prefix tuning: a real PeftModel
            inner.peft_config["default"].base_model_name_or_path = base
            inner.save_pretrained(str(tmp))
        else:  # LoRA / IA3 injected into the backbone: keys relative to the transformers model
            prefix = next(n for n, m in backbone.named_modules() if m is inner) + "."
            state = peft.get_peft_model_state_dict(backbone)
            state = {f"base_model.model.{k[len(prefix):]}": v.detach().cpu().contiguous()
                     for k, v in state.items() if k.startswith(prefix)}
            config = copy.deepcopy(backbone.peft_config["default"])
            config.base_model_name_or_path, config.inference_mode = base, True
            # PEFT may have condensed the full names to suffixes (valid relative to the inner model too).
            config.target_modules = sorted(_relative(t, prefix) for t in config.target_modules)
            if getattr(config, "feedforward_modules", None):
                config.feedforward_modules = sorted(_relative(t, prefix) for t in config.feedforward_modules)
            save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            config.save_pretrained(str(tmp))
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  str(tmp / HEAD_FILE), metadata={"format": "pt"})
        (tmp / LABELS_FILE).write_text(json.dumps({
            "task": model.task, "label_names": model.label_names, "pooling": _pooling(manifest),
            "max_length": manifest.get("preprocess", {}).get("max_length"), "from_bundle": str(bundle)},
            indent=2), encoding="utf-8")
    return out


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _pooling(manifest: dict) -> str | None:
    spec = manifest["backbone"]["spec"]
    if manifest.get("task") == "text-generation":
        return None  # a language model generates: nothing is pooled
    if spec.startswith("sentence:"):
        return "the sentence-transformers model's own pooling (mean over tokens, then L2 normalisation for MiniLM)"
    return manifest["backbone"].get("options", {}).get("pooling", "mean")


def bundle_sizes(bundle: str | Path) -> dict:
    """Bytes of the bundle's weights, and whether they are adapter-only."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    return {"weights_bytes": (bundle / WEIGHTS).stat().st_size,
            "adapter_only": bool(manifest.get("adapter", {}).get("adapter_only"))}
