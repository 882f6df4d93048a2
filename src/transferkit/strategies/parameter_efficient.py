"""Parameter-efficient adaptation: ``lora``, ``ia3``, ``prompt-tuning``, ``prefix-tuning`` (through
Hugging Face PEFT) and bottleneck ``adapter`` layers (written here: PEFT has none for these placements).

The pre-trained backbone stays frozen; only the injected parameters and the
new head train. Because the base weights never change, a bundle stores only
the trained adapter, the head and the base model's spec (plus a digest of
its weights, checked on load): a few percent of the full model.

* ``lora`` (Hu et al. 2021, https://arxiv.org/abs/2106.09685): ``W x + (alpha/r) B A x``
  with ``B = 0`` at the start; ``dora=True`` adds DoRA's magnitude vector
  (Liu et al. 2024, https://arxiv.org/abs/2402.09353). Linear layers and plain
  convolutions (the convolution's own kernel for ``A``, 1x1 for ``B``).
* ``ia3`` (Liu et al. 2022, https://arxiv.org/abs/2205.05638): learned vectors scaling the
  keys, values and the feed-forward activations (one number per channel).
* ``prompt-tuning`` (Lester et al. 2021, https://arxiv.org/abs/2104.08691): trainable
  virtual token embeddings prepended to the input; pooling skips them.
* ``prefix-tuning`` (Li & Liang 2021, https://arxiv.org/abs/2101.00190): trainable
  key/value prefixes in every attention layer.
* ``adapter``: bottleneck adapters ``h + U f(D h)`` (``U = 0`` at the start) after the
  attention output and the feed-forward output of each transformer layer
  (``placement="houlsby"``, Houlsby et al. 2019, https://arxiv.org/abs/1902.00751) or after the
  feed-forward output only (``"pfeiffer"``, Pfeiffer et al. 2021,
  https://arxiv.org/abs/2005.00247); on conv nets, parallel residual adapters
  ``conv(x) + U D x`` with 1x1 convolutions (Rebuffi et al. 2018,
  https://arxiv.org/abs/1803.10082).

Target modules are chosen per architecture (see :func:`default_targets`) or by
``target_modules``: fnmatch patterns or name suffixes over the backbone's module names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from transferkit.backbones.base import Backbone
from transferkit.constraints import Interval, Options
from transferkit.data.dataset import TaskData
from transferkit.errors import BundleError, ConfigError
from transferkit.strategies.adapter_layers import (ACTIVATIONS, ParallelConvAdapter, SeriesAdapter, check_rank,
                                                   is_ffn_output, set_module, default_targets, enable_checkpointing,
                                                   resolve_targets)
from transferkit.strategies.base import TrainDefaults, TransferModel, register_strategy
from transferkit.strategies.finetune import Finetune, FinetuneConfig

#: FinetuneConfig options that choose which backbone weights train: meaningless when only adapters train.
_LAYER_OPTIONS = {"train_last": None, "freeze": [], "train_only": [], "lr_decay": 1.0, "recalibrate_bn": False}
PLACEMENTS = ("houlsby", "pfeiffer")


@dataclass
class PeftConfig(FinetuneConfig):
    """Options every parameter-efficient strategy shares (plus the fine-tuning loss and augmentation options)."""

    target_modules: list[str] = field(default_factory=list, metadata={
        "help": "fnmatch patterns or name suffixes of the modules to adapt (empty: the architecture's default)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute the frozen encoder's activations in backward: less memory, more time (transformers, timm)"})

    def validate(self) -> None:
        super().validate()
        owner = type(self).__name__
        for name, default in _LAYER_OPTIONS.items():
            if getattr(self, name) != default:
                raise ConfigError(f"{owner}: option {name!r} chooses which backbone weights fine-tune; this strategy "
                                  f"keeps them frozen and trains adapters only. Choose modules with 'target_modules'.")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]

    @classmethod
    def describe(cls) -> list[tuple[str, object, str]]:
        """The options, without the layer-freezing ones this family refuses."""
        return [row for row in super().describe() if row[0] not in _LAYER_OPTIONS]


# -- the strategies -----------------------------------------------------------------

class ParameterEfficient(Finetune):
    """Base of the parameter-efficient strategies: freeze the backbone, :meth:`attach` adapters, train them."""

    defaults = TrainDefaults(epochs=20, lr=1e-3, head_lr=1e-3)
    dense = False  # lora says it does: its conv adapters apply to a pyramid backbone as they are
    allowed_regularizers: ClassVar[tuple[str, ...] | None] = ("lwf", "bss")
    #: whether :func:`merge_adapter` can fold the adapter into the base weights.
    mergeable: ClassVar[bool] = True

    def attach(self, backbone: Backbone) -> None:
        """Add the adapter to ``backbone`` in place (deterministic given the config: bundles replay it on load)."""
        raise NotImplementedError

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)  # the head, and any regularizer's snapshot of the base
        backbone.requires_grad_(False)
        # Adapter-only bundles need the base weights back on load: only for weights a spec can fetch again
        # (not a file: checkpoint, whose weights may change or vanish: such bundles store everything).
        digest = backbone.weights_digest() if backbone.pretrained and backbone.rebuilt_from is None else None
        self.attach(backbone)
        added = [f"backbone.{n}" for n, p in backbone.named_parameters() if p.requires_grad]
        if not added:
            raise ConfigError(f"{self.name} added no trainable parameter to backbone '{backbone.spec}'.")
        model.adapter = {"strategy": self.name, "options": self.config.to_dict(), "keys": sorted(added),
                         "base_digest": digest, "adapter_only": digest is not None}
        if self.config.gradient_checkpointing:
            enable_checkpointing(backbone, self.name)
        return model

    def param_groups(self, model: TransferModel, lr: float, head_lr: float) -> list[dict]:
        adapter = [p for p in model.backbone.parameters() if p.requires_grad]
        head = [p for p in model.head.parameters() if p.requires_grad]
        return [g for g in ({"params": adapter, "lr": lr, "name": "adapter"},
                            {"params": head, "lr": head_lr, "name": "head"}) if g["params"]]


@dataclass
class LoraConfig(PeftConfig):
    rank: int = field(default=8, metadata={"help": "rank r of the update B A"})
    alpha: float = field(default=16.0, metadata={"help": "scale: the update is multiplied by alpha / rank"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    dora: bool = field(default=False, metadata={"help": "DoRA: also learn a per-output magnitude (weight-decomposed LoRA)"})

    _parameter_constraints = {
        "rank": [Interval("int", 1, None)],
        "alpha": [Interval("number", 0, None, closed="neither")],
        "lora_dropout": [Interval("number", 0, 0.9)],
    }


@register_strategy
class Lora(ParameterEfficient):
    """LoRA on the backbone's linear layers and convolutions (Hugging Face PEFT), with a new head."""

    name = "lora"
    Config = LoraConfig
    dense = True

    def targets(self, backbone: Backbone) -> list[str]:
        return resolve_targets(backbone, self.config.target_modules, default_targets(backbone, "lora")[0], self.name)

    def peft_config(self, targets: list[str]):
        import peft

        c = self.config
        return peft.LoraConfig(r=c.rank, lora_alpha=c.alpha, lora_dropout=c.lora_dropout, use_dora=c.dora,
                               target_modules=targets)

    def attach(self, backbone: Backbone) -> None:
        import peft

        targets = check_rank(backbone, self.targets(backbone), self.config.rank, self.name,
                              explicit=bool(self.config.target_modules))
        peft.inject_adapter_in_model(self.peft_config(targets), backbone)


@dataclass
class IA3Config(PeftConfig):
    feedforward_modules: list[str] = field(default_factory=list, metadata={
        "help": "of the targets, those whose input (not output) is scaled (empty: the architecture's default)"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.feedforward_modules, str):
            self.feedforward_modules = [self.feedforward_modules]


@register_strategy
class IA3(ParameterEfficient):
    """(IA)^3: learned per-channel scaling of keys, values and feed-forward activations (Hugging Face PEFT)."""

    name = "ia3"
    Config = IA3Config
    defaults = TrainDefaults(epochs=20, lr=3e-3, head_lr=1e-3)

    def attach(self, backbone: Backbone) -> None:
        import peft

        c = self.config
        default, default_ff = default_targets(backbone, "ia3")
        targets = resolve_targets(backbone, c.target_modules, default, self.name)
        ff = resolve_targets(backbone, c.feedforward_modules, [], self.name) if c.feedforward_modules else (
            [n for n in default_ff if n in targets] if not c.target_modules else [])
        stray = [n for n in ff if n not in targets]
        if stray:
            raise ConfigError(f"ia3: feed-forward modules must be among the targets; not targeted: {', '.join(stray)}.")
        peft.inject_adapter_in_model(peft.IA3Config(target_modules=targets, feedforward_modules=ff), backbone)


def _transformer(backbone: Backbone, method: str) -> tuple[nn.Module, str]:
    slot = backbone.transformer_slot()
    if slot is None:
        raise ConfigError(f"{method} needs a transformer text encoder (hf:..., sentence:...) or a causal language "
                          f"model (causal:...); backbone '{backbone.spec}' is neither. For conv nets and other "
                          f"backbones use lora, ia3 or adapter.")
    return slot


def _is_causal_lm(backbone: Backbone) -> bool:
    from transferkit.backbones.causal_lm import CausalLMBackbone

    return isinstance(backbone, CausalLMBackbone)


#: prompt-tuning's default initial text (task-neutral: an instruction to answer, which fits any prompt/completion data).
PROMPT_INIT_TEXT = "Read the input and write the answer."
PROMPT_INITS = ("auto", "text", "sample-vocab")


@dataclass
class PromptConfig(PeftConfig):
    num_virtual_tokens: int = field(default=16, metadata={"help": "number of trainable virtual tokens"})

    _parameter_constraints = {"num_virtual_tokens": [Interval("int", 1, 512)]}

    def validate(self) -> None:
        super().validate()
        if self.target_modules:
            raise ConfigError(f"{type(self).__name__}: 'target_modules' does not apply: virtual tokens enter at the "
                              f"input (prompt tuning) or in every attention layer (prefix tuning).")
        if self.packing:
            raise ConfigError(f"{type(self).__name__}: 'packing' does not apply: the virtual tokens lead each row, so "
                              f"in a packed row only its first pair would follow them. Set packing=false.")


class _PromptLearning(ParameterEfficient):
    """PEFT's prompt-learning wrappers: on a text encoder its feature-extraction model replaces the transformer
    inside the backbone; on a causal LM (``causal:``) its ``CAUSAL_LM`` model replaces ``backbone.model``."""

    modalities = ("text",)
    mergeable = False
    peft_type: ClassVar[str] = ""

    def peft_config(self, task_type: str):
        raise NotImplementedError

    def attach(self, backbone: Backbone) -> None:
        import peft

        if _is_causal_lm(backbone):
            backbone.model = peft.get_peft_model(backbone.model, self.peft_config("CAUSAL_LM"))
            return
        owner, attr = _transformer(backbone, self.name)
        inner = getattr(owner, attr)
        setattr(owner, attr, peft.get_peft_model(inner, self.peft_config("FEATURE_EXTRACTION")))


@dataclass
class PromptTuningConfig(PromptConfig):
    init: str = field(default="auto", metadata={
        "help": "initial virtual tokens: text (the embeddings of init_text's tokens, repeated to length), "
                "sample-vocab (embeddings of random vocabulary tokens), or auto: text on causal LMs, sample-vocab "
                "on text encoders"})
    init_text: str = field(default=PROMPT_INIT_TEXT, metadata={"help": "the text init='text' starts from"})

    _parameter_constraints = {**PromptConfig._parameter_constraints, "init": [Options(*PROMPT_INITS)]}

    def validate(self) -> None:
        super().validate()
        if self.init == "text" and not (isinstance(self.init_text, str) and self.init_text.strip()):
            raise ConfigError("The 'init_text' parameter of PromptTuningConfig must be a non-empty string when "
                              f"init='text'. Got {self.init_text!r} instead.")


@register_strategy
class PromptTuning(_PromptLearning):
    """Soft prompt: trainable virtual tokens before the input of a text encoder or a causal LM (Hugging Face PEFT).

    On a causal LM (``causal:``) it trains for text-generation through the model's own output layer, and the
    virtual tokens lead generation too.

    The virtual tokens start as real token embeddings (random vectors sit far off the embedding scale):
    those of a short task-neutral text, PEFT's ``TEXT`` init (``init="text"``, the default on causal LMs:
    on SmolLM2 and 32 Debian synopses it ended 3 epochs at a training loss of 3.13 and a held-out
    perplexity of 35.8, against 3.25 and 36.8 for sample-vocab, one seed: a small margin), or of random
    vocabulary tokens, PEFT's ``SAMPLE_VOCAB`` (``init="sample-vocab"``, the default on text encoders, as
    their benchmark ran). The values are written when training starts, from the backbone's own tokenizer;
    a bundle's replay only rebuilds the shape.
    """

    name = "prompt-tuning"
    Config = PromptTuningConfig
    defaults = TrainDefaults(epochs=20, lr=3e-2, head_lr=1e-3)
    generative = True  # on a causal LM: PEFT's CAUSAL_LM model, whose virtual tokens also lead generation

    def peft_config(self, task_type: str):
        import peft

        # Built at random: the init is written by prepare (on load, the bundle's tensors replace it anyway).
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=self.config.num_virtual_tokens,
                                       prompt_tuning_init="RANDOM")

    def prepare(self, backbone: Backbone, data: TaskData) -> TransferModel:
        model = super().prepare(backbone, data)
        init = self.config.init
        if init == "auto":
            init = "text" if _is_causal_lm(backbone) else "sample-vocab"
        init_virtual_tokens(backbone, init, self.config.init_text)
        return model


def init_virtual_tokens(backbone: Backbone, init: str, text: str) -> None:
    """Write the initial virtual-token embeddings of the backbone's prompt-tuning wrapper, as PEFT's ``TEXT``
    (``text``'s token ids, cut or repeated to length) and ``SAMPLE_VOCAB`` (random token ids) inits do, but
    with the backbone's tokenizer object (PEFT's ``TEXT`` init loads one by name)."""
    from transferkit.backbones.hf import is_peft_wrapper

    wrapper = next(m for m in backbone.modules() if is_peft_wrapper(m))
    table = wrapper.prompt_encoder[wrapper.active_adapter].embedding.weight
    n, vocab = table.shape[0], wrapper.word_embeddings.weight
    if init == "text":
        ids = backbone.preprocess.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = (ids * -(-n // len(ids)))[:n]
        index = torch.tensor(ids, dtype=torch.long, device=vocab.device)
    else:
        index = torch.randint(0, vocab.shape[0], (n,), device=vocab.device)
    with torch.no_grad():
        table.copy_(vocab[index].to(table.dtype))


@dataclass
class PrefixConfig(PromptConfig):
    num_virtual_tokens: int = field(default=16, metadata={"help": "length of the key/value prefix of every layer"})
    projection: bool = field(default=False, metadata={"help": "reparameterise the prefix through a 2-layer MLP"})


#: Why prefix-tuning refuses causal LMs (measured with PEFT 0.21.2 and transformers 5.25 on a tiny Llama).
PREFIX_CAUSAL_REFUSAL = (
    "prefix-tuning is not available for text-generation or on causal language models: PEFT passes the trained "
    "prefix to generate as past_key_values, which this transformers version ignores in favour of its own cache, so "
    "generation would not use what training learnt (with a non-zero prefix in place, the generations equalled the "
    "base model's). Use prompt-tuning (virtual tokens before the input), lora or ia3.")


@register_strategy
class PrefixTuning(_PromptLearning):
    """Trainable key/value prefixes in every attention layer of a text transformer (Hugging Face PEFT)."""

    name = "prefix-tuning"
    Config = PrefixConfig
    generative = False  # text encoders only: on a causal LM its prefix would not reach generation (see check_data)
    defaults = TrainDefaults(epochs=20, lr=1e-2, head_lr=1e-3)

    def check_data(self, backbone: Backbone | None, data: TaskData) -> None:
        if backbone is not None and _is_causal_lm(backbone):
            raise ConfigError(PREFIX_CAUSAL_REFUSAL)
        super().check_data(backbone, data)

    def peft_config(self, task_type: str):
        import peft

        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=self.config.num_virtual_tokens,
                                       prefix_projection=self.config.projection)

    def attach(self, backbone: Backbone) -> None:
        if _is_causal_lm(backbone):
            raise ConfigError(PREFIX_CAUSAL_REFUSAL)
        super().attach(backbone)


@dataclass
class AdapterConfig(PeftConfig):
    reduction: int = field(default=16, metadata={"help": "bottleneck width = layer width / reduction"})
    placement: str = field(default="houlsby", metadata={
        "help": f"transformers: {' or '.join(PLACEMENTS)} (after attention and feed-forward, or feed-forward only)"})
    activation: str = field(default="gelu", metadata={"help": f"bottleneck non-linearity: {', '.join(ACTIVATIONS)}"})

    _parameter_constraints = {
        "reduction": [Interval("int", 1, None)],
        "placement": [Options(*PLACEMENTS)],
        "activation": [Options(*ACTIVATIONS)],
    }


@register_strategy
class Adapter(ParameterEfficient):
    """Bottleneck adapters: Houlsby/Pfeiffer placement in transformers, parallel residual adapters in conv nets."""

    name = "adapter"
    Config = AdapterConfig

    def attach(self, backbone: Backbone) -> None:
        c = self.config
        targets = resolve_targets(backbone, c.target_modules, default_targets(backbone, "adapter")[0], self.name)
        if c.placement == "pfeiffer" and not c.target_modules:
            targets = [n for n in targets if is_ffn_output(n)] or targets
        modules = dict(backbone.named_modules())
        for name in targets:
            m = modules[name]
            if isinstance(m, nn.Conv2d):
                wrapped: nn.Module = ParallelConvAdapter(m, max(1, m.out_channels // c.reduction))
            else:
                wrapped = SeriesAdapter(m, max(1, m.out_features // c.reduction), c.activation)
            wrapped.to(m.weight.device)
            set_module(backbone, name, wrapped)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for m in backbone.modules():
            if isinstance(m, (SeriesAdapter, ParallelConvAdapter)):
                for n, p in m.named_parameters():
                    p.requires_grad_(not n.startswith("base_layer."))


PEFT_STRATEGIES = ("lora", "ia3", "prompt-tuning", "prefix-tuning", "adapter")


# -- bundles: re-attach on load, merge ----------------------------------------------

def attach_from_manifest(backbone: Backbone, adapter: dict) -> None:
    """Replay the adapter a bundle was trained with on a freshly built ``backbone`` (same options, same names)."""
    from transferkit.strategies.base import make_strategy

    strategy = make_strategy(adapter["strategy"], adapter.get("options"))
    if not isinstance(strategy, ParameterEfficient):
        raise BundleError(f"Bundle adapter names strategy {adapter['strategy']!r}, which adds no adapter.")
    backbone.requires_grad_(False)
    strategy.attach(backbone)


def check_base_digest(backbone: Backbone, adapter: dict, where: str) -> None:
    """Refuse to put an adapter on base weights other than those it was trained on."""
    expected = adapter.get("base_digest")
    if expected and backbone.weights_digest() != expected:
        raise BundleError(f"{where}: the base weights of '{backbone.spec}' (digest {backbone.weights_digest()}) are "
                          f"not those the adapter was trained on ({expected}); the adapter-only bundle needs the "
                          f"same pre-trained weights.")


def adapter_state(model: TransferModel, state: dict[str, Any]) -> dict[str, Any]:
    """What an adapter-only bundle stores: the adapter's tensors and the head."""
    keys = set(model.adapter["keys"])
    return {k: v for k, v in state.items() if k in keys or k.startswith("head.")}


def check_mergeable(name: str) -> None:
    """Refuse to merge the adapter of a strategy whose ``mergeable`` tag is off (prompt and prefix tuning).

    Raises:
        ConfigError: naming the strategy and why its adapter cannot be folded into weights.
    """
    from transferkit.strategies.base import STRATEGIES

    cls = STRATEGIES.get(name) if name in STRATEGIES else None
    if cls is not None and not getattr(cls, "mergeable", True):
        raise ConfigError(f"{name} adds virtual tokens, not weight updates: trained embeddings that stand for no "
                          f"vocabulary entry and lead every input, so there is nothing to fold into the base "
                          f"weights (nor into a plain Hugging Face folder). Use the bundle as it is: predict, serve "
                          f"and `transferkit export --format peft` read it.")


def merge_adapter(model: TransferModel) -> TransferModel:
    """Fold the adapter of ``model`` into its base weights, in place; the model becomes a plain fine-tuned one.

    LoRA and IA3 fold through PEFT; parallel conv adapters fold exactly into
    their convolution. Bottleneck adapters (non-linear) and prompt or prefix
    tuning (extra tokens) cannot be folded: a :class:`ConfigError` says so.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapter = model.adapter
    if adapter is None:
        raise ConfigError("This model has no adapter to merge (it was trained by a strategy that changes the "
                          "weights directly). Mergeable strategies: lora, ia3, adapter on conv nets.")
    check_mergeable(adapter["strategy"])
    backbone = model.backbone
    if any(isinstance(m, SeriesAdapter) for m in backbone.modules()):
        raise ConfigError("Bottleneck adapters are non-linear layers: they cannot be folded into the base weights. "
                          "Only lora, ia3 and the parallel conv adapters merge.")
    with torch.no_grad():
        for mod_name, module in list(backbone.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                set_module(backbone, mod_name, module.get_base_layer())
            elif isinstance(module, ParallelConvAdapter):
                set_module(backbone, mod_name, module.merged())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in backbone.__dict__:
            delattr(backbone, attr)
    model.adapter = None
    return model
