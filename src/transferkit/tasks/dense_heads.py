"""Heads on a feature pyramid: ``fcos`` (object detection) and ``fpn-seg`` (semantic segmentation).

The other detectors (``retinanet``, ``faster-rcnn``) are in :mod:`transferkit.tasks.detectors`, on the same
:class:`PyramidNeck` and :class:`DetectionOutputs` contract.

Both read a backbone's pyramid (``FeatureSpec(kind="pyramid", channels, strides)``, finest level
first) through torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on its last three
levels. The only glue written here is :class:`PyramidNeck`, which plays the part of torchvision's
``BackboneWithFPN`` for a pyramid that is already computed; everything else is torchvision's:

* ``fcos``: torchvision's FCOS (Tian et al., ICCV 2019, https://arxiv.org/abs/1904.01355): its head
  (``FCOSHead``: GroupNorm conv towers, classification, box regression and centre-ness), anchor
  generator (one point per location), loss (``FCOS.compute_loss``: centre sampling, focal loss, GIoU)
  and post-processing (``FCOS.postprocess_detections``: score threshold, top-k, batched NMS). FCOS is
  the default over RetinaNet: one location instead of nine anchors per position, so its head costs
  a ninth on CPU at the same width. An exported detector stops at :meth:`DetectionOutputs.decoded`
  (every location's box and scores); :func:`select_detections` is the same selection outside a graph.
* ``fpn-seg``: the semantic-segmentation branch of Panoptic FPN (Kirillov et al., CVPR 2019,
  https://arxiv.org/abs/1901.02446): each FPN level is upsampled to the finest kept level, summed,
  then a 3x3 conv and a 1x1 classifier; logits are upsampled to the input size.

The heads are sized for CPU by default (``fpn_channels=64``, two conv layers per FCOS tower instead
of four at 256 channels); both are options, kept in the bundle's head description.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.tasks.heads import register_head


class PyramidNeck(nn.Module):
    """torchvision's FPN on the last ``levels`` maps of a backbone pyramid (plus P6/P7 for detection).

    Args:
        channels: channels of every pyramid level, finest first.
        strides: their strides in input pixels.
        out_channels: FPN width.
        levels: how many of the coarsest levels the FPN reads (C3-C5 in the papers).
        extra: add P6 and P7 (stride-2 convolutions on P5), as FCOS and RetinaNet do.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int = 64, levels: int = 3,
                 extra: bool = True):
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"a pyramid needs channels and strides per level; got {channels} and {strides}")
        self.keep = list(range(max(0, len(channels) - levels), len(channels)))
        self.out_channels = int(out_channels)
        self.strides = [int(strides[i]) for i in self.keep]
        if extra:
            self.strides += [self.strides[-1] * 2, self.strides[-1] * 4]
        self.fpn = FeaturePyramidNetwork([int(channels[i]) for i in self.keep], self.out_channels,
                                         extra_blocks=LastLevelP6P7(self.out_channels, self.out_channels)
                                         if extra else None)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.named(pyramid).values())

    def named(self, pyramid: Sequence[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """The FPN maps by name (``"0"``, ``"1"``, ... finest first, then ``"p6"``, ``"p7"``), as torchvision's
        region proposal network and RoI pooling take them."""
        maps = OrderedDict((str(k), pyramid[i].contiguous()) for k, i in enumerate(self.keep))
        return self.fpn(maps)


class _NeckChannels(nn.Module):
    """What torchvision's detector classes ask of a backbone (``out_channels``); it holds no weights, because
    :class:`FCOSHead` runs the detector's parts on a pyramid it is given instead."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels


class DetectionOutputs:
    """What the ``fcos`` head returns: the raw per-location outputs and what the loss and decoding need
    (``retinanet``'s :class:`~transferkit.tasks.detectors.AnchorOutputs` changes the loss and the scores).

    Training and prediction stay explicit (not torchvision's mode-dependent return): :meth:`loss` is the
    detector's loss against targets, :meth:`detections` its post-processed boxes, both from the same
    forward pass; :meth:`decoded` is what an exported graph returns (boxes and scores before NMS).

    Attributes:
        head_outputs: ``cls_logits [B, L, C]``, ``bbox_regression [B, L, 4]``, ``bbox_ctrness [B, L, 1]``
            over the ``L`` locations of all levels.
        location_anchors: the ``[L, 4]`` anchor boxes (one per location, as large as its stride), the same
            for every image of the batch (they depend on the input size only).
        num_anchors_per_level: locations per level (to split ``L``).
        image_size: ``(H, W)`` of the model input the boxes are in.
    """

    def __init__(self, head: "FCOSHead", head_outputs: dict, location_anchors: torch.Tensor,
                 num_anchors_per_level: list[int], image_size: tuple[int, int]):
        self.head, self.head_outputs, self.location_anchors = head, head_outputs, location_anchors
        self.num_anchors_per_level, self.image_size = num_anchors_per_level, image_size

    def __len__(self) -> int:
        return len(self.head_outputs["cls_logits"])

    @property
    def anchors(self) -> list[torch.Tensor]:
        """Per image, the ``[L, 4]`` anchors, as torchvision's FCOS (and RetinaNet) loss and post-processing take
        them."""
        return [self.location_anchors] * len(self)

    def loss(self, targets: list[dict]) -> torch.Tensor:
        """FCOS's loss (focal classification + GIoU box regression + centre-ness BCE) against ``targets``:
        per image ``{"boxes": [n, 4] xyxy in input pixels, "labels": [n]}``."""
        targets = [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets]
        outputs = {k: v.float() for k, v in self.head_outputs.items()}
        losses = self.head.detector.compute_loss(targets, outputs, self.anchors, self.num_anchors_per_level)
        return sum(losses.values())

    @torch.no_grad()
    def detections(self) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes`` (xyxy in input pixels), ``scores`` and ``labels`` after thresholding and NMS."""
        n = self.num_anchors_per_level
        split = {k: list(v.float().split(n, dim=1)) for k, v in self.head_outputs.items()}
        anchors = [list(a.split(n)) for a in self.anchors]
        return self.head.detector.postprocess_detections(split, anchors, [self.image_size] * len(self))

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every location's box and class scores before thresholding and NMS: ``boxes [B, L, 4]`` (xyxy in input
        pixels, clipped to the input) and ``scores [B, L, C]`` (``sqrt(sigmoid(class) * sigmoid(centre-ness))``).

        The same arithmetic as torchvision's ``FCOS.postprocess_detections`` on every location instead of the
        selected ones; :func:`select_detections` does the rest (what an exported graph leaves outside).
        """
        from torchvision.ops import clip_boxes_to_image

        out = {k: v.float() for k, v in self.head_outputs.items()}
        boxes = self.head.detector.box_coder.decode(out["bbox_regression"], self.location_anchors)
        scores = torch.sqrt(torch.sigmoid(out["cls_logits"]) * torch.sigmoid(out["bbox_ctrness"]))
        return clip_boxes_to_image(boxes, self.image_size), scores


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, locations_per_level: Sequence[int], *,
                      score_thresh: float, topk_candidates: int, nms_thresh: float,
                      detections_per_img: int) -> list[dict[str, torch.Tensor]]:
    """torchvision FCOS's selection on decoded boxes and scores (:meth:`DetectionOutputs.decoded`).

    Per image and per level: the (location, class) pairs scoring above ``score_thresh``, the best
    ``topk_candidates`` of them; then class-wise NMS over all levels (``torchvision.ops.batched_nms``:
    a box overlapping a better one of its class by IoU > ``nms_thresh`` goes) and the best
    ``detections_per_img``: the steps of ``FCOS.postprocess_detections`` in its order, so on the same
    decoded outputs it keeps the same boxes and labels (scores can differ by float rounding: sigmoid runs
    over other shapes there).

    Args:
        boxes: ``[B, L, 4]`` xyxy boxes; scores: ``[B, L, C]``; locations_per_level: splits ``L``, finest first.

    Returns:
        Per image ``{"boxes": [k, 4], "scores": [k], "labels": [k]}``, best first.
    """
    from torchvision.ops import batched_nms

    levels = [int(n) for n in locations_per_level]
    if sum(levels) != boxes.shape[1] or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)} do not have the "
                         f"{sum(levels)} locations of the levels {levels}")
    out = []
    for image_boxes, image_scores in zip(boxes, scores):
        num_classes = image_scores.shape[-1]
        picked_boxes, picked_scores, picked_labels = [], [], []
        for level_boxes, level_scores in zip(image_boxes.split(levels), image_scores.split(levels)):
            flat = level_scores.flatten()
            keep = flat > score_thresh
            top, order = flat[keep].topk(min(int(topk_candidates), int(keep.sum())))
            idx = torch.where(keep)[0][order]
            picked_boxes.append(level_boxes[torch.div(idx, num_classes, rounding_mode="floor")])
            picked_scores.append(top)
            picked_labels.append(idx % num_classes)
        b, s, labels = torch.cat(picked_boxes), torch.cat(picked_scores), torch.cat(picked_labels)
        kept = batched_nms(b, s, labels, nms_thresh)[:detections_per_img]
        out.append({"boxes": b[kept], "scores": s[kept], "labels": labels[kept]})
    return out


class FCOSHead(nn.Module):
    """FCOS on a backbone pyramid: :class:`PyramidNeck`, then torchvision's FCOS head, anchors, loss and NMS.

    Args:
        channels, strides: the backbone pyramid (``FeatureSpec``).
        num_classes: object classes (no background class: FCOS scores each class with a sigmoid).
        fpn_channels: FPN and head width (torchvision's FCOS: 256).
        num_convs: conv layers per tower (torchvision: 4).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: torchvision FCOS's post-processing.
    """

    #: what an exported graph's ``scores`` output is (``export.json``)
    score_meaning = "sqrt(sigmoid(class logit) * sigmoid(centre-ness))"

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, fpn_channels: int = 64,
                 num_convs: int = 2, score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100,
                 topk_candidates: int = 1000):
        from torchvision.models.detection import FCOS
        from torchvision.models.detection import fcos as tv_fcos
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        super().__init__()
        self.options = {"channels": [int(c) for c in channels], "strides": [int(s) for s in strides],
                        "num_classes": int(num_classes), "fpn_channels": int(fpn_channels), "num_convs": int(num_convs),
                        "score_thresh": float(score_thresh), "nms_thresh": float(nms_thresh),
                        "detections_per_img": int(detections_per_img), "topk_candidates": int(topk_candidates)}
        self.neck = PyramidNeck(channels, strides, fpn_channels, levels=3, extra=True)
        self.input_stride = int(strides[0])
        anchors = AnchorGenerator(tuple((s,) for s in self.neck.strides), ((1.0,),) * len(self.neck.strides))
        head = tv_fcos.FCOSHead(fpn_channels, 1, int(num_classes), num_convs=int(num_convs))
        # The detector holds the head (its only weights); its backbone slot is a width, its resize is unused.
        self.detector = FCOS(_NeckChannels(fpn_channels), int(num_classes), min_size=32, max_size=4096,
                             image_mean=[0.0] * 3, image_std=[1.0] * 3, anchor_generator=anchors, head=head,
                             score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                             topk_candidates=topk_candidates)
        self.num_classes = int(num_classes)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> DetectionOutputs:
        size = input_size(pyramid, self.input_stride)
        features = self.neck(pyramid)
        head_outputs = self.detector.head(features)
        anchors = image_anchors(self.detector.anchor_generator, features, size)
        return DetectionOutputs(self, head_outputs, anchors, [f.shape[-2] * f.shape[-1] for f in features], size)


def input_size(pyramid: Sequence[torch.Tensor], stride: int) -> tuple[int, int]:
    """``(H, W)`` of the model input, from the finest pyramid level and its stride."""
    first = pyramid[0]
    return int(first.shape[-2]) * stride, int(first.shape[-1]) * stride


def image_list(like: torch.Tensor, size: tuple[int, int], batch: int = 1):
    """A torchvision ``ImageList`` of ``batch`` images of ``size`` that holds no pixels: the anchor generator and
    the region proposal network read only its shape, and a zero-stride view costs no memory."""
    from torchvision.models.detection.image_list import ImageList

    return ImageList(like.new_zeros(()).expand(batch, 3, *size), [size] * batch)


def image_anchors(anchor_generator, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """The ``[L, 4]`` anchors of one image of ``size`` (xyxy input pixels, every level, finest first).

    Anchors depend on the input size only: made for one image, so the batch size stays symbolic in an export.
    """
    return anchor_generator(image_list(features[0], size), list(features))[0]


class FPNSegmentationHead(nn.Module):
    """Panoptic FPN's semantic branch on a backbone pyramid: per-pixel logits ``[B, C, H, W]`` at input size.

    Args:
        channels, strides: the backbone pyramid.
        num_classes: classes, background included (class 0 in the built-in data).
        fpn_channels: FPN width; the fused map has the same width.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, fpn_channels: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        self.options = {"channels": [int(c) for c in channels], "strides": [int(s) for s in strides],
                        "num_classes": int(num_classes), "fpn_channels": int(fpn_channels), "dropout": float(dropout)}
        self.neck = PyramidNeck(channels, strides, fpn_channels, levels=3, extra=False)
        self.input_stride = int(strides[0])
        self.fuse = nn.Sequential(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
                                  nn.GroupNorm(min(32, fpn_channels), fpn_channels), nn.ReLU(inplace=True),
                                  nn.Dropout2d(dropout) if dropout > 0 else nn.Identity())
        self.classifier = nn.Conv2d(fpn_channels, int(num_classes), 1)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        first = pyramid[0]
        size = (int(first.shape[-2]) * self.input_stride, int(first.shape[-1]) * self.input_stride)
        maps = self.neck(pyramid)
        fused = maps[0]
        for m in maps[1:]:
            fused = fused + F.interpolate(m, size=fused.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(fused))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _pyramid_args(in_features) -> tuple[list[int], list[int]]:
    channels, strides = in_features
    return list(channels), list(strides)


def pyramid_builder(cls):
    """``build(in_features, out_features, *, dropout, **options)`` of a detector class on a pyramid (no dropout)."""
    def build(in_features, out_features: int, *, dropout: float = 0.0, **options) -> nn.Module:
        channels, strides = _pyramid_args(in_features)
        return cls(channels, strides, out_features, **options)

    return build


def _build_fpn_seg(in_features, out_features: int, *, dropout: float = 0.0, **options) -> nn.Module:
    channels, strides = _pyramid_args(in_features)
    return FPNSegmentationHead(channels, strides, out_features, dropout=dropout, **options)


def rebuild_from(cls):
    """``rebuild(description) -> head`` of a head class on a pyramid, from its manifest entry."""
    def rebuild(h: dict) -> nn.Module:
        options = {k: v for k, v in h.items() if k not in ("kind", "channels", "strides", "num_classes", "out_features")}
        return cls(h["channels"], h["strides"], int(h["num_classes"]), **options)

    return rebuild


def describe_detector(head: nn.Module) -> dict:
    """A detector's manifest entry: its options (channels, strides, classes, widths, selection settings)."""
    return {**head.options, "out_features": head.num_classes}


register_head("fcos", pyramid_builder(FCOSHead), describe_detector, rebuild_from(FCOSHead),
              help="object detection: torchvision FPN + FCOS head, loss and NMS on a backbone's feature pyramid")
register_head("fpn-seg", _build_fpn_seg, lambda head: {**head.options, "out_features": head.options["num_classes"]},
              rebuild_from(FPNSegmentationHead),
              help="semantic segmentation: torchvision FPN + Panoptic FPN's semantic branch on a feature pyramid")
