"""Keep every trajectory position (the full cache, served by the compacted-cache code path)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from briefing.selection.base import Selector, device_of


@dataclass(kw_only=True)
class KeepAll(Selector):
    """Identity compaction: all positions, beta = 0, original values. Equals the full cache exactly."""

    keeps_all: ClassVar[bool] = True

    def select(self, layers: int, kv_heads: int, length: int, scores=None, *, count=None, device=None) -> torch.Tensor:
        n = length if count is None else min(length, count)
        return torch.arange(n, device=device_of(scores, device)).view(1, 1, -1).expand(layers, kv_heads, -1)
