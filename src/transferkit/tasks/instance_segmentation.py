"""``instance-segmentation``: a box, a class and a mask for every object, scored by COCO mask mAP.

Targets are one dict per image (:func:`instance_target`): detection's ``boxes`` ``[n, 4]``, ``labels``
``[n]`` and ``size`` ``(height, width)``, plus ``masks`` ``[n, height, width]`` (0/1, one per object, in the
image's own pixels). The model is Mask R-CNN (``mask-rcnn``, :mod:`transferkit.tasks.detectors`):
torchvision's Faster R-CNN with its mask branch on the backbone's feature pyramid.

A task of its own, not detection with masks when the data has them, because everything the Task contract
puts on a task differs: the targets (a mask per object, checked against its image's size at load), the
primary metric that ranks models and decides verdicts (mask mAP, not box mAP), what ``predict`` and
``serve`` return (each object's mask as COCO RLE), the only head that fits (``mask-rcnn``) and export (none:
Mask R-CNN runs NMS on its proposals between its stages, as Faster R-CNN does). A flag on ``detection``
would branch on the data in every one of those places.

Training batches are flipped, zoomed and shifted with the boxes and every object's mask (torchvision
transforms v2 on ``tv_tensors.BoundingBoxes`` and ``tv_tensors.Mask``). Predicted masks are the mask
branch's probabilities pasted into the model input at each box and thresholded at 0.5, kept as RLE
(pycocotools) at the input size and resized to each image's own size when decoded or scored.

Metrics: torchmetrics' ``MeanAveragePrecision`` on the pycocotools backend with both IoU types:
``mask_map_50`` (the primary metric), ``mask_map`` (@[.5:.95]), ``mask_map_75``, ``mask_ap_<class>``, and the
boxes' ``box_map_50`` and ``box_map``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from transferkit.errors import DataError
from transferkit.tasks.detection import (SHOW_SCORE, Detection, _object_array, _rows, box_target, coco_metrics,
                                        image_size, spatial_augment)

#: A pixel belongs to a predicted object when the mask branch's probability is at least this (torchvision's 0.5).
MASK_THRESHOLD = 0.5


def instance_target(masks: Any, labels: Any, size: tuple[int, int], boxes: Any = None) -> dict:
    """One image's target: :func:`~transferkit.tasks.detection.box_target` plus ``masks`` uint8 ``[n, h, w]``;
    without ``boxes``, each box is the tight box around its mask."""
    h, w = int(size[0]), int(size[1])
    arr = np.asarray(masks).astype(np.uint8).reshape(-1, h, w) if len(masks) else np.zeros((0, h, w), np.uint8)
    if boxes is None:
        boxes = [_tight_box(m) for m in arr]
    return {**box_target(boxes, labels, (h, w)), "masks": (arr > 0).astype(np.uint8)}


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return [0.0, 0.0, 0.0, 0.0]  # refused by the box checks as a box of zero area
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks ``[n, h, w]`` as COCO RLE (pycocotools; ``counts`` as text, JSON-ready)."""
    from pycocotools import mask as mask_utils

    out = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
    return out


def decode_mask(rle: dict, size: tuple[int, int] | None = None) -> np.ndarray:
    """A COCO RLE mask as uint8 ``[h, w]``, resized (nearest) to ``size`` when given."""
    from pycocotools import mask as mask_utils

    from transferkit.tasks.segmentation import resize_mask

    counts = rle["counts"]
    mask = mask_utils.decode({"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str)
                              else counts})
    return resize_mask(mask, size) if size is not None else mask


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    from transferkit.tasks.segmentation import resize_mask

    return torch.from_numpy(np.stack([resize_mask(m, size) for m in masks]) if len(masks)
                            else np.zeros((0, *size), dtype=np.uint8))


class InstanceSegmentation(Detection):
    """A box, a class and a mask per object: Mask R-CNN on a feature pyramid; COCO mask mAP@.5."""

    name = "instance-segmentation"
    primary_metric = "mask_map_50"
    head = "mask-rcnn"
    heads = ("mask-rcnn",)
    target_kind = "instance masks"
    pipeline_tags = {"image": "image-segmentation"}
    exportable = False
    export_note = ("Mask R-CNN runs NMS on its region proposals before its second stage, so no graph stops before a "
                   "data-dependent selection (serve the bundle itself).")
    export_compares_predictions = False
    metric_names = ("mask_map_50", "mask_map", "mask_map_75", "box_map_50", "box_map", "mask_ap_<class>")

    # -- targets ---------------------------------------------------------------
    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        rows = super().check_targets(targets, label_names, where)
        out = []
        for i, (t, row) in enumerate(zip(targets, rows)):
            if "masks" not in t:
                raise DataError(f"{where}: the target of image {i + 1} has no masks; instance segmentation needs a "
                                "mask per object (transferkit.tasks.instance_segmentation.instance_target).")
            masks = np.asarray(t["masks"])
            h, w = row["size"]
            if masks.ndim != 3 or masks.shape[1:] != (h, w) or len(masks) != len(row["labels"]):
                raise DataError(f"{where}: image {i + 1} has {len(row['labels'])} objects in a {w}x{h} image but masks "
                                f"of shape {masks.shape}; expected ({len(row['labels'])}, {h}, {w}).")
            empty = [k + 1 for k, m in enumerate(masks) if not m.any()]
            if empty:
                raise DataError(f"{where}: image {i + 1}, object {empty[0]} has an empty mask.")
            out.append({**row, "masks": (masks > 0).astype(np.uint8)})
        return _object_array(out)

    def target_bytes(self, targets: np.ndarray) -> bytes:
        return super().target_bytes(targets) + b"|" + b"|".join(np.packbits(t["masks"]).tobytes() for t in targets)

    def collate_targets(self, targets: np.ndarray, inputs: Any) -> list[dict]:
        """Boxes scaled and masks resized (nearest) to the model input."""
        size = tuple(int(s) for s in inputs.shape[-2:])
        return [{**row, "masks": _resize_masks(t["masks"], size)}
                for row, t in zip(super().collate_targets(targets, inputs), targets)]

    def augment(self, inputs: Any, targets: Any) -> tuple[Any, Any]:
        """Flip, zoom and shift each image with its boxes and its objects' masks."""
        images, boxes, _ = spatial_augment(inputs, boxes=targets)
        return images, boxes

    # -- outputs ---------------------------------------------------------------
    def postprocess(self, outputs: Any, inputs: Any = None) -> np.ndarray:
        """Per image: detection's ``boxes`` (fractions), ``scores``, ``labels``, and ``masks``: COCO RLE at the model
        input's size (:data:`MASK_THRESHOLD` on the pasted probabilities)."""
        detections = outputs.detections()
        rows = _rows(detections, outputs.image_size)
        for row, d in zip(rows, detections):
            row["masks"] = encode_masks((d["masks"] >= MASK_THRESHOLD).cpu().numpy())
        return rows

    def objects(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None,
                min_score: float = 0.0) -> list[list[dict]]:
        """Detection's objects with ``"mask"``: COCO RLE (``{"size": [h, w], "counts": ...}``) in the image's
        pixels (the model input's when the items are not given)."""
        result = []
        for i, (row, objects) in enumerate(zip(outputs, super().objects(outputs, label_names, items, min_score))):
            size = image_size(items[i], i) if items is not None else None
            order = [j for j in np.argsort(-row["scores"], kind="stable") if row["scores"][j] >= min_score]
            for obj, j in zip(objects, order):
                mask = decode_mask(row["masks"][j], size)
                obj["mask"] = encode_masks(mask[None])[0]
            result.append(objects)
        return result

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        """Objects scoring at least :data:`~transferkit.tasks.detection.SHOW_SCORE`, each with its mask (RLE)."""
        return self.objects(outputs, label_names, items, SHOW_SCORE)

    # -- evaluation ------------------------------------------------------------
    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        """COCO evaluation of the masks and the boxes (torchmetrics, pycocotools backend) in each image's pixels."""
        keys = {"mask_map_50": "segm_map_50", "mask_map": "segm_map", "mask_map_75": "segm_map_75",
                "box_map_50": "bbox_map_50", "box_map": "bbox_map"}
        return coco_metrics(y_true, outputs, label_names, keys, ("segm_map_per_class", "mask_ap_"),
                            iou_type=("bbox", "segm"), mask=decode_mask)

    # -- shipping --------------------------------------------------------------
    def export_refusal(self, head: dict) -> str | None:
        return self.export_note
