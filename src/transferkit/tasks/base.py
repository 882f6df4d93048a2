"""The Task contract: everything that depends on *what* a model predicts.

After PEFT's task types and Hugging Face's ``AutoModelFor*`` heads: one encoder,
many heads, and the task owns the differences. A task is a stateless object
registered by name (:data:`transferkit.tasks.TASKS`); the rest of the library asks
it instead of branching on its name:

* targets: :meth:`Task.check_targets` validates and normalises them,
  :meth:`Task.training_items` gives what the model reads in training (a prompt with its completion),
  :meth:`Task.collate_targets` turns a batch of them into a tensor (with an ignore
  index for per-token targets), :meth:`Task.target_bytes` fingerprints them;
* model: :attr:`Task.feature_kind` says which backbone features the head reads
  (pooled ``[B, D]`` or a sequence ``[B, T, D]``), :meth:`Task.make_head` builds it
  through the head registry, :meth:`Task.loss` trains it;
* outputs: :meth:`Task.infer` runs the model on one batch at prediction time (a forward pass,
  or autoregressive decoding), :meth:`Task.postprocess` turns a batch of raw outputs into
  probabilities or values per item, :meth:`Task.concat` joins batches,
  :meth:`Task.decode` gives the predictions ``predict`` returns and
  :meth:`Task.records` what ``serve`` answers;
* evaluation: :meth:`Task.metrics`, :attr:`Task.primary_metric` (its direction
  from :func:`transferkit.evaluation.metrics.higher_is_better`);
* shipping: :meth:`Task.export_forward` and :meth:`Task.export_outputs` say what an exported graph
  returns, :meth:`Task.export_postprocess` names what its consumer applies next and
  :meth:`Task.apply_export_postprocess` applies it; :meth:`Task.pipeline_tag` gives the Hugging Face Hub tag.

Capabilities are declared, not tested by name: :attr:`Task.single_label` (one
class per item: stratified splits, labels per class, confusion matrices),
:attr:`Task.has_labels` (outputs are named by ``label_names``),
:attr:`Task.spatial_targets` (targets are tied to pixel positions, boxes or masks: the task augments
images and targets together in :meth:`Task.augment`, and image-only augmentation or mixing is refused).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from transferkit.backbones.base import FeatureSpec
from transferkit.errors import DataError

#: Target value ignored by the loss and the metrics (Hugging Face's convention for sub-tokens and padding).
IGNORE_INDEX = -100


class Task:
    """Base class of every task. Subclasses set the class attributes and override what differs.

    Attributes:
        name: the registered name (``classification``).
        primary_metric: the metric that ranks models and decides verdicts.
        feature_kind: ``"pooled"`` (one vector per item) or ``"sequence"`` (a vector per token/frame).
        head: the name of the default head in :data:`transferkit.tasks.heads.HEADS`.
        heads: the heads a user may choose between (:meth:`make_head`'s ``head``); empty: only ``head``.
        single_label: one class per item (stratification, ``labels_per_class``).
        target_kind: how targets are encoded (``class``, ``multi-hot``, ``value``, ...).
        has_labels: outputs are named by ``label_names``.
        pipeline_tags: modality -> Hugging Face Hub pipeline tag.
        spatial_targets: targets are tied to pixel positions (boxes, masks); see :meth:`augment`.
        min_train_steps: the fewest optimizer steps the loop takes when no ``epochs`` are given (0: none).
        min_train_examples: the fewest training examples (repeats counted) the loop shows when no ``epochs``
            are given (0: none); unlike a step floor it does not change with the batch size.
        train_batch_size: the examples per optimizer step the loop uses when the user gives no batch size.
        packable: training items are token sequences that may be packed several to a row (the ``packing``
            option of the fine-tuning strategies, :mod:`transferkit.data.packing`).
        streams: a prediction can be handed out piece by piece as it is made (:meth:`stream`; ``serve``'s
            ``POST /predict/stream``).
    """

    name: ClassVar[str] = ""
    primary_metric: ClassVar[str] = ""
    feature_kind: ClassVar[str] = "pooled"
    head: ClassVar[str] = "linear"
    #: heads a user may choose instead of :attr:`head` (detection's ``detector`` option), the default first;
    #: empty: :attr:`head` only
    heads: ClassVar[tuple[str, ...]] = ()
    single_label: ClassVar[bool] = False
    has_labels: ClassVar[bool] = True
    pipeline_tags: ClassVar[dict[str, str]] = {}
    spatial_targets: ClassVar[bool] = False
    #: whether ``transferkit export`` can write the model as one ONNX/TorchScript graph (``export_note`` says why not)
    exportable: ClassVar[bool] = True
    export_note: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: How targets are encoded: ``"class"`` (an index per item), ``"multi-hot"`` (a 0/1 row per item),
    #: ``"value"`` (a number per item), or another word a task defines (``"per-token"``).
    target_kind: ClassVar[str] = ""
    #: The fewest optimizer steps the training loop takes on this task when the user gives no ``epochs``: the
    #: strategy's default epochs are raised until they reach it (0: epochs alone set the length of a run).
    min_train_steps: ClassVar[int] = 0
    #: The fewest training examples (each epoch counts every example once) the loop shows on this task when the
    #: user gives no ``epochs``: the strategy's default epochs are raised until they reach it (0: none).
    min_train_examples: ClassVar[int] = 0
    #: Examples per optimizer step when the user gives no batch size (``TrainConfig.batch_size`` of None).
    train_batch_size: ClassVar[int] = 32
    packable: ClassVar[bool] = False
    streams: ClassVar[bool] = False

    # -- targets ---------------------------------------------------------------
    def num_outputs(self, label_names: Sequence[str] | None) -> int:
        """Width of the head's output: the number of classes / labels by default."""
        return len(label_names or [])

    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        """Validate targets and return them in the task's array format; :class:`DataError` names ``where``."""
        return np.asarray(targets)

    def collate_targets(self, targets: np.ndarray, inputs: Any, **options: Any) -> torch.Tensor:
        """A batch of targets as a tensor; ``inputs`` is the preprocessed batch (word ids for per-token tasks);
        ``options``: what a strategy's :meth:`~transferkit.strategies.Strategy.target_options` asks of the task."""
        return torch.as_tensor(np.asarray(targets))

    def target_bytes(self, targets: np.ndarray) -> bytes:
        """Bytes that identify the targets (for data fingerprints)."""
        return np.ascontiguousarray(targets).tobytes()

    def label_counts(self, targets: np.ndarray, num_labels: int) -> np.ndarray | None:
        """How many items carry each label ``[num_labels]``, for targets that are not one class index or one
        0/1 row per item (boxes, masks); ``None``: the library counts class indices or multi-hot rows itself."""
        return None

    def remap_labels(self, targets: np.ndarray, mapping: np.ndarray) -> np.ndarray | None:
        """Targets with label ``k`` renamed ``mapping[k]`` (evaluation data aligned to the training label order),
        for targets that are not class indices or multi-hot rows; ``None``: the library remaps those itself."""
        return None

    def augment(self, inputs: Any, targets: Any) -> tuple[Any, Any]:
        """Training-time augmentation of a collated batch that must move the targets with the inputs (a flip
        moves boxes and masks with the image); identity by default. Only training batches go through it."""
        return inputs, targets

    def stratify(self, targets: np.ndarray | None) -> np.ndarray | None:
        """Labels to stratify splits by, or ``None`` when the task has none."""
        return None

    # -- model -----------------------------------------------------------------
    def make_head(self, spec: FeatureSpec, num_outputs: int, *, dropout: float = 0.0, head: str | None = None,
                  **options: Any) -> nn.Module:
        """The task's head from the head registry, on features shaped as ``spec`` says: ``head`` (one of
        :attr:`heads`), or the default :attr:`head`.

        The default reads ``spec.dim`` (pooled or sequence features); a task on a
        feature pyramid overrides this to pass the channels and strides.
        """
        from transferkit.tasks.heads import build_head

        return build_head(self.choose_head(head), spec.dim, num_outputs, dropout=dropout, **options)

    def choose_head(self, head: str | None) -> str:
        """``head`` if the task offers it (:attr:`heads`), the default :attr:`head` for ``None``; else a
        :class:`~transferkit.errors.ConfigError` naming the choices."""
        from transferkit.errors import ConfigError

        if head is None or head == self.head:
            return self.head
        if head not in self.heads:
            offered = f"one of {', '.join(self.heads)}" if self.heads else f"only its '{self.head}' head"
            raise ConfigError(f"Unknown head {head!r} for {self.name}: it offers {offered}.")
        return head

    def export_refusal(self, head: dict) -> str | None:
        """Why a model with this head (its manifest description) cannot be exported as one graph; ``None``: it can."""
        return None

    def configure_model(self, model: nn.Module, data: Any) -> None:
        """Settings a new model takes from its training data, before training (none by default; a generative
        task sets how many tokens to decode from the length of the training completions)."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        raise NotImplementedError

    # -- outputs ---------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor, inputs: Any = None) -> np.ndarray:
        """Raw model outputs of one batch -> per-item probabilities or values (numpy)."""
        raise NotImplementedError

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        """Join the postprocessed batches of :meth:`postprocess` in order."""
        if not parts:
            return np.zeros((0, max(1, num_outputs)), dtype=np.float32)
        return np.concatenate(parts)

    def training_items(self, items: Sequence, targets: np.ndarray) -> Sequence:
        """The items the backbone reads in a training batch, given their targets (identity by default).

        A generative task returns each prompt joined with its completion (teacher forcing): the model
        must read the target to learn to produce it, while prediction reads the prompt alone.
        """
        return items

    def infer(self, model: nn.Module, inputs: Any) -> Any:
        """The raw outputs of one preprocessed batch at prediction time: ``model(inputs)`` by default;
        a generative task decodes autoregressively instead (see :meth:`postprocess` for what follows)."""
        return model(inputs)

    def stream(self, model: nn.Module, inputs: Any, on_text: Any, cancel: Any = None) -> Any:
        """One item's prediction handed to ``on_text`` piece by piece as it is made (tasks whose :attr:`streams`
        is set); returns the whole prediction. Other tasks answer whole predictions only."""
        raise NotImplementedError(f"{self.name} does not stream its predictions")

    def prepare_items(self, items: Sequence) -> Sequence:
        """Raw items as ``predict`` and ``serve`` receive them -> the items the backbone reads (identity by default;
        token classification splits strings into words)."""
        return items

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        """What ``predict`` returns for each item; ``items`` are the raw items (for offsets into them)."""
        raise NotImplementedError

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None,
                items: Sequence | None = None) -> list[dict]:
        """One JSON record per item, as ``serve`` answers it; ``items`` as in :meth:`decode`."""
        raise NotImplementedError

    def predicted_classes(self, outputs: np.ndarray) -> np.ndarray | None:
        """Class index per item for single-label tasks (agreement checks), else ``None``."""
        return None

    # -- evaluation ------------------------------------------------------------
    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        raise NotImplementedError

    def model_metrics(self, model: nn.Module, data: Any) -> dict:
        """Metrics that need the model itself, not only its predictions (a language model's perplexity on the
        references); none by default. ``fit``, ``compare`` and ``evaluate`` add them to :meth:`metrics`."""
        return {}

    def item_counts(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> np.ndarray | None:
        """Per-item counts ``[N, k]`` whose column sums give the primary metric (:meth:`metric_from_counts`),
        for metrics that are not a mean over items (entity F1); ``None`` where per-item values are used."""
        return None

    def metric_from_counts(self, totals: np.ndarray) -> float:
        """The primary metric from the column sums of :meth:`item_counts`."""
        raise NotImplementedError

    def report_examples(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                        k: int = 5) -> tuple[list[str], list[list[str]]] | None:
        """A few evaluated items for the report as ``(headers, rows)`` (tagged sentences for token
        classification); ``None``: the report shows no examples."""
        return None

    def report_figure(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                      k: int = 4) -> tuple[str, str, list[tuple[str, np.ndarray, np.ndarray]]] | None:
        """A few evaluated items drawn for the report, as ``(title, caption, rows)``: each row ``(name, truth,
        prediction)``, two ``[H, W, 3]`` uint8 pictures of one item (its ground truth and the model's prediction
        drawn on it: boxes, masks), set side by side; ``None``: the report draws none."""
        return None

    # -- shipping --------------------------------------------------------------
    #: The exported graph stops before a data-dependent selection (detection's NMS): an export's parity check
    #: then also compares the final predictions of both paths (:meth:`compare_outputs`).
    export_compares_predictions: ClassVar[bool] = False

    def export_postprocess(self) -> str:
        """The operation the exported graph's consumer applies to the logits: softmax, sigmoid, identity."""
        return "identity"

    def export_forward(self, outputs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What an exported graph returns for the model's raw outputs (the model's outputs by default: logits)."""
        return outputs

    def export_outputs(self, model: nn.Module) -> list[dict]:
        """The exported graph's outputs in order, as ``export.json`` lists them: ``name``, ``shape``, ``dtype``,
        ``meaning``. By default one ``logits`` output, ``[batch, outputs]`` (``[batch, classes, height, width]``
        on a feature pyramid)."""
        from transferkit.tasks.heads import describe_head

        width = describe_head(model.head).get("out_features")
        shape = ["batch", width, "height", "width"] if self.feature_kind == "pyramid" else ["batch", width]
        return [{"name": "logits", "shape": shape, "dtype": "float32",
                 "meaning": f"logits; outputs = {self.export_postprocess()}(logits) ({self.name}, see labels.json)"}]

    def export_postprocess_options(self, model: nn.Module, inputs: Any) -> dict:
        """Settings :meth:`apply_export_postprocess` needs beside the graph's outputs (none by default), written to
        ``labels.json``; ``inputs`` is an example batch of the model's input."""
        return {}

    def apply_export_postprocess(self, outputs: Any, inputs: Any = None, options: dict | None = None) -> np.ndarray:
        """:meth:`postprocess` on an exported graph's numpy outputs: the logits, or ``{name: array}`` when the
        graph has several outputs (``inputs``: the preprocessed batch; ``options``: from
        :meth:`export_postprocess_options`)."""
        return self.postprocess(torch.from_numpy(np.asarray(outputs, dtype=np.float32)), inputs)

    def compare_outputs(self, expected: np.ndarray, actual: np.ndarray, tolerance: float) -> dict:
        """How far an export's final predictions are from PyTorch's (tasks with
        :attr:`export_compares_predictions`): a dict with ``equal`` (within ``tolerance``) and ``summary`` (a line
        for people), and what the task measured."""
        raise NotImplementedError

    def pipeline_tag(self, modality: str) -> str | None:
        return self.pipeline_tags.get(modality)

    def describe(self) -> dict:
        """For ``transferkit list tasks``."""
        return {"name": self.name, "primary_metric": self.primary_metric, "metrics": list(self.metric_names),
                "features": self.feature_kind, "head": self.head, "heads": list(self.heads) or [self.head],
                "targets": self.target_kind}


def check_no_nan(values: np.ndarray, where: str) -> None:
    """Refuse NaN or inf targets, naming the first bad row."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0][0])
        raise DataError(f"{where}: target of row {row} is NaN or inf.")


def check_text_targets(targets: Any, where: str, noun: str, need: str) -> np.ndarray:
    """Targets that are texts (a completion, a transcript) as an object array; an empty or non-text one is refused,
    naming ``where``, its row, the ``noun`` and what every item ``need``s."""
    out = np.empty(len(targets), dtype=object)
    for i, t in enumerate(targets):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}: row {i + 1} has an empty or non-text {noun} ({t!r:.60}); {need}.")
        out[i] = t
    return out


def text_target_bytes(targets: np.ndarray) -> bytes:
    """Bytes that identify text targets (for data fingerprints)."""
    return b"\x00".join(str(t).encode("utf-8", "surrogatepass") for t in targets)
