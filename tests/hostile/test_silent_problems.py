"""Inputs that used to load wrongly without a word, and the error handler's own paths.

Unusual images (16-bit, palette, CMYK, LA, 1-bit, 1x1) must load with the right brightness; numeric
labels must make the same classes in every format; duplicates across the validation split must be
warned about; an unexpected error must leave a log with the traceback.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from transferkit.backbones import load_backbone
from transferkit.backbones.base import ImagePreprocess, to_uint8
from transferkit.data import from_arrays, from_table, train_val_split
from transferkit.data.adapters_tables import read_table
from transferkit.errors import DataError, DataWarning

from .conftest import text_rows, write_images

GREY = 0.4  # every test image below is this bright: 40% of full scale


def _odd_images() -> dict[str, Image.Image]:
    """One 6x5 image per unusual mode, each a flat 40% grey (alpha, where there is one, opaque)."""
    g8 = round(GREY * 255)
    grey = Image.new("L", (6, 5), g8)
    palette = grey.convert("P")
    with_alpha = palette.copy()
    with_alpha.info["transparency"] = 255
    return {
        "I;16": Image.fromarray(np.full((5, 6), round(GREY * 65535), np.uint16)),
        "I": Image.fromarray(np.full((5, 6), round(GREY * 65535), np.int32)),
        "F": Image.fromarray(np.full((5, 6), GREY, np.float32)),
        "P": palette, "P+transparency": with_alpha,
        "CMYK": Image.new("RGB", (6, 5), (g8, g8, g8)).convert("CMYK"),
        "LA": Image.merge("LA", (grey, Image.new("L", (6, 5), 255))),
        "RGBA": Image.new("RGBA", (6, 5), (g8, g8, g8, 255)),
    }


@pytest.mark.parametrize("mode", sorted(_odd_images()))
def test_an_image_of_any_mode_loads_with_its_own_brightness(mode):
    rgb = ImagePreprocess(4, [0.0] * 3, [1.0] * 3).load(_odd_images()[mode])
    assert rgb.mode == "RGB"
    assert np.asarray(rgb).mean() / 255 == pytest.approx(GREY, abs=0.02)


def test_a_16_bit_png_file_is_scaled_not_clipped_to_white(tmp_path):
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(ImagePreprocess(64, [0.0] * 3, [1.0] * 3).load(str(path)))
    assert pixels.mean() == pytest.approx(127.5, abs=1)  # a ramp: half bright on average, not 99% white
    assert (pixels == 255).mean() < 0.01


def test_one_bit_and_one_pixel_images_load():
    pre = ImagePreprocess(8, [0.0] * 3, [1.0] * 3)
    assert pre([Image.new("1", (3, 3), 1), Image.new("L", (1, 1), 7)]).shape == (2, 3, 8, 8)


def test_uint8_conversion_of_arrays():
    assert to_uint8(np.array([0.0, 0.5, 1.0])).tolist() == [0, 127, 255]
    assert to_uint8(np.array([0, 100, 255], dtype=np.int64)).tolist() == [0, 100, 255]
    assert to_uint8(np.array([0, 65535], dtype=">u2")).tolist() == [0, 255]
    assert to_uint8(np.array([-10, 0, 10], dtype=np.int32)).tolist() == [0, 128, 255]


def test_an_image_folder_of_odd_modes_trains(cli, tmp_path):
    root = tmp_path / "imgs"
    for label, modes in {"a": ("I;16", "P", "CMYK"), "b": ("LA", "RGBA", "P+transparency")}.items():
        (root / label).mkdir(parents=True)
        for mode in modes:
            suffix = ".jpg" if mode == "CMYK" else ".png"  # PNG has no CMYK
            _odd_images()[mode].save(root / label / f"{mode.replace(';', '').replace('+', '_')}{suffix}")
    r = cli("fit", "--backbone", "small-cnn:8", "--strategy", "finetune", "--epochs", "1", "--data", root,
            "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "manifest.json").exists()


# -- labels ----------------------------------------------------------------------------------------------------

def test_equal_numeric_labels_are_one_class_in_csv_and_jsonl(tmp_path):
    csv = tmp_path / "n.csv"
    csv.write_text("text,label\na,1\nb,1.0\nc,2\nd, 2.0 \ne,1e0\n")
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": v}) + "\n"
                             for t, v in zip("abcde", [1, "1", 2.0, "2", 1.0])))
    for path in (csv, jsonl):
        data = from_table(path)
        assert data.label_names == ["1", "2"], path
        assert data.targets.tolist() == [0, 0, 1, 1, 0], path


def test_numeric_and_named_labels_sort_numbers_first_and_keep_names():
    data = from_arrays(["a", "b", "c", "d"], ["10", "2", "cat", 2.0])
    assert data.label_names == ["2", "10", "cat"] and data.targets.tolist() == [1, 0, 2, 0]


def test_a_number_that_is_not_whole_is_refused_the_same_in_every_format(tmp_path):
    csv = tmp_path / "f.csv"
    csv.write_text("text,label\na,1\nb,1.5\n")
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.5}\n')
    for path in (csv, jsonl):
        with pytest.raises(DataError, match=r"line 3|line 2"):
            from_table(path)


# -- splits ----------------------------------------------------------------------------------------------------

def test_duplicates_across_the_validation_split_are_warned_with_their_count():
    texts = [f"text {i % 10}" for i in range(40)]  # every text four times
    data = from_arrays(texts, ["x", "y"] * 20)
    with pytest.warns(DataWarning, match=r"8 of 8 validation items are exact duplicates"):
        train_val_split(data, 0.2, seed=0)
    distinct = from_arrays([f"text {i}" for i in range(40)], ["x", "y"] * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        train_val_split(distinct, 0.2, seed=0)


def test_the_cli_shows_the_duplicate_warning_as_one_line(cli, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,label\n" + text_rows(20) + text_rows(20))
    r = cli("fit", "--backbone", "tfidf", "--strategy", "scratch", "--epochs", "1", "--data", path,
            "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "exact duplicates of training items" in warned[0] and str(path) in warned[0]


# -- tables ----------------------------------------------------------------------------------------------------

def test_a_cell_longer_than_the_csv_module_limit_loads(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + "w " * 100_000 + ",x\nshort,y\n")
    frame, lines = read_table(path)
    assert len(frame["text"][0]) == 200_000 and lines == [2, 3]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_a_file_with_a_byte_order_mark_loads(tmp_path, encoding):
    path = tmp_path / "bom.csv"
    path.write_bytes("text,label\ncafé,x\nnaïve,y\n".encode(encoding))
    data = from_table(path)
    assert data.items == ["café", "naïve"] and data.label_names == ["x", "y"]


def test_a_jsonl_string_with_a_line_separator_stays_one_line(tmp_path):
    path = tmp_path / "sep.jsonl"
    path.write_text('{"text": "a\u2028b", "label": "x"}\n{"text": "c", "label": "y"}\n', encoding="utf-8")
    frame, lines = read_table(path)
    assert frame["text"].tolist() == ["a\u2028b", "c"] and lines == [1, 2]


# -- small-cnn and --image-size --------------------------------------------------------------------------------

def test_small_cnn_honours_image_size_and_names_it_in_its_spec():
    bb = load_backbone("small-cnn:8", image_size=16)
    assert bb.spec == "small-cnn:16" and bb.preprocess.size == 16
    assert load_backbone("small-cnn:8").preprocess.size == 8


# -- the error handler -----------------------------------------------------------------------------------------

def test_an_internal_error_is_one_line_naming_a_log_with_the_traceback(cli, log_dir, tmp_path, monkeypatch):
    import transferkit.api

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(transferkit.api, "fit", broken)
    r = cli("fit", "--backbone", "tfidf", "--data", tmp_path, "--out", tmp_path / "b")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    logs = list(log_dir.iterdir())
    assert len(logs) == 1 and str(logs[0]) in lines[0] and "RuntimeError: something inside broke" in lines[0]
    text = logs[0].read_text()
    assert "Traceback" in text and "something inside broke" in text and "command: " in text


def test_running_out_of_memory_says_what_to_lower(cli, log_dir, tmp_path, monkeypatch):
    import transferkit.api

    def hungry(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(transferkit.api, "fit", hungry)
    r = cli("fit", "--backbone", "tfidf", "--data", tmp_path, "--out", tmp_path / "b")
    assert r.exit_code == 1 and "out of memory" in r.stderr and "--image-size" in r.stderr


def test_an_unwritable_log_folder_falls_back_to_the_temporary_folder(cli, tmp_path, monkeypatch):
    import transferkit.api

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TRANSFERKIT_LOG_DIR", str(blocker / "logs"))  # below a file: cannot be created
    monkeypatch.setattr(transferkit.api, "fit", lambda *a, **k: 1 / 0)
    r = cli("fit", "--backbone", "tfidf", "--data", tmp_path, "--out", tmp_path / "b")
    assert r.exit_code == 1 and "transferkit-logs" in r.stderr and "ZeroDivisionError" in r.stderr


def test_a_message_with_brackets_is_shown_as_written(cli, tmp_path):
    root = write_images(tmp_path / "imgs")
    r = cli("fit", "--backbone", "small-cnn:8", "--strategy", "finetune", "--data", root, "-o",
            "freeze=[bold]x", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "[bold]x" in r.stderr, r.stderr
