"""Workflows (layer 6): what a user runs, composed from the layers below.

* :mod:`~transferkit.workflows.fit`: ``fit``, ``evaluate``, ``prepare_data``, ``lr_find``;
* :mod:`~transferkit.workflows.compare`: ``compare`` (strategies and scratch baselines over seeds);
* :mod:`~transferkit.workflows.rank`: ``rank`` (transferability scores before training);
* :mod:`~transferkit.workflows.tune`: ``tune`` (an Optuna search over hyperparameters);
* :mod:`~transferkit.workflows.shift`: ``measure_shift`` (domain shift in feature space);
* :mod:`~transferkit.workflows.multitask`, :mod:`~transferkit.workflows.continual`: the
  multi-task and continual-learning runs;
* :mod:`~transferkit.workflows.runs` and :mod:`~transferkit.workflows.baselines`: one
  training run and its scores, and the scratch baselines that judge transfer (shared by
  ``fit`` and ``compare``).

A workflow may import any lower layer (strategies, training, export, reports, data,
backbones, tasks, evaluation), never the public facade (``api.py``), the CLI (``cli/``) or
the scikit-learn estimators (``sklearn.py``), which import the workflows. This package
re-exports nothing, so ``transferkit.workflows.fit`` is the module, not the function.
"""
