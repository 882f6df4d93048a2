"""fit's option groups: the CLI's help comes from their fields, and flat keywords fold into them."""
from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
import typer

from transferkit.cli.main import app
from transferkit.errors import ConfigError
from transferkit.training import TrainConfig
from transferkit.workflows.fit import fit
from transferkit.workflows.options import (DataOptions, DomainOptions, FairnessOptions, PretrainOptions, field_help,
                                           flat_keywords, fold_options)

GROUPS = (DataOptions, DomainOptions, FairnessOptions, PretrainOptions, TrainConfig)

#: fields whose CLI option has another name than the field (``fit``'s flat keyword, prefixed)
CLI_NAME = {(PretrainOptions, "method"): "pretrain", (PretrainOptions, "options"): "pretrain_option",
            (PretrainOptions, "epochs"): "pretrain_epochs", (PretrainOptions, "max_items"): "pretrain_max_items"}

#: fields deliberately not on ``transferkit fit``, with the reason
NOT_ON_CLI = {
    (TrainConfig, "weight_decay"): "loop internals whose defaults suit every strategy; Python: train=TrainConfig(...)",
    (TrainConfig, "warmup"): "loop internals whose defaults suit every strategy; Python: train=TrainConfig(...)",
    (TrainConfig, "max_grad_norm"): "loop internals (and None, no clipping, has no flag form); Python only",
    (TrainConfig, "progress"): "the command line always shows progress",
    (TrainConfig, "cpu"): "the command runs where Accelerate places it (CUDA_VISIBLE_DEVICES= forces the CPU)",
}

#: the CLI options that are fit's own parameters, not fields of a group
FIT_OWN = {"backbone", "data", "out", "strategy", "option", "drop_path", "overwrite", "resume", "check_transfer",
           "config", "budget", "vad_speech"}  # option: strategy_options; config: the YAML recipe; budget: auto's
# strategy option; vad_speech: DataOptions.vad="speech" (--vad, its field's option, is a flag: trim)


def fit_params() -> dict:
    command = typer.main.get_command(app).commands["fit"]
    return {p.name: p for p in command.params}


def group_fields():
    return [(cls, f) for cls in GROUPS for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls, f", group_fields(), ids=lambda x: getattr(x, "__name__", getattr(x, "name", "")))
def test_cli_help_and_default_come_from_the_field(cls, f):
    params = fit_params()
    name = CLI_NAME.get((cls, f.name), f.name)
    if (cls, f.name) in NOT_ON_CLI:
        assert name not in params, f"--{name} is on the CLI now: drop it from NOT_ON_CLI"
        return
    assert name in params, f"{cls.__name__}.{f.name} has no CLI option --{name} (or add it to NOT_ON_CLI)"
    assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
    assert params[name].help.startswith(field_help(cls, f.name)), (params[name].help, f.metadata["help"])
    assert params[name].default == f.default


def test_every_cli_option_is_a_field_or_fits_own():
    on_cli = {CLI_NAME.get((cls, f.name), f.name) for cls, f in group_fields()} | FIT_OWN
    assert set(fit_params()) <= on_cli, set(fit_params()) - on_cli


def test_fit_has_no_flat_parameter_besides_its_group():
    own = set(inspect.signature(fit).parameters)
    assert not own & set(flat_keywords()), own & set(flat_keywords())
    assert set(flat_keywords()) >= {"labels_per_class", "epochs", "target_data", "sensitive_column", "pretrain",
                                    "pretrain_options", "pretrain_epochs", "pretrain_max_items", "progress"}


def test_the_cli_starts_without_torch():
    code = "import transferkit.cli.main, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- the fold

FLAT = {"labels_per_class": 10, "val_fraction": 0.0, "max_test": 50, "image_size": 32, "text_column": "t",
        "epochs": 3, "seed": 2, "progress": False, "target_data": "target", "sensitive_column": "grp",
        "pretrain": "simclr", "unlabelled_data": "pool", "pretrain_options": {"temperature": 0.2},
        "pretrain_epochs": 2, "pretrain_max_items": 40}
GROUPED = {"data_options": DataOptions(labels_per_class=10, val_fraction=0.0, max_test=50, image_size=32,
                                       text_column="t"),
           "train": TrainConfig(epochs=3, seed=2, progress=False), "domain": DomainOptions(target_data="target"),
           "fairness": FairnessOptions(sensitive_column="grp"),
           "pretraining": PretrainOptions(method="simclr", unlabelled_data="pool", options={"temperature": 0.2},
                                          epochs=2, max_items=40)}


def test_flat_keywords_and_groups_give_the_same_groups():
    folded = fold_options(FLAT)
    assert folded == fold_options({}, **GROUPED)
    assert folded.data.labels_per_class == 10 and folded.train.epochs == 3 and folded.pretraining.method == "simclr"
    mixed = {k: v for k, v in FLAT.items() if flat_keywords()[k][0] != "train"}
    assert fold_options(mixed, train=GROUPED["train"]) == folded  # one group given, the others flat
    assert fold_options({}) == fold_options({}, data_options=DataOptions(), train=TrainConfig())


@pytest.mark.parametrize("flat, groups, names", [
    ({"epochs": 3}, {"train": TrainConfig()}, ["train=TrainConfig", "epochs"]),
    ({"labels_per_class": 5, "max_test": 9}, {"data_options": DataOptions()}, ["data_options=DataOptions",
                                                                                "labels_per_class, max_test"]),
    ({"pretrain_epochs": 2}, {"pretraining": PretrainOptions()}, ["pretraining=PretrainOptions", "pretrain_epochs",
                                                                  "PretrainOptions(epochs=2)"]),
    ({"sensitive_column": "g"}, {"fairness": FairnessOptions()}, ["fairness=FairnessOptions", "sensitive_column"]),
    ({"lr": "auto"}, {"train": TrainConfig(lr=0.1)}, ["lr='auto'", "TrainConfig(lr=0.1)"]),
    ({}, {"train": TrainConfig(), "config": TrainConfig()}, ["config=", "train="]),
    ({}, {"train": DataOptions()}, ["'train' parameter of fit must be a TrainConfig"]),
])
def test_a_keyword_and_its_group_together_are_refused_naming_both(flat, groups, names):
    with pytest.raises(ConfigError) as err:
        fold_options(flat, **groups)
    for name in names:
        assert name in str(err.value), str(err.value)


def test_unknown_keywords_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"Unknown keyword argument of fit: 'epochz'. Did you mean 'epochs'\? "
                                          r"Valid keywords: .*labels_per_class.*pretrain_epochs.*target_data"):
        fold_options({"epochz": 3})
    with pytest.raises(ValueError, match="'lables', 'pretrain_epoch'"):  # a ConfigError is a ValueError
        fit("small-cnn:16", "digits", lables=3, pretrain_epoch=2)


def test_auto_lr_and_the_old_config_keyword():
    auto = fold_options({"lr": "auto", "epochs": 2})
    assert auto.lr_auto and auto.train.lr is None and auto.train.epochs == 2
    assert fold_options({"lr": "auto"}, train=TrainConfig(epochs=2)).lr_auto  # train.lr unset: the finder sets it
    with pytest.raises(ConfigError, match="'lr' parameter of fit must be a float in \\(0, 10\\] or 'auto'"):
        fold_options({"lr": "fast"})
    old = fold_options({"epochs": 4}, config=TrainConfig(seed=3, epochs=1))  # flat keywords override config
    assert old.train == TrainConfig(seed=3, epochs=4) and not old.lr_auto


@pytest.mark.parametrize("make, message", [
    (lambda: DataOptions(labels_per_class=0),
     "The 'labels_per_class' parameter of DataOptions must be an int in [1, inf). Got 0 instead."),
    (lambda: DataOptions(max_test=2.5), "The 'max_test' parameter of DataOptions must be an int in [1, inf) or None. "
                                        "Got 2.5 instead."),
    (lambda: DataOptions(image_size=True), "'image_size' parameter of DataOptions must be an int"),
    (lambda: DataOptions(val_fraction=1.0),
     "The 'val_fraction' parameter of DataOptions must be a float in [0, 1) or None. Got 1.0 instead."),
    (lambda: DataOptions(label_column=3), "'label_column' parameter of DataOptions must be a column name"),
    (lambda: DomainOptions(target_data=" "), "'target_data' parameter of DomainOptions"),
    (lambda: FairnessOptions(sensitive_column=""), "'sensitive_column' parameter of FairnessOptions"),
    (lambda: PretrainOptions(method="simclr", unlabelled_data="u", epochs=0),
     "The 'epochs' parameter of PretrainOptions must be an int in [1, inf). Got 0 instead."),
    (lambda: PretrainOptions(method="simclr", unlabelled_data="u", options="temperature=0.2"),
     "'options' parameter of PretrainOptions must be a dict"),
    (lambda: PretrainOptions(method="simclr"), "the unlabelled data (unlabelled_data=..., CLI --unlabelled-data) is "
                                               "missing"),
    (lambda: PretrainOptions(unlabelled_data="u"), "the method (pretrain=..., CLI --pretrain) is missing"),
])
def test_groups_validate_when_built(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value)


def test_field_help_is_a_sentence():
    assert field_help(DataOptions, "image_size") == "Image side in pixels (default: the backbone's)."
    assert field_help(TrainConfig, "epochs", "Default: 3.") == "Passes over the training data. Default: 3."
    with pytest.raises(KeyError, match="no field 'epochz'"):
        field_help(TrainConfig, "epochz")


def test_fit_runs_on_groups(tiny_images):
    result = fit("small-cnn:16", tiny_images, "finetune", data_options=DataOptions(labels_per_class=6, val_fraction=0),
                 train=TrainConfig(epochs=1, seed=1, batch_size=8, progress=False), report=False)
    m = result.manifest
    assert m["data"]["n_train"] == 18 and m["data"]["n_val"] == 0 and m["data"]["labels_per_class"] == 6
    assert m["train"]["epochs"] == 1 and m["train"]["seed"] == 1 and len(result.history) == 1
