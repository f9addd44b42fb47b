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

`compact_many` does this for a batch of prompts over one cache: step 1 is one forward of all the prompts (rows over
the shared cache), step 3's fits are one batched solve (`matching.solve_fits`); each prompt still has its own
selection and its own context. `compact` is a batch of one.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from briefing import kv
from briefing.attention import BiasState
from briefing.context import CompactedCache, check_prompt, run_model, run_rows
from briefing.errors import BriefingError
from briefing.options import check_int
from briefing.matching import (FitProblem, FitResult, attention_scores, fit_problem, gather_positions, group_queries,
                               mask_beta, padded, solve_fits)
from briefing.rescore import generated_scores
from briefing.selection import AttentionMatching, ScoredSelector, Scores, Selector
from briefing.stats import CompactionStats

KEEP_BLOCKS_MAX = 1 << 26  # elements of E (256 MB of float32) kept from scoring for the fit; past it, recompute
PASS_BYTES = 1 << 30  # cache bytes one batched prompt pass may copy (the cache once per row); past it, fewer rows


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
                want_blocks: bool = False, importance: torch.Tensor | None = None) -> tuple[Scores, list | None]:
    """Guidance scores of the keys K [L, H, T, d] under queries Q [L, H, m, d] (see `matching.attention_scores`),
    with the block's query-agnostic importance [L, H, T] if the cache keeps one; the blocks are kept for the fit
    while they stay under KEEP_BLOCKS_MAX elements."""
    keep = want_blocks and Q.shape[0] * Q.shape[1] * Q.shape[2] * K.shape[2] <= KEEP_BLOCKS_MAX
    per_head, blocks = attention_scores(Q, K, scale, bias=bias, K_prompt=K_prompt, n_prompt=n_prompt, first=first,
                                        keep_blocks=keep)                          # [L, H, T]
    return Scores(per_head=per_head, shared=per_head.mean(dim=(0, 1)), keys=K, importance=importance), blocks


def reduce(selector: Selector, idx: torch.Tensor, Q: torch.Tensor | None, K: torch.Tensor, V: torch.Tensor,
           scale: float, *, blocks: list[torch.Tensor] | None = None, bias: torch.Tensor | None = None) -> Reduced:
    """Keep positions idx [L, H, t] of K, V [L, H, T, d]; fit beta and values when `selector.fit` is set (and
    something is dropped), composing with a stored bias [L, H, T]. The step a compaction and a fold share."""
    problem = fit_problem(Q, K, V, idx, scale, blocks=blocks, bias=bias) if fits(selector, idx, Q, K) else None
    fitted = solve_fits([problem], **fit_options(selector))[0] if problem is not None else None
    return reduced(idx, K, V, fitted, bias)


def fits(selector: Selector, idx: torch.Tensor, Q: torch.Tensor | None, K: torch.Tensor) -> bool:
    """Whether a selection is fitted: the selector has a fit step, something is kept and something dropped (fewer
    slots than positions, or padded rows: a global allocation)."""
    return (selector.fit is not None and 0 < idx.shape[-1] and Q is not None
            and (idx.shape[-1] < K.shape[2] or padded(idx)))


def fit_options(selector: Selector) -> dict[str, Any]:
    step = selector.fit
    return {"ridge": step.ridge, "beta_max": step.beta_max, "nnls_iters": step.nnls_iters}


def reduced(idx: torch.Tensor, K: torch.Tensor, V: torch.Tensor, fitted: FitResult | None,
            bias: torch.Tensor | None) -> Reduced:
    """The kept keys, the fitted values (or the kept ones) and beta composed with the stored bias [L, H, T]. PAD slots
    of idx (a global allocation's padding): zero key and value, beta MASKED_BETA (no attention weight)."""
    keys = gather_positions(K, idx)                                                # [L, H, t, d]
    values = fitted.values if fitted is not None else gather_positions(V, idx)    # [L, H, t, d]
    beta = fitted.beta if fitted is not None else None                             # [L, H, t]
    if bias is not None and idx.shape[-1]:  # compose with the stored beta of the kept positions
        stored = bias.gather(-1, idx.clamp_min(0))                                 # [L, H, t]
        beta = stored if beta is None else stored.to(beta.dtype) + beta
    if padded(idx):
        values = values.masked_fill((idx < 0).unsqueeze(-1), 0)
        beta = mask_beta(beta, idx)
    return Reduced(idx=idx, keys=keys, values=values, beta=beta, fitted=fitted)


def by_layer(idx: torch.Tensor, K: torch.Tensor, V: torch.Tensor, fitted: FitResult | None,
             bias: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
    """`reduced`, one held layer at a time, each cut to its widest row: keys, values [H, t_l, d] and beta [H, t_l]
    per layer. A global allocation's rows are right-padded to the longest row of ALL layers, but a layer's cache
    only needs its own (the columns cut are PAD in every head of it: no attention weight), and a model layer's cache
    is its own tensor, so layers of different widths cost what they hold. An unpadded selection is one width."""
    L = idx.shape[0]
    widths = (idx >= 0).sum(-1).amax(-1).tolist() if padded(idx) else [idx.shape[-1]] * L   # [L]
    keys, values, betas = [], [], []
    for j, w in enumerate(widths):
        fit_j = None if fitted is None else replace(fitted, beta=fitted.beta[j:j + 1, :, :w],
                                                    values=fitted.values[j:j + 1, :, :w])
        red = reduced(idx[j:j + 1, :, :w], K[j:j + 1], V[j:j + 1], fit_j,
                      None if bias is None else bias[j:j + 1])
        keys.append(red.keys[0])                                                   # [H, t_l, d]
        values.append(red.values[0])                                               # [H, t_l, d]
        betas.append(None if red.beta is None else red.beta[0])                    # [H, t_l]
    return keys, values, (None if all(b is None for b in betas) else betas)


def check_selector(selector: Any) -> Selector:
    selector = selector if selector is not None else AttentionMatching()
    if not isinstance(selector, Selector):
        raise BriefingError(f"selector must be a briefing.Selector (e.g. briefing.AttentionMatching(tau=1.0)), "
                            f"got {type(selector).__name__}.")
    return selector


@dataclass
class PromptPass:
    """What forwarding one prompt over the full cache gives: Q [held layers, H, m, d] the queries of its guiding
    tokens (from `first` on), its keys and values per model layer ([1, H, n, d]), its last logits [vocab], and the
    rescore scores [held layers, H, T] (None without rescoring)."""

    Q: torch.Tensor
    prompt_kv: list
    last_logits: torch.Tensor
    generated: torch.Tensor | None
    first: int


@torch.no_grad()
def prompt_pass(cache: Any, prompt_ids: list[int], selector: Selector, query_tokens: int | None) -> PromptPass:
    """Forward the prompt over the FULL cache (its stored beta applied), capture the queries, roll the cache back.
    query_tokens: only the prompt's last `query_tokens` tokens guide (None: all)."""
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
    return PromptPass(Q=Q, prompt_kv=prompt_kv, last_logits=last_logits, generated=generated, first=first)


@torch.no_grad()
def prompt_rows(cache: Any, prompts: list[list[int]], query_tokens: list[int | None]) -> list[PromptPass]:
    """Forward several prompts over the FULL cache in one batch: right-padded rows over a copy of the cache per row
    (the persistent cache is not touched), every row at RoPE positions from the cache's end, so a row's real tokens
    see exactly what one prompt alone would (padding only follows them). The same as `prompt_pass` per prompt."""
    lm, store = cache.lm, cache.store
    B, width, dev = len(prompts), max(len(p) for p in prompts), lm.device
    rows = torch.zeros(B, width, dtype=torch.long, device=dev)                      # [B, n]
    for b, ids in enumerate(prompts):
        rows[b, :len(ids)] = torch.tensor(ids, device=dev)
    positions = cache.position + torch.arange(width, device=dev).expand(B, -1)      # [B, n]
    lasts = sorted({len(p) - 1 for p in prompts})
    keep = torch.tensor(lasts, device=dev)                                          # [u] last token of each row
    layers = []
    for layer in store.kv.layers:   # each row sees the cache as it is (expand: a view; the forward copies once)
        k, v = layer.keys.expand(B, -1, -1, -1), layer.values.expand(B, -1, -1, -1)  # [B, H, S, d]
        layers.append(kv.copy_window(layer, k, v) if kv.is_window(layer) else kv.held_layer(k, v))
    state = BiasState(beta=store.attention_bias(), capture=True)
    logits = run_rows(lm, kv.assemble(layers), rows, positions, state, keep=keep)  # [B, u, vocab]
    out = []
    for b, ids in enumerate(prompts):
        n = len(ids)
        first = 0 if query_tokens[b] is None else max(0, n - query_tokens[b])
        prompt_kv = []
        for layer in layers:   # the row's prompt: its n tokens after what the layer held (copied: the batch goes)
            S = layer.keys.shape[-2] - width
            prompt_kv.append((layer.keys[b:b + 1, :, S:S + n].clone(), layer.values[b:b + 1, :, S:S + n].clone()))
        queries = {i: q[b:b + 1, :, first:n, :] for i, q in state.queries.items()}  # [1, heads, n - first, d]
        Q = group_queries(queries, store.held, lm.kv_heads)                          # [Lh, H, m, d]
        out.append(PromptPass(Q=Q, prompt_kv=prompt_kv, last_logits=logits[b, lasts.index(n - 1)], generated=None,
                              first=first))
    return out


def prompt_passes(cache: Any, prompts: list[list[int]], selector: Selector,
                  query_tokens: list[int | None]) -> list[PromptPass]:
    """`prompt_pass` for each prompt, batched in rows where it can be: not when the selector rescores (its generated
    tokens are per prompt), in groups whose copies of the cache stay within PASS_BYTES."""
    rescore = selector.rescore_tokens if isinstance(selector, ScoredSelector) else 0
    per_row = max(1, PASS_BYTES // max(1, kv.nbytes(cache.store.kv)))
    if len(prompts) == 1 or rescore or per_row == 1:
        return [prompt_pass(cache, p, selector, q) for p, q in zip(prompts, query_tokens)]
    out: list[PromptPass] = []
    for i in range(0, len(prompts), per_row):
        out += prompt_rows(cache, prompts[i:i + per_row], query_tokens[i:i + per_row])
    return out


def context_cache(store: Any, keys: Sequence[torch.Tensor] | None, values: Sequence[torch.Tensor] | None,
                  prompt_kv: list | None) -> Any:
    """The per-call cache: held layer j with keys[j], values[j] [H, t_j, d] (a tensor [Lh, H, t, d] or a list per
    layer, `by_layer`; None: the held layers' window, for a windowed model kept whole), window layers with their
    window as the model's own cache holds it; each followed by the prompt's keys and values from the scoring pass
    when given."""
    layers = []
    held = {i: j for j, i in enumerate(store.held)}
    for i, layer in enumerate(store.kv.layers):
        if i in held and keys is not None:
            out = kv.held_layer(keys[held[i]][None], values[held[i]][None])
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
    return compact_many(cache, [prompt], selector, query_tokens=[query_tokens])[0]


def compact_many(cache: Any, prompts: list[str], selector: Selector | None = None, *,
                 query_tokens: list[int | None] | None = None) -> list[CompactedCache]:
    """`compact` for several prompts over the same cache, sharing the work: one forward of all the prompts over the
    cache (`prompt_passes`) and one batched fit (`matching.solve_fits`). Each prompt gets the selection and context
    that `compact` alone gives it (the same up to float rounding). query_tokens: per prompt (None: all tokens)."""
    selector = check_selector(selector)
    lm, store, position = cache.lm, cache.store, cache.position
    T = store.length
    if T == 0:
        raise BriefingError("The trajectory is empty: extend the TrajectoryCache with text before compacting.")
    if not isinstance(prompts, list) or not prompts:
        raise BriefingError("prompts must be a non-empty list of worker prompts.")
    query_tokens = [None] * len(prompts) if query_tokens is None else list(query_tokens)
    if len(query_tokens) != len(prompts):
        raise BriefingError(f"query_tokens must give one value per prompt ({len(prompts)}), got {len(query_tokens)}.")
    for q in query_tokens:
        check_int("", "query_tokens", q, low=1, none=True,
                  what="the prompt's last tokens that guide; None uses every prompt token")
    ids = [check_prompt(lm, p, position) for p in prompts]
    L, H, B = len(store.held), lm.kv_heads, len(prompts)
    t_start = time.perf_counter()
    K = V = None
    if selector.needs_scores or not selector.keeps_all:
        K, V = store.held_kv(0, T)                                                 # [Lh, H, T, d]
    bias = store.bias()                                                            # [Lh, H, T] or None
    passes: list[PromptPass | None] = [None] * B
    if selector.needs_scores or selector.reuse_prompt_kv or selector.fit is not None:
        passes = prompt_passes(cache, ids, selector, query_tokens)
    t_pass = (time.perf_counter() - t_start) / B                                  # the shared forward, per prompt
    picked: list[torch.Tensor] = []
    problems: list[FitProblem | None] = []
    times: list[tuple[float, float]] = []
    for b, p in enumerate(passes):
        t0 = time.perf_counter()
        scores = blocks = None
        if p is not None and selector.needs_scores:
            K_prompt = torch.cat([p.prompt_kv[i][0] for i in store.held])          # [Lh, H, n, d]
            scores, blocks = score_block(p.Q, K, lm.scaling, bias=bias, K_prompt=K_prompt, n_prompt=len(ids[b]),
                                         first=p.first, want_blocks=selector.fit is not None,
                                         importance=store.importance)
            if p.generated is not None:
                w = selector.rescore_weight
                per_head = (1 - w) * scores.per_head + w * p.generated              # [Lh, H, T]
                scores = Scores(per_head=per_head, shared=per_head.mean(dim=(0, 1)), keys=scores.keys,
                                importance=scores.importance)
        t1 = time.perf_counter()
        idx = selector.select(L, H, T, scores, device=lm.device)                   # [Lh, H, t]
        t2 = time.perf_counter()
        if not selector.keeps_all and fits(selector, idx, p.Q if p is not None else None, K):
            problems.append(fit_problem(p.Q, K, V, idx, lm.scaling, blocks=blocks, bias=bias))
        else:
            problems.append(None)
        picked.append(idx)
        times.append((t_pass + t1 - t0, t2 - t1))
    solved = [x for x in problems if x is not None]
    fitted = iter(solve_fits(solved, **fit_options(selector)) if solved else [])
    out = []
    for b, (p, idx, problem, (t_score, t_select)) in enumerate(zip(passes, picked, problems, times)):
        t0 = time.perf_counter()
        t, n = idx.shape[-1], len(ids[b])   # t: slots per row (a global allocation's longest row)
        kept = t if not padded(idx) else round(int((idx >= 0).sum()) / (L * H))   # per row, on average
        fit_b = next(fitted) if problem is not None else None
        reuse = p.prompt_kv if p is not None and selector.reuse_prompt_kv else None
        if selector.keeps_all:   # the held layers as they are: nothing copied, nothing modified
            ctx_kv = context_cache(store, None, None, reuse)
            beta = store.beta                                                      # [Lh, H, F]: the stored beta
        else:
            keys, values, beta = by_layer(idx, K, V, fit_b, bias)                   # per held layer [H, t_l, *]
            ctx_kv = context_cache(store, keys, values, reuse)
            t = max(k.shape[-2] for k in keys) if keys else 0                       # the widest layer
        beta_layers = store.per_layer(beta)                                        # per model layer [H, t] or None
        t_prompt = time.perf_counter()
        last_logits = p.last_logits if reuse is not None else \
            run_model(lm, ctx_kv, ids[b], position, BiasState(beta=beta_layers), last_only=True)[-1]
        t_prompt = time.perf_counter() - t_prompt
        stats = CompactionStats(
            method=type(selector).__name__, kept=kept, original_length=T, kept_ratio=kept / T, prompt_tokens=n,
            time_score_s=t_score, time_select_s=t_select, time_beta_s=fit_b.time_beta_s if fit_b else 0.0,
            time_values_s=fit_b.time_values_s if fit_b else 0.0, time_prompt_s=t_prompt,
            time_total_s=t_score + t_select + (fit_b.time_beta_s + fit_b.time_values_s if fit_b else 0.0)
            + time.perf_counter() - t0, fit_error=fit_b.error if fit_b else None,
            fit_error_topk=fit_b.error_topk if fit_b else None, fallback=fit_b.fallback if fit_b else None,
        )
        out.append(CompactedCache(lm, ctx_kv, beta_layers, t + n, position + n, last_logits, ids[b], stats,
                                  positions=idx, queries=p.Q if p is not None else None,
                                  query_position=position + (p.first if p is not None else 0),
                                  marks=kv.marks(ctx_kv)))
    return out
