"""Random selection of a fixed number of positions."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import SizedSelector, broadcast, check_int


@dataclass(kw_only=True)
class RandomKeep(SizedSelector):
    """Keeps `ratio` (in (0, 1]) or `tokens` (>= 1) positions: the first `sinks` (attention sink) plus positions
    drawn uniformly with `seed` (an integer >= 0); shared by all heads."""

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("RandomKeep", "seed", self.seed, 0, "random generator seed")

    def select(self, layers: int, kv_heads: int, length: int, scores=None) -> torch.Tensor:
        t = self.count(length)
        sinks = min(self.sinks, t)
        g = torch.Generator().manual_seed(self.seed)
        drawn = sinks + torch.randperm(length - sinks, generator=g)[: t - sinks]
        return broadcast(torch.cat([torch.arange(sinks), drawn]), layers, kv_heads)
