"""Most-recent window (plus the attention sink)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import Selector, broadcast, resolve_budget


@dataclass
class RecentWindow(Selector):
    """StreamingLLM-style window (Xiao et al., 2023, "Efficient Streaming Language Models with Attention
    Sinks"): the first `sinks` positions plus the most recent ones, `budget` in all (ratio or count)."""

    budget: float | int = 0.1
    sinks: int = 1

    def select(self, layers: int, kv_heads: int, length: int, scores=None) -> torch.Tensor:
        t = resolve_budget(self.budget, length)
        sinks = min(self.sinks, t)
        positions = torch.cat([torch.arange(sinks), torch.arange(length - (t - sinks), length)])
        return broadcast(positions.unique(), layers, kv_heads)
