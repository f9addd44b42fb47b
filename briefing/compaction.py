"""Compaction: guidance queries score a block of keys, a `Selector` chooses what each (layer, KV head) keeps, and
the `Fit` refits beta and values (the math is `briefing.matching`). The same step serves a per-call compaction
(`compact`: the worker prompt's queries over the whole cache) and a fold (`briefing.fold`: remembered queries over
a span of the persistent cache).

A per-call compaction:
1. forwards the worker prompt over the FULL cache, capturing the post-RoPE queries of its tokens, then crops the
   cache back (the persistent cache is left exactly as it was);
2. scores every position by the prompt's attention (`matching.attention_scores`; a folded cache's stored beta is in
   every logit);
3. selects and fits (`reduce`), composing the fitted beta with the stored one;
4. builds the per-call context: kept keys (with their original rotation), fitted values, and the prompt's keys and
   values from step 1 (or the prompt forwarded again over the compacted cache).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from briefing import kv
from briefing.attention import BiasState
from briefing.context import CompactedCache, check_prompt, run_model
from briefing.errors import BriefingError
from briefing.options import check_int
from briefing.matching import FitResult, attention_scores, fit, gather_positions, group_queries
from briefing.rescore import generated_scores
from briefing.selection import AttentionMatching, ScoredSelector, Scores, Selector
from briefing.stats import CompactionStats

KEEP_BLOCKS_MAX = 1 << 26  # elements of E (256 MB of float32) kept from scoring for the fit; past it, recompute


@dataclass
class Reduced:
    """What a selection (and its fit) keeps of a block: idx [L, H, t], keys and values [L, H, t, d], beta [L, H, t]
    (the stored beta of the kept positions plus the fitted one; None: no beta anywhere), and the fit's figures."""

    idx: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    beta: torch.Tensor | None
    fitted: FitResult | None


def score_block(Q: torch.Tensor, K: torch.Tensor, scale: float, *, bias: torch.Tensor | None = None,
                K_prompt: torch.Tensor | None = None, n_prompt: int = 0, first: int = 0,
                want_blocks: bool = False) -> tuple[Scores, list[torch.Tensor] | None]:
    """Guidance scores of the keys K [L, H, T, d] under queries Q [L, H, m, d] (see `matching.attention_scores`);
    the blocks are kept for the fit while they stay under KEEP_BLOCKS_MAX elements."""
    keep = want_blocks and Q.shape[0] * Q.shape[1] * Q.shape[2] * K.shape[2] <= KEEP_BLOCKS_MAX
    per_head, blocks = attention_scores(Q, K, scale, bias=bias, K_prompt=K_prompt, n_prompt=n_prompt, first=first,
                                        keep_blocks=keep)                          # [L, H, T]
    return Scores(per_head=per_head, shared=per_head.mean(dim=(0, 1)), keys=K), blocks


def reduce(selector: Selector, idx: torch.Tensor, Q: torch.Tensor | None, K: torch.Tensor, V: torch.Tensor,
           scale: float, *, blocks: list[torch.Tensor] | None = None, bias: torch.Tensor | None = None) -> Reduced:
    """Keep positions idx [L, H, t] of K, V [L, H, T, d]; fit beta and values when `selector.fit` is set (and
    something is dropped), composing with a stored bias [L, H, T]. The step a compaction and a fold share."""
    t, T = idx.shape[-1], K.shape[2]
    keys = gather_positions(K, idx)                                                # [L, H, t, d]
    fitted, beta = None, None
    step = selector.fit
    if step is not None and 0 < t < T and Q is not None:
        fitted = fit(Q, K, V, idx, scale, ridge=step.ridge, beta_max=step.beta_max, nnls_iters=step.nnls_iters,
                     blocks=blocks, bias=bias)
        values, beta = fitted.values, fitted.beta                                  # [L, H, t, d], [L, H, t]
    else:
        values = gather_positions(V, idx)                                          # [L, H, t, d]
    if bias is not None and t:  # compose with the stored beta of the kept positions
        stored = bias.gather(-1, idx)                                              # [L, H, t]
        beta = stored if beta is None else stored.to(beta.dtype) + beta
    return Reduced(idx=idx, keys=keys, values=values, beta=beta, fitted=fitted)


def check_selector(selector: Any) -> Selector:
    selector = selector if selector is not None else AttentionMatching()
    if not isinstance(selector, Selector):
        raise BriefingError(f"selector must be a briefing.Selector (e.g. briefing.AttentionMatching(tau=1.0)), "
                            f"got {type(selector).__name__}.")
    return selector


@torch.no_grad()
def prompt_pass(cache: Any, prompt_ids: list[int], selector: Selector,
                query_tokens: int | None) -> tuple[torch.Tensor, list, torch.Tensor, torch.Tensor | None, int]:
    """Forward the prompt over the FULL cache (its stored beta applied), capture the queries, roll the cache back.
    Returns (Q [held layers, H, m, d] of the prompt's last `query_tokens` tokens (None: all), the prompt's keys and
    values per model layer, the last logits [vocab], the rescore scores [held layers, H, T] or None, and the first
    guiding prompt token)."""
    lm, store = cache.lm, cache.store
    T, position, n = store.length, cache.position, len(prompt_ids)
    rescore = selector.rescore_tokens if isinstance(selector, ScoredSelector) else 0
    if rescore and store.beta is not None:
        raise BriefingError(f"{type(selector).__name__}: rescore_tokens={rescore} is not supported on a folded cache "
                            f"(its generated-token pass ignores the stored beta); use rescore_tokens=0.")
    state = BiasState(beta=store.attention_bias(), capture=True)
    before = kv.marks(store.kv)
    generated = None
    try:
        last_logits = run_model(lm, store.kv, prompt_ids, position, state, last_only=True)[-1]   # [vocab]
        prompt_kv = [(layer.keys[..., -n:, :], layer.values[..., -n:, :]) for layer in store.kv.layers]
        if rescore:  # the first greedy tokens' attention (briefing.rescore), before the cache is rolled back
            generated = generated_scores(lm, store, T, position + n, last_logits, rescore)
    finally:
        kv.rollback(store.kv, before)
    first = 0 if query_tokens is None else max(0, n - query_tokens)
    queries = {i: q[:, :, first:, :] for i, q in state.queries.items()}             # [1, heads, n - first, d]
    Q = group_queries(queries, store.held, lm.kv_heads)                             # [Lh, H, m, d]
    return Q, prompt_kv, last_logits, generated, first


def context_cache(store: Any, keys: torch.Tensor | None, values: torch.Tensor | None,
                  prompt_kv: list | None) -> Any:
    """The per-call cache: held layers with `keys`, `values` [Lh, H, t, d] (None: the held layers' window, for a
    windowed model kept whole), window layers with their window as the model's own cache holds it; each followed by
    the prompt's keys and values from the scoring pass when given."""
    layers = []
    held = {i: j for j, i in enumerate(store.held)}
    for i, layer in enumerate(store.kv.layers):
        if i in held and keys is not None:
            out = kv.held_layer(keys[held[i]:held[i] + 1], values[held[i]:held[i] + 1])
        else:
            out = kv.copy_window(layer) if kv.is_window(layer) else kv.held_layer(layer.keys, layer.values)
        if prompt_kv is not None:
            pk, pv = prompt_kv[i]
            out.keys, out.values = torch.cat([out.keys, pk], -2), torch.cat([out.values, pv], -2)
            if kv.is_window(out):
                out.cumulative_length += pk.shape[-2]
        layers.append(out)
    return kv.assemble(layers)


def compact(cache: Any, prompt: str, selector: Selector | None = None, *,
            query_tokens: int | None = None) -> CompactedCache:
    """Compact a `TrajectoryCache` against the worker `prompt`: score (if the selector needs scores, reuses the
    prompt KV or fits), select, fit (if `selector.fit`), build. The cache is left exactly as it was: the context
    carries the prompt's queries (`ctx.queries`), which a worker hands to `cache.remember(ctx)` as fold guidance.

    Only the held layers (the full-attention ones) are compacted; a hybrid model's sliding-window layers keep their
    window as the model's own cache holds it. Over a folded cache every logit carries the stored beta: scoring and
    the fit see it, and the kept positions' beta is the stored one plus the fitted one (KeepAll keeps it as it is).

    query_tokens: only the queries of the prompt's last `query_tokens` tokens score and fit (a query window, as
    SnapKV's observation window), e.g. the question after recalled text; the whole prompt is still forwarded.
    None: every prompt token. The fit's cost grows with the square of the query count."""
    selector = check_selector(selector)
    lm, store, position = cache.lm, cache.store, cache.position
    T = store.length
    if T == 0:
        raise BriefingError("The trajectory is empty: extend the TrajectoryCache with text before compacting.")
    prompt_ids = check_prompt(lm, prompt, position)
    check_int("", "query_tokens", query_tokens, low=1, none=True,
              what="the prompt's last tokens that guide; None uses every prompt token")
    n, L, H = len(prompt_ids), len(store.held), lm.kv_heads
    t_start = time.perf_counter()
    K = V = None
    if selector.needs_scores or not selector.keeps_all:
        K, V = store.held_kv(0, T)                                                 # [Lh, H, T, d]
    bias = store.bias()                                                            # [Lh, H, T] or None
    scores = Q = prompt_kv = last_logits = blocks = None
    first = 0
    if selector.needs_scores or selector.reuse_prompt_kv or selector.fit is not None:
        Q, prompt_kv, last_logits, generated, first = prompt_pass(cache, prompt_ids, selector, query_tokens)
        if selector.needs_scores:
            K_prompt = torch.cat([prompt_kv[i][0] for i in store.held])             # [Lh, H, n, d]
            scores, blocks = score_block(Q, K, lm.scaling, bias=bias, K_prompt=K_prompt, n_prompt=n, first=first,
                                         want_blocks=selector.fit is not None)
            if generated is not None:
                w = selector.rescore_weight
                per_head = (1 - w) * scores.per_head + w * generated               # [Lh, H, T]
                scores = Scores(per_head=per_head, shared=per_head.mean(dim=(0, 1)), keys=scores.keys)
    t_score = time.perf_counter() - t_start
    t0 = time.perf_counter()
    idx = selector.select(L, H, T, scores, device=lm.device)                       # [Lh, H, t]
    t_select = time.perf_counter() - t0
    t = idx.shape[-1]
    fitted = None
    reuse = prompt_kv if prompt_kv is not None and selector.reuse_prompt_kv else None
    if selector.keeps_all:   # the held layers as they are: nothing copied, nothing modified
        ctx_kv = context_cache(store, None, None, reuse)
        beta = store.beta                                                          # [Lh, H, F]: the stored beta
    else:
        red = reduce(selector, idx, Q, K, V, lm.scaling, blocks=blocks, bias=bias)
        ctx_kv = context_cache(store, red.keys, red.values, reuse)
        beta, fitted = red.beta, red.fitted
    beta_layers = store.per_layer(beta)                                            # per model layer [H, t] or None
    t0 = time.perf_counter()
    if reuse is None:
        last_logits = run_model(lm, ctx_kv, prompt_ids, position, BiasState(beta=beta_layers), last_only=True)[-1]
    t_prompt = time.perf_counter() - t0
    stats = CompactionStats(
        method=type(selector).__name__, kept=t, original_length=T, kept_ratio=t / T, prompt_tokens=n,
        time_score_s=t_score, time_select_s=t_select, time_beta_s=fitted.time_beta_s if fitted else 0.0,
        time_values_s=fitted.time_values_s if fitted else 0.0, time_prompt_s=t_prompt,
        time_total_s=time.perf_counter() - t_start, fit_error=fitted.error if fitted else None,
        fit_error_topk=fitted.error_topk if fitted else None, fallback=fitted.fallback if fitted else None,
    )
    return CompactedCache(lm, ctx_kv, beta_layers, t + n, position + n, last_logits, prompt_ids, stats, positions=idx,
                          queries=Q, query_position=position + first, marks=kv.marks(ctx_kv))
