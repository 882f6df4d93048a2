"""RetinaNet and Faster R-CNN beside FCOS: the ``detector`` option, training under every dense strategy, bundles,
export (RetinaNet with NMS outside the graph; Faster R-CNN refused), compare's scratch baseline and labels column.

EfficientNet-Lite0's architecture at random init (a real pyramid, strides 2-32) at 32 px, one or two epochs of
three images: these check the plumbing, not what the detectors learn.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import box_scenes, tiny_pyramid_backbone
from transferkit.errors import ConfigError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.tasks import get_task
from transferkit.tasks.detection import DETECTORS
from transferkit.training import TrainConfig, Trainer

DET = get_task("detection")
NEW = ("retinanet", "faster-rcnn")


def _train(strategy: str, options: dict, data, head_lr: float = 1e-3):
    model, history = make_strategy(strategy, options).fit(
        tiny_pyramid_backbone(32), data, None,
        Trainer(TrainConfig(epochs=1, batch_size=3, lr=1e-3, head_lr=head_lr, seed=0, progress=False)))
    return model, history


def _head_kind(model) -> str:
    return model.head.head_kind


def _keep_every_box(model) -> None:
    """Score threshold 0, in the detector and its description: after a step or none, RetinaNet scores every anchor
    near its 0.01 prior, under the default 0.05, and Faster R-CNN's box head can call everything background."""
    model.head.options["score_thresh"] = 0.0
    getattr(model.head.detector, "roi_heads", model.head.detector).score_thresh = 0.0  # Faster R-CNN: its box head


@pytest.mark.parametrize("detector", NEW)
def test_a_detector_trains_saves_and_predicts_the_same_after_reload(detector, tmp_path):
    data = box_scenes(3, size=32)
    model, history = _train("finetune", {"detector": detector, "batchnorm": "frozen"}, data)
    assert _head_kind(model) == detector and np.isfinite(history[-1]["train_loss"])
    _keep_every_box(model)  # kept in the bundle's head description too
    out = predict_outputs(model, data)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "finetune"}})
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["head"]["kind"] == detector
    assert sorted(p.name for p in (tmp_path / "b").glob("*.safetensors")) == ["model.safetensors"]
    predictor = load(tmp_path / "b")
    again = predictor.outputs(list(data.items))
    assert sum(len(r["scores"]) for r in out) > 0
    for a, b in zip(out, again):
        assert set(a) == {"boxes", "scores", "labels"}
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-6)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)
    objects = predictor.predict(list(data.items))
    assert all(set(o) == {"label", "score", "box"} and o["label"] in ("square", "bar") for row in objects for o in row)


def _trains(model, prefix: str) -> bool:
    return any(p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("detector", NEW)
@pytest.mark.parametrize("strategy, options", [("finetune", {"train_last": 0}), ("lora", {"rank": 2}),
                                               ("scratch", {"variant": "same-arch"})],
                         ids=["head-only", "lora", "scratch"])
def test_every_dense_strategy_trains_the_new_detectors(detector, strategy, options):
    data = box_scenes(3, size=32)
    before = tiny_pyramid_backbone(32).state_dict()
    model, history = _train(strategy, {**options, "detector": detector}, data)
    assert _head_kind(model) == detector and np.isfinite(history[-1]["train_loss"])
    assert _trains(model, "head.")
    frozen_body = [n for n, p in model.backbone.named_parameters()
                   if not p.requires_grad and not n.startswith("source_head.")]  # the ImageNet classifier stays
    if strategy == "finetune":  # train_last=0: the backbone keeps its weights, only FPN and detector train
        assert not _trains(model, "backbone.")
        assert all(torch.equal(p, before[n]) for n, p in model.backbone.state_dict().items() if n in before
                   and "running" not in n and "num_batches" not in n)
    elif strategy == "lora":  # adapters train, the base weights do not
        assert model.adapter["strategy"] == "lora" and frozen_body and _trains(model, "backbone.")
    else:  # every weight trains from random init
        assert not frozen_body


def test_a_bad_detector_name_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="detector.*one of fcos, retinanet, faster-rcnn.*'yolo'"):
        make_strategy("finetune", {"detector": "yolo"})
    with pytest.raises(ConfigError, match="detector.*one of fcos, retinanet, faster-rcnn"):
        make_strategy("lora", {"detector": "Retinanet"})
    with pytest.raises(ConfigError, match="Unknown head 'yolo' for detection: it offers one of fcos, retinanet"):
        DET.make_head(tiny_pyramid_backbone(32).feature_spec("pyramid"), 2, head="yolo")
    seg = box_scenes(3, size=32, task="segmentation")
    with pytest.raises(ConfigError, match="'detector' option .*segmentation data, whose head is fpn-seg"):
        make_strategy("finetune", {"detector": "retinanet"}).prepare(tiny_pyramid_backbone(32), seg)
    with pytest.raises(ConfigError, match="Strategy 'dann' does not train detectors.*finetune, gradual-unfreeze, "
                                          "lora, scratch"):
        make_strategy("dann", {"detector": "retinanet"})
    assert DETECTORS[0] == DET.head == "fcos"  # the default stays FCOS
    model = make_strategy("finetune").prepare(tiny_pyramid_backbone(32), box_scenes(3, size=32))
    assert _head_kind(model) == "fcos"


def test_retinanet_decoded_outputs_give_torchvisions_detections_outside_a_graph():
    from transferkit.tasks.dense_heads import select_detections

    data = box_scenes(3, size=32)
    model = make_strategy("finetune", {"detector": "retinanet"}).prepare(tiny_pyramid_backbone(32), data).eval()
    _keep_every_box(model)
    with torch.no_grad():
        raw = model(model.backbone.preprocess(list(data.items)))
        boxes, scores = raw.decoded()
    d = raw.head.detector
    assert boxes.shape[1] == sum(raw.num_anchors_per_level) == 9 * 23  # 9 anchors on 4x4 + 2x2 + 1 + 1 + 1
    ours = select_detections(boxes, scores, raw.num_anchors_per_level, score_thresh=d.score_thresh,
                             topk_candidates=d.topk_candidates, nms_thresh=d.nms_thresh,
                             detections_per_img=d.detections_per_img)
    for theirs, mine in zip(raw.detections(), ours):
        assert len(mine["scores"]) > 0
        assert torch.equal(theirs["labels"], mine["labels"])
        torch.testing.assert_close(theirs["boxes"], mine["boxes"], atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs["scores"], mine["scores"], atol=1e-6, rtol=0)


def test_retinanet_exports_to_torchscript_with_parity_and_faster_rcnn_is_refused(tmp_path):
    from transferkit.export import onnx_export

    data = box_scenes(3, size=32)
    untrained = make_strategy("finetune", {"detector": "faster-rcnn"}).prepare(tiny_pyramid_backbone(32), data)
    save_bundle(untrained, tmp_path / "faster-rcnn", {"strategy": {"name": "finetune"}})
    model, _ = _train("finetune", {"detector": "retinanet"}, data, head_lr=1e-2)  # scores off the 0.01 prior:
    save_bundle(model, tmp_path / "retinanet", {"strategy": {"name": "finetune"}})  # detections to compare
    with pytest.raises(ConfigError, match="faster-rcnn detector runs NMS on its region proposals.*Detectors that "
                                          "export: fcos, retinanet"):
        onnx_export.export_bundle(tmp_path / "faster-rcnn", tmp_path / "x", format="torchscript")
    assert not (tmp_path / "x").exists()
    out = onnx_export.export_bundle(tmp_path / "retinanet", tmp_path / "ts", format="torchscript")
    info = json.loads((out / "export.json").read_text())
    labels = json.loads((out / "labels.json").read_text())
    assert labels["postprocess"] == "detection-nms" and labels["postprocess_options"]["detector"] == "retinanet"
    assert "sigmoid(class logit);" in info["outputs"][1]["meaning"]
    parity = info["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["predictions"]["equal"] and parity["predictions"]["detections"] > 0


def test_compare_gives_the_scratch_baseline_the_strategies_detector():
    from transferkit.workflows.compare import _planned_runs

    config = TrainConfig(progress=False)
    both = {"finetune": {"detector": "retinanet"}, "lora": {"detector": "retinanet"}}
    runs = _planned_runs(["finetune", "lora"], both, "auto", config, 0, "image", "detection")
    scratch = {label: s for label, s, _ in runs}["scratch:same-arch"]
    assert scratch.config.detector == "retinanet" and scratch.config.variant == "same-arch"
    runs = _planned_runs(["finetune"], {}, "auto", config, 0, "image", "detection")
    assert runs[-1][1].config.detector is None  # the default, FCOS
    with pytest.raises(ConfigError, match=r"different detection heads \(finetune: faster-rcnn, lora: fcos\).*one "
                                          "compare per detector"):
        _planned_runs(["finetune", "lora"], {"finetune": {"detector": "faster-rcnn"}}, "auto", config, 0, "image",
                      "detection")


def test_compare_tables_say_images_drawn_for_detection_and_labels_per_class_otherwise():
    import pandas as pd

    from transferkit.reports.compare_report import format_table
    from transferkit.workflows.compare import _with_labels_unit, labels_unit

    assert labels_unit(box_scenes(3, size=32)) == "images"
    assert labels_unit(box_scenes(3, size=32, task="segmentation")) == "images"
    runs = pd.DataFrame([{"experiment": "scenes", "labels_per_class": 16, "labels_unit": "images", "strategy": s,
                          "kind": k, "seed": 0, "map_50": v}
                         for s, k, v in [("finetune", "transfer", 0.4), ("scratch:same-arch", "scratch", 0.1)]]
                        + [{"experiment": "fmnist", "labels_per_class": 10, "labels_unit": "class",
                            "strategy": "finetune", "kind": "transfer", "seed": 0, "map_50": 0.5}])
    from transferkit.evaluation import summarize

    table = format_table(_with_labels_unit(summarize(runs, "map_50"), runs), None, "map_50")
    assert "| 16 images |" in table and "| 10 / class |" in table and "16 / class" not in table
