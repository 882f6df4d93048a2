"""MTCNN, a pre-trained face detector, as a detection source (``mtcnn:``): one class, ``face``.

The cascade of ``facenet-pytorch`` 2.6.0 (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", https://arxiv.org/abs/1604.02878; weights converted from the authors' Caffe
models by davidsandberg/facenet): P-Net proposes faces over an image pyramid, R-Net and O-Net refine and rescore
them, with NMS between the stages. facenet-pytorch's own ``detect_face`` runs the cascade; what is written here is
the glue: its three networks built at random init, their weight files (``data/pnet.pt``, ``rnet.pt``, ``onet.pt`` of
the installed package) read with ``torch.load(weights_only=True)``, never unpickling code, and the faces returned
as detections (boxes in input pixels, scores, class 0).

It is not a feature extractor: its features are detections (feature kind ``detections``), which the
``source-detector`` head of the ``detection`` task maps onto the data's classes by name, with the ``zero-shot``
strategy (nothing is trained). Install it with ``pip install --no-deps facenet-pytorch==2.6.0`` (it pins
``torch<2.3``, which its code does not need).

Preprocessing resizes each image to a square ``image_size`` (default 512) on 0..255 pixels, as every image backbone
of ours does; boxes map back to each image's own pixels as fractions. A non-square photo is stretched, which
MTCNN tolerates for mild aspect ratios; ``min_face_size`` is in input pixels.

Example:
    >>> bb = load_backbone("mtcnn:")                                        # doctest: +SKIP
    >>> bb.forward_detections(bb.preprocess([astronaut]))["detections"][0]  # doctest: +SKIP
    {'boxes': tensor([[x0, y0, x1, y1]]), 'scores': tensor([...]), 'labels': tensor([0])}
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from transferkit.backbones import register_source
from transferkit.backbones.base import Backbone, ImagePreprocess
from transferkit.backbones.packaged import load_tensors, package_file
from transferkit.errors import ConfigError, MissingWeightsError, check_range

PACKAGE, VERSION, MODULE = "facenet-pytorch", "2.6.0", "facenet_pytorch"
_INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
#: The classes the detector finds.
SOURCE_LABELS = ("face",)
#: facenet-pytorch's defaults: the three stages' score thresholds and the image pyramid's scale step.
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
NETS = ("pnet", "rnet", "onet")


def _facenet():
    try:
        from facenet_pytorch.models import mtcnn
        from facenet_pytorch.models.utils.detect_face import detect_face
    except ImportError:
        raise MissingWeightsError(f"mtcnn: needs the Python package '{PACKAGE}', which is not installed: "
                                  f"{_INSTALL}") from None
    return mtcnn, detect_face


class MTCNNBackbone(Backbone):
    """MTCNN's three networks; :meth:`forward_detections` runs the cascade on a batch of images.

    Args:
        spec: the spec string.
        pretrained: whether the packaged weights were loaded.
        image_size: input side in pixels.
        min_face_size: the smallest face searched for (input pixels; sets the image pyramid's first scale).
        thresholds: P-Net's, R-Net's and O-Net's score thresholds.
    """

    modality = "image"
    feature_kinds = ("detections",)
    source_labels = SOURCE_LABELS

    def __init__(self, spec: str, *, pretrained: bool, image_size: int = 512, min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = THRESHOLDS):
        super().__init__()
        mtcnn, _ = _facenet()
        self.spec, self.pretrained = spec, pretrained
        self.pnet, self.rnet, self.onet = (mtcnn.PNet(pretrained=False), mtcnn.RNet(pretrained=False),
                                           mtcnn.ONet(pretrained=False))
        self.min_face_size, self.thresholds = int(min_face_size), [float(t) for t in thresholds]
        self.num_features = 0
        self.preprocess = ImagePreprocess(image_size, (0.0, 0.0, 0.0), (1 / 255.0,) * 3, "bilinear")  # 0..255 pixels

    def forward_features(self, batch) -> torch.Tensor:
        raise ConfigError(f"Backbone '{self.spec}' is a face detector: it gives detections, not pooled features "
                          "(use it for the detection task with --strategy zero-shot).")

    @torch.no_grad()
    def forward_detections(self, batch: torch.Tensor) -> dict:
        """``{"detections": per image {"boxes" [k, 4] xyxy input pixels, "scores" [k], "labels" [k] (0: face)},
        "image_size": (H, W)}``: facenet-pytorch's ``detect_face`` on images ``[B, 3, H, W]`` of 0..255 pixels."""
        _, detect_face = _facenet()
        images = batch.float().clamp(0, 255).permute(0, 2, 3, 1)  # detect_face takes [B, H, W, 3]
        found, _ = detect_face(images, self.min_face_size, self.pnet, self.rnet, self.onet, self.thresholds, FACTOR,
                               batch.device)
        h, w = (int(s) for s in batch.shape[-2:])
        out = []
        for rows in found:
            rows = torch.as_tensor(rows.astype("float32") if len(rows) else torch.zeros(0, 5)).reshape(-1, 5)
            boxes = rows[:, :4].clone()
            boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clamp(0, w), boxes[:, 1::2].clamp(0, h)
            out.append({"boxes": boxes, "scores": rows[:, 4].clone(), "labels": torch.zeros(len(rows), dtype=torch.long)})
        return {"detections": out, "image_size": (h, w)}

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The cascade's stages in order: P-Net, R-Net, O-Net."""
        return [list(self.pnet.parameters()), list(self.rnet.parameters()), list(self.onet.parameters())]

    def architecture_options(self) -> dict:
        return {"image_size": self.preprocess.size, "min_face_size": self.min_face_size,
                "thresholds": list(self.thresholds)}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One network's state dict, read with ``torch.load(weights_only=True)``.

    Raises:
        MissingWeightsError: the file is missing or is not a weights-only state dict.
    """
    if not path.is_file():
        raise MissingWeightsError(f"No MTCNN weight file at {path}; reinstall: {_INSTALL} --force-reinstall")
    state = load_tensors(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MissingWeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def packaged_weights() -> dict[str, Path]:
    """The three weight files of the installed ``facenet-pytorch``, by network."""
    paths = {net: package_file(MODULE, f"data/{net}.pt") for net in NETS}
    missing = [f"data/{net}.pt" for net, p in paths.items() if p is None]
    if missing:
        raise MissingWeightsError(f"MTCNN's weights are the files {', '.join(missing)} of the Python package "
                                  f"'{PACKAGE}', which is not installed or lacks them: {_INSTALL}")
    return paths


def _check_thresholds(thresholds) -> tuple[float, float, float]:
    ok = isinstance(thresholds, (list, tuple)) and len(thresholds) == 3 and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1 for t in thresholds)
    if not ok:
        raise ConfigError("The 'thresholds' parameter of mtcnn: must be three numbers in (0, 1) (P-Net, R-Net, "
                          f"O-Net), such as {list(THRESHOLDS)}. Got {thresholds!r} instead.")
    return tuple(float(t) for t in thresholds)


@register_source("mtcnn", help="MTCNN face detector of facenet-pytorch (one class: face; detections, not features): "
                               "the detection task's pre-trained detector with --strategy zero-shot",
                 examples=("mtcnn:",), options=("image_size", "min_face_size", "thresholds"), modality="image")
def create_mtcnn(name: str, *, pretrained: bool = True, files_dir: Path | None = None, image_size: int | None = None,
                 min_face_size: int | None = None, thresholds=None) -> MTCNNBackbone:
    """Build ``mtcnn:`` (the name is empty: facenet-pytorch ships one set of weights).

    Args:
        name: empty.
        pretrained: load the packaged weights; ``False`` builds the cascade at random init.
        files_dir: unused (bundles hold the weights); accepted for bundle rebuilds.
        image_size: input side (default 512).
        min_face_size: the smallest face searched for, in input pixels (default 20).
        thresholds: the three stages' score thresholds (default 0.6, 0.7, 0.7).
    """
    if name.strip() not in ("", "face", "vggface2"):
        raise ConfigError(f"mtcnn: has one pre-trained detector; write 'mtcnn:' (got 'mtcnn:{name}').")
    if min_face_size is not None:
        check_range("mtcnn", "min_face_size", min_face_size, low=12, high=4096, kind="an int")
    backbone = MTCNNBackbone("mtcnn:", pretrained=pretrained and files_dir is None,
                             image_size=512 if image_size is None else int(image_size),
                             min_face_size=20 if min_face_size is None else int(min_face_size),
                             thresholds=THRESHOLDS if thresholds is None else _check_thresholds(thresholds))
    if pretrained and files_dir is None:
        for net, path in packaged_weights().items():
            getattr(backbone, net).load_state_dict(read_weights(path), strict=True)
    return backbone.eval()
