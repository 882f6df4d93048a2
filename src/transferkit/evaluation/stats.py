"""Statistics over seeds: confidence intervals, paired and Welch differences, transfer verdicts.

A comparison in transferkit is a table of runs, one row per
``(experiment, labels_per_class, strategy, kind, seed)`` with ``kind`` in
``{"transfer", "scratch"}`` and one column per metric. :func:`summarize`
turns it into means with Student-t intervals; :func:`transfer_verdicts`
says, for each transfer strategy, whether it beat the strongest from-scratch
baseline, and says so only when the interval of the gain excludes 0.

Example:
    >>> mean, low, high = mean_ci([1.0, 2.0, 3.0])
    >>> mean, round(high - mean, 4)
    (2.0, 2.4841)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.metrics import higher_is_better as _metric_higher_is_better
from transferkit.evaluation.metrics import is_fraction_metric

RUN_KEYS = ("experiment", "labels_per_class", "strategy", "kind")
KINDS = ("transfer", "scratch")
SUMMARY_STATS = ("n", "mean", "ci_low", "ci_high", "std")
VERDICT_COLUMNS = (
    "experiment", "labels_per_class", "strategy", "baseline", "mean", "baseline_mean",
    "gain", "gain_low", "gain_high", "verdict", "explanation", "n", "baseline_n", "test",
)
POSITIVE, NEGATIVE, UNCLEAR, NO_BASELINE = "positive transfer", "negative transfer", "no clear gain", "no baseline"


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"The 'confidence' parameter must be a float in (0, 1). Got {confidence!r} instead.")
    return float(confidence)


def _t_half_width(std: float, n: int, confidence: float) -> float:
    return float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n))


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean.

    The interval is ``mean ± t((1 + confidence) / 2, n - 1) * s / sqrt(n)``
    with ``s`` the sample standard deviation (``ddof=1``). With a single value
    the spread is unknown, so the result is ``(value, nan, nan)``: callers must
    treat the interval as unknown, not as zero-width.

    Args:
        values: One value per seed. NaN values propagate (drop them first).
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        ``(mean, low, high)``.

    Raises:
        DataError: If ``values`` is empty.
        ConfigError: If ``confidence`` is not in (0, 1).

    Example:
        >>> mean_ci([5.0])
        (5.0, nan, nan)
    """
    confidence = _check_confidence(confidence)
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise DataError("Cannot compute a confidence interval of 0 values.")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, float("nan"), float("nan")
    half = _t_half_width(float(arr.std(ddof=1)), arr.size, confidence)
    return mean, mean - half, mean + half


def paired_difference(a, b, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over seeds paired by position, with its Student-t interval.

    Pairing removes the seed-to-seed variation both runs share (same split,
    same subsample), which makes the interval much tighter than an unpaired one.

    Args:
        a: Metric values of the first method, one per seed.
        b: Metric values of the second method, same seeds in the same order.
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        ``(mean difference, low, high)``; ``(d, nan, nan)`` for a single pair.

    Raises:
        DataError: If ``a`` and ``b`` differ in length or are empty.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"Paired values must have the same length; got {a.size} and {b.size}.")
    return mean_ci(a - b, confidence)


def welch_difference(a, b, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of means ``mean(a) - mean(b)`` with Welch's unpaired t interval.

    Args:
        a: Values of the first group.
        b: Values of the second group.
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        ``(difference, low, high)``; the interval is ``nan`` when either group
        has a single value (its variance is unknown).

    Raises:
        DataError: If either group is empty.
    """
    confidence = _check_confidence(confidence)
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise DataError(f"Welch's interval needs values in both groups; got {a.size} and {b.size}.")
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(sps.t.ppf((1.0 + confidence) / 2.0, dof) * se)
    return diff, diff - half, diff + half


def _require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"The runs table lacks column(s) {missing}. It has: {list(df.columns)}.")


def summarize(
    runs: pd.DataFrame, metric: str, by: Sequence[str] = RUN_KEYS, *, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean, Student-t interval and standard deviation of ``metric`` per group of runs.

    Args:
        runs: One row per run (seed) with the ``by`` columns and ``metric``.
        metric: The metric column to summarise; NaN values are dropped.
        by: Grouping columns, kept in order of first appearance.
        confidence: Coverage of the intervals.

    Returns:
        One row per group with the ``by`` columns, then ``n`` (finite values),
        ``mean``, ``ci_low``, ``ci_high`` (NaN when ``n < 2``) and ``std``
        (``ddof=1``, NaN when ``n < 2``).

    Raises:
        DataError: If a column is missing.
    """
    by = list(by)
    _require_columns(runs, [*by, metric])
    confidence = _check_confidence(confidence)
    rows = []
    for key, group in runs.groupby(by, sort=False, dropna=False):
        values = pd.to_numeric(group[metric], errors="coerce").dropna().to_numpy(np.float64)
        mean, low, high = mean_ci(values, confidence) if values.size else (np.nan, np.nan, np.nan)
        std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "n": int(values.size), "mean": mean, "ci_low": low,
                     "ci_high": high, "std": std})
    return pd.DataFrame(rows, columns=[*by, *SUMMARY_STATS])


def _by_seed(group: pd.DataFrame, metric: str) -> pd.Series:
    values = pd.to_numeric(group[metric], errors="coerce")
    return pd.Series(values.to_numpy(np.float64), index=group["seed"].to_numpy()).dropna()


def _gain(treat: pd.Series, base: pd.Series, sign: float, confidence: float) -> tuple[float, float, float, str]:
    """Signed improvement of ``treat`` over ``base`` (positive = better), its interval and the test used."""
    paired = treat.index.is_unique and base.index.is_unique and set(treat.index) == set(base.index)
    if paired:
        aligned = base.loc[treat.index].to_numpy()  # same seeds, same order
        gain, low, high = paired_difference(sign * treat.to_numpy(), sign * aligned, confidence)
        test = f"paired by seed, n={len(treat)}"
    else:
        gain, low, high = welch_difference(sign * treat.to_numpy(), sign * base.to_numpy(), confidence)
        test = f"unpaired Welch, n={len(treat)} vs {len(base)}"
    return gain, low, high, test


def _fmt_gain(value: float, metric: str, unit: bool = True) -> str:
    """``+3.2 points`` (percentage points) for accuracy-like metrics, ``+0.01234`` otherwise."""
    if is_fraction_metric(metric):
        return f"{100 * value:+.1f}" + (" points" if unit else "")
    return f"{value:+.4g}"


def _judge(gain: float, low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):  # interval unknown: the sign is all we have
        return POSITIVE if gain > 0 else NEGATIVE if gain < 0 else UNCLEAR
    return POSITIVE if low > 0 else NEGATIVE if high < 0 else UNCLEAR


def _explain(strategy: str, baseline: str, metric: str, result: tuple, confidence: float, hib: bool) -> str:
    gain, low, high, test, verdict = result
    g = _fmt_gain(gain, metric)
    direction = "" if hib else f" Lower {metric} is better, so the gain is the reduction of {metric}."
    head = f"'{strategy}' vs the strongest scratch baseline '{baseline}': gain {g}"
    if math.isnan(low) or math.isnan(high):
        return (f"{head} ({test}). With a single seed the interval is unknown, so this verdict "
                f"rests on the sign of one difference and is not statistically supported; run more seeds.{direction}")
    ci = f"{round(100 * confidence)}% CI {_fmt_gain(low, metric, False)} to {_fmt_gain(high, metric, False)}, {test}"
    if verdict == POSITIVE:
        tail = "the whole interval is above 0, so transfer helped."
    elif verdict == NEGATIVE:
        tail = "the whole interval is below 0, so transfer hurt: training from scratch was better here."
    else:
        tail = "the interval contains 0, so transfer is not shown to be better than training from scratch."
    return f"{head} ({ci}); {tail}{direction}"


def _strongest(scratch: pd.DataFrame, metric: str, hib: bool) -> str | None:
    means = scratch.groupby("strategy", sort=False)[metric].apply(lambda s: pd.to_numeric(s, errors="coerce").mean())
    means = means.dropna()
    if means.empty:
        return None
    return str(means.idxmax() if hib else means.idxmin())


def _no_baseline_row(keys: dict, strategy: str, treat: pd.Series, reason: str) -> dict:
    mean = float(treat.mean()) if len(treat) else float("nan")
    return {**keys, "strategy": strategy, "baseline": None, "mean": mean, "baseline_mean": float("nan"),
            "gain": float("nan"), "gain_low": float("nan"), "gain_high": float("nan"), "verdict": NO_BASELINE,
            "explanation": reason, "n": len(treat), "baseline_n": 0, "test": ""}


def _group_verdicts(keys: dict, group: pd.DataFrame, metric: str, hib: bool, confidence: float) -> list[dict]:
    baseline = _strongest(group[group["kind"] == "scratch"], metric, hib)
    base = _by_seed(group[group["strategy"] == baseline], metric) if baseline is not None else None
    rows = []
    for strategy, tgroup in group[group["kind"] == "transfer"].groupby("strategy", sort=False):
        treat = _by_seed(tgroup, metric)
        if base is None:
            rows.append(_no_baseline_row(keys, strategy, treat, "No scratch run with a finite value in this group, "
                                                                "so whether transfer helped cannot be judged."))
            continue
        if treat.empty:
            rows.append(_no_baseline_row(keys, strategy, treat, f"'{strategy}' has no finite {metric} value."))
            continue
        gain, low, high, test = _gain(treat, base, 1.0 if hib else -1.0, confidence)
        verdict = _judge(gain, low, high)
        rows.append({**keys, "strategy": strategy, "baseline": baseline, "mean": float(treat.mean()),
                     "baseline_mean": float(base.mean()), "gain": gain, "gain_low": low, "gain_high": high,
                     "verdict": verdict, "n": len(treat), "baseline_n": len(base), "test": test,
                     "explanation": _explain(strategy, baseline, metric, (gain, low, high, test, verdict),
                                             confidence, hib)})
    return rows


def transfer_verdicts(
    runs: pd.DataFrame, metric: str, higher_is_better: bool | None = True, *, confidence: float = 0.95
) -> pd.DataFrame:
    """Whether each transfer strategy beat the strongest from-scratch baseline.

    Within each ``(experiment, labels_per_class)`` the baseline is the scratch
    strategy with the best mean ``metric``; comparing against the strongest
    one keeps a weak baseline from flattering transfer. The gain is paired by
    seed when both strategies ran the same seeds, else Welch's unpaired t.

    Verdicts: ``"positive transfer"`` (the gain's interval lies entirely above
    0), ``"negative transfer"`` (entirely below 0), ``"no clear gain"`` (it
    contains 0). With a single seed the interval is unknown: the verdict
    follows the sign of the gain and the explanation says it is unsupported.
    ``"no baseline"`` marks a group without any usable scratch run.

    Args:
        runs: One row per ``(experiment, labels_per_class, strategy, kind, seed)``,
            ``kind`` in ``{"transfer", "scratch"}``, with a ``metric`` column.
        metric: The metric column to compare.
        higher_is_better: Direction of ``metric``; ``None`` infers it from the
            name (see :func:`transferkit.evaluation.metrics.higher_is_better`).
        confidence: Coverage of the gain's interval.

    Returns:
        One row per transfer strategy and group, columns ``experiment``,
        ``labels_per_class``, ``strategy``, ``baseline``, ``mean``,
        ``baseline_mean``, ``gain`` (positive = transfer better, in the
        metric's units, also when lower is better), ``gain_low``,
        ``gain_high``, ``verdict``, ``explanation``, ``n``, ``baseline_n``,
        ``test``.

    Raises:
        DataError: If a column is missing or ``kind`` has another value.
    """
    _require_columns(runs, [*RUN_KEYS, "seed", metric])
    confidence = _check_confidence(confidence)
    hib = _metric_higher_is_better(metric) if higher_is_better is None else bool(higher_is_better)
    unknown = sorted(set(runs["kind"].astype(str)) - set(KINDS))
    if unknown:
        raise DataError(f"Unknown kind(s) {unknown} in the runs table. Available: {', '.join(KINDS)}.")
    rows: list[dict] = []
    for (experiment, lpc), group in runs.groupby(["experiment", "labels_per_class"], sort=False, dropna=False):
        keys = {"experiment": experiment, "labels_per_class": lpc}
        rows.extend(_group_verdicts(keys, group, metric, hib, confidence))
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def judge(gain: float, low: float, high: float) -> str:
    """The verdict of a gain (positive = transfer better) and its interval: the wording of :func:`transfer_verdicts`."""
    return _judge(gain, low, high)


def bootstrap_difference(values_a, values_b, *, n_boot: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-item ``a - b`` with a paired percentile-bootstrap interval over the items.

    For two models scored on the same test items (per-item correctness for
    accuracy): resampling the items with replacement, ``n_boot`` times,
    gives the spread of the accuracy difference that comes from which test
    items were drawn. It does not include seed-to-seed training variation;
    :func:`paired_difference` over seeds does.

    Args:
        values_a: per-item values of model A (e.g. 1.0 where A is right).
        values_b: the same items under model B.
        n_boot: bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: random seed of the resampling.

    Returns:
        ``(mean difference, low, high)``.

    Raises:
        DataError: lengths differ, or no items.

    Example:
        >>> d, low, high = bootstrap_difference([1, 1, 1, 0] * 50, [1, 0, 0, 0] * 50)
        >>> round(d, 2), low > 0
        (0.5, True)
    """
    confidence = _check_confidence(confidence)
    a = np.asarray(values_a, dtype=np.float64).ravel()
    b = np.asarray(values_b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise DataError(f"Paired per-item values must be non-empty and of the same length; got {a.size} and {b.size}.")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 4_000_000 // diff.size)  # bound the index matrix to ~32 MB
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        means[start:start + rows] = diff[rng.integers(0, diff.size, size=(rows, diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


def bootstrap_statistic_difference(rows_a, rows_b, statistic, *, n_boot: int = 2000, confidence: float = 0.95,
                                   seed: int = 0) -> tuple[float, float, float]:
    """``statistic(sum of rows_a) - statistic(sum of rows_b)`` with a paired percentile-bootstrap interval.

    For metrics that are not a mean over items, such as entity F1 from per-sentence
    ``(true positives, false positives, false negatives)``: items (rows) are resampled
    with replacement, the same rows for both models, and the statistic is recomputed
    from the column sums. Covers which test items were drawn, not training noise.

    Example:
        >>> f1 = lambda c: 2 * c[0] / max(2 * c[0] + c[1] + c[2], 1)
        >>> d, low, high = bootstrap_statistic_difference([[2, 0, 0]] * 50, [[1, 1, 1]] * 50, f1)
        >>> round(d, 2), low > 0
        (0.5, True)
    """
    confidence = _check_confidence(confidence)
    a, b = np.asarray(rows_a, dtype=np.float64), np.asarray(rows_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise DataError(f"Paired per-item rows must be non-empty 2-D arrays of one shape; got {a.shape} and {b.shape}.")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, len(a), size=len(a))
        diffs[k] = statistic(a[idx].sum(0)) - statistic(b[idx].sum(0))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return float(statistic(a.sum(0)) - statistic(b.sum(0))), float(low), float(high)
