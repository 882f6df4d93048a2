"""Streaming fit: tar shards, ``datasets`` streams and image folders read a batch at a time (issue 23).

A streamed fit that visits the items in the in-memory loop's order ends with the in-memory fit's weights;
bad shards are named by shard and member; a data set larger than a hard memory cap trains under it.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shapes_images
from transferkit.data.streaming import open_stream
from transferkit.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["square", "bar", "noise"]


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of ``(member name, bytes)`` in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def samples(X, y, order) -> list[tuple[str, bytes]]:
    return [m for i in order for m in ((f"{i:05d}.png", png(X[i])), (f"{i:05d}.cls", NAMES[y[i]].encode()))]


def image_folder(root: Path, X, y) -> Path:
    from PIL import Image

    for i, (img, label) in enumerate(zip(X, y)):
        (root / NAMES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / NAMES[label] / f"{i:05d}.png")
    return root


def in_memory_order(n: int, batch_size: int, seed: int) -> list[int]:
    """The first epoch's item order of the loop's in-memory DataLoader (shuffled by its seeded generator)."""
    loader = torch.utils.data.DataLoader(range(n), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    return [int(i) for b in loader for i in b]


def test_streamed_fit_matches_the_in_memory_fit_in_the_same_order(tmp_path):
    from transferkit.api import fit

    X, y = shapes_images(n_per_class=10)
    folder = image_folder(tmp_path / "folder", X, y)
    from transferkit.data import from_image_folder

    held = from_image_folder(folder)  # the folder's order: by class, then name
    items = [int(Path(p).stem) for p in held.items]
    order = [items[i] for i in in_memory_order(len(items), 8, seed=3)]
    shard = write_shard(tmp_path / "shards" / "000.tar", samples(X, y, order))
    args = dict(epochs=1, batch_size=8, seed=3, progress=False, report=False)
    whole = fit("small-cnn:16", folder, "finetune", val_fraction=0.0, **args)
    stream = open_stream(shard, shuffle_buffer=0)
    assert stream.label_names == sorted(NAMES) and len(stream) == len(X)
    streamed = fit("small-cnn:16", stream, "finetune", **args)
    assert streamed.history == whole.history
    a, b = whole.predictor.model.state_dict(), streamed.predictor.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert streamed.manifest["data"]["streamed"] and streamed.manifest["data"]["n_train"] == len(X)


def test_stream_order_is_seeded_and_shards_and_buffer_shuffle(tmp_path):
    X, y = shapes_images(n_per_class=6)
    for s in range(3):
        write_shard(tmp_path / f"{s:03d}.tar", samples(X, y, range(s, len(X), 3)))
    stream = open_stream(str(tmp_path / "{000..002}.tar"), shuffle_buffer=5)
    keys = lambda seed, epoch: [w for _, _, w in stream.records(seed, epoch)]  # noqa: E731
    assert keys(0, 0) == keys(0, 0) and keys(0, 0) != keys(0, 1) and keys(0, 0) != keys(1, 0)
    assert sorted(keys(0, 0)) == sorted(keys(1, 1)) and len(keys(0, 0)) == len(X)
    batches = list(stream.batches(4, seed=0, epoch=0))
    assert [len(t) for _, t in batches] == [4] * 4 + [2]
    # head: the source's first items (shard 000 holds items 0, 3, 6, ...), not the epoch's shuffled ones
    assert [np.asarray(img).tolist() for img in stream.head(3)] == [X[i].tolist() for i in (0, 3, 6)]
    assert stream.head(0) == [] and len(stream.head(100)) == len(X)
    assert [t.tolist() for _, t in stream.batches(4, seed=0, epoch=0, skip=3)] == [t.tolist() for _, t in batches[3:]]


def test_a_streamed_probe_reads_the_stream_twice_and_checks_each_label_once(monkeypatch, tmp_path):
    from transferkit.api import fit
    from transferkit.data import stream_sources, streaming

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    X, y = shapes_images(n_per_class=6)
    for s in range(2):
        write_shard(tmp_path / f"{s:03d}.tar", samples(X, y, range(s, len(X), 2)))
    reads, checked = [], []
    real_samples, real_check = stream_sources.TarShards._samples, streaming._check_class_label

    def counted_samples(self, shard, read_items):
        reads.append((shard, read_items))
        return real_samples(self, shard, read_items)

    def counted_check(label, where):
        checked.append(where)
        return real_check(label, where)

    monkeypatch.setattr(stream_sources.TarShards, "_samples", counted_samples)
    monkeypatch.setattr(streaming, "_check_class_label", counted_check)
    stream = open_stream(str(tmp_path / "{000..001}.tar"))
    assert reads == [(0, False), (1, False)]  # the label pass
    in_file_order = [i for s in range(2) for i in range(s, len(X), 2)]
    expected = [stream.label_names.index(NAMES[y[i]]) for i in in_file_order]
    assert stream.targets().tolist() == expected and stream.targets().dtype == np.int64
    assert stream.label_counts.tolist() == np.bincount(expected, minlength=3).tolist()
    assert [t for _, ts in stream.in_order(5) for t in ts.tolist()] == expected
    reads.clear()
    fit("small-cnn:16", stream, "linear-probe", progress=False, report=False)
    assert sorted(reads) == [(0, True), (1, True)]  # the features, each shard once; no label pass again
    fit("small-cnn:16", stream, "finetune", epochs=2, progress=False, report=False)
    assert len(checked) == len(X) and len(set(checked)) == len(X)  # every label checked once, by the label pass


def test_a_shard_that_changed_since_the_label_pass_is_refused(tmp_path):
    X, y = shapes_images(n_per_class=4)
    shard = write_shard(tmp_path / "000.tar", samples(X, y, range(len(X))))
    stream = open_stream(shard, shuffle_buffer=0)
    write_shard(shard, samples(X, y, range(len(X))) + [("00099.png", png(X[0])), ("00099.cls", b"bar")])
    with pytest.raises(DataError, match=r"000\.tar: member 00099\.png: shard 0 of .*000\.tar has more items than "
                                        r"the 12 it had when the stream was opened"):
        list(stream.batches(5))
    write_shard(shard, samples(X, y, range(len(X) - 1)))
    with pytest.raises(DataError, match=r"Shard 0 of .*000\.tar has 11 items, 12 when the stream was opened"):
        list(stream.in_order(5))


def test_bad_shards_are_named_by_shard_and_member(tmp_path):
    from transferkit.api import fit

    X, y = shapes_images(n_per_class=4)
    good = samples(X, y, range(len(X)))
    no_label = write_shard(tmp_path / "a" / "000.tar", good[:4] + [("00099.png", png(X[0]))])
    with pytest.raises(DataError, match=r"a/000\.tar: sample '00099' has no label member 00099\.cls"):
        open_stream(no_label)
    bad_label = write_shard(tmp_path / "b" / "000.tar", good[:4] + [("00099.png", png(X[0])), ("00099.cls", b"2.5")])
    with pytest.raises(DataError, match=r"b/000\.tar: member 00099\.cls: label '2\.5' is a number but not a whole"):
        open_stream(bad_label)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "classes.txt").write_text("\n".join(NAMES))
    unknown = write_shard(tmp_path / "c" / "000.tar", good[:4] + [("00099.png", png(X[0])), ("00099.cls", b"cat")])
    with pytest.raises(DataError, match=r"c/000\.tar: member 00099\.cls: unknown label 'cat'. Valid labels: square"):
        open_stream(unknown)
    truncated = write_shard(tmp_path / "d" / "000.tar", good)
    truncated.write_bytes(truncated.read_bytes()[:len(png(X[0])) + 2000])
    with pytest.raises(DataError, match=r"d/000\.tar: not a readable tar archive after member 0000\d\.\w+"):
        open_stream(truncated)
    corrupt = write_shard(tmp_path / "e" / "001.tar", good[:20] + [("00099.png", b"not a png"), ("00099.cls", b"bar")])
    stream = open_stream(corrupt, shuffle_buffer=0)  # labels are fine: the image fails when its batch is read
    with pytest.raises(DataError, match=r"e/001\.tar: member 00099\.png: cannot read image"):
        fit("small-cnn:16", stream, "finetune", epochs=1, progress=False, report=False)
    with pytest.raises(DataError, match=r"Tar shard\(s\) not found: .*/f/000\.tar, .*/f/001\.tar"):
        open_stream(str(tmp_path / "f" / "{000..001}.tar"))


def test_strategies_and_options_that_need_the_data_whole_refuse_a_stream(tmp_path):
    from transferkit.api import compare, fit

    X, y = shapes_images(n_per_class=4)
    shard = str(write_shard(tmp_path / "000.tar", samples(X, y, range(len(X)))))
    args = dict(epochs=1, progress=False, report=False)
    with pytest.raises(ConfigError, match=r"Strategy 'protonet' needs its training data in memory.*Strategies "
                                          r"that stream: .*finetune.*linear-probe.*lora"):
        fit("small-cnn:16", shard, "protonet", **args)
    with pytest.raises(DataError, match="tar shards and a datasets.IterableDataset are read as a stream, which only "
                                        "fit's training data is"):
        fit("small-cnn:16", shard, "finetune", test_data=shard, **args)
    with pytest.raises(DataError, match="read as a stream, which only fit's training data is"):
        compare("small-cnn:16", shard, ["finetune"], seeds=1, baselines=[], epochs=1, progress=False)


_WHOLE = r"'shards' is streamed, and "
_DROP = r" the training data whole\. Drop (it|them), or read the data whole \(without --stream\)\."
_STREAM_REFUSALS = {  # every option a stream refuses, with its message
    "strategy auto": (dict(strategy="auto"), _WHOLE + r"strategy 'auto' \(its search cross-validates on the "
                                              r"training labels\) needs" + _DROP),
    "check_transfer": (dict(check_transfer=True), _WHOLE + r"check_transfer \(the scratch baselines train in "
                                                       r"memory\) needs" + _DROP),
    "lr auto": (dict(lr="auto"), _WHOLE + r"lr='auto' \(the finder's range test\) needs" + _DROP),
    "pre-training": (dict(pretrain="simclr", unlabelled_data="FOLDER"), _WHOLE + r"pre-training \(--pretrain\) needs"
                     + _DROP),
    "domain target": (dict(target_data="FOLDER"), _WHOLE + r"domain adaptation \(target_data\) needs" + _DROP),
    "two at once": (dict(check_transfer=True, lr="auto"), _WHOLE + r"check_transfer \(.*\); lr='auto' \(.*\) need"
                    + _DROP),
    "labels_per_class": (dict(labels_per_class=2), r"labels_per_class draws from training data held whole; 'shards' is "
                                                   r"streamed\. Leave it out, or read the data whole"),
    "val_fraction": (dict(val_fraction=0.2), r"val_fraction holds a split out of training data held whole; 'shards' is "
                                             r"streamed\. Give validation data with val_data, or leave val_fraction out"),
    "head_init probe": (dict(strategy_options={"head_init": "probe"}), r"head_init=probe reads the whole training set "
                        r"in memory; 'shards' is a stream\. Leave head_init at the default"),
    "recalibrate_bn": (dict(strategy_options={"recalibrate_bn": True}), r"recalibrate_bn=true reads the whole training "
                       r"set in memory; 'shards' is a stream\. Leave recalibrate_bn at the default"),
    "both finetune options": (dict(strategy_options={"head_init": "probe", "recalibrate_bn": True}),
                              r"head_init=probe, recalibrate_bn=true read the whole training set in memory; 'shards' is "
                              r"a stream\. Leave head_init and recalibrate_bn at the default"),
    "multi-label task": (dict(task="multilabel"), r"Streamed training data is read for classification, one class per "
                         r"item; task='multilabel' needs the data whole \(without --stream\)\."),
    "sensitive_column": (dict(sensitive_column="group"), r"sensitive_column applies to data read whole; a stream "
                                                         r"carries inputs and labels only\."),
}


@pytest.mark.parametrize("name", list(_STREAM_REFUSALS))
def test_each_option_a_stream_refuses_is_named(name, tmp_path):
    from transferkit.api import fit

    X, y = shapes_images(n_per_class=4)
    shard = str(write_shard(tmp_path / "shards" / "000.tar", samples(X, y, range(len(X)))))
    folder = str(image_folder(tmp_path / "folder", X, y))
    options, message = _STREAM_REFUSALS[name]
    options = {k: folder if v == "FOLDER" else v for k, v in options.items()}
    options = {"strategy": "finetune", "epochs": 1, "progress": False, "report": False, **options}
    with pytest.raises(ConfigError, match=message):
        fit("small-cnn:16", shard, options.pop("strategy"), **options)


def test_a_stream_refuses_feature_columns_and_several_processes(tmp_path):
    from types import SimpleNamespace

    from transferkit.data import resolve_data
    from transferkit.strategies.base import StreamDataset
    from transferkit.training.loop import Trainer

    X, y = shapes_images(n_per_class=4)
    shard = str(write_shard(tmp_path / "000.tar", samples(X, y, range(len(X)))))
    with pytest.raises(ConfigError, match=r"feature_columns applies to data read whole; a stream carries inputs and "
                                          r"labels only\."):
        resolve_data(shard, stream=True, feature_columns=["a"])
    stream = open_stream(shard)
    trainer = Trainer(accelerator=SimpleNamespace(num_processes=2))
    with pytest.raises(ConfigError, match=r"A streamed training set \('.*'\) is read by one process; this run has 2\. "
                                          r"Run it without accelerate launch / torchrun"):
        trainer._stream_loader(StreamDataset(stream, None), stream)


def test_a_streams_validation_data_is_indexed_as_its_classes_and_its_test_data_cut(tmp_path):
    from transferkit.api import prepare_data
    from transferkit.data.streaming import is_stream

    X, y = shapes_images(n_per_class=4)
    shard = write_shard(tmp_path / "shards" / "000.tar", samples(X, y, range(len(X))))
    (tmp_path / "shards" / "classes.txt").write_text("\n".join(NAMES))  # declared order: not the sorted one
    folder = image_folder(tmp_path / "folder", X, y)
    train, val, test = prepare_data(str(shard), stream=True, val_data=folder, test_data=folder, max_test=6)
    assert is_stream(train) and train.label_names == NAMES and val.label_names == NAMES
    assert val.targets.tolist() == [int(y[int(Path(p).stem)]) for p in val.items]
    assert len(test) == 6 and np.bincount(test.targets, minlength=3).tolist() == [2, 2, 2]


def test_linear_probe_extracts_a_streams_features_into_the_cache_file(monkeypatch, tmp_path):
    from transferkit.api import fit

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    X, y = shapes_images(n_per_class=10)
    shard = write_shard(tmp_path / "shards" / "000.tar", samples(X, y, range(len(X))))
    folder = image_folder(tmp_path / "folder", X, y)
    streamed = fit("small-cnn:16", shard, "linear-probe", test_data=folder, progress=False, report=False)
    # the stream's features and the test folder's, each in its own cache file
    assert streamed.history[0]["streamed"] and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    whole = fit("small-cnn:16", folder, "linear-probe", test_data=folder, val_fraction=0.0, progress=False,
                report=False, strategy_options={"streaming": True})
    assert abs(streamed.metrics["accuracy"] - whole.metrics["accuracy"]) < 0.1 and streamed.metrics["accuracy"] > 0.8


def test_lora_and_gradual_unfreezing_train_on_a_stream(tmp_path):
    from transferkit.api import fit

    X, y = shapes_images(n_per_class=8)
    shard = str(write_shard(tmp_path / "000.tar", samples(X, y, range(len(X)))))
    for strategy in ("lora", "gradual-unfreeze"):
        result = fit("small-cnn:16", shard, strategy, epochs=2, progress=False, report=False)
        assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
        assert result.manifest["strategy"]["name"] == strategy and result.manifest["data"]["streamed"]


def test_class_weights_of_a_stream_come_from_its_label_pass(tmp_path):
    from transferkit.strategies.finetune import balanced_class_weights, class_weights_for

    X, y = shapes_images(n_per_class=6)
    keep = [i for i in range(len(X)) if y[i] != 2 or i % 3 == 0]  # fewer noise images
    stream = open_stream(write_shard(tmp_path / "000.tar", samples(X, y, keep)))
    names = np.array([NAMES[y[i]] for i in keep])
    expected = balanced_class_weights(np.searchsorted(stream.label_names, names), 3)
    assert torch.equal(class_weights_for("balanced", stream), expected)


def test_datasets_streams_parquet_and_saved_folders_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from transferkit.api import fit

    X, y = shapes_images(n_per_class=6)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in X], "label": y.tolist()},
                                    features=features)
    ds.to_parquet(str(tmp_path / "train.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "train.parquet", tmp_path / "saved", ds.to_iterable_dataset(num_shards=2)):
        stream = open_stream(source)
        assert stream.label_names == NAMES and len(stream) == len(X) and stream.modality == "image"
        items, targets = next(stream.batches(len(X), seed=0, epoch=0))
        assert sorted(targets.tolist()) == sorted(y.tolist()) and items[0].size == (16, 16)
    rows = [{"review": f"text {i}", "label": ["pos", "neg", "neutral"][i % 3]} for i in range(7)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = open_stream(tmp_path / "text.jsonl", text_column="review", shuffle_buffer=0)  # classes from the label pass
    assert text.modality == "text" and text.label_names == ["neg", "neutral", "pos"]
    assert text.label_counts.tolist() == [2, 2, 3] and text.head(2) == ["text 0", "text 1"]
    held_out = image_folder(tmp_path / "test", *shapes_images(n_per_class=10, seed=1))
    result = fit("small-cnn:16", tmp_path / "train.parquet", "finetune", stream=True, epochs=6, batch_size=4,
                 progress=False, report=False, test_data=held_out)
    # held-out images; chance is 1/3 (one step an epoch, as at epochs=1 and batch 32, stays at chance)
    assert result.manifest["data"]["streamed"] and result.metrics["accuracy"] >= 0.6, result.metrics


def test_classes_named_by_numbers_keep_their_index_in_folders_and_class_labels(tmp_path):
    """A class folder's or a ClassLabel's value is an index, never a name: with classes "1" and "2", index 1
    is "2" (looked up as a name first, it was "1", and a folder of classes "1" and "2" had a single class)."""
    from PIL import Image

    X, y = shapes_images(n_per_class=3)
    root = tmp_path / "digits"
    for i, (img, label) in enumerate(zip(X[y < 2], y[y < 2])):
        (root / str(label + 1)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(label + 1) / f"{i:05d}.png")
    stream = open_stream(root, shuffle_buffer=0)
    assert stream.label_names == ["1", "2"] and stream.label_counts.tolist() == [3, 3]
    assert stream.targets().tolist() == [0, 0, 0, 1, 1, 1]
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["1", "0"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=features)
    text = open_stream(ds.to_iterable_dataset(), shuffle_buffer=0)
    assert text.label_names == ["1", "0"] and text.targets().tolist() == [0, 1, 1]


def test_cli_fit_streams_tar_shards_and_image_folders(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    X, y = shapes_images(n_per_class=6)
    for s in range(2):
        write_shard(tmp_path / "shards" / f"{s:03d}.tar", samples(X, y, range(s, len(X), 2)))
    folder = image_folder(tmp_path / "folder", X, y)
    for data, extra in ((str(tmp_path / "shards" / "{000..001}.tar"), []), (str(folder), ["--stream"])):
        out = tmp_path / f"run{len(extra)}"
        result = CliRunner().invoke(app, ["fit", "--backbone", "small-cnn:16", "--data", data, *extra, "--strategy",
                                          "finetune", "--epochs", "1", "--test-data", str(folder), "--out", str(out)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["data"]["streamed"] and manifest["data"]["n_train"] == len(X)


def test_progress_bar_shows_items_per_second():
    import time

    from transferkit.training.loop import _progress

    bar = _progress(True, 2, "finetune")
    try:
        bar.start = time.perf_counter() - 2.0  # the run started 2 s ago
        before = time.perf_counter()
        bar.items(32)
        bar.items(32)
        elapsed = (before - bar.start, time.perf_counter() - bar.start)  # what the rate divided by lies between
        shown = bar.p.tasks[0].fields["rate"]
        assert bar.seen == 64 and shown.endswith(" items/s")
        rate = float(shown.removesuffix(" items/s").replace(",", ""))
        assert 0 < 64 / elapsed[1] - 0.5 <= rate <= 64 / elapsed[0] + 0.5, (shown, elapsed)  # about 32 items/s
    finally:
        bar.close()


def test_progress_bar_shows_a_rate_below_one_item_per_second():
    import time

    from transferkit.training.loop import _progress

    bar = _progress(True, 2, "finetune")
    try:
        bar.start = time.perf_counter() - 100.0
        bar.items(16)  # 0.16 items/s, shown as "0 items/s" before
        assert bar.p.tasks[0].fields["rate"] == "0.16 items/s"
    finally:
        bar.close()


def test_large_image_sets_are_decoded_a_batch_at_a_time(monkeypatch, tmp_path):
    from transferkit.backbones import load_backbone
    from transferkit.data import from_image_folder
    from transferkit.strategies import base

    X, y = shapes_images(n_per_class=4)
    data = from_image_folder(image_folder(tmp_path / "f", X, y))
    pre = load_backbone("small-cnn:16").preprocess
    held = base.ItemDataset(data, pre, augment=False)
    monkeypatch.setattr(base, "fits_in_memory_share", lambda nbytes, share: False)
    lazy = base.ItemDataset(data, pre, augment=False)
    assert held.tensor is not None and lazy.tensor is None
    assert torch.equal(held.collate([0, 5, 7])["inputs"], lazy.collate([0, 5, 7])["inputs"])


_UNDER_A_CAP = """
import io, json, os, resource, sys, tarfile
import numpy as np, torch
torch.set_num_threads(1)
from PIL import Image
from transferkit.api import fit
from transferkit.data.streaming import open_stream

HEADROOM, SIDE, PER_SHARD = 256 << 20, 192, 400
folder = sys.argv[1]
rng = np.random.default_rng(0)
n = 0


def image(label):
    # smooth colour fields compress well on disk but decode to SIDE x SIDE x 3 bytes each
    ramp = np.linspace(0, 1, SIDE, dtype=np.float32)[None, :, None]
    base = np.array([[200, 40, 40], [40, 40, 200]][label], np.float32)[None, None, :]
    img = base * (0.5 + 0.5 * ramp) + rng.normal(0, 4, (1, 1, 3))
    buf = io.BytesIO()
    Image.fromarray(np.broadcast_to(img, (SIDE, SIDE, 3)).clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


shards = 0
while n * SIDE * SIDE * 3 < 2 * HEADROOM:  # the decoded images: twice the memory left under the cap
    with tarfile.open(os.path.join(folder, f"{shards:03d}.tar"), "w") as tar:
        for _ in range(PER_SHARD):
            label = n % 2
            for ext, data in (("png", image(label)), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{n:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            n += 1
    shards += 1
pattern = os.path.join(folder, "{000..%03d}.tar" % (shards - 1))
test = os.path.join(folder, "000.tar")
small = open_stream(test)  # warm-up: imports, threads and allocator arenas exist before the cap
fit("small-cnn:16", small, "finetune", epochs=1, progress=False, report=False)
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    np.ones((n, SIDE, SIDE, 3), dtype=np.uint8)
    held = True
except MemoryError:
    held = False
stream = open_stream(pattern)
result = fit("small-cnn:16", stream, "finetune", epochs=1, batch_size=64, progress=False, report=False)
model = result.predictor.model.eval()
items, targets = next(open_stream(test, shuffle_buffer=0).batches(200))
with torch.no_grad():
    accuracy = float((model(model.backbone.preprocess(items)).argmax(1).numpy() == targets).mean())
print(json.dumps({"items": n, "decoded_bytes": n * SIDE * SIDE * 3, "cap_above_baseline": HEADROOM,
                  "whole_array_fits": held, "n_train": result.manifest["data"]["n_train"], "accuracy": accuracy}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_fit_streams_a_data_set_larger_than_the_memory_cap(tmp_path):
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _UNDER_A_CAP, str(tmp_path)], capture_output=True, text=True,
                            timeout=900, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["decoded_bytes"] > 2 * report["cap_above_baseline"] and not report["whole_array_fits"]
    assert report["n_train"] == report["items"] and report["accuracy"] > 0.9, report
