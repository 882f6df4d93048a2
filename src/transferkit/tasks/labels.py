"""The three tasks with one target per item: classification, multi-label and regression."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import DataError
from transferkit.evaluation.metrics import classification_metrics, multilabel_metrics, regression_metrics
from transferkit.tasks.base import Task, check_no_nan

_TEXT_TAGS = "text-classification"
_IMAGE_TAGS = "image-classification"
_AUDIO_TAGS = "audio-classification"


class Classification(Task):
    """One class per item: softmax over the label names, cross-entropy, accuracy."""

    name = "classification"
    primary_metric = "accuracy"
    target_kind = "class"
    single_label = True
    pipeline_tags = {"image": _IMAGE_TAGS, "text": _TEXT_TAGS, "audio": _AUDIO_TAGS}
    metric_names = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "log_loss")

    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        y = np.asarray(targets)
        if y.ndim != 1:
            raise DataError(f"{where}: classification targets must be one class index per item; got shape {y.shape}.")
        return y

    def stratify(self, targets: np.ndarray | None) -> np.ndarray | None:
        return None if targets is None else np.asarray(targets)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0,
             class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy; ``class_weight`` (one weight per class) gives a weighted mean over the batch."""
        weight = None if class_weight is None else class_weight.to(outputs.device, torch.float32)
        return F.cross_entropy(outputs.float() if weight is not None else outputs, targets.long(), weight=weight,
                               label_smoothing=label_smoothing)

    def postprocess(self, outputs: torch.Tensor, inputs: Any = None) -> np.ndarray:
        return outputs.float().softmax(-1).cpu().numpy()

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        names = list(label_names or [])
        return [names[i] if names else int(i) for i in np.asarray(outputs).argmax(1)]

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None,
                items: Sequence | None = None) -> list[dict]:
        outputs = np.asarray(outputs)
        names = list(label_names) if label_names else [str(j) for j in range(outputs.shape[1])]
        return [{"label": names[int(np.argmax(row))], "probabilities": {n: float(p) for n, p in zip(names, row)}}
                for row in outputs]

    def predicted_classes(self, outputs: np.ndarray) -> np.ndarray | None:
        return np.asarray(outputs).argmax(1)

    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        """Probabilities ``[N, C]`` (predictions are the argmax) or predicted class indices ``[N]``."""
        outputs = np.asarray(outputs)
        if outputs.ndim == 1:
            return classification_metrics(y_true, outputs, label_names=label_names)
        if outputs.ndim != 2:
            raise DataError(f"Classification outputs must be probabilities [N, C]; got shape {outputs.shape}.")
        return classification_metrics(y_true, outputs.argmax(axis=1), proba=outputs, label_names=label_names)

    def export_postprocess(self) -> str:
        return "softmax"


class MultiLabel(Task):
    """Any number of labels per item: a sigmoid per label, binary cross-entropy, macro-F1 at 0.5."""

    name = "multilabel"
    primary_metric = "macro_f1"
    target_kind = "multi-hot"
    pipeline_tags = {"image": _IMAGE_TAGS, "text": _TEXT_TAGS}
    metric_names = ("micro_f1", "macro_f1", "mAP", "subset_accuracy")

    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        y = np.asarray(targets)
        if y.ndim != 2:
            raise DataError(f"{where}: multi-label targets must be a 0/1 matrix [items, labels]; got shape {y.shape}.")
        return y

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs, targets.float())

    def postprocess(self, outputs: torch.Tensor, inputs: Any = None) -> np.ndarray:
        return outputs.float().sigmoid().cpu().numpy()

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        names = list(label_names or [])
        return [[names[j] if names else int(j) for j in np.flatnonzero(row > 0.5)] for row in np.asarray(outputs)]

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None,
                items: Sequence | None = None) -> list[dict]:
        outputs = np.asarray(outputs)
        names = list(label_names) if label_names else [str(j) for j in range(outputs.shape[1])]
        return [{"labels": [n for n, p in zip(names, row) if p > 0.5],
                 "probabilities": {n: float(p) for n, p in zip(names, row)}} for row in outputs]

    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        return multilabel_metrics(y_true, outputs, label_names=label_names)

    def export_postprocess(self) -> str:
        return "sigmoid"


class Regression(Task):
    """One real value per item: a single output, mean squared error, R²."""

    name = "regression"
    primary_metric = "r2"
    target_kind = "value"
    has_labels = False
    pipeline_tags = {"text": _TEXT_TAGS}
    metric_names = ("r2", "mse", "rmse", "mae")

    def num_outputs(self, label_names: Sequence[str] | None) -> int:
        return 1

    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        y = np.asarray(targets)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"{where}: regression targets must be one value per item; got shape {y.shape}.")
        if y.dtype.kind in "fiu":
            check_no_nan(y.astype(np.float64), where)
        return y

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.mse_loss(outputs.squeeze(-1), targets.float())

    def postprocess(self, outputs: torch.Tensor, inputs: Any = None) -> np.ndarray:
        return outputs.float().squeeze(-1).cpu().numpy()

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        return [float(v) for v in np.asarray(outputs).reshape(-1)]

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None,
                items: Sequence | None = None) -> list[dict]:
        outputs = np.asarray(outputs)
        return [{"value": float(v)} for v in outputs.reshape(len(outputs))]

    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        return regression_metrics(y_true, outputs)
