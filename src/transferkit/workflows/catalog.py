"""What is registered, for ``transferkit list`` and the facade: tasks, and every strategy-like registry.

Four registries hold methods: strategies (``fit --strategy``), continual learners
(``transferkit continual``), self-supervised pre-training methods (``fit --pretrain``)
and regularizers (``-o regularizer=NAME`` on fine-tuning strategies).
:func:`list_strategies` lists them together, each row with its registry as ``kind``.

Example:
    >>> rows = list_strategies()
    >>> {r["kind"] for r in rows} >= {"transfer", "scratch", "continual", "pre-training", "regularizer"}
    True
    >>> [t["name"] for t in list_tasks()][:3]
    ['classification', 'multilabel', 'regression']
"""
from __future__ import annotations

from transferkit.strategies import STRATEGIES
from transferkit.strategies.continual import CONTINUAL
from transferkit.strategies.regularizers import REGULARIZERS
from transferkit.strategies.self_supervised import PRETRAINERS
from transferkit.tasks import TASKS


def list_strategies() -> list[dict]:
    """Name, kind, one-line help, options ``(name, default, help)`` and tags of every registered method.

    ``kind`` is ``transfer`` or ``scratch`` for strategies, ``continual``, ``pre-training`` or
    ``regularizer`` for the other registries.

    Example:
        >>> from transferkit.api import list_strategies
        >>> "lora" in [s["name"] for s in list_strategies()]
        True
    """
    rows = [{"name": e.name, "kind": e.obj.kind, "help": e.help, "options": e.obj.describe_options(),
             "tags": e.obj.tags()} for e in STRATEGIES]
    rows.append(_auto_row())
    rows += [{"name": e.name, "kind": "continual", "help": e.help, "options": e.obj.Config.describe(),
              "tags": {"scenarios": list(e.obj.scenarios)}} for e in CONTINUAL]
    rows += [{"name": e.name, "kind": "pre-training", "help": e.help, "options": e.obj.Config.describe(),
              "tags": {"modalities": list(e.obj.modalities)}} for e in PRETRAINERS]
    rows += [{"name": e.name, "kind": "regularizer", "help": e.help, "options": e.obj.Options.describe(),
              "tags": {}} for e in REGULARIZERS]
    return rows


def _auto_row() -> dict:
    """``auto``: not a registered strategy but a search over them (:mod:`transferkit.workflows.auto`)."""
    from transferkit.workflows.auto import AUTO_STRATEGIES

    return {"name": "auto", "kind": "search",
            "help": "Cross-validate probes (final and intermediate layers; small images also at 2x and 4x their "
                    "size), LoRA, fine-tuning and the scratch baseline on the training labels with successive "
                    "halving, then the average of the best probes (stacking); train the winner on all of them.",
            "options": [("budget", "10m", "time for the search (90s, 10m, 1h, none); the first rung always runs"),
                        ("folds", 3, "cross-validation folds"),
                        ("layers", True, "also probe the intermediate layers of each backbone (from a third of "
                                         "the stack to the one before its last)"),
                        ("sizes", "auto", "image sizes of the probes (auto: the given size, 2x and 4x it up to "
                                          "the model's native size; or e.g. 32,64)"),
                        ("strategies", ",".join(AUTO_STRATEGIES), "transfer strategies tried on the final features"),
                        ("baselines", "auto", "scratch variants (auto: the modality's strongest; none)"),
                        ("stack", 3, "members of the stacking candidate (the best probe finalists, probabilities "
                                     "averaged; 0: none)")],
            "tags": {"tasks": ["classification", "regression"]}}


def list_tasks() -> list[dict]:
    """Every registered task: name, one-line help, primary metric, metrics, features and head.

    Example:
        >>> from transferkit.api import list_tasks
        >>> {t["name"]: t["primary_metric"] for t in list_tasks()}["classification"]
        'accuracy'
    """
    return [{**e.obj.describe(), "help": e.help} for e in TASKS]
