"""The report's pictures of dense tasks: boxes or masks drawn on evaluated images, ground truth beside prediction.

:meth:`Detection.report_figure <transferkit.tasks.detection.Detection.report_figure>` and
:meth:`Segmentation.report_figure <transferkit.tasks.segmentation.Segmentation.report_figure>` return these
rows; the model card sets each row's two pictures side by side (``plots/predictions.png``). Drawing is
torchvision's (``draw_bounding_boxes``, ``draw_segmentation_masks``); this module picks the images, worst
first, and the colours.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: One colour per class (cycled): the same class has the same colour in both pictures of a row.
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0))
#: A gold box is found by a predicted box of its class that overlaps it at least this much (IoU), as mAP@.5 asks.
MATCH_IOU = 0.5


def _colour(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def _picture(item: Any, index: int) -> torch.Tensor:
    """The item as ``[3, H, W]`` uint8, in its own size."""
    from transferkit.backbones.base import load_rgb

    return torch.from_numpy(np.array(load_rgb(item, index), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _name(label: int, names: Sequence[str]) -> str:
    return names[label] if label < len(names) else str(label)


def _boxes(picture: torch.Tensor, boxes: np.ndarray, labels: np.ndarray, texts: list[str]) -> np.ndarray:
    from torchvision.utils import draw_bounding_boxes

    if len(boxes):
        picture = draw_bounding_boxes(picture, torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      labels=texts, colors=[_colour(c) for c in labels],
                                      width=1 if min(picture.shape[1:]) < 100 else 2)
    return picture.permute(1, 2, 0).numpy()


def _shown(predicted: dict, size: tuple[int, int], min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The predictions scoring at least ``min_score``: boxes in pixels of an image of ``size`` (h, w), labels,
    scores."""
    h, w = size
    keep = np.asarray(predicted["scores"]) >= min_score
    boxes = np.asarray(predicted["boxes"], dtype=np.float32).reshape(-1, 4)[keep] * np.array([w, h, w, h])
    return boxes, np.asarray(predicted["labels"])[keep], np.asarray(predicted["scores"])[keep]


def detection_errors(gold: dict, predicted: dict, size: tuple[int, int], min_score: float) -> int:
    """Gold boxes no shown prediction of their class finds (IoU >= :data:`MATCH_IOU`, greedy, best score first)
    plus shown predictions that find none: what makes an image worth looking at."""
    from torchvision.ops import box_iou

    boxes, labels, scores = _shown(predicted, size, min_score)
    gold_boxes = np.asarray(gold["boxes"], dtype=np.float32).reshape(-1, 4)
    gold_labels = np.asarray(gold["labels"]).reshape(-1)
    if not len(boxes) or not len(gold_boxes):
        return len(boxes) + len(gold_boxes)
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(gold_boxes)).numpy()
    iou[labels[:, None] != gold_labels[None, :]] = 0.0
    found = np.zeros(len(gold_boxes), bool)
    matched = 0
    for p in np.argsort(-scores, kind="stable"):
        free = np.where(~found & (iou[p] >= MATCH_IOU))[0]
        if len(free):
            found[free[np.argmax(iou[p][free])]] = True
            matched += 1
    return int((~found).sum()) + len(boxes) - matched


def detection_rows(items: Sequence, y_true: Any, outputs: Any, label_names: Sequence[str] | None, k: int,
                   min_score: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to ``k`` images, most errors first (:func:`detection_errors`; ties in order): gold boxes on the left,
    predicted boxes scoring at least ``min_score`` on the right, labelled with the class (and score)."""
    names = [str(n) for n in (label_names or [])]
    errors = [detection_errors(t, p, t["size"], min_score) for t, p in zip(y_true, outputs)]
    rows = []
    for i in np.argsort(-np.asarray(errors), kind="stable")[:k]:
        t, p = y_true[i], outputs[i]
        picture = _picture(items[i], int(i))
        gold_labels = np.asarray(t["labels"]).reshape(-1)
        truth = _boxes(picture, np.asarray(t["boxes"]).reshape(-1, 4), gold_labels,
                       [_name(int(c), names) for c in gold_labels])
        boxes, labels, scores = _shown(p, tuple(picture.shape[1:]), min_score)
        shown = _boxes(picture, boxes, labels, [f"{_name(int(c), names)} {s:.2f}" for c, s in zip(labels, scores)])
        rows.append((f"image {int(i)} ({errors[i]} error{'s' if errors[i] != 1 else ''})", truth, shown))
    return rows


def _masks(picture: torch.Tensor, mask: np.ndarray, drawn: list[int]) -> np.ndarray:
    from torchvision.utils import draw_segmentation_masks

    present = [c for c in drawn if (mask == c).any()]
    if present:
        stack = torch.from_numpy(np.stack([mask == c for c in present]))
        picture = draw_segmentation_masks(picture, stack, alpha=0.55, colors=[_colour(c) for c in present])
    return picture.permute(1, 2, 0).numpy()


def segmentation_rows(items: Sequence, y_true: Any, masks: Sequence[np.ndarray], label_names: Sequence[str] | None,
                      k: int, ignore: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to ``k`` images, lowest pixel accuracy first (pixels marked ``ignore`` left out): the gold mask on the
    left, the predicted one on the right (``masks``: in each image's own size), every class but one named
    ``background`` painted in its colour."""
    names = [str(n) for n in (label_names or [])]
    count = max([len(names)] + [int(np.max(m, initial=0)) + 1 for m in masks])
    drawn = [c for c in range(count) if _name(c, names).lower() not in ("background", "_background_")]
    accuracy = []
    for t, m in zip(y_true, masks):
        valid = np.asarray(t) != ignore
        accuracy.append(float((np.asarray(t)[valid] == m[valid]).mean()) if valid.any() else 1.0)
    rows = []
    for i in np.argsort(np.asarray(accuracy), kind="stable")[:k]:
        picture = _picture(items[i], int(i))
        rows.append((f"image {int(i)} ({100 * accuracy[i]:.1f}% of pixels right)",
                     _masks(picture, np.asarray(y_true[i]), drawn), _masks(picture, masks[i], drawn)))
    return rows
