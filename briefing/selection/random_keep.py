"""Random selection of a fixed budget."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import Selector, broadcast, resolve_budget


@dataclass
class RandomKeep(Selector):
    """Keeps `budget` positions (ratio in (0, 1] or count): the first `sinks` (attention sink) plus positions
    drawn uniformly with `seed`; shared by all heads."""

    budget: float | int = 0.1
    seed: int = 0
    sinks: int = 1

    def select(self, layers: int, kv_heads: int, length: int, scores=None) -> torch.Tensor:
        t = resolve_budget(self.budget, length)
        sinks = min(self.sinks, t)
        g = torch.Generator().manual_seed(self.seed)
        drawn = sinks + torch.randperm(length - sinks, generator=g)[: t - sinks]
        return broadcast(torch.cat([torch.arange(sinks), drawn]), layers, kv_heads)
