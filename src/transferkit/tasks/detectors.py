"""The other detectors on a feature pyramid: ``retinanet`` (one stage, anchors), ``faster-rcnn`` (two stages) and
``mask-rcnn`` (Faster R-CNN with a mask branch, for ``instance-segmentation``); and ``source-detector``, a
pre-trained detector's own detections (``mtcnn:``) with its classes mapped onto the data's.

Both are torchvision's detectors on :class:`~transferkit.tasks.dense_heads.PyramidNeck` (torchvision's FPN on
the backbone's last three levels), as ``fcos`` is; the glue written here only runs their parts on a pyramid
that is already computed, and keeps training and prediction explicit (:meth:`loss` and :meth:`detections` of
what the head returns) instead of torchvision's mode-dependent return:

* ``retinanet`` (Lin et al., ICCV 2017, https://arxiv.org/abs/1708.02002): torchvision's ``RetinaNetHead``
  (classification and box towers of four convolutions, GroupNorm by default as in torchvision's v2), its
  anchor matching and loss (``RetinaNet.compute_loss``: sigmoid focal loss, L1 box loss) and its
  post-processing (``RetinaNet.postprocess_detections``). Nine anchors per location (three sizes, three aspect
  ratios), so its prediction layers are nine times FCOS's. The exported graph stops before the selection, as
  FCOS's does: the same :func:`~transferkit.tasks.dense_heads.select_detections` runs outside it.
* ``faster-rcnn`` (Ren et al., NeurIPS 2015, https://arxiv.org/abs/1506.01497, with FPN: Lin et al., CVPR
  2017): torchvision's ``RegionProposalNetwork`` and ``RoIHeads`` (``MultiScaleRoIAlign`` on P3-P5, a two-layer
  MLP box head, ``FastRCNNPredictor``). Its class index 0 is the background: targets shift by one on the way
  in, detections by one on the way out. It does not export: proposals go through NMS before the second stage,
  so there is no graph that stops before a data-dependent selection.

Anchors follow torchvision's RetinaNet rule, sized to each level's stride: ``4 * stride * 2**(k/3)`` for
``k = 0, 1, 2``, aspect ratios 0.5, 1 and 2 (32-50 px on the stride-8 level), for both detectors. Widths are
sized for a CPU as ``fcos`` is (a 64-channel FPN; Faster R-CNN's box head 256 wide instead of 1024, fewer
proposals); every option is kept in the bundle's head description.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from transferkit.tasks.dense_heads import (DetectionOutputs, PyramidNeck, _NeckChannels, describe_detector,
                                           image_anchors, image_list, input_size, pyramid_builder, rebuild_from)
from transferkit.tasks.heads import register_head

_NORMALISED = {"min_size": 32, "max_size": 4096, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}  # resize unused


def stride_anchors(strides: Sequence[int]):
    """torchvision's ``AnchorGenerator`` with three sizes (``4 * stride * 2**(k/3)``) and three aspect ratios
    per level."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(int(round(4 * s * 2 ** (k / 3))) for k in range(3)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class AnchorOutputs(DetectionOutputs):
    """What the ``retinanet`` head returns: :class:`DetectionOutputs` with RetinaNet's loss and scores.

    ``head_outputs`` hold ``cls_logits [B, L, C]`` and ``bbox_regression [B, L, 4]`` over the ``L`` anchors of
    all levels (nine per location); ``num_anchors_per_level`` splits ``L``.
    """

    def loss(self, targets: list[dict]) -> torch.Tensor:
        """RetinaNet's loss (sigmoid focal loss on classes, L1 on box offsets of the matched anchors)."""
        targets = [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets]
        outputs = {k: v.float() for k, v in self.head_outputs.items()}
        return sum(self.head.detector.compute_loss(targets, outputs, self.anchors).values())

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every anchor's box ``[B, L, 4]`` (xyxy input pixels, clipped) and class scores ``[B, L, C]``
        (``sigmoid(class logit)``): ``RetinaNet.postprocess_detections``'s arithmetic on every anchor."""
        from torchvision.ops import clip_boxes_to_image

        regression = self.head_outputs["bbox_regression"].float()
        anchors = self.location_anchors.expand_as(regression)
        boxes = self.head.detector.box_coder.decode_single(regression.reshape(-1, 4), anchors.reshape(-1, 4))
        scores = torch.sigmoid(self.head_outputs["cls_logits"].float())
        return clip_boxes_to_image(boxes.reshape(regression.shape), self.image_size), scores


class RetinaNetHead(nn.Module):
    """RetinaNet on a backbone pyramid: :class:`PyramidNeck` (P3-P7), then torchvision's RetinaNet head, anchors,
    loss and NMS.

    Args:
        channels, strides: the backbone pyramid (``FeatureSpec``).
        num_classes: object classes (no background class: each class is scored with a sigmoid).
        fpn_channels: FPN and head width (torchvision: 256).
        group_norm: GroupNorm in the head's towers (torchvision's ``retinanet_resnet50_fpn_v2``); false: none (v1).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: torchvision RetinaNet's post-processing.
    """

    score_meaning = "sigmoid(class logit)"

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, fpn_channels: int = 64,
                 group_norm: bool = True, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, topk_candidates: int = 1000):
        from torchvision.models.detection import RetinaNet
        from torchvision.models.detection import retinanet as tv_retinanet

        super().__init__()
        self.options = {"channels": [int(c) for c in channels], "strides": [int(s) for s in strides],
                        "num_classes": int(num_classes), "fpn_channels": int(fpn_channels),
                        "group_norm": bool(group_norm), "score_thresh": float(score_thresh),
                        "nms_thresh": float(nms_thresh), "detections_per_img": int(detections_per_img),
                        "topk_candidates": int(topk_candidates)}
        self.neck = PyramidNeck(channels, strides, fpn_channels, levels=3, extra=True)
        self.input_stride = int(strides[0])
        anchors = stride_anchors(self.neck.strides)
        self.anchors_per_location = anchors.num_anchors_per_location()[0]
        norm = partial(nn.GroupNorm, min(32, int(fpn_channels))) if group_norm else None
        head = tv_retinanet.RetinaNetHead(fpn_channels, self.anchors_per_location, int(num_classes), norm_layer=norm)
        # the detector holds the head (its only weights); its backbone slot is a width, its resize is unused
        self.detector = RetinaNet(_NeckChannels(fpn_channels), int(num_classes), anchor_generator=anchors, head=head,
                                  score_thresh=score_thresh, nms_thresh=nms_thresh,
                                  detections_per_img=detections_per_img, topk_candidates=topk_candidates,
                                  **_NORMALISED)
        self.num_classes = int(num_classes)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> AnchorOutputs:
        size = input_size(pyramid, self.input_stride)
        features = self.neck(pyramid)
        head_outputs = self.detector.head(features)
        anchors = image_anchors(self.detector.anchor_generator, features, size)
        per_level = [f.shape[-2] * f.shape[-1] * self.anchors_per_location for f in features]
        return AnchorOutputs(self, head_outputs, anchors, per_level, size)


class ProposalOutputs:
    """What the ``faster-rcnn`` head returns: the FPN maps, from which :meth:`loss` and :meth:`detections` run the
    two stages (proposals depend on the targets in training: the RoI heads sample them against the boxes).

    Attributes:
        features: the FPN maps by name; image_size: ``(H, W)`` of the model input.
    """

    def __init__(self, head: "FasterRCNNHead", features: dict, image_size: tuple[int, int], batch: int):
        self.head, self.features, self.image_size, self.batch = head, features, image_size, batch

    def __len__(self) -> int:
        return self.batch

    def _run(self, targets: list[dict] | None, training: bool) -> tuple[list[dict], dict]:
        """Both stages in torchvision's training (sampling, losses) or inference (NMS, detections) mode."""
        detector = self.head.detector
        images = image_list(next(iter(self.features.values())), self.image_size, self.batch)
        modes = detector.rpn.training, detector.roi_heads.training
        detector.rpn.training = detector.roi_heads.training = training  # they read only their own flag
        try:
            proposals, rpn_losses = detector.rpn(images, self.features, targets)
            detections, roi_losses = detector.roi_heads(self.features, proposals, images.image_sizes, targets)
        finally:
            detector.rpn.training, detector.roi_heads.training = modes
        return detections, {**rpn_losses, **roi_losses}

    def loss(self, targets: list[dict]) -> torch.Tensor:
        """The RPN's (objectness, box) and the box head's (classification, box) losses against ``targets``; with
        Mask R-CNN's branch, its mask loss against each target's ``masks [n, H, W]`` too."""
        targets = [{**t, "boxes": t["boxes"].float(), "labels": t["labels"].long() + 1} for t in targets]  # 0: background
        return sum(self._run(targets, training=True)[1].values())

    @torch.no_grad()
    def detections(self) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes`` (xyxy in input pixels), ``scores`` and ``labels`` after the box head's NMS; with
        Mask R-CNN's branch, ``masks [k, H, W]``: each box's mask probabilities pasted into the input
        (torchvision's ``paste_masks_in_image``, as its transform's post-processing does)."""
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        out = []
        for d in self._run(None, training=False)[0]:
            if "masks" in d:
                d["masks"] = paste_masks_in_image(d["masks"], d["boxes"], self.image_size)[:, 0]
            out.append({**d, "labels": d["labels"] - 1})
        return out


class FasterRCNNHead(nn.Module):
    """Faster R-CNN on a backbone pyramid: :class:`PyramidNeck` (P3-P5), then torchvision's region proposal
    network and RoI heads.

    Args:
        channels, strides: the backbone pyramid (``FeatureSpec``).
        num_classes: object classes (the box predictor adds the background class).
        fpn_channels: FPN and RPN width (torchvision: 256).
        representation_size: the box head's MLP width (torchvision: 1024).
        rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test:
            proposals kept per level before NMS and per image after it (torchvision: 2000/2000, 1000/1000).
        box_batch_size_per_image: proposals sampled per image to train the box head (torchvision: 512).
        score_thresh, nms_thresh, detections_per_img: the box head's post-processing.
    """

    score_meaning = None  # no export

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, fpn_channels: int = 64,
                 representation_size: int = 256, rpn_pre_nms_top_n_train: int = 1000,
                 rpn_post_nms_top_n_train: int = 500, rpn_pre_nms_top_n_test: int = 500,
                 rpn_post_nms_top_n_test: int = 250, box_batch_size_per_image: int = 128,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100):
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.rpn import RPNHead
        from torchvision.ops import MultiScaleRoIAlign

        super().__init__()
        self.options = {"channels": [int(c) for c in channels], "strides": [int(s) for s in strides],
                        "num_classes": int(num_classes), "fpn_channels": int(fpn_channels),
                        "representation_size": int(representation_size),
                        "rpn_pre_nms_top_n_train": int(rpn_pre_nms_top_n_train),
                        "rpn_post_nms_top_n_train": int(rpn_post_nms_top_n_train),
                        "rpn_pre_nms_top_n_test": int(rpn_pre_nms_top_n_test),
                        "rpn_post_nms_top_n_test": int(rpn_post_nms_top_n_test),
                        "box_batch_size_per_image": int(box_batch_size_per_image),
                        "score_thresh": float(score_thresh), "nms_thresh": float(nms_thresh),
                        "detections_per_img": int(detections_per_img)}
        self.neck = PyramidNeck(channels, strides, fpn_channels, levels=3, extra=False)
        self.input_stride = int(strides[0])
        anchors = stride_anchors(self.neck.strides)
        pool = MultiScaleRoIAlign([str(i) for i in range(len(self.neck.strides))], output_size=7, sampling_ratio=2)
        self.detector = FasterRCNN(
            _NeckChannels(fpn_channels), None, rpn_anchor_generator=anchors,
            rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=pool, box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, int(num_classes) + 1),
            box_batch_size_per_image=box_batch_size_per_image, box_score_thresh=score_thresh,
            box_nms_thresh=nms_thresh, box_detections_per_img=detections_per_img, **_NORMALISED)
        self.num_classes = int(num_classes)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> ProposalOutputs:
        return ProposalOutputs(self, self.neck.named(pyramid), input_size(pyramid, self.input_stride),
                               int(pyramid[0].shape[0]))


class MaskRCNNHead(FasterRCNNHead):
    """Mask R-CNN on a backbone pyramid: :class:`FasterRCNNHead` with torchvision's mask branch (RoIAlign on P3-P5 to
    14x14, a conv stack, ``MaskRCNNPredictor``'s transposed conv to a 28x28 mask per class), what torchvision's
    ``MaskRCNN`` adds to ``FasterRCNN`` (He et al., ICCV 2017, https://arxiv.org/abs/1703.06870).

    Args:
        channels, strides, num_classes, ...: as :class:`FasterRCNNHead`.
        mask_channels: the mask branch's width (torchvision: 256).
        mask_convs: its 3x3 conv layers (torchvision: 4).
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, mask_channels: int = 64,
                 mask_convs: int = 2, **options):
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.ops import MultiScaleRoIAlign

        super().__init__(channels, strides, num_classes, **options)
        self.options.update({"mask_channels": int(mask_channels), "mask_convs": int(mask_convs)})
        roi_heads = self.detector.roi_heads  # as torchvision's MaskRCNN.__init__ sets them
        roi_heads.mask_roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(self.neck.strides))], output_size=14,
                                                     sampling_ratio=2)
        roi_heads.mask_head = MaskRCNNHeads(self.options["fpn_channels"], [int(mask_channels)] * int(mask_convs), 1)
        roi_heads.mask_predictor = MaskRCNNPredictor(int(mask_channels), int(mask_channels), int(num_classes) + 1)


class SourceDetections:
    """What the ``source-detector`` head returns: a pre-trained detector's detections with the data's classes.

    Attributes:
        image_size: ``(H, W)`` of the model input the boxes are in.
    """

    def __init__(self, found: list[dict], image_size: tuple[int, int]):
        self.found, self.image_size = found, image_size

    def __len__(self) -> int:
        return len(self.found)

    def loss(self, targets: list[dict]) -> torch.Tensor:
        from transferkit.errors import ConfigError

        raise ConfigError("A pre-trained detector's own head (source-detector) is not trained here; fit it with "
                          "--strategy zero-shot, or train a detector head on a backbone's pyramid (finetune).")

    def detections(self) -> list[dict[str, torch.Tensor]]:
        return self.found


class SourceDetectorHead(nn.Module):
    """No weights: maps a pre-trained detector's classes (``mtcnn:``'s ``face``) onto the data's by name.

    The backbone's features are its detections (feature kind ``detections``); detections of a source class with no
    class of the same name in the data are dropped.

    Args:
        source_labels: the detector's classes.
        class_map: for each source class, the index of the data's class it is (-1: none).
        num_classes: the data's classes.
    """

    feature_kind = "detections"
    score_meaning = None  # no export

    def __init__(self, source_labels: Sequence[str], class_map: Sequence[int], num_classes: int):
        super().__init__()
        self.options = {"source_labels": [str(n) for n in source_labels], "class_map": [int(c) for c in class_map],
                        "num_classes": int(num_classes)}
        self.num_classes = int(num_classes)
        self.register_buffer("class_map", torch.tensor(self.options["class_map"], dtype=torch.long), persistent=False)

    def forward(self, features: dict) -> SourceDetections:
        out = []
        for d in features["detections"]:
            labels = self.class_map.to(d["labels"].device)[d["labels"].long()]
            keep = labels >= 0
            out.append({"boxes": d["boxes"][keep], "scores": d["scores"][keep], "labels": labels[keep]})
        return SourceDetections(out, tuple(features["image_size"]))


def _build_source_detector(in_features, out_features: int, *, dropout: float = 0.0, source_labels=(),
                           class_map=()) -> nn.Module:
    return SourceDetectorHead(source_labels, class_map, out_features)


register_head("retinanet", pyramid_builder(RetinaNetHead), describe_detector, rebuild_from(RetinaNetHead),
              help="object detection: torchvision FPN + RetinaNet head (9 anchors per location), focal loss and NMS")
register_head("faster-rcnn", pyramid_builder(FasterRCNNHead), describe_detector, rebuild_from(FasterRCNNHead),
              help="object detection: torchvision FPN + Faster R-CNN (region proposals, RoIAlign, box head); "
                   "no ONNX/TorchScript export")
register_head("mask-rcnn", pyramid_builder(MaskRCNNHead), describe_detector, rebuild_from(MaskRCNNHead),
              help="instance segmentation: torchvision FPN + Mask R-CNN (Faster R-CNN with a mask branch); "
                   "no ONNX/TorchScript export")
register_head("source-detector", _build_source_detector, describe_detector,
              lambda h: SourceDetectorHead(h["source_labels"], h["class_map"], int(h["num_classes"])),
              help="object detection: a pre-trained detector's own detections (mtcnn:), its classes mapped onto the "
                   "data's by name; nothing trained (zero-shot), no export")
