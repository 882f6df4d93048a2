"""MTCNN (facenet-pytorch) as a pre-trained detector: ``mtcnn:`` with the ``zero-shot`` strategy on detection data.

Real photos from scikit-image, with face boxes annotated by hand (forehead to chin, ear or cheek to cheek, read off
a 10 px grid): the astronaut (Eileen Collins) and the cameraman have one face each; the coffee cup and Chelsea the
cat have none. Nothing downloads: the weights are the files of the installed package, read weights-only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("facenet_pytorch")
skimage_data = pytest.importorskip("skimage.data")

from transferkit.backbones import load_backbone  # noqa: E402
from transferkit.backbones.mtcnn import read_weights  # noqa: E402
from transferkit.errors import ConfigError, MissingWeightsError  # noqa: E402

#: Hand-annotated face boxes (x1, y1, x2, y2) in each image's own pixels.
FACES = {"astronaut": [[182, 68, 268, 178]], "camera": [[195, 118, 256, 194]], "coffee": [], "chelsea": []}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _faces_coco(folder: Path, names=("cat", "face")) -> Path:
    """The four photos and a COCO file; ``face`` is the second category, so the detector's class must be mapped."""
    from PIL import Image

    doc = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    for i, (name, boxes) in enumerate(FACES.items()):
        image = getattr(skimage_data, name)()
        Image.fromarray(image).save(folder / f"{name}.png")
        doc["images"].append({"id": i + 1, "file_name": f"{name}.png", "width": image.shape[1],
                              "height": image.shape[0]})
        for x1, y1, x2, y2 in boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i + 1,
                                       "category_id": names.index("face") + 1 if "face" in names else 1,
                                       "bbox": [x1, y1, x2 - x1, y2 - y1]})
    path = folder / "faces.json"
    path.write_text(json.dumps(doc))
    return path


def test_the_packaged_weights_load_weights_only_and_a_pickled_object_is_refused(tmp_path):
    backbone = load_backbone("mtcnn:")
    assert backbone.feature_kinds == ("detections",) and backbone.source_labels == ("face",)
    random = load_backbone("mtcnn:", pretrained=False)
    assert not torch.equal(backbone.onet.conv1.weight, random.onet.conv1.weight)
    torch.save({"net": Path("x")}, tmp_path / "pickled.pt")  # an arbitrary object: weights_only must refuse it
    with pytest.raises(MissingWeightsError, match=r"pickled.pt cannot be read as tensors .*weights_only=True"):
        read_weights(tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="thresholds"):
        load_backbone("mtcnn:", thresholds=[0.6, 1.5, 0.7])


def test_zero_shot_mtcnn_finds_the_faces_scores_coco_map_and_reloads(tmp_path):
    import transferkit as tk

    coco = _faces_coco(tmp_path)
    result = tk.fit("mtcnn:", coco, "zero-shot", test_data=coco, out=tmp_path / "run", baselines=None)
    assert result.metrics["map_50"] == pytest.approx(1.0)  # both hand-annotated faces found, nothing else above them
    assert result.metrics["objects"] == 2
    predictor = tk.load(tmp_path / "run")
    found = predictor.predict([tmp_path / f"{n}.png" for n in FACES])
    for name, objects in zip(FACES, found):
        assert len(objects) == len(FACES[name]), (name, objects)
        for obj, gold in zip(objects, FACES[name]):
            assert obj["label"] == "face" and obj["score"] > 0.99 and _iou(obj["box"], gold) > 0.7, (name, obj)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["head"]["kind"] == "source-detector" and manifest["head"]["class_map"] == [1]
    (tmp_path / "other").mkdir()
    face_only = _faces_coco(tmp_path / "other", names=("face",))  # face is class 0 here, 1 in the bundle
    metrics = tk.evaluate(tmp_path / "run", face_only)
    assert metrics["map_50"] == pytest.approx(1.0) and metrics["objects"] == 2


def test_refusals_name_the_detector_the_classes_and_the_strategies(tmp_path):
    import transferkit as tk
    from conftest import box_scenes, tiny_pyramid_backbone
    from transferkit.strategies import make_strategy
    from transferkit.training import TrainConfig, Trainer

    coco = _faces_coco(tmp_path, names=("cat", "dog"))
    with pytest.raises(ConfigError, match=r"detects 'face', but data .* \(its classes: 'cat', 'dog'\)"):
        tk.fit("mtcnn:", coco, "zero-shot", out=tmp_path / "run", baselines=None)
    data = box_scenes(4, size=32)
    trainer = Trainer(TrainConfig(epochs=1, progress=False))
    with pytest.raises(ConfigError, match=r"needs a pre-trained detector as the backbone \(mtcnn:\)"):
        make_strategy("zero-shot").fit(tiny_pyramid_backbone(32), data, None, trainer)
    with pytest.raises(ConfigError, match="gives detections features; the task needs pyramid"):
        make_strategy("finetune").fit(load_backbone("mtcnn:"), data, None, trainer)


def test_cli_fit_predict_and_export_refusal(tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    coco = _faces_coco(tmp_path, names=("face",))
    runner = CliRunner()
    fit = runner.invoke(app, ["fit", "--backbone", "mtcnn:", "--data", str(coco), "--strategy", "zero-shot",
                              "--out", str(tmp_path / "run")])
    assert fit.exit_code == 0, fit.output
    out = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "camera.png"), "--json"])
    assert out.exit_code == 0, out.output
    objects = json.loads(out.output.strip().splitlines()[0])["prediction"]
    assert [o["label"] for o in objects] == ["face"] and _iou(objects[0]["box"], FACES["camera"][0]) > 0.7
    export = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "onnx")])
    assert export.exit_code != 0 and "NMS between its stages" in export.output
    assert np.isfinite(objects[0]["score"])
