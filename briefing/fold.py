"""Folding: the persistent trajectory cache compacted in place, so that an unbounded trajectory fits a bounded
memory (rolling Attention Matching).

When an extend would take a `TrajectoryCache` past its budget of kept positions, the span between the attention
sink (the first `sink` positions) and the protected recent window (the last `recent` positions) is compacted by
the same step as a per-call compaction (`briefing.compaction.reduce`): guidance queries score the span's keys, the
policy's `selector` keeps `keep` of the span per (layer, KV head), and its fit refits beta so the kept keys carry
the span's attention mass and values so the span's attention output is matched. The span's stored beta (earlier
folds) is in every logit, so the new beta composes with it: beta_new = beta_old[kept] + log w.

A `FoldPolicy` holds only what is the fold's own: when to fold (the sink and recent window it protects), how much
(`keep`, and how the kept positions are shared between old folds and new text) and where its guidance comes from
(`briefing.guidance`). What to keep is the selector's, the same protocol a per-call compaction uses, so a user's
selector folds too.

Decision: an old fold is folded again. Each fold compacts everything between the sink and the recent window,
earlier folds included, to the same number of positions (`keep` of the span), so memory is bounded for any
trajectory length with a fixed ratio (folding only unfolded text at a ratio that shrinks as folds accumulate
reaches a ratio of zero on an unbounded trajectory). How the kept positions are split is `share`: "uniform" (the
default) gives the earlier folds and the newly folded text shares in proportion to the trajectory tokens each
stands for, so old content as a whole keeps its share (within it, positions compete on scores); "recency" lets the
whole span compete on scores, and old folds are then halved again at every fold, their share decaying
geometrically with age.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from briefing import kv
from briefing.compaction import reduce, score_block
from briefing.errors import BriefingError
from briefing.guidance import Guidance, GuidanceMemory, MixGuidance
from briefing.options import check_choice, check_int
from briefing.selection import AttentionMatching, Scores, Selector
from briefing.stats import FoldStats
from briefing.store import KVStore

SHARES = ("uniform", "recency")


def default_fold_selector() -> Selector:
    """What a fold keeps unless told otherwise: each (layer, KV head) its own top positions of the guidance score
    pooled over 5 neighbours, no look-ahead and no sink inside the span, then the fit (beta and values)."""
    return AttentionMatching(sinks=0, look_ahead=0)


def split_kept(kept: int, old_positions: int, old_tokens: int, new_positions: int) -> int:
    """How many of `kept` positions go to the old folds under the "uniform" share: in proportion to the tokens
    each part stands for (old folds: `old_tokens` in `old_positions`; new text: one token per position), within
    what each part holds."""
    if old_positions <= 0:
        return 0
    want = round(kept * old_tokens / max(1, old_tokens + new_positions))
    return max(kept - new_positions, min(want, old_positions, kept))


@dataclass(kw_only=True)
class FoldPolicy:
    """How a TrajectoryCache folds (see the module docstring).

    keep: what a fold keeps of its span: a ratio in [0, 1) or a count (0 drops the span: StreamingLLM's sink plus
        recent window). sink: first positions never folded. recent: last positions never folded (the protected
        recent window; also the room the token seam may re-tokenise); None: half the cache budget, so the newest
        half of the window is always held as it was (what truncating the text to that half would keep).
    share: how a fold splits its kept positions between the content folded before ("old folds") and the newly
        folded text. "uniform": in proportion to the trajectory tokens each part stands for; "recency": the whole
        span competes on scores (old folds are halved again at every fold).
    guidance: TaskGuidance | SpanGuidance | MixGuidance (None: MixGuidance()). max_queries: query tokens per fold
        (each brings its g query heads per KV head). capture_stride: every n-th prefilled token's queries are kept
        for span guidance. max_prompts: worker prompts remembered for task guidance.
    selector: any `briefing.Selector`; the fold decides the count, the selector which positions, and its `fit`
        refits beta and values (None: `default_fold_selector()`). seed: the guidance samples' generator.
    """

    keep: float | int = 0.5
    sink: int = 4
    recent: int | None = None
    share: str = "uniform"
    guidance: Guidance | None = None
    max_queries: int = 64
    capture_stride: int = 16
    max_prompts: int = 8
    selector: Selector | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise BriefingError(f"FoldPolicy: keep must be a ratio in [0, 1) or a position count, got {self.keep!r}.")
        if isinstance(self.keep, float) and not 0.0 <= self.keep < 1.0:
            raise BriefingError(f"FoldPolicy: keep ratio must be in [0, 1), got {self.keep}: a fold must free "
                                "positions.")
        if isinstance(self.keep, int):
            check_int("FoldPolicy", "keep", self.keep, low=0, what="positions a fold keeps")
        check_int("FoldPolicy", "sink", self.sink, low=0, what="first positions never folded")
        check_int("FoldPolicy", "recent", self.recent, low=0, none=True, what="last positions never folded")
        for name in ("max_queries", "capture_stride", "max_prompts"):
            check_int("FoldPolicy", name, getattr(self, name), low=1)
        check_int("FoldPolicy", "seed", self.seed, low=0)
        check_choice("FoldPolicy", "share", self.share, SHARES,
                     what="how a fold splits its kept positions between old folds and new text")
        if self.guidance is None:
            self.guidance = MixGuidance()
        if not isinstance(self.guidance, Guidance):
            raise BriefingError(f"FoldPolicy: guidance must be a briefing Guidance (TaskGuidance(), SpanGuidance(), "
                                f"MixGuidance()), got {self.guidance!r}.")
        if self.selector is None:
            self.selector = default_fold_selector()
        if not isinstance(self.selector, Selector):
            raise BriefingError("FoldPolicy: selector must be a briefing.Selector (e.g. "
                                "briefing.AttentionMatching()), "
                                f"got {self.selector!r}.")
        if getattr(self.selector, "allocation", "uniform") != "uniform":
            raise BriefingError(f"FoldPolicy: a fold keeps the same count in every (layer, KV head); the selector's "
                                f"allocation must be 'uniform', got {self.selector.allocation!r} (the importance "
                                "in a fold: a uniform selector with agnostic=a, e.g. "
                                "briefing.AttentionMatching(sinks=0, look_ahead=0, agnostic=0.9)).")

    def kept(self, span: int) -> int:
        if span <= 0:
            return 0
        return min(span - 1, math.floor(self.keep * span) if isinstance(self.keep, float) else self.keep)

    def memory(self) -> GuidanceMemory:
        """A new, empty guidance memory for a cache folding with this policy."""
        return GuidanceMemory(capture_stride=self.capture_stride, max_prompts=self.max_prompts, seed=self.seed)


def select_span(selector: Selector, scores: Scores, t: int, split: int | None, t_head: int,
                device: torch.device) -> torch.Tensor:
    """The selector's t kept positions [L, H, t] of a span (span-relative, sorted); with `split`, t_head of them from
    [0, split) (the old folds) and the rest from [split, S) (the new text), each part selected on its own scores."""
    L, H, S = scores.per_head.shape
    if split is None:
        return selector.select(L, H, S, scores, count=t, device=device)
    parts = []
    for lo, hi, n in ((0, split, t_head), (split, S, t - t_head)):
        part = Scores(per_head=scores.per_head[..., lo:hi], shared=scores.shared[lo:hi],
                      keys=None if scores.keys is None else scores.keys[..., lo:hi, :],
                      importance=None if scores.importance is None else scores.importance[..., lo:hi])
        parts.append(selector.select(L, H, hi - lo, part, count=n, device=device) + lo)
    return torch.cat(parts, dim=-1).sort(dim=-1).values                            # [L, H, t]


@torch.no_grad()
def fold(store: KVStore, memory: GuidanceMemory, policy: FoldPolicy, *, recent: int, tokens_seen: int, position: int,
         scale: float, inv_freq: torch.Tensor) -> FoldStats:
    """Fold `store` once, in place: the span between the sink and the recent window keeps `policy.kept(span)`
    positions per (layer, KV head), chosen by `policy.selector` under queries drawn from `memory` (rotated to
    `position`, the cache's next RoPE position), beta and values refitted by its fit."""
    t0 = time.perf_counter()
    P = store.length
    a = min(policy.sink, P)
    b = max(a, P - recent)
    S, t = b - a, policy.kept(b - a)
    if S <= 0:
        raise BriefingError(f"Nothing to fold: {P} positions, sink {policy.sink}, recent window {recent}. "
                            "Raise the budget or lower the recent window.")
    recent_from = tokens_seen - (P - b)  # token index of the recent window's first token (the unfolded tail)
    picked, label = memory.pick(policy.guidance, policy.max_queries, recent_from)
    err = None
    if t > 0 and picked is not None:
        L, H, g, n, d = picked.shape
        at = torch.full((n,), float(position), dtype=torch.float64, device=picked.device)   # [n]
        Q = kv.rotate(picked, at, inv_freq).reshape(L, H, g * n, d)                # [L, H, m, d]
        K, V = store.held_kv(a, b)                                                 # [Lh, H, S, d]
        full_bias = store.bias()
        bias = None if full_bias is None else full_bias[..., a:b]                  # [L, H, S]
        split, t_head = None, 0
        old = max(0, min(store.folded, b) - a)  # positions of earlier folds at the span's start
        if policy.share == "uniform" and old:
            split, t_head = old, split_kept(t, old, folded_tokens(store, policy.sink), S - old)
        selector = policy.selector
        importance = None if store.importance is None else store.importance[..., a:b]     # [L, H, S]
        scores, blocks = score_block(Q, K, scale, bias=bias, want_blocks=selector.fit is not None,
                                     importance=importance)
        idx = select_span(selector, scores, t, split, t_head, K.device)            # [L, H, t]
        red = reduce(selector, idx, Q, K, V, scale, blocks=blocks, bias=bias)
        beta = red.beta if red.beta is not None else torch.zeros(idx.shape, dtype=torch.float32, device=K.device)
        store.replace_span(a, b, idx, red.keys, red.values, beta)
        err = red.fitted.error if red.fitted is not None else None
    else:  # keep nothing of the span (StreamingLLM), or no queries to guide a fit: drop it
        t = 0
        store.replace_span(a, b, None, None, None, None)
        label = "none (keep 0: span dropped)" if policy.kept(S) == 0 else "no queries yet: span dropped"
    memory.after_fold(policy.max_queries, policy.guidance.span_only, recent_from)
    return FoldStats(span_start=a, span_stop=b, span=S, kept=t, positions_before=P, positions_after=store.length,
                     tokens_seen=tokens_seen, guidance=label,
                     query_tokens=0 if picked is None or t == 0 else int(picked.shape[3]),
                     time_s=time.perf_counter() - t0, fit_error=err, selector=repr(policy.selector))


def folded_tokens(store: KVStore, sink: int) -> int:
    """Trajectory tokens that the folded positions after the sink stand for: the tokens before the first unfolded
    position, less the sink (0 before a fold, or when a fold kept nothing of its span)."""
    F = store.folded
    sink = min(sink, F)
    if F <= sink or F >= store.length:
        return 0
    return int(store.origins()[0, 0, F]) - sink                                    # raw tail: same token every head
