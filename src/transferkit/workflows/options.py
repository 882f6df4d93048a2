"""The typed option groups of :func:`~transferkit.workflows.fit.fit`, and the fold of its flat keywords into them.

``fit`` takes its settings in groups, each a dataclass whose fields carry
``metadata={"help": ...}`` and validate in ``__post_init__``:

* :class:`DataOptions`: what is read and how (splits, columns, the per-class draw, input size);
* :class:`~transferkit.training.TrainConfig`: the training loop (epochs, learning rates, seed, ...);
* :class:`DomainOptions`: the target domain of domain adaptation;
* :class:`FairnessOptions`: the sensitive attribute;
* :class:`PretrainOptions`: self-supervised pre-training before the strategy.

The same help text serves the Python docs and ``transferkit fit --help``
(:func:`field_help`), and a test checks that every CLI option of ``fit`` comes
from one of these fields. The flat keywords ``fit`` has always taken
(``labels_per_class=10, epochs=3, pretrain="simclr"``) still work:
:func:`fold_options` puts each into its group.

This module imports no model code (the CLI reads its help texts at start-up);
``TrainConfig`` is imported where a fold needs it.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

from transferkit.constraints import MAX_IMAGE_SIZE
from transferkit.errors import ConfigError, check_range

if TYPE_CHECKING:
    from transferkit.training import TrainConfig

__all__ = ["DataOptions", "DomainOptions", "FairnessOptions", "FitOptions", "PretrainOptions", "field_help",
           "fold_options"]


def field_help(cls: type, name: str, note: str = "") -> str:
    """The help of field ``name`` of dataclass ``cls``, as a sentence, with an optional ``note`` after it.

    Example:
        >>> field_help(DataOptions, "max_test")
        'Evaluate on a fixed stratified subset of this many test items (the same for every seed).'
    """
    try:
        text = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"]
    except (StopIteration, KeyError):
        raise KeyError(f"{cls.__name__} has no field {name!r} with a help text.") from None
    text = text[:1].upper() + text[1:]
    text = text if text.endswith(".") else text + "."
    return f"{text} {note}" if note else text


def _check_int(owner: str, name: str, value, low: int = 1, high: int | None = None) -> None:
    """``None`` or an int in ``[low, high]``, in scikit-learn's template (a float or bool is refused too)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"The '{name}' parameter of {owner} must be an int in [{low}, {high or 'inf)'}"
                          f"{']' if high else ''} or None. Got {value!r} instead.")
    check_range(owner, name, value, low=low, high=high, kind="an int")


def _check_str(owner: str, name: str, value) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"The '{name}' parameter of {owner} must be a column name (a non-empty str) or None. "
                          f"Got {value!r} instead.")


@dataclass
class DataOptions:
    """What ``fit`` reads and how: evaluation and validation data, the per-class draw, columns, input size."""

    test_data: Any = field(default=None, metadata={
        "help": "evaluation data, same forms as the training data (default: the built-in test split, if any)"})
    labels_per_class: int | None = field(default=None, metadata={
        "help": "draw this many labelled training examples per class (seeded); default: all"})
    val_fraction: float | None = field(default=None, metadata={
        "help": "stratified validation split held out of the training data; default (None): 20% where every "
                "class keeps at least 10 validation items or there is no test split, else none (all labels "
                "train with the strategy's fixed schedule)"})
    val_data: Any = field(default=None, metadata={
        "help": "validation data, same forms as the training data (then no split is held out)"})
    text_column: str | None = field(default=None, metadata={"help": "table files and frames: the text column"})
    label_column: str | None = field(default="label", metadata={"help": "table files and frames: the label column"})
    max_test: int | None = field(default=None, metadata={
        "help": "evaluate on a fixed stratified subset of this many test items (the same for every seed)"})
    image_size: int | None = field(default=None, metadata={"help": "image side in pixels (default: the backbone's)"})
    max_length: int | None = field(default=None, metadata={"help": "text: maximum tokens (default: 128)"})
    vad: bool | str = field(default=False, metadata={
        "help": "audio: trim the silence before the first and after the last word of every clip with Silero VAD "
                "(True or trim; speech also shortens each pause inside a clip to 0.1 s; the backbone's vad option, "
                "kept in the bundle)"})
    task: str | None = field(default=None, metadata={
        "help": "what the data's targets are, where a file could be read as several: e.g. segmentation or "
                "instance-segmentation for a COCO JSON file (default: detected from the data)"})
    stream: bool = field(default=False, metadata={
        "help": "read the training data as a stream, a batch at a time, instead of whole: Parquet/JSONL/CSV "
                "files or a save_to_disk folder through datasets' streaming, or an image folder (tar shards "
                "always stream); classes come from one pass over the labels"})

    def __post_init__(self) -> None:
        if not isinstance(self.stream, bool):
            raise ConfigError(f"The 'stream' parameter of DataOptions must be a bool. Got {self.stream!r} instead.")
        for name in ("labels_per_class", "max_test", "max_length"):
            _check_int("DataOptions", name, getattr(self, name))
        _check_int("DataOptions", "image_size", self.image_size, high=MAX_IMAGE_SIZE)
        v = self.val_fraction
        if v is not None and (isinstance(v, bool) or not isinstance(v, Real) or not 0 <= v < 1):
            raise ConfigError(f"The 'val_fraction' parameter of DataOptions must be a float in [0, 1) or None. "
                              f"Got {v!r} instead.")
        _check_str("DataOptions", "text_column", self.text_column)
        _check_str("DataOptions", "label_column", self.label_column)
        from transferkit.backbones.vad import vad_setting

        self.vad = vad_setting(self.vad, "DataOptions")
        if self.task is not None:
            from transferkit.tasks import TASKS

            TASKS.get(self.task)  # an unknown name lists the tasks


@dataclass
class DomainOptions:
    """The target domain of a domain-adaptation fit (``dann``, ``cdan``, ``mmd``, ``coral``, ...).

    The data's forms and its agreement with the source (input kind, feature
    width, labels) are checked when it is read, before any training.
    """

    target_data: Any = field(default=None, metadata={
        "help": "domain adaptation: the target domain's inputs (data set, folder, flat image folder or table); "
                "labels unused"})
    target_labelled_data: Any = field(default=None, metadata={
        "help": "domain adaptation: a few labelled target examples (semi-supervised)"})

    def __post_init__(self) -> None:
        for name in ("target_data", "target_labelled_data"):
            if isinstance(getattr(self, name), str) and not getattr(self, name).strip():
                raise ConfigError(f"The '{name}' parameter of DomainOptions must be data or a path, not an empty "
                                  f"string.")


@dataclass
class FairnessOptions:
    """The sensitive attribute: group metrics, and what ``reweighing`` / ``adversarial-debiasing`` train with."""

    sensitive_column: str | None = field(default=None, metadata={
        "help": "a sensitive-attribute (group) column, e.g. sex: kept out of the inputs; adds group fairness "
                "metrics and feeds the reweighing / adversarial-debiasing strategies (built-in penguins: "
                "island or sex)"})

    def __post_init__(self) -> None:
        _check_str("FairnessOptions", "sensitive_column", self.sensitive_column)


@dataclass
class PretrainOptions:
    """Self-supervised pre-training of the backbone on unlabelled data before the strategy adapts it.

    ``method`` and ``unlabelled_data`` come together (both or neither); the
    method's name is checked against the registry when ``fit`` runs.
    """

    method: str | None = field(default=None, metadata={
        "help": "self-supervised pre-training of the backbone on the unlabelled data first: simclr, simsiam "
                "(images) or mlm (text)"})
    unlabelled_data: Any = field(default=None, metadata={
        "help": "unlabelled inputs for pre-training (data set, folder, flat image folder or table); labels unused"})
    options: dict | None = field(default=None, metadata={
        "help": "the pre-training method's options, e.g. temperature=0.2"})
    epochs: int | None = field(default=None, metadata={"help": "pre-training epochs (default: the method's)"})
    max_items: int | None = field(default=None, metadata={
        "help": "pre-train on a seeded draw of at most this many unlabelled items"})

    def __post_init__(self) -> None:
        _check_int("PretrainOptions", "epochs", self.epochs)
        _check_int("PretrainOptions", "max_items", self.max_items)
        if self.options is not None and not isinstance(self.options, Mapping):
            raise ConfigError(f"The 'options' parameter of PretrainOptions must be a dict or None. "
                              f"Got {self.options!r} instead.")
        if self.method is not None and not isinstance(self.method, str):
            raise ConfigError(f"The 'method' parameter of PretrainOptions must be a method name (str) or None. "
                              f"Got {self.method!r} instead.")
        if (self.method is None) != (self.unlabelled_data is None):
            from transferkit.strategies.self_supervised import PRETRAINERS  # only to name the methods

            missing = "the method (pretrain=..., CLI --pretrain)" if self.method is None else \
                "the unlabelled data (unlabelled_data=..., CLI --unlabelled-data)"
            raise ConfigError(f"Self-supervised pre-training needs both a method ({', '.join(PRETRAINERS.names())}) "
                              f"and unlabelled data; {missing} is missing.")

    @property
    def active(self) -> bool:
        """Whether pre-training runs (a method and its data are given)."""
        return self.method is not None


# --------------------------------------------------------------------------- fit's flat keywords -> groups


@dataclass(frozen=True)
class FitOptions:
    """Every group of one ``fit`` call, after the fold; ``lr_auto`` is ``lr="auto"`` (the finder sets ``train.lr``)."""

    data: DataOptions
    train: TrainConfig
    domain: DomainOptions
    fairness: FairnessOptions
    pretraining: PretrainOptions
    lr_auto: bool = False


_PRETRAIN_KEYWORDS = {"pretrain": "method", "unlabelled_data": "unlabelled_data", "pretrain_options": "options",
                      "pretrain_epochs": "epochs", "pretrain_max_items": "max_items"}


def _groups() -> dict[str, tuple[type, dict[str, str]]]:
    """fit's group parameter -> (its class, {flat keyword: field})."""
    from transferkit.training import TrainConfig

    def same(cls):
        return {f.name: f.name for f in dataclasses.fields(cls)}

    return {"data_options": (DataOptions, same(DataOptions)), "train": (TrainConfig, same(TrainConfig)),
            "domain": (DomainOptions, same(DomainOptions)), "fairness": (FairnessOptions, same(FairnessOptions)),
            "pretraining": (PretrainOptions, _PRETRAIN_KEYWORDS)}


def flat_keywords() -> dict[str, tuple[str, str]]:
    """Every flat keyword ``fit`` takes -> (its group parameter, the field)."""
    return {kw: (group, name) for group, (_, names) in _groups().items() for kw, name in names.items()}


def fold_options(flat: dict[str, Any], *, config: TrainConfig | None = None, **groups) -> FitOptions:
    """Put ``fit``'s flat keywords into their groups; a group not given is built from its keywords.

    Args:
        flat: flat keywords (``labels_per_class=10``, ``epochs=3``, ``pretrain="simclr"``, ...).
        config: the old name of ``train``: its fields are the base that flat training keywords override.
        groups: the groups given (``data_options``, ``train``, ``domain``, ``fairness``, ``pretraining``);
            ``None`` means not given.

    Raises:
        ConfigError: an unknown keyword (the valid ones are listed), a keyword whose group is given as
            well (both are named), a group of the wrong type, or an invalid value.

    Example:
        >>> fold_options({"labels_per_class": 10}).data == DataOptions(labels_per_class=10)
        True
    """
    table = _groups()
    _refuse_unknown(flat, table)
    flat = dict(flat)
    lr_auto = _is_auto_lr(flat.get("lr"))
    if lr_auto:  # not a TrainConfig value: it may come with a train group that leaves lr unset
        del flat["lr"]
        if groups.get("train") is not None and groups["train"].lr is not None:
            raise ConfigError(f"fit got lr='auto' and train=TrainConfig(lr={groups['train'].lr!r}); "
                              f"give one learning rate.")
    if config is not None:
        if groups.get("train") is not None:
            raise ConfigError("fit got both config= and train=; config is the old name of train: give one.")
        names = table["train"][1]
        groups["train"] = dataclasses.replace(config, **{names[k]: flat.pop(k) for k in list(flat) if k in names})
    built = {group: _fold_group(group, cls, names, groups.get(group), flat) for group, (cls, names) in table.items()}
    return FitOptions(built["data_options"], built["train"], built["domain"], built["fairness"],
                      built["pretraining"], lr_auto)


def _fold_group(group: str, cls: type, names: dict[str, str], given, flat: dict[str, Any]):
    """The group ``given``, or one built from its flat keywords in ``flat``; both at once is refused."""
    mine = {kw: value for kw, value in flat.items() if kw in names}
    if given is None:
        return cls(**{names[kw]: value for kw, value in mine.items()})
    if not isinstance(given, cls):
        raise ConfigError(f"The '{group}' parameter of fit must be a {cls.__name__} or None. Got {given!r} instead.")
    if mine:
        inside = ", ".join(f"{names[kw]}={value!r}" for kw, value in mine.items())
        raise ConfigError(f"fit got {group}={cls.__name__}(...) and the keyword{'s' if len(mine) > 1 else ''} "
                          f"{', '.join(mine)} of the same group; give {cls.__name__}({inside}) as {group}, "
                          f"or the keywords without {group}.")
    return given


def _refuse_unknown(flat: dict[str, Any], table: dict) -> None:
    valid = sorted({kw for _, names in table.values() for kw in names})
    unknown = [kw for kw in flat if kw not in set(valid)]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown keyword argument{'s' if len(unknown) > 1 else ''} of fit: "
                          f"{', '.join(map(repr, unknown))}.{hint} Valid keywords: {', '.join(valid)}; "
                          f"or the groups {', '.join(table)}.")


def _is_auto_lr(lr) -> bool:
    """Whether ``lr`` asks for the finder; a string other than ``"auto"`` is refused."""
    if isinstance(lr, str):
        if lr.strip().lower() != "auto":
            raise ConfigError(f"The 'lr' parameter of fit must be a float in (0, 10] or 'auto'. Got {lr!r} instead.")
        return True
    return False
