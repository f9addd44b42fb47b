"""Re-scoring with the queries of the first generated tokens.

A question that quotes the text attends to the quoted words; the answer's first tokens attend to what follows
them (an induction head copies the next token). So: greedily generate a few tokens on the FULL cache, capture
their post-RoPE queries, and score the trajectory with them too. The compaction mixes these scores into the
prompt's before selecting; decoding then restarts after the prompt on the compacted cache.
"""
from __future__ import annotations

import torch
from briefing import kv
from briefing.attention import BiasState
from briefing.context import run_model
from briefing.model import LoadedModel


@torch.no_grad()
def generated_scores(lm: LoadedModel, store, trajectory_length: int, next_position: int,
                     last_logits: torch.Tensor, tokens: int) -> torch.Tensor:
    """Attention of `tokens` greedy tokens (generated after the prompt already in the store's cache) to the held
    layers' first `trajectory_length` slots, averaged over those tokens and the query heads of each KV head.
    The cache is extended by the generated tokens; the caller rolls it back. Returns [held layers, kv_heads, T]."""
    T, H, scale, cache = trajectory_length, lm.kv_heads, lm.scaling, store.kv
    token, rows = int(last_logits.argmax()), []
    for step in range(tokens):
        state = BiasState(capture=True)
        logits = run_model(lm, cache, [token], next_position + step, state, last_only=True)
        keys, _ = kv.layer_kv(cache, layers=store.held)                             # per held layer [1, H, S, d]
        per_layer = []
        for j, layer in enumerate(store.held):
            q = state.queries[layer][0].float()                                     # [heads, 1, d]
            k = keys[j][0].float()                                                  # [H, S, d]
            q = q.reshape(H, -1, q.shape[-1])                                       # [H, group, d]
            p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)              # [H, group, S]
            per_layer.append(p[..., :T].mean(-2))                                   # [H, T]
        rows.append(torch.stack(per_layer))                                         # [Lh, H, T]
        token = int(logits[-1].argmax())
    return torch.stack(rows).mean(0)                                                # [Lh, H, T]
