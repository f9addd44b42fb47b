"""Random selection of a fixed number of positions."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.options import check_int
from briefing.selection.base import SizedSelector, broadcast, device_of


@dataclass(kw_only=True)
class RandomKeep(SizedSelector):
    """Keeps `ratio` (in (0, 1]) or `tokens` (>= 1) positions: the first `sinks` (attention sink) plus positions
    drawn uniformly with `seed` (an integer >= 0); shared by all heads."""

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("RandomKeep", "seed", self.seed, low=0, what="random generator seed")

    def select(self, layers: int, kv_heads: int, length: int, scores=None, *, count=None, device=None) -> torch.Tensor:
        t = self.count(length, count)
        sinks = min(self.sinks, t)
        g = torch.Generator().manual_seed(self.seed)                    # a CPU generator: the same draw on any device
        drawn = sinks + torch.randperm(length - sinks, generator=g, device="cpu")[: t - sinks]
        positions = torch.cat([torch.arange(sinks, device="cpu"), drawn]).to(device_of(scores, device))
        return broadcast(positions, layers, kv_heads)
