"""Export to ONNX and TorchScript: parity with PyTorch per backbone family, dynamic shapes, the ONNX predictor."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import shapes_images, tiny_texts  # noqa: E402
from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.cli import export as export_cli  # noqa: E402
from transferkit.cli.errors import ErrorHandlingGroup  # noqa: E402
from transferkit.data import from_arrays  # noqa: E402
from transferkit.errors import BundleError, ConfigError  # noqa: E402
from transferkit.export import onnx_export  # noqa: E402
from transferkit.export.bundle import load, read_manifest, rebuild_model, save_bundle  # noqa: E402
from transferkit.export.onnx_export import ExportError, OnnxPredictor, check_parity, export_bundle  # noqa: E402
from transferkit.strategies import make_strategy  # noqa: E402
from transferkit.strategies.base import TransferModel, linear_head  # noqa: E402
from transferkit.training import TrainConfig, Trainer  # noqa: E402

SHAPES = ["square", "bar", "noise"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models are tiny: one thread is as fast and leaves the machine's other core alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int, size: int = 32, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# ---------------------------------------------------------------- bundles, one per backbone family


@pytest.fixture(scope="module")
def lite0_bundle(tmp_path_factory):
    """The packaged EfficientNet-Lite0 (ImageNet weights) fine-tuned for one epoch at 32 px."""
    X, y = shapes_images(n_per_class=4, size=32)
    data = from_arrays(X, y, label_names=SHAPES)
    model, _ = make_strategy("finetune").fit(load_backbone("efficientnet-lite:0", image_size=32), data, None,
                                            Trainer(TrainConfig(epochs=1, batch_size=12, progress=False)))
    return save_bundle(model, tmp_path_factory.mktemp("lite0") / "bundle", {"strategy": {"name": "finetune"}})


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory):
    """A randomly initialised ViT-Tiny built at 32 px, with a multi-label head."""
    torch.manual_seed(0)
    backbone = load_backbone("timm:vit_tiny_patch16_224", pretrained=False, image_size=32)
    model = TransferModel(backbone, linear_head(backbone.num_features, 3), "multilabel", SHAPES)
    return save_bundle(model, tmp_path_factory.mktemp("vit") / "bundle", {})


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory, tiny_bert):
    torch.manual_seed(0)
    backbone = load_backbone(f"hf:{tiny_bert}", max_length=64)
    model = TransferModel(backbone, linear_head(backbone.num_features, 2), "classification", ["games", "sound"])
    return save_bundle(model, tmp_path_factory.mktemp("bert") / "bundle", {})


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    """A small CNN regression bundle: quick to export, and the regression output path."""
    torch.manual_seed(0)
    backbone = load_backbone("small-cnn:16")
    model = TransferModel(backbone, linear_head(backbone.num_features, 1), "regression", None)
    return save_bundle(model, tmp_path_factory.mktemp("cnn") / "bundle", {})


@pytest.fixture(scope="module")
def tfidf_bundle(tmp_path_factory):
    texts, labels = tiny_texts(4)
    backbone = load_backbone("tfidf:")
    backbone.fit_vocabulary(texts)
    model = TransferModel(backbone, linear_head(backbone.num_features, 2), "classification", sorted(set(labels)))
    return save_bundle(model, tmp_path_factory.mktemp("tfidf") / "bundle", {})


@pytest.fixture(scope="module")
def lite0_onnx(lite0_bundle):
    return export_bundle(lite0_bundle, lite0_bundle.parent / "onnx", quantize=True)


@pytest.fixture(scope="module")
def vit_onnx(vit_bundle):
    return export_bundle(vit_bundle, vit_bundle.parent / "onnx")


@pytest.fixture(scope="module")
def bert_onnx(bert_bundle):
    return export_bundle(bert_bundle, bert_bundle.parent / "onnx")


def _export_json(path) -> dict:
    return json.loads((path / "export.json").read_text(encoding="utf-8"))


def _max_diff(session, model, inputs) -> float:
    feed = {i.name: (inputs[i.name] if isinstance(inputs, dict) else inputs).numpy() for i in session.get_inputs()}
    with torch.no_grad():
        expected = model(inputs).numpy()
    got = session.run(["logits"], feed)[0]
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


# ---------------------------------------------------------------- parity per family, dynamic shapes


@pytest.mark.parametrize("family", ["lite0", "vit"])
def test_image_onnx_matches_pytorch_at_batch_sizes_1_and_3(family, request):
    bundle, out = request.getfixturevalue(f"{family}_bundle"), request.getfixturevalue(f"{family}_onnx")
    info = _export_json(out)
    assert info["exporter"] == "torch.onnx.export(dynamo=True)"
    assert info["inputs"] == [{"name": "pixel_values", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert info["parity"]["max_abs_diff"] <= TOLERANCE
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic batch axis
    model = rebuild_model(bundle)
    for n in (1, 3):
        diff = _max_diff(session, model, model.backbone.preprocess(_images(n)))
        print(f"{family} batch {n}: max |diff| {diff:.2e}")
        assert diff <= TOLERANCE, (family, n, diff)


def test_text_onnx_takes_any_batch_and_sequence_length(bert_bundle, bert_onnx):
    info = _export_json(bert_onnx)
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["parity"]["max_abs_diff"] <= TOLERANCE
    session = ort.InferenceSession(str(bert_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    assert all(i.type == "tensor(int64)" and i.shape == ["batch", "sequence"] for i in session.get_inputs())
    model = rebuild_model(bert_bundle)
    lengths = set()
    for texts in (["hi"], ["a puzzle game", "sound server and speakers for music " * 3, "chess"]):
        inputs = model.backbone.preprocess(texts)
        lengths.add(inputs["input_ids"].shape[1])
        diff = _max_diff(session, model, inputs)
        print(f"bert batch {len(texts)} sequence {inputs['input_ids'].shape[1]}: max |diff| {diff:.2e}")
        assert diff <= TOLERANCE
    assert len(lengths) == 2


def test_check_parity_rebuilds_the_model_from_the_bundle(bert_onnx):
    assert check_parity(bert_onnx, n=3) <= TOLERANCE


# ---------------------------------------------------------------- what sits beside the model


def test_export_writes_preprocessing_labels_and_manifest(lite0_bundle, lite0_onnx, bert_bundle, bert_onnx):
    manifest = read_manifest(lite0_bundle)
    pre = json.loads((lite0_onnx / "preprocess.json").read_text())
    for key in ("size", "mean", "std", "interpolation"):
        assert pre[key] == manifest["preprocess"][key], key
    assert pre["size"] == 32 and pre["layout"] == "NCHW" and pre["channel_order"] == "RGB"
    assert pre["value_range"] == [0.0, 1.0]
    labels = json.loads((lite0_onnx / "labels.json").read_text())
    assert labels == {"task": "classification", "label_names": SHAPES, "outputs": "logits", "postprocess": "softmax"}
    assert json.loads((lite0_onnx / "manifest.json").read_text()) == manifest
    assert _export_json(lite0_onnx)["outputs"][0]["name"] == "logits"

    text = json.loads((bert_onnx / "preprocess.json").read_text())
    assert text["kind"] == "text" and text["max_length"] == 64 and text["tokenizer"] == "tokenizer"
    assert (bert_onnx / "tokenizer" / "tokenizer_config.json").is_file()
    assert not (bert_onnx / "model.safetensors").exists()


# ---------------------------------------------------------------- OnnxPredictor == Predictor


def test_onnx_predictor_matches_the_bundle_predictor_on_raw_images(lite0_bundle, lite0_onnx, tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(_images(1, size=40, seed=5)[0]).save(png)
    grey, _ = shapes_images(n_per_class=1, size=24, seed=3)
    items = [str(png), Image.fromarray(_images(1, seed=6)[0]), *grey, *_images(4, size=32, seed=7)]
    expected, onnx = load(lite0_bundle), OnnxPredictor(lite0_onnx)
    assert (onnx.task, onnx.label_names, onnx.manifest) == (expected.task, expected.label_names, expected.manifest)
    np.testing.assert_allclose(onnx.outputs(items, batch_size=4), expected.outputs(items), atol=1e-5)
    assert onnx.predict(items) == expected.predict(items)
    np.testing.assert_allclose(onnx.outputs(grey), expected.outputs(grey), atol=1e-5)  # an [N, H, W] array


def test_onnx_predictor_multilabel_and_text(vit_bundle, vit_onnx, bert_bundle, bert_onnx):
    images = _images(5, size=48)
    np.testing.assert_allclose(OnnxPredictor(vit_onnx).outputs(images), load(vit_bundle).outputs(images), atol=1e-5)
    assert OnnxPredictor(vit_onnx).predict(images) == load(vit_bundle).predict(images)
    texts, _ = tiny_texts(3)
    onnx, expected = OnnxPredictor(bert_onnx), load(bert_bundle)
    np.testing.assert_allclose(onnx.outputs(texts, batch_size=4), expected.outputs(texts), atol=1e-5)
    assert onnx.predict(texts) == expected.predict(texts)
    assert onnx.outputs([]).shape == (0, 2)


# ---------------------------------------------------------------- TorchScript, quantisation


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", ["lite0", "bert"])
def test_torchscript_round_trip(family, request, tmp_path):
    bundle = request.getfixturevalue(f"{family}_bundle")
    out = export_bundle(bundle, tmp_path / "ts", format="torchscript")
    info = _export_json(out)
    assert info["format"] == "torchscript" and info["parity"]["max_abs_diff"] <= TOLERANCE
    module = torch.jit.load(str(out / "model.pt"))
    model = rebuild_model(bundle)
    names = [i["name"] for i in info["inputs"]]
    for batch in ([0], [0, 1, 2]):
        if family == "lite0":
            inputs = model.backbone.preprocess(_images(len(batch)))
            args = (inputs,)
        else:
            inputs = model.backbone.preprocess([tiny_texts(2)[0][i] * (i + 1) for i in batch])
            args = tuple(inputs[n] for n in names)
        with torch.no_grad():
            diff = (module(*args) - model(inputs)).abs().max().item()
        assert diff <= TOLERANCE, (family, len(batch), diff)


def test_quantize_writes_an_int8_model(lite0_onnx, bert_bundle, tmp_path):
    info = _export_json(lite0_onnx)
    full, int8 = lite0_onnx / "model.onnx", lite0_onnx / "model.int8.onnx"
    assert info["quantized"] is True and int8.is_file() and info["quantization"]["operators"] == ["MatMul", "Gemm"]
    assert info["sizes"] == {"model.int8.onnx": int8.stat().st_size, "model.onnx": full.stat().st_size}
    assert np.isfinite(info["quantization"]["max_abs_diff"])
    probs = OnnxPredictor(lite0_onnx, quantized=True).outputs(_images(3))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # A transformer's MatMul weights shrink 4x (this tiny one is mostly its float embedding table).
    bert = export_bundle(bert_bundle, tmp_path / "bert-int8", quantize=True)
    assert (bert / "model.int8.onnx").stat().st_size < (bert / "model.onnx").stat().st_size


def test_an_old_opset_goes_through_the_torchscript_based_exporter(cnn_bundle, tmp_path):
    info = _export_json(export_bundle(cnn_bundle, tmp_path / "x", opset=17))
    assert info["opset"] == 17 and "dynamo=False" in info["exporter"]
    assert info["parity"]["max_abs_diff"] <= TOLERANCE


def test_a_model_torch_export_cannot_capture_falls_back_to_the_torchscript_based_exporter(cnn_bundle, tmp_path,
                                                                                          monkeypatch):
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("cannot capture this model")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    with pytest.warns(UserWarning, match="torch.export failed: RuntimeError: cannot capture.*falling back"):
        out = export_bundle(cnn_bundle, tmp_path / "x")
    info = _export_json(out)
    assert info["exporter"].startswith("torch.onnx.export(dynamo=False) (torch.export failed")
    assert info["parity"]["max_abs_diff"] <= TOLERANCE


# ---------------------------------------------------------------- bad input


def test_tfidf_bundle_is_refused_naming_what_can_be_exported(tfidf_bundle, tmp_path):
    with pytest.raises(ConfigError, match=r"'tfidf:' cannot be exported.*scikit-learn.*efficientnet-lite:.*hf:"):
        export_bundle(tfidf_bundle, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_existing_out_is_kept_without_overwrite(cnn_bundle, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="overwrite"):
        export_bundle(cnn_bundle, out, format="torchscript")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    export_bundle(cnn_bundle, out, format="torchscript", overwrite=True)
    assert (out / "model.pt").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


@pytest.mark.parametrize("options, error, message", [
    ({"format": "tflite"}, ConfigError, r"'format' .* one of onnx, torchscript\. Got 'tflite'"),
    ({"format": "torchscript", "quantize": True}, ConfigError, "ONNX exports only"),
    ({"opset": 7}, ConfigError, r"'opset' parameter of export_bundle must be an int in \[13, "),
])
def test_bad_options_are_refused(cnn_bundle, tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        export_bundle(cnn_bundle, tmp_path / "x", **options)
    assert list(tmp_path.iterdir()) == []


def test_missing_bundle_is_a_clear_error(tmp_path, lite0_onnx):
    with pytest.raises(BundleError, match=r"No bundle at .*nowhere: not a directory"):
        export_bundle(tmp_path / "nowhere", tmp_path / "x")
    with pytest.raises(BundleError, match="not a complete transferkit export: export.json, preprocess.json"):
        OnnxPredictor(tmp_path)
    moved = shutil.copytree(lite0_onnx, tmp_path / "moved")
    info = json.loads((moved / "export.json").read_text())
    (moved / "export.json").write_text(json.dumps({**info, "bundle": str(tmp_path / "gone")}))
    with pytest.raises(BundleError, match=r"bundle .*gone, which is gone; pass model="):
        check_parity(moved)


def test_out_may_not_replace_the_bundle(cnn_bundle):
    for out in (cnn_bundle, cnn_bundle.parent):
        with pytest.raises(ConfigError, match="would replace the bundle"):
            export_bundle(cnn_bundle, out, overwrite=True)
    assert read_manifest(cnn_bundle)["task"] == "regression"


def test_failed_parity_check_leaves_nothing(cnn_bundle, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(onnx_export, "check_parity", lambda *a, **k: 0.5)
    with pytest.raises(ExportError, match=r"differ by up to 0\.5 \(tolerance 1e-04\).*nothing was written"):
        export_bundle(cnn_bundle, out, format="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_importing_transferkit_does_not_import_onnx():
    code = ("import sys, transferkit, transferkit.export.onnx_export, transferkit.cli.export\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def app():
    app = typer.Typer(cls=ErrorHandlingGroup)  # the real app's error handling

    @app.callback()
    def main() -> None:  # a group, so that `export` is a subcommand as under the real app
        """transferkit"""

    export_cli.register(app)
    return app


def test_cli_exports_quantizes_and_reports(app, cnn_bundle, tmp_path):
    out = tmp_path / "deploy"
    r = CliRunner().invoke(app, ["export", str(cnn_bundle), "--format", "onnx", "--out", str(out), "--quantize"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for expected in (str(out), "model.onnx", "model.int8.onnx", "MB", "parity with PyTorch", "tolerance 1e-04"):
        assert expected in text, expected
    images = _images(5, size=16)
    np.testing.assert_allclose(OnnxPredictor(out).outputs(images), load(cnn_bundle).outputs(images), atol=1e-5)
    assert OnnxPredictor(out).predict(images) == pytest.approx(load(cnn_bundle).predict(images), abs=1e-5)


def test_cli_errors_are_one_line_and_exit_2(app, cnn_bundle, tmp_path):
    r = CliRunner().invoke(app, ["export", str(cnn_bundle), "--format", "tflite", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert "onnx, torchscript" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


def test_quantization_accuracy_on_labelled_data(lite0_onnx, vit_onnx):
    from transferkit.export.onnx_export import quantization_accuracy

    X, y = shapes_images(n_per_class=6, size=32, seed=3)
    q = quantization_accuracy(lite0_onnx, from_arrays(X, y, label_names=SHAPES))
    assert q["metric"] == "accuracy" and q["n"] == 18 and 0.0 <= q["agreement"] <= 1.0
    assert q["change"] == pytest.approx(q["int8"] - q["float"])
    float_acc = (OnnxPredictor(lite0_onnx).outputs(list(X)).argmax(1) == y).mean()
    assert q["float"] == pytest.approx(float_acc)
    with pytest.raises(ConfigError, match="quantize"):
        quantization_accuracy(vit_onnx, from_arrays(X, y, label_names=SHAPES))
