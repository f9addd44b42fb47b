"""Paired bootstrap over episodes: 95% intervals for accuracies, differences from full text, token reduction.

Paired: every bootstrap replicate resamples the same episodes for all conditions, so a difference between
two conditions keeps its pairing (Efron & Tibshirani 1993, ch. 16; as in RULER-style per-task reporting).
Percentile intervals from `B` replicates with a fixed seed: the same rows give the same intervals.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from benchmarks.stats import B as B_DEFAULT
from benchmarks.stats import interval, resample


def _matrix(rows: list[dict], field: str, episodes: list[str], conditions: list[str]) -> np.ndarray:
    by = {(r["episode"], r["condition"]): r for r in rows}
    return np.array([[float(by[(e, c)][field]) for c in conditions] for e in episodes])   # [n_episodes, C]


def summarize(rows: list[dict], B: int = B_DEFAULT, seed: int = 0, reference: str = "full") -> list[dict]:
    """One dict per condition (in first-seen order), with paired bootstrap 95% intervals (`*_ci95`).

    accuracy: mean of `correct`; diff_full: accuracy - reference accuracy; token_reduction: mean over
    episodes of 1 - input_tokens / full-text input tokens (the text handoff of the same call).
    """
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    per_cond = defaultdict(set)
    for r in rows:
        per_cond[r["condition"]].add(r["episode"])
    episodes = sorted(set.intersection(*per_cond.values())) if per_cond else []
    if not episodes:
        return []
    n = len(episodes)
    correct = _matrix(rows, "correct", episodes, conditions)                                # [n, C]
    reduction = 1.0 - _matrix(rows, "input_ratio", episodes, conditions)                    # [n, C]
    idx = resample(n, B, seed)                                                              # [B, n]
    acc_b = correct[idx].mean(axis=1)                                                       # [B, C]
    red_b = reduction[idx].mean(axis=1)                                                     # [B, C]
    ref = conditions.index(reference) if reference in conditions else None
    by = defaultdict(list)
    for r in rows:
        by[r["condition"]].append(r)
    out = []
    for j, c in enumerate(conditions):
        rs = by[c]
        x: dict[str, Any] = {
            "condition": c, "method": rs[0]["method"], "param": rs[0]["param"], "matched_to": rs[0]["matched_to"],
            "n": n, "accuracy": float(correct[:, j].mean()), "accuracy_ci95": interval(acc_b[:, j]),
            "token_reduction": float(reduction[:, j].mean()), "token_reduction_ci95": interval(red_b[:, j]),
            "token_reduction_median": float(np.median(reduction[:, j])),
            "input_tokens_median": float(np.median([r["input_tokens"] for r in rs])),
            "kept_ratio_mean": float(np.mean([r["kept_ratio"] for r in rs])),
            "agree_full": float(np.mean([r["agree_full"] for r in rs])),
            "kl_mean": float(np.mean([r["kl"] for r in rs])), "kl_median": float(np.median([r["kl"] for r in rs])),
            "choice_kl_median": float(np.median([r.get("choice_kl", 0.0) for r in rs])),
            "latency_s_median": float(np.median([r["latency_s"] for r in rs])),
            "overhead_s_median": float(np.median([r["overhead_s"] for r in rs])),
        }
        if ref is not None:
            d = correct[:, j] - correct[:, ref]
            x["diff_full"] = float(d.mean())
            x["diff_full_ci95"] = interval(acc_b[:, j] - acc_b[:, ref])
            lat_ref = float(np.median([r["latency_s"] for r in by[reference]]))
            x["latency_vs_full"] = x["latency_s_median"] / lat_ref if lat_ref > 0 else None
            # P3: >= 80% fewer worker input tokens at accuracy within 2 points of full text, by the intervals
            x["p3_supported"] = bool(x["token_reduction_ci95"][0] >= 0.80 and x["diff_full_ci95"][0] >= -0.02)
        gen = [r["gen_match"] for r in rs if "gen_match" in r]
        x["gen_accuracy"] = float(np.mean(gen)) if gen else None
        out.append(x)
    return out


def breakdown(rows: list[dict], field: str, conditions: list[str] | None = None, B: int = B_DEFAULT,
              seed: int = 0) -> dict[str, list[dict]]:
    """`summarize` within each value of `field` (family, target_tokens, depth), for the given conditions."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if conditions is None or r["condition"] in conditions:
            groups[str(r[field])].append(r)
    out = {}
    for g, rs in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0])):
        s = summarize(rs, B=B, seed=seed)
        chance = np.mean([1.0 / r["n_candidates"] for r in rs if r["condition"] == "full"]) if rs else None
        for x in s:
            x["chance"] = float(chance) if chance is not None else None
        out[g] = s
    return out
