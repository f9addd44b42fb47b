"""Selection strategies: which trajectory positions each (layer, KV head) keeps.

A selector returns kept indices as a regular tensor [layers, kv_heads, t] (sorted per row), so every
downstream step (fit, cache build, biased attention) is batched over all (layer, KV head) pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from briefing.errors import BriefingError


@dataclass
class Scores:
    """Task-guided attention of the worker prompt to every trajectory position.

    per_head: [layers, kv_heads, T] attention probability averaged over the prompt tokens and the query
    heads of each KV head. shared: [T] the same averaged over layers and KV heads (one shared score).
    keys: [layers, kv_heads, T, d] the trajectory keys, for query-agnostic scores (None if not given).
    """

    per_head: torch.Tensor
    shared: torch.Tensor
    keys: torch.Tensor | None = None


def resolve_budget(budget: float | int, length: int) -> int:
    """A ratio in (0, 1] or a count >= 0 -> number of positions to keep (at most `length`)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or isinstance(budget, float) and not math.isfinite(budget):
        raise BriefingError(f"budget must be a ratio in (0, 1] or a token count, got {budget!r}.")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise BriefingError(f"budget ratio must be in (0, 1], got {budget}. Pass an int for a token count.")
        return max(1, min(length, math.ceil(budget * length)))
    if budget < 0:
        raise BriefingError(f"budget count must be >= 0, got {budget}.")
    return min(length, budget)


def smooth(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Average-pool scores over neighbouring positions (last dim) so a kept token keeps its neighbours."""
    if kernel <= 1:
        return scores
    shape = scores.shape
    flat = scores.reshape(-1, 1, shape[-1])
    return F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2, count_include_pad=False).reshape(shape)


def broadcast(positions: torch.Tensor, layers: int, kv_heads: int) -> torch.Tensor:
    """[t] shared positions -> [layers, kv_heads, t]."""
    return positions.sort().values.view(1, 1, -1).expand(layers, kv_heads, -1).contiguous()


@dataclass
class Selector:
    """Base class. `fit`: refit beta and values after selection. `needs_scores`: uses task-guided scores.

    reuse_prompt_kv: keep the worker prompt's keys and values from the scoring pass (computed against the
    full cache) instead of recomputing them on the compacted cache.
    """

    fit: ClassVar[bool] = False
    needs_scores: ClassVar[bool] = False
    reuse_prompt_kv: bool = False

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class ScoredSelector(Selector):
    """A selector driven by task-guided scores.

    per_head: equal-size selection per (layer, KV head) by each head's own score (t from the shared rule);
    False: one shared mask. smooth_kernel: score pooling width, so a kept token keeps its neighbours (SnapKV
    uses 5; measured: it keeps multi-token values such as digit strings intact, see README "Benchmarks").
    protect_first: always keep the first positions (attention sink). rescore_tokens: before selecting, greedily
    generate this many tokens on the full cache and mix their queries' attention into the scores with weight
    rescore_weight (the answer's first tokens attend to where the answer is; see briefing.rescore).
    """

    needs_scores: ClassVar[bool] = True
    per_head: bool = True
    smooth_kernel: int = 5
    protect_first: int = 1
    reuse_prompt_kv: bool = True
    rescore_tokens: int = 0
    rescore_weight: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.rescore_tokens, bool) or not isinstance(self.rescore_tokens, int) or self.rescore_tokens < 0:
            raise BriefingError(f"rescore_tokens must be an int >= 0, got {self.rescore_tokens!r}.")
        if not 0.0 <= self.rescore_weight <= 1.0:
            raise BriefingError(f"rescore_weight must be in [0, 1], got {self.rescore_weight!r}.")

    def count(self, shared: torch.Tensor) -> int:
        raise NotImplementedError

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None) -> torch.Tensor:
        assert scores is not None
        shared = smooth(scores.shared, self.smooth_kernel)
        t = min(length, max(self.count(shared), min(self.protect_first, length)))
        if t == 0:
            return torch.empty(layers, kv_heads, 0, dtype=torch.long)
        if self.per_head:
            per_head = smooth(scores.per_head, self.smooth_kernel).clone()
            per_head[..., : self.protect_first] = float("inf")
            return per_head.topk(t, dim=-1).indices.sort(dim=-1).values
        shared = shared.clone()
        shared[: self.protect_first] = float("inf")
        return broadcast(shared.topk(t).indices, layers, kv_heads)
