"""Top-k selection without beta or value refit (SnapKV-like)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import ScoredSelector, resolve_budget


@dataclass
class TopK(ScoredSelector):
    """SnapKV-style selection (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before
    Generation"): keep the `budget` positions (ratio in (0, 1] or count) with the highest task-guided
    attention, pooled with `smooth_kernel`; kept keys and values are used as they are (no beta, no C2)."""

    budget: float | int = 0.1

    def count(self, shared: torch.Tensor) -> int:
        return resolve_budget(self.budget, shared.numel())
