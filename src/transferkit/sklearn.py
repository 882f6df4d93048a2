"""scikit-learn estimators over :func:`transferkit.api.fit`: ``TransferClassifier`` and ``TransferRegressor``.

They follow scikit-learn's estimator contract: ``__init__`` only stores its
parameters, what ``fit`` learns ends in ``_``, and ``get_params`` /
``set_params`` / :func:`sklearn.base.clone` work, so the estimators go into a
:class:`~sklearn.pipeline.Pipeline`, :class:`~sklearn.model_selection.GridSearchCV`
or :func:`~sklearn.model_selection.cross_val_score` like any other.

``X`` holds images or texts, not a feature table:

* images: a uint8 array ``[N, H, W]`` or ``[N, H, W, C]``, or a sequence of
  image file paths (every item a ``pathlib.Path`` or a str ending in an image
  extension: jpg, jpeg, png, bmp, gif, webp);
* texts: any other sequence of str (list, tuple, 1-D array, pandas Series).

Labels keep their type: ``classes_`` are the sorted unique labels of ``y`` (str,
int, ...), ``predict`` returns them and ``predict_proba``'s columns follow
``classes_``. The regressor trains on the standardised target and folds the
scale back into the head's last layer, so ``predictor_`` and a saved bundle
predict in the target's own units.

Example:
    >>> from transferkit.sklearn import TransferClassifier                        # doctest: +SKIP
    >>> clf = TransferClassifier("small-cnn:16", strategy="finetune", epochs=3)  # doctest: +SKIP
    >>> clf.fit(images, ["square", "bar", ...]).predict(images[:2])              # doctest: +SKIP
    array(['square', 'bar'], dtype='<U6')
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from transferkit.data.adapters import IMAGE_EXTENSIONS, from_arrays
from transferkit.data.dataset import TaskData
from transferkit.errors import DataError

__all__ = ["TransferClassifier", "TransferRegressor"]


# ---------------------------------------------------------------- inputs


def _is_image_paths(X) -> bool:
    """Every item is a ``Path`` (os.PathLike) or a str naming an image file by its extension."""
    if isinstance(X, np.ndarray) and (X.ndim != 1 or X.dtype.kind not in "UO"):
        return False
    items = list(X)
    return bool(items) and all(isinstance(v, os.PathLike) or (isinstance(v, str) and
                                                                 v.strip().lower().endswith(IMAGE_EXTENSIONS))
                               for v in items)


def _check_lengths(X, y) -> int:
    """The number of items of ``X``; refuse a bare string, an empty ``X`` or a ``y`` of another length."""
    if isinstance(X, (str, bytes, os.PathLike)):
        raise DataError(f"X must be a sequence of items (images or texts), got a single {type(X).__name__}: "
                        f"{X!r:.80}. Wrap it in a list.")
    n = len(X)
    m = None if y is None else len(y)
    if n == 0:
        raise DataError("X is empty (0 items)" + (f"; y has {m} labels." if m is not None else "."))
    if m is not None and m != n:
        raise DataError(f"X has {n} items but y has {m} labels; they must have the same length.")
    return n


def _task_data(X, targets, task: str, label_names: list[str] | None) -> TaskData:
    """``X`` (and its targets) as TaskData: image paths directly, arrays and texts via :func:`from_arrays`."""
    name, source = "sklearn-input", "scikit-learn estimator"
    if _is_image_paths(X):
        paths = [os.fspath(v).strip() for v in X]
        missing = next((i for i, p in enumerate(paths) if not os.path.isfile(p)), None)
        if missing is not None:
            raise DataError(f"X item {missing}: image file not found: {paths[missing]}")
        return TaskData(paths, targets, "image", task=task, label_names=label_names, name=name, source=source)
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "biuf":
        raise DataError(f"X is a 2-D array of shape {X.shape}: transfer estimators take images (uint8 "
                        f"[N, H, W] or [N, H, W, C]), image file paths or a list of str, not a feature table.")
    data = from_arrays(X, targets, task=task, label_names=label_names, name=name)
    data.source = source
    return data


def _fold_target_scale(model, mean: float, scale: float) -> None:
    """Make the head predict ``mean + scale * output``: the raw target from a model trained on the standardised one."""
    import torch
    from torch import nn

    last = model.head[-1]
    assert isinstance(last, nn.Linear), "every strategy's head ends in nn.Linear (the bundle format relies on it)"
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale).add_(mean)


# ---------------------------------------------------------------- estimators


class _TransferEstimator(BaseEstimator):
    """Parameters, fitting and bundle export shared by the classifier and the regressor."""

    _task = "classification"

    def __init__(self, backbone: str = "efficientnet-lite:0", strategy: str = "linear-probe",
                 strategy_options: dict | None = None, epochs: int | None = None, lr: float | None = None,
                 batch_size: int = 32, image_size: int | None = None, max_length: int | None = None,
                 val_fraction: float = 0.0, seed: int = 0, pretrained: bool = True):
        self.backbone = backbone
        self.strategy = strategy
        self.strategy_options = strategy_options
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.image_size = image_size
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.seed = seed
        self.pretrained = pretrained

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # images [N, H, W(, C)] and texts, not feature tables
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        return tags

    def _fit_data(self, data: TaskData):
        """Run :func:`transferkit.api.fit` on ``data`` (no bundle written); set ``predictor_`` and ``manifest_``."""
        from transferkit.api import fit

        train = {k: v for k, v in (("epochs", self.epochs), ("lr", self.lr), ("batch_size", self.batch_size))
                 if v is not None}
        options = dict(self.strategy_options) if self.strategy_options is not None else None
        result = fit(self.backbone, data, self.strategy, strategy_options=options, val_fraction=self.val_fraction,
                     image_size=self.image_size, max_length=self.max_length, pretrained=self.pretrained,
                     report=False, seed=self.seed, progress=False, **train)
        self.predictor_ = result.predictor
        self.manifest_ = result.manifest
        self.history_ = result.history
        return result

    def _outputs(self, X) -> np.ndarray:
        """The predictor's outputs on ``X``, after checking it is fitted and ``X`` is of the fitted modality."""
        check_is_fitted(self)
        _check_lengths(X, None)
        data = _task_data(X, None, self._task, None)
        fitted = self.manifest_["modality"]
        if data.modality != fitted:
            raise DataError(f"{type(self).__name__} was fitted on {fitted} data but X is {data.modality}.")
        return self.predictor_.outputs(data.items, batch_size=self.batch_size or 64)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the fitted model as a transferkit bundle (``transferkit.load(path)`` reads it back).

        The bundle's label names are the strings of ``classes_`` (a loaded
        :class:`~transferkit.export.bundle.Predictor` returns ``"1"`` for the
        class ``1``); a regressor's bundle predicts in the target's own units.

        Raises:
            BundleError: ``path`` exists and ``overwrite`` is false.
        """
        from transferkit.export.bundle import save_bundle

        check_is_fitted(self)
        return save_bundle(self.predictor_.model, path, self.manifest_, overwrite=overwrite)


class TransferClassifier(ClassifierMixin, _TransferEstimator):
    """A transferkit model as a scikit-learn classifier over images or texts.

    Args:
        backbone: a backbone spec (``efficientnet-lite:0``, ``hf:bert-base-uncased``, ``small-cnn:16``).
        strategy: a registered strategy name (``transferkit list strategies``).
        strategy_options: the strategy's config fields.
        epochs: passes over the training data (``None``: the strategy's default).
        lr: learning rate of the pre-trained weights (``None``: the strategy's default).
        batch_size: examples per optimizer step; also the prediction batch size.
        image_size: image side in pixels (``None``: the backbone's own).
        max_length: maximum tokens of a text backbone.
        val_fraction: stratified share of ``y`` held out for validation (early stopping, C selection).
        seed: random seed of the split and the training.
        pretrained: load the backbone's pre-trained weights (``False``: random init).

    Attributes:
        classes_: the sorted unique labels of ``y``.
        predictor_: the trained :class:`~transferkit.export.bundle.Predictor`.
        manifest_: what the run recorded (backbone, strategy, config, metrics, history).
        history_: the per-epoch training history.

    Example:
        >>> clf = TransferClassifier("small-cnn:16", strategy="finetune", epochs=3)  # doctest: +SKIP
        >>> clf.fit(images, labels).predict_proba(images[:2]).shape                 # doctest: +SKIP
        (2, 3)
        >>> clf.score(test_images, test_labels)                                     # doctest: +SKIP
        0.93
    """

    def fit(self, X, y) -> TransferClassifier:
        """Adapt the backbone to images or texts ``X`` with labels ``y`` (any sortable hashable labels).

        Raises:
            DataError: ``X`` is empty or of another length than ``y``, ``y`` has a
                single class or is not single-label, ``X`` is not images or texts.
            UnknownNameError: the backbone prefix or the strategy is not registered.
            ConfigError: an option is out of range, or the backbone does not take ``X``'s modality.
        """
        _check_lengths(X, y)
        classes, indices = _encode_classes(y)
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise DataError(f"Labels {list(classes)!r} are distinct but print alike; use labels whose str() differ.")
        data = _task_data(X, indices.astype(np.int64), "classification", names)
        self._fit_data(data)
        self.classes_ = classes
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[N, n_classes]``, columns in ``classes_`` order."""
        proba = self._outputs(X)
        lookup = {name: j for j, name in enumerate(self.predictor_.label_names)}
        return proba[:, [lookup[str(c)] for c in self.classes_]]

    def predict(self, X) -> np.ndarray:
        """The most probable label of each item, of the same type as the labels given to :meth:`fit`."""
        proba = self.predict_proba(X)  # checks fitted before classes_ is read
        return self.classes_[proba.argmax(axis=1)]


def _encode_classes(y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, indices)`` with ``classes[indices] == y``; refuse multi-label, continuous or one-class ``y``."""
    y = np.asarray(y)
    try:
        kind = type_of_target(y, input_name="y") if y.ndim == 1 else f"{y.ndim}-D"
    except (TypeError, ValueError) as exc:  # e.g. str and int labels mixed: they do not sort
        types = sorted({type(v).__name__ for v in y.reshape(-1)})
        raise DataError(f"y must hold labels of one type that sort; got {', '.join(types)} ({exc}).") from None
    if kind not in ("binary", "multiclass"):
        if kind == "continuous":
            raise DataError("y holds continuous values, not class labels; use TransferRegressor for numeric targets.")
        raise DataError(f"y must be one class label per item (binary or multiclass); got {kind} targets"
                        f"{' of shape ' + str(y.shape) if y.ndim != 1 else ''}. Multi-label targets are not supported.")
    classes, indices = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"y has a single class {classes[0].item()!r} ({len(y)} items); "
                        f"a classifier needs at least two.")
    return classes, indices.reshape(-1)


class TransferRegressor(RegressorMixin, _TransferEstimator):
    """A transferkit model as a scikit-learn regressor over images or texts (one numeric target).

    The model trains on ``(y - mean) / std`` and the scale is folded back into
    its head, so predictions (and a saved bundle) are in ``y``'s units. Losses
    and validation errors in ``manifest_`` are in standardised units.

    Args:
        backbone, strategy, strategy_options, epochs, lr, batch_size, image_size, max_length, val_fraction, seed, pretrained: as for :class:`TransferClassifier`
            (``val_fraction`` is a random split here).

    Attributes:
        predictor_: the trained :class:`~transferkit.export.bundle.Predictor`.
        manifest_: what the run recorded; ``manifest_["target_scaling"]`` holds the mean and std of ``y``.
        history_: the per-epoch training history.

    Example:
        >>> reg = TransferRegressor("small-cnn:16", strategy="finetune", epochs=3)  # doctest: +SKIP
        >>> reg.fit(images, brightness).predict(images[:2])                        # doctest: +SKIP
        array([101.3,  87.9])
    """

    _task = "regression"

    def fit(self, X, y) -> TransferRegressor:
        """Adapt the backbone to images or texts ``X`` with numeric targets ``y``.

        Raises:
            DataError: ``X`` is empty or of another length than ``y``, ``y`` is not
                1-D, not numeric or not finite, ``X`` is not images or texts.
            UnknownNameError: the backbone prefix or the strategy is not registered.
            ConfigError: an option is out of range, or the backbone does not take ``X``'s modality.
        """
        _check_lengths(X, y)
        target = _numeric_target(y)
        mean, std = float(target.mean()), float(target.std())
        scale = std if std > 0 else 1.0
        data = _task_data(X, ((target - mean) / scale).astype(np.float32), "regression", None)
        result = self._fit_data(data)
        _fold_target_scale(result.predictor.model, mean, scale)
        self.manifest_["target_scaling"] = {"mean": mean, "std": scale}
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted values ``[N]`` (float64), in the units of the ``y`` given to :meth:`fit`."""
        return np.asarray(self._outputs(X), dtype=np.float64).reshape(-1)


def _numeric_target(y) -> np.ndarray:
    try:
        target = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"y must hold numbers for a regressor ({exc}).") from None
    if target.ndim != 1:
        raise DataError(f"y must be 1-D (one target per item); got shape {target.shape}. "
                        f"Multi-output regression is not supported.")
    bad = np.flatnonzero(~np.isfinite(target))
    if len(bad):
        raise DataError(f"y row {bad[0]} is {target[bad[0]]}; regression targets must be finite ({len(bad)} such rows).")
    return target
