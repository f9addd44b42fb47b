"""Task-guided Attention Matching, batched over all (layer, KV head) pairs.

Notation per (layer l, KV head h): Q [m, d] the post-RoPE queries of the worker prompt from the query heads
of h stacked (m = group size x prompt tokens), K, V [T, d] the trajectory keys/values, idx the t kept
positions, s = 1/sqrt(d). Shapes below carry a leading [L, H] (layers in a chunk, KV heads).

  logits = s Q K^T                        [m, T]
  E      = exp(logits - rowmax)           [m, T]
  z      = E 1                            [m]     attention mass of the whole block
  Y      = E V / z                        [m, d]  block output
  A      = E[:, idx]                      [m, t]
  w      = argmin_{lo <= w <= hi} ||A w - z||      (beta = log w; box-constrained NNLS, FISTA)
  X      = A diag(w) / (A w)              [m, t]  softmax(s Q C1^T + beta)
  C2     = V[idx] + X^T (X X^T + lam I)^-1 (Y - X V[idx])   (dual ridge, pulled toward the original values)
"""
from __future__ import annotations

import math
import time

import torch

from briefing import kv
from briefing.context import CompactedCache, CompactionStats, check_prompt, forward_with_bias
from briefing.errors import BriefingError
from briefing.rescore import generated_scores
from briefing.selection import AttentionMatching, Fit, ScoredSelector, Scores, Selector
from briefing.trajectory import TrajectoryCache

LAYER_CHUNK = 3  # layers per batched block: bounds the [L, H, m, T] logits in memory
KEEP_BLOCKS_MAX = 1 << 26  # elements of E (256 MB of float32) kept from scoring for the fit; past it, recompute


def _scaling(lm) -> float:
    attn = lm.model.model.layers[0].self_attn
    return float(getattr(attn, "scaling", attn.head_dim ** -0.5))


def stack_layers(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer [1, H, n, d] -> [L, H, n, d]."""
    return torch.cat(tensors, dim=0)


def group_queries(queries: dict[int, torch.Tensor], layers: int, kv_heads: int) -> torch.Tensor:
    """Per-layer [1, heads, n, d] -> [L, kv_heads, group * n, d] (query head g*? of KV head h stacked)."""
    q = torch.cat([queries[i] for i in range(layers)], dim=0)  # [L, heads, n, d]
    L, heads, n, d = q.shape
    return q.reshape(L, kv_heads, (heads // kv_heads) * n, d)


def attention_scores(Q: torch.Tensor, K: torch.Tensor, K_prompt: torch.Tensor, scale: float, n_prompt: int,
                     keep_blocks: bool, bias: torch.Tensor | None = None,
                     first: int = 0) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Attention probability of each prompt query to each trajectory key, with the prompt's own causal keys
    in the softmax. Q [L, H, m, d], K [L, H, T, d], K_prompt [L, H, n, d] -> per-head score [L, H, T], and
    (if keep_blocks) the unnormalised block E = exp(s Q K^T + bias - rowmax) per layer chunk, reused by the fit.
    bias [L, H, T]: the stored beta of a folded cache (None: none). first: the queries are those of prompt tokens
    first..n_prompt-1 (a query window), each still seeing every earlier prompt key."""
    scores, blocks = [], []
    m = Q.shape[2]
    row_token = first + torch.arange(m) % (n_prompt - first)  # prompt token of each stacked query row
    causal = torch.arange(n_prompt)[None, :] <= row_token[:, None]  # [m, n]
    for c in range(0, Q.shape[0], LAYER_CHUNK):
        q, k, kp = Q[c:c + LAYER_CHUNK], K[c:c + LAYER_CHUNK], K_prompt[c:c + LAYER_CHUNK]
        logits = q @ k.transpose(-1, -2) * scale                                   # [c, H, m, T]
        if bias is not None:
            logits = logits + bias[c:c + LAYER_CHUNK].unsqueeze(-2)
        logits_p = (q @ kp.transpose(-1, -2) * scale).masked_fill(~causal, -math.inf)  # [c, H, m, n]
        row_max = torch.maximum(logits.amax(-1), logits_p.amax(-1)).unsqueeze(-1)
        E = torch.exp(logits - row_max)
        denom = E.sum(-1) + torch.exp(logits_p - row_max).sum(-1)                 # [c, H, m]
        scores.append((E / denom.unsqueeze(-1)).mean(-2))                          # [c, H, T]
        if keep_blocks:
            blocks.append(E)
    return torch.cat(scores, dim=0), (blocks if keep_blocks else None)


def nnls_box(A: torch.Tensor, z: torch.Tensor, lo: float, hi: float, iters: int) -> torch.Tensor:
    """min ||A w - z|| s.t. lo <= w <= hi, batched: A [..., m, t], z [..., m] -> w [..., t].
    Accelerated projected gradient (FISTA) from w = 1 (beta = 0), step 1/L with L = ||A||_2^2."""
    At = A.transpose(-1, -2)
    v = torch.ones(A.shape[:-2] + (A.shape[-1], 1), dtype=A.dtype)
    for _ in range(8):  # power iteration on A^T A for its largest eigenvalue
        v = At @ (A @ v)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(1e-30)
    lipschitz = (A @ v).square().sum(dim=(-2, -1)).clamp_min(1e-12)[..., None] * 1.05  # [..., 1]
    w = torch.ones(A.shape[:-2] + (A.shape[-1],), dtype=A.dtype)
    y, step_t = w, 1.0
    for _ in range(iters):
        grad = (At @ ((A @ y.unsqueeze(-1)).squeeze(-1) - z).unsqueeze(-1)).squeeze(-1)
        w_next = (y - grad / lipschitz).clamp(lo, hi)
        t_next = (1 + math.sqrt(1 + 4 * step_t * step_t)) / 2
        y = w_next + ((step_t - 1) / t_next) * (w_next - w)
        w, step_t = w_next, t_next
    return w


def solve_values(X: torch.Tensor, Y: torch.Tensor, V_kept: torch.Tensor, ridge: float) -> torch.Tensor:
    """C2 = V_kept + X^T (X X^T + lam I)^-1 (Y - X V_kept); X [..., m, t], Y [..., m, d] -> [..., t, d]."""
    gram = X @ X.transpose(-1, -2)                                                  # [..., m, m]
    lam = ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)         # [...]
    gram = gram + lam[..., None, None] * torch.eye(gram.shape[-1], dtype=X.dtype)
    residual = Y - X @ V_kept                                                      # [..., m, d]
    return V_kept + X.transpose(-1, -2) @ torch.linalg.solve(gram, residual)


def gather_positions(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [L, H, T, d], idx [L, H, k] -> [L, H, k, d]."""
    return t.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, t.shape[-1]))


def fit(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, idx: torch.Tensor, step: Fit, scale: float,
        timing: dict, blocks: list[torch.Tensor] | None = None,
        bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float, float, str | None]:
    """Fit beta [L, H, t] and values C2 [L, H, t, d]. `blocks`: E per layer chunk from the scoring pass, whose
    A and z are rescaled to a row max of 1 over the trajectory (exactly the recomputed block). bias [L, H, T]:
    stored beta already in every logit (a folded cache); the returned beta is on top of it (compose: add
    bias[idx]). Returns (beta, C2, fit_error, topk_error, fallback)."""
    betas, values, errs, errs_topk = [], [], [], []
    lo, hi = math.exp(-step.beta_max), math.exp(step.beta_max)
    for i, c in enumerate(range(0, Q.shape[0], LAYER_CHUNK)):
        t0 = time.perf_counter()
        q, k, v, ix = (x[c:c + LAYER_CHUNK] for x in (Q, K, V, idx))
        if blocks is not None:  # E from scoring; rows rescaled to a max of 1 only where it matters (A, z)
            E = blocks[i]
            row_scale = 1.0 / E.amax(-1)                                           # [c, H, m]
        else:
            logits = q @ k.transpose(-1, -2) * scale                               # [c, H, m, T]
            if bias is not None:
                logits = logits + bias[c:c + LAYER_CHUNK].unsqueeze(-2)
            E = torch.exp(logits - logits.amax(-1, keepdim=True))
            row_scale = torch.ones(E.shape[:-1], dtype=E.dtype)
        mass = E.sum(-1)                                                           # [c, H, m]
        Y = (E @ v) / mass.unsqueeze(-1)                                           # [c, H, m, d]
        z = mass * row_scale
        A = E.gather(-1, ix.unsqueeze(-2).expand(-1, -1, E.shape[-2], -1)) * row_scale.unsqueeze(-1)  # [c, H, m, t]
        w = nnls_box(A, z, lo, hi, step.nnls_iters)                                 # [c, H, t]
        Aw = A * w.unsqueeze(-2)
        X = Aw / Aw.sum(-1, keepdim=True).clamp_min(1e-30)                         # softmax(s Q C1^T + beta)
        t1 = time.perf_counter()
        V_kept = gather_positions(v, ix)                                           # [c, H, t, d]
        C2 = solve_values(X, Y, V_kept, step.ridge)
        t2 = time.perf_counter()
        X_topk = A / A.sum(-1, keepdim=True).clamp_min(1e-30)
        y_norm = Y.norm(dim=(-2, -1)).clamp_min(1e-30)
        errs.append((X @ C2 - Y).norm(dim=(-2, -1)) / y_norm)                      # [c, H]
        errs_topk.append((X_topk @ V_kept - Y).norm(dim=(-2, -1)) / y_norm)
        betas.append(w.log())
        values.append(C2)
        timing["beta"] += t1 - t0
        timing["values"] += t2 - t1
    beta, C2, err = torch.cat(betas), torch.cat(values), torch.cat(errs)
    bad = ~(torch.isfinite(beta).all(-1) & torch.isfinite(C2).all(dim=(-2, -1)) & torch.isfinite(err))  # [L, H]
    fallback = None
    if bad.any():
        V_kept = gather_positions(V, idx)
        beta = torch.where(bad.unsqueeze(-1), torch.zeros_like(beta), beta)
        C2 = torch.where(bad[..., None, None], V_kept, C2)
        fallback = (f"non-finite fit in {int(bad.sum())} of {bad.numel()} (layer, KV head) pairs: "
                    "used selection only (beta = 0, original values) there")
        err = torch.where(bad, torch.cat(errs_topk), err)
    return beta, C2, float(err.mean()), float(torch.cat(errs_topk).mean()), fallback


def score(cache: TrajectoryCache, prompt_ids: list[int], selector: Selector, keep_blocks: bool,
          query_tokens: int | None = None) -> tuple:
    """The scoring pass: forward the prompt over the FULL cache, capture its queries, then crop the cache back
    to T. Returns (Q [L, H, m, d], prompt_kv per layer, last_logits [vocab], Scores or None, blocks or None);
    scores (and the blocks reused by the fit) only if the selector needs them. Over a folded cache the prompt sits
    at the cache's next RoPE position, every logit carries the stored beta, and the prompt's queries are kept as
    task guidance for later folds. query_tokens: only the last that many prompt tokens' queries guide (None: all)."""
    lm, T, position = cache.lm, cache.length, cache.position
    K_list = kv.layer_kv(cache.kv, 0, T)[0]
    rescore = selector.rescore_tokens if isinstance(selector, ScoredSelector) else 0
    if rescore and cache.beta is not None:
        raise BriefingError(f"{type(selector).__name__}: rescore_tokens={rescore} is not supported on a folded cache "
                            f"(its generated-token pass ignores the stored beta); use rescore_tokens=0.")
    generated = None
    try:
        last_logits, queries = forward_with_bias(lm, cache.kv, prompt_ids, position, cache.beta, capture=True,
                                                 last_only=True)
        prompt_kv = kv.layer_kv(cache.kv, T, T + len(prompt_ids))
        if rescore:  # the first greedy tokens' attention (briefing.rescore), before the cache is cropped
            generated = generated_scores(lm, cache.kv, T, T + len(prompt_ids), last_logits[-1], rescore, _scaling(lm),
                                         K_list[0].shape[1])                       # [L, H, T]
    finally:
        kv.truncate(cache.kv, T)
    first = 0 if query_tokens is None else max(0, len(prompt_ids) - query_tokens)
    if first:  # a query window: the prompt's last tokens (its question), each still attending to the whole prompt
        queries = {i: q[:, :, first:, :] for i, q in queries.items()}             # [1, heads, n - first, d]
    Q = group_queries(queries, lm.num_layers, K_list[0].shape[1])                 # [L, H, m, d]
    cache.remember_prompt(Q, position + first)
    scores = blocks = None
    if selector.needs_scores:
        keep = keep_blocks and Q.shape[0] * Q.shape[1] * Q.shape[2] * T <= KEEP_BLOCKS_MAX
        K_all = stack_layers(K_list)                                               # [L, H, T, d]
        per_head, blocks = attention_scores(Q, K_all, stack_layers(prompt_kv[0]), _scaling(lm), len(prompt_ids), keep,
                                            cache.bias(), first)
        if generated is not None:
            per_head = (1 - selector.rescore_weight) * per_head + selector.rescore_weight * generated
        scores = Scores(per_head=per_head, shared=per_head.mean(dim=(0, 1)), keys=K_all)
    return Q, prompt_kv, last_logits[-1], scores, blocks


def compact(cache: TrajectoryCache, prompt: str, selector: Selector | None = None, *,
            query_tokens: int | None = None) -> CompactedCache:
    """Compact `cache` against the worker `prompt`: score (if the selector needs scores, reuses the prompt KV or
    fits), select, fit (if `selector.fit`), build. The full cache is left exactly as it was.

    Over a folded cache every logit carries the stored beta: scoring and the fit see it, and the kept positions'
    beta is the stored one plus the fitted one (KeepAll keeps the stored beta as it is).

    query_tokens: only the queries of the prompt's last `query_tokens` tokens score and fit (a query window, as
    SnapKV's observation window), e.g. the question after recalled text; the whole prompt is still forwarded.
    None: every prompt token. The fit's cost grows with the square of the query count."""
    selector = selector if selector is not None else AttentionMatching()
    if not isinstance(selector, Selector):
        raise BriefingError(f"selector must be a briefing.Selector (e.g. briefing.AttentionMatching(tau=1.0)), "
                            f"got {type(selector).__name__}.")
    lm, T, position = cache.lm, cache.length, cache.position
    if T == 0:
        raise BriefingError("The trajectory is empty: extend the TrajectoryCache with text before compacting.")
    prompt_ids = check_prompt(lm, prompt, position)
    if query_tokens is not None and (isinstance(query_tokens, bool) or not isinstance(query_tokens, int)
                                     or query_tokens < 1):
        raise BriefingError(f"query_tokens must be an integer >= 1 (the prompt's last tokens that guide), got "
                            f"{query_tokens!r}; None uses every prompt token.")
    n, L = len(prompt_ids), lm.num_layers
    timing = dict(score=0.0, select=0.0, beta=0.0, values=0.0, prompt=0.0)
    t_start = time.perf_counter()
    K_list, V_list = kv.layer_kv(cache.kv, 0, T)
    kv_heads = K_list[0].shape[1]
    bias = cache.bias()                                                            # [L, H, T] or None
    fit_step = selector.fit
    scores = Q = prompt_kv = last_logits = blocks = None
    if selector.needs_scores or selector.reuse_prompt_kv or fit_step is not None:
        Q, prompt_kv, last_logits, scores, blocks = score(cache, prompt_ids, selector, keep_blocks=fit_step is not None,
                                                          query_tokens=query_tokens)
    timing["score"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    idx = selector.select(L, kv_heads, T, scores)                                  # [L, H, t]
    timing["select"] = time.perf_counter() - t0
    t = idx.shape[-1]
    beta = fit_error = fit_error_topk = fallback = None
    if selector.keeps_all:
        keys, values = K_list, V_list  # views: nothing copied, nothing modified
        beta = None if cache.beta is None else torch.stack(cache.beta)             # [L, H, F]: the stored beta
    else:
        K, V = stack_layers(K_list), stack_layers(V_list)                          # [L, H, T, d]
        keys_kept = gather_positions(K, idx)                                       # [L, H, t, d]
        if fit_step is not None and 0 < t < T:
            beta, values_kept, fit_error, fit_error_topk, fallback = fit(Q, K, V, idx, fit_step, _scaling(lm), timing,
                                                                         blocks, bias)
        else:
            values_kept = gather_positions(V, idx)
        if bias is not None and t:  # compose with the stored beta of the kept positions
            beta = bias.gather(-1, idx) + (beta if beta is not None else 0.0)      # [L, H, t]
        keys, values = list(keys_kept.split(1)), list(values_kept.split(1))
    ctx_kv = kv.build(keys, values)
    beta_layers = list(beta.unbind(0)) if beta is not None else None               # per layer [H, t]
    t0 = time.perf_counter()
    if prompt_kv is not None and selector.reuse_prompt_kv:
        for layer, pk, pv in zip(ctx_kv.layers, *prompt_kv, strict=True):
            layer.keys, layer.values = torch.cat([layer.keys, pk], -2), torch.cat([layer.values, pv], -2)
    else:
        last_logits = forward_with_bias(lm, ctx_kv, prompt_ids, position, beta_layers, last_only=True)[-1]
    timing["prompt"] = time.perf_counter() - t0
    stats = CompactionStats(
        method=type(selector).__name__, kept=t, original_length=T, kept_ratio=t / T, prompt_tokens=n,
        time_score_s=timing["score"], time_select_s=timing["select"], time_beta_s=timing["beta"],
        time_values_s=timing["values"], time_prompt_s=timing["prompt"], time_total_s=time.perf_counter() - t_start,
        fit_error=fit_error, fit_error_topk=fit_error_topk, fallback=fallback,
    )
    return CompactedCache(lm, ctx_kv, beta_layers, t + n, position + n, last_logits, prompt_ids, stats, positions=idx)
