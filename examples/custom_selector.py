"""A custom selector in about 20 lines, driving both a per-call compaction and the folds of the persistent cache.

    python examples/custom_selector.py

A `briefing.ScoredSelector` subclass implements one method, `score()`: the base pools the scores and keeps the top
`ratio` / `tokens` positions (plus the `sinks`), per (layer, KV head). `fit=briefing.Fit()` adds the Attention
Matching refit of beta and values, which works after any selector. The same selector folds a cache past its budget
(`briefing.FoldPolicy(selector=...)`): the fold decides how many positions of its span to keep, the selector which.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

import briefing
from briefing.options import check_number


@dataclass(kw_only=True)
class RecencyWeighted(briefing.ScoredSelector):
    """Ranks positions by attention x (1 + boost x position / T): later trajectory text (the latest REPL
    outputs) wins near-ties. boost: a finite number >= 0 (0 ranks as TopK does)."""

    boost: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("RecencyWeighted", "boost", self.boost, low=0)

    def score(self, scores: briefing.Scores) -> briefing.Scores:
        T = scores.shared.shape[-1]
        ramp = 1 + self.boost * torch.arange(T, dtype=scores.shared.dtype, device=scores.shared.device) / T   # [T]
        return replace(scores, per_head=scores.per_head * ramp, shared=scores.shared * ramp)


NOTES = ("REPL output: the first file lists suppliers. Worker answer: the key is 4417. REPL output: the second file "
         "is empty. Note: check the third file. ")


def main(lm: briefing.LoadedModel | None = None) -> list[briefing.CompactionStats]:
    lm = lm or briefing.load_model()
    cache = briefing.TrajectoryCache(lm, NOTES)
    prompt = " Question: what is the key? Answer:"
    full = cache.compact(prompt, briefing.KeepAll())
    stats = []
    for selector in (briefing.TopK(ratio=0.3), RecencyWeighted(ratio=0.3, boost=2.0),
                     RecencyWeighted(ratio=0.3, boost=2.0, fit=briefing.Fit())):
        ctx = cache.compact(prompt, selector)
        gap = briefing.loglikelihood(full, " 4417") - briefing.loglikelihood(ctx, " 4417")
        print(f"{selector!r}\n  kept {ctx.stats.kept}/{ctx.stats.original_length}, log-prob gap to full {gap:.3f}")
        stats.append(ctx.stats)
    # the same selector folds: a cache of 160 positions, fed six times its budget
    fold = briefing.FoldPolicy(selector=RecencyWeighted(boost=2.0, sinks=0, fit=briefing.Fit()), recent=32)
    small = briefing.TrajectoryCache(lm, budget=160, reserve=32, fold=fold)
    while small.tokens < 6 * small.budget:
        small.extend(NOTES)
    print(f"folded {len(small.folds)} times with {small.folds[-1].selector.split('(')[0]}: {small.tokens} tokens "
          f"in {small.length} positions")
    return stats


if __name__ == "__main__":
    main()
