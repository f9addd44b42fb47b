"""Fidelity of a compacted context to the full cache, measured on held-out answer tokens."""
from __future__ import annotations

import torch

from briefing import kv
from briefing.matching import group_queries
from briefing.context import CompactedCache, forward_with_bias
from briefing.errors import BriefingError
from briefing.generation import token_logprobs
from briefing.trajectory import TrajectoryCache


def answer_kl(reference: CompactedCache, ctx: CompactedCache, continuation: str) -> float:
    """KL(reference || ctx) of the next-token distributions, averaged over the continuation's positions."""
    _, ref = token_logprobs(reference, continuation)
    _, got = token_logprobs(ctx, continuation)
    return float((ref.exp() * (ref - got)).sum(-1).mean())


@torch.no_grad()
def heldout_attention_error(cache: TrajectoryCache, ctx: CompactedCache, continuation: str) -> float:
    """Relative error of the trajectory-block attention output for the queries of `continuation` (tokens
    NOT used in the fit), compacted (kept keys + beta, fitted values) vs full, averaged over (layer, KV head)."""
    if cache.folded:
        raise BriefingError("heldout_attention_error compares against the full attention of an unfolded cache; this "
                            f"cache has folded ({len(cache.folds)} folds). Build it with fold=None, within the window.")
    lm, store, T = cache.lm, cache.store, cache.length
    ids = ctx.prompt_ids + lm.encode(continuation)
    before = kv.marks(store.kv)
    try:
        _, queries = forward_with_bias(lm, store.kv, ids, T, None, capture=True, logits=False)
    finally:
        kv.rollback(store.kv, before)
    n_prompt = len(ctx.prompt_ids)
    answer_queries = {i: q[:, :, n_prompt:, :] for i, q in queries.items()}
    Q = group_queries(answer_queries, store.held, lm.kv_heads)                      # [Lh, H, m, d]
    K, V = store.held_kv(0, T)                                                      # [Lh, H, T, d]
    Q, K, V, scale = Q.float(), K.float(), V.float(), lm.scaling
    Y = torch.softmax(Q @ K.transpose(-1, -2) * scale, -1) @ V                     # [Lh, H, m, d]
    t = ctx.stats.kept
    C1, C2 = kv.layer_kv(ctx.kv, 0, t, store.held)
    C1, C2 = torch.cat(C1).float(), torch.cat(C2).float()                          # [Lh, H, t, d]
    logits = Q @ C1.transpose(-1, -2) * scale
    if ctx.beta is not None:
        beta = torch.stack([ctx.beta[i] for i in store.held])                      # [Lh, H, t]
        logits = logits + beta.unsqueeze(-2)
    Y_hat = torch.softmax(logits, -1) @ C2
    return float(((Y_hat - Y).norm(dim=(-2, -1)) / Y.norm(dim=(-2, -1))).mean())
