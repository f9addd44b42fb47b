"""Selection strategies: which trajectory positions each (layer, KV head) keeps.

Built like kvpress's presses: `Selector` is a base with no fields whose capabilities are class flags, every
option is keyword-only and checked when the selector is built, and each selector implements one method:
`select()` (positions from nothing but the length) or, for a `ScoredSelector`, `score()` (reshape the
task-guided attention; the base keeps the top positions). Refitting beta and values is a separate step
(`Fit`) that `briefing.compact` runs after any selector whose `fit` is set.

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

DEFAULT_RATIO = 0.1  # kept share of a sized selector given neither ratio nor tokens


@dataclass
class Scores:
    """Task-guided attention of the worker prompt to every trajectory position.

    per_head: [layers, kv_heads, T] attention probability averaged over the prompt tokens and the query
    heads of each KV head. shared: [T] the same averaged over layers and KV heads (one shared score).
    """

    per_head: torch.Tensor
    shared: torch.Tensor


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_ratio(owner: str, value: object) -> None:
    if not (_is_number(value) and 0 < value <= 1):
        raise BriefingError(f"{owner}: ratio must be a number in (0, 1] (the kept share of the trajectory), "
                            f"got {value!r}; pass tokens=N for a count of positions.")


def check_int(owner: str, name: str, value: object, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BriefingError(f"{owner}: {name} must be an integer >= {low} ({what}), got {value!r}.")


def check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise BriefingError(f"{owner}: {name} must be True or False, got {value!r}.")


def keep_count(ratio: float | None, tokens: int | None, length: int) -> int:
    """A ratio in (0, 1] (at least one position) or a count -> number of positions to keep (at most `length`)."""
    if tokens is not None:
        return min(length, tokens)
    return max(1, min(length, math.ceil((DEFAULT_RATIO if ratio is None else ratio) * length)))


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


@dataclass(frozen=True, kw_only=True)
class Fit:
    """The fit step after selection (Attention Matching): per (layer, KV head), beta by box-constrained NNLS so
    the kept keys carry the attention mass of all keys, then values C2 by least squares pulled toward the
    original values. Works after any selector: `briefing.compact` runs it when `selector.fit` is set.

    ridge: C2 regulariser, relative to the mean diagonal of X X^T, > 0. beta_max: bound on |beta|, > 0.
    nnls_iters: projected-gradient steps, >= 1.
    """

    ridge: float = 1e-2
    beta_max: float = 8.0
    nnls_iters: int = 15

    def __post_init__(self) -> None:
        for name in ("ridge", "beta_max"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                raise BriefingError(f"Fit: {name} must be a finite number > 0, got {value!r}.")
        check_int("Fit", "nnls_iters", self.nnls_iters, 1, "projected-gradient steps")


class Selector:
    """Base of every selector: no fields, capabilities as class flags, one method. Subclasses are keyword-only
    dataclasses that check their options in `__post_init__`.

    needs_scores: `select` receives the task-guided `Scores` (else None).
    keeps_all: every position is kept unchanged, so the compacted cache can share the full cache's tensors.
    reuse_prompt_kv: keep the worker prompt's keys and values from the scoring pass (computed against the full
        cache) instead of recomputing them on the compacted cache (scored selectors make it an option).
    fit: the `Fit` to run after selection, or None (a subclass may make it an option, as AttentionMatching does).
    """

    needs_scores: ClassVar[bool] = False
    keeps_all: ClassVar[bool] = False
    reuse_prompt_kv: ClassVar[bool] = False
    fit: ClassVar[Fit | None] = None

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None) -> torch.Tensor:
        """Kept positions [layers, kv_heads, t], sorted per row."""
        raise NotImplementedError(f"{type(self).__name__} must implement select() (or score(), for a ScoredSelector)")


@dataclass(kw_only=True)
class SizedSelector(Selector):
    """A selector that keeps a given number of positions: `ratio` of the trajectory (in (0, 1], at least one
    position) or `tokens` positions (>= 1), never both; neither means ratio = 0.1. `sinks`: the first positions,
    always kept (attention sink; StreamingLLM), within that number."""

    ratio: float | None = None
    tokens: int | None = None
    sinks: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.ratio is not None and self.tokens is not None:
            raise BriefingError(f"{owner}: pass ratio or tokens, not both (got ratio={self.ratio!r}, tokens={self.tokens!r}).")
        if self.ratio is not None:
            check_ratio(owner, self.ratio)
        if self.tokens is not None:
            check_int(owner, "tokens", self.tokens, 1, "positions kept; use KeepNone() to keep none")
        check_int(owner, "sinks", self.sinks, 0, "first positions always kept")
        if self.ratio is None and self.tokens is None and self.size_required():
            self.ratio = DEFAULT_RATIO

    def size_required(self) -> bool:
        """False when another setting decides the count (AttentionMatching's tau)."""
        return True

    def count(self, length: int) -> int:
        return keep_count(self.ratio, self.tokens, length)


@dataclass(kw_only=True)
class ScoredSelector(SizedSelector):
    """A selector driven by the task-guided scores (kvpress's ScorerPress): keeps the highest-scoring positions.
    A subclass may override `score()` to reshape the scores; the base pools them and takes the top positions.

    per_head: equal-size selection per (layer, KV head) by each head's own score (the count from the shared
    score); False: one shared mask. smooth_kernel: odd score pooling width, so a kept token keeps its
    neighbours (SnapKV uses 5; measured: it keeps multi-token values such as digit strings intact, see README
    "Benchmarks"). reuse_prompt_kv: see `Selector`. fit: a `Fit` to refit beta and values after selection.
    """

    needs_scores: ClassVar[bool] = True
    per_head: bool = True
    smooth_kernel: int = 5
    reuse_prompt_kv: bool = True
    fit: Fit | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_bool(owner, "per_head", self.per_head)
        check_bool(owner, "reuse_prompt_kv", self.reuse_prompt_kv)
        if isinstance(self.smooth_kernel, bool) or not isinstance(self.smooth_kernel, int) or self.smooth_kernel < 1 \
                or self.smooth_kernel % 2 == 0:
            raise BriefingError(f"{owner}: smooth_kernel must be an odd integer >= 1 (1: no pooling), got {self.smooth_kernel!r}.")
        if self.fit is not None and not isinstance(self.fit, Fit):
            raise BriefingError(f"{owner}: fit must be a briefing.Fit or None, got {self.fit!r}.")

    def score(self, scores: Scores) -> Scores:
        """The scores positions are ranked by (default: the task-guided attention as it is)."""
        return scores

    def count_scored(self, shared: torch.Tensor) -> int:
        """Number of positions to keep given the pooled shared score [T] (default: ratio or tokens)."""
        return self.count(shared.numel())

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None) -> torch.Tensor:
        if scores is None:
            raise BriefingError(f"{type(self).__name__} needs task-guided scores: call it through briefing.compact().")
        scores = self.score(scores)
        shared = smooth(scores.shared, self.smooth_kernel)                         # [T]
        t = min(length, max(self.count_scored(shared), min(self.sinks, length)))
        if t == 0:
            return torch.empty(layers, kv_heads, 0, dtype=torch.long)
        if self.per_head:
            per_head = smooth(scores.per_head, self.smooth_kernel).clone()         # [L, H, T]
            per_head[..., : self.sinks] = float("inf")
            return per_head.topk(t, dim=-1).indices.sort(dim=-1).values
        shared = shared.clone()
        shared[: self.sinks] = float("inf")
        return broadcast(shared.topk(t).indices, layers, kv_heads)
