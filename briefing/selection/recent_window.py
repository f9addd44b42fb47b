"""Most-recent window (plus the attention sink)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import SizedSelector, broadcast, device_of


@dataclass(kw_only=True)
class RecentWindow(SizedSelector):
    """StreamingLLM-style window (Xiao et al., 2023, "Efficient Streaming Language Models with Attention
    Sinks"): the first `sinks` positions plus the most recent ones, `ratio` (in (0, 1]) or `tokens` (>= 1)
    in all."""

    def select(self, layers: int, kv_heads: int, length: int, scores=None, *, count=None, device=None) -> torch.Tensor:
        t = self.count(length, count)
        sinks = min(self.sinks, t)
        dev = device_of(scores, device)
        positions = torch.cat([torch.arange(sinks, device=dev), torch.arange(length - (t - sinks), length, device=dev)])
        return broadcast(positions.unique(), layers, kv_heads)
