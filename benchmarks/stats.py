"""The one bootstrap of the benchmarks: percentile 95% intervals from B resamples with a fixed seed (the same data
give the same interval).

`resample(n)` draws the indices [B, n] that every interval of a table shares: resampling the same episodes for
every condition keeps a difference between two conditions paired (Efron & Tibshirani 1993, ch. 16).
`interval(replicates)` is the [2.5%, 97.5%] of the replicates. `bootstrap_ci(values)` puts them together for one
list: the mean (or the median) of the values, or, with `groups`, of all values resampling whole groups (an
episode's questions share one trajectory, so they are not independent draws).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

B = 2000


def resample(n: int, reps: int = B, seed: int = 0) -> np.ndarray:
    """Bootstrap indices [reps, n] into n items."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def interval(replicates: np.ndarray) -> list[float]:
    """[2.5%, 97.5%] of the bootstrap replicates (first axis)."""
    lo, hi = np.percentile(np.asarray(replicates, dtype=float), [2.5, 97.5], axis=0)
    return [float(lo), float(hi)]


def bootstrap_ci(values: Sequence[float] | None = None, *, groups: Sequence[Sequence[float]] | None = None,
                 stat: str = "mean", reps: int = B, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean (or `stat="median"`) of `values`; or of the mean of all values of `groups`, whole
    groups resampled. No data: (nan, nan)."""
    if groups is None:
        groups = [[v] for v in values or ()]
    elif values is not None:
        raise ValueError("bootstrap_ci: pass values or groups, not both")
    if not groups:
        return (float("nan"), float("nan"))
    idx = resample(len(groups), reps, seed)                                          # [reps, n]
    if stat == "median":
        if any(len(g) != 1 for g in groups):
            raise ValueError("bootstrap_ci: the median is of single values, not of groups")
        x = np.array([g[0] for g in groups], dtype=float)                             # [n]
        lo, hi = interval(np.median(x[idx], axis=1))
        return (lo, hi)
    if stat != "mean":
        raise ValueError(f"bootstrap_ci: stat must be 'mean' or 'median', got {stat!r}")
    sums = np.array([sum(g) for g in groups], dtype=float)                           # [n]
    counts = np.array([len(g) for g in groups], dtype=float)                         # [n]
    lo, hi = interval(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
    return (lo, hi)
