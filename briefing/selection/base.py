"""Selection strategies: which trajectory positions each (layer, KV head) keeps.

Built like kvpress's presses: `Selector` is a base with no fields whose capabilities are class flags, every
option is keyword-only and checked when the selector is built, and each selector implements one method:
`select()` (positions from nothing but the length) or, for a `ScoredSelector`, `score()` (reshape the
guidance attention; the base keeps the top positions). Refitting beta and values is a separate step
(`Fit`) that a compaction or a fold runs after any selector whose `fit` is set.

A selector returns kept indices as a regular tensor [layers, kv_heads, t] (sorted per row), so every
downstream step (fit, cache build, biased attention) is batched over all (layer, KV head) pairs. A scored selector
with `allocation="global"` or `"hybrid"` keeps a different count per (layer, KV head): its rows are right-padded with
PAD (-1) to the longest row, and a padded slot is a masked one downstream (zero key and value, beta MASKED_BETA: no
attention weight; the fit ignores it), as kvpress's head-wise presses mask dropped keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from briefing.errors import BriefingError
from briefing.matching import PAD
from briefing.options import check_bool, check_choice, check_int, check_number

DEFAULT_RATIO = 0.1  # kept share of a sized selector given neither ratio nor tokens
ALLOCATIONS = ("uniform", "global", "hybrid")
ALLOCATION_SCALES = ("none", "layer", "head", "share")


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


def normalised(scores: torch.Tensor, scale: str) -> torch.Tensor:
    """Scores [L, H, T] (non-negative) made comparable across (layer, KV head) rows for a global ranking: "none" as
    they are (attention probabilities: KVzip's), "layer" divided by each layer's max, "head" by each row's max,
    "share" by each row's sum."""
    if scale == "none":
        return scores
    if scale == "layer":
        norm = scores.amax(dim=(-2, -1), keepdim=True)
    elif scale == "head":
        norm = scores.amax(-1, keepdim=True)
    else:
        norm = scores.sum(-1, keepdim=True)
    return scores / norm.clamp_min(1e-30)


def row_ranks(key: torch.Tensor) -> torch.Tensor:
    """Rank of every entry within its row of [..., T] (0: the row's best)."""
    order = key.argsort(dim=-1, descending=True)
    ranks = torch.arange(key.shape[-1], device=key.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def global_positions(key: torch.Tensor, total: int, low: int, high: int, sinks: int) -> torch.Tensor:
    """The `total` best entries of key [L, H, T] ranked together (all rows at once), each row keeping at least its
    `low` best and the first `sinks` positions, at most its `high` best -> kept positions [L, H, t_max], sorted per
    row and right-padded with PAD to the longest row. Needs L H max(low, sinks) <= total <= L H high."""
    L, H, T = key.shape
    key = (key - key.amin()).div(key.amax() - key.amin() + 1e-30)                  # [0, 1]
    key[..., :sinks] = 2.0                                                         # a row's sinks rank first
    if low > 0 or high < T:   # a floor or a cap per row (none: the ranks within rows are not needed)
        rank = row_ranks(key)                                                      # [L, H, T]
        key = key.masked_fill(rank < low, 2.0).masked_fill(rank >= high, -1.0)     # forced > ranked > capped
    kept = torch.zeros(L * H * T, dtype=torch.bool, device=key.device)
    kept[key.reshape(-1).topk(total).indices] = True
    return mask_rows(kept.view(L, H, T))


def mask_rows(kept: torch.Tensor) -> torch.Tensor:
    """kept [L, H, T] bool -> the kept positions [L, H, t_max], sorted per row and right-padded with PAD to the
    longest row."""
    T = kept.shape[-1]
    width = int(kept.sum(-1).max()) if kept.numel() else 0
    where = torch.where(kept, torch.arange(T, device=kept.device), T).sort(dim=-1).values[..., :width]   # [L, H, w]
    return where.masked_fill(where == T, PAD)


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
    allocation: "uniform": every (layer, KV head) keeps the same count t; "global": every (layer, KV head, position)
    is ranked together (KVzip's allocation), so a row keeps more or less than t and the total stays L H t; the rows
    are right-padded with PAD to the longest (masked slots downstream). Needs per_head; a per-call compaction only
    (a fold keeps a regular cache). With `agnostic`, the share a of the L H t kept entries is the importance's best
    overall, the guidance's best fill the rest. "hybrid": the guidance's share uniform, the importance's global: each
    row keeps its (1 - a) t best by the guidance, its sinks counted among them (as they count in t), then the
    importance's best entries of all rows fill the rest of L H t (no importance in the scores: "uniform").
    allocation_scale: how the scores are made comparable across rows ("none", "layer", "head", "share":
    `normalised`). head_min: each row keeps at least this share of t (in [0, 1]). head_max: each row keeps at most
    head_max x t positions (>= 1; None: up to all), which bounds the padded width.
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
    allocation: str = "uniform"
    allocation_scale: str = "none"
    head_min: float = 0.0
    head_max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_choice(owner, "allocation", self.allocation, ALLOCATIONS,
                     what="how the kept count is shared among the (layer, KV head) pairs")
        check_choice(owner, "allocation_scale", self.allocation_scale, ALLOCATION_SCALES,
                     what="how scores are compared across (layer, KV head) pairs in a global allocation")
        check_number(owner, "head_min", self.head_min, low=0, high=1,
                     what="share of the uniform count every (layer, KV head) keeps at least")
        check_number(owner, "head_max", self.head_max, low=1, none=True,
                     what="most positions a (layer, KV head) keeps, as a multiple of the uniform count")
        if self.allocation != "uniform" and not self.per_head:
            raise BriefingError(f"{owner}: allocation={self.allocation!r} needs per_head=True (a shared mask keeps "
                                "the same positions in every (layer, KV head)).")
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
        if self.allocation == "global" or (self.allocation == "hybrid" and importance is not None):
            return self.allocate(ranked, importance, t)
        a = round(self.agnostic * t) if importance is not None else 0
        if a:   # the importance's best first, then the guidance's (a union of budgets)
            ranked = ranked.scatter(-1, top_positions(importance, a, self.sinks), float("inf"))
        kept = top_positions(ranked, t, self.sinks)                                        # [L, H, t] or [t]
        return kept if self.per_head else broadcast(kept, layers, kv_heads)

    def allocate(self, ranked: torch.Tensor, importance: torch.Tensor | None, t: int) -> torch.Tensor:
        """Global allocation: the L H t best (layer, KV head, position) entries of ranked [L, H, T] (normalised by
        `allocation_scale`), the importance's best overall first when `agnostic` > 0 -> [L, H, t_max] padded.
        Hybrid: each row's (1 - agnostic) t best of ranked, then the importance's best entries overall."""
        L, H, T = ranked.shape
        total = L * H * t
        low = min(t, math.ceil(self.head_min * t))
        if self.allocation == "hybrid":   # each row's guided positions first, then the importance overall
            imp = importance.to(device=ranked.device, dtype=torch.float32)                   # ranking only: float32
            key = normalised(imp, self.allocation_scale)                                     # [L, H, T]
            key = (key - key.amin()).div(key.amax() - key.amin() + 1e-30)                    # [0, 1]
            key = key.masked_fill(self.guided(ranked, t), 2.0)                               # forced: rank first
            return global_positions(key, total, low, self.cap(t, T), min(self.sinks, t))
        key = normalised(ranked, self.allocation_scale)
        a = round(self.agnostic * total) if importance is not None else 0
        if a:   # a union of budgets, over all rows: the importance's a best entries rank above the guidance's
            imp = normalised(importance.to(key.dtype), self.allocation_scale)
            imp = imp.masked_fill(row_ranks(imp) >= self.cap(t, T), -1.0)   # only entries a row may keep
            key = (key - key.amin()).div(key.amax() - key.amin() + 1e-30)
            key.view(-1)[imp.reshape(-1).topk(a).indices] = 1.5
        return global_positions(key, total, low, self.cap(t, T), min(self.sinks, t))

    def guided(self, ranked: torch.Tensor, t: int) -> torch.Tensor:
        """The hybrid allocation's guidance share: [L, H, T] bool, each row's t - round(agnostic t) best positions of
        ranked [L, H, T], its sinks among them."""
        g = t - round(self.agnostic * t)
        mask = torch.zeros(ranked.shape, dtype=torch.bool, device=ranked.device)            # [L, H, T]
        return mask.scatter_(-1, top_positions(ranked, g, min(self.sinks, t)), True) if g else mask

    def cap(self, t: int, length: int) -> int:
        """Most positions one (layer, KV head) keeps in a global allocation."""
        return length if self.head_max is None else min(length, max(t, math.floor(self.head_max * t)))

    def rank(self, scores: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """What positions are ranked by: the scores [..., T] pooled, then spread after (and before) each position.
        keys [L, H, T, d] (per-head ranking only) for subclasses that use them."""
        return spread(smooth(scores, self.smooth_kernel), self.look_ahead, self.look_back, self.look_ahead_decay)
