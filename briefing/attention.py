"""Attention with a per-layer, per-KV-head additive bias on the kept keys of a compacted cache.

Registered as attention implementation "briefing" (plus a mask function under the same name, so that
transformers builds a proper causal mask, new tokens at the END of the key sequence). While no `BiasState`
is active the function is plain SDPA. While one is active (a forward over a compacted or folded cache, or a
pass that captures post-RoPE queries) it adds `beta` to the logits of the first `t` keys (the kept
trajectory positions) and/or stores the queries.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "briefing"


@dataclass
class BiasState:
    """What the attention function does during one forward pass.

    beta: per layer, a tensor [kv_heads, t] (or [batch, kv_heads, t], a row's own) added to the logits of the first t
    keys (None: no bias).
    capture: if True, post-RoPE queries are stored per layer in `queries` ([batch, heads, q_len, head_dim]; only the
    tokens in `capture_rows` if given).
    """

    beta: list[torch.Tensor | None] | None = None
    capture: bool = False
    capture_rows: torch.Tensor | None = None  # query tokens to capture (indices into the forward's tokens)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    reconstruct: Any = None  # .layers, .score(layer, query, key, scale, beta): briefing.importance.Reconstruction


_ACTIVE: contextvars.ContextVar[BiasState | None] = contextvars.ContextVar("briefing_bias", default=None)


@contextlib.contextmanager
def active(state: BiasState) -> Iterator[BiasState]:
    """Activate `state` for the forward passes run inside the block."""
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def briefing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, H, q, d]; key, value [B, KVH, k, d] (cache + new tokens). Returns ([B, q, H, d], None).

    The bias is carried by one extra head dimension, so transformers' own mask and SDPA kernel serve the
    biased forward too (no [heads, q, k] mask is built, which matters for long prefill chunks over a folded
    cache): q' = [q, 1], k' = [k, beta / scale] (0 past the first t keys), v' = [v, 0], so that
    scale * q' . k' = scale * q . k + beta exactly in real arithmetic.
    """
    state = _ACTIVE.get()
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    layer = module.layer_idx
    if state.capture:
        rows = state.capture_rows
        state.queries[layer] = (query if rows is None else query[:, :, rows]).detach()
    beta = state.beta[layer] if state.beta is not None and layer < len(state.beta) else None
    rec = state.reconstruct
    if rec is not None and layer in rec.layers:
        rec.score(layer, query, key, scaling if scaling is not None else query.shape[-1] ** -0.5, beta)
    if beta is None or not beta.numel():
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    batch, kv_heads, k_len, t = key.shape[0], key.shape[1], key.shape[2], beta.shape[-1]
    extra = torch.zeros(batch, kv_heads, k_len, 1, dtype=key.dtype, device=key.device)  # [B, KVH, k, 1]
    extra[:, :, :t, 0] = beta.to(key.dtype) / scale                                      # beta [(B,) KVH, t]
    query = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)                  # [B, H, q, d + 1]
    key = torch.cat([key, extra], dim=-1)                                                # [B, KVH, k, d + 1]
    value = torch.cat([value, torch.zeros_like(value[..., :1])], dim=-1)                 # [B, KVH, k, d + 1]
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scale, dropout=dropout, **kwargs)
    return out[..., :-1].contiguous(), None                                              # [B, q, H, d]


_registered = False


def register_attention() -> None:
    """Register the attention and mask functions under ATTENTION_NAME (idempotent)."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTENTION_NAME, briefing_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
