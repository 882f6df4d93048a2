"""Tasks: what a model predicts. Importing this package registers the built-in tasks.

Example:
    >>> from transferkit.tasks import get_task
    >>> get_task("classification").primary_metric
    'accuracy'
    >>> get_task("multilabel").export_postprocess()
    'sigmoid'
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transferkit.registry import Registry
from transferkit.tasks.base import IGNORE_INDEX, Task
from transferkit.tasks.heads import HEADS, build_head, describe_head, linear_head, rebuild_head, register_head
from transferkit.tasks.labels import Classification, MultiLabel, Regression
from transferkit.tasks import dense_heads  # noqa: F401  (registers the fcos and fpn-seg heads)
from transferkit.tasks import detectors  # noqa: F401  (registers the retinanet and faster-rcnn heads)
from transferkit.tasks.detection import Detection
from transferkit.tasks.generation import TextGeneration
from transferkit.tasks.instance_segmentation import InstanceSegmentation
from transferkit.tasks.segmentation import Segmentation
from transferkit.tasks.speech_recognition import SpeechRecognition
from transferkit.tasks.token_classification import TokenClassification

TASKS: Registry[Task] = Registry("task")


def register_task(task: Task | type[Task]) -> Task:
    """Register a task (a :class:`Task` instance or subclass) under its ``name``; returns the instance."""
    obj = task() if isinstance(task, type) else task
    TASKS.register(obj.name, obj, help=(type(obj).__doc__ or "").strip().splitlines()[0] if type(obj).__doc__ else "")
    return obj


def get_task(name: str | Task) -> Task:
    """The registered task ``name`` (a :class:`Task` passes through); unknown names list the choices."""
    return name if isinstance(name, Task) else TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()


def primary_metric(task: str | Task) -> str:
    """The metric that ranks models and decides transfer verdicts for ``task``."""
    return get_task(task).primary_metric


def compute_metrics(task: str | Task, y_true: Any, outputs: Any, label_names: Sequence[str] | None = None) -> dict:
    """Metrics of ``task`` from a model's postprocessed outputs (see each task's :meth:`Task.metrics`)."""
    return get_task(task).metrics(y_true, outputs, label_names)


for _task in (Classification, MultiLabel, Regression, TokenClassification, TextGeneration, Detection,
              Segmentation, InstanceSegmentation, SpeechRecognition):
    register_task(_task)


__all__ = ["HEADS", "IGNORE_INDEX", "TASKS", "Task", "build_head", "compute_metrics",
           "describe_head", "get_task", "linear_head", "primary_metric", "rebuild_head", "register_head",
           "register_task", "task_names"]
