"""A corpus of hostile inputs to ``transferkit fit``: each fails with one line naming the culprit, exit code 2.

Each case builds its files in a fresh folder and returns the command line (without ``--out``) and the
parts the message must hold (the file, line, value or option, and what would be valid). The runner
checks, for every case: exit code 2, exactly one line on stderr starting with ``error:`` that holds
those parts, no traceback, nothing at ``--out``, and no internal-error log. All fail while the data,
options or recipe are read, before any training.
"""
from __future__ import annotations

import gzip
import os

import pytest

from .conftest import text_rows, write_images

CASES = {}


def case(fn):
    """Register a case: ``fn(folder) -> (argv, [parts the message must hold])``."""
    CASES[fn.__name__] = fn
    return fn


def text_fit(data, *extra):
    """``fit`` of the TF-IDF baseline on a text table: the cheapest text run, were the data good."""
    return ["fit", "--backbone", "tfidf", "--strategy", "scratch", "--epochs", "1", "--data", data, *extra]


def image_fit(data, *extra):
    """``fit`` of the small CNN, one epoch, on an image folder."""
    return ["fit", "--backbone", "small-cnn:8", "--strategy", "finetune", "--epochs", "1", "--data", data, *extra]


def csv_file(folder, body: str, name: str = "data.csv", header: str = "text,label\n"):
    path = folder / name
    path.write_text(header + body, encoding="utf-8")
    return path


def recipe(folder, text: str, data=None):
    """A YAML recipe; ``data`` (a good text CSV unless given) is filled in where the text says ``{data}``."""
    data = data if data is not None else csv_file(folder, text_rows())
    path = folder / "recipe.yaml"
    path.write_text(text.replace("{data}", str(data)), encoding="utf-8")
    return path


# -- degenerate label sets -------------------------------------------------------------------------------------

@case
def one_class(tmp):
    path = csv_file(tmp, text_rows(labels=("spam",)))
    return text_fit(path), [str(path), "at least 2 classes", "'spam'", "8 items"]


@case
def all_labels_empty(tmp):
    path = csv_file(tmp, "".join(f"text {i},\n" for i in range(5)))
    return text_fit(path), [str(path), "line 2", "label is empty"]


@case
def label_column_missing(tmp):
    path = csv_file(tmp, "a,b\nc,d\n", header="text,category\n")
    return text_fit(path), [str(path), "no column 'label'", "Columns present: text, category"]


@case
def label_column_named_wrong(tmp):
    path = csv_file(tmp, text_rows())
    return text_fit(path, "--label-column", "lable"), [str(path), "no column 'lable'", "text, label"]


@case
def class_folders_nested_below_the_root(tmp):
    write_images(tmp / "photos" / "inner", classes=("cat", "dog"))
    return image_fit(tmp / "photos"), ["found only 'inner'", f"{tmp / 'photos' / 'inner'} holds folders"]


@case
def numeric_label_not_whole(tmp):
    path = csv_file(tmp, "a,1\nb,2.5\nc,1\n")
    return text_fit(path), [str(path), "line 3", "'2.5'", "regression"]


@case
def jsonl_label_is_a_list(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x", "y"]}\n', encoding="utf-8")
    return text_fit(path), [str(path), "line 2", "is a list", "multilabel"]


# -- hostile image files ---------------------------------------------------------------------------------------

def _folder_with_bad_file(tmp, content: bytes, name: str = "bad.png"):
    root = write_images(tmp / "imgs")
    (root / "a" / name).write_bytes(content)
    return root, root / "a" / name


@case
def truncated_png(tmp):
    good = (write_images(tmp / "src", classes=("z",), n=1, size=32) / "z" / "0.png").read_bytes()
    root, bad = _folder_with_bad_file(tmp, good[: len(good) // 2])
    return image_fit(root), ["Cannot read image", str(bad)]


@case
def empty_png_file(tmp):
    root, bad = _folder_with_bad_file(tmp, b"")
    return image_fit(root), ["Cannot read image", str(bad)]


@case
def text_file_named_png(tmp):
    root, bad = _folder_with_bad_file(tmp, b"this is not an image\n")
    return image_fit(root), ["Cannot read image", str(bad)]


@case
def class_folder_without_images(tmp):
    root = write_images(tmp / "imgs")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no pictures here")
    return image_fit(root), ["no images", str(root / "empty")]


# -- encodings that lie ----------------------------------------------------------------------------------------

@case
def latin1_bytes_in_utf8_csv(tmp):
    path = tmp / "data.csv"
    path.write_bytes(b"text,label\nfine,x\ncaf\xe9 au lait,y\n")
    return text_fit(path), [str(path), "line 3, column 4", "not valid UTF-8", "0xe9"]


@case
def latin1_bytes_in_jsonl(tmp):
    path = tmp / "data.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "x"}\n{"text": "na\xefve", "label": "y"}\n')
    return text_fit(path), [str(path), "line 2", "not valid UTF-8"]


@case
def utf16_without_byte_order_mark(tmp):
    path = tmp / "data.csv"
    path.write_bytes(("text,label\n" + text_rows()).encode("utf-16-le"))
    return text_fit(path), [str(path), "NUL", "UTF-16"]


@case
def utf16_bom_but_broken(tmp):
    path = tmp / "data.csv"
    path.write_bytes(b"\xff\xfe" + "text,label\n".encode("utf-16-le") + b"\x00\xd8")  # a lone high surrogate
    return text_fit(path), [str(path), "UTF-16", "byte-order mark"]


@case
def non_utf8_file_name(tmp):
    name = os.fsdecode(b"caf\xe9.csv")
    path = csv_file(tmp, "a,x\nb,y,z\n", name=name)
    return text_fit(path), [r"caf\xe9.csv", "line 3", "3 fields"]


@case
def gz_that_is_not_gzip(tmp):
    path = tmp / "data.csv.gz"
    path.write_bytes(b"text,label\na,b\n")
    return text_fit(path), [str(path), "not a valid gzip file"]


# -- oversized fields and rows ---------------------------------------------------------------------------------

@case
def row_with_a_hundred_thousand_fields(tmp):
    path = csv_file(tmp, "a,x\n" + ",".join(["f"] * 100_000) + "\n")
    return text_fit(path), [str(path), "line 3", "100000 fields", "header has 2"]


@case
def jsonl_integer_over_4300_digits(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": ' + "7" * 5000 + "}\n")
    return text_fit(path), [str(path), "line 2", "cannot be read as JSON"]


@case
def jsonl_nested_too_deeply(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n' + "[" * 100_000 + "\n")
    return text_fit(path), [str(path), "line 2"]


# -- malformed tables ------------------------------------------------------------------------------------------

@case
def ragged_csv_row(tmp):
    path = csv_file(tmp, "a,x\nb,y,extra\nc,x\n")
    return text_fit(path), [str(path), "line 3 has 3 fields", "header has 2 (text, label)"]


@case
def header_only(tmp):
    path = csv_file(tmp, "")
    return text_fit(path), [str(path), "has a header (text, label) but no rows"]


@case
def empty_file(tmp):
    path = tmp / "data.csv"
    path.write_bytes(b"")
    return text_fit(path), [str(path), "the file is empty"]


@case
def no_header_row(tmp):
    path = tmp / "data.csv"
    path.write_text(text_rows())
    return text_fit(path), [str(path), "no column 'label'", "item number 0, x"]


@case
def duplicate_column_names(tmp):
    path = csv_file(tmp, "a,x,y\n", header="text,label,label\n")
    return text_fit(path), [str(path), "column 'label' appears twice"]


@case
def unsupported_table_suffix(tmp):
    path = tmp / "data.txt"
    path.write_text("text,label\na,b\n")
    return text_fit(path), [str(path), "unsupported table format '.txt'", ".csv, .tsv, .jsonl"]


@case
def tabular_cell_not_a_number(tmp):
    path = csv_file(tmp, "1.0,2.0,x\n3.0,oops,y\n", header="f1,f2,label\n")
    argv = ["fit", "--backbone", "mlp:8", "--strategy", "finetune", "--epochs", "1", "--data", path]
    return argv, [str(path), "say which column holds the inputs", "f1, f2, label"]


# -- malformed JSON / JSONL ------------------------------------------------------------------------------------

@case
def truncated_jsonl_line(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "lab\n')
    return text_fit(path), [str(path), "line 3 is not valid JSON"]


@case
def jsonl_record_is_a_list(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n["b", "y"]\n')
    return text_fit(path), [str(path), "line 2 is a JSON list, expected an object"]


@case
def jsonl_without_records(tmp):
    path = tmp / "data.jsonl"
    path.write_text("\n\n  \n")
    return text_fit(path), [str(path), "no records"]


@case
def jsonl_record_without_label(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n{"text": "c", "label": "y"}\n')
    return text_fit(path), [str(path), "line 2", "label is empty"]


@case
def jsonl_text_is_an_object(tmp):
    path = tmp / "data.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": {"body": "b"}, "label": "y"}\n')
    return text_fit(path), [str(path), "line 2", "column 'text' is a dict"]


# -- malformed entity data (token classification) ---------------------------------------------------------------

def ner_fit(data):
    """``fit`` of the CRF baseline on token data: no model to load, were the data good."""
    return ["fit", "--backbone", "tfidf", "--strategy", "crf", "--data", data]


def conll_file(folder, body: str, name: str = "train.conll"):
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


@case
def conll_inside_tag_without_its_begin(tmp):
    path = conll_file(tmp, "Ada\tB-PER\nran\tO\n\nto\tO\nParis\tI-LOC\n")
    return ner_fit(path), [str(path), "sentence 2 (line 4), word 2", "'I-LOC'", "continues no LOC entity", "iob1"]


@case
def conll_line_without_a_tag(tmp):
    path = conll_file(tmp, "Ada\tB-PER\nran\n")
    return ner_fit(path), [str(path), "line 2"]


@case
def conll_tag_of_no_scheme(tmp):
    path = conll_file(tmp, "Ada\tPERSON\nran\tO\n")
    return ner_fit(path), [str(path), "'PERSON'", "IOB2", "BILOU"]


@case
def conll_not_utf8(tmp):
    path = tmp / "train.conll"
    path.write_bytes(b"caf\xe9\tO\nAda\tB-PER\n")
    return ner_fit(path), [str(path), "line 1", "not valid UTF-8"]


@case
def span_jsonl_overlapping_spans(tmp):
    path = tmp / "spans.jsonl"
    path.write_text('{"text": "Ada Lovelace", "spans": [[0, 12, "PER"], [4, 12, "PER"]]}\n', encoding="utf-8")
    return ner_fit(path), [str(path), "line 1", "span 2", "overlaps"]


@case
def span_jsonl_span_cutting_a_word(tmp):
    path = tmp / "spans.jsonl"
    path.write_text('{"text": "Ada Lovelace", "spans": [[0, 2, "PER"]]}\n', encoding="utf-8")
    return ner_fit(path), [str(path), "line 1", "'Ad'", "word boundaries"]


# -- malformed prompt/completion data (text generation) -----------------------------------------------------------

@case
def generation_empty_completion(tmp):
    path = csv_file(tmp, '{"prompt": "Colour of the sky?", "completion": "blue"}\n'
                         '{"prompt": "Colour of grass?", "completion": "  "}\n', name="pairs.jsonl", header="")
    return ner_fit(path), [str(path), "line 2", "empty or non-text completion"]


@case
def generation_chat_ending_with_the_user(tmp):
    path = csv_file(tmp, '{"messages": [{"role": "user", "content": "Hi"}]}\n', name="pairs.jsonl", header="")
    return ner_fit(path), [str(path), "line 1", "ends with the assistant turn", "'user'"]


@case
def generation_empty_prompt_in_a_csv(tmp):
    path = csv_file(tmp, '"Colour of the sky?",blue\n"",green\n', name="pairs.csv", header="prompt,completion\n")
    return ner_fit(path), [str(path), "line 3", "empty or non-text prompt"]


# -- malformed boxes and masks (detection, segmentation) ----------------------------------------------------------

def dense_fit(data, *extra):
    """``fit`` of a detector on a random Lite0, one epoch, were the data good."""
    return ["fit", "--backbone", "efficientnet-lite:0", "--strategy", "finetune", "--epochs", "1", "--data", data,
            *extra]


def coco_file(folder, **changes):
    """One 80x60 PNG and a COCO file with one box of category 3 ('cat'); ``changes`` update that annotation."""
    import json

    from PIL import Image

    Image.new("RGB", (80, 60)).save(folder / "a.png")
    ann = {"id": 4, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10], **changes}
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}], "annotations": [ann],
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    path = folder / "ann.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@case
def coco_box_outside_the_image(tmp):
    path = coco_file(tmp, bbox=[70, 5, 20, 10])
    return dense_fit(path), [str(path), "annotation 4", "'a.png'", "[70, 5, 90, 15]", "outside the 80x60 image"]


@case
def coco_box_of_zero_area(tmp):
    path = coco_file(tmp, bbox=[10, 5, 0, 10])
    return dense_fit(path), [str(path), "annotation 4", "[10, 5, 10, 15]", "zero area"]


@case
def coco_category_not_listed(tmp):
    path = coco_file(tmp, category_id=5)
    return dense_fit(path), [str(path), "annotation 4", "category_id 5", "3 (cat), 7 (dog)"]


@case
def coco_annotation_for_a_missing_image(tmp):
    path = coco_file(tmp, image_id=2)
    return dense_fit(path), [str(path), "annotation 4", "image_id 2", "not among the file's 1 images"]


@case
def coco_polygon_of_two_points(tmp):
    path = coco_file(tmp, segmentation=[[10, 5, 30, 5]])
    return dense_fit(path, "--task", "segmentation"), [str(path), "annotation 4", "polygon 1 has 2 points",
                                                       "at least 3"]


@case
def segmentation_mask_of_another_size(tmp):
    from PIL import Image

    (tmp / "seg" / "images").mkdir(parents=True)
    (tmp / "seg" / "masks").mkdir()
    Image.new("RGB", (80, 60)).save(tmp / "seg" / "images" / "a.png")
    Image.new("L", (40, 30)).save(tmp / "seg" / "masks" / "a.png")
    mask = tmp / "seg" / "masks" / "a.png"
    return dense_fit(tmp / "seg"), [str(mask), "40x30", "its image a.png is 80x60"]


@case
def yolo_class_out_of_range(tmp):
    from PIL import Image

    (tmp / "y" / "images").mkdir(parents=True)
    (tmp / "y" / "labels").mkdir()
    Image.new("RGB", (80, 60)).save(tmp / "y" / "images" / "a.png")
    (tmp / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    (tmp / "y" / "classes.txt").write_text("cat\ndog\n", encoding="utf-8")
    path = tmp / "y" / "labels" / "a.txt"
    return dense_fit(tmp / "y"), [str(path), "line 2", "class 2", "0..1 (cat, dog)"]
# -- hostile audio files ---------------------------------------------------------------------------------------

def audio_fit(data, *extra):
    """``fit`` of the MFCC + logistic-regression baseline on an audio folder: the cheapest audio run."""
    return ["fit", "--backbone", "mfcc", "--strategy", "scratch", "--data", data, *extra]


def _audio_folder(tmp, seconds: float = 0.2, rate: int = 8000):
    """``tmp/clips/{a,b}/i.wav``: three short tones per class; returns the folder."""
    import numpy as np
    import soundfile as sf

    root = tmp / "clips"
    for k, label in enumerate(("a", "b")):
        (root / label).mkdir(parents=True)
        for i in range(3):
            t = np.arange(int(seconds * rate)) / rate
            sf.write(str(root / label / f"{i}.wav"), 0.3 * np.sin(2 * np.pi * (300 + 900 * k + 50 * i) * t), rate)
    return root


def _audio_with_bad_file(tmp, content: bytes):
    pytest.importorskip("soundfile")
    root = _audio_folder(tmp)
    (root / "a" / "bad.wav").write_bytes(content)
    return audio_fit(root), ["Cannot read audio", str(root / "a" / "bad.wav")]


@case
def empty_wav_file(tmp):
    return _audio_with_bad_file(tmp, b"")


@case
def text_file_named_wav(tmp):
    argv, parts = _audio_with_bad_file(tmp, b"this is not a sound\n")
    return argv, [*parts, "not a readable audio file", "WAV, FLAC, OGG, MP3"]


@case
def truncated_wav_header(tmp):
    good = (_audio_folder(tmp / "src") / "a" / "0.wav").read_bytes()
    return _audio_with_bad_file(tmp, good[:30])


@case
def wav_with_a_sample_rate_of_zero(tmp):
    import struct

    good = bytearray((_audio_folder(tmp / "src") / "a" / "0.wav").read_bytes())
    good[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    return _audio_with_bad_file(tmp, bytes(good))


@case
def audio_clip_longer_than_the_window(tmp):
    import numpy as np
    import soundfile as sf

    root = _audio_folder(tmp)
    long = root / "b" / "long.wav"
    sf.write(str(long), np.zeros(8000 * 31, dtype=np.float32), 8000)
    return audio_fit(root), [str(long), "31.00 s, longer than the model's window of 30 s", "max_seconds"]


@case
def audio_table_with_a_missing_clip(tmp):
    root = _audio_folder(tmp)
    rows = "".join(f"clips/{c}/{i}.wav,{c}\n" for c in "ab" for i in range(3)) + "clips/a/gone.wav,a\n"
    path = csv_file(tmp, rows, name="clips.csv", header="path,label\n")
    return audio_fit(path), [str(path), "line 8", "audio file not found", str(root / "a" / "gone.wav")]


@case
def transcript_table_with_an_empty_transcript(tmp):
    _audio_folder(tmp)
    rows = '"clips/a/0.wav","yes"\n"clips/a/1.wav",""\n'
    path = csv_file(tmp, rows, name="asr.csv", header="audio,transcript\n")
    return ["fit", "--backbone", "whisper:tiny.en", "--strategy", "finetune", "--data", path], [
        str(path), "line 3", "transcript in column 'transcript' is empty"]


# -- malformed -o values and recipes ---------------------------------------------------------------------------

@case
def option_of_the_wrong_type(tmp):
    return image_fit(write_images(tmp / "imgs"), "-o", "train_last=abc"), ["'train_last'", "FinetuneConfig",
                                                                            "an int", "'abc'"]


@case
def option_bool_of_the_wrong_type(tmp):
    return image_fit(write_images(tmp / "imgs"), "-o", "recalibrate_bn=maybe"), ["'recalibrate_bn'", "a bool",
                                                                                  "'maybe'"]


@case
def option_list_not_closed(tmp):
    return image_fit(write_images(tmp / "imgs"), "-o", "freeze=[blocks.0*"), ["'freeze=[blocks.0*'",
                                                                               "not valid YAML", "[a, b]"]


@case
def option_without_equals(tmp):
    return image_fit(write_images(tmp / "imgs"), "-o", "train_last"), ["'train_last'", "KEY=VALUE"]


@case
def option_unknown(tmp):
    return image_fit(write_images(tmp / "imgs"), "-o", "trian_last=1"), ["'trian_last'", "Valid options",
                                                                          "train_last"]


@case
def recipe_unknown_key(tmp):
    path = recipe(tmp, "backbone: tfidf\ndata: {data}\nepochz: 2\n")
    return ["fit", "--config", path], [str(path), "unknown key 'epochz'", "epochs"]


@case
def recipe_not_yaml(tmp):
    path = recipe(tmp, "backbone: tfidf\ndata: [unclosed\n")
    return ["fit", "--config", path], [str(path), "not valid YAML", "line"]


@case
def recipe_is_a_list(tmp):
    path = recipe(tmp, "- backbone: tfidf\n- data: x\n")
    return ["fit", "--config", path], [str(path), "must be a mapping", "list"]


@case
def recipe_option_of_the_wrong_type(tmp):
    path = recipe(tmp, "backbone: small-cnn:8\nstrategy: finetune\ndata: {data}\noptions:\n  train_last: abc\n",
                  data=write_images(tmp / "imgs"))
    return ["fit", "--config", path], ["'train_last'", "'abc'"]


@case
def recipe_flag_of_the_wrong_type(tmp):
    path = recipe(tmp, "backbone: tfidf\ndata: {data}\nepochs: many\n")
    return ["fit", "--config", path], [str(path), "key 'epochs'", "many"]


@case
def recipe_not_utf8(tmp):
    path = tmp / "recipe.yaml"
    path.write_bytes(b"backbone: tfidf\ndata: caf\xe9\n")
    return ["fit", "--config", path], [str(path), "not valid UTF-8"]


@case
def image_size_that_would_exhaust_memory(tmp):
    argv = ["fit", "--backbone", "small-cnn", "--strategy", "finetune", "--data", write_images(tmp / "imgs"),
            "--image-size", "100000"]
    return argv, ["'image_size'", "[1, 4096]", "100000"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_input_is_one_line_and_writes_nothing(name, cli, log_dir, tmp_path):
    argv, parts = CASES[name](tmp_path)
    out = tmp_path / "out"
    r = cli(*argv, "--out", out)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in: {lines[0]}"
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not log_dir.exists() or not any(log_dir.iterdir())


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30
