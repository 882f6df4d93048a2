"""The scikit-learn estimators: the estimator contract, label types, Pipeline / GridSearchCV, bad input.

Real but cheap models: the randomly initialised ``small-cnn:16`` fine-tuned for
two epochs on the shapes images, and a tiny random BERT with a linear probe on
the topic texts.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shapes_images, tiny_texts
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

import transferkit as tk
from transferkit.errors import BundleError, DataError, UnknownNameError
from transferkit.sklearn import TransferClassifier, TransferRegressor

# lr and batch size chosen so a random small CNN learns the shapes in two epochs (~10 steps)
IMAGE = {"backbone": "small-cnn:16", "strategy": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 8}
SHAPES = np.array(["square", "bar", "noise"])  # class c of shapes_images; sorted order differs
INT_LABELS = np.array([10, 2, 9])  # numeric order differs from str order ("10" < "2")


@pytest.fixture(scope="module")
def images():
    X, y = shapes_images()
    X_test, y_test = shapes_images(seed=1)
    return X, y, X_test, y_test


@pytest.fixture(scope="module")
def str_clf(images):
    X, y, _, _ = images
    return TransferClassifier(**IMAGE).fit(X, SHAPES[y])


@pytest.fixture(scope="module")
def text_clf(tiny_bert):
    texts, labels = tiny_texts()
    return TransferClassifier(f"hf:{tiny_bert}", strategy="linear-probe").fit(texts, labels)


def brightness(X: np.ndarray) -> np.ndarray:
    return X.reshape(len(X), -1).mean(1)


def crop(X: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(X[:, 2:14, 2:14])


# ---------------------------------------------------------------- classifier


def test_str_labels_fit_predict_proba_and_score(str_clf, images):
    _, _, X_test, y_test = images
    assert list(str_clf.classes_) == ["bar", "noise", "square"]
    pred = str_clf.predict(X_test)
    assert pred.shape == (len(X_test),) and all(isinstance(p, str) for p in pred)
    proba = str_clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(str_clf.classes_[proba.argmax(1)], pred)
    assert str_clf.score(X_test, SHAPES[y_test]) >= 0.8  # chance is 1/3; a label mix-up scores near 0


def test_predict_proba_columns_follow_classes(str_clf, images):
    """The predictor's columns follow its label names; the estimator's follow classes_."""
    X_test = images[2]
    raw = str_clf.predictor_.outputs(X_test)
    names = str_clf.predictor_.label_names
    proba = str_clf.predict_proba(X_test)
    for k, c in enumerate(str_clf.classes_):
        # float32 outputs of two forward passes differ in the last bits (CPU kernels); a column mix-up
        # moves them by far more than 1e-6
        np.testing.assert_allclose(proba[:, k], raw[:, names.index(c)], rtol=0, atol=1e-6)


@pytest.mark.parametrize("labels, classes", [
    (INT_LABELS, [2, 9, 10]),
    (INT_LABELS.astype(str), ["10", "2", "9"]),  # str labels sort as str (transferkit's own order is 2, 9, 10)
])
def test_int_and_numeric_str_labels_keep_their_type(labels, classes, images):
    X, y, X_test, y_test = images
    clf = TransferClassifier(**IMAGE).fit(X, labels[y])
    assert clf.classes_.tolist() == classes and clf.classes_.dtype.kind == labels.dtype.kind
    pred = clf.predict(X_test)
    assert pred.dtype.kind == labels.dtype.kind and set(pred.tolist()) <= set(classes)
    assert clf.score(X_test, labels[y_test]) >= 0.8  # a column or label mix-up scores near chance


def test_text_classifier_takes_lists_arrays_and_series(text_clf):
    texts, labels = tiny_texts()
    assert list(text_clf.classes_) == ["games", "sound"]
    pred = text_clf.predict(texts)
    np.testing.assert_array_equal(text_clf.predict(np.array(texts)), pred)
    np.testing.assert_array_equal(text_clf.predict(pd.Series(texts)), pred)
    assert text_clf.predict_proba(texts[:3]).shape == (3, 2)
    assert text_clf.score(texts, labels) > 0.7  # chance is 0.5


def test_image_paths_are_detected_as_images(tmp_path, images):
    X, y, _, _ = images
    paths = []
    for i, img in enumerate(X):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    clf = TransferClassifier(**IMAGE).fit(paths, SHAPES[y])  # Path objects
    assert clf.manifest_["modality"] == "image"
    from_str = clf.predict([str(p) for p in paths])
    np.testing.assert_array_equal(from_str, clf.predict(X))  # same pixels, same predictions
    with pytest.raises(DataError, match="image file not found: .*missing.png"):
        clf.predict([str(paths[0]), str(tmp_path / "missing.png")])


# ---------------------------------------------------------------- estimator contract


def test_init_stores_parameters_and_clone_is_unfitted(str_clf):
    options = {"dropout": 0.1}
    clf = TransferClassifier(strategy="no-such-strategy", strategy_options=options, epochs=0)  # no validation here
    assert clf.strategy_options is options and clf.get_params()["epochs"] == 0
    copy = clone(str_clf)
    assert copy.get_params() == str_clf.get_params()
    with pytest.raises(NotFittedError):
        copy.predict(np.zeros((1, 16, 16), np.uint8))
    assert not hasattr(copy, "classes_") and not hasattr(copy, "predictor_")
    assert clf.set_params(epochs=3) is clf and clf.epochs == 3
    assert clone(clf).strategy_options == options and clone(clf).strategy_options is not options


# scikit-learn's conformance checks that do not fit: the others feed 2-D float tables, which
# these estimators refuse by design (their X is images or texts).
PARAMETER_CHECKS = ["check_no_attributes_set_in_init", "check_parameters_default_constructible",
                    "check_get_params_invariance", "check_set_params", "check_estimator_cloneable",
                    "check_estimator_repr", "check_do_not_raise_errors_in_init_or_set_params", "check_valid_tag_types"]


@pytest.mark.parametrize("cls", [TransferClassifier, TransferRegressor])
@pytest.mark.parametrize("check", PARAMETER_CHECKS)
def test_sklearn_parameter_checks(check, cls):
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, check)(cls.__name__, cls())


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score", "save"])
def test_unfitted_estimator_raises_not_fitted(method, tmp_path):
    X, y = shapes_images(n_per_class=1)
    clf = TransferClassifier(**IMAGE)
    args = {"predict": (X,), "predict_proba": (X,), "score": (X, y), "save": (tmp_path / "b",)}[method]
    with pytest.raises(NotFittedError):
        getattr(clf, method)(*args)
    with pytest.raises(NotFittedError):
        TransferRegressor(**IMAGE).predict(X)


# ---------------------------------------------------------------- composition


def test_pipeline_with_a_function_transformer(images):
    X, y, X_test, y_test = images
    pipe = Pipeline([("crop", FunctionTransformer(crop)), ("clf", TransferClassifier(**{**IMAGE, "epochs": 3}))])
    pipe.fit(X, SHAPES[y])
    assert pipe.predict(X_test).shape == (len(X_test),)
    assert pipe.score(X_test, SHAPES[y_test]) >= 0.7
    assert clone(pipe).get_params()["clf__epochs"] == 3


def test_grid_search_picks_a_setting_and_refits(images):
    X, y, X_test, _ = images
    search = GridSearchCV(TransferClassifier(**IMAGE), {"strategy": ["linear-probe", "finetune"]}, cv=2,
                          error_score="raise")
    search.fit(X, SHAPES[y])
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and len(scores) == 2
    assert search.best_params_["strategy"] in ("linear-probe", "finetune")
    best = search.best_estimator_
    assert best.strategy == search.best_params_["strategy"] and best.manifest_["strategy"]["name"] == best.strategy
    assert best.manifest_["data"]["n_train"] == len(X)  # refitted on everything
    assert set(search.predict(X_test)) <= set(SHAPES)


def test_cross_val_score_on_texts(tiny_bert):
    texts, labels = tiny_texts()
    scores = cross_val_score(TransferClassifier(f"hf:{tiny_bert}", strategy="linear-probe"), texts, labels, cv=2)
    assert scores.shape == (2,) and ((0 <= scores) & (scores <= 1)).all()


# ---------------------------------------------------------------- regressor and bundles


def test_regressor_learns_brightness_in_its_units_and_saves(images, tmp_path):
    X, _, X_test, _ = images
    reg = TransferRegressor(**IMAGE).fit(X, brightness(X))  # values around 60-100, not standardised
    pred = reg.predict(X_test)
    assert pred.dtype == np.float64 and pred.shape == (len(X_test),)
    assert reg.score(X_test, brightness(X_test)) > 0.5
    assert reg.manifest_["target_scaling"]["std"] > 1
    path = reg.save(tmp_path / "reg")
    np.testing.assert_allclose(tk.load(path).predict(X_test), pred, rtol=1e-4)


def test_saved_classifier_bundle_matches_the_estimator(str_clf, images, tmp_path):
    X_test = images[2]
    str_clf.save(tmp_path / "clf")
    loaded = tk.load(tmp_path / "clf")
    assert loaded.predict(X_test) == list(str_clf.predict(X_test))
    with pytest.raises(BundleError, match="already exists"):
        str_clf.save(tmp_path / "clf")
    str_clf.save(tmp_path / "clf", overwrite=True)


# ---------------------------------------------------------------- bad input


def test_unknown_strategy_and_backbone_fail_at_fit_not_init(images):
    X, y, _, _ = images
    clf = TransferClassifier(**{**IMAGE, "strategy": "fintune"})
    with pytest.raises(UnknownNameError, match="Did you mean 'finetune'"):
        clf.fit(X, y)
    clf = TransferClassifier(**{**IMAGE, "backbone": "no-such-source:1"})
    with pytest.raises(UnknownNameError, match="no-such-source"):
        clf.fit(X, y)


@pytest.mark.parametrize("make_xy, message", [
    (lambda X, y: (X, np.full(len(X), "cat")), "single class 'cat'"),
    (lambda X, y: (X[:0], y[:0]), r"X is empty \(0 items\); y has 0"),
    (lambda X, y: (X[:5], y[:4]), "X has 5 items but y has 4 labels"),
    (lambda X, y: (X, y + 0.5), "continuous values.*TransferRegressor"),
    (lambda X, y: (X, np.stack([y, y], 1)), "one class label per item"),
    (lambda X, y: (X, np.array(["a", 1] * (len(X) // 2), dtype=object)), "one type"),
    (lambda X, y: (X.reshape(len(X), -1).astype(np.float32), y), "feature table"),
    (lambda X, y: ("some text", y[:1]), "single str"),
])
def test_bad_classifier_input_is_a_clear_value_error(make_xy, message, images):
    X, y = make_xy(*images[:2])
    with pytest.raises(DataError, match=message) as info:
        TransferClassifier(**IMAGE).fit(X, y)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("y, message", [
    (["a"] * 36, "must hold numbers"), (np.zeros((36, 2)), "1-D"), (np.r_[np.nan, np.ones(35)], "row 0 is nan"),
    (np.ones(35), "36 items but y has 35"),
])
def test_bad_regressor_input_is_a_clear_value_error(y, message, images):
    with pytest.raises(DataError, match=message):
        TransferRegressor(**IMAGE).fit(images[0], y)


def test_predict_refuses_the_other_modality(str_clf):
    with pytest.raises(DataError, match="fitted on image data but X is text"):
        str_clf.predict(["a text"])
