"""Fidelity of a compacted context to the full cache, measured on held-out answer tokens."""
from __future__ import annotations

import torch

from briefing import kv
from briefing.matching import group_queries, stack_layers
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
    lm, T = cache.lm, cache.length
    ids = ctx.prompt_ids + lm.encode(continuation)
    try:
        _, queries = forward_with_bias(lm, cache.kv, ids, T, None, capture=True, last_only=True)
    finally:
        kv.truncate(cache.kv, T)
    n_prompt = len(ctx.prompt_ids)
    answer_queries = {i: q[:, :, n_prompt:, :] for i, q in queries.items()}
    K_list, V_list = kv.layer_kv(cache.kv, 0, T)
    Q = group_queries(answer_queries, lm.num_layers, K_list[0].shape[1])            # [L, H, m, d]
    K, V, scale = stack_layers(K_list), stack_layers(V_list), lm.scaling
    Y = torch.softmax(Q @ K.transpose(-1, -2) * scale, -1) @ V                     # [L, H, m, d]
    t = ctx.stats.kept
    C1, C2 = kv.layer_kv(ctx.kv, 0, t)
    C1, C2 = stack_layers(C1), stack_layers(C2)                                    # [L, H, t, d]
    logits = Q @ C1.transpose(-1, -2) * scale
    if ctx.beta is not None:
        logits = logits + torch.stack(ctx.beta).unsqueeze(-2)                      # [L, H, 1, t]
    Y_hat = torch.softmax(logits, -1) @ C2
    return float(((Y_hat - Y).norm(dim=(-2, -1)) / Y.norm(dim=(-2, -1))).mean())
