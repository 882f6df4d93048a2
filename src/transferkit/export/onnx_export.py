"""Export a bundle for deployment: ONNX (run by onnxruntime) or TorchScript.

``export_bundle(bundle, out)`` writes::

    out/model.onnx         preprocessed input -> logits (detection: boxes and scores before NMS); dynamic batch
                           (and sequence) axes
    out/model.int8.onnx    quantize=True: onnxruntime's dynamic int8 quantisation
    out/model.pt           format="torchscript" instead of model.onnx
    out/preprocess.json    how raw items become the model's input (size, mean/std, layout; tokenizer; audio features)
    out/tokenizer/         text: the tokenizer files; the tokenizer stays outside the graph
    out/labels.json        task, label names, and what turns the graph's outputs into predictions (detection:
                           the score threshold, top-k and NMS settings, run outside the graph)
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
(:func:`check_parity`; for detection also the boxes, labels and scores after NMS,
:func:`check_prediction_parity`); like :func:`~transferkit.export.bundle.save_bundle`, it
is written under the output's lock to a sibling ``OUT.partial-PID`` folder and
renamed as the last step (:func:`~transferkit.export.output_lock.atomic_dir`),
so a failure leaves nothing behind and a second writer is refused. onnx, onnxruntime and onnxscript (the
``export`` extra) are imported inside the functions that use them.

Audio classifiers export from their features on: the graph takes ``input_features``
``[batch, n_mels, frames]`` and ``frame_mask`` ``[batch, frames]``; decoding, resampling and the
(log-)mel spectrogram stay outside it, in the library's own preprocessing, which
``preprocess.json`` rebuilds (:class:`OnnxPredictor` runs it). The frames axis is symbolic, but
for Whisper, which reads a fixed window.


Reading, running and checking an export (:func:`read_export`,
:func:`check_parity`, :class:`OnnxPredictor`, :func:`quantization_accuracy`)
live in :mod:`transferkit.export.onnx_runtime`, with the directory's file
names; they are re-exported here.

Example:
    >>> export_bundle("runs/fmnist", "deploy/fmnist", quantize=True)   # doctest: +SKIP
    >>> OnnxPredictor("deploy/fmnist").predict(["shoe.png"])         # doctest: +SKIP
    ['Sneaker']
"""
from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from transferkit.backbones.audio import HOP, AudioPreprocess
from transferkit.backbones.base import Backbone, ImagePreprocess, Preprocess, TextPreprocess
from transferkit.errors import ConfigError, TransferkitError, check_range
from transferkit.export.bundle import (
    MANIFEST,
    _json_default,
    atomic_dir,
    library_versions,
    check_writable,
    read_manifest,
    rebuild_model,
)
from transferkit.export.onnx_runtime import (
    AUDIO_INPUTS,
    EXPORT,
    FORMATS,
    IMAGE_INPUT,
    LABELS,
    OUTPUT,
    PARITY_INPUTS,
    PREPROCESS,
    QUANTIZED,
    SAMPLE_TEXTS,
    TEXT_INPUTS,
    TOKENIZER_DIR,
    OnnxPredictor,
    _require,
    check_parity,
    check_prediction_parity,
    load_preprocess,
    logits_to_outputs,
    quantization_accuracy,
    read_export,
    sample_items,
)
from transferkit.strategies.base import TransferModel
from transferkit.tasks import TASKS, get_task

__all__ = [
    "AUDIO_INPUTS", "DYNAMO_MIN_OPSET", "EXPORT", "EXPORTABLE", "EXTERNAL_DATA_BYTES", "FORMATS", "IMAGE_INPUT",
    "LABELS", "MIN_OPSET", "OUTPUT", "PARITY_INPUTS", "PARITY_TOLERANCE", "PREPROCESS", "QUANTIZED", "QUANTIZED_OPS",
    "SAMPLE_TEXTS", "TEXT_INPUTS", "TOKENIZER_DIR", "TORCHSCRIPT_MAX_OPSET", "ExportError", "OnnxPredictor",
    "check_exportable", "check_parity", "check_prediction_parity", "example_inputs", "export_bundle", "input_axes",
    "load_preprocess", "logits_to_outputs", "quantization_accuracy", "read_export", "sample_items",
]

PARITY_TOLERANCE = 1e-4
MIN_OPSET, DYNAMO_MIN_OPSET, TORCHSCRIPT_MAX_OPSET = 13, 18, 20
#: Above this many bytes of weights the ONNX file keeps them in ``model.onnx.data`` (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000
EXPORTABLE = ("image backbones (efficientnet-lite:, timm:, torchvision:, small-cnn:), transformer text "
              "encoders (hf:, sentence:) and audio classifiers (whisper: encoder, resemblyzer:, mfcc:, audio-cnn:), "
              "also as file: checkpoints and SPEC@LAYER")


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
        ExportError: the exporter failed, or the parity check found a difference above 1e-4 (for detection: or
            other boxes, labels or scores after NMS).
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
    with atomic_dir(out, overwrite) as tmp:
        _write_export(model, manifest, bundle, tmp, format, quantize, opset)
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
    task = get_task(manifest["task"]) if manifest.get("task") in TASKS else None
    if task is not None and not task.exportable:
        raise ConfigError(f"{task.name} bundles cannot be exported to ONNX or TorchScript yet: {task.export_note} "
                          f"Serve the bundle itself (transferkit serve), which runs the PyTorch model.")
    refusal = task.export_refusal(manifest.get("head") or {}) if task is not None else None
    if refusal:
        raise ConfigError(f"This {task.name} bundle cannot be exported to ONNX or TorchScript: {refusal} Serve the "
                          f"bundle itself (transferkit serve), which runs the PyTorch model.")
    if kind in ("image", "text", "audio"):
        return
    why = ("it is scikit-learn's TF-IDF on sparse term counts, which has no ONNX or TorchScript graph"
           if kind == "tfidf" else f"its preprocessing '{kind}' has no exporter")
    raise ConfigError(f"Backbone '{spec}' cannot be exported: {why}. Exportable: {EXPORTABLE}.")



# ---------------------------------------------------------------- writing


def _write_export(model: TransferModel, manifest: dict, bundle: Path, tmp: Path, format: str, quantize: bool,
                  opset: int | None) -> None:
    example = example_inputs(model.backbone.preprocess)
    _write_sidecars(model, manifest, tmp, example)
    path = tmp / FORMATS[format]
    _drop_source_heads(model)
    graph = (_ImageGraph(model) if list(example) == [IMAGE_INPUT] else _AudioGraph(model)
             if list(example) == list(AUDIO_INPUTS) else _TextGraph(model)).eval()
    outputs = [o["name"] for o in model.task_spec.export_outputs(model)]
    if format == "onnx":
        exporter = _export_onnx(graph, example, path, opset, _weight_bytes(model), manifest["backbone"]["spec"],
                                outputs)
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
    predictions = check_prediction_parity(tmp, model, tolerance=PARITY_TOLERANCE)
    if predictions is not None:
        info["parity"]["predictions"] = predictions
        if not predictions["equal"]:
            raise ExportError(
                f"The {format} export of {info['backbone']} computes the graph's outputs within {diff:.3g} of PyTorch, "
                f"but its {model.task} predictions after the postprocessing outside the graph differ: "
                f"{predictions['summary']}. "
                "Scores within float error of each other can change which boxes NMS keeps, as in an untrained "
                "detector whose scores are all alike; nothing was written.")
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


def _write_sidecars(model: TransferModel, manifest: dict, tmp: Path, example: dict[str, torch.Tensor]) -> None:
    """``preprocess.json`` (and ``tokenizer/``), ``labels.json`` and the manifest's copy."""
    preprocess = model.backbone.preprocess
    _write_json(tmp / PREPROCESS, _preprocess_config(preprocess, list(example)))
    if isinstance(preprocess, TextPreprocess):
        preprocess.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    task = model.task_spec
    names = [o["name"] for o in task.export_outputs(model)]
    labels = {"task": model.task, "label_names": model.label_names, "outputs": names[0] if len(names) == 1 else names,
              "postprocess": task.export_postprocess()}
    batch = example[IMAGE_INPUT] if list(example) == [IMAGE_INPUT] else dict(example)
    options = task.export_postprocess_options(model, batch)
    if options:
        labels["postprocess_options"] = options
    _write_json(tmp / LABELS, labels)
    _write_json(tmp / MANIFEST, manifest)


class _ImageGraph(nn.Module):
    """What is exported for images: ``pixel_values [batch, 3, H, W]`` -> logits (softmax stays outside), or what
    the task's :meth:`~transferkit.tasks.Task.export_forward` returns (detection: boxes and scores before NMS)."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        return self.model.task_spec.export_forward(self.model(pixel_values))


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
        return self.model.task_spec.export_forward(self.model(batch))


class _AudioGraph(nn.Module):
    """What is exported for audio: (log-)mel frames and their mask -> logits; decoding and features stay outside."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"input_features": input_features, "frame_mask": frame_mask})


def example_inputs(preprocess: Preprocess) -> dict[str, torch.Tensor]:
    """A batch of two preprocessed items to export with, keyed by input name, in graph order."""
    if isinstance(preprocess, ImagePreprocess):
        return {IMAGE_INPUT: preprocess(sample_items(preprocess, 2))}
    if isinstance(preprocess, AudioPreprocess):
        batch = preprocess(sample_items(preprocess, 2))
        return {n: batch[n] for n in AUDIO_INPUTS}
    if isinstance(preprocess, TextPreprocess):
        batch = preprocess(["an example sentence to export", "a second, longer example sentence for the graph"])
        missing = [n for n in TEXT_INPUTS[:2] if n not in batch]
        if missing:
            raise ConfigError(f"The tokenizer {type(preprocess.tokenizer).__name__} makes no {missing[0]}; "
                              f"an exported text model takes {', '.join(TEXT_INPUTS[:2])}.")
        return {n: batch[n] for n in TEXT_INPUTS if n in batch}
    raise ConfigError(f"Preprocessing '{preprocess.kind}' cannot be exported. Exportable: {EXPORTABLE}.")




def input_axes(preprocess: Preprocess, names: list[str]) -> dict[str, dict[int, str]]:
    """The symbolic axes of each input: the batch, a text's tokens, a clip's frames (not Whisper's fixed window)."""
    if isinstance(preprocess, ImagePreprocess):
        return {n: {0: "batch"} for n in names}
    if isinstance(preprocess, AudioPreprocess):
        fixed = preprocess.features == "whisper"  # every clip is padded to the window the encoder was built for
        return {"input_features": {0: "batch", **({} if fixed else {2: "frames"})},
                "frame_mask": {0: "batch", **({} if fixed else {1: "frames"})}}
    return {n: {0: "batch", 1: "sequence"} for n in names}


def _export_onnx(graph: nn.Module, example: dict, path: Path, opset: int | None, weight_bytes: int,
                 spec: str, outputs: list[str]) -> str:
    """Export with torch.export (opset >= 18), else the TorchScript-based exporter; return which ran."""
    names, args = list(example), tuple(example.values())
    axes = input_axes(graph.model.backbone.preprocess, names)
    common = {"input_names": names, "output_names": outputs, "opset_version": opset, "verbose": False}
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
            torch.onnx.export(graph, args, str(path), dynamo=False,
                              dynamic_axes={**axes, **{o: {0: "batch"} for o in outputs}}, **common)
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
    if isinstance(preprocess, AudioPreprocess):
        frames = int(preprocess.max_samples // HOP) if preprocess.features == "whisper" else "frames"
        return {**preprocess.config(), "inputs": names, "input_shape": [["batch", preprocess.n_mels, frames],
                                                                         ["batch", frames]],
                "dtype": ["float32", "int64"], "outside_the_graph": (
                    "decode (soundfile), mix down to mono, resample to sample_rate (soxr), refuse clips over "
                    "max_seconds, then the features named by 'features' (transferkit.backbones.audio: "
                    "AudioPreprocess.from_waves; transferkit.export.load_preprocess rebuilds it from this file)")}
    return {"kind": "text", "inputs": names, "input_shape": ["batch", "sequence"], "dtype": "int64",
            "tokenizer": TOKENIZER_DIR, "tokenizer_class": type(preprocess.tokenizer).__name__,
            "max_length": preprocess.max_length, "padding": "longest", "truncation": True}


def _export_info(model: TransferModel, manifest: dict, bundle: Path, format: str, exporter: str,
                 opset: int | None, example: dict) -> dict:
    axes = input_axes(model.backbone.preprocess, list(example))
    inputs = [{"name": n, "shape": [axes[n].get(i, int(d)) for i, d in enumerate(t.shape)],
               "dtype": str(t.dtype).removeprefix("torch.")} for n, t in example.items()]
    versions = library_versions(("torch", "onnx", "onnxruntime", "onnxscript", "transformers", "timm"))
    return {"format": format, "file": FORMATS[format], "exporter": exporter, "opset": opset, "inputs": inputs,
            "outputs": model.task_spec.export_outputs(model),
            "quantized": False, "backbone": manifest["backbone"]["spec"], "task": model.task,
            "bundle": str(bundle.resolve()), "versions": versions}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False), encoding="utf-8")
