"""``segmentation`` (semantic): a class for every pixel, scored by mean IoU.

Targets are one ``[H, W]`` array of class indices per image, in the image's own size (index 0 is
usually ``background``; :data:`IGNORE_PIXEL` marks pixels no class is given for, which the loss and the
metrics skip). The backbone resizes each image to its square input; masks are resized the same way by
nearest neighbour, and predictions are resized back to each image's size.

The head is Panoptic FPN's semantic branch over torchvision's FPN on the backbone's feature pyramid
(``fpn-seg``, :mod:`transferkit.tasks.dense_heads`); per-pixel cross-entropy. Training batches are
flipped, zoomed and shifted with their masks (torchvision transforms v2 on ``tv_tensors.Mask``).

Metrics from the confusion matrix over every evaluated pixel (in each image's own size): ``mean_iou``
(the primary metric: the mean over classes present in the ground truth or the predictions, background
included, as Pascal VOC does), ``iou_<class>`` and ``pixel_accuracy``.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.errors import DataError
from transferkit.tasks.base import Task
from transferkit.tasks.detection import image_size, spatial_augment

#: The mask value of pixels without a class (ignored by the loss and the metrics), as in Pascal VOC's PNGs.
IGNORE_PIXEL = 255


def _object_array(rows: list) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-index mask resized to ``(height, width)`` by nearest neighbour (classes never blend)."""
    from PIL import Image

    if tuple(mask.shape) == tuple(size):
        return mask
    return np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((size[1], size[0]), Image.NEAREST))


def check_mask(mask: Any, num_classes: int, where: str) -> np.ndarray:
    """A 2-D mask of class indices ``0..num_classes-1`` (or :data:`IGNORE_PIXEL`) as uint8, else a DataError."""
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise DataError(f"{where}: a mask must be a 2-D array of class indices; got {arr.dtype} of shape {arr.shape}.")
    bad = (arr != IGNORE_PIXEL) & ((arr < 0) | (arr >= max(num_classes, 1))) if num_classes else arr < 0
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{where}: pixel (x={x}, y={y}) has class {int(arr[y, x])}; there are {num_classes} classes "
                        f"(0..{num_classes - 1}), and {IGNORE_PIXEL} marks ignored pixels.")
    return arr.astype(np.uint8)


def mask_png(mask: np.ndarray) -> str:
    """A class-index mask as a base64 PNG (8-bit grey: pixel value = class index)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Segmentation(Task):
    """A class per pixel: Panoptic-FPN semantic head on a feature pyramid, per-pixel cross-entropy, mean IoU."""

    name = "segmentation"
    primary_metric = "mean_iou"
    feature_kind = "pyramid"
    head = "fpn-seg"
    target_kind = "mask"
    spatial_targets = True
    pipeline_tags = {"image": "image-segmentation"}
    metric_names = ("mean_iou", "pixel_accuracy", "iou_<class>")
    #: as detection's (:attr:`transferkit.tasks.detection.Detection.min_train_examples`): a new decoder on the
    #: pyramid. Checked on one seed (50 scenes, 128 px, batch 8, fine-tuned): mean IoU 61.0 after 4,300 images
    #: shown, 63.6 after 8,550 (benchmarks/results/dense_vision/convergence).
    min_train_examples = 4800
    #: as detection's: fine-tuned, mean IoU 58.6 at batch 8 against 45.8 at batch 32 (50 scenes, 3 seeds;
    #: benchmarks/results/dense_vision/batch8/seg50/against.md).
    train_batch_size = 8

    # -- targets ---------------------------------------------------------------
    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        n = len(label_names or [])
        return _object_array([check_mask(m, n, f"{where}, image {i + 1}") for i, m in enumerate(targets)])

    def target_bytes(self, targets: np.ndarray) -> bytes:
        return b"|".join(str(m.shape).encode() + np.ascontiguousarray(m).tobytes() for m in targets)

    def label_counts(self, targets: np.ndarray, num_labels: int) -> np.ndarray:
        """Images with at least one pixel of each class."""
        counts = np.zeros(num_labels, dtype=np.int64)
        for m in targets:
            present = np.unique(m)
            counts[present[present < num_labels]] += 1
        return counts

    def remap_labels(self, targets: np.ndarray, mapping: np.ndarray) -> np.ndarray:
        lut = np.full(256, IGNORE_PIXEL, dtype=np.uint8)
        lut[:len(mapping)] = np.where(mapping >= 0, mapping, IGNORE_PIXEL)
        return _object_array([lut[m] for m in targets])

    def collate_targets(self, targets: np.ndarray, inputs: Any) -> torch.Tensor:
        """Masks resized (nearest) to the model input: ``[B, H, W]`` long."""
        size = tuple(int(s) for s in inputs.shape[-2:])
        return torch.from_numpy(np.stack([resize_mask(m, size) for m in targets]).astype(np.int64))

    def augment(self, inputs: Any, targets: Any) -> tuple[Any, Any]:
        images, _, masks = spatial_augment(inputs, masks=targets)
        return images, masks

    # -- model -----------------------------------------------------------------
    def make_head(self, spec, num_outputs: int, *, dropout: float = 0.0, **options: Any) -> torch.nn.Module:
        from transferkit.tasks.heads import build_head

        return build_head(self.head, (spec.channels, spec.strides), num_outputs, dropout=dropout, **options)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets.long(), ignore_index=IGNORE_PIXEL,
                               label_smoothing=label_smoothing)

    # -- outputs ---------------------------------------------------------------
    def postprocess(self, outputs: torch.Tensor, inputs: Any = None) -> np.ndarray:
        """Per image: the predicted class of every input pixel, ``[H, W]`` uint8."""
        return _object_array(list(outputs.float().argmax(1).to(torch.uint8).cpu().numpy()))

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        return _object_array([row for part in parts for row in part])

    def masks(self, outputs: np.ndarray, items: Sequence | None = None) -> list[np.ndarray]:
        """Predicted masks in each image's own size (the model's input size when the items are not given)."""
        return [resize_mask(m, image_size(items[i], i)) if items is not None else m for i, m in enumerate(outputs)]

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        """Per image: ``{"mask": [H, W] uint8 class indices, "classes": {name: share of pixels}}``."""
        names = list(label_names or [])
        out = []
        for m in self.masks(outputs, items):
            counts = np.bincount(m.reshape(-1), minlength=len(names))
            shares = {(names[c] if c < len(names) else str(c)): round(float(k) / m.size, 6)
                      for c, k in enumerate(counts) if k}
            out.append({"mask": m, "classes": shares})
        return out

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list[dict]:
        """Per image: the class shares and the mask as a base64 PNG (pixel value = class index)."""
        return [{"classes": d["classes"], "mask_png": mask_png(d["mask"]), "height": int(d["mask"].shape[0]),
                 "width": int(d["mask"].shape[1])} for d in self.decode(outputs, label_names, items)]

    def report_figure(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                      k: int = 4) -> tuple[str, str, list] | None:
        """Up to ``k`` evaluated images, lowest pixel accuracy first: the gold mask beside the predicted one
        (:func:`~transferkit.tasks.dense_figures.segmentation_rows`)."""
        from transferkit.tasks.dense_figures import segmentation_rows

        rows = segmentation_rows(items, y_true, self.masks(outputs, items), label_names, k, IGNORE_PIXEL)
        return ("Predictions on evaluated images",
                f"{len(rows)} of the {len(y_true)} evaluated images, the lowest pixel accuracy first: the gold mask "
                "on the left, the predicted one on the right, each class in its own colour (background unpainted).",
                rows)

    # -- evaluation ------------------------------------------------------------
    def confusion(self, y_true: Any, outputs: Any, num_classes: int) -> np.ndarray:
        """``[C, C]`` pixel counts (true class x predicted class) over every image, in each image's size."""
        total = np.zeros((num_classes, num_classes), dtype=np.int64)
        for i, (gold, pred) in enumerate(zip(y_true, outputs)):
            pred = resize_mask(np.asarray(pred), np.asarray(gold).shape)
            keep = np.asarray(gold) != IGNORE_PIXEL
            g, p = np.asarray(gold)[keep].astype(np.int64), np.minimum(pred[keep].astype(np.int64), num_classes - 1)
            total += np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)
        return total

    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        names = list(label_names or [])
        if len(y_true) != len(outputs):
            raise DataError(f"{len(y_true)} annotated images but {len(outputs)} predicted masks.")
        n = len(names) or int(max([np.max(m[m != IGNORE_PIXEL], initial=0) for m in y_true], default=0)) + 1
        cm = self.confusion(y_true, outputs, n)
        tp = np.diag(cm).astype(np.float64)
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
        out = {"mean_iou": float(iou[present].mean()) if present.any() else 0.0,
               "pixel_accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 0.0, "n": len(y_true)}
        for c in np.flatnonzero(present):
            out[f"iou_{names[c] if c < len(names) else c}"] = float(iou[c])
        return out

    def export_postprocess(self) -> str:
        return "argmax"
