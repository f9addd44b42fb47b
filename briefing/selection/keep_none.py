"""Keep no trajectory position (the worker sees only its prompt, positions still continue)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from briefing.selection.base import Selector, device_of


@dataclass(kw_only=True)
class KeepNone(Selector):
    """Drops the whole trajectory: the lower bound every compaction must beat."""

    def select(self, layers: int, kv_heads: int, length: int, scores=None, *, count=None, device=None) -> torch.Tensor:
        return torch.empty(layers, kv_heads, 0, dtype=torch.long, device=device_of(scores, device))
