"""``detection``: boxes and classes of the objects in an image, scored by COCO mAP.

Targets are one dict per image (:func:`box_target`): ``boxes`` ``[n, 4]`` (x1, y1, x2, y2 in the image's
own pixels), ``labels`` ``[n]`` (indices into ``label_names``, no background class) and ``size``
``(height, width)`` of the image they refer to. The backbone resizes every image to its square input;
:meth:`Detection.collate_targets` scales the boxes the same way, and predictions come back in each
image's own pixels (:meth:`Detection.decode` reads the image's size from the item).

The model is a torchvision detector over torchvision's FPN on the backbone's feature pyramid: FCOS by default
(the ``fcos`` head, :mod:`transferkit.tasks.dense_heads`), or RetinaNet or Faster R-CNN (``retinanet``,
``faster-rcnn``: :mod:`transferkit.tasks.detectors`), chosen with the strategies' ``detector`` option
(:data:`DETECTORS`). Training batches are augmented with boxes following the
image (torchvision transforms v2 on ``tv_tensors.BoundingBoxes``): a horizontal flip and a mild zoom and
shift, after which boxes cut below 2 px are dropped.

Metrics come from torchmetrics' ``MeanAveragePrecision`` with the pycocotools backend (the COCO
evaluation itself): ``map`` (mAP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100`` and per-class AP
``ap_<class>`` (@[.5:.95]). The primary metric is ``map_50``: on small images and few training
images the question is whether objects are found and named; mAP@[.5:.95] also rewards pixel-exact
boxes, which at 128-192 px input (a stride-8 finest level) moves with a pixel or two of error.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from transferkit.errors import DataError
from transferkit.tasks.base import Task

#: Boxes smaller than this (input pixels) after augmentation are dropped, as torchvision's SanitizeBoundingBoxes does.
MIN_BOX_SIDE = 2.0
#: ``predict`` and ``serve`` leave out objects scoring under this; evaluation scores every detection (COCO's
#: mAP needs the low-scoring ones, down to the head's own 0.05 threshold).
SHOW_SCORE = 0.3
#: The detectors (heads) detection offers, the default first: the fine-tuning strategies' ``detector`` option.
DETECTORS = ("fcos", "retinanet", "faster-rcnn")
#: Detectors of other tasks, by the task that offers them (Mask R-CNN needs a mask per object).
OTHER_DETECTORS = {"mask-rcnn": "instance-segmentation"}
#: Those whose graph exports (stopping before the selection, which runs outside it: :func:`select_detections`).
EXPORTABLE_DETECTORS = ("fcos", "retinanet")


def box_target(boxes: Any, labels: Any, size: tuple[int, int]) -> dict:
    """One image's detection target: ``{"boxes": float32 [n, 4] xyxy pixels, "labels": int64 [n], "size": (h, w)}``."""
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64).reshape(-1), "size": (int(size[0]), int(size[1]))}


def check_boxes(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int], num_classes: int,
                where: str, what: str = "box") -> None:
    """Refuse a box outside its image, of zero area, not finite, or with a class outside ``0..num_classes-1``.

    ``where`` names the image (``file.json, image 'a.jpg'``); each message adds the box's index and values.
    """
    h, w = size
    if h <= 0 or w <= 0:
        raise DataError(f"{where}: image size {w}x{h} is not positive.")
    tol = 0.5  # annotation tools round to half pixels
    for j, (box, label) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = (float(v) for v in box)
        shown = f"{what} {j + 1} [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if not np.isfinite(box).all():
            raise DataError(f"{where}: {shown} is not finite.")
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: {shown} has zero area (x2 must exceed x1 and y2 exceed y1; boxes are "
                            f"x1, y1, x2, y2).")
        if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
            raise DataError(f"{where}: {shown} lies outside the {w}x{h} image.")
        if num_classes and not 0 <= int(label) < num_classes:
            raise DataError(f"{where}: {shown} has class index {int(label)}; there are {num_classes} classes "
                            f"(0..{num_classes - 1}).")


def image_size(item: Any, index: int = 0) -> tuple[int, int]:
    """``(height, width)`` of a raw image item (a path, a PIL image, an array) without decoding its pixels."""
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    if hasattr(item, "size") and hasattr(item, "mode"):  # PIL
        return int(item.size[1]), int(item.size[0])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(os.fspath(item)) as im:
            return int(im.size[1]), int(im.size[0])
    except (OSError, UnidentifiedImageError, TypeError) as exc:
        raise DataError(f"Cannot read the size of image {index} ({item!r:.80}): {exc}") from None


def spatial_augment(inputs: torch.Tensor, boxes: list[dict] | None = None, masks: torch.Tensor | None = None,
                    flip: float = 0.5, scale: tuple[float, float] = (0.8, 1.2), translate: float = 0.1):
    """A horizontal flip and a mild zoom/shift of each image, with its boxes and/or mask following.

    torchvision transforms v2 on ``tv_tensors`` (``BoundingBoxes``, ``Mask``: masks resample by nearest
    neighbour); boxes left under :data:`MIN_BOX_SIDE` px are dropped with their labels (and their objects'
    masks, where a box dict holds ``masks [n, H, W]``: instance segmentation; padding 0 there). Returns
    ``(inputs, boxes, masks)``; masks are ``[B, H, W]`` class indices (padding: 255, ignored).
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    instance = boxes is not None and any("masks" in b for b in boxes)
    transform = v2.Compose([v2.RandomHorizontalFlip(flip),
                            v2.RandomAffine(degrees=0, translate=(translate, translate), scale=scale,
                                            fill={tv_tensors.Image: 0.0, tv_tensors.Mask: 0 if instance else 255,
                                                  "others": 0})])
    size = tuple(inputs.shape[-2:])
    out_images, out_boxes, out_masks = [], [], []
    for i in range(len(inputs)):
        sample: dict = {"image": tv_tensors.Image(inputs[i])}
        if boxes is not None:
            sample["boxes"] = tv_tensors.BoundingBoxes(boxes[i]["boxes"], format="XYXY", canvas_size=size)
            sample["labels"] = boxes[i]["labels"]
            if instance:
                sample["objects"] = tv_tensors.Mask(boxes[i]["masks"])
        if masks is not None:
            sample["mask"] = tv_tensors.Mask(masks[i])
        sample = transform(sample)
        out_images.append(sample["image"].as_subclass(torch.Tensor))
        if boxes is not None:
            b = sample["boxes"].as_subclass(torch.Tensor)
            keep = ((b[:, 2] - b[:, 0]) >= MIN_BOX_SIDE) & ((b[:, 3] - b[:, 1]) >= MIN_BOX_SIDE)
            out_boxes.append({"boxes": b[keep], "labels": sample["labels"][keep]})
            if instance:
                out_boxes[-1]["masks"] = sample["objects"].as_subclass(torch.Tensor)[keep]
        if masks is not None:
            out_masks.append(sample["mask"].as_subclass(torch.Tensor))
    return (torch.stack(out_images), out_boxes if boxes is not None else None,
            torch.stack(out_masks) if masks is not None else None)


def coco_inputs(y_true: Any, outputs: Any, mask=None) -> tuple[list[dict], list[dict]]:
    """torchmetrics ``MeanAveragePrecision`` inputs: predicted boxes (fractions of the image) scaled to its pixels,
    gold boxes as given; with ``mask(rle, (h, w))``, each side's masks too (predictions hold RLE, gold arrays)."""
    if len(y_true) != len(outputs):
        raise DataError(f"{len(y_true)} annotated images but {len(outputs)} predictions.")
    preds, gold = [], []
    for t, p in zip(y_true, outputs):
        h, w = t["size"]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        preds.append({"boxes": torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4) * scale,
                      "scores": torch.as_tensor(p["scores"], dtype=torch.float32),
                      "labels": torch.as_tensor(p["labels"], dtype=torch.long)})
        gold.append({"boxes": torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4),
                     "labels": torch.as_tensor(t["labels"], dtype=torch.long)})
        if mask is not None:
            masks = [mask(rle, (h, w)) for rle in p["masks"]]
            preds[-1]["masks"] = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)).bool()
            gold[-1]["masks"] = torch.as_tensor(t["masks"]).bool()
    return preds, gold


def coco_metrics(y_true: Any, outputs: Any, label_names: Sequence[str] | None, keys: dict[str, str],
                 per_class: tuple[str, str], iou_type: str | tuple[str, ...] = "bbox", mask=None) -> dict:
    """COCO evaluation with torchmetrics' ``MeanAveragePrecision`` (pycocotools backend): ``keys`` maps our metric
    names to its result's (0 where nothing can be scored), ``per_class`` names its per-class result and our prefix
    for each class's AP; ``n`` images and ``objects`` gold objects besides."""
    from torchmetrics.detection import MeanAveragePrecision

    names = list(label_names or [])
    preds, gold = coco_inputs(y_true, outputs, mask)
    out = {k: 0.0 for k in keys}
    out.update({"n": len(gold), "objects": int(sum(len(g["labels"]) for g in gold))})
    if not gold or not out["objects"]:
        return out
    metric = MeanAveragePrecision(box_format="xyxy", iou_type=iou_type, class_metrics=True, backend="pycocotools")
    metric.update(preds, gold)
    result = metric.compute()
    for ours, theirs in keys.items():
        out[ours] = max(0.0, float(result[theirs]))  # -1: nothing to score
    classes = result["classes"].reshape(-1).tolist()
    for c, ap in zip(classes, result[per_class[0]].reshape(-1).tolist()):
        if ap >= 0:
            out[f"{per_class[1]}{names[c] if c < len(names) else c}"] = float(ap)
    return out


def _object_array(rows: list) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


def _rows(detections: list[dict], image_size: tuple[int, int]) -> np.ndarray:
    """Detections in input pixels -> per image ``boxes`` as fractions of the input (clamped to it), ``scores``,
    ``labels``."""
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    return _object_array([{"boxes": (d["boxes"].float().cpu() / scale).clamp(0, 1).numpy(),
                           "scores": d["scores"].float().cpu().numpy(),
                           "labels": d["labels"].long().cpu().numpy()} for d in detections])


class Detection(Task):
    """Boxes and classes of objects per image: FCOS, RetinaNet or Faster R-CNN on a feature pyramid; COCO mAP@.5."""

    name = "detection"
    primary_metric = "map_50"
    feature_kind = "pyramid"
    head = DETECTORS[0]
    heads = DETECTORS
    target_kind = "boxes"
    spatial_targets = True
    pipeline_tags = {"image": "object-detection"}
    export_compares_predictions = True
    metric_names = ("map_50", "map", "map_75", "mar_100", "ap_<class>")
    #: A detector's head and neck start from random weights: the default 20 epochs are 40 optimizer steps on 50
    #: images, far too few. On ``emoji-scenes`` (50 images, 128 px, Lite0 + FCOS fine-tuned, batch 8) mAP@.5 was
    #: 39.1 after 700 images shown (repeats counted), 78.8 after 2,150 and 80.5 after 4,300 (one seed;
    #: benchmarks/results/dense_vision/convergence).
    min_train_examples = 4800
    #: Detection recipes train on a few images per step. On ``emoji-scenes`` (50 images, 128 px, 3 seeds, paired)
    #: fine-tuning reached 79.4 mAP@.5 at batch 8 against 72.5 at batch 32, and every other arm gained too
    #: (benchmarks/results/dense_vision/against.md).
    train_batch_size = 8

    # -- targets ---------------------------------------------------------------
    def check_targets(self, targets: Any, label_names: Sequence[str] | None, where: str) -> np.ndarray:
        n = len(label_names or [])
        rows = []
        for i, t in enumerate(targets):
            if not isinstance(t, dict) or not {"boxes", "labels", "size"} <= set(t):
                raise DataError(f"{where}: the target of image {i + 1} must be a dict with boxes, labels and size "
                                f"(transferkit.tasks.detection.box_target); got {t!r:.80}.")
            try:
                row = box_target(t["boxes"], t["labels"], t["size"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}: the target of image {i + 1} is not boxes [n, 4] and labels [n]: {exc}") from None
            if len(row["boxes"]) != len(row["labels"]):
                raise DataError(f"{where}: image {i + 1} has {len(row['boxes'])} boxes but {len(row['labels'])} labels.")
            check_boxes(row["boxes"], row["labels"], row["size"], n, f"{where}, image {i + 1}")
            rows.append(row)
        return _object_array(rows)

    def target_bytes(self, targets: np.ndarray) -> bytes:
        return b"|".join(t["boxes"].tobytes() + t["labels"].tobytes() + str(t["size"]).encode() for t in targets)

    def label_counts(self, targets: np.ndarray, num_labels: int) -> np.ndarray:
        """Images holding at least one object of each class."""
        counts = np.zeros(num_labels, dtype=np.int64)
        for t in targets:
            counts[np.unique(t["labels"][t["labels"] < num_labels])] += 1
        return counts

    def remap_labels(self, targets: np.ndarray, mapping: np.ndarray) -> np.ndarray:
        return _object_array([{**t, "labels": mapping[t["labels"]]} for t in targets])

    def collate_targets(self, targets: np.ndarray, inputs: Any) -> list[dict]:
        """Boxes scaled to the model input (the backbone resized each image to its square input)."""
        h, w = (int(s) for s in inputs.shape[-2:])
        out = []
        for t in targets:
            scale = torch.tensor([w / t["size"][1], h / t["size"][0]] * 2, dtype=torch.float32)
            out.append({"boxes": torch.from_numpy(t["boxes"]).float() * scale,
                        "labels": torch.from_numpy(t["labels"]).long()})
        return out

    def augment(self, inputs: Any, targets: Any) -> tuple[Any, Any]:
        """Flip, zoom and shift each image with its boxes (:func:`spatial_augment`)."""
        images, boxes, _ = spatial_augment(inputs, boxes=targets)
        return images, boxes

    # -- model -----------------------------------------------------------------
    def make_head(self, spec, num_outputs: int, *, dropout: float = 0.0, head: str | None = None,
                  **options: Any) -> torch.nn.Module:
        """The detector ``head`` (one of :data:`DETECTORS`; default ``fcos``) on the pyramid's channels and strides."""
        from transferkit.tasks.heads import build_head

        return build_head(self.choose_head(head), (spec.channels, spec.strides), num_outputs, dropout=dropout,
                          **options)

    def loss(self, outputs: Any, targets: Any, *, label_smoothing: float = 0.0) -> torch.Tensor:
        return outputs.loss(targets)

    # -- outputs ---------------------------------------------------------------
    def postprocess(self, outputs: Any, inputs: Any = None) -> np.ndarray:
        """Per image: ``boxes`` ``[k, 4]`` as fractions of the image's width and height, ``scores``, ``labels``."""
        return _rows(outputs.detections(), outputs.image_size)

    def concat(self, parts: list[np.ndarray], num_outputs: int) -> np.ndarray:
        return _object_array([row for part in parts for row in part])

    def objects(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None,
                min_score: float = 0.0) -> list[list[dict]]:
        """Per image: ``{"label", "score", "box": [x1, y1, x2, y2]}`` in the image's pixels (fractions of its
        width and height when the items are not given), best first."""
        names = list(label_names or [])
        result = []
        for i, row in enumerate(outputs):
            h, w = image_size(items[i], i) if items is not None else (1, 1)
            scale = np.array([w, h, w, h], dtype=np.float64)
            order = np.argsort(-row["scores"], kind="stable")
            result.append([{"label": names[int(row["labels"][j])] if names else int(row["labels"][j]),
                            "score": round(float(row["scores"][j]), 6),
                            "box": [round(float(v), 2) for v in row["boxes"][j] * scale]}
                           for j in order if row["scores"][j] >= min_score])
        return result

    def decode(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list:
        """Objects scoring at least :data:`SHOW_SCORE` per image (:meth:`objects`)."""
        return self.objects(outputs, label_names, items, SHOW_SCORE)

    def records(self, outputs: np.ndarray, label_names: Sequence[str] | None, items: Sequence | None = None) -> list[dict]:
        return [{"objects": objs} for objs in self.objects(outputs, label_names, items, SHOW_SCORE)]

    def report_figure(self, items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None,
                      k: int = 4) -> tuple[str, str, list] | None:
        """Up to ``k`` evaluated images, most errors first: gold boxes beside the predicted ones
        (:func:`~transferkit.tasks.dense_figures.detection_rows`)."""
        from transferkit.tasks.dense_figures import MATCH_IOU, detection_rows

        rows = detection_rows(items, y_true, outputs, label_names, k, SHOW_SCORE)
        return ("Predictions on evaluated images",
                f"{len(rows)} of the {len(y_true)} evaluated images, those with the most errors first: the gold "
                f"boxes on the left, the predicted boxes scoring at least {SHOW_SCORE} on the right (class and "
                f"score). An error is a gold box that no prediction of its class overlaps by an IoU of "
                f"{MATCH_IOU} or more, or a prediction that overlaps none.", rows)

    # -- evaluation ------------------------------------------------------------
    def metrics(self, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
        """COCO evaluation (torchmetrics ``MeanAveragePrecision``, pycocotools backend) in each image's pixels."""
        return coco_metrics(y_true, outputs, label_names, {k: k for k in ("map_50", "map", "map_75", "mar_100")},
                            ("map_per_class", "ap_"))

    # -- shipping --------------------------------------------------------------
    # The exported graph stops at every location's (FCOS) or anchor's (RetinaNet) decoded box and class scores:
    # torchvision's selection (score threshold, top-k per level, batched NMS) has data-dependent shapes that
    # torch.export cannot capture, and the TorchScript-based exporter unrolls its loop over images (fixing the
    # batch size), so it runs outside the graph (select_detections), with torchvision's own batched_nms. Faster
    # R-CNN runs NMS on its proposals between its two stages, so no graph stops before a selection: refused.
    def export_postprocess(self) -> str:
        """``detection-nms``: score threshold, top-k per level and class-wise NMS, outside the graph (the same
        steps for FCOS and RetinaNet)."""
        return "detection-nms"

    def export_refusal(self, head: dict) -> str | None:
        """Faster R-CNN: NMS on its proposals runs between its two stages, inside what would be the graph."""
        kind = head.get("kind") or self.head
        if kind in EXPORTABLE_DETECTORS:
            return None
        if kind == "source-detector":
            return ("a pre-trained detector's cascade (mtcnn:: an image pyramid, NMS between its stages) has no graph "
                    "that stops before a data-dependent selection; serve or predict with the bundle instead.")
        return (f"the {kind} detector runs NMS on its region proposals before its second stage, so its graph cannot "
                f"stop before a data-dependent selection. Detectors that export: {', '.join(EXPORTABLE_DETECTORS)} "
                f"(fit with -o detector={EXPORTABLE_DETECTORS[0]}).")

    def export_forward(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``boxes [B, L, 4]`` as fractions of the input and ``scores [B, L, C]``, before thresholding and NMS
        (``DetectionOutputs.decoded``). Fractions keep the parity check's absolute tolerance meaningful at any input
        size (in pixels, float error grows with the coarsest stride), and IoU, hence NMS, does not change."""
        boxes, scores = outputs.decoded()
        h, w = outputs.image_size
        return boxes / boxes.new_tensor([w, h, w, h]), scores

    def export_outputs(self, model: torch.nn.Module) -> list[dict]:
        """``boxes [batch, locations, 4]`` and ``scores [batch, locations, classes]`` (RetinaNet: a location per
        anchor)."""
        classes = len(model.label_names or []) or model.head.num_classes
        return [{"name": "boxes", "shape": ["batch", "locations", 4], "dtype": "float32",
                 "meaning": "every location's box, x1, y1, x2, y2 as fractions of the input's width and height "
                            "(clipped to 0..1), before thresholding and NMS; locations = sum(locations_per_level) "
                            "in labels.json (RetinaNet: one per anchor)"},
                {"name": "scores", "shape": ["batch", "locations", classes], "dtype": "float32",
                 "meaning": f"every location's score per class, {model.head.score_meaning}; "
                            "detections = detection-nms(boxes, scores) with labels.json's postprocess_options"}]

    def export_postprocess_options(self, model: torch.nn.Module, inputs: Any) -> dict:
        """The detector's own selection settings, the locations per pyramid level and the input size."""
        from transferkit.tasks.heads import describe_head

        with torch.no_grad():
            raw = model(inputs)
        detector = raw.head.detector
        return {"detector": describe_head(model.head)["kind"],
                "score_thresh": float(detector.score_thresh), "topk_candidates": int(detector.topk_candidates),
                "nms_thresh": float(detector.nms_thresh), "detections_per_img": int(detector.detections_per_img),
                "locations_per_level": [int(n) for n in raw.num_anchors_per_level],
                "input_size": [int(v) for v in raw.image_size],
                "steps": "per image and per level (locations_per_level splits the locations, finest level first): "
                         "the (location, class) pairs scoring above score_thresh, the best topk_candidates of them; "
                         "then over all levels class-wise NMS (torchvision.ops.batched_nms, IoU > nms_thresh "
                         "suppressed) and the best detections_per_img. Boxes are fractions of the input: multiply "
                         "by the image's own width and height."}

    def apply_export_postprocess(self, outputs: Any, inputs: Any = None, options: dict | None = None) -> np.ndarray:
        """Thresholding, top-k and NMS on the graph's ``{"boxes", "scores"}`` (:func:`select_detections`)."""
        from transferkit.errors import BundleError
        from transferkit.tasks.dense_heads import select_detections

        keys = ("score_thresh", "topk_candidates", "nms_thresh", "detections_per_img", "locations_per_level")
        if not isinstance(outputs, dict) or not {"boxes", "scores"} <= set(outputs):
            raise BundleError("A detection export's graph must return boxes and scores; re-export the bundle.")
        missing = [k for k in keys if k not in (options or {})]
        if missing:
            raise BundleError(f"labels.json of this detection export lacks postprocess_options {', '.join(missing)}; "
                              "re-export the bundle (transferkit export).")
        boxes, scores = (torch.from_numpy(np.asarray(outputs[k], dtype=np.float32)) for k in ("boxes", "scores"))
        detections = select_detections(boxes, scores, options["locations_per_level"],
                                       **{k: options[k] for k in keys[:4]})
        return _rows(detections, (1, 1))  # the boxes are fractions of the input already

    def compare_outputs(self, expected: np.ndarray, actual: np.ndarray, tolerance: float) -> dict:
        """Per image the same number of detections, each PyTorch detection matched by an exported one of the same
        class whose box (fractions of the image) and score lie within ``tolerance``. Matching ignores order:
        scores within float error of each other may come out in either order."""
        counts, matched, box_diff, score_diff = [], 0, 0.0, 0.0
        for a, b in zip(expected, actual):
            counts.append((len(a["scores"]), len(b["scores"])))
            free = np.ones(len(b["scores"]), dtype=bool)
            for box, score, label in zip(a["boxes"], a["scores"], a["labels"]):
                cand = np.flatnonzero(free & (b["labels"] == label))
                if not len(cand):
                    continue
                d_box = np.abs(b["boxes"][cand] - box).max(1)
                d_score = np.abs(b["scores"][cand] - score)
                best = int(np.argmin(np.maximum(d_box, d_score)))
                if max(d_box[best], d_score[best]) <= tolerance:
                    free[cand[best]] = False
                    matched += 1
                    box_diff, score_diff = max(box_diff, float(d_box[best])), max(score_diff, float(d_score[best]))
        total = sum(c[0] for c in counts)
        same = len(expected) == len(actual) and all(x == y for x, y in counts)
        return {"images": len(expected), "detections": total, "matched": matched, "same_count": same,
                "max_box_diff": box_diff, "max_score_diff": score_diff, "equal": same and matched == total,
                "summary": f"{matched} of {total} detections on {len(expected)} images matched within {tolerance:.0e} "
                           f"(boxes within {box_diff:.1e} of the image size, scores within {score_diff:.1e})"
                           + ("" if same else f"; detections per image (PyTorch, export): {counts}")}
