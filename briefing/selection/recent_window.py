"""Most-recent window (plus the attention sink)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import SizedSelector, broadcast


@dataclass(kw_only=True)
class RecentWindow(SizedSelector):
    """StreamingLLM-style window (Xiao et al., 2023, "Efficient Streaming Language Models with Attention
    Sinks"): the first `sinks` positions plus the most recent ones, `ratio` (in (0, 1]) or `tokens` (>= 1)
    in all."""

    def select(self, layers: int, kv_heads: int, length: int, scores=None) -> torch.Tensor:
        t = self.count(length)
        sinks = min(self.sinks, t)
        positions = torch.cat([torch.arange(sinks), torch.arange(length - (t - sinks), length)])
        return broadcast(positions.unique(), layers, kv_heads)
