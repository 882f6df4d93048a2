"""Reading, running and checking an export directory written by :func:`~transferkit.export.onnx_export.export_bundle`.

The directory's layout (file, input and output names) is defined here, beside
what reads it:

* :func:`read_export` and :func:`load_preprocess`: ``export.json`` and the
  library's own preprocessing rebuilt from ``preprocess.json``, offline.
* :func:`check_parity`: the exported model's outputs (logits) against the PyTorch
  model's, on deterministic inputs (:func:`sample_items`); :func:`check_prediction_parity`:
  the final predictions of both paths, for a task whose graph stops before a data-dependent
  selection (detection: thresholding and NMS run outside the graph).
* :class:`OnnxPredictor`: an ONNX export run by onnxruntime, with the
  interface of :class:`~transferkit.export.bundle.Predictor`.
* :func:`quantization_accuracy`: what int8 quantisation costs on labelled data.

onnxruntime (the ``export`` extra) is imported inside the functions that use it.

Example:
    >>> OnnxPredictor("deploy/fmnist").predict(["shoe.png"])         # doctest: +SKIP
    ['Sneaker']
"""
from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.backbones.audio import AudioPreprocess, preprocess_from_config
from transferkit.backbones.base import ImagePreprocess, Preprocess, TextPreprocess
from transferkit.errors import BundleError, ConfigError
from transferkit.export.bundle import MANIFEST, outputs_to_predictions, rebuild_model
from transferkit.strategies.base import TransferModel
from transferkit.tasks import get_task

#: Format -> model file name.
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
QUANTIZED = "model.int8.onnx"
PREPROCESS, LABELS, EXPORT = "preprocess.json", "labels.json", "export.json"
TOKENIZER_DIR = "tokenizer"
PARITY_INPUTS = 4
IMAGE_INPUT = "pixel_values"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: An audio graph's inputs: (log-)mel frames ``[batch, n_mels, frames]`` and the mask of frames ``[batch, frames]``.
AUDIO_INPUTS = ("input_features", "frame_mask")
OUTPUT = "logits"
#: Parity inputs for text models: lengths from a few tokens to past the usual max_length.
SAMPLE_TEXTS = ("ok", "transfer learning adapts a pre-trained model to a small labelled data set",
                "a short one", "Émile's café: 3 × 4 = 12, naïve résumé ✓",
                "the quick brown fox jumps over the lazy dog " * 40, "numbers 0 1 2 3 4 5 6 7 8 9 and symbols #@!")


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs the '{module}' package: pip install 'transferkit[export]'.") from None


def sample_items(preprocess: Preprocess, n: int) -> list:
    """``n`` deterministic raw items: random RGB uint8 images at the input size, texts of varied length, or
    clips of varied length (tones with noise, at most the model's window)."""
    rng = np.random.default_rng(0)
    if isinstance(preprocess, ImagePreprocess):
        return [rng.integers(0, 256, (preprocess.size, preprocess.size, 3), dtype=np.uint8) for _ in range(n)]
    if isinstance(preprocess, AudioPreprocess):
        rate, longest = preprocess.sample_rate, min(preprocess.max_seconds, 3.0)
        clips = []
        for i in range(n):
            t = np.arange(int(rate * longest * (0.3 + 0.7 * ((i * 0.37) % 1.0)))) / rate
            clips.append((0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(len(t)))
                         .astype(np.float32))
        return clips
    return [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(n)]


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
    if cfg.get("kind") == "audio":
        return preprocess_from_config(cfg)
    raise BundleError(f"{export_dir / PREPROCESS}: unknown preprocessing kind {cfg.get('kind')!r}; "
                      "expected 'image', 'text' or 'audio'.")


def check_parity(export_dir: str | Path, model: TransferModel | None = None, n: int = PARITY_INPUTS, *,
                 file: str | None = None) -> float:
    """Max abs difference between the exported model's outputs (logits) and the PyTorch model's.

    The ``n`` inputs are deterministic raw items (random images at the input
    size, texts or clips of different lengths) through the export's own preprocessing,
    run as one batch of ``n`` and as a batch of 1, so a batch size or sequence
    length fixed into the graph shows up as a difference. A graph with several
    outputs (detection: boxes and scores) is compared on all of them.

    Args:
        export_dir: a directory written by :func:`export_bundle`.
        model: the PyTorch model; default: rebuilt from the bundle named in ``export.json``.
        n: number of inputs.
        file: the model file to check (default the export's own; ``"model.int8.onnx"``).

    Returns:
        The max abs difference over all outputs.
    """
    diffs = [0.0]
    for expected, got, _ in _both_paths(export_dir, model, n, file, predictions=False):
        diffs += [float(np.abs(g - e).max(initial=0.0)) for e, g in zip(expected, got)]
    return float(np.max(diffs))  # NaN stays NaN


def check_prediction_parity(export_dir: str | Path, model: TransferModel | None = None, n: int = PARITY_INPUTS, *,
                            file: str | None = None, tolerance: float = 1e-4) -> dict | None:
    """The final predictions of the export (graph, then the task's postprocessing outside it) against PyTorch's.

    For tasks whose graph stops before a data-dependent selection
    (:attr:`~transferkit.tasks.Task.export_compares_predictions`: detection, whose thresholding and NMS run
    outside the graph); ``None`` for the others, whose predictions follow from the outputs
    :func:`check_parity` compares. Inputs and batches as in :func:`check_parity`.

    Returns:
        The task's summary (:meth:`~transferkit.tasks.Task.compare_outputs`, with ``equal``) over both batches.
    """
    export_dir = Path(export_dir)
    task = get_task(read_export(export_dir)["task"])
    if not task.export_compares_predictions:
        return None
    pairs = [(e, g) for _, _, (e, g) in _both_paths(export_dir, model, n, file, predictions=True)]
    expected = task.concat([e for e, _ in pairs], 0)
    actual = task.concat([g for _, g in pairs], 0)
    return {**task.compare_outputs(expected, actual, tolerance), "tolerance": tolerance}


def _both_paths(export_dir: str | Path, model: TransferModel | None, n: int, file: str | None, predictions: bool):
    """Per batch (``n`` sample items, then the first alone): the graph's outputs from PyTorch and from the export,
    and with ``predictions`` the task's final outputs of both paths."""
    export_dir = Path(export_dir)
    info = read_export(export_dir)
    if model is None:
        if not Path(info["bundle"]).is_dir():
            raise BundleError(f"check_parity compares with the PyTorch model of the bundle {info['bundle']}, which "
                              "is gone; pass model= (transferkit.export.bundle.rebuild_model(BUNDLE)).")
        model = rebuild_model(info["bundle"])
    run = _runner(export_dir / (file or info["file"]), info)
    names, outputs = [i["name"] for i in info["inputs"]], output_names(info)
    options = _read_json(export_dir / LABELS).get("postprocess_options") or {}
    preprocess = load_preprocess(export_dir)
    task = model.task_spec
    items = sample_items(preprocess, n)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for batch in (items, items[:1]):
            inputs = preprocess(batch)
            with torch.no_grad():
                on_device = ({k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict)
                             else inputs.to(device))
                raw = model(on_device)
                expected = [t.float().cpu().numpy() for t in _as_tuple(task.export_forward(raw))]
                got = run(_feed(inputs, names))
                final = ((task.postprocess(raw, on_device),
                          task.apply_export_postprocess(graph_outputs(got, outputs), inputs, options))
                         if predictions else None)
            yield expected, got, final
    finally:
        model.train(was_training)


def _as_tuple(outputs) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def output_names(info: dict) -> list[str]:
    """The graph's output names from ``export.json``, in order."""
    return [o["name"] for o in info.get("outputs") or [{"name": OUTPUT}]]


def graph_outputs(arrays: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
    """What :meth:`~transferkit.tasks.Task.apply_export_postprocess` takes: the one output (logits), or
    ``{name: array}`` for a graph with several."""
    return arrays[0] if len(names) == 1 else dict(zip(names, arrays))


def _runner(path: Path, info: dict) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A function from named numpy inputs to the graph's outputs (in order), for an ONNX file or a TorchScript
    module."""
    outputs = output_names(info)
    if info["format"] == "onnx":
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return lambda feed: session.run(outputs, feed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*deprecated")
        module = torch.jit.load(str(path), map_location="cpu")
    names = [i["name"] for i in info["inputs"]]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in _as_tuple(module(*(torch.from_numpy(feed[n]) for n in names)))]

    return run


def _feed(inputs: torch.Tensor | dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Preprocessed inputs as the graph's named numpy inputs."""
    if isinstance(inputs, torch.Tensor):
        return {names[0]: inputs.detach().cpu().numpy().astype(np.float32, copy=False)}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise BundleError(f"The tokenizer made no {', '.join(missing)}, which the exported model takes.")
    return {n: inputs[n].detach().cpu().numpy().astype(np.float32 if inputs[n].is_floating_point() else np.int64,
                                                         copy=False) for n in names}


def logits_to_outputs(logits: np.ndarray | dict[str, np.ndarray], task: str, inputs=None,
                      options: dict | None = None) -> np.ndarray:
    """The task's postprocessing of an exported graph's logits (``{name: array}`` for a graph with several outputs;
    ``inputs``: the preprocessed batch; ``options``: ``labels.json``'s ``postprocess_options``), as
    ``TransferModel`` does it."""
    return get_task(task).apply_export_postprocess(logits, inputs, options)


class OnnxPredictor:
    """An ONNX export run by onnxruntime, with the interface of :class:`~transferkit.export.bundle.Predictor`.

    Raw items go through the library's own preprocessing rebuilt from
    ``preprocess.json`` (and the saved tokenizer), so outputs match the bundle's
    PyTorch predictor. For audio that is decoding, resampling and the (log-)mel
    features, computed with PyTorch outside the graph.

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
        self.postprocess_options = labels.get("postprocess_options") or {}
        self.output_names = output_names(self.export)
        self.preprocess = load_preprocess(self.path)
        self.session = ort.InferenceSession(str(file), sess_options=session_options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def outputs(self, items: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] (classification, multi-label), values [N] (regression), or what the task's
        postprocessing gives (detection: boxes, scores and labels per image, after NMS run outside the graph)."""
        from transferkit.data.batches import run_batches

        task = get_task(self.task)
        items = task.prepare_items(items if isinstance(items, np.ndarray) else list(items))
        run = lambda batch: graph_outputs(  # noqa: E731
            self.session.run(self.output_names, _feed(batch, self.input_names)), self.output_names)
        load = lambda idx: self.preprocess(items[idx[0]:idx[-1] + 1])  # noqa: E731
        parts = [task.apply_export_postprocess(out, inputs, self.postprocess_options) for _, inputs, out in
                 run_batches(run, load, len(items), batch_size=batch_size, device="cpu")]
        return task.concat(parts, len(self.label_names or []))

    predict_proba = outputs

    def predict(self, items: Sequence, batch_size: int = 64) -> list:
        """Label names (classification), lists of label names (multi-label) or floats (regression)."""
        return outputs_to_predictions(self.outputs(items, batch_size), self.task, self.label_names, items)


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
    task = get_task(fp32.task)
    metric = task.primary_metric
    a = task.metrics(target.targets, out_a, names)[metric]
    b = task.metrics(target.targets, out_b, names)[metric]
    classes_a, classes_b = task.predicted_classes(out_a), task.predicted_classes(out_b)
    agreement = None if classes_a is None else float((classes_a == classes_b).mean())
    return {"metric": metric, "float": float(a), "int8": float(b), "change": float(b - a), "agreement": agreement,
            "n": len(target)}
