"""Export a bundle for deployment: ONNX (run by onnxruntime) or TorchScript.

``export_bundle(bundle, out)`` writes::

    out/model.onnx         preprocessed input -> logits; dynamic batch (and sequence) axes
    out/model.int8.onnx    quantize=True: onnxruntime's dynamic int8 quantisation
    out/model.pt           format="torchscript" instead of model.onnx
    out/preprocess.json    how raw items become the model's input (size, mean/std, layout; tokenizer)
    out/tokenizer/         text: the tokenizer files; the tokenizer stays outside the graph
    out/labels.json        task, label names, and what turns logits into outputs
    out/manifest.json      the bundle's manifest, copied
    out/export.json        format, exporter, opset, inputs and outputs, file sizes, parity with PyTorch

ONNX goes through ``torch.onnx.export(dynamo=True)``, built on ``torch.export``:
PyTorch's default and maintained exporter since 2.9. Its batch and sequence
axes are symbolic, so a model that would only work at the example's shape
fails at export instead of exporting a graph that is silently wrong at other
shapes. Opsets below 18, which it cannot write, and models that
``torch.export`` cannot capture go through the TorchScript-based exporter
(``dynamo=False``), and ``export.json`` says which one ran.

Every export is compared with the PyTorch model before it is moved into place
(:func:`check_parity`); like :func:`~transferkit.export.bundle.save_bundle`, it
is written to a temporary sibling directory and renamed as the last step, so a
failure leaves nothing behind. onnx, onnxruntime and onnxscript (the
``export`` extra) are imported inside the functions that use them.

Example:
    >>> export_bundle("runs/fmnist", "deploy/fmnist", quantize=True)   # doctest: +SKIP
    >>> OnnxPredictor("deploy/fmnist").predict(["shoe.png"])         # doctest: +SKIP
    ['Sneaker']
"""
from __future__ import annotations

import importlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import Backbone, ImagePreprocess, Preprocess, TextPreprocess
from transferkit.errors import BundleError, ConfigError, TransferkitError, check_range
from transferkit.export.bundle import (
    MANIFEST,
    _json_default,
    _replace_dir,
    outputs_to_predictions,
    check_writable,
    read_manifest,
    rebuild_model,
)
from transferkit.strategies.base import TransferModel

#: Format -> model file name.
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
QUANTIZED = "model.int8.onnx"
PREPROCESS, LABELS, EXPORT = "preprocess.json", "labels.json", "export.json"
TOKENIZER_DIR = "tokenizer"
PARITY_TOLERANCE = 1e-4
PARITY_INPUTS = 4
IMAGE_INPUT = "pixel_values"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "logits"
MIN_OPSET, DYNAMO_MIN_OPSET, TORCHSCRIPT_MAX_OPSET = 13, 18, 20
#: Above this many bytes of weights the ONNX file keeps them in ``model.onnx.data`` (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000
EXPORTABLE = ("image backbones (efficientnet-lite:, timm:, torchvision:, small-cnn:) and transformer text "
              "encoders (hf:, sentence:), also as file: checkpoints and SPEC@LAYER")
POSTPROCESS = {"classification": "softmax", "multilabel": "sigmoid", "regression": "identity"}
#: Parity inputs for text models: lengths from a few tokens to past the usual max_length.
SAMPLE_TEXTS = ("ok", "transfer learning adapts a pre-trained model to a small labelled data set",
                "a short one", "Émile's café: 3 × 4 = 12, naïve résumé ✓",
                "the quick brown fox jumps over the lazy dog " * 40, "numbers 0 1 2 3 4 5 6 7 8 9 and symbols #@!")


class ExportError(TransferkitError, RuntimeError):
    """The exporter failed, or the exported model does not compute what the PyTorch model computes."""


def export_bundle(bundle: str | Path, out: str | Path, *, format: str = "onnx", quantize: bool = False,
                  overwrite: bool = False, opset: int | None = None) -> Path:
    """Export the model of ``bundle`` into the directory ``out``, atomically.

    Args:
        bundle: a bundle directory written by ``fit`` / :func:`~transferkit.export.bundle.save_bundle`.
        out: the directory to write; refused if it exists, unless ``overwrite``.
        format: ``"onnx"`` or ``"torchscript"``.
        quantize: ONNX only: also write ``model.int8.onnx`` (dynamic int8 weights).
        overwrite: replace an existing ``out``.
        opset: ONNX opset (default: the exporter's own); below 18 uses the TorchScript-based exporter.

    Returns:
        ``out``.

    Raises:
        BundleError: ``bundle`` is not a complete bundle, or ``out`` exists without ``overwrite``.
        ConfigError: a bad option, or a backbone that cannot be exported (TF-IDF).
        ExportError: the exporter failed, or the parity check found a difference above 1e-4.
    """
    _check_options(format, quantize, opset)
    if format == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            _require(module)
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    check_exportable(manifest)
    out = check_writable(out, overwrite)
    if bundle.resolve() == out.resolve() or out.resolve() in bundle.resolve().parents:
        raise ConfigError(f"The export directory {out} would replace the bundle {bundle}; choose another --out.")
    model = rebuild_model(bundle, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    tmp.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide a deployed model from its server
    try:
        _write_export(model, manifest, bundle, tmp, format, quantize, opset)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_options(format: str, quantize: bool, opset: int | None) -> None:
    if format not in FORMATS:
        raise ConfigError(f"The 'format' parameter of export_bundle must be one of {', '.join(FORMATS)}. "
                          f"Got {format!r} instead.")
    if quantize and format != "onnx":
        raise ConfigError("quantize=True (--quantize) applies to ONNX exports only: use format='onnx'.")
    if opset is None:
        return
    if format != "onnx":
        raise ConfigError(f"opset (--opset) applies to ONNX exports only; format is {format!r}.")
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise ConfigError(f"The 'opset' parameter of export_bundle must be an int. Got {opset!r} instead.")
    from torch.onnx._constants import ONNX_MAX_OPSET

    check_range("export_bundle", "opset", opset, low=MIN_OPSET, high=ONNX_MAX_OPSET, kind="an int")


def check_exportable(manifest: dict) -> None:
    """Refuse, before rebuilding anything, a bundle whose preprocessing cannot run beside a graph.

    Raises:
        ConfigError: names the backbone and what can be exported.
    """
    kind = manifest.get("preprocess", {}).get("kind")
    spec = manifest.get("backbone", {}).get("spec", "?")
    if kind in ("image", "text"):
        return
    why = ("it is scikit-learn's TF-IDF on sparse term counts, which has no ONNX or TorchScript graph"
           if kind == "tfidf" else f"its preprocessing '{kind}' has no exporter")
    raise ConfigError(f"Backbone '{spec}' cannot be exported: {why}. Exportable: {EXPORTABLE}.")


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs the '{module}' package: pip install 'transferkit[export]'.") from None


# ---------------------------------------------------------------- writing


def _write_export(model: TransferModel, manifest: dict, bundle: Path, tmp: Path, format: str, quantize: bool,
                  opset: int | None) -> None:
    example = example_inputs(model.backbone.preprocess)
    _write_sidecars(model, manifest, tmp, list(example))
    path = tmp / FORMATS[format]
    _drop_source_heads(model)
    graph = (_ImageGraph(model) if list(example) == [IMAGE_INPUT] else _TextGraph(model)).eval()
    if format == "onnx":
        exporter = _export_onnx(graph, example, path, opset, _weight_bytes(model), manifest["backbone"]["spec"])
        opset = _read_opset(path)
    else:
        exporter = _export_torchscript(graph, example, path)
    info = _export_info(model, manifest, bundle, format, exporter, opset, example)
    _write_json(tmp / EXPORT, info)  # check_parity reads it

    diff = check_parity(tmp, model)
    info["parity"] = {"max_abs_diff": diff, "tolerance": PARITY_TOLERANCE, "inputs": PARITY_INPUTS,
                      "batch_sizes": [PARITY_INPUTS, 1]}
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise ExportError(
            f"The {format} export of {info['backbone']} does not reproduce the PyTorch model: its logits differ "
            f"by up to {diff:.3g} (tolerance {PARITY_TOLERANCE:.0e}) on {PARITY_INPUTS} deterministic inputs at "
            f"batch sizes {PARITY_INPUTS} and 1. The exporter ({exporter}) mistranslated an operation or fixed a "
            "shape; nothing was written. Try the other format or another --opset.")
    if quantize:
        _quantize(path, tmp / QUANTIZED, external=(tmp / f"{path.name}.data").exists())
        info["quantized"] = True
        info["quantization"] = {"file": QUANTIZED, "method": "onnxruntime.quantization.quantize_dynamic",
                                "weight_type": "int8", "operators": list(QUANTIZED_OPS),
                                "max_abs_diff": check_parity(tmp, model, file=QUANTIZED),
                                "note": "int8 parity is reported, not enforced"}
    files = sorted((f for f in tmp.iterdir() if f.name.startswith("model")), key=lambda f: (f != path, f.name))
    info["sizes"] = {f.name: f.stat().st_size for f in files}
    _write_json(tmp / EXPORT, info)


def _write_sidecars(model: TransferModel, manifest: dict, tmp: Path, names: list[str]) -> None:
    """``preprocess.json`` (and ``tokenizer/``), ``labels.json`` and the manifest's copy."""
    preprocess = model.backbone.preprocess
    _write_json(tmp / PREPROCESS, _preprocess_config(preprocess, names))
    if isinstance(preprocess, TextPreprocess):
        preprocess.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    _write_json(tmp / LABELS, {"task": model.task, "label_names": model.label_names, "outputs": OUTPUT,
                               "postprocess": POSTPROCESS[model.task]})
    _write_json(tmp / MANIFEST, manifest)


class _ImageGraph(nn.Module):
    """What is exported for images: ``pixel_values [batch, 3, H, W]`` -> logits (softmax stays outside)."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


class _TextGraph(nn.Module):
    """What is exported for text: token ids, attention mask and (when the tokenizer makes them) token types -> logits.

    The tokenizer stays outside the graph.
    """

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return self.model(batch)


def example_inputs(preprocess: Preprocess) -> dict[str, torch.Tensor]:
    """A batch of two preprocessed items to export with, keyed by input name, in graph order."""
    if isinstance(preprocess, ImagePreprocess):
        return {IMAGE_INPUT: preprocess(sample_items(preprocess, 2))}
    if isinstance(preprocess, TextPreprocess):
        batch = preprocess(["an example sentence to export", "a second, longer example sentence for the graph"])
        missing = [n for n in TEXT_INPUTS[:2] if n not in batch]
        if missing:
            raise ConfigError(f"The tokenizer {type(preprocess.tokenizer).__name__} makes no {missing[0]}; "
                              f"an exported text model takes {', '.join(TEXT_INPUTS[:2])}.")
        return {n: batch[n] for n in TEXT_INPUTS if n in batch}
    raise ConfigError(f"Preprocessing '{preprocess.kind}' cannot be exported. Exportable: {EXPORTABLE}.")


def sample_items(preprocess: Preprocess, n: int) -> list:
    """``n`` deterministic raw items: random RGB uint8 images at the input size, or texts of varied length."""
    if isinstance(preprocess, ImagePreprocess):
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (preprocess.size, preprocess.size, 3), dtype=np.uint8) for _ in range(n)]
    return [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(n)]


def _export_onnx(graph: nn.Module, example: dict, path: Path, opset: int | None, weight_bytes: int,
                 spec: str) -> str:
    """Export with torch.export (opset >= 18), else the TorchScript-based exporter; return which ran."""
    names, args = list(example), tuple(example.values())
    axes = {n: {0: "batch"} if n == IMAGE_INPUT else {0: "batch", 1: "sequence"} for n in names}
    common = {"input_names": names, "output_names": [OUTPUT], "opset_version": opset, "verbose": False}
    reason = f"opset {opset} < {DYNAMO_MIN_OPSET}"
    if opset is None or opset >= DYNAMO_MIN_OPSET:
        try:
            with warnings.catch_warnings():  # "axis name batch will not be used": names do end up in the graph
                warnings.filterwarnings("ignore", message=r"# The axis name")
                torch.onnx.export(graph, args, str(path), dynamo=True, dynamic_shapes=axes,
                                  external_data=weight_bytes > EXTERNAL_DATA_BYTES, **common)
            return "torch.onnx.export(dynamo=True)"
        except Exception as exc:  # torch.export raises many types for code it cannot capture
            if opset is not None and opset > TORCHSCRIPT_MAX_OPSET:
                raise ExportError(f"torch.export could not capture {spec}: {exc}. The TorchScript-based exporter "
                                  f"writes opsets up to {TORCHSCRIPT_MAX_OPSET} only; pass --opset "
                                  f"{TORCHSCRIPT_MAX_OPSET} or lower to use it.") from exc
            reason = f"torch.export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            warnings.warn(f"{spec}: {reason}; falling back to the TorchScript-based ONNX exporter.", stacklevel=3)
            for leftover in path.parent.glob(f"{path.name}*"):
                leftover.unlink()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the parity check runs other shapes
            torch.onnx.export(graph, args, str(path), dynamo=False, dynamic_axes={**axes, OUTPUT: {0: "batch"}},
                              **common)
    except Exception as exc:
        raise ExportError(f"Neither ONNX exporter could export {spec} ({reason}; TorchScript-based: "
                          f"{type(exc).__name__}: {exc}).") from exc
    return f"torch.onnx.export(dynamo=False) ({reason})"


def _export_torchscript(graph: nn.Module, example: dict, path: Path) -> str:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*deprecated")  # torch.jit is
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the parity check runs other shapes
        traced = torch.jit.trace(graph, tuple(example.values()), check_trace=False)
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


#: Operators dynamic int8 quantisation touches. Convolutions stay float: quantising them dynamically
#: (ONNX Runtime's default) took fine-tuned EfficientNet-Lite0 from 70.7% to 12.2% accuracy on 1,000
#: Fashion-MNIST test images, while MatMul/Gemm only kept 99.8% of its predictions
#: (benchmarks/export_int8.py). ONNX Runtime recommends dynamic quantisation for transformers and
#: static (calibrated) quantisation for CNNs, which transferkit does not do yet.
QUANTIZED_OPS = ("MatMul", "Gemm")


def _quantize(src: Path, dst: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _drop_log_records("Please consider to run pre-processing"):  # advice for static quantisation
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external,
                         op_types_to_quantize=list(QUANTIZED_OPS))


@contextmanager
def _drop_log_records(prefix: str):
    """Drop records of the root logger (where onnxruntime.quantization logs) that start with ``prefix``."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _drop_source_heads(model: nn.Module) -> None:
    """Leave the source task's classifier (EfficientNet-Lite's ImageNet head) out: forward never runs it."""
    for module in model.modules():
        if isinstance(module, Backbone) and module.source_head is not None:
            module.source_head = None


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _read_opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _preprocess_config(preprocess: Preprocess, names: list[str]) -> dict:
    if isinstance(preprocess, ImagePreprocess):
        s = preprocess.size
        return {"kind": "image", "inputs": names, "input_shape": ["batch", 3, s, s], "dtype": "float32",
                "size": s, "resize": f"{preprocess.interpolation} resize to {s}x{s} (aspect ratio not kept, no crop)",
                "interpolation": preprocess.interpolation, "channel_order": "RGB", "layout": "NCHW",
                "value_range": [0.0, 1.0], "mean": preprocess.mean, "std": preprocess.std,
                "normalize": "x = (pixel / 255 - mean[c]) / std[c]; grey images are replicated to 3 channels"}
    return {"kind": "text", "inputs": names, "input_shape": ["batch", "sequence"], "dtype": "int64",
            "tokenizer": TOKENIZER_DIR, "tokenizer_class": type(preprocess.tokenizer).__name__,
            "max_length": preprocess.max_length, "padding": "longest", "truncation": True}


def _export_info(model: TransferModel, manifest: dict, bundle: Path, format: str, exporter: str,
                 opset: int | None, example: dict) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    inputs = [{"name": n, "shape": ["batch", *t.shape[1:]] if n == IMAGE_INPUT else ["batch", "sequence"],
               "dtype": str(t.dtype).removeprefix("torch.")} for n, t in example.items()]
    versions = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "timm"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return {"format": format, "file": FORMATS[format], "exporter": exporter, "opset": opset, "inputs": inputs,
            "outputs": [{"name": OUTPUT, "shape": ["batch", model.head[-1].out_features], "dtype": "float32",
                         "meaning": f"logits; outputs = {POSTPROCESS[model.task]}(logits) "
                                    f"({model.task}, see labels.json)"}],
            "quantized": False, "backbone": manifest["backbone"]["spec"], "task": model.task,
            "bundle": str(bundle.resolve()), "versions": versions}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------- reading and checking


def read_export(path: str | Path) -> dict:
    """``export.json`` of an export directory.

    Raises:
        BundleError: not a directory, or not a complete export.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"No export at {path}: not a directory.")
    missing = [f for f in (EXPORT, PREPROCESS, LABELS, MANIFEST) if not (path / f).is_file()]
    if missing:
        raise BundleError(f"{path} is not a complete transferkit export: {', '.join(missing)} missing "
                          "(write one with `transferkit export BUNDLE --out DIR`).")
    info = _read_json(path / EXPORT)
    if not (path / info.get("file", "")).is_file():
        raise BundleError(f"{path} is not a complete transferkit export: model file {info.get('file')!r} missing.")
    return info


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"Cannot read {path}: {exc}") from None


def load_preprocess(export_dir: str | Path) -> Preprocess:
    """The library's own preprocessing, rebuilt from ``preprocess.json`` (and ``tokenizer/``), offline."""
    export_dir = Path(export_dir)
    cfg = _read_json(export_dir / PREPROCESS)
    if cfg.get("kind") == "image":
        return ImagePreprocess(cfg["size"], cfg["mean"], cfg["std"], cfg.get("interpolation", "bilinear"))
    if cfg.get("kind") == "text":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(export_dir / cfg.get("tokenizer", TOKENIZER_DIR)),
                                                  trust_remote_code=False)
        return TextPreprocess(tokenizer, cfg["max_length"])
    raise BundleError(f"{export_dir / PREPROCESS}: unknown preprocessing kind {cfg.get('kind')!r}; "
                      "expected 'image' or 'text'.")


def check_parity(export_dir: str | Path, model: TransferModel | None = None, n: int = PARITY_INPUTS, *,
                 file: str | None = None) -> float:
    """Max abs difference between the exported model's logits and the PyTorch model's.

    The ``n`` inputs are deterministic raw items (random images at the input
    size, texts of different lengths) through the export's own preprocessing,
    run as one batch of ``n`` and as a batch of 1, so a batch size or sequence
    length fixed into the graph shows up as a difference.

    Args:
        export_dir: a directory written by :func:`export_bundle`.
        model: the PyTorch model; default: rebuilt from the bundle named in ``export.json``.
        n: number of inputs.
        file: the model file to check (default the export's own; ``"model.int8.onnx"``).

    Returns:
        The max abs difference over all logits.
    """
    export_dir = Path(export_dir)
    info = read_export(export_dir)
    if model is None:
        if not Path(info["bundle"]).is_dir():
            raise BundleError(f"check_parity compares with the PyTorch model of the bundle {info['bundle']}, which "
                              "is gone; pass model= (transferkit.export.bundle.rebuild_model(BUNDLE)).")
        model = rebuild_model(info["bundle"])
    run = _runner(export_dir / (file or info["file"]), info)
    names = [i["name"] for i in info["inputs"]]
    preprocess = load_preprocess(export_dir)
    items = sample_items(preprocess, n)
    device = next(model.parameters()).device
    was_training, diff = model.training, 0.0
    model.eval()
    try:
        for batch in (items, items[:1]):
            inputs = preprocess(batch)
            with torch.no_grad():
                on_device = ({k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict)
                             else inputs.to(device))
                expected = model(on_device).float().cpu().numpy()
            diff = max(diff, float(np.abs(run(_feed(inputs, names)) - expected).max()))
    finally:
        model.train(was_training)
    return diff


def _runner(path: Path, info: dict) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A function from named numpy inputs to logits, for an ONNX file or a TorchScript module."""
    if info["format"] == "onnx":
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return lambda feed: session.run([OUTPUT], feed)[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*deprecated")
        module = torch.jit.load(str(path), map_location="cpu")
    names = [i["name"] for i in info["inputs"]]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(feed[n]) for n in names)).numpy()

    return run


def _feed(inputs: torch.Tensor | dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Preprocessed inputs as the graph's named numpy inputs."""
    if isinstance(inputs, torch.Tensor):
        return {names[0]: inputs.detach().cpu().numpy().astype(np.float32, copy=False)}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise BundleError(f"The tokenizer made no {', '.join(missing)}, which the exported model takes.")
    return {n: inputs[n].detach().cpu().numpy().astype(np.int64, copy=False) for n in names}


def logits_to_outputs(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax (classification), sigmoid (multi-label) or the values [N] (regression), as ``TransferModel`` does."""
    logits = logits.astype(np.float32, copy=False)
    if task == "classification":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits[..., 0]


class OnnxPredictor:
    """An ONNX export run by onnxruntime, with the interface of :class:`~transferkit.export.bundle.Predictor`.

    Raw items go through the library's own preprocessing rebuilt from
    ``preprocess.json`` (and the saved tokenizer), so outputs match the bundle's
    PyTorch predictor.

    Args:
        export_dir: a directory written by :func:`export_bundle` with ``format="onnx"``.
        quantized: run ``model.int8.onnx`` instead of ``model.onnx``.
        providers: onnxruntime execution providers (default: CPU).
        session_options: an ``onnxruntime.SessionOptions``.

    Attributes:
        manifest: the bundle's manifest.
        label_names: class names, or ``None``.
        task: ``"classification"``, ``"multilabel"`` or ``"regression"``.

    Example:
        >>> p = OnnxPredictor("deploy/fmnist")          # doctest: +SKIP
        >>> p.predict(["shoe.png"])                     # doctest: +SKIP
        ['Sneaker']
    """

    def __init__(self, export_dir: str | Path, *, quantized: bool = False, providers: Sequence[str] | None = None,
                 session_options: Any = None):
        ort = _require("onnxruntime")
        self.path = Path(export_dir)
        self.export = read_export(self.path)
        if self.export.get("format") != "onnx":
            raise ConfigError(f"{self.path} holds a {self.export.get('format')} export; OnnxPredictor runs "
                              "ONNX exports (transferkit export BUNDLE --format onnx).")
        file = self.path / (QUANTIZED if quantized else self.export["file"])
        if not file.is_file():
            hint = "; export with quantize=True (--quantize)" if quantized else ""
            raise BundleError(f"{file} is missing{hint}.")
        self.manifest = _read_json(self.path / MANIFEST)
        labels = _read_json(self.path / LABELS)
        self.label_names, self.task = labels.get("label_names"), labels["task"]
        self.preprocess = load_preprocess(self.path)
        self.session = ort.InferenceSession(str(file), sess_options=session_options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def outputs(self, items: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] (classification, multi-label) or values [N] (regression)."""
        items = items if isinstance(items, np.ndarray) else list(items)
        outs = []
        for i in range(0, len(items), batch_size):
            feed = _feed(self.preprocess(items[i:i + batch_size]), self.input_names)
            outs.append(logits_to_outputs(self.session.run([OUTPUT], feed)[0], self.task))
        if outs:
            return np.concatenate(outs)
        return np.zeros((0, max(1, len(self.label_names or []))), dtype=np.float32)

    predict_proba = outputs

    def predict(self, items: Sequence, batch_size: int = 64) -> list:
        """Label names (classification), lists of label names (multi-label) or floats (regression)."""
        return outputs_to_predictions(self.outputs(items, batch_size), self.task, self.label_names)


def quantization_accuracy(export_dir: str | Path, data, *, max_items: int | None = 1000, **data_options) -> dict:
    """The int8 model's metric change on labelled data, next to the float model's, and their agreement.

    Args:
        export_dir: an ONNX export written with ``quantize=True``.
        data: labelled evaluation data (a built-in name uses its test split; any form ``fit`` takes).
        max_items: evaluate on a fixed stratified subset of at most this many items.
        **data_options: column options of :func:`transferkit.data.resolve_data`.

    Returns:
        ``metric``, ``float``, ``int8``, ``change`` (int8 minus float), ``agreement``
        (fraction of items with the same predicted label, classification) and ``n``.

    Raises:
        ConfigError: the export has no int8 model.
        DataError: the data has no labels or labels the model never saw.
    """
    from transferkit.data import align_to_label_names, resolve_data, subsample
    from transferkit.errors import DataError
    from transferkit.evaluation import PRIMARY_METRIC, compute_metrics

    path = Path(export_dir)
    if not (path / QUANTIZED).is_file():
        raise ConfigError(f"{path} has no {QUANTIZED}: export with quantize=True (--quantize) first.")
    fp32, int8 = OnnxPredictor(path), OnnxPredictor(path, quantized=True)
    train, test = resolve_data(data, **data_options)
    target = test if test is not None else train
    if target.targets is None:
        raise DataError(f"'{target.name}' has no labels to evaluate the int8 model against.")
    if max_items is not None and len(target) > max_items:
        target = subsample(target, max_items, 0)
    names = fp32.label_names
    target = align_to_label_names(target, names, "the exported model")
    out_a, out_b = fp32.outputs(target.items), int8.outputs(target.items)
    metric = PRIMARY_METRIC[fp32.task]
    a = compute_metrics(fp32.task, target.targets, out_a, names)[metric]
    b = compute_metrics(fp32.task, target.targets, out_b, names)[metric]
    agreement = float((out_a.argmax(1) == out_b.argmax(1)).mean()) if fp32.task == "classification" else None
    return {"metric": metric, "float": float(a), "int8": float(b), "change": float(b - a), "agreement": agreement,
            "n": len(target)}
