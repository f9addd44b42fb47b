"""Selection strategies: which trajectory positions each (layer, KV head) keeps.

Built like kvpress's presses: `Selector` is a base with no fields whose capabilities are class flags, every
option is keyword-only and checked when the selector is built, and each selector implements one method:
`select()` (positions from nothing but the length) or, for a `ScoredSelector`, `score()` (reshape the
guidance attention; the base keeps the top positions). Refitting beta and values is a separate step
(`Fit`) that a compaction or a fold runs after any selector whose `fit` is set.

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
from briefing.options import check_bool, check_int, check_number

DEFAULT_RATIO = 0.1  # kept share of a sized selector given neither ratio nor tokens


@dataclass
class Scores:
    """Task-guided attention of the worker prompt to every trajectory position.

    per_head: [layers, kv_heads, T] attention probability averaged over the prompt tokens and the query
    heads of each KV head. shared: [T] the same averaged over layers and KV heads (one shared score).
    keys: [layers, kv_heads, T, d] the trajectory keys, for query-agnostic scores (None if not given).
    importance: [layers, kv_heads, T] the query-agnostic score the cache keeps for every position (how much the
    model needs it to reconstruct the text: `briefing.importance`), or None (a cache built with importance=False).
    """

    per_head: torch.Tensor
    shared: torch.Tensor
    keys: torch.Tensor | None = None
    importance: torch.Tensor | None = None


def check_ratio(owner: str, value: object) -> None:
    check_number(owner, "ratio", value, low=0, high=1, low_open=True,
                 what="the kept share of the trajectory; pass tokens=N for a count of positions")


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


def look_ahead(scores: torch.Tensor, window: int, decay: float) -> torch.Tensor:
    """s'[i] = max_{0 <= k <= window} decay^k s[i - k]: the `window` positions after a high score inherit it,
    decayed, so a kept quote keeps the tokens that continue it. scores [..., T] -> [..., T]."""
    out = scores.clone()
    T = scores.shape[-1]
    for k in range(1, min(window, T - 1) + 1):
        shifted = F.pad(scores[..., : T - k], (k, 0)) * decay ** k                  # [..., T]
        out = torch.maximum(out, shifted)
    return out


def spread(scores: torch.Tensor, ahead: int, back: int, decay: float) -> torch.Tensor:
    """Look-ahead over `ahead` positions and look-back over `back` (decayed max). [..., T] -> [..., T]."""
    if not ahead and not back:
        return scores
    return torch.maximum(look_ahead(scores, ahead, decay), look_ahead(scores.flip(-1), back, decay).flip(-1))


def broadcast(positions: torch.Tensor, layers: int, kv_heads: int) -> torch.Tensor:
    """[t] shared positions -> [layers, kv_heads, t]."""
    return positions.sort().values.view(1, 1, -1).expand(layers, kv_heads, -1).contiguous()


def top_positions(scores: torch.Tensor, t: int, sinks: int) -> torch.Tensor:
    """Sorted indices of the t best scores per row of [..., T], the first `sinks` positions always among them."""
    ranked = scores.clone()
    ranked[..., :sinks] = float("inf")
    return ranked.topk(t, dim=-1).indices.sort(dim=-1).values                      # [..., t]


@dataclass(frozen=True, kw_only=True)
class Fit:
    """The fit step after selection (Attention Matching): per (layer, KV head), beta by box-constrained NNLS so
    the kept keys carry the attention mass of all keys, then values C2 by least squares pulled toward the
    original values. Works after any selector: a compaction or a fold runs it when `selector.fit` is set.

    ridge: C2 regulariser, relative to the mean diagonal of X X^T, > 0. beta_max: bound on |beta|, > 0.
    nnls_iters: projected-gradient steps, >= 1.
    """

    ridge: float = 1e-2
    beta_max: float = 8.0
    nnls_iters: int = 15

    def __post_init__(self) -> None:
        check_number("Fit", "ridge", self.ridge, low=0, low_open=True)
        check_number("Fit", "beta_max", self.beta_max, low=0, low_open=True)
        check_int("Fit", "nnls_iters", self.nnls_iters, low=1, what="projected-gradient steps")


class Selector:
    """Base of every selector: no fields, capabilities as class flags, one method. Subclasses are keyword-only
    dataclasses that check their options in `__post_init__`. The same selector serves a per-call compaction and a
    fold of the persistent cache (`FoldPolicy(selector=...)`): one selection mechanism.

    needs_scores: `select` receives the guidance `Scores` (else None).
    keeps_all: every position is kept unchanged, so the compacted cache can share the full cache's tensors.
    reuse_prompt_kv: keep the worker prompt's keys and values from the scoring pass (computed against the full
        cache) instead of recomputing them on the compacted cache (scored selectors make it an option).
    fit: the `Fit` to run after selection, or None (a subclass may make it an option, as AttentionMatching does).
    """

    needs_scores: ClassVar[bool] = False
    keeps_all: ClassVar[bool] = False
    reuse_prompt_kv: ClassVar[bool] = False
    fit: ClassVar[Fit | None] = None

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None, *, count: int | None = None,
               device: torch.device | None = None) -> torch.Tensor:
        """Kept positions [layers, kv_heads, t] of `length`, sorted per row, on `device` (None: the scores' device,
        else the CPU). count: keep exactly that many per row (a fold decides its own size); None: the selector's
        own size rule (ratio, tokens, tau...)."""
        raise NotImplementedError(f"{type(self).__name__} must implement select() (or score(), for a ScoredSelector)")


def device_of(scores: Scores | None, device: torch.device | None) -> torch.device:
    """Where a selection's tensors are made: `device`, else the scores', else the CPU (never the default device)."""
    if device is not None:
        return torch.device(device)
    return scores.per_head.device if scores is not None else torch.device("cpu")


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
            raise BriefingError(f"{owner}: pass ratio or tokens, not both (got ratio={self.ratio!r}, "
                                f"tokens={self.tokens!r}).")
        if self.ratio is not None:
            check_ratio(owner, self.ratio)
        check_int(owner, "tokens", self.tokens, low=1, none=True, what="positions kept; use KeepNone() to keep none")
        check_int(owner, "sinks", self.sinks, low=0, what="first positions always kept")
        if self.ratio is None and self.tokens is None and self.size_required():
            self.ratio = DEFAULT_RATIO

    def size_required(self) -> bool:
        """False when another setting decides the count (AttentionMatching's tau)."""
        return True

    def count(self, length: int, count: int | None = None) -> int:
        """Positions to keep of `length`: `count` when the caller decides, else ratio or tokens."""
        return min(length, count) if count is not None else keep_count(self.ratio, self.tokens, length)


@dataclass(kw_only=True)
class ScoredSelector(SizedSelector):
    """A selector driven by the guidance scores (kvpress's ScorerPress): keeps the highest-scoring positions.
    A subclass may override `score()` to reshape the scores; the base pools them and takes the top positions.

    per_head: equal-size selection per (layer, KV head) by each head's own score (the count from the shared
    score); False: one shared mask. smooth_kernel: odd score pooling width, so a kept token keeps its
    neighbours (SnapKV uses 5; measured: it keeps multi-token values such as digit strings intact, see
    docs/benchmarks.md). reuse_prompt_kv: see `Selector`. fit: a `Fit` to refit beta and values after selection.
    look_ahead: the positions after a pooled score inherit it, decayed by `look_ahead_decay` (in (0, 1]) per step,
    so a quote keeps the words that continue it: the answer lives after the words a question names (measured:
    8 wins on held-out recall questions and on the exact-value case, see docs/benchmarks.md, "Selection that covers
    the answer"; 0: off). look_back: the same toward earlier positions (0: off).
    rescore_tokens: before selecting, greedily generate this many tokens on the full cache and mix their queries'
    attention into the scores with weight `rescore_weight` in [0, 1] (the answer's first tokens attend to where
    the answer is; see briefing.rescore). 0: off. A fold has no generated tokens: it ignores the option.
    agnostic: the share in [0, 1] of the kept positions chosen by the query-agnostic importance (`Scores.importance`)
    before the guidance ranking fills the rest (a union of budgets): what reconstructing the text needs is kept
    whatever the question attends to. 0: the guidance alone; 1: the importance alone (KVzip's selection). Ignored
    when the scores carry no importance.
    """

    needs_scores: ClassVar[bool] = True
    per_head: bool = True
    smooth_kernel: int = 5
    reuse_prompt_kv: bool = True
    fit: Fit | None = None
    look_ahead: int = 8
    look_back: int = 0
    look_ahead_decay: float = 0.9
    rescore_tokens: int = 0
    rescore_weight: float = 0.5
    agnostic: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_number(owner, "agnostic", self.agnostic, low=0, high=1,
                     what="share of the kept positions chosen by the query-agnostic importance")
        check_int(owner, "look_ahead", self.look_ahead, low=0,
                  what="positions after a scored one that inherit its score")
        check_int(owner, "look_back", self.look_back, low=0,
                  what="positions before a scored one that inherit its score")
        check_number(owner, "look_ahead_decay", self.look_ahead_decay, low=0, high=1, low_open=True)
        check_int(owner, "rescore_tokens", self.rescore_tokens, low=0,
                  what="greedy tokens whose queries re-score; 0: off")
        check_number(owner, "rescore_weight", self.rescore_weight, low=0, high=1)
        check_bool(owner, "per_head", self.per_head)
        check_bool(owner, "reuse_prompt_kv", self.reuse_prompt_kv)
        check_int(owner, "smooth_kernel", self.smooth_kernel, low=1, what="odd; 1: no pooling")
        if self.smooth_kernel % 2 == 0:
            raise BriefingError(f"{owner}: smooth_kernel must be an odd integer >= 1 (1: no pooling), "
                                f"got {self.smooth_kernel!r}.")
        if self.fit is not None and not isinstance(self.fit, Fit):
            raise BriefingError(f"{owner}: fit must be a briefing.Fit or None, got {self.fit!r}.")

    def score(self, scores: Scores) -> Scores:
        """The scores positions are ranked by (default: the guidance attention as it is)."""
        return scores

    def count_scored(self, shared: torch.Tensor) -> int:
        """Number of positions to keep given the pooled shared score [T] (default: ratio or tokens)."""
        return self.count(shared.numel())

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None, *, count: int | None = None,
               device: torch.device | None = None) -> torch.Tensor:
        if scores is None:
            raise BriefingError(f"{type(self).__name__} needs guidance scores: call it through briefing.compact() or "
                                "a fold.")
        scores = self.score(scores)
        if count is None:
            count = self.count_scored(smooth(scores.shared, self.smooth_kernel))
        t = min(length, max(count, min(self.sinks, length)))
        if t == 0:
            return torch.empty(layers, kv_heads, 0, dtype=torch.long, device=device_of(scores, device))
        if self.per_head:
            ranked = self.rank(scores.per_head, scores.keys)                               # [L, H, T]
            importance = scores.importance                                                # [L, H, T]
        else:
            ranked = self.rank(scores.shared, None)                                        # [T]
            importance = None if scores.importance is None else scores.importance.mean(dim=(0, 1))   # [T]
        a = round(self.agnostic * t) if importance is not None else 0
        if a:   # the importance's best first, then the guidance's (a union of budgets)
            ranked = ranked.scatter(-1, top_positions(importance, a, self.sinks), float("inf"))
        kept = top_positions(ranked, t, self.sinks)                                        # [L, H, t] or [t]
        return kept if self.per_head else broadcast(kept, layers, kv_heads)

    def rank(self, scores: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """What positions are ranked by: the scores [..., T] pooled, then spread after (and before) each position.
        keys [L, H, T, d] (per-head ranking only) for subclasses that use them."""
        return spread(smooth(scores, self.smooth_kernel), self.look_ahead, self.look_back, self.look_ahead_decay)
