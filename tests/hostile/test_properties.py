"""Property-based tests: random tables and options either load or fail with the library's own error.

Whatever the bytes of a CSV/TSV/JSONL file, :func:`~transferkit.data.from_table` returns TaskData or
raises :class:`~transferkit.errors.DataError`; whatever the ``-o`` pairs or recipe, the parser and the
strategy configs accept them or raise a :class:`~transferkit.errors.TransferkitError`, and the CLI never
exits with an internal error. Numeric labels make the same classes in a CSV (text) and a JSONL (typed).
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transferkit.cli.common import parse_options
from transferkit.data import from_table
from transferkit.errors import DataError, TransferkitError
from transferkit.strategies.base import make_strategy

SETTINGS = settings(max_examples=50, deadline=None, database=None)  # no .hypothesis folder in the checkout

# cells: words, numbers written many ways, quotes, separators, blanks, odd characters
cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "1", "1.0", "2", " 2.0 ", "1e0", "-3", "2.5", "nan", "inf", "007", "x", "y", '"',
                     ",", "\n", "\r", "\t", "|", "a|b", "\x00", "\u2028", "é"]),
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def _load(suffix: str, payload: bytes):
    """``from_table`` on a file holding ``payload``: the TaskData, or the DataError it raised."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(payload)
        try:
            return from_table(path)
        except DataError as exc:
            return exc


@st.composite
def delimited_files(draw):
    """A CSV/TSV body: usually a ``text,label`` header and rows of random cells, sometimes ragged."""
    delimiter = draw(st.sampled_from([",", "\t"]))
    header = draw(st.one_of(st.just(["text", "label"]), st.lists(st.sampled_from(["text", "label", "f", "label "]),
                                                                  min_size=1, max_size=4)))
    rows = draw(st.lists(st.lists(cells, min_size=len(header) - 1, max_size=len(header) + 1), max_size=8))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    return (".tsv" if delimiter == "\t" else ".csv"), buffer.getvalue()


@SETTINGS
@given(delimited_files(), st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_a_random_delimited_file_loads_or_raises_data_error(file, encoding):
    suffix, text = file
    result = _load(suffix, text.encode(encoding, errors="replace"))
    assert isinstance(result, DataError) or len(result) == len(result.targets)


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from([".csv", ".tsv", ".jsonl", ".csv.gz"]))
def test_random_bytes_load_or_raise_data_error(payload, suffix):
    result = _load(suffix, payload)
    assert isinstance(result, (DataError, object))  # no other exception escaped _load


@st.composite
def jsonl_files(draw):
    """JSONL lines: mostly ``{"text": ..., "label": ...}`` objects of random JSON values, some broken."""
    record = st.fixed_dictionaries({"text": json_values, "label": json_values},
                                   optional={"extra": json_values}).map(json.dumps)
    broken = st.one_of(record.map(lambda line: line[: len(line) // 2]), json_values.map(json.dumps),
                       st.text(max_size=10), st.just(""))
    lines = draw(st.lists(st.one_of(record, record, record, broken), max_size=8))
    return "\n".join(lines)


@SETTINGS
@given(jsonl_files())
def test_a_random_jsonl_file_loads_or_raises_data_error(text):
    result = _load(".jsonl", text.encode("utf-8", errors="surrogatepass"))
    assert isinstance(result, DataError) or len(result) == len(result.targets)


numbers = st.one_of(st.integers(-1000, 1000), st.integers(-1000, 1000).map(float),
                    st.floats(-1e6, 1e6, allow_nan=False), st.integers(-99, 99).map(lambda i: f"{i}.0"),
                    st.integers(-99, 99).map(str))


@SETTINGS
@given(st.lists(numbers, min_size=1, max_size=10))
def test_numeric_labels_make_the_same_classes_in_csv_and_jsonl(labels):
    texts = [f"item {i}" for i in range(len(labels))]
    body = io.StringIO()
    csv.writer(body).writerows([["text", "label"], *([t, str(v)] for t, v in zip(texts, labels))])
    from_csv = _load(".csv", body.getvalue().encode())
    from_jsonl = _load(".jsonl", "".join(json.dumps({"text": t, "label": v}) + "\n"
                                          for t, v in zip(texts, labels)).encode())
    assert type(from_csv) is type(from_jsonl)
    if not isinstance(from_csv, DataError):
        assert from_csv.label_names == from_jsonl.label_names
        assert from_csv.targets.tolist() == from_jsonl.targets.tolist()


option_keys = st.sampled_from(["train_last", "freeze", "lr_decay", "dropout", "augment", "mixup", "recalibrate_bn",
                               "regularizer", "regularizer_options", "batchnorm", "rank", "unknown-key", ""])
option_values = st.one_of(st.sampled_from(["abc", "1", "-2", "1e-3", "0.5", "[1", "[a, b]", "{k: 1}", "true", "null",
                                           "", "'quoted'", "{", ": x", "&a", "*a", "!!python/object:os.system",
                                           "2024-01-01", "[" * 50]),
                          st.text(max_size=12))


@SETTINGS
@given(st.lists(st.one_of(st.tuples(option_keys, option_values).map("=".join), st.text(max_size=10)), max_size=4),
       st.sampled_from(["finetune", "linear-probe", "lora"]))
def test_random_options_are_accepted_or_refused_by_name(pairs, strategy):
    try:
        make_strategy(strategy, parse_options(pairs))
    except TransferkitError:
        pass


FLAGS = ["backbone", "data", "strategy", "epochs", "lr", "options", "seed", "image-size", "labels_per_class",
         "val-fraction", "overwrite", "batch-size", "schedule", "config", "nonsense"]
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@SETTINGS
@given(st.one_of(st.dictionaries(st.sampled_from(FLAGS), yaml_values, max_size=5), yaml_values))
def test_a_random_recipe_never_ends_in_an_internal_error(recipe):
    import yaml
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    with tempfile.TemporaryDirectory() as folder:
        path, out, logs = Path(folder) / "r.yaml", Path(folder) / "taken", Path(folder) / "logs"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        out.write_text("")  # an existing file: a recipe that got that far is refused before any training
        r = CliRunner(env={"TRANSFERKIT_LOG_DIR": str(logs)}).invoke(app, ["fit", "--config", str(path),
                                                                           "--out", str(out)])
        assert r.exit_code == 2, r.output
        assert not logs.exists() and "Traceback" not in r.output


@pytest.mark.parametrize("pair", ["rank=8", "freeze=[blocks.0*, head]", "regularizer_options={temperature: 2}",
                                  "lr-decay=0.5", "train_last="])
def test_well_formed_options_parse(pair):
    key, value = next(iter(parse_options([pair]).items()))
    assert "-" not in key and (value is None or value != "")
