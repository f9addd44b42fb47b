"""Latent recall: the blocks of a trajectory a call's question is about, found by the worker model's own hidden states
and brought back into the call's context.

A folding `TrajectoryCache` built with an `ArchivePolicy` keeps, for every block of the trajectory, a representative
(its tokens' mean hidden state at the last decoder layers) and, for every token its folds compacted, the original keys
and values (`briefing.archive`). At a call:

1. `query_vector`: the call prompt is forwarded over the cache (its stored beta applied) and rolled back; the mean
   hidden state of its question tokens at the same layers is the question's representation;
2. `rank_blocks`: every block that can be fetched and that the cache does not hold whole is scored by the cosine of
   its representative with the question's, both whitened by the spread of the trajectory's blocks (`whiten`),
   averaged over the layers (with `peaks`, plus the mean of the block's best tokens, `peak_scores`); `pick` takes
   the best blocks, each widened by `pad` tokens on both sides, within a token budget, and orders them best last
   (nearest the question). Given units (token ranges: the trajectory's sentences), `unit_scores` scores those
   instead, from the archive's token states (each range's mean state and its best tokens), and `pick` takes them
   whole;
3. `attach`: their keys and values are fetched (from the archive, or the cache for tokens it holds unfolded) and
   re-based, as a fold's re-base does (`kv.rotate`), to the positions right after the cache: where recalled text
   would sit in the prompt, so the question reads them at the distance it reads its own prompt;
4. `compact_attached`: the call's task-guided compaction runs over the cache's positions and the attached ones (a
   view of the cache with them appended): the selector chooses among the cache's positions, every attached position
   is kept (`KeepAttached`), and the fit refits beta and values over both. The call's context therefore holds at
   most the cache's budget plus the attached positions plus the prompt, which the worker keeps within its reserve.
   With a pin budget (`lookup(pin=...)`), the best blocks of the cache's unfolded tail (which the ranking's
   candidates leave out: the cache holds them) are kept whole in every (layer, KV head) by the same compaction:
   nothing is fetched, and the context stays within the cache's positions.

The persistent cache is left as it was.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from briefing import kv
from briefing.archive import hidden_states
from briefing.attention import BiasState
from briefing.compaction import compact
from briefing.context import CompactedCache, run_model
from briefing.errors import BriefingError
from briefing.selection import Scores, Selector
from briefing.selection.base import mask_rows


def query_vector(cache, ids: list[int], span: tuple[int, int] | None = None) -> torch.Tensor:
    """[layers, hidden]: the mean hidden state, at the archive's layers, of tokens [span) of `ids` (None: all)
    forwarded over `cache` at its next position, unit length per layer. Only the tokens up to the span's end are
    forwarded (the rest cannot change it). The cache is rolled back."""
    archive = cache.archive
    store = cache.store
    lo, hi = (0, len(ids)) if span is None else span
    before = kv.marks(store.kv)
    try:   # causal: the span's hidden states do not depend on the tokens after it, which are not forwarded
        with hidden_states(cache.lm, archive.layers) as out:
            run_model(cache.lm, store.kv, ids[:hi], cache.position, BiasState(beta=store.attention_bias()),
                      logits=False)
    finally:
        kv.rollback(store.kv, before)
    h = torch.stack([out[i][0, lo:hi] for i in archive.layers], 1).float()            # [n, layers, hidden]
    return torch.nn.functional.normalize(h.mean(0), dim=-1)                           # [layers, hidden]


SHRINK = 0.8  # how far the representatives' covariance is shrunk toward its diagonal (`whiten`); chosen on dev


def whiten(x: torch.Tensor, query: torch.Tensor, ref: torch.Tensor, shrink: float,
           spread: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, layers, hidden] and query [layers, hidden] whitened per layer by the spread of `ref` [m, layers, hidden]
    (the trajectory's representatives), unit length per layer. The whitening matrix is L^-1, where L L^T = C is ref's
    covariance shrunk toward its diagonal, C = (1 - shrink) cov + shrink diag(cov) (Ledoit-Wolf style; shrink=1
    divides each dimension by its spread: standardising). Directions the blocks share count for little, and so do
    correlated directions (a model's hidden states vary together along a few large ones), so a question's cosine
    follows what sets a block apart. Computed in float32; m < 2: the vectors alone, unit length. spread: ref's
    `shrunk_covariance`, where the caller has it (it is not computed again)."""
    unit = torch.nn.functional.normalize
    x, query, ref = x.float(), query.float().to(x.device), ref.float().to(x.device)
    if ref.shape[0] < 2:
        return unit(x, dim=-1), unit(query, dim=-1)
    mu, var, L = spread or shrunk_covariance(ref, shrink)                             # [l, h], [l, h], [l, h, h]
    if L is None:                                                                     # the diagonal alone
        return unit((x - mu) / var.sqrt(), dim=-1), unit((query - mu) / var.sqrt(), dim=-1)
    both = torch.cat([x - mu, (query - mu)[None]]).permute(1, 2, 0)                   # [layers, hidden, n + 1]
    w = torch.linalg.solve_triangular(L, both, upper=False).permute(2, 0, 1)          # [n + 1, layers, hidden]
    return unit(w[:-1], dim=-1), unit(w[-1], dim=-1)


def shrunk_covariance(ref: torch.Tensor, shrink: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The spread `whiten` whitens by, of ref [m, layers, hidden] (m >= 2, float32): its mean and variance [layers,
    hidden] and the Cholesky factor L [layers, hidden, hidden] of C = (1 - shrink) cov + shrink diag(cov); L is None
    where the diagonal alone is meant (shrink >= 1) or C is not positive definite (shrink near 0 with fewer blocks
    than dimensions)."""
    mu = ref.mean(0)                                                                  # [layers, hidden]
    X = (ref - mu).transpose(0, 1)                                                    # [layers, m, hidden]
    var = (X.square().sum(1) / (X.shape[1] - 1)).clamp_min(1e-12)                     # [layers, hidden]
    if shrink >= 1:
        return mu, var, None
    C = (1 - shrink) * (X.transpose(1, 2) @ X) / (X.shape[1] - 1)                     # [layers, hidden, hidden]
    C.diagonal(dim1=-2, dim2=-1).copy_(var)                                           # (1-s) var + s var = var
    L, info = torch.linalg.cholesky_ex(C)                                             # [layers, hidden, hidden]
    return mu, var, None if bool(info.any()) else L


def block_scores(cache, query: torch.Tensor, shrink: float = SHRINK, peaks: int = 0) -> torch.Tensor:
    """[blocks] score of every block of the trajectory: the cosine of its representative with `query` [layers, hidden],
    both whitened by the spread of the trajectory's representatives (`whiten`: a model's hidden states share large
    directions that would rank the same blocks first for every question), averaged over the layers. peaks k > 0: plus
    the mean of the block's k best tokens for the question (`peak_scores`), the two standardised over the blocks
    (a fact of a few tokens inside a block of others stands out among its tokens, not in the block's mean)."""
    archive = cache.archive
    reps = archive.representatives()                                                  # [nb, layers, hidden]
    read = archive.counts > 0                                                         # [nb]
    ref = reps[read].float()                                                          # [m, layers, hidden]
    spread = shrunk_covariance(ref, shrink) if ref.shape[0] >= 2 else None            # computed once, for both
    r, q = whiten(reps, query, ref, shrink, spread)                                   # [nb, layers, hidden], [l, h]
    mean = (r * q[None]).sum(-1).mean(-1)                                             # [nb]
    if not peaks or spread is None:
        return mean
    mu, var, L = spread                                                               # the last layer's, for peaks
    # L is None for every layer where one layer's Cholesky failed: the last layer's own is then computed again
    last = None if L is None and shrink < 1 else (mu[-1:], var[-1:], None if L is None else L[-1:])   # [1, h] ..
    peak = peak_scores(archive, query[-1], ref[:, -1], shrink, peaks, last)           # [nb]
    has = read & torch.isfinite(peak)                                                 # [nb] blocks with token states

    def z(x: torch.Tensor, over: torch.Tensor) -> torch.Tensor:                       # standardised over those blocks
        return (x - x[over].mean()) / x[over].std().clamp_min(1e-12)

    if has.sum() < 2:
        return mean
    # a block whose states were dropped with its keys and values (the archive's budget) ranks by its mean alone
    return (z(mean, read) + z(peak, has).masked_fill(~has, 0.0)).masked_fill(~read, float("-inf"))   # [nb]


def peak_scores(archive, query: torch.Tensor, ref: torch.Tensor, shrink: float, k: int,
                spread: tuple | None = None) -> torch.Tensor:
    """[blocks] `token_peaks` of the archive's token states (`Archive.token_states`), per block of the archive."""
    states = archive.token_states()
    if states is None:
        raise BriefingError("a ranking by a block's best tokens (peaks > 0) needs the archive's token states: build "
                            "the cache with briefing.ArchivePolicy(token_states=True), or rank by the block means "
                            "(peaks=0).")
    return token_peaks(states, query, ref, shrink, k, archive.policy.block, archive.sums.shape[0],
                       archive.states_from, spread)


def token_peaks(states: torch.Tensor, query: torch.Tensor, ref: torch.Tensor, shrink: float, k: int, block: int,
                blocks: int, offset: int = 0, spread: tuple | None = None) -> torch.Tensor:
    """[blocks] the mean of each block's k best token scores (fewer in a block with fewer tokens; -inf for none):
    states [tokens, hidden] the unit hidden states at one layer of the tokens from `offset` on (a multiple of
    `block`: the blocks before it have none), query, ref, shrink, spread: `token_scores`'."""
    n = max(0, min(states.shape[0], blocks * block - offset))
    scores = torch.full((blocks * block,), float("-inf"), device=ref.device)          # [blocks * block]
    scores[offset:offset + n] = token_scores(states[:n], query, ref, shrink, spread)[0]   # [n]
    return best_mean(scores.view(blocks, block), k)                                   # [blocks]


def best_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[rows] the mean of each row's k best finite entries of scores [rows, width] (fewer where a row has fewer;
    -inf where it has none)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).values                          # [rows, k]
    finite = torch.isfinite(top)
    got = finite.sum(1)                                                               # [rows]
    mean = top.masked_fill(~finite, 0).sum(1) / got.clamp_min(1)                      # [rows]
    return mean.masked_fill(got == 0, float("-inf"))


def token_scores(states: torch.Tensor, query: torch.Tensor, ref: torch.Tensor, shrink: float,
                 spread: tuple | None = None, group: torch.Tensor | None = None,
                 groups: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([tokens] each token's score for the question, [groups, hidden] or None): states [tokens, hidden] the unit
    hidden states at one layer, query [hidden] the question's (unit), ref [m, hidden] the blocks' representatives at
    that layer, whose spread whitens as `whiten` does (covariance C shrunk toward its diagonal by `shrink`). The
    whitening is applied to the question alone (one solve), so the cost stays linear in the trajectory:
        u = C^-1 (q - mu) / |q - mu|_C                   the whitened question, unit length in C's norm
        s_t = (h_t - mu) . u / |(h_t - mu) / sd|          per token, sd = sqrt(diag C)
    spread: `shrunk_covariance` of ref[:, None], where the caller has it. group [tokens] long (-1: none): the same
    pass also sums the states of each group's tokens (`unit_scores`' means). The tokens are read a few hundred at a
    time, in place: the pass stays in the processor's cache (2.3-4x faster than 8k-token chunks on a CPU, 8k-64k
    tokens)."""
    mu, var, L = spread or shrunk_covariance(ref.float()[:, None], shrink)            # [1, h], [1, h], [1, h, h]
    mu, var = mu[0], var[0]                                                           # [h]
    d = query.float().to(mu.device) - mu                                              # [h]
    if L is None:                                                                     # the diagonal alone
        u = d / var
    else:
        u = torch.cholesky_solve(d[:, None], L[0])[:, 0]                              # [h] C^-1 (q - mu)
    u = u / (d @ u).clamp_min(1e-12).sqrt()                                           # [h]
    inv_sd = var.rsqrt()                                                              # [h]
    n = states.shape[0]
    scores = torch.empty(n, device=mu.device)                                         # [n]
    sums = None if group is None else torch.zeros(groups + 1, mu.shape[0], device=mu.device)   # [groups + 1, h]
    step = 512 if mu.device.type == "cpu" else 65536   # tokens at a time in float32
    for a in range(0, n, step):
        h = states[a:a + step].to(mu.device, torch.float32, copy=True)                # [s, h]
        if sums is not None:   # the last row takes the tokens of no group
            g = group[a:a + h.shape[0]].to(mu.device)                                 # [s]
            sums.index_add_(0, g.masked_fill(g < 0, groups), h)
        h.sub_(mu)
        dot = h @ u                                                                   # [s]
        scores[a:a + h.shape[0]] = dot / h.mul_(inv_sd).norm(dim=-1).clamp_min(1e-12)   # [s]
    return scores, None if sums is None else sums[:groups]


UNIT_TOKENS = 48   # the longest unit `unit_scores` ranks: a longer sentence is cut into pieces (round 25, dev)


def unit_scores(cache, query: torch.Tensor, units: torch.Tensor, shrink: float = SHRINK,
                peaks: int = 4) -> torch.Tensor:
    """[units] `score_units` of every token range of units [n, 2] (lo, hi; the trajectory's sentences:
    `agents.recall.sentence_units`) for the question `query` [layers, hidden], from the archive's token states at its
    last layer, the blocks' representatives there giving the token scores' spread. A fact is a sentence or two:
    scored and recalled whole, it is neither diluted in a block of other text nor cut by a block's edge, and a recall
    of the same budget holds more of them."""
    archive = cache.archive
    states = archive.token_states()
    if states is None:
        raise BriefingError("a ranking of sentence units needs the archive's token states: build the cache with "
                            "briefing.ArchivePolicy(token_states=True).")
    ref = archive.representatives()[archive.counts > 0][:, -1]                        # [m, hidden] blocks, last layer
    return score_units(states, archive.states_from, units, query[-1], ref, shrink, peaks)


def score_units(states: torch.Tensor, first: int, units: torch.Tensor, query: torch.Tensor, ref: torch.Tensor,
                shrink: float, peaks: int) -> torch.Tensor:
    """[n] each range of units [n, 2]'s score for the question: the cosine of its tokens' mean state with the
    question's query [hidden], both whitened by the spread of the ranges' means (`whiten`), plus the mean of its
    `peaks` best token scores (`token_scores`, whitened by the spread of ref [m, hidden], the blocks' representatives,
    as `block_scores` ranks a block's best tokens), the two standardised over the ranges. states [tokens, hidden]: the
    unit hidden states at one layer of the tokens from `first` on. -inf: a range with a token that has no state."""
    if peaks < 1:
        raise BriefingError(f"unit_scores: peaks must be at least 1 (each unit's best tokens); got {peaks}.")
    lo, hi = units[:, 0], units[:, 1]                                                 # [n], [n]
    n, tokens = units.shape[0], first + states.shape[0]
    has = (lo >= first) & (hi <= tokens) & (hi > lo)                                  # [n] every token has a state
    if ref.shape[0] < 2 or int(has.sum()) < 2:
        return torch.full((n,), float("-inf"), device=units.device)
    sel = has.nonzero()[:, 0]                                                         # [k] ranges are disjoint
    lens = (hi - lo)[sel]                                                             # [k]
    shift = torch.repeat_interleave(lo[sel] - first - (lens.cumsum(0) - lens), lens)  # [sum lens]
    group = torch.full((tokens - first,), -1, dtype=torch.long, device=units.device)  # [tokens - first] unit per token
    group[shift + torch.arange(shift.shape[0], device=units.device)] = torch.repeat_interleave(sel, lens)
    per_token, sums = token_scores(states, query, ref.float(), shrink, group=group, groups=n)   # [T'], [n, hidden]
    mean = sums / (hi - lo).clamp_min(1).to(sums)[:, None]                            # [n, hidden]
    w, q = whiten(mean[:, None], query[None], mean[has][:, None], shrink)             # [n, 1, h], [1, h]
    cos = (w[:, 0] * q[0]).sum(-1)                                                    # [n]
    width = int((hi - lo)[has].max())
    idx = (lo - first)[:, None] + torch.arange(width, device=units.device)            # [n, width] token per slot
    inside = (idx < (hi - first)[:, None]) & has[:, None]                             # [n, width]
    slots = per_token.to(units.device)[idx.clamp(0, per_token.shape[0] - 1)]          # [n, width]
    peak = best_mean(slots.masked_fill(~inside, float("-inf")), peaks)                # [n]

    def z(x: torch.Tensor) -> torch.Tensor:                                           # standardised over the units
        return (x - x[has].mean()) / x[has].std().clamp_min(1e-12)

    return (z(cos) + z(peak)).masked_fill(~has, float("-inf"))                        # [n]


def candidates(cache, sink: int, kv: bool = True, tail_skip: int | None = None) -> torch.Tensor:
    """[blocks] bool: the blocks a recall may bring back: those that can be fetched (kv=False: a recall of the text,
    which needs no archived keys and values) and that the cache does not hold whole (its unfolded tail: in view);
    with `tail_skip` n, the unfolded tail's blocks too, except those reaching into the trajectory's last n tokens
    (the call's compaction keeps part of the tail in each head)."""
    archive = cache.archive
    bound = archive.unfolded_from(cache.store)                                        # first token held whole
    if tail_skip is not None:
        bound = max(bound, archive.tokens - tail_skip - archive.policy.block + 1)
    return archive.available(cache.store, sink, kv) & (archive.starts() < bound)      # [nb]


def rank_blocks(cache, query: torch.Tensor, sink: int, kv: bool = True, shrink: float = SHRINK,
                tail_skip: int | None = None, peaks: int = 0) -> torch.Tensor:
    """[blocks] `block_scores`, -inf for a block a recall cannot bring back (`candidates`)."""
    return block_scores(cache, query, shrink, peaks).masked_fill(~candidates(cache, sink, kv, tail_skip),
                                                                 float("-inf"))


def pinnable(cache) -> torch.Tensor:
    """[blocks] bool: the blocks the cache holds whole (its unfolded tail), which a call's compaction may keep whole in
    every head (`KeepAttached`'s pins) instead of a recall bringing back a copy."""
    archive = cache.archive
    return (archive.starts() >= archive.unfolded_from(cache.store)) & (archive.counts > 0)   # [nb]


def pick(scores: torch.Tensor, block: int, pad: int, budget: int, tokens: int, sink: int,
         spans: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """Token ranges [lo, hi) to recall within `budget` tokens: the best blocks in turn (spans [n, 2]: the best of
    these token ranges, `unit_scores`' units, whose scores `scores` are), each widened by `pad` tokens on both sides
    (within [sink, tokens)), overlapping or touching ranges merged; ordered by their best block's score, rising (the
    best last)."""
    best = scores.argsort(descending=True)                                            # [n]
    order = best[torch.isfinite(scores[best])].tolist()
    edges = None if spans is None else spans.tolist()
    runs: list[list[int]] = []      # [lo, hi, rank of its best block]
    used = 0
    for rank, j in enumerate(order):
        a, b = (j * block, (j + 1) * block) if edges is None else edges[j]
        lo, hi = max(sink, a - pad), min(tokens, b + pad)
        if hi <= lo:   # nothing of it past the floor
            continue
        merged = [lo, hi, rank]
        keep = []
        for r in runs:
            if r[0] <= merged[1] and merged[0] <= r[1]:
                merged = [min(r[0], merged[0]), max(r[1], merged[1]), min(r[2], merged[2])]
            else:
                keep.append(r)
        size = sum(r[1] - r[0] for r in keep) + merged[1] - merged[0]
        if size > budget:
            if runs:
                break
            # one block wider than the budget: the budget's width of it, centred on the block (the pad cut first)
            centre = (max(sink, a) + min(tokens, b)) // 2
            merged[0] = max(merged[0], min(centre - budget // 2, merged[1] - budget))
            merged[1] = merged[0] + budget
            size = budget
        runs, used = keep + [merged], size
        if used >= budget:
            break
    runs.sort(key=lambda r: -r[2])
    return [(lo, hi) for lo, hi, _ in runs]


@dataclass
class Attached:
    """Recalled keys and values placed after the cache: keys, values [held layers, kv_heads, m, d] (re-based to
    `position` .. `position + m - 1`), origins [m] the token index of each, ranges the token ranges in their order,
    importance [held layers, kv_heads, m] the query-agnostic score each key had in the cache (archived with it; None
    when the cache keeps none). pinned: token ranges of the cache's unfolded tail that the call's compaction keeps
    whole in every (layer, KV head) (`KeepAttached`), with or without attached keys (m may be 0).
    fetch_s: time spent fetching and re-basing them (the lookup that found them: `agents.recall.Recalled.lookup_s`)."""

    keys: torch.Tensor
    values: torch.Tensor
    origins: torch.Tensor
    position: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    fetch_s: float = 0.0
    importance: torch.Tensor | None = None
    pinned: list[tuple[int, int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.keys.shape[-2])


def attach(cache, ranges: list[tuple[int, int]], pinned: list[tuple[int, int]] | None = None) -> Attached:
    """The keys and values of the token `ranges` (in that order), fetched and re-based to sit right after the cache;
    `pinned` (token ranges the cache holds whole) carried for the call's compaction to keep whole."""
    lm, store = cache.lm, cache.store
    if not ranges:   # pins alone: nothing fetched
        keys, values = store.held_kv(0, 0)                                            # [Lh, H, 0, d]
        return Attached(keys=keys, values=values, position=cache.position, pinned=list(pinned or []),
                        origins=torch.empty(0, dtype=torch.long, device=store.device),
                        importance=None if store.importance is None else store.importance[..., :0])
    keys, values, was, importance = cache.archive.fetch(store, ranges, importance=True)   # [Lh, H, m, d], [m]
    m = keys.shape[-2]
    target = cache.position + torch.arange(m, device=keys.device)                     # [m]
    keys = kv.rotate(keys, (target - was.to(keys.device)).to(torch.float64), lm.inv_freq())   # [Lh, H, m, d]
    origins = torch.cat([torch.arange(lo, hi, device=keys.device) for lo, hi in ranges])     # [m]
    return Attached(keys=keys, values=values, origins=origins, position=cache.position, ranges=list(ranges),
                    importance=importance, pinned=list(pinned or []))


class View:
    """What a compaction reads of a cache (`lm`, `store`, `position`): `cache` with `attached` appended to its held
    layers, the window layers shared. The persistent cache is not modified."""

    def __init__(self, cache, attached: Attached) -> None:
        store = cache.store
        view = copy.copy(store)
        layers = list(store.kv.layers)
        m = attached.length
        for j, i in enumerate(store.held):
            lay = layers[i]
            layers[i] = kv.held_layer(torch.cat([lay.keys, attached.keys[j:j + 1].to(lay.keys.dtype)], -2),
                                      torch.cat([lay.values, attached.values[j:j + 1].to(lay.values.dtype)], -2))
        view.kv = kv.assemble(layers)
        L, H = len(store.held), store.kv_heads
        pos = (attached.position + torch.arange(m, device=store.device)).view(1, 1, -1).expand(L, H, -1)
        view.key_pos = torch.cat([store.positions(), pos], -1)                        # [Lh, H, length + m]
        view.origin = torch.cat([store.origins(), attached.origins.to(store.device).view(1, 1, -1).expand(L, H, -1)],
                                -1)                                                   # [Lh, H, length + m]
        view.position = attached.position + m
        if store.importance is not None:   # the attached keys keep the importance they were archived with
            imp = attached.importance if attached.importance is not None else store.importance.new_zeros(L, H, m)
            view.importance = torch.cat([store.importance, imp.to(store.importance)], -1)   # [Lh, H, length + m]
        self.lm, self.store, self.position = cache.lm, view, attached.position + m

    def origins(self) -> torch.Tensor:
        """Token index of every slot [held layers, kv_heads, length + m]."""
        return self.store.origins()


class KeepAttached(Selector):
    """`selector` over the cache's positions, plus the last `attached` positions (the attached ones) and the cache's
    `pinned` positions (bool [layers, kv_heads, length - attached]; None: none), always kept: each row keeps what its
    selection, the pins and the attached positions cover, sorted and right-padded with PAD to the longest row
    (`mask_rows`; without pins and with a selector that keeps the same count in every row, the rows stay regular,
    [layers, kv_heads, t + attached])."""

    def __init__(self, selector: Selector, attached: int, pinned: torch.Tensor | None = None) -> None:
        if selector.keeps_all:
            raise BriefingError("KeepAttached: a selector that keeps all positions needs no wrapper.")
        self.selector, self.attached, self.pinned = selector, attached, pinned
        self.needs_scores, self.reuse_prompt_kv = selector.needs_scores, selector.reuse_prompt_kv
        self.fit = selector.fit

    def select(self, layers: int, kv_heads: int, length: int, scores: Scores | None, *, count: int | None = None,
               device: torch.device | None = None) -> torch.Tensor:
        live = length - self.attached
        part = None if scores is None else Scores(
            per_head=scores.per_head[..., :live], shared=scores.shared[:live],
            keys=None if scores.keys is None else scores.keys[..., :live, :],
            importance=None if scores.importance is None else scores.importance[..., :live])
        idx = self.selector.select(layers, kv_heads, live, part, count=count, device=device)   # [L, H, t]
        kept = torch.zeros(layers, kv_heads, length + 1, dtype=torch.bool, device=idx.device)   # +1: PAD's slot
        kept.scatter_(-1, idx.masked_fill(idx < 0, length), True)                      # [L, H, length + 1]
        kept = kept[..., :length]                                                      # [L, H, length]
        kept[..., live:] = True
        if self.pinned is not None:
            kept[..., :live] |= self.pinned.to(kept.device)
        return mask_rows(kept)                                                         # [L, H, t_max]

    def __repr__(self) -> str:
        pins = "" if self.pinned is None else f", pinned={int(self.pinned[0, 0].sum())}"
        return f"KeepAttached({self.selector!r}, attached={self.attached}{pins})"


def compact_attached(cache, attached: Attached, prompt: str, selector: Selector, *,
                     query_tokens: int | None = None) -> tuple[CompactedCache, torch.Tensor]:
    """The call's context over the cache and the attached positions (see the module docstring), and the token index
    of every slot its `positions` index [held layers, kv_heads, length + m]. The cache's slots whose tokens lie in
    `attached.pinned` are kept in every (layer, KV head)."""
    view = View(cache, attached)
    origins = view.origins()                                                          # [Lh, H, length + m]
    pinned = None
    if attached.pinned:
        live = origins[..., :origins.shape[-1] - attached.length]                     # [Lh, H, length]
        pinned = torch.zeros(live.shape, dtype=torch.bool, device=live.device)        # [Lh, H, length]
        for lo, hi in attached.pinned:
            pinned |= (live >= lo) & (live < hi)
    if selector.keeps_all or (not attached.length and pinned is None):
        chosen = selector
    else:
        chosen = KeepAttached(selector, attached.length, pinned)
    ctx = compact(view, prompt, chosen, query_tokens=query_tokens)
    return ctx, origins


@dataclass
class Lookup:
    """A latent recall's result before fetching: token ranges, best last, and the time it took."""

    ranges: list[tuple[int, int]]
    seconds: float
    scores: Any = None
    floor: int = 0   # the first token a range may start at (`first_token`)
    pinned: list[tuple[int, int]] = field(default_factory=list)   # ranges of the unfolded tail to keep whole
    raw: Any = None   # [blocks] every block's score before the candidates' mask (-inf: a block not read)
    spans: Any = None   # [units, 2] the token ranges scored where they are not the blocks (`unit_scores`)
    tail_gap: float | None = None   # the unfolded tail's best score less the best fetchable one's (`lookup`)


def lookup(cache, prompt_ids: list[int], question: tuple[int, int] | None, budget: int, *, pad: int,
           sink: int, kv: bool = True, shrink: float = SHRINK, tail_skip: int | None = None, pin: int = 0,
           peaks: int = 0, units: torch.Tensor | None = None, tail_margin: float | None = None,
           echo: tuple[int, int] | None = None) -> Lookup:
    """The token ranges the question (tokens [question) of the prompt; None: all of it) is about (`query_vector`,
    `block_scores`, `candidates`, `pick`), within `budget` tokens. kv: the ranges' keys and values will be fetched
    (False: their text, so blocks the archive keeps no keys and values of count too). shrink: `whiten`'s; tail_skip:
    `candidates`'; peaks: `block_scores`'. units [n, 2]: rank these token ranges instead of the blocks
    (`unit_scores`, with `peaks`), each a candidate where every block it touches is. pin: a second budget, in tokens,
    for the best blocks (or units) of the cache's unfolded tail (`pinnable`), each widened by `pad` within the tail:
    `Lookup.pinned`, for the call's compaction to keep whole (0: none). tail_margin: only the candidates that score at
    least the best score of the unfolded tail's blocks (or units) that are not candidates themselves (the tail less
    what `tail_skip` ranks) less this are picked (None: no such bar; none either where that tail has no scored
    piece); that tail is in view, and what ranks below its best piece is more likely a neighbour of the answer than
    the answer (round 29). echo: a token range (the question's own words where the trajectory holds them) whose
    blocks or units do not count as the tail's best. `Lookup.tail_gap` is that best score (echo left out) less the
    best candidate's, before the bar (None where either side has none)."""
    if cache.archive is None:
        raise BriefingError("latent recall needs a TrajectoryCache built with archive=briefing.ArchivePolicy(); this "
                            "cache has none.")
    if kv and not cache.archive.policy.budget_bytes:
        raise BriefingError("latent recall: kv=True fetches archived keys and values, but this cache's ArchivePolicy "
                            "keeps none (budget_bytes=0): build the cache with a byte budget, or recall the text "
                            "(kv=False, LatentRecall(attach=False)).")
    t0 = time.perf_counter()
    query = query_vector(cache, prompt_ids, question)
    block, tokens = cache.archive.policy.block, cache.archive.tokens
    blocks = candidates(cache, sink, kv, tail_skip)                                   # [nb]
    if units is None:
        raw, fetch = block_scores(cache, query, shrink, peaks), blocks                # [nb], [nb]
    else:
        raw, fetch = unit_scores(cache, query, units, shrink, peaks), within(units, blocks, block)   # [n], [n]
    floor = first_token(cache, sink, kv)
    if units is not None:   # a unit is recalled whole or not at all: none that starts before the floor
        fetch = fetch & (units[:, 0] >= floor)                                        # [n]
    scores = raw.masked_fill(~fetch, float("-inf"))                                   # [nb] or [n]
    tail = pinnable(cache) & ~blocks                                                  # [nb] held whole, not fetched
    tail = tail if units is None else within(units, tail, block)                      # [nb] or [n]
    seen = tail
    if echo is not None:   # the question's own words in the trajectory are not its answer
        starts = cache.archive.starts()
        lo, hi = (starts, starts + block) if units is None else units.unbind(-1)      # [nb] or [n] token ranges
        seen = tail & ~((lo < echo[1]) & (hi > echo[0]))                              # [nb] or [n]
    ninf = float("-inf")
    in_view = float(raw.masked_fill(~seen, ninf).max()) if raw.numel() else ninf      # the tail's best score
    best = float(scores.max()) if scores.numel() else ninf                            # the best fetchable one's
    gap = in_view - best if math.isfinite(in_view) and math.isfinite(best) else None
    if tail_margin is not None and math.isfinite(in_view):   # only what scores near the tail's best piece
        scores = scores.masked_fill(raw < in_view - tail_margin, ninf)                # [nb] or [n]
    ranges = pick(scores, block, pad, budget, tokens, floor, units) if budget > 0 else []   # budget 0: pins alone
    pinned = []
    if pin > 0:   # the unfolded tail's best blocks (or units), which the fetch's candidates leave out
        pinned = pick(raw.masked_fill(~tail, float("-inf")), block, pad, pin, tokens,
                      cache.archive.unfolded_from(cache.store), units)
    return Lookup(ranges=ranges, seconds=time.perf_counter() - t0, scores=scores, floor=floor, pinned=pinned, raw=raw,
                  spans=units, tail_gap=gap)


def within(units: torch.Tensor, blocks: torch.Tensor, block: int) -> torch.Tensor:
    """[n] bool: the token ranges of units [n, 2] whose every token lies in a block that `blocks` [nb] marks."""
    out = (~blocks).repeat_interleave(block).long().cumsum(0)                         # [nb * block] outside, so far
    out = torch.cat([out.new_zeros(1), out])                                          # [nb * block + 1]
    lo, hi = units[:, 0].clamp(max=out.shape[0] - 1), units[:, 1].clamp(max=out.shape[0] - 1)   # [n]
    return (out[hi] == out[lo]) & (units[:, 1] <= blocks.shape[0] * block)


def first_token(cache, sink: int, kv: bool) -> int:
    """The first token a recalled range may start at: past the sink, and, for keys and values, past what the archive's
    byte budget dropped (a pad must not reach into an evicted block)."""
    return max(sink, cache.archive.evicted) if kv else sink
