"""Reinforcement-learning transfer on gymnasium environments and stable-baselines3 algorithms.

Train a source policy on an environment variant (or a randomised family of
variants), save it as a bundle (safetensors + JSON manifest, no pickle),
transfer it to a target variant with a strategy (``finetune``,
``frozen-features``, ``l2-sp``, ``scratch``), and measure the transfer after
Taylor & Stone (jumpstart, time to threshold, area under the curve, final
return) against training from scratch over seeds.

Needs the ``rl`` extra: ``pip install 'transferkit[rl]'``. The guide is
``docs/guide/reinforcement-learning.md``.
"""
from __future__ import annotations

from transferkit.rl.compare import CompareResult, compare_transfer
from transferkit.rl.metrics import curve_metrics
from transferkit.rl.strategies import STRATEGIES
from transferkit.rl.training import RunResult, evaluate, train, transfer
from transferkit.rl.variants import EnvVariant, make_env, parse_variant

__all__ = ["STRATEGIES", "CompareResult", "EnvVariant", "RunResult", "compare_transfer", "curve_metrics", "evaluate",
           "export_onnx", "make_env", "parse_variant", "train", "transfer"]


def export_onnx(bundle, out, **kwargs):
    """Export a policy bundle to ONNX with a parity check (see :mod:`transferkit.rl.onnx_export`)."""
    from transferkit.rl.onnx_export import export_onnx as _export

    return _export(bundle, out, **kwargs)
