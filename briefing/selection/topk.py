"""Top-k selection without beta or value refit (SnapKV-like)."""
from __future__ import annotations

from dataclasses import dataclass

from briefing.selection.base import ScoredSelector


@dataclass(kw_only=True)
class TopK(ScoredSelector):
    """SnapKV-style selection (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before
    Generation"): keep `ratio` (in (0, 1]) or `tokens` (>= 1) positions with the highest task-guided
    attention, pooled with `smooth_kernel`; kept keys and values are used as they are (no fit unless `fit`
    is given). The other options are `ScoredSelector`'s."""
