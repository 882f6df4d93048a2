"""The report's pictures of detection and segmentation: evaluated images, worst first, ground truth beside the
prediction (``Task.report_figure``), and the fit report that shows them (random-init Lite0 at 32 px)."""
from __future__ import annotations

import numpy as np
import pytest

import transferkit as tk
from conftest import box_scenes, tiny_pyramid_backbone
from transferkit.tasks import get_task
from transferkit.tasks.dense_figures import PALETTE, detection_errors
from transferkit.tasks.detection import SHOW_SCORE, box_target

DET, SEG = get_task("detection"), get_task("segmentation")
SIZE = (60, 80)


def _pred(boxes, labels, scores, size=SIZE):
    h, w = size
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4) / np.array([w, h, w, h], np.float32),
            "labels": np.asarray(labels), "scores": np.asarray(scores, np.float32)}


def test_errors_count_unfound_gold_boxes_and_unmatched_shown_predictions():
    gold = box_target([[10, 10, 50, 40], [55, 20, 75, 50]], [0, 1], SIZE)
    assert detection_errors(gold, _pred([[10, 10, 50, 40], [55, 20, 75, 50]], [0, 1], [0.9, 0.8]), SIZE, 0.3) == 0
    # the second box predicted with the wrong class: it is not found, and that prediction finds nothing
    assert detection_errors(gold, _pred([[10, 10, 50, 40], [55, 20, 75, 50]], [0, 0], [0.9, 0.8]), SIZE, 0.3) == 2
    # a shifted box (IoU below 0.5) and a prediction under the shown score, which does not count
    off = _pred([[30, 25, 70, 55], [55, 20, 75, 50]], [0, 1], [0.9, 0.1])
    assert detection_errors(gold, off, SIZE, 0.3) == 3
    assert detection_errors(gold, _pred([], [], []), SIZE, 0.3) == 2


def test_detection_figure_orders_images_by_errors_and_draws_each_class_in_its_colour():
    images = [np.zeros((*SIZE, 3), np.uint8) for _ in range(3)]
    gold = [box_target([[10, 10, 50, 40]], [1], SIZE) for _ in range(3)]
    outputs = [_pred([[10, 10, 50, 40]], [1], [0.9]),  # right
               _pred([[10, 10, 50, 40], [60, 5, 75, 20]], [1, 0], [0.9, 0.8]),  # one extra box
               _pred([[60, 5, 75, 20]], [0], [SHOW_SCORE / 2])]  # nothing shown: the gold box is missed
    title, caption, rows = DET.report_figure(images, gold, outputs, ["a", "b"], k=2)
    assert [name for name, *_ in rows] == ["image 1 (1 error)", "image 2 (1 error)"]
    assert "2 of the 3 evaluated images" in caption and str(SHOW_SCORE) in caption
    name, truth, predicted = rows[0]
    assert truth.shape == predicted.shape == (*SIZE, 3) and truth.dtype == np.uint8
    assert tuple(truth[25, 10]) == PALETTE[1] and tuple(predicted[25, 10]) == PALETTE[1]  # left edge of the box
    assert tuple(predicted[12, 60]) == PALETTE[0] and tuple(truth[12, 60]) == (0, 0, 0)  # the extra box: right only
    assert tuple(rows[1][2][12, 60]) == (0, 0, 0)  # a prediction under the shown score is not drawn
    assert tuple(images[0][25, 10]) == (0, 0, 0)  # the items are not drawn on


def test_segmentation_figure_orders_by_pixel_accuracy_and_leaves_background_unpainted():
    image = np.full((32, 32, 3), 100, np.uint8)
    gold = np.zeros((32, 32), np.uint8)
    gold[8:24, 8:24] = 1
    gold[0, :] = 255  # ignored pixels count for neither
    right = np.zeros((16, 16), np.uint8)  # the model's input size: drawn in the image's own
    right[4:12, 4:12] = 1
    wrong = np.zeros((16, 16), np.uint8)
    title, caption, rows = SEG.report_figure([image, image], [gold, gold], [right, wrong], ["background", "thing"])
    assert [name.split(" (")[0] for name, *_ in rows] == ["image 1", "image 0"]
    assert rows[0][0] == f"image 1 ({100 * (1 - 256 / (32 * 31)):.1f}% of pixels right)"
    name, truth, predicted = rows[0]
    assert predicted.shape == truth.shape == (32, 32, 3)
    assert tuple(truth[16, 16]) != (100, 100, 100) and tuple(truth[30, 30]) == (100, 100, 100)
    assert tuple(predicted[16, 16]) == (100, 100, 100)  # predicted background: unpainted
    assert np.array_equal(rows[1][1], rows[1][2])  # the right prediction looks like the truth


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_dense_fit_report_shows_predictions_beside_the_ground_truth(task, tmp_path):
    result = tk.fit(tiny_pyramid_backbone(32), box_scenes(6, size=32, task=task), "finetune",
                    test_data=box_scenes(5, size=32, seed=1, task=task), epochs=1, batch_size=3, seed=0,
                    progress=False, out=tmp_path / "run")
    assert result is not None
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Predictions on evaluated images" in report and "4 of the 5 evaluated images" in report
    assert (tmp_path / "run" / "plots" / "predictions.png").stat().st_size > 1000
